//! Firing 1,000 due rounds (target: p99 lateness under 100 ms of processing).
//!
//! One exercise of 1,000 `random` rounds (at least 2 hours apart) over a
//! year, three departments of three contacts, stored in SQLite in a temporary
//! directory through `engine::load_exercise` and started. A manual clock is
//! moved to each round's planned instant and `Engine::tick` is called; the
//! round's lateness is the wall time from setting the clock (the moment it
//! became due) to the end of the tick that fired it. Between rounds the
//! daemon's other work runs as it would: the dispatcher (no provider is
//! configured, so every message ends `not_configured`), the escalation step
//! at +15 minutes and finalisation at +61 minutes, each timed on its own.
//!
//! Baselines, run interleaved with the engine round by round on a second
//! store holding the same exercise:
//! - `store writes only`: the writes of a fan-out — `Store::fire_round` with
//!   the same departments, contacts, codes and rendered messages, prepared
//!   before the clock is set, plus the `round.fired` event — without the
//!   engine's due-round query, schedule and roster reads, code drawing and
//!   rendering;
//! - `no-op tick`: `Engine::tick` again at the same instant, with nothing
//!   due: the queries every daemon poll pays.
//!
//! Run: `cargo bench --bench fire` (see BENCHMARKS.md for the flag the
//! `test-clock` guard needs).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeDelta};
use rand::SeedableRng as _;
use rand::rngs::ChaCha8Rng;
use rollcall::channel::Channels;
use rollcall::clock::{Clock as _, ManualClock, SharedClock};
use rollcall::config::{Config, Secrets};
use rollcall::daemon::{engine_settings, retry_policy};
use rollcall::dispatch::Dispatcher;
use rollcall::domain::codes::{AckCode, LinkToken};
use rollcall::domain::contacts::{Role, Roster};
use rollcall::domain::plan::Plan;
use rollcall::domain::render::{Alert, Payload};
use rollcall::domain::schedule::Schedule;
use rollcall::engine::{Engine, TOKEN_LIFETIME_AFTER_DEADLINE};
use rollcall::store::{Clockwork, NewMessage, NewNotification, NewOutcome, RoundRow, Store};
use support::{Human, Samples, compare, verdict};

const ROUNDS: u32 = 1000;
const DEPARTMENTS: usize = 3;
const TARGET_P99: Duration = Duration::from_millis(100);
/// How many times each stage of a tick is timed alone.
const STAGE_RUNS: usize = 200;
/// The whole bench stops after this much wall time, with what it measured.
const WALL_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

/// One store with the exercise loaded and running, and the daemon's parts.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<ManualClock>,
    engine: Engine,
    dispatcher: Dispatcher,
    rounds: Vec<RoundRow>,
    roster_version: i64,
}

async fn rig(roster: &Roster, schedule: &Schedule, plan: &Plan) -> Rig {
    // On the project's disk (target/tmp), where a real database would live.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::connect(&url).await.expect("the store opens");
    let start = schedule.window_start - TimeDelta::minutes(1);
    let clock = ManualClock::new(start);
    let roster_version =
        support::fixtures::load_and_start(&store, roster, schedule, plan, start).await;
    let shared: SharedClock = clock.clone();
    let cfg = Config::default();
    assert!(!cfg.has_live_provider(), "no message leaves the machine");
    let channels = Channels::from_config(&cfg, Secrets::default()).expect("channels");
    let engine = Engine::with_seed(store.clone(), Arc::clone(&shared), engine_settings(&cfg), 1);
    let dispatcher = Dispatcher::new(
        store.clone(),
        shared,
        Arc::new(channels),
        retry_policy(&cfg),
        "bench".into(),
    );
    let rounds = store.rounds(&schedule.id).await.expect("rounds");
    assert_eq!(rounds.len(), plan.rounds.len());
    Rig {
        _dir: dir,
        store,
        clock,
        engine,
        dispatcher,
        rounds,
        roster_version,
    }
}

/// Times one future.
async fn timed<T>(samples: &mut Samples, f: impl Future<Output = T>) -> T {
    let began = Instant::now();
    let out = f.await;
    samples.push(began.elapsed());
    out
}

async fn bench() {
    let roster = support::fixtures::roster(DEPARTMENTS, None);
    let schedule = support::fixtures::schedule(
        "bench-fire",
        NaiveDate::from_ymd_opt(2027, 6, 1).expect("valid date"),
        365,
        vec![support::fixtures::random_block(
            ROUNDS,
            &["weekday-evening", "late-night", "weekend"],
            2 * 3600,
            20_270_601,
        )],
    );
    let plan = support::fixtures::plan_of(&schedule, &roster);
    assert_eq!(plan.rounds.len(), ROUNDS as usize);
    let closest = plan
        .rounds
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .min()
        .unwrap_or_default();
    assert!(
        closest > TimeDelta::minutes(61),
        "each round is final before the next is due"
    );

    let subject = rig(&roster, &schedule, &plan).await;
    let base = rig(&roster, &schedule, &plan).await;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let deadline = schedule.ack.deadline();

    let mut fire = Samples::new("engine tick that fires a round (lateness)");
    let mut noop = Samples::new("baseline: no-op tick");
    let mut writes = Samples::new("baseline: store writes only");
    let mut escalate = Samples::new("  tick at +15 min (escalation step)");
    let mut finalise = Samples::new("  tick at +61 min (finalisation)");
    let mut dispatch = Samples::new("  dispatch_pending (not_configured)");
    let started = Instant::now();

    for (i, planned) in plan.rounds.iter().enumerate() {
        if started.elapsed() > WALL_LIMIT {
            println!(
                "stopped after {i} of {ROUNDS} rounds: the {}s wall limit was reached",
                WALL_LIMIT.as_secs()
            );
            break;
        }
        let t = planned.at;

        // The engine: due at `t`, fired by the next tick.
        let report = timed(&mut fire, async {
            subject.clock.set(t);
            subject.engine.tick().await.expect("tick")
        })
        .await;
        assert_eq!(
            report.rounds_fired.len(),
            1,
            "round {} fires",
            planned.label
        );
        assert!(report.rounds_skipped.is_empty());
        let idle = timed(&mut noop, subject.engine.tick()).await.expect("tick");
        assert!(idle.rounds_fired.is_empty() && idle.steps_sent == 0 && idle.finalised == 0);

        // The same fan-out written straight to the other store.
        let row = &base.rounds[i];
        assert_eq!(row.label, planned.label);
        let clockwork = Clockwork {
            fired_at: t,
            target_at: t + schedule.ack.target(),
            deadline_at: t + deadline,
            final_at: t + deadline + schedule.ack.settle(),
        };
        let notifications = fan_out(&schedule, &roster, &planned.label, clockwork, &mut rng);
        timed(&mut writes, async {
            base.clock.set(t);
            assert!(
                base.store
                    .fire_round(row.id, base.roster_version, clockwork, &notifications)
                    .await
                    .expect("fire_round")
            );
            base.store
                .event(
                    t,
                    "round.fired",
                    Some(&schedule.id),
                    serde_json::json!({
                        "round": row.label,
                        "planned_at": row.planned_at,
                        "lateness_ms": 0,
                        "departments": notifications.iter().map(|n| n.department.as_str()).collect::<Vec<_>>(),
                        "roster_version": base.roster_version,
                    }),
                )
                .await
                .expect("event");
        })
        .await;

        // The rest of the round's life, the same on both stores.
        for (each, timing) in [(&subject, true), (&base, false)] {
            let sent = sample_if(timing, &mut dispatch, each.dispatcher.dispatch_pending()).await;
            assert_eq!(sent.expect("dispatch"), DEPARTMENTS * 2);
            each.clock.set(t + TimeDelta::minutes(15));
            let report = sample_if(timing, &mut escalate, each.engine.tick())
                .await
                .expect("tick");
            assert_eq!(report.steps_sent, DEPARTMENTS, "step 2 goes out");
            let sent = sample_if(timing, &mut dispatch, each.dispatcher.dispatch_pending()).await;
            assert_eq!(sent.expect("dispatch"), DEPARTMENTS * 4);
            each.clock.set(t + deadline + schedule.ack.settle());
            let report = sample_if(timing, &mut finalise, each.engine.tick())
                .await
                .expect("tick");
            assert_eq!(report.finalised, DEPARTMENTS as u64, "the round closes");
        }
    }
    println!(
        "{} rounds fired in {:.1} s of wall time (both stores)",
        fire.len(),
        started.elapsed().as_secs_f64()
    );
    for s in [&fire, &writes, &noop, &escalate, &finalise, &dispatch] {
        s.report();
    }
    compare(&fire, &writes);
    compare(&fire, &noop);
    println!(
        "lateness p50 {}, p99 {}, max {}",
        Human(fire.median()),
        Human(fire.p99()),
        Human(fire.max())
    );
    verdict("firing lateness p99", fire.p99(), TARGET_P99);

    // Where a firing tick's time goes: the reads and writes it makes, each
    // timed alone on the engine's store (every round is closed by now).
    println!("stages of a tick, {STAGE_RUNS} runs each:");
    let store = &subject.store;
    let now = subject.clock.now();
    let id = schedule.id.as_str();
    stage("  due_rounds query", || store.due_rounds(now)).await;
    stage("  read and parse the schedule", || async {
        let row = store.exercise(id).await.expect("exercise").expect("stored");
        serde_json::from_str::<Schedule>(&row.schedule_json).expect("schedule json")
    })
    .await;
    stage("  read and parse the roster", || async {
        let version = store.latest_roster_version().await.expect("version");
        store
            .roster(version.expect("a roster"))
            .await
            .expect("roster")
    })
    .await;
    let roster_json = serde_json::to_string(&roster).expect("roster json");
    stage("  parse the roster JSON alone", || async {
        serde_json::from_str::<Roster>(&roster_json).expect("roster json")
    })
    .await;
    // The engine reads the roster back at every fan-out and escalation, and
    // reading a phone number back validates it again; a full-size roster
    // shows how that grows.
    let big_json =
        serde_json::to_string(&support::fixtures::roster(200, None)).expect("roster json");
    stage("  parse a 200-department roster JSON", || async {
        serde_json::from_str::<Roster>(&big_json).expect("roster json")
    })
    .await;
    stage("  open_notifications query", || store.open_notifications()).await;
    stage("  finalise_due with nothing due", || {
        store.finalise_due(now)
    })
    .await;
    stage("  one event write (a durable commit)", || {
        store.event(now, "bench.probe", None, serde_json::json!({}))
    })
    .await;
    subject.store.close().await;
    base.store.close().await;
}

/// Times `f` alone `STAGE_RUNS` times and prints the result.
async fn stage<F, T>(name: &str, mut f: impl FnMut() -> F)
where
    F: Future<Output = T>,
{
    let mut samples = Samples::new(name);
    for _ in 0..STAGE_RUNS {
        std::hint::black_box(timed(&mut samples, f()).await);
    }
    samples.report();
}

/// Awaits `f`, timing it into `samples` only when `timing`.
async fn sample_if<T>(timing: bool, samples: &mut Samples, f: impl Future<Output = T>) -> T {
    if timing {
        timed(samples, f).await
    } else {
        f.await
    }
}

/// Step 1 of a round as the engine would write it: each department's
/// primary contact with a fresh code and token and its rendered SMS and
/// email.
fn fan_out(
    schedule: &Schedule,
    roster: &Roster,
    round: &str,
    clock: Clockwork,
    rng: &mut ChaCha8Rng,
) -> Vec<NewNotification> {
    roster
        .departments
        .iter()
        .map(|dept| NewNotification {
            department: dept.code.to_string(),
            outcomes: dept
                .contacts
                .iter()
                .filter(|c| c.role == Role::Primary)
                .map(|contact| {
                    let code = AckCode::generate(rng);
                    let token = LinkToken::generate(rng);
                    let ack_url = format!("http://127.0.0.1:8080/a/{}", token.as_str());
                    let alert = Alert {
                        marker: &schedule.marker,
                        lang: contact.lang,
                        exercise_title: &schedule.title,
                        round,
                        department: dept.code.as_str(),
                        code: code.as_str(),
                        ack_url: &ack_url,
                        deadline_at: clock.deadline_at,
                        tz: schedule.tz(),
                        sms_two_way: true,
                    };
                    let sms = contact.sms.as_ref().expect("a mobile").as_str().to_owned();
                    let email = contact
                        .email
                        .as_ref()
                        .expect("an email")
                        .as_str()
                        .to_owned();
                    let message = |channel: &str, address: String, payload: Payload| NewMessage {
                        channel: channel.to_owned(),
                        address,
                        payload: serde_json::to_string(&payload).expect("payload json"),
                        state: "pending",
                        expires_at: clock.deadline_at,
                    };
                    NewOutcome {
                        contact_id: contact.id.to_string(),
                        role: contact.role.as_str().to_owned(),
                        code: code.to_string(),
                        token_digest: token.digest(),
                        token_expires_at: clock.deadline_at + TOKEN_LIFETIME_AFTER_DEADLINE,
                        step: 1,
                        messages: vec![
                            message(
                                "sms",
                                sms.clone(),
                                Payload::Sms {
                                    to: sms,
                                    text: alert.sms(),
                                    deadline_at: clock.deadline_at,
                                },
                            ),
                            message(
                                "email",
                                email.clone(),
                                Payload::Email {
                                    to: email,
                                    subject: alert.email_subject(),
                                    text: alert.email_body(),
                                },
                            ),
                        ],
                    }
                })
                .collect(),
        })
        .collect()
}
