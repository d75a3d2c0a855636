//! The store conformance suite: one set of test bodies, each an
//! `async fn(&Store)`, run on a fresh SQLite file always and on a fresh
//! PostgreSQL database when `ROLLCALL_TEST_POSTGRES_URL` is set (skipped by
//! name outside CI, a failure under CI). The bodies drive the store the way
//! the engine, the dispatcher and the ack endpoint do, at fixed instants, and
//! assert what PRODUCT.md §5, §6 and §10 promise. The schema-parity tests at
//! the end check that both dialects' migrations build the same database.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use rollcall::domain::codes::{CODE_ALPHABET, LinkToken, sha256_hex};
use rollcall::domain::contacts::{self, Roster};
use rollcall::store::{
    AckOutcome, Claim, ClaimedMessage, Clockwork, FanoutClaim, FanoutPart, Finished, LoadResult,
    NewExercise, NewMessage, NewNotification, NewOutcome, NewRound, ReportRow, RoundRow,
    SendResult, Store, StoreError, message_count, ms,
};
use rollcall::yaml::Problems;

use crate::support;

/// Runs one body per backend: `<body>::sqlite` and `<body>::postgres`.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let store = super::sqlite_store(dir.path()).await;
                super::$body(&store).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::FreshPostgres::create(stringify!($body)).await else {
                    return;
                };
                super::$body(&db.store).await;
                db.drop().await;
            }
        }
    )*};
}

on_both_backends!(
    rosters_round_trip_and_a_changed_roster_is_a_newer_version,
    loading_an_exercise_again_changes_nothing_and_its_plan_is_frozen_once_started,
    an_exercise_changes_state_only_from_the_states_named,
    due_rounds_are_planned_rounds_of_running_exercises_whose_time_has_come,
    firing_a_round_writes_each_department_once_with_step_one_contacts_and_messages,
    a_code_already_live_refuses_the_whole_fan_out_and_new_codes_fire_it,
    a_due_message_goes_to_one_worker_until_its_claim_lapses,
    claimers_working_at_once_never_share_a_message,
    the_outbox_records_what_each_provider_said,
    a_batch_of_acceptances_records_every_message_and_each_contacts_first,
    a_round_larger_than_one_statement_gives_every_contact_its_own_messages,
    an_escalation_step_adds_contacts_to_an_unacknowledged_department_once,
    notifications_become_final_at_deadline_plus_settle_by_the_status_rule,
    a_link_ack_counts_once_and_a_repeat_is_stored_without_a_new_ack,
    simultaneous_posts_of_one_link_record_one_ack_and_every_attempt,
    every_inbound_attempt_is_stored_even_when_it_matches_nothing,
    endex_cancels_the_open_work_of_that_exercise_and_nothing_else,
    events_are_numbered_without_gaps_even_when_written_at_once,
    the_last_heartbeat_is_the_latest_beat_of_any_instance,
    a_database_missing_a_migration_is_refused_as_stale,
    a_crashed_send_is_not_repeated_once_the_department_has_acked,
    a_code_is_retired_a_day_after_its_deadline_and_can_be_issued_again,
    the_schema_refuses_outbox_rows_whose_state_and_fields_disagree,
    sms_to_a_number_that_opted_out_are_cancelled_until_it_opts_back_in,
    a_fan_out_can_write_its_messages_already_claimed_for_one_worker,
    a_fan_out_in_parts_is_unfinished_until_its_last_part_and_never_written_twice,
);

// ---- harness -----------------------------------------------------------

/// Runs the same statement on whichever pool the store uses, for facts the
/// store's API does not return (and for the schema checks).
macro_rules! on_db {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
        }
    };
}

async fn sqlite_store(dir: &Path) -> Store {
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store
}

/// A migrated PostgreSQL database of its own, dropped when the body passes
/// (a failed body leaves it for inspection).
struct FreshPostgres {
    base: String,
    name: String,
    store: Store,
}

impl FreshPostgres {
    /// A migrated database, or `None` (reported as skipped) without a URL.
    async fn create(test: &str) -> Option<FreshPostgres> {
        let db = FreshPostgres::unmigrated(test).await?;
        db.store.migrate().await.unwrap();
        Some(db)
    }

    /// A database with no schema at all, as a new PostgreSQL server has.
    async fn unmigrated(test: &str) -> Option<FreshPostgres> {
        let Some(base) = support::postgres_url() else {
            eprintln!("SKIPPED: store::{test} on postgres");
            return None;
        };
        // Database names are at most 63 bytes: name the database by a digest.
        let tag = format!("store_{}", &sha256_hex(test.as_bytes())[..12]);
        let url = support::fresh_postgres(&base, &tag).await;
        let name = reqwest::Url::parse(&url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        Some(FreshPostgres { base, name, store })
    }

    async fn drop(self) {
        use sqlx::Connection as _;
        self.store.close().await;
        let mut conn = sqlx::PgConnection::connect(&self.base).await.unwrap();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

// ---- fixtures ----------------------------------------------------------

const EX: &str = "night-drill";
const TITLE: &str = "Out-of-hours drill";

/// Saturday 27 Feb 2027, 22:00 in Hong Kong: a weekend night.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
        .unwrap()
        .to_utc()
}

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + TimeDelta::minutes(minutes)
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

fn millis(m: i64) -> TimeDelta {
    TimeDelta::milliseconds(m)
}

/// A round fired at `fired_at` with a 30-minute target, a 60-minute deadline
/// and a one-minute settle.
fn clockwork(fired_at: DateTime<Utc>) -> Clockwork {
    Clockwork {
        fired_at,
        target_at: fired_at + TimeDelta::minutes(30),
        deadline_at: fired_at + TimeDelta::minutes(60),
        final_at: fired_at + TimeDelta::minutes(61),
    }
}

/// Ack code number `n`, distinct for distinct `n`.
fn code(n: u32) -> String {
    let base = CODE_ALPHABET.len();
    let mut n = n as usize;
    (0..5)
        .map(|_| {
            let c = CODE_ALPHABET[n % base] as char;
            n /= base;
            c
        })
        .collect()
}

/// Link token number `n`, distinct for distinct `n`.
fn token(n: u32) -> LinkToken {
    LinkToken::parse(&format!("{:032x}", 0x5eed_0000_u128 + u128::from(n))).unwrap()
}

/// A contact messaged in a step, with ack code and token number `n` and one
/// pending message per channel; the message carries the raw link as the
/// engine's rendered messages do.
fn outcome(contact: &str, role: &str, n: u32, step: i64, c: Clockwork, via: &[&str]) -> NewOutcome {
    NewOutcome {
        contact_id: contact.to_owned(),
        role: role.to_owned(),
        code: code(n),
        token_digest: token(n).digest(),
        token_expires_at: c.deadline_at + TimeDelta::hours(24),
        step,
        messages: via
            .iter()
            .map(|channel| NewMessage {
                channel: (*channel).to_owned(),
                address: format!("{contact}.{channel}.example"),
                payload: serde_json::json!({
                    "text": format!("[EXERCISE] {} https://rollcall.example/a/{} [EXERCISE]", code(n), token(n).as_str()),
                })
                .to_string(),
                state: "pending",
                expires_at: c.deadline_at,
            })
            .collect(),
    }
}

/// A department whose primary (`<dept>-primary`, number `n`) is messaged on
/// the given channels.
fn department(dept: &str, n: u32, c: Clockwork, via: &[&str]) -> NewNotification {
    NewNotification {
        department: dept.to_owned(),
        outcomes: vec![outcome(&primary(dept), "primary", n, 1, c, via)],
    }
}

fn primary(dept: &str) -> String {
    format!("{}-primary", dept.to_lowercase())
}

fn sample_roster() -> Roster {
    let mut problems = Problems::default();
    let (roster, _) = contacts::load_dir(&support::root().join("contacts"), &mut problems);
    assert!(!problems.has_errors(), "sample contacts must load");
    roster
}

fn schedule_json(revision: u32) -> String {
    serde_json::json!({"id": EX, "title": TITLE, "revision": revision}).to_string()
}

fn plan(rounds: &[(&str, i64)]) -> Vec<NewRound> {
    rounds
        .iter()
        .map(|(label, minutes)| NewRound {
            label: (*label).to_owned(),
            slot: format!("slot-{label}"),
            planned_at: at(*minutes),
            departments: None,
        })
        .collect()
}

/// Loads the sample roster and an exercise with `rounds` (label, minutes
/// from T0) and starts it, as `exercise load` and `exercise start` do.
/// Returns the roster version.
async fn running_exercise(store: &Store, id: &str, rounds: &[(&str, i64)]) -> i64 {
    let version = store
        .save_roster(&sample_roster(), at(-24 * 60))
        .await
        .unwrap();
    store
        .save_exercise(
            &NewExercise {
                id,
                title: TITLE,
                schedule_json: &schedule_json(1),
                plan_json: "{}",
                roster_version: version,
                rounds: &plan(rounds),
            },
            at(-60),
        )
        .await
        .unwrap();
    assert!(
        store
            .set_exercise_state(id, &["loaded"], "running", at(-30), Some("ops"))
            .await
            .unwrap()
    );
    version
}

async fn round(store: &Store, exercise: &str, label: &str) -> RoundRow {
    store
        .rounds(exercise)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.label == label)
        .unwrap_or_else(|| panic!("round {label} of {exercise}"))
}

async fn fire(
    store: &Store,
    exercise: &str,
    label: &str,
    version: i64,
    c: Clockwork,
    notifications: &[NewNotification],
) {
    let r = round(store, exercise, label).await;
    assert!(
        store
            .fire_round(r.id, version, c, notifications)
            .await
            .unwrap(),
        "{exercise}/{label} fires"
    );
}

fn labels(rounds: Vec<RoundRow>) -> Vec<String> {
    rounds.into_iter().map(|r| r.label).collect()
}

/// The open notification of `dept` (in any exercise).
async fn notification_id(store: &Store, dept: &str) -> i64 {
    store
        .open_notifications()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.department == dept)
        .unwrap_or_else(|| panic!("open notification of {dept}"))
        .id
}

async fn report(store: &Store, exercise: &str) -> BTreeMap<(String, String), ReportRow> {
    store
        .report_rows(exercise)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.round_label.clone(), r.department.clone()), r))
        .collect()
}

async fn row(store: &Store, exercise: &str, round: &str, dept: &str) -> ReportRow {
    report(store, exercise)
        .await
        .remove(&(round.to_owned(), dept.to_owned()))
        .unwrap_or_else(|| panic!("{round}/{dept} in the report"))
}

fn states(rows: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    rows.iter()
        .map(|(c, s, n)| ((*c).to_owned(), (*s).to_owned(), *n))
        .collect()
}

fn ids(messages: &[ClaimedMessage]) -> BTreeSet<i64> {
    messages.iter().map(|m| m.id).collect()
}

fn find<'m>(messages: &'m [ClaimedMessage], contact: &str, channel: &str) -> &'m ClaimedMessage {
    messages
        .iter()
        .find(|m| m.contact_id == contact && m.channel == channel)
        .unwrap_or_else(|| panic!("a claimed {channel} message to {contact}"))
}

/// What an outbox row says beyond what the claim returns.
#[derive(Debug, sqlx::FromRow)]
struct MessageFacts {
    state: String,
    state_reason: Option<String>,
    payload: Option<String>,
    attempts: i64,
    due_at: i64,
    provider: Option<String>,
    provider_ref: Option<String>,
    accepted_at: Option<i64>,
    last_error: Option<String>,
}

async fn message(store: &Store, id: i64) -> MessageFacts {
    const Q: &str = "SELECT state, state_reason, payload, attempts, due_at, provider, provider_ref, \
         accepted_at, last_error FROM messages WHERE id = $1";
    on_db!(store, |p| sqlx::query_as(Q).bind(id).fetch_one(p).await).unwrap()
}

/// (state, reason) of every message of a notification.
async fn messages_of(store: &Store, notification: i64) -> Vec<(String, Option<String>)> {
    const Q: &str =
        "SELECT state, state_reason FROM messages WHERE notification_id = $1 ORDER BY id";
    on_db!(store, |p| sqlx::query_as(Q)
        .bind(notification)
        .fetch_all(p)
        .await)
    .unwrap()
}

/// How many outbox rows still hold `text` in their rendered message.
async fn payloads_containing(store: &Store, text: &str) -> i64 {
    const Q: &str = "SELECT COUNT(*) FROM messages WHERE payload LIKE $1";
    let pattern = format!("%{text}%");
    on_db!(store, |p| sqlx::query_scalar(Q)
        .bind(&pattern)
        .fetch_one(p)
        .await)
    .unwrap()
}

async fn inbound_results(store: &Store) -> Vec<(String, i64)> {
    const Q: &str = "SELECT result, COUNT(*) FROM inbound GROUP BY result ORDER BY result";
    on_db!(store, |p| sqlx::query_as(Q).fetch_all(p).await).unwrap()
}

async fn event_kinds(store: &Store, exercise: Option<&str>) -> Vec<String> {
    store
        .events(exercise)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

// ---- rosters and exercises ---------------------------------------------

async fn rosters_round_trip_and_a_changed_roster_is_a_newer_version(store: &Store) {
    assert_eq!(store.latest_roster_version().await.unwrap(), None);
    let roster = sample_roster();
    let v1 = store.save_roster(&roster, at(-60)).await.unwrap();
    assert_eq!(store.roster(v1).await.unwrap(), roster);
    assert_eq!(store.latest_roster_version().await.unwrap(), Some(v1));
    assert_eq!(
        store.save_roster(&roster, at(-50)).await.unwrap(),
        v1,
        "loading the same contacts again is not a new version"
    );

    let mut changed = roster.clone();
    changed.departments[0].contacts[0].name = "CHAN Tai-man".into();
    let v2 = store.save_roster(&changed, at(-40)).await.unwrap();
    assert!(v2 > v1, "versions increase: {v1} then {v2}");
    assert_eq!(store.roster(v2).await.unwrap(), changed);
    assert_eq!(
        store.roster(v1).await.unwrap(),
        roster,
        "a round that used the old version can still read it"
    );
    assert_eq!(store.latest_roster_version().await.unwrap(), Some(v2));

    let v3 = store.save_roster(&roster, at(-30)).await.unwrap();
    assert!(v3 > v2, "going back is a change from the latest version");
    assert_eq!(store.latest_roster_version().await.unwrap(), Some(v3));

    assert!(matches!(
        store.roster(v3 + 1).await,
        Err(StoreError::NotFound(_))
    ));
    let kinds = event_kinds(store, None).await;
    assert_eq!(count(&kinds, "roster.loaded"), 3, "{kinds:?}");
}

async fn loading_an_exercise_again_changes_nothing_and_its_plan_is_frozen_once_started(
    store: &Store,
) {
    let v = store.save_roster(&sample_roster(), at(-200)).await.unwrap();
    let first = plan(&[("R01", 0), ("R02", 24 * 60)]);
    assert_eq!(
        store
            .save_exercise(
                &NewExercise {
                    id: EX,
                    title: TITLE,
                    schedule_json: &schedule_json(1),
                    plan_json: "{}",
                    roster_version: v,
                    rounds: &first
                },
                at(-120)
            )
            .await
            .unwrap(),
        LoadResult::Created
    );
    let e = store.exercise(EX).await.unwrap().unwrap();
    assert_eq!(e.title, TITLE);
    assert_eq!(e.state, "loaded");
    assert_eq!(e.roster_version, v);
    assert_eq!(e.loaded_at, ms(at(-120)));
    assert_eq!(e.started_at, None);
    let rounds = store.rounds(EX).await.unwrap();
    assert_eq!(labels(rounds.clone()), ["R01", "R02"]);
    assert!(rounds.iter().all(|r| r.state == "planned"));
    assert_eq!(rounds[1].planned_at, ms(at(24 * 60)));

    assert_eq!(
        store
            .save_exercise(
                &NewExercise {
                    id: EX,
                    title: TITLE,
                    schedule_json: &schedule_json(1),
                    plan_json: "{}",
                    roster_version: v,
                    rounds: &first
                },
                at(-110)
            )
            .await
            .unwrap(),
        LoadResult::Unchanged
    );
    let again = store.rounds(EX).await.unwrap();
    assert_eq!(
        again.iter().map(|r| r.id).collect::<Vec<_>>(),
        rounds.iter().map(|r| r.id).collect::<Vec<_>>(),
        "the same file adds no rounds"
    );
    assert_eq!(
        store.exercise(EX).await.unwrap().unwrap().loaded_at,
        ms(at(-120))
    );

    let revised = plan(&[("R01", 30), ("R02", 24 * 60), ("R03", 48 * 60)]);
    assert_eq!(
        store
            .save_exercise(
                &NewExercise {
                    id: EX,
                    title: "Revised drill",
                    schedule_json: &schedule_json(2),
                    plan_json: "{}",
                    roster_version: v,
                    rounds: &revised
                },
                at(-100)
            )
            .await
            .unwrap(),
        LoadResult::Replaced
    );
    let e = store.exercise(EX).await.unwrap().unwrap();
    assert_eq!(e.title, "Revised drill");
    assert_eq!(e.schedule_json, schedule_json(2));
    let rounds = store.rounds(EX).await.unwrap();
    assert_eq!(labels(rounds.clone()), ["R01", "R02", "R03"]);
    assert_eq!(rounds[0].planned_at, ms(at(30)), "the new plan's times");

    assert!(
        store
            .set_exercise_state(EX, &["loaded"], "running", at(-90), Some("ops"))
            .await
            .unwrap()
    );
    let err = store
        .save_exercise(
            &NewExercise {
                id: EX,
                title: TITLE,
                schedule_json: &schedule_json(3),
                plan_json: "{}",
                roster_version: v,
                rounds: &first,
            },
            at(-80),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("has started")),
        "{err}"
    );
    assert_eq!(
        store.exercise(EX).await.unwrap().unwrap().schedule_json,
        schedule_json(2)
    );
    assert_eq!(
        labels(store.rounds(EX).await.unwrap()),
        ["R01", "R02", "R03"]
    );
    assert_eq!(
        store
            .save_exercise(
                &NewExercise {
                    id: EX,
                    title: "Revised drill",
                    schedule_json: &schedule_json(2),
                    plan_json: "{}",
                    roster_version: v,
                    rounds: &revised
                },
                at(-70)
            )
            .await
            .unwrap(),
        LoadResult::Unchanged,
        "the same file is still fine once started"
    );

    let all = store.exercises().await.unwrap();
    assert_eq!(all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [EX]);
    assert!(store.exercise("no-such-drill").await.unwrap().is_none());
    let kinds = event_kinds(store, Some(EX)).await;
    assert_eq!(
        count(&kinds, "exercise.loaded"),
        2,
        "created and replaced, not the unchanged loads: {kinds:?}"
    );
}

async fn an_exercise_changes_state_only_from_the_states_named(store: &Store) {
    let v = store.save_roster(&sample_roster(), at(-200)).await.unwrap();
    store
        .save_exercise(
            &NewExercise {
                id: EX,
                title: TITLE,
                schedule_json: &schedule_json(1),
                plan_json: "{}",
                roster_version: v,
                rounds: &plan(&[("R01", 0)]),
            },
            at(-120),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_exercise_state("no-such-drill", &["loaded"], "running", at(-10), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        !store
            .set_exercise_state(EX, &["running"], "paused", at(-20), None)
            .await
            .unwrap(),
        "a loaded exercise cannot be paused"
    );
    assert_eq!(store.exercise(EX).await.unwrap().unwrap().state, "loaded");

    assert!(
        store
            .set_exercise_state(EX, &["loaded"], "running", at(-10), Some("duty officer"))
            .await
            .unwrap()
    );
    let e = store.exercise(EX).await.unwrap().unwrap();
    assert_eq!(e.state, "running");
    assert_eq!(e.started_at, Some(ms(at(-10))));
    assert_eq!(e.authorised_by.as_deref(), Some("duty officer"));
    assert!(
        !store
            .set_exercise_state(EX, &["loaded"], "running", at(-5), Some("someone else"))
            .await
            .unwrap(),
        "a running exercise is not started twice"
    );
    assert_eq!(
        store
            .exercise(EX)
            .await
            .unwrap()
            .unwrap()
            .authorised_by
            .as_deref(),
        Some("duty officer")
    );

    assert!(
        store
            .set_exercise_state(EX, &["running"], "paused", at(0), None)
            .await
            .unwrap()
    );
    assert_eq!(store.exercise(EX).await.unwrap().unwrap().state, "paused");
    assert!(
        store
            .set_exercise_state(EX, &["paused"], "running", at(5), None)
            .await
            .unwrap()
    );
    let e = store.exercise(EX).await.unwrap().unwrap();
    assert_eq!(e.started_at, Some(ms(at(-10))), "resuming keeps the start");
    assert_eq!(e.authorised_by.as_deref(), Some("duty officer"));

    assert!(
        store
            .set_exercise_state(EX, &["running", "paused"], "ended", at(10), Some("control"))
            .await
            .unwrap()
    );
    let e = store.exercise(EX).await.unwrap().unwrap();
    assert_eq!(e.state, "ended");
    assert_eq!(e.ended_at, Some(ms(at(10))));
    assert_eq!(e.authorised_by.as_deref(), Some("control"));
    assert!(
        !store
            .set_exercise_state(EX, &["running", "paused"], "ended", at(20), None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.exercise(EX).await.unwrap().unwrap().ended_at,
        Some(ms(at(10))),
        "endex happens once"
    );

    let kinds: Vec<String> = event_kinds(store, Some(EX))
        .await
        .into_iter()
        .filter(|k| k != "exercise.loaded")
        .collect();
    assert_eq!(
        kinds,
        [
            "exercise.running",
            "exercise.paused",
            "exercise.running",
            "exercise.ended"
        ],
        "one event per change, none for a refused one"
    );
}

async fn due_rounds_are_planned_rounds_of_running_exercises_whose_time_has_come(store: &Store) {
    let v = store.save_roster(&sample_roster(), at(-200)).await.unwrap();
    store
        .save_exercise(
            &NewExercise {
                id: EX,
                title: TITLE,
                schedule_json: &schedule_json(1),
                plan_json: "{}",
                roster_version: v,
                rounds: &plan(&[("R01", 0), ("R02", 60)]),
            },
            at(-120),
        )
        .await
        .unwrap();
    let due = |t: DateTime<Utc>| async move { labels(store.due_rounds(t).await.unwrap()) };
    assert!(
        due(at(120)).await.is_empty(),
        "a loaded exercise fires nothing"
    );
    assert_eq!(store.next_planned_round_at().await.unwrap(), None);

    assert!(
        store
            .set_exercise_state(EX, &["loaded"], "running", at(-10), Some("ops"))
            .await
            .unwrap()
    );
    assert!(due(at(0) - millis(1)).await.is_empty());
    assert_eq!(due(at(0)).await, ["R01"]);
    assert_eq!(due(at(60)).await, ["R01", "R02"]);
    assert_eq!(store.next_planned_round_at().await.unwrap(), Some(at(0)));

    assert!(
        store
            .set_exercise_state(EX, &["running"], "paused", at(-5), None)
            .await
            .unwrap()
    );
    assert!(
        due(at(60)).await.is_empty(),
        "a paused exercise fires nothing"
    );
    assert_eq!(store.next_planned_round_at().await.unwrap(), None);
    assert!(
        store
            .set_exercise_state(EX, &["paused"], "running", at(20), None)
            .await
            .unwrap()
    );

    let r01 = round(store, EX, "R01").await;
    assert!(
        store
            .skip_round(r01.id, "skipped", "missed beyond grace", at(20))
            .await
            .unwrap()
    );
    let r01 = round(store, EX, "R01").await;
    assert_eq!(r01.state, "skipped");
    assert_eq!(r01.state_reason.as_deref(), Some("missed beyond grace"));
    assert_eq!(r01.closed_at, Some(ms(at(20))));
    assert!(
        !store
            .skip_round(r01.id, "skipped", "again", at(21))
            .await
            .unwrap()
    );
    assert_eq!(due(at(60)).await, ["R02"]);
    assert_eq!(store.next_planned_round_at().await.unwrap(), Some(at(60)));

    let only = ["AFCD".to_owned(), "BD".to_owned()];
    let a1 = store
        .insert_adhoc_round(EX, at(30), true, Some(&only))
        .await
        .unwrap();
    assert_eq!((a1.label.as_str(), a1.state.as_str()), ("A01", "queued"));
    let a2 = store
        .insert_adhoc_round(EX, at(31), false, None)
        .await
        .unwrap();
    assert_eq!((a2.label.as_str(), a2.state.as_str()), ("A02", "planned"));
    assert_eq!(a2.planned_at, ms(at(31)));
    assert_eq!(due(at(31)).await, ["A01", "A02"]);
    assert_eq!(due(at(60)).await, ["A01", "A02", "R02"]);
    let stored = round(store, EX, "A01").await;
    assert_eq!((stored.id, stored.state.as_str()), (a1.id, "queued"));
    assert_eq!(
        stored.departments.as_deref(),
        Some("AFCD,BD"),
        "a queued round remembers the departments it was fired for"
    );
    assert_eq!(round(store, EX, "A02").await.departments, None);

    assert!(
        store
            .fire_round(
                a1.id,
                v,
                clockwork(at(31)),
                &[department("AFCD", 1, clockwork(at(31)), &["sms"])]
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .skip_round(a1.id, "skipped", "missed beyond grace", at(32))
            .await
            .unwrap(),
        "a fired round is not skipped"
    );
    assert_eq!(round(store, EX, "A01").await.state, "fired");
    assert_eq!(due(at(60)).await, ["A02", "R02"]);
    assert!(
        store
            .skip_round(a2.id, "cancelled", "endex", at(33))
            .await
            .unwrap()
    );
    assert_eq!(due(at(60)).await, ["R02"]);
}

// ---- fan-out -----------------------------------------------------------

async fn firing_a_round_writes_each_department_once_with_step_one_contacts_and_messages(
    store: &Store,
) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    // Fired two minutes after its planned time.
    let c = clockwork(at(2));
    let mut cad = department("CAD", 4, c, &["email", "sms"]);
    cad.outcomes[0].messages[1].state = "not_configured";
    let notifications = vec![
        NewNotification {
            department: "AFCD".into(),
            outcomes: vec![
                outcome("afcd-primary", "primary", 1, 1, c, &["sms", "email"]),
                outcome("afcd-duty", "duty", 2, 1, c, &["webhook"]),
            ],
        },
        department("BD", 3, c, &["sms", "email"]),
        cad,
    ];
    let r01 = round(store, EX, "R01").await;
    assert!(
        store
            .fire_round(r01.id, v, c, &notifications)
            .await
            .unwrap()
    );
    let fired = round(store, EX, "R01").await;
    assert_eq!(fired.state, "fired");
    assert_eq!(fired.fired_at, Some(ms(at(2))));
    assert_eq!(fired.planned_at, ms(at(0)), "lateness stays visible");
    assert_eq!(fired.roster_version, Some(v));
    assert_eq!(fired.departments.as_deref(), Some("AFCD,BD,CAD"));

    let again = vec![department("DPO", 10, clockwork(at(3)), &["sms"])];
    assert!(
        !store
            .fire_round(r01.id, v, clockwork(at(3)), &again)
            .await
            .unwrap(),
        "a round fires exactly once"
    );
    assert_eq!(round(store, EX, "R01").await.fired_at, Some(ms(at(2))));

    let open = store.open_notifications().await.unwrap();
    assert_eq!(
        open.iter()
            .map(|n| n.department.as_str())
            .collect::<Vec<_>>(),
        ["AFCD", "BD", "CAD"]
    );
    for n in &open {
        assert_eq!(n.step, 1);
        assert_eq!(n.acked_at, None);
        assert_eq!(n.round_label, "R01");
        assert_eq!(n.exercise_id, EX);
        assert_eq!(n.fired_at, ms(at(2)));
        assert_eq!(n.roster_version, v);
    }
    let mut afcd = store.notified_contacts(open[0].id).await.unwrap();
    afcd.sort();
    assert_eq!(afcd, ["afcd-duty", "afcd-primary"]);

    assert_eq!(
        store.message_states(EX).await.unwrap(),
        states(&[
            ("email", "pending", 3),
            ("sms", "not_configured", 1),
            ("sms", "pending", 2),
            ("webhook", "pending", 1),
        ])
    );
    let rows = report(store, EX).await;
    assert_eq!(rows.len(), 3, "one notification per department");
    let messages: Vec<i64> = rows.values().map(|r| r.messages).collect();
    assert_eq!(messages, [3, 2, 2]);
    assert!(rows.values().all(|r| r.status == "open" && r.step == 1));
    assert_eq!(store.next_message_due().await.unwrap(), Some(at(2)));
    assert_eq!(store.next_final_at().await.unwrap(), Some(c.final_at));

    let info = store.token_info(&token(1).digest()).await.unwrap().unwrap();
    assert_eq!(info.contact_id, "afcd-primary");
    assert_eq!(info.role, "primary");
    assert_eq!(info.code, code(1));
    assert_eq!(info.department, "AFCD");
    assert_eq!(info.round_label, "R01");
    assert_eq!(info.exercise_id, EX);
    assert_eq!(info.exercise_title, TITLE);
    assert_eq!(
        info.token_expires_at,
        ms(c.deadline_at + TimeDelta::hours(24))
    );
    assert_eq!(info.outcome_acked_at, None);
    assert!(
        store.token_info(token(1).as_str()).await.unwrap().is_none(),
        "the raw token is not what the store looks up"
    );
}

async fn a_code_already_live_refuses_the_whole_fan_out_and_new_codes_fire_it(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0), ("R02", 60)]).await;
    let c1 = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c1,
        &[
            department("AFCD", 1, c1, &["sms"]),
            department("BD", 2, c1, &["sms"]),
        ],
    )
    .await;

    let c2 = clockwork(at(60));
    let r02 = round(store, EX, "R02").await;
    let mut clash = vec![
        department("AFCD", 11, c2, &["sms"]),
        department("BD", 12, c2, &["sms"]),
    ];
    // BD's new code is the one R01's BD contact still holds.
    clash[1].outcomes[0].code = code(2);
    let got = store.fire_round(r02.id, v, c2, &clash).await;
    assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}");
    let r02 = round(store, EX, "R02").await;
    assert_eq!((r02.state.as_str(), r02.fired_at), ("planned", None));
    assert_eq!(labels(store.due_rounds(at(60)).await.unwrap()), ["R02"]);
    assert_eq!(
        report(store, EX).await.len(),
        2,
        "nothing of the refused fan-out was written"
    );
    assert_eq!(
        store.message_states(EX).await.unwrap(),
        states(&[("sms", "pending", 2)])
    );

    let mut twins = vec![
        department("AFCD", 21, c2, &["sms"]),
        department("BD", 22, c2, &["sms"]),
    ];
    // Two departments of one fan-out drew the same code.
    twins[1].outcomes[0].code = code(21);
    assert!(matches!(
        store.fire_round(r02.id, v, c2, &twins).await,
        Err(StoreError::Conflict(_))
    ));

    assert!(
        store
            .fire_round(
                r02.id,
                v,
                c2,
                &[
                    department("AFCD", 31, c2, &["sms"]),
                    department("BD", 32, c2, &["sms"]),
                ],
            )
            .await
            .unwrap()
    );
    let rows = report(store, EX).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        store
            .token_info(&token(32).digest())
            .await
            .unwrap()
            .unwrap()
            .code,
        code(32)
    );
}

// ---- the outbox ----------------------------------------------------------

async fn a_due_message_goes_to_one_worker_until_its_claim_lapses(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let depts: Vec<NewNotification> = ["AFCD", "BD", "CAD", "DPO", "FSD"]
        .iter()
        .zip(1..)
        .map(|(d, n)| department(d, n, c, &["sms", "email"]))
        .collect();
    fire(store, EX, "R01", v, c, &depts).await;

    let t = at(0);
    let w1 = store
        .claim_messages("w1", t, t + secs(30), 4)
        .await
        .unwrap();
    assert_eq!(w1.len(), 4);
    assert!(w1.iter().all(|m| m.attempts == 1 && m.payload.is_some()));
    let w2 = store
        .claim_messages("w2", t + secs(1), t + secs(31), 10)
        .await
        .unwrap();
    assert_eq!(w2.len(), 6);
    assert!(ids(&w1).is_disjoint(&ids(&w2)));
    assert!(
        store
            .claim_messages("w3", t + secs(2), t + secs(60), 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is handed out twice while claimed"
    );
    assert!(
        store
            .claim_messages("w3", t + secs(30), t + secs(60), 10)
            .await
            .unwrap()
            .is_empty(),
        "a claim holds up to its expiry"
    );

    let w3 = store
        .claim_messages("w3", t + secs(30) + millis(1), t + secs(300), 10)
        .await
        .unwrap();
    assert_eq!(ids(&w3), ids(&w1), "w1's lapsed claims, not w2's live ones");
    assert!(w3.iter().all(|m| m.attempts == 2));
    assert_eq!(
        store.next_message_due().await.unwrap(),
        Some(t + secs(31) + millis(1)),
        "w2's claims lapse first, the millisecond after their expiry"
    );

    assert!(
        store
            .claim_messages("w4", at(60), at(61), 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is sent at or after its deadline"
    );
    assert_eq!(
        store.message_states(EX).await.unwrap(),
        states(&[("email", "expired", 5), ("sms", "expired", 5)])
    );
    let m = message(store, w2[0].id).await;
    assert_eq!(
        m.state_reason.as_deref(),
        Some("deadline passed before sending")
    );
    assert_eq!(m.payload, None);
    assert_eq!(store.next_message_due().await.unwrap(), None);
}

async fn a_crashed_send_is_not_repeated_once_the_department_has_acked(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[department("AFCD", 1, c, &["sms"])],
    )
    .await;
    // A sender claims the SMS and dies before recording the result.
    let claimed = store
        .claim_messages("crashed", at(0), at(0) + secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The department acks through its email link meanwhile.
    assert!(matches!(
        store
            .record_link_ack(&token(1).digest(), at(0) + secs(10), None)
            .await
            .unwrap(),
        AckOutcome::Acked { .. }
    ));
    // The claim lapses: the SMS is not handed out again, and is recorded why.
    assert!(
        store
            .claim_messages("w2", at(1), at(2), 10)
            .await
            .unwrap()
            .is_empty(),
        "an acked department is not messaged again"
    );
    let m = message(store, claimed[0].id).await;
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("cancelled", Some("acked"))
    );
    assert_eq!(
        store.next_message_due().await.unwrap(),
        None,
        "nothing left to wake for"
    );
}

async fn a_code_is_retired_a_day_after_its_deadline_and_can_be_issued_again(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0), ("R02", 25 * 60)]).await;
    let c1 = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c1,
        &[department("AFCD", 1, c1, &["sms"])],
    )
    .await;
    let c2 = clockwork(at(25 * 60));
    let r02 = round(store, EX, "R02").await;
    // One minute before R01's codes retire (deadline + 24 h), the code is still live.
    store
        .finalise_due(c1.deadline_at + TimeDelta::hours(24) - secs(60))
        .await
        .unwrap();
    let reuse = || {
        let mut d = department("BD", 2, c2, &["sms"]);
        d.outcomes[0].code = code(1);
        vec![d]
    };
    assert!(matches!(
        store.fire_round(r02.id, v, c2, &reuse()).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .finalise_due(c1.deadline_at + TimeDelta::hours(24))
        .await
        .unwrap();
    assert!(
        store.fire_round(r02.id, v, c2, &reuse()).await.unwrap(),
        "a retired code can be issued again"
    );
}

async fn claimers_working_at_once_never_share_a_message(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let depts: Vec<NewNotification> = ["AFCD", "BD", "CAD", "DPO", "FSD", "HYD"]
        .iter()
        .zip(1..)
        .map(|(d, n)| department(d, n, c, &["sms", "email"]))
        .collect();
    fire(store, EX, "R01", v, c, &depts).await;

    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = store.clone();
        workers.spawn(async move {
            store
                .claim_messages(&format!("w{w}"), at(1), at(2), 5)
                .await
                .unwrap()
        });
    }
    let mut claimed: Vec<i64> = Vec::new();
    while let Some(batch) = workers.join_next().await {
        claimed.extend(batch.unwrap().iter().map(|m| m.id));
    }
    let distinct: BTreeSet<i64> = claimed.iter().copied().collect();
    assert_eq!(
        claimed.len(),
        distinct.len(),
        "a message went to two workers"
    );
    assert_eq!(distinct.len(), 12, "every due message was claimed once");
}

/// A batch of results (larger than one SQLite recording statement, which
/// takes 64 rows, the last padded with rows that match nothing; one
/// statement on PostgreSQL) records every acceptance with its provider's
/// reference, gives each contact the time of its first acceptance (a
/// contact's later message listed first), and leaves the messages it does
/// not name alone.
async fn a_batch_of_acceptances_records_every_message_and_each_contacts_first(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let departments: Vec<NewNotification> = (0..160_u32)
        .map(|n| department(&format!("D{n:03}"), n + 1, c, &["sms", "email"]))
        .collect();
    fire(store, EX, "R01", v, c, &departments).await;
    let t = at(0);
    let claimed = store
        .claim_messages("w1", t + secs(1), t + secs(31), 1_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 320);
    // D159's two messages are still being sent; the other 318 were taken,
    // each email (listed first) at 3 s and each SMS at 2 s.
    let (left, done): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|m| m.contact_id == primary("D159"));
    let (emails, texts): (Vec<_>, Vec<_>) = done.into_iter().partition(|m| m.channel == "email");
    let finished: Vec<Finished> = emails
        .iter()
        .chain(&texts)
        .map(|m| {
            let sms = m.channel == "sms";
            Finished {
                message: m.clone(),
                result: SendResult::Accepted {
                    provider: if sms { "primary" } else { "smtp" }.into(),
                    provider_ref: Some(format!("ref-{}", m.id)),
                },
                at: t + secs(if sms { 2 } else { 3 }),
                retry_after: None,
            }
        })
        .collect();
    assert_eq!(finished.len(), 318);
    let more = store
        .finish_and_claim(
            &finished,
            &Claim {
                worker: "w1",
                now: t + secs(4),
                until: t + secs(34),
                limit: 0,
                lapsed: false,
            },
        )
        .await
        .unwrap();
    assert!(more.is_empty(), "nothing was asked for");
    for f in &finished {
        let m = message(store, f.message.id).await;
        let sms = f.message.channel == "sms";
        assert_eq!(m.state, "accepted", "message {}", f.message.id);
        assert_eq!(m.accepted_at, Some(ms(t + secs(if sms { 2 } else { 3 }))));
        assert_eq!(
            m.provider.as_deref(),
            Some(if sms { "primary" } else { "smtp" })
        );
        assert_eq!(m.provider_ref, Some(format!("ref-{}", f.message.id)));
        assert_eq!(m.payload, None);
    }
    for m in &left {
        let facts = message(store, m.id).await;
        assert_eq!(facts.state, "sending", "a message the batch did not name");
        assert_eq!(facts.accepted_at, None);
    }
    const FIRST: &str = "SELECT contact_id, accepted_at FROM outcomes ORDER BY contact_id";
    let firsts: Vec<(String, Option<i64>)> =
        on_db!(store, |p| sqlx::query_as(FIRST).fetch_all(p).await).unwrap();
    assert_eq!(firsts.len(), 160);
    for (contact, first) in firsts {
        let expected = (contact != primary("D159")).then(|| ms(t + secs(2)));
        assert_eq!(
            first, expected,
            "{contact}: the earlier of its two acceptances"
        );
    }
}

/// A fan-out that spans several insert statements on either backend
/// (SQLite's take 500 rows, PostgreSQL's 10,000) writes every message
/// once, hung from its own contact's outcome and department, with its own
/// address and rendered text.
async fn a_round_larger_than_one_statement_gives_every_contact_its_own_messages(store: &Store) {
    const DEPARTMENTS: u32 = 3_400;
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let departments: Vec<NewNotification> = (0..DEPARTMENTS)
        .map(|n| department(&format!("D{n:04}"), n + 1, c, &["sms", "email", "webhook"]))
        .collect();
    fire(store, EX, "R01", v, c, &departments).await;
    const ROWS: &str = "SELECT n.department, o.contact_id, o.code, m.contact_id, m.channel, m.address, m.payload \
         FROM messages m JOIN outcomes o ON o.id = m.outcome_id JOIN notifications n ON n.id = m.notification_id \
         ORDER BY m.id";
    type Row = (
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
    );
    let rows: Vec<Row> = on_db!(store, |p| sqlx::query_as(ROWS).fetch_all(p).await).unwrap();
    assert_eq!(
        rows.len(),
        3 * DEPARTMENTS as usize,
        "one message per channel"
    );
    let mut seen = BTreeSet::new();
    for (dept, outcome_contact, outcome_code, contact, channel, address, payload) in rows {
        let n: u32 = dept[1..].parse().unwrap();
        assert_eq!(
            outcome_contact,
            primary(&dept),
            "{dept}: the outcome of its own contact"
        );
        assert_eq!(
            contact, outcome_contact,
            "{dept}: the message names its outcome's contact"
        );
        assert_eq!(outcome_code, code(n + 1), "{dept}: its own code");
        assert_eq!(address, format!("{contact}.{channel}.example"));
        let text = payload.unwrap_or_default();
        assert!(
            text.contains(&outcome_code),
            "{dept} {channel}: its own rendered text, got {text}"
        );
        assert!(seen.insert((dept, channel)), "a message written twice");
    }
    let outcomes: i64 = on_db!(store, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM outcomes"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(outcomes, i64::from(DEPARTMENTS));
}

async fn the_outbox_records_what_each_provider_said(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[
            department("AFCD", 1, c, &["sms", "email"]),
            department("BD", 2, c, &["sms"]),
            department("CAD", 3, c, &["email"]),
            department("DPO", 4, c, &["webhook"]),
            department("FSD", 5, c, &["sms"]),
        ],
    )
    .await;
    let t = at(0);
    let claimed = store
        .claim_messages("w1", t + secs(1), t + secs(31), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 6);
    assert_eq!(
        payloads_containing(store, token(1).as_str()).await,
        2,
        "the rendered messages carry the link until sent"
    );

    let afcd_email = find(&claimed, "afcd-primary", "email");
    let afcd_sms = find(&claimed, "afcd-primary", "sms");
    let accepted = |provider: &str, r: &str| SendResult::Accepted {
        provider: provider.into(),
        provider_ref: Some(r.into()),
    };
    store
        .finish_message(
            afcd_email,
            &accepted("smtp", "<m1@rollcall>"),
            t + secs(2),
            None,
        )
        .await
        .unwrap();
    store
        .finish_message(afcd_sms, &accepted("primary", "SM0001"), t + secs(5), None)
        .await
        .unwrap();
    let m = message(store, afcd_email.id).await;
    assert_eq!(m.state, "accepted");
    assert_eq!(m.accepted_at, Some(ms(t + secs(2))));
    assert_eq!(m.provider.as_deref(), Some("smtp"));
    assert_eq!(m.provider_ref.as_deref(), Some("<m1@rollcall>"));
    assert_eq!(m.payload, None);
    assert_eq!(
        payloads_containing(store, token(1).as_str()).await,
        0,
        "the raw link leaves the database once the provider has the message"
    );
    let afcd = row(store, EX, "R01", "AFCD").await;
    assert_eq!(
        afcd.first_accepted_at,
        Some(ms(t + secs(2))),
        "dispatch delay counts the first acceptance"
    );
    assert_eq!((afcd.messages, afcd.messages_reached), (2, 2));

    let transient = |e: &str| SendResult::Failed {
        provider: "primary".into(),
        permanent: false,
        error: e.into(),
    };
    let bd_sms = find(&claimed, "bd-primary", "sms");
    store
        .finish_message(
            bd_sms,
            &transient("HTTP 503"),
            t + secs(3),
            Some(TimeDelta::minutes(2)),
        )
        .await
        .unwrap();
    let m = message(store, bd_sms.id).await;
    assert_eq!(m.state, "pending");
    assert_eq!(m.due_at, ms(t + secs(3) + TimeDelta::minutes(2)));
    assert_eq!(m.last_error.as_deref(), Some("HTTP 503"));

    let cad_email = find(&claimed, "cad-primary", "email");
    store
        .finish_message(
            cad_email,
            &SendResult::Failed {
                provider: "smtp".into(),
                permanent: true,
                error: "550 no such user".into(),
            },
            t + secs(3),
            Some(TimeDelta::minutes(2)),
        )
        .await
        .unwrap();
    let m = message(store, cad_email.id).await;
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("failed", Some("permanent"))
    );
    assert_eq!(m.payload, None);

    let dpo_hook = find(&claimed, "dpo-primary", "webhook");
    store
        .finish_message(
            dpo_hook,
            &transient("connection refused"),
            t + secs(3),
            Some(TimeDelta::minutes(61)),
        )
        .await
        .unwrap();
    let m = message(store, dpo_hook.id).await;
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("expired", Some("retries would run past the deadline")),
        "no retry is scheduled past the deadline: the message expires unsent"
    );

    let fsd_sms = find(&claimed, "fsd-primary", "sms");
    store
        .finish_message(fsd_sms, &SendResult::NotConfigured, t + secs(3), None)
        .await
        .unwrap();
    assert_eq!(message(store, fsd_sms.id).await.state, "not_configured");

    let retry_at = t + secs(3) + TimeDelta::minutes(2);
    assert_eq!(store.next_message_due().await.unwrap(), Some(retry_at));
    assert!(
        store
            .claim_messages("w2", retry_at - millis(1), retry_at + secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "a retry waits for its time; finished messages are never claimed again"
    );
    let retry = store
        .claim_messages("w2", retry_at, retry_at + secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&retry), BTreeSet::from([bd_sms.id]));
    assert_eq!(retry[0].attempts, 2);
    store
        .finish_message(
            &retry[0],
            &transient("HTTP 503"),
            retry_at + secs(1),
            Some(TimeDelta::minutes(2)),
        )
        .await
        .unwrap();

    assert!(
        store
            .claim_messages("w3", at(60), at(61), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let m = message(store, bd_sms.id).await;
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("expired", Some("deadline passed before sending")),
        "a retry still pending at the deadline is never sent late"
    );
    assert_eq!(m.attempts, 2);
    assert_eq!(
        store.message_states(EX).await.unwrap(),
        states(&[
            ("email", "accepted", 1),
            ("email", "failed", 1),
            ("sms", "accepted", 1),
            ("sms", "expired", 1),
            ("sms", "not_configured", 1),
            ("webhook", "expired", 1),
        ])
    );
}

async fn an_escalation_step_adds_contacts_to_an_unacknowledged_department_once(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[
            department("AFCD", 1, c, &["sms"]),
            department("BD", 2, c, &["sms"]),
        ],
    )
    .await;
    let step1 = store.claim_messages("w1", at(0), at(59), 10).await.unwrap();
    assert_eq!(step1.len(), 2);

    let afcd = notification_id(store, "AFCD").await;
    let alternate = outcome("afcd-alternate", "alternate", 3, 2, c, &["sms", "email"]);
    assert!(store.add_step(afcd, 2, &[alternate], at(15)).await.unwrap());
    let steps: Vec<(String, i64)> = store
        .open_notifications()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.department, n.step))
        .collect();
    assert_eq!(steps, [("AFCD".to_owned(), 2), ("BD".to_owned(), 1)]);
    assert_eq!(row(store, EX, "R01", "AFCD").await.status, "escalated");
    assert_eq!(row(store, EX, "R01", "BD").await.status, "open");
    let mut notified = store.notified_contacts(afcd).await.unwrap();
    notified.sort();
    assert_eq!(notified, ["afcd-alternate", "afcd-primary"]);
    assert_eq!(
        store
            .token_info(&token(3).digest())
            .await
            .unwrap()
            .unwrap()
            .role,
        "alternate"
    );
    let step2 = store
        .claim_messages("w1", at(15), at(16), 10)
        .await
        .unwrap();
    assert_eq!(
        step2
            .iter()
            .map(|m| (m.contact_id.as_str(), m.channel.as_str()))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([("afcd-alternate", "email"), ("afcd-alternate", "sms")]),
        "the step's messages are due when it is sent"
    );

    assert!(
        !store
            .add_step(
                afcd,
                2,
                &[outcome("afcd-duty", "duty", 4, 2, c, &["sms"])],
                at(16)
            )
            .await
            .unwrap(),
        "a step is sent once"
    );
    // A step whose drawn code is BD's live one adds nothing; the engine draws again.
    let mut clash = outcome("afcd-duty", "duty", 5, 3, c, &["sms"]);
    clash.code = code(2);
    assert!(matches!(
        store.add_step(afcd, 3, &[clash], at(30)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.notified_contacts(afcd).await.unwrap().len(), 2);
    assert_eq!(row(store, EX, "R01", "AFCD").await.step, 2);

    assert!(matches!(
        store
            .record_link_ack(&token(1).digest(), at(31), None)
            .await
            .unwrap(),
        AckOutcome::Acked { .. }
    ));
    assert!(
        !store
            .add_step(
                afcd,
                3,
                &[outcome("afcd-duty", "duty", 6, 3, c, &["sms"])],
                at(45)
            )
            .await
            .unwrap(),
        "an acknowledged department is not escalated"
    );
    assert_eq!(row(store, EX, "R01", "AFCD").await.step, 2);
    assert_eq!(store.notified_contacts(afcd).await.unwrap().len(), 2);
}

// ---- finalisation and acks ---------------------------------------------

async fn notifications_become_final_at_deadline_plus_settle_by_the_status_rule(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0), ("R02", 30)]).await;
    let c = clockwork(at(0));
    let depts: Vec<NewNotification> = ["AFCD", "BD", "CAD", "DPO", "FSD", "HYD"]
        .iter()
        .zip(1..)
        .map(|(d, n)| department(d, n, c, &["sms"]))
        .collect();
    fire(store, EX, "R01", v, c, &depts).await;
    let claimed = store
        .claim_messages("w1", at(0), at(0) + secs(30), 10)
        .await
        .unwrap();
    for m in &claimed {
        let result = if m.contact_id == "dpo-primary" {
            SendResult::Failed {
                provider: "primary".into(),
                permanent: true,
                error: "21614 not a mobile number".into(),
            }
        } else {
            SendResult::Accepted {
                provider: "primary".into(),
                provider_ref: None,
            }
        };
        store
            .finish_message(m, &result, at(0) + secs(2), None)
            .await
            .unwrap();
    }
    let hyd = notification_id(store, "HYD").await;
    assert!(
        store
            .add_step(
                hyd,
                2,
                &[outcome("hyd-alternate", "alternate", 7, 2, c, &["sms"])],
                at(15)
            )
            .await
            .unwrap()
    );
    let ack = |n: u32, when: DateTime<Utc>| async move {
        let got = store
            .record_link_ack(&token(n).digest(), when, Some("198.51.100.7"))
            .await
            .unwrap();
        assert!(matches!(got, AckOutcome::Acked { .. }), "{got:?}");
    };
    ack(1, c.target_at).await;
    ack(2, c.deadline_at).await;
    ack(5, c.deadline_at + secs(30)).await;

    // A second round, fired later, is final later.
    let c2 = clockwork(at(30));
    fire(
        store,
        EX,
        "R02",
        v,
        c2,
        &[department("LD", 8, c2, &["sms"])],
    )
    .await;

    assert_eq!(store.finalise_due(c.final_at - millis(1)).await.unwrap(), 0);
    let before: Vec<(String, String)> = report(store, EX)
        .await
        .into_values()
        .map(|r| (r.department, r.status))
        .collect();
    assert_eq!(
        before,
        [
            ("AFCD", "open"),
            ("BD", "open"),
            ("CAD", "open"),
            ("DPO", "open"),
            ("FSD", "open"),
            ("HYD", "escalated"),
            ("LD", "open"),
        ]
        .map(|(d, s)| (d.to_owned(), s.to_owned())),
        "nothing is final before deadline + settle, acked or not"
    );
    assert_eq!(round(store, EX, "R01").await.state, "fired");
    assert_eq!(store.next_final_at().await.unwrap(), Some(c.final_at));

    assert_eq!(store.finalise_due(c.final_at).await.unwrap(), 6);
    let rows = report(store, EX).await;
    let status = |d: &str| rows[&("R01".to_owned(), d.to_owned())].status.clone();
    assert_eq!(status("AFCD"), "on_target", "acked at the target");
    assert_eq!(status("BD"), "late", "acked at the deadline");
    assert_eq!(status("CAD"), "missed", "accepted, never acked");
    assert_eq!(
        status("DPO"),
        "unreachable",
        "no message reached a provider"
    );
    assert_eq!(status("FSD"), "missed", "acked after the deadline");
    assert_eq!(status("HYD"), "missed", "escalated, never acked");
    let afcd = &rows[&("R01".to_owned(), "AFCD".to_owned())];
    assert_eq!(afcd.acked_at, Some(ms(c.target_at)));
    assert_eq!(afcd.ack_channel.as_deref(), Some("link"));
    assert_eq!(afcd.ack_contact.as_deref(), Some("afcd-primary"));
    let fsd = &rows[&("R01".to_owned(), "FSD".to_owned())];
    assert_eq!(fsd.acked_at, None);
    assert_eq!(
        fsd.ack_after_deadline_at,
        Some(ms(c.deadline_at + secs(30))),
        "a late ack is kept as a fact"
    );
    assert_eq!(rows[&("R02".to_owned(), "LD".to_owned())].status, "open");
    let r01 = round(store, EX, "R01").await;
    assert_eq!(
        (r01.state.as_str(), r01.closed_at),
        ("closed", Some(ms(c.final_at)))
    );
    assert_eq!(round(store, EX, "R02").await.state, "fired");
    assert_eq!(store.finalise_due(c.final_at).await.unwrap(), 0);
    assert_eq!(store.next_final_at().await.unwrap(), Some(c2.final_at));

    assert_eq!(store.finalise_due(c2.final_at).await.unwrap(), 1);
    assert_eq!(
        row(store, EX, "R02", "LD").await.status,
        "unreachable",
        "its only message expired unsent"
    );
    assert_eq!(round(store, EX, "R02").await.state, "closed");
    assert!(store.open_notifications().await.unwrap().is_empty());
    assert_eq!(store.next_final_at().await.unwrap(), None);
}

async fn a_link_ack_counts_once_and_a_repeat_is_stored_without_a_new_ack(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[
            NewNotification {
                department: "AFCD".into(),
                outcomes: vec![
                    outcome("afcd-primary", "primary", 1, 1, c, &["sms", "email"]),
                    outcome("afcd-duty", "duty", 2, 1, c, &["email"]),
                ],
            },
            NewNotification {
                department: "BD".into(),
                outcomes: vec![
                    outcome("bd-observer", "observer", 3, 1, c, &["email"]),
                    outcome("bd-primary", "primary", 4, 1, c, &["sms"]),
                ],
            },
        ],
    )
    .await;
    let afcd = notification_id(store, "AFCD").await;
    let bd = notification_id(store, "BD").await;

    assert_eq!(
        store
            .record_link_ack(&token(99).digest(), at(1), Some("203.0.113.9"))
            .await
            .unwrap(),
        AckOutcome::Unknown
    );
    assert_eq!(store.inbound_count().await.unwrap(), 1);
    assert_eq!(store.ack_count().await.unwrap(), 0);

    assert_eq!(
        store
            .record_link_ack(&token(1).digest(), at(5), Some("198.51.100.7"))
            .await
            .unwrap(),
        AckOutcome::Acked {
            department: "AFCD".into(),
            round: "R01".into(),
            at: at(5),
        }
    );
    assert_eq!(store.ack_count().await.unwrap(), 1);
    assert_eq!(store.inbound_count().await.unwrap(), 2);
    let acked_at = |dept: &'static str| async move {
        store
            .open_notifications()
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.department == dept)
            .unwrap()
            .acked_at
    };
    assert_eq!(acked_at("AFCD").await, Some(ms(at(5))));
    assert_eq!(
        store
            .token_info(&token(1).digest())
            .await
            .unwrap()
            .unwrap()
            .outcome_acked_at,
        Some(ms(at(5)))
    );
    assert!(
        messages_of(store, afcd)
            .await
            .iter()
            .all(|(s, r)| s == "cancelled" && r.as_deref() == Some("acked")),
        "an ack cancels the department's unsent messages"
    );
    assert!(
        messages_of(store, bd)
            .await
            .iter()
            .all(|(s, _)| s == "pending"),
        "other departments' messages still go out"
    );

    assert_eq!(
        store
            .record_link_ack(&token(1).digest(), at(6), Some("198.51.100.7"))
            .await
            .unwrap(),
        AckOutcome::AlreadyAcknowledged {
            department: "AFCD".into(),
            round: "R01".into(),
        }
    );
    assert_eq!(store.ack_count().await.unwrap(), 1, "a repeat adds no ack");
    assert_eq!(store.inbound_count().await.unwrap(), 3, "but is stored");
    assert_eq!(acked_at("AFCD").await, Some(ms(at(5))));

    assert!(matches!(
        store
            .record_link_ack(&token(2).digest(), at(7), None)
            .await
            .unwrap(),
        AckOutcome::Acked { .. }
    ));
    assert_eq!(
        store.ack_count().await.unwrap(),
        2,
        "a colleague's ack is recorded"
    );
    assert_eq!(
        acked_at("AFCD").await,
        Some(ms(at(5))),
        "later acks do not change the latency"
    );

    assert!(matches!(
        store
            .record_link_ack(&token(3).digest(), at(8), None)
            .await
            .unwrap(),
        AckOutcome::Acked { .. }
    ));
    assert_eq!(store.ack_count().await.unwrap(), 3);
    assert_eq!(
        acked_at("BD").await,
        None,
        "an observer's ack does not count"
    );
    assert!(
        messages_of(store, bd)
            .await
            .iter()
            .all(|(s, _)| s == "pending"),
        "nor does it cancel the department's messages"
    );
    assert_eq!(row(store, EX, "R01", "BD").await.ack_channel, None);
    assert_eq!(
        row(store, EX, "R01", "AFCD").await.ack_contact.as_deref(),
        Some("afcd-primary")
    );

    let expiry = c.deadline_at + TimeDelta::hours(24);
    assert_eq!(
        store
            .record_link_ack(&token(4).digest(), expiry + millis(1), None)
            .await
            .unwrap(),
        AckOutcome::Expired
    );
    assert_eq!(store.ack_count().await.unwrap(), 3);
    assert_eq!(
        inbound_results(store).await,
        [("acked", 3), ("refused", 2), ("repeat", 1)].map(|(r, n)| (r.to_owned(), n))
    );
    let kinds = event_kinds(store, Some(EX)).await;
    assert_eq!(count(&kinds, "ack.recorded"), 3, "{kinds:?}");
}

async fn simultaneous_posts_of_one_link_record_one_ack_and_every_attempt(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[department("AFCD", 1, c, &["email"])],
    )
    .await;

    // A double tap and a mail scanner's retries arrive together.
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        posts.spawn(async move {
            store
                .record_link_ack(&token(1).digest(), at(5) + millis(i), None)
                .await
        });
    }
    let mut acked = 0;
    let mut repeats = 0;
    while let Some(outcome) = posts.join_next().await {
        match outcome.unwrap() {
            Ok(AckOutcome::Acked { .. }) => acked += 1,
            Ok(AckOutcome::AlreadyAcknowledged { .. }) => repeats += 1,
            other => panic!("every post is answered: {other:?}"),
        }
    }
    assert_eq!((acked, repeats), (1, 7));
    assert_eq!(store.ack_count().await.unwrap(), 1);
    assert_eq!(
        store.inbound_count().await.unwrap(),
        8,
        "every attempt is stored"
    );
}

async fn every_inbound_attempt_is_stored_even_when_it_matches_nothing(store: &Store) {
    assert_eq!(store.inbound_count().await.unwrap(), 0);
    let a = store
        .record_inbound(
            at(1),
            "sms",
            Some("+85291234567"),
            "ACK 7KQ4M",
            None,
            "refused",
            Some("unknown code"),
        )
        .await
        .unwrap();
    let b = store
        .record_inbound(
            at(1),
            "sms",
            Some("+85291234567"),
            "ACK 7KQ4M",
            None,
            "refused",
            Some("unknown code"),
        )
        .await
        .unwrap();
    assert!(b > a, "the same attempt twice is two rows");

    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c,
        &[department("AFCD", 1, c, &["email"])],
    )
    .await;
    let outcome = store
        .token_info(&token(1).digest())
        .await
        .unwrap()
        .unwrap()
        .outcome_id;
    let d = store
        .record_inbound(
            at(3),
            "email",
            Some("yt.yeung@afcd.example"),
            "Re: [EXERCISE] received",
            Some(outcome),
            "refused",
            Some("auto-reply"),
        )
        .await
        .unwrap();
    assert_eq!(store.inbound_count().await.unwrap(), 3);

    type Inbound = (
        i64,
        String,
        Option<String>,
        String,
        Option<i64>,
        String,
        Option<String>,
    );
    const Q: &str = "SELECT received_at, channel, source, raw, outcome_id, result, reason FROM inbound WHERE id = $1";
    let stored: Inbound = on_db!(store, |p| sqlx::query_as(Q).bind(d).fetch_one(p).await).unwrap();
    assert_eq!(
        stored,
        (
            ms(at(3)),
            "email".to_owned(),
            Some("yt.yeung@afcd.example".to_owned()),
            "Re: [EXERCISE] received".to_owned(),
            Some(outcome),
            "refused".to_owned(),
            Some("auto-reply".to_owned()),
        )
    );
}

async fn endex_cancels_the_open_work_of_that_exercise_and_nothing_else(store: &Store) {
    const OTHER: &str = "other-drill";
    let v = running_exercise(store, EX, &[("R01", 0), ("R02", 120), ("R03", 24 * 60)]).await;
    running_exercise(store, OTHER, &[("R01", 120)]).await;

    let c1 = clockwork(at(0));
    fire(
        store,
        EX,
        "R01",
        v,
        c1,
        &[department("AFCD", 1, c1, &["sms"])],
    )
    .await;
    let first = store.claim_messages("w", at(0), at(1), 10).await.unwrap();
    store
        .finish_message(
            &first[0],
            &SendResult::Accepted {
                provider: "primary".into(),
                provider_ref: None,
            },
            at(0) + secs(1),
            None,
        )
        .await
        .unwrap();
    assert_eq!(store.finalise_due(c1.final_at).await.unwrap(), 1);

    let c2 = clockwork(at(120));
    fire(
        store,
        EX,
        "R02",
        v,
        c2,
        &[
            department("AFCD", 2, c2, &["sms", "email"]),
            department("BD", 3, c2, &["sms"]),
        ],
    )
    .await;
    fire(
        store,
        OTHER,
        "R01",
        v,
        c2,
        &[department("AFCD", 4, c2, &["sms"])],
    )
    .await;
    // One message accepted and one in a provider's hands at endex.
    let sending = store
        .claim_messages("w", at(121), at(150), 2)
        .await
        .unwrap();
    let email = find(&sending, "afcd-primary", "email");
    assert_eq!(find(&sending, "afcd-primary", "sms").attempts, 1);
    store
        .finish_message(
            email,
            &SendResult::Accepted {
                provider: "smtp".into(),
                provider_ref: None,
            },
            at(121),
            None,
        )
        .await
        .unwrap();

    assert_eq!(
        store.cancel_exercise_work(EX, at(125)).await.unwrap(),
        2,
        "R02's two open notifications"
    );
    let statuses: Vec<(String, String, String)> = report(store, EX)
        .await
        .into_values()
        .map(|r| (r.round_label, r.department, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("R01", "AFCD", "missed"),
            ("R02", "AFCD", "cancelled"),
            ("R02", "BD", "cancelled")
        ]
        .map(|(r, d, s)| (r.to_owned(), d.to_owned(), s.to_owned())),
        "a final status stays as it was"
    );
    let rounds: Vec<(String, String, Option<String>, Option<i64>)> = store
        .rounds(EX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.label, r.state, r.state_reason, r.closed_at))
        .collect();
    assert_eq!(
        rounds,
        [
            ("R01", "closed", None, Some(ms(c1.final_at))),
            ("R02", "closed", None, Some(ms(at(125)))),
            ("R03", "cancelled", Some("endex"), Some(ms(at(125)))),
        ]
        .map(|(l, s, r, c)| (l.to_owned(), s.to_owned(), r.map(str::to_owned), c))
    );
    assert_eq!(
        store.message_states(EX).await.unwrap(),
        states(&[
            ("email", "accepted", 1),
            ("sms", "accepted", 1),
            ("sms", "cancelled", 2),
        ]),
        "unsent messages, pending or claimed, are cancelled; sent ones stay"
    );
    let r02_afcd = row(store, EX, "R02", "AFCD").await.notification_id;
    assert!(
        messages_of(store, r02_afcd)
            .await
            .iter()
            .any(|(s, r)| s == "cancelled" && r.as_deref() == Some("endex"))
    );

    assert_eq!(row(store, OTHER, "R01", "AFCD").await.status, "open");
    assert_eq!(
        store.message_states(OTHER).await.unwrap(),
        states(&[("sms", "pending", 1)])
    );
    let next = store
        .claim_messages("w", at(151), at(152), 10)
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|m| (m.contact_id.as_str(), m.notification_id))
            .collect::<Vec<_>>(),
        [(
            "afcd-primary",
            row(store, OTHER, "R01", "AFCD").await.notification_id
        )],
        "only the other exercise's message is still sent"
    );
    assert!(
        store
            .due_rounds(at(24 * 60))
            .await
            .unwrap()
            .iter()
            .all(|r| r.exercise_id != EX),
        "a cancelled round never fires"
    );
    assert_eq!(
        store
            .open_notifications()
            .await
            .unwrap()
            .iter()
            .map(|n| n.exercise_id.as_str())
            .collect::<Vec<_>>(),
        [OTHER]
    );
}

// ---- events, heartbeats, schema -----------------------------------------

async fn events_are_numbered_without_gaps_even_when_written_at_once(store: &Store) {
    assert!(store.events(None).await.unwrap().is_empty());
    assert_eq!(
        store
            .event(
                at(0),
                "daemon.started",
                None,
                serde_json::json!({"instance": "a"})
            )
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .event(
                at(1),
                "round.fired",
                Some(EX),
                serde_json::json!({"round": "R01"})
            )
            .await
            .unwrap(),
        2
    );

    let mut writers = tokio::task::JoinSet::new();
    for i in 0..24_i64 {
        let store = store.clone();
        writers.spawn(async move {
            let exercise = (i % 2 == 0).then_some(EX);
            store
                .event(
                    at(2) + millis(i),
                    "ack.recorded",
                    exercise,
                    serde_json::json!({"i": i}),
                )
                .await
                .unwrap()
        });
    }
    let mut seqs = Vec::new();
    while let Some(seq) = writers.join_next().await {
        seqs.push(seq.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..=26).collect::<Vec<i64>>(), "gap-free and unique");

    let all = store.events(None).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=26).collect::<Vec<i64>>()
    );
    assert_eq!(
        (
            all[0].at,
            all[0].kind.as_str(),
            all[0].exercise_id.as_deref()
        ),
        (ms(at(0)), "daemon.started", None)
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&all[0].data).unwrap(),
        serde_json::json!({"instance": "a"})
    );
    let mine = store.events(Some(EX)).await.unwrap();
    assert_eq!(mine.len(), 13);
    assert!(mine.iter().all(|e| e.exercise_id.as_deref() == Some(EX)));
    assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
}

async fn the_last_heartbeat_is_the_latest_beat_of_any_instance(store: &Store) {
    assert_eq!(store.last_heartbeat().await.unwrap(), None);
    store.heartbeat("a", at(0)).await.unwrap();
    assert_eq!(store.last_heartbeat().await.unwrap(), Some(at(0)));
    store.heartbeat("a", at(0) + millis(5_250)).await.unwrap();
    assert_eq!(
        store.last_heartbeat().await.unwrap(),
        Some(at(0) + millis(5_250)),
        "a beat replaces the instance's last one, to the millisecond"
    );
    store.heartbeat("b", at(0) + secs(2)).await.unwrap();
    assert_eq!(
        store.last_heartbeat().await.unwrap(),
        Some(at(0) + millis(5_250))
    );
    store.heartbeat("b", at(1)).await.unwrap();
    assert_eq!(store.last_heartbeat().await.unwrap(), Some(at(1)));
    let rows: i64 = on_db!(store, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM heartbeats"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(rows, 2, "one row per instance");
}

async fn a_database_missing_a_migration_is_refused_as_stale(store: &Store) {
    store.check_schema().await.unwrap();
    let deleted = on_db!(store, |p| sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .unwrap();
    assert!(deleted > 0);
    let err = store.check_schema().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::StaleSchema(m) if m.contains("missing migrations")),
        "{err}"
    );
    assert!(err.to_string().contains("rollcall db migrate"), "{err}");
}

#[tokio::test]
async fn a_postgres_database_never_migrated_is_refused_until_migrated() {
    let Some(db) =
        FreshPostgres::unmigrated("a_postgres_database_never_migrated_is_refused_until_migrated")
            .await
    else {
        return;
    };
    assert!(matches!(
        db.store.check_schema().await,
        Err(StoreError::StaleSchema(_))
    ));
    db.store.migrate().await.unwrap();
    db.store.check_schema().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn an_unsupported_database_url_is_refused() {
    assert!(matches!(
        Store::connect("mysql://root@localhost/rollcall").await,
        Err(StoreError::Url(u)) if u == "mysql://root@localhost/rollcall"
    ));
}

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let mode = std::fs::metadata(dir.path().join("store.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the database holds personal data");
    store.close().await;
}

/// The migration versions in one dialect's folder.
fn migration_versions(dialect: &str) -> BTreeSet<i64> {
    std::fs::read_dir(support::root().join("migrations").join(dialect))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| {
            let (version, _) = n.split_once('_').expect("NNNN_name.sql");
            version.parse().expect("a numeric version")
        })
        .collect()
}

#[test]
fn both_dialects_have_the_same_migration_versions() {
    let sqlite = migration_versions("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, migration_versions("postgres"));
}

/// (table, column, nullable) and (table, unique column set) of a schema.
type Schema = (BTreeSet<(String, String, bool)>, BTreeSet<(String, String)>);

async fn sqlite_schema(store: &Store) -> Schema {
    let Store::Sqlite(p) = store else {
        unreachable!()
    };
    let columns: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT m.name, c.name, c.\"notnull\", c.pk FROM sqlite_master m JOIN pragma_table_info(m.name) c \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    let unique: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT m.name, l.name, i.name FROM sqlite_master m JOIN pragma_index_list(m.name) l \
         JOIN pragma_index_info(l.name) i \
         WHERE m.type = 'table' AND m.name <> '_sqlx_migrations' AND l.\"unique\" = 1 AND l.origin <> 'pk'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    (
        columns
            .into_iter()
            .map(|(t, c, notnull, pk)| (t, c, notnull == 0 && pk == 0))
            .collect(),
        unique_keys(unique),
    )
}

async fn postgres_schema(store: &Store) -> Schema {
    let Store::Postgres(p) = store else {
        unreachable!()
    };
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    let unique: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, a.attname::text FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey) \
         WHERE n.nspname = 'public' AND t.relname <> '_sqlx_migrations' AND x.indisunique AND NOT x.indisprimary",
    )
    .fetch_all(p)
    .await
    .unwrap();
    (
        columns
            .into_iter()
            .map(|(t, c, nullable)| (t, c, nullable == "YES"))
            .collect(),
        unique_keys(unique),
    )
}

/// (table, index, column) rows as (table, "col,col") per unique index.
fn unique_keys(rows: Vec<(String, String, String)>) -> BTreeSet<(String, String)> {
    let mut keys: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (table, index, column) in rows {
        keys.entry((table, index)).or_default().insert(column);
    }
    keys.into_iter()
        .map(|((table, _), cols)| (table, cols.into_iter().collect::<Vec<_>>().join(",")))
        .collect()
}

#[tokio::test]
async fn both_backends_migrate_to_the_same_tables_columns_and_unique_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_store(dir.path()).await;
    let Some(pg) =
        FreshPostgres::create("both_backends_migrate_to_the_same_tables_columns_and_unique_keys")
            .await
    else {
        return;
    };
    let (lite_columns, lite_unique) = sqlite_schema(&sqlite).await;
    let (pg_columns, pg_unique) = postgres_schema(&pg.store).await;
    let tables = |cols: &BTreeSet<(String, String, bool)>| -> BTreeSet<String> {
        cols.iter().map(|(t, _, _)| t.clone()).collect()
    };
    assert!(tables(&lite_columns).contains("messages"));
    assert_eq!(tables(&lite_columns), tables(&pg_columns), "tables");
    let names = |cols: &BTreeSet<(String, String, bool)>| -> BTreeSet<(String, String)> {
        cols.iter()
            .map(|(t, c, _)| (t.clone(), c.clone()))
            .collect()
    };
    assert_eq!(names(&lite_columns), names(&pg_columns), "column names");
    assert_eq!(lite_columns, pg_columns, "which columns may be NULL");
    assert!(lite_unique.contains(&(
        "acks".to_owned(),
        "channel,contact_id,notification_id".to_owned()
    )));
    assert_eq!(lite_unique, pg_unique, "unique keys");
    sqlite.close().await;
    pg.drop().await;
}

/// PRODUCT.md §6's outbox rules hold in the schema itself (named CHECK
/// constraints on both backends): a write that breaks one is refused with
/// the rule's name and changes nothing, whichever code issued it.
async fn the_schema_refuses_outbox_rows_whose_state_and_fields_disagree(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let depts = [
        department("DPO", 1, c, &["sms"]),
        department("FSD", 2, c, &["sms"]),
    ];
    fire(store, EX, "R01", v, c, &depts).await;
    let id: i64 = on_db!(store, |p| sqlx::query_scalar(
        "SELECT MIN(id) FROM messages"
    )
    .fetch_one(p)
    .await
    .unwrap());
    let row = || async {
        on_db!(store, |p| sqlx::query_as::<
            _,
            (String, Option<String>, Option<i64>, i64),
        >(
            "SELECT state, payload, finished_at, attempts FROM messages WHERE id = $1"
        )
        .bind(id)
        .fetch_one(p)
        .await
        .unwrap())
    };
    let before = row().await;
    assert_eq!(before.0, "pending");
    assert!(before.1.is_some(), "a pending message keeps its text");

    // Each write breaks exactly one rule.
    let cases = [
        (
            "state = 'expired', payload = NULL",
            "messages_finished_when_final",
        ),
        (
            "state = 'sending', claimed_by = 'w1'",
            "messages_claim_expires",
        ),
        ("delivered_at = 1", "messages_delivered_at"),
        (
            "state = 'delivered', accepted_at = 1, provider = 'p', payload = NULL, finished_at = 2",
            "messages_delivered_at",
        ),
        (
            "state = 'accepted', accepted_at = 1, payload = NULL",
            "messages_provider_named",
        ),
        (
            "state = 'cancelled', state_reason = 'bored', payload = NULL, finished_at = 1",
            "messages_cancel_reason",
        ),
        (
            "state = 'cancelled', payload = NULL, finished_at = 1",
            "messages_cancel_reason",
        ),
        (
            "state = 'failed', payload = NULL, finished_at = 1",
            "messages_failure_class",
        ),
        (
            "state = 'expired', finished_at = 1",
            "messages_payload_while_sendable",
        ),
        ("attempts = -1", "messages_attempts"),
    ];
    for (set, rule) in cases {
        let sql = format!("UPDATE messages SET {set} WHERE id = $1");
        let err = on_db!(store, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()))
        .expect_err(&format!("`{set}` breaks {rule}"));
        assert!(err.to_string().contains(rule), "`{set}`: {err}");
        assert_eq!(row().await, before, "a refused write changes nothing");
    }
    let insert = "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, \
         step, state, payload, created_at, due_at, expires_at) \
         SELECT notification_id, outcome_id, contact_id, 'webhook', address, step, \
         'expired', NULL, created_at, due_at, expires_at FROM messages WHERE id = $1";
    let err = on_db!(store, |p| sqlx::query(insert)
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
    .expect_err("an expired row without its end");
    assert!(
        err.to_string().contains("messages_finished_when_final"),
        "{err}"
    );

    // A message hangs from an outcome of its own notification: DPO's
    // contact's message cannot be filed under FSD's notification.
    let fsd = notification_id(store, "FSD").await;
    let stray = "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, \
         step, state, payload, created_at, due_at, expires_at) \
         SELECT $2, outcome_id, contact_id, 'email', address, step, \
         state, payload, created_at, due_at, expires_at FROM messages WHERE id = $1";
    let err = on_db!(store, |p| sqlx::query(stray)
        .bind(id)
        .bind(fsd)
        .execute(p)
        .await
        .map(|_| ()))
    .expect_err("a message under another department's notification");
    assert!(
        err.to_string().to_lowercase().contains("foreign key"),
        "{err}"
    );
    // Nor moved there later, and its outcome stays while it hangs from it.
    let err = on_db!(store, |p| sqlx::query(
        "UPDATE messages SET notification_id = $2 WHERE id = $1"
    )
    .bind(id)
    .bind(fsd)
    .execute(p)
    .await
    .map(|_| ()))
    .expect_err("a message moved under another department's notification");
    assert!(
        err.to_string().to_lowercase().contains("foreign key"),
        "{err}"
    );
    let err = on_db!(store, |p| sqlx::query(
        "DELETE FROM outcomes WHERE id = (SELECT outcome_id FROM messages WHERE id = $1)"
    )
    .bind(id)
    .execute(p)
    .await
    .map(|_| ()))
    .expect_err("an outcome with messages deleted");
    assert!(
        err.to_string().to_lowercase().contains("foreign key"),
        "{err}"
    );

    // A write that keeps the rules goes through.
    on_db!(store, |p| sqlx::query(
        "UPDATE messages SET state = 'cancelled', state_reason = 'opted_out', payload = NULL, \
         finished_at = 1 WHERE id = $1"
    )
    .bind(id)
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    assert_eq!(row().await.0, "cancelled");
}

/// PRODUCT.md §5-6: after `STOP` or a provider's opted-out answer, SMS to that
/// number end `cancelled(opted_out)` instead of going out; other channels and
/// other numbers are untouched; `START` lifts it.
async fn sms_to_a_number_that_opted_out_are_cancelled_until_it_opts_back_in(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let depts = [
        department("DPO", 1, c, &["sms", "email"]),
        department("FSD", 2, c, &["sms"]),
    ];
    fire(store, EX, "R01", v, c, &depts).await;
    let rows = || async {
        on_db!(store, |p| {
            sqlx::query_as::<_, (String, String, String, Option<String>, bool)>(
            "SELECT contact_id, channel, state, state_reason, payload IS NULL FROM messages ORDER BY id"
        )
        .fetch_all(p)
        .await
        .unwrap()
        })
    };
    let dpo_sms: String = on_db!(store, |p| sqlx::query_scalar(
        "SELECT address FROM messages WHERE contact_id = $1 AND channel = 'sms'"
    )
    .bind(primary("DPO"))
    .fetch_one(p)
    .await
    .unwrap());

    assert!(
        store
            .record_opt_out(at(1), &dpo_sms, "primary", Some("Twilio 21610"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_opt_out(at(2), &dpo_sms, "sms-reply", None)
            .await
            .unwrap(),
        "the first record stands"
    );
    assert_eq!(store.cancel_opted_out(at(3)).await.unwrap(), 1);
    let after = rows().await;
    let dpo = primary("DPO");
    for (contact, channel, state, reason, cleared) in &after {
        if *contact == dpo && channel == "sms" {
            assert_eq!(
                (state.as_str(), reason.as_deref(), *cleared),
                ("cancelled", Some("opted_out"), true)
            );
        } else {
            assert_eq!(state, "pending", "{contact} {channel} is untouched");
        }
    }
    assert_eq!(after.len(), 3);
    let listed = store.opt_outs().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].address.as_str(),
            listed[0].source.as_str(),
            listed[0].opted_out_at
        ),
        (dpo_sms.as_str(), "primary", at(1))
    );

    // START: the number may get SMS again; nothing more is cancelled.
    assert!(store.opt_in(&dpo_sms).await.unwrap());
    assert!(!store.opt_in(&dpo_sms).await.unwrap());
    assert!(store.opt_outs().await.unwrap().is_empty());
    assert_eq!(store.cancel_opted_out(at(4)).await.unwrap(), 0);
}

/// The rows an outbox message points at, written as SQL so that a database
/// at any migration takes them: a roster, a running exercise, a fired round,
/// one open notification (id 1) and one outcome (id 1).
async fn insert_outbox_parents(pool: &sqlx::SqlitePool) {
    for sql in [
        "INSERT INTO roster_versions (loaded_at, digest, roster_json) VALUES (1, 'd', '{}')",
        "INSERT INTO exercises (id, title, schedule_json, schedule_digest, roster_version, state, loaded_at) \
         VALUES ('ex', 'Drill', '{}', 'd', 1, 'running', 1)",
        "INSERT INTO rounds (exercise_id, label, slot, planned_at, fired_at, state) VALUES ('ex', 'R01', 's1', 2, 2, 'fired')",
        "INSERT INTO notifications (round_id, department, status, fired_at, target_at, deadline_at, final_at) \
         VALUES (1, 'DPO', 'open', 2, 3, 4, 5)",
        "INSERT INTO outcomes (notification_id, contact_id, role, code, token_digest, token_expires_at, step, notified_at) \
         VALUES (1, 'dpo-1', 'primary', 'ABCDE', 'digest', 9, 1, 2)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Migration 0007 rebuilds SQLite's `messages` table to hold the outbox rules
/// as CHECK constraints. A database written before it keeps every message
/// exactly, its receipts still point at them, ids go on from where they
/// were, and the rules still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_written_before_the_rules_became_constraints_survives_the_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate!("migrations/sqlite")
        .run_to(6, &pool)
        .await
        .unwrap();
    insert_outbox_parents(&pool).await;
    for sql in [
        "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, roster_version, step, state, \
         payload, created_at, due_at, expires_at) \
         VALUES (1, 1, 'dpo-1', 'sms', '+85291234567', 1, 1, 'pending', '{\"kind\":\"sms\"}', 2, 2, 4)",
        "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, roster_version, step, state, \
         created_at, due_at, expires_at, attempts, provider, provider_ref, accepted_at) \
         VALUES (1, 1, 'dpo-1', 'email', 'dpo@example.gov.hk', 1, 1, 'accepted', 2, 2, 4, 1, 'smtp', '<1@x>', 3)",
        "INSERT INTO receipts (received_at, provider, provider_ref, message_id, status, effect) \
         VALUES (3, 'smtp', '<1@x>', 2, 'sent', 'applied')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    const ROWS: &str = "SELECT id, state, channel, address, payload, attempts, provider, provider_ref, accepted_at \
         FROM messages ORDER BY id";
    type Row = (
        i64,
        String,
        String,
        String,
        Option<String>,
        i64,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let before: Vec<Row> = sqlx::query_as(ROWS).fetch_all(&pool).await.unwrap();
    pool.close().await;

    let store = Store::connect(&url).await.unwrap();
    store.check_schema().await.unwrap();
    let Store::Sqlite(p) = &store else {
        unreachable!()
    };
    let after: Vec<Row> = sqlx::query_as(ROWS).fetch_all(p).await.unwrap();
    assert_eq!(after, before, "every message is kept as it was");
    let receipt: (i64, String) = sqlx::query_as(
        "SELECT m.id, m.channel FROM receipts r JOIN messages m ON m.id = r.message_id",
    )
    .fetch_one(p)
    .await
    .unwrap();
    assert_eq!(
        receipt,
        (2, "email".to_owned()),
        "the receipt still names its message"
    );
    let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(p)
        .await
        .unwrap();
    assert!(
        broken.is_empty(),
        "references broken by the rebuild: {broken:?}"
    );
    let refused = sqlx::query("UPDATE messages SET state = 'expired' WHERE id = 1")
        .execute(p)
        .await
        .expect_err("a final state without its finish time is refused");
    assert!(
        refused.to_string().contains("messages_finished_when_final"),
        "{refused}"
    );
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, step, state, \
         payload, created_at, due_at, expires_at) \
         VALUES (1, 1, 'dpo-1', 'webhook', 'https://dpo.example/hook', 1, 'pending', '{}', 2, 2, 4) RETURNING id",
    )
    .fetch_one(p)
    .await
    .unwrap();
    assert_eq!(next, 3, "ids continue after the rebuilt table's last one");
    store.close().await;
}

/// Migration 0008 respells SQLite's outbox rules (chains of `=` instead of
/// `IN` lists, which SQLite checks by probing a temporary b-tree) and
/// rebuilds `messages` to hold them. The rules must not change: every row
/// of a grid over the states and the columns the rules name is accepted or
/// refused alike before and after, refused by the same named rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_respelled_outbox_rules_accept_and_refuse_exactly_what_they_did() {
    async fn migrated_to(dir: &Path, name: &str, version: Option<i64>) -> sqlx::SqlitePool {
        let url = format!("sqlite://{}", dir.join(name).display());
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let migrator = sqlx::migrate!("migrations/sqlite");
        match version {
            Some(v) => migrator.run_to(v, &pool).await.unwrap(),
            None => migrator.run(&pool).await.unwrap(),
        }
        insert_outbox_parents(&pool).await;
        pool
    }
    /// What the table said to a row: taken, or refused by a named rule (an
    /// unnamed column rule is reported with its expression, so only that it
    /// was one counts).
    async fn verdict(pool: &sqlx::SqlitePool, row: &Row, step: i64) -> String {
        // Messages had a roster version until migration 0009.
        let with_roster: bool = sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('messages') WHERE name = 'roster_version'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let (column, value) = if with_roster {
            ("roster_version, ", "1, ")
        } else {
            ("", "")
        };
        let sql = format!(
            "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, {column}step, \
             state, state_reason, payload, created_at, due_at, expires_at, attempts, claimed_by, claim_expires_at, \
             provider, accepted_at, delivered_at, finished_at) \
             VALUES (1, 1, 'dpo-1', $1, 'a', {value}$2, $3, $4, $5, 2, 2, 4, $6, $7, $8, $9, $10, $11, $12)"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row.channel)
            .bind(step)
            .bind(row.state)
            .bind(row.reason)
            .bind(row.payload)
            .bind(row.attempts)
            .bind(row.claimed_by)
            .bind(row.claim_expires_at)
            .bind(row.provider)
            .bind(row.accepted_at)
            .bind(row.delivered_at)
            .bind(row.finished_at)
            .execute(pool)
            .await;
        match inserted {
            Ok(_) => "taken".to_owned(),
            Err(e) => {
                let text = e.to_string();
                match text.split_once("CHECK constraint failed: ") {
                    Some((_, rule)) if rule.starts_with("messages_") => rule.to_owned(),
                    Some(_) => "an unnamed rule".to_owned(),
                    None => panic!("refused for another reason: {text}"),
                }
            }
        }
    }
    #[derive(Debug, Clone, Copy)]
    struct Row {
        channel: &'static str,
        state: &'static str,
        reason: Option<&'static str>,
        payload: Option<&'static str>,
        attempts: i64,
        claimed_by: Option<&'static str>,
        claim_expires_at: Option<i64>,
        provider: Option<&'static str>,
        accepted_at: Option<i64>,
        delivered_at: Option<i64>,
        finished_at: Option<i64>,
    }
    const STATES: [&str; 10] = [
        "pending",
        "sending",
        "accepted",
        "delivered",
        "undelivered",
        "failed",
        "expired",
        "cancelled",
        "not_configured",
        "lost",
    ];
    const REASONS: [Option<&str>; 5] = [
        None,
        Some("acked"),
        Some("endex"),
        Some("transient"),
        Some("other"),
    ];
    let mut grid = Vec::new();
    for state in STATES {
        for reason in REASONS {
            for bits in 0u32..128 {
                let on = |bit: u32| bits & (1 << bit) != 0;
                grid.push(Row {
                    channel: "sms",
                    state,
                    reason,
                    payload: on(0).then_some("{}"),
                    attempts: 1,
                    claimed_by: on(1).then_some("worker"),
                    claim_expires_at: on(2).then_some(9),
                    provider: on(3).then_some("twilio"),
                    accepted_at: on(4).then_some(3),
                    delivered_at: on(5).then_some(3),
                    finished_at: on(6).then_some(3),
                });
            }
        }
    }
    let plain = Row {
        channel: "sms",
        state: "pending",
        reason: None,
        payload: Some("{}"),
        attempts: 0,
        claimed_by: None,
        claim_expires_at: None,
        provider: None,
        accepted_at: None,
        delivered_at: None,
        finished_at: None,
    };
    for channel in ["sms", "email", "webhook", "fax", ""] {
        grid.push(Row { channel, ..plain });
    }
    for attempts in [-1, 0, 5] {
        grid.push(Row { attempts, ..plain });
    }

    let dir = tempfile::tempdir().unwrap();
    let before = migrated_to(dir.path(), "at7.db", Some(7)).await;
    let after = migrated_to(dir.path(), "latest.db", None).await;
    let mut taken = 0;
    let mut rules = BTreeSet::new();
    for (step, row) in grid.iter().enumerate() {
        let was = verdict(&before, row, step as i64).await;
        let is = verdict(&after, row, step as i64).await;
        assert_eq!(is, was, "{row:?}");
        if is == "taken" {
            taken += 1;
        } else {
            rules.insert(is);
        }
    }
    // The grid reaches every rule and some rows of every state get through.
    assert_eq!(
        rules.into_iter().collect::<Vec<_>>(),
        [
            "an unnamed rule",
            "messages_attempts",
            "messages_cancel_reason",
            "messages_claim_expires",
            "messages_delivered_at",
            "messages_failure_class",
            "messages_finished_when_final",
            "messages_payload_while_sendable",
            "messages_provider_named",
        ]
    );
    assert!(taken >= 9, "only {taken} rows were taken");
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM messages GROUP BY state ORDER BY state")
            .fetch_all(&after)
            .await
            .unwrap();
    assert_eq!(states.len(), 9, "a row of each state was taken: {states:?}");
}

/// A claimed message that is still waiting for a send slot when its claim is
/// about to lapse is not sent by this pass: once the claim lapses another
/// pass (or worker) may take it, so sending it now could send it twice. It
/// goes out once, after the lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_claim_nears_its_lapse_before_a_slot_frees_is_sent_once_later() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use rollcall::channel::Channels;
    use rollcall::clock::{ManualClock, SharedClock};
    use rollcall::config::{Config, Secrets};
    use rollcall::dispatch::{CONCURRENCY, Dispatcher};
    use rollcall::domain::render::Payload;

    /// Holds every POST until released; keeps each Idempotency-Key.
    #[derive(Clone)]
    struct Held {
        in_flight: Arc<AtomicUsize>,
        keys: Arc<std::sync::Mutex<Vec<String>>>,
        release: Arc<tokio::sync::Semaphore>,
    }
    async fn hold(State(h): State<Held>, headers: HeaderMap) -> StatusCode {
        h.in_flight.fetch_add(1, SeqCst);
        h.release.acquire().await.unwrap().forget();
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        h.keys.lock().unwrap().push(key);
        h.in_flight.fetch_sub(1, SeqCst);
        StatusCode::OK
    }
    let held = Held {
        in_flight: Arc::default(),
        keys: Arc::default(),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hold))
        .with_state(held.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let v = running_exercise(&store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    // Six more webhooks than there are send slots.
    let total = CONCURRENCY + 6;
    let notifications: Vec<NewNotification> = (0..total as u32)
        .map(|n| {
            let dept = format!("W{n:03}");
            let mut o = outcome(&primary(&dept), "primary", n + 1, 1, c, &[]);
            o.messages = vec![NewMessage {
                channel: "webhook".into(),
                address: url.clone(),
                payload: serde_json::to_string(&Payload::Webhook {
                    url: url.clone(),
                    secret_env: Some("HELD_SECRET".into()),
                    body: rollcall::domain::render::RawJson::of(&serde_json::json!({ "n": n }))
                        .unwrap(),
                })
                .unwrap(),
                state: "pending",
                expires_at: c.deadline_at,
            }];
            NewNotification {
                department: dept,
                outcomes: vec![o],
            }
        })
        .collect();
    fire(&store, EX, "R01", v, c, &notifications).await;

    let cfg = Config {
        webhook_per_host: total as u32,
        ..Config::default()
    };
    let secrets = Secrets::supplied([("HELD_SECRET".to_owned(), "s".to_owned())]);
    let clock = ManualClock::new(at(0));
    let shared: SharedClock = clock.clone();
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        shared,
        Arc::new(Channels::from_config(&cfg, secrets).unwrap()),
        rollcall::daemon::retry_policy(&cfg),
        "slow".into(),
    ));
    let pass = tokio::spawn({
        let dispatcher = Arc::clone(&dispatcher);
        async move { dispatcher.dispatch_pending().await }
    });
    // Every slot is taken by a send the receiver holds; six wait, claimed.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while held.in_flight.load(SeqCst) < CONCURRENCY {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every send slot fills");
    // 31 s pass before any answers: the six are 29 s from their claim's lapse.
    clock.advance(secs(31));
    held.release.add_permits(10 * total);
    assert_eq!(pass.await.unwrap().unwrap(), total, "all were claimed");
    assert_eq!(
        held.keys.lock().unwrap().len(),
        CONCURRENCY,
        "the six were not sent"
    );

    let states = || async {
        let Store::Sqlite(p) = &store else {
            unreachable!()
        };
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM messages GROUP BY state ORDER BY state")
                .fetch_all(p)
                .await
                .unwrap();
        rows
    };
    assert_eq!(
        states().await,
        vec![
            ("accepted".to_owned(), CONCURRENCY as i64),
            ("sending".to_owned(), 6)
        ],
        "the six stay claimed until their claim lapses"
    );
    // Before the lapse another pass leaves them alone ...
    assert_eq!(dispatcher.dispatch_pending().await.unwrap(), 0);
    // ... after it, one takes them over and sends each once.
    clock.advance(secs(30));
    assert_eq!(dispatcher.dispatch_pending().await.unwrap(), 6);
    assert_eq!(states().await, vec![("accepted".to_owned(), total as i64)]);
    let keys = held.keys.lock().unwrap().clone();
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), total, "one POST per message");
    assert_eq!(distinct.len(), total, "no message was sent twice");
    store.close().await;
}

async fn a_fan_out_can_write_its_messages_already_claimed_for_one_worker(store: &Store) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let mut afcd = department("AFCD", 1, c, &["sms", "email", "webhook"]);
    // A channel without a provider is final at fan-out, claimed or not.
    afcd.outcomes[0].messages[2].state = "not_configured";
    let dpo = department("DPO", 2, c, &["sms", "email"]);
    let dpo_sms = dpo.outcomes[0].messages[0].address.clone();
    assert!(
        store
            .record_opt_out(at(-1), &dpo_sms, "sms-reply", None)
            .await
            .unwrap()
    );
    let depts = [afcd, dpo];
    let r = round(store, EX, "R01").await;
    let until = at(0) + secs(60);
    let claim = FanoutClaim {
        worker: "w1",
        until,
    };
    let claimed = store
        .fire_round_claiming(r.id, v, c, &depts, Some(&claim))
        .await
        .unwrap()
        .expect("the round fires");

    // What could go now comes back claimed, with what to send; the SMS to
    // a number that opted out and the unconfigured webhook do not.
    let mut got: Vec<(String, String)> = claimed
        .iter()
        .map(|m| (m.contact_id.clone(), m.channel.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (primary("AFCD"), "email".to_owned()),
            (primary("AFCD"), "sms".to_owned()),
            (primary("DPO"), "email".to_owned()),
        ]
    );
    for m in &claimed {
        let sent = depts
            .iter()
            .flat_map(|d| &d.outcomes)
            .filter(|o| o.contact_id == m.contact_id)
            .flat_map(|o| &o.messages)
            .find(|x| x.channel == m.channel)
            .unwrap();
        assert_eq!(m.payload.as_deref(), Some(sent.payload.as_str()));
        assert_eq!(m.address, sent.address);
        assert_eq!((m.attempts, m.expires_at), (1, ms(c.deadline_at)));
        let row = message(store, m.id).await;
        assert_eq!((row.state.as_str(), row.attempts), ("sending", 1));
        let (by, lapses): (Option<String>, Option<i64>) = on_db!(store, |p| sqlx::query_as(
            "SELECT claimed_by, claim_expires_at FROM messages WHERE id = $1"
        )
        .bind(m.id)
        .fetch_one(p)
        .await
        .unwrap());
        assert_eq!((by.as_deref(), lapses), (Some("w1"), Some(ms(until))));
    }
    let states: BTreeMap<(String, String), String> =
        on_db!(store, |p| sqlx::query_as::<_, (String, String, String)>(
            "SELECT contact_id, channel, state FROM messages"
        )
        .fetch_all(p)
        .await
        .unwrap())
        .into_iter()
        .map(|(contact, channel, state)| ((contact, channel), state))
        .collect();
    assert_eq!(states[&(primary("DPO"), "sms".to_owned())], "pending");
    assert_eq!(
        states[&(primary("AFCD"), "webhook".to_owned())],
        "not_configured"
    );

    // Nobody else gets them while the claim holds; the opted-out SMS is
    // settled as any pending one is.
    assert!(
        store
            .claim_messages("w2", at(0) + secs(30), at(0) + secs(90), 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed at fan-out means claimed"
    );
    assert_eq!(
        messages_of(store, notification_id(store, "DPO").await)
            .await
            .into_iter()
            .find(|(state, _)| state == "cancelled"),
        Some(("cancelled".to_owned(), Some("opted_out".to_owned())))
    );
    // A fan-out's claims lapse like any other: if w1 died, w2 takes them.
    let retaken = store
        .claim_messages("w2", until + millis(1), until + secs(60), 10)
        .await
        .unwrap();
    assert_eq!(ids(&retaken), ids(&claimed));
    assert!(retaken.iter().all(|m| m.attempts == 2));
    assert!(
        store
            .fire_round_claiming(r.id, v, c, &depts, Some(&claim))
            .await
            .unwrap()
            .is_none(),
        "a round fires once"
    );
}

async fn a_fan_out_in_parts_is_unfinished_until_its_last_part_and_never_written_twice(
    store: &Store,
) {
    let v = running_exercise(store, EX, &[("R01", 0)]).await;
    let c = clockwork(at(0));
    let depts = [
        department("AFCD", 1, c, &["sms", "email"]),
        department("DPO", 2, c, &["sms"]),
        department("FSD", 3, c, &["email"]),
    ];
    let r = round(store, EX, "R01").await;
    let claim = FanoutClaim {
        worker: "w1",
        until: at(60),
    };
    let part = |notifications, now, last| FanoutPart {
        round_id: r.id,
        clock: c,
        now,
        notifications,
        last,
        round_messages: message_count(&depts),
    };
    let first = store
        .fire_round_part(
            v,
            "AFCD,DPO,FSD",
            &part(&depts[..1], at(0), false),
            Some(&claim),
        )
        .await
        .unwrap()
        .expect("the first part fires the round");
    assert_eq!(
        first.len(),
        2,
        "the first part's messages come back claimed"
    );
    let fired = round(store, EX, "R01").await;
    assert_eq!(fired.state, "fired");
    assert_eq!(fired.fired_at, Some(ms(at(0))), "T0 is the first part's");
    assert_eq!(fired.departments.as_deref(), Some("AFCD,DPO,FSD"));
    assert_eq!(fired.fanned_out_at, None);
    let unfinished = |rows: Vec<RoundRow>| rows.iter().map(|r| r.label.clone()).collect::<Vec<_>>();
    assert_eq!(
        unfinished(store.unfinished_fanouts().await.unwrap()),
        ["R01"]
    );
    let second = store
        .continue_fanout(&part(&depts[1..2], at(1), false), Some(&claim))
        .await
        .unwrap()
        .expect("a later part");
    assert_eq!(second.len(), 1);
    assert_eq!(
        store.round_departments(r.id).await.unwrap(),
        ["AFCD", "DPO"]
    );
    assert!(store.unfinished_fanouts().await.unwrap().len() == 1);
    let last = store
        .continue_fanout(&part(&depts[2..], at(2), true), None)
        .await
        .unwrap()
        .expect("the last part");
    assert!(last.is_empty(), "written unclaimed without a claim");
    assert_eq!(round(store, EX, "R01").await.fanned_out_at, Some(ms(at(2))));
    assert!(store.unfinished_fanouts().await.unwrap().is_empty());
    // A complete fan-out takes no more parts, and the round fires once.
    assert!(
        store
            .continue_fanout(&part(&depts[2..], at(3), true), None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .fire_round_part(v, "AFCD", &part(&depts[..1], at(3), true), None)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.round_departments(r.id).await.unwrap(),
        ["AFCD", "DPO", "FSD"]
    );
    // Every notification carries the round's T0, whichever part wrote it.
    let fired_at: Vec<i64> = on_db!(store, |p| sqlx::query_scalar(
        "SELECT fired_at FROM notifications WHERE round_id = $1"
    )
    .bind(r.id)
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(fired_at, vec![ms(at(0)); 3]);
    // The schema keeps a fan-out from completing before its round fired.
    let e = on_db!(store, |p| sqlx::query(
        "UPDATE rounds SET fanned_out_at = fired_at - 1 WHERE id = $1"
    )
    .bind(r.id)
    .execute(p)
    .await
    .map(|_| ())
    .expect_err("completed before it fired"));
    assert!(
        e.to_string().contains("rounds_fanned_out_after_firing"),
        "{e}"
    );
}
