//! Delivery under provider faults, on a manual clock: local HTTP servers
//! speaking the Twilio Messages API and an `http-json` gateway, answering
//! what a bad night at 2 a.m. looks like (429s, 500s, an invalid number),
//! and the store saying exactly what happened to each SMS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::{DateTime, TimeDelta, Utc};
use rollcall::channel::Channels;
use rollcall::clock::{Clock, ManualClock, SharedClock};
use rollcall::config::{Config, ProviderKind, Rate, Secrets, SmsProvider};
use rollcall::dispatch::{Dispatcher, RetryPolicy};
use rollcall::engine::{Engine, EngineSettings, FANOUT_FIRST_PART};
use rollcall::store::Store;

use crate::support;

const SID: &str = "AC0000000000000000000000000000fa17";

/// How a fake Twilio answers the `n`-th request (0-based) for a number.
type Script = Arc<dyn Fn(&str, usize) -> (StatusCode, serde_json::Value) + Send + Sync>;

#[derive(Clone)]
struct Fake {
    script: Script,
    /// Requests per `To`, in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
}

async fn twilio(
    State(f): State<Fake>,
    Path(_sid): Path<String>,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> impl IntoResponse {
    let to = form.get("To").cloned().unwrap_or_default();
    let n = {
        let mut seen = f.seen.lock().unwrap();
        let n = seen.iter().filter(|t| **t == to).count();
        seen.push(to.clone());
        n
    };
    let (status, body) = (f.script)(&to, n);
    (status, axum::Json(body))
}

async fn gateway(
    State(f): State<Fake>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> impl IntoResponse {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let mut seen = f.seen.lock().unwrap();
    seen.push(to);
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"id": format!("gw-{}", seen.len())})),
    )
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(rollcall::sinks::serve_router(
        listener,
        router,
        std::future::pending(),
    ));
    addr
}

async fn fake_twilio(script: Script) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let fake = Fake {
        script,
        seen: Arc::default(),
    };
    let seen = Arc::clone(&fake.seen);
    let router = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
        .with_state(fake);
    (serve(router).await, seen)
}

fn accepted(n: usize) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::CREATED,
        serde_json::json!({"sid": format!("SM{n:032}"), "status": "queued"}),
    )
}

fn twilio_provider(addr: std::net::SocketAddr, rate: Option<Rate>) -> SmsProvider {
    SmsProvider {
        name: "primary".into(),
        kind: ProviderKind::Twilio {
            base_url: format!("http://{addr}"),
            account_sid: SID.into(),
            auth_token_env: "FAULT_TWILIO_TOKEN".into(),
            alternate_auth_token_env: None,
        },
        rate,
    }
}

/// The smoke schedule's three departments (or every department with
/// `all`), fired at T0 on a manual clock; only SMS is configured. As in the
/// daemon, the round's messages are written claimed for `dispatcher`.
struct Night {
    store: Store,
    clock: Arc<ManualClock>,
    engine: Engine,
    dispatcher: Dispatcher,
    channels: Arc<Channels>,
    retry: RetryPolicy,
    t0: DateTime<Utc>,
    _dir: tempfile::TempDir,
}

async fn night(providers: Vec<SmsProvider>, retry: RetryPolicy, everyone: bool) -> Night {
    let edit = |text: String| {
        if everyone {
            text.replace("targets: [DPO, HKPF, FSD]", "targets: all")
        } else {
            text
        }
    };
    night_of(providers, retry, edit).await
}

/// [`night`] on the smoke schedule as `edit` rewrites it.
async fn night_of(
    providers: Vec<SmsProvider>,
    retry: RetryPolicy,
    edit: impl Fn(String) -> String,
) -> Night {
    let night = unfired_night(providers, retry, edit, FANOUT_FIRST_PART).await;
    night.engine.tick().await.unwrap();
    night
}

/// [`night_of`] at T0, before the round has fired, its fan-out written in
/// parts of `first_part` messages and more.
async fn unfired_night(
    providers: Vec<SmsProvider>,
    retry: RetryPolicy,
    edit: impl Fn(String) -> String,
    first_part: usize,
) -> Night {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("n.db").display()))
        .await
        .unwrap();
    let t0 = DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
        .unwrap()
        .to_utc();
    let clock = ManualClock::new(t0 - TimeDelta::hours(1));
    let shared: SharedClock = clock.clone();
    let text = std::fs::read_to_string(support::root().join("schedules/smoke.yaml")).unwrap();
    let schedule_file = dir.path().join("smoke-edited.yaml");
    std::fs::write(&schedule_file, edit(text)).unwrap();
    support::start_exercise(&store, &schedule_file, clock.now()).await;
    let cfg = Config {
        sms_from: Some("+85251234567".into()),
        sms_providers: providers,
        ..Config::default()
    };
    let secrets = Secrets::supplied(vec![
        ("FAULT_TWILIO_TOKEN".to_owned(), "token".to_owned()),
        ("FAULT_GW_KEY".to_owned(), "gw-key".to_owned()),
    ]);
    let channels = Arc::new(Channels::from_config(&cfg, secrets).unwrap());
    let settings = EngineSettings {
        fanout_first_part: first_part,
        ..rollcall::daemon::engine_settings(&cfg)
    };
    let mut engine = Engine::new(store.clone(), Arc::clone(&shared), settings);
    let dispatcher = Dispatcher::new(
        store.clone(),
        shared,
        Arc::clone(&channels),
        retry.clone(),
        "fault".into(),
    );
    engine.hand_first_sends_to(dispatcher.handoff());
    clock.set(t0);
    Night {
        store,
        clock,
        engine,
        dispatcher,
        channels,
        retry,
        t0,
        _dir: dir,
    }
}

impl Night {
    /// Dispatches at every instant the outbox has work, until it has none.
    async fn drain(&self) {
        for _ in 0..10_000 {
            self.dispatcher.dispatch_pending().await.unwrap();
            match self.store.next_message_due().await.unwrap() {
                Some(t) => self.clock.set(t.max(self.clock.now())),
                None => return,
            }
        }
        let Store::Sqlite(pool) = &self.store else {
            unreachable!()
        };
        let left: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, state, due_at, attempts FROM messages WHERE state IN ('pending', 'sending') ORDER BY due_at",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        panic!("the outbox never drained at {}: {left:?}", self.clock.now());
    }

    /// (state, provider, attempts, accepted_at, finished_at) of every SMS.
    async fn sms(&self) -> Vec<(String, Option<String>, i64, Option<i64>, Option<i64>)> {
        let Store::Sqlite(pool) = &self.store else {
            unreachable!()
        };
        sqlx::query_as(
            "SELECT state, provider, attempts, accepted_at, finished_at FROM messages \
             WHERE channel = 'sms' ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    }

    async fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.store
            .events(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect()
    }
}

fn retry(attempts: u32, backoff_secs: i64) -> RetryPolicy {
    RetryPolicy {
        attempts,
        backoff: TimeDelta::seconds(backoff_secs),
        max_backoff: TimeDelta::minutes(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_and_every_sms_is_accepted_once() {
    let (addr, seen) = fake_twilio(Arc::new(|_, n| {
        if n == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"code": 20429, "message": "Too Many Requests"}),
            )
        } else {
            accepted(n)
        }
    }))
    .await;
    let night = night(vec![twilio_provider(addr, None)], retry(5, 15), false).await;
    night.drain().await;
    let sms = night.sms().await;
    assert!(!sms.is_empty());
    for (state, provider, attempts, ..) in &sms {
        assert_eq!(state, "accepted");
        assert_eq!(provider.as_deref(), Some("primary"));
        assert_eq!(*attempts, 2, "one 429, then accepted");
    }
    assert_eq!(seen.lock().unwrap().len(), 2 * sms.len(), "no extra sends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_number_fails_permanently_once_and_becomes_a_finding() {
    // DPO's primary has a number Twilio calls invalid (21211).
    let mut problems = rollcall::yaml::Problems::default();
    let (roster, _) =
        rollcall::domain::contacts::load_dir(&support::root().join("contacts"), &mut problems);
    let invalid = roster
        .department("DPO")
        .unwrap()
        .contacts
        .iter()
        .find(|c| c.role.as_str() == "primary" && c.sms.is_some())
        .and_then(|c| c.sms.as_ref())
        .unwrap()
        .as_str()
        .to_owned();
    let bad = invalid.clone();
    let (addr, seen) = fake_twilio(Arc::new(move |to, n| {
        if to == bad {
            (
                StatusCode::BAD_REQUEST,
                serde_json::json!({"code": 21211, "message": "Invalid 'To' Phone Number"}),
            )
        } else {
            accepted(n)
        }
    }))
    .await;
    let night = night(vec![twilio_provider(addr, None)], retry(5, 15), false).await;
    night.drain().await;
    let sms = night.sms().await;
    let failed: Vec<_> = sms.iter().filter(|m| m.0 == "failed").collect();
    assert_eq!(failed.len(), 1, "only the invalid number fails");
    assert_eq!(failed[0].2, 1, "a permanent error is not retried");
    assert!(
        sms.iter()
            .filter(|m| m.0 != "failed")
            .all(|m| m.0 == "accepted")
    );
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|t| **t == invalid)
            .count(),
        1,
        "the invalid number was tried once"
    );
    let findings = night.events("contact.finding").await;
    assert_eq!(findings.len(), 1);
    assert!(findings[0]["error"].as_str().unwrap().contains("21211"));
    assert!(
        findings[0]["contact"].as_str().unwrap().starts_with("dpo-"),
        "{}",
        findings[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_twilio_fails_everything_the_http_json_backup_carries_the_sms() {
    let (primary, twilio_seen) = fake_twilio(Arc::new(|_, _| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"code": 20500, "message": "Internal Server Error"}),
        )
    }))
    .await;
    let gw = Fake {
        script: Arc::new(|_, n| accepted(n)),
        seen: Arc::default(),
    };
    let gw_seen = Arc::clone(&gw.seen);
    let backup = serve(Router::new().route("/send", post(gateway)).with_state(gw)).await;
    let providers = vec![
        twilio_provider(primary, None),
        SmsProvider {
            name: "backup".into(),
            kind: ProviderKind::HttpJson {
                url: format!("http://{backup}/send"),
                headers_env: vec![("X-Api-Key".into(), "FAULT_GW_KEY".into())],
                body: r#"{"to": {{ to|tojson }}, "text": {{ text|tojson }}, "ref": {{ message_id|tojson }}}"#.into(),
                inbound_secret_env: None,
            },
            rate: None,
        },
    ];
    let night = night(providers, retry(5, 15), true).await;
    night.drain().await;
    let sms = night.sms().await;
    assert!(sms.len() > 60, "a round to every department");
    for (state, provider, ..) in &sms {
        assert_eq!(state, "accepted");
        assert_eq!(
            provider.as_deref(),
            Some("backup"),
            "the store shows the backup carried it"
        );
    }
    assert_eq!(gw_seen.lock().unwrap().len(), sms.len(), "each SMS once");
    // Failures before the breaker opened are retried; after it opened, a
    // message the primary failed went to the backup in the same attempt.
    let retried = sms.iter().filter(|m| m.2 > 1).count();
    assert!(
        retried < rollcall::channel::route::BREAKER_THRESHOLD as usize,
        "{retried} messages needed a second attempt"
    );
    // Sends already in flight when the breaker opened still reached the
    // primary; after that it was left alone.
    let tried = twilio_seen.lock().unwrap().len();
    assert!(
        (rollcall::channel::route::BREAKER_THRESHOLD as usize..sms.len()).contains(&tried),
        "{tried} of {} SMS tried the primary",
        sms.len()
    );
    let failovers = night.events("provider.failover").await;
    assert_eq!(failovers.len(), 1);
    assert_eq!(failovers[0]["provider"], "primary");
    assert_eq!(failovers[0]["next"], "backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_claimed_at_fan_out_for_a_sender_that_died_goes_once_after_the_claims_lapse() {
    let (addr, seen) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    let night = night(vec![twilio_provider(addr, None)], retry(3, 15), false).await;
    let sms = night.sms().await;
    assert!(!sms.is_empty());
    assert!(
        sms.iter()
            .all(|(state, _, attempts, ..)| state == "sending" && *attempts == 1),
        "the fan-out wrote them claimed: {sms:?}"
    );
    // The dispatcher they were claimed for dies before its first pass (it
    // never runs one); a second instance runs.
    let shared: SharedClock = night.clock.clone();
    let other = Dispatcher::new(
        night.store.clone(),
        shared,
        Arc::clone(&night.channels),
        night.retry.clone(),
        "other".into(),
    );
    night.clock.set(night.t0 + TimeDelta::seconds(59));
    other.dispatch_pending().await.unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing is taken over while its claim holds"
    );
    night.clock.set(night.t0 + TimeDelta::seconds(61));
    other.dispatch_pending().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), sms.len(), "each SMS once");
    let states = night.sms().await;
    assert!(
        states
            .iter()
            .all(|(state, _, attempts, ..)| state == "accepted" && *attempts == 2),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_handed_over_too_late_to_send_within_its_claims_is_sent_once_after_they_lapse() {
    let (addr, seen) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    let night = night(vec![twilio_provider(addr, None)], retry(3, 15), false).await;
    let n = night.sms().await.len();
    // The holder's pass comes 31 s after the fan-out: each claim would lapse
    // within 30 s, so it sends none of them (another sender may take them
    // over once they lapse).
    night.clock.set(night.t0 + TimeDelta::seconds(31));
    night.dispatcher.dispatch_pending().await.unwrap();
    assert!(seen.lock().unwrap().is_empty());
    assert!(
        night
            .sms()
            .await
            .iter()
            .all(|(state, ..)| state == "sending")
    );
    // Its next pass after the lapse takes them over and sends each once.
    night.drain().await;
    assert_eq!(seen.lock().unwrap().len(), n, "each SMS once");
    assert!(
        night
            .sms()
            .await
            .iter()
            .all(|(state, _, attempts, ..)| state == "accepted" && *attempts == 2)
    );
}

/// The smoke schedule sent to every department of the sample roster.
fn everyone(text: String) -> String {
    text.replace("targets: [DPO, HKPF, FSD]", "targets: all")
}

impl Night {
    /// The round's T0 and when its fan-out completed, and how many
    /// departments it has written.
    async fn fan_out(&self) -> (Option<i64>, Option<i64>, i64) {
        let Store::Sqlite(pool) = &self.store else {
            unreachable!()
        };
        sqlx::query_as(
            "SELECT r.fired_at, r.fanned_out_at, \
             (SELECT COUNT(*) FROM notifications n WHERE n.round_id = r.id) \
             FROM rounds r WHERE r.state IN ('fired', 'closed')",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Every SMS, after checking each was accepted on its first attempt and
    /// the provider (`seen`) received each once.
    async fn each_sms_accepted_once(
        &self,
        seen: &Mutex<Vec<String>>,
    ) -> Vec<(String, Option<String>, i64, Option<i64>, Option<i64>)> {
        let sms = self.sms().await;
        assert!(
            sms.iter()
                .all(|(state, _, attempts, ..)| state == "accepted" && *attempts == 1),
            "{sms:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), sms.len(), "each SMS once");
        sms
    }

    /// The departments the round fired for.
    async fn fired_for(&self) -> Vec<serde_json::Value> {
        let fired = self.events("round.fired").await;
        assert_eq!(fired.len(), 1, "{fired:?}");
        fired[0]["departments"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_written_in_parts_goes_out_whole_in_the_step_that_fires_it() {
    let (addr, seen) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    // Parts of 4 messages, then 8, 16...: every department is many parts.
    let night = unfired_night(vec![twilio_provider(addr, None)], retry(3, 15), everyone, 4).await;
    rollcall::daemon::step(&night.engine, &night.dispatcher)
        .await
        .unwrap();
    let departments = night.fired_for().await;
    assert!(departments.len() > 20, "{departments:?}");
    let t0 = night.t0.timestamp_millis();
    assert_eq!(
        night.fan_out().await,
        (Some(t0), Some(t0), departments.len() as i64),
        "every department written, the fan-out complete"
    );
    // One step sent every part's SMS, each once, without claiming any again.
    let sms = night.each_sms_accepted_once(&seen).await;
    assert!(sms.len() >= departments.len(), "{sms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_interrupted_part_way_is_completed_with_its_own_t0_by_the_next_tick() {
    let (addr, seen) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    let night = unfired_night(vec![twilio_provider(addr, None)], retry(3, 15), everyone, 4).await;
    let Store::Sqlite(pool) = &night.store else {
        unreachable!()
    };
    // The database fails the fan-out once its first parts are in.
    sqlx::query(
        "CREATE TRIGGER fail_mid_fanout BEFORE INSERT ON notifications \
         WHEN (SELECT COUNT(*) FROM notifications) >= 3 \
         BEGIN SELECT RAISE(ABORT, 'the disk went away'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    let (ticked, sent) = night.dispatcher.dispatch_beside(night.engine.tick()).await;
    let e = ticked.expect_err("the fan-out is interrupted");
    assert!(format!("{e:#}").contains("the disk went away"), "{e:#}");
    sent.unwrap();
    let departments = night.fired_for().await;
    let t0 = night.t0.timestamp_millis();
    let (fired_at, fanned_out_at, written) = night.fan_out().await;
    assert_eq!(
        (fired_at, fanned_out_at),
        (Some(t0), None),
        "fired, unfinished"
    );
    assert!(
        (1..departments.len() as i64).contains(&written),
        "{written} of {}",
        departments.len()
    );
    // What the committed parts hold went out already.
    let early = seen.lock().unwrap().len();
    assert!(early >= 1);

    sqlx::query("DROP TRIGGER fail_mid_fanout")
        .execute(pool)
        .await
        .unwrap();
    night.clock.set(night.t0 + TimeDelta::seconds(10));
    let (ticked, sent) = night.dispatcher.dispatch_beside(night.engine.tick()).await;
    let report = ticked.unwrap();
    sent.unwrap();
    assert_eq!(report.fanouts_resumed.len(), 1, "{report:?}");
    assert!(report.rounds_fired.is_empty(), "it fired once: {report:?}");
    let resumed = night.events("round.fanout_resumed").await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0]["departments"].as_array().unwrap().len() as i64,
        departments.len() as i64 - written,
        "only the departments missing"
    );
    assert_eq!(
        night.fan_out().await,
        (Some(t0), Some(t0 + 10_000), departments.len() as i64),
        "every department once, the fan-out completed when resumed"
    );
    // Every notification keeps the round's T0 and deadline.
    let instants: Vec<(i64, i64)> =
        sqlx::query_as("SELECT DISTINCT fired_at, deadline_at FROM notifications")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(instants.len(), 1, "{instants:?}");
    assert_eq!(instants[0].0, t0);
    night.each_sms_accepted_once(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_retries_run_past_the_deadline_expires_unsent() {
    let (addr, seen) = fake_twilio(Arc::new(|_, _| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"code": 20503, "message": "Service Unavailable"}),
        )
    }))
    .await;
    // Retries at +60s, +120s, +240s: the third would land past the 5m deadline.
    let night = night(vec![twilio_provider(addr, None)], retry(10, 60), false).await;
    let deadline = night.t0 + TimeDelta::minutes(5);
    night.drain().await;
    let sms = night.sms().await;
    for (state, _, _, accepted_at, finished_at) in &sms {
        assert_eq!(state, "expired");
        assert!(accepted_at.is_none());
        assert!(
            finished_at.is_some_and(|t| t < deadline.timestamp_millis()),
            "expired as soon as no retry could make the deadline"
        );
    }
    assert!(
        night.clock.now() < deadline,
        "nothing waited for the deadline to pass"
    );
    assert!(!seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_at_five_a_second_leave_a_fifth_of_a_second_apart() {
    let (addr, _) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    let rate = Rate {
        per_second: 5.0,
        burst: 1,
    };
    let night = night(vec![twilio_provider(addr, Some(rate))], retry(5, 15), true).await;
    night.drain().await;
    let sms = night.sms().await;
    assert!(sms.len() >= 20);
    let mut at: Vec<i64> = sms.iter().map(|m| m.3.expect("accepted")).collect();
    at.sort_unstable();
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= 200, "{} ms apart", pair[1] - pair[0]);
    }
    let span = at.last().unwrap() - at.first().unwrap();
    assert!(
        span >= (sms.len() as i64 - 1) * 200,
        "{} SMS took {span} ms of virtual time",
        sms.len()
    );
    assert!(
        sms.iter().all(|m| m.2 == 1),
        "pacing is not a failed attempt"
    );
}

/// A webhook receiver that holds every POST until the test lets it answer,
/// counting how many are in flight at once.
#[derive(Clone)]
struct HeldReceiver {
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

impl HeldReceiver {
    fn new() -> Self {
        HeldReceiver {
            in_flight: Arc::default(),
            most: Arc::default(),
            answered: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

async fn held(State(r): State<HeldReceiver>) -> StatusCode {
    use std::sync::atomic::Ordering::SeqCst;
    let now = r.in_flight.fetch_add(1, SeqCst) + 1;
    r.most.fetch_max(now, SeqCst);
    r.release.acquire().await.unwrap().forget();
    r.in_flight.fetch_sub(1, SeqCst);
    r.answered.fetch_add(1, SeqCst);
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_one_host_never_exceed_its_limit_and_other_hosts_go_on() {
    use std::sync::atomic::Ordering::SeqCst;
    let receivers = [HeldReceiver::new(), HeldReceiver::new()];
    let mut urls = Vec::new();
    for r in &receivers {
        let router = Router::new()
            .route("/hook", post(held))
            .with_state(r.clone());
        urls.push(format!("http://{}/hook", serve(router).await));
    }
    let cfg = Config {
        webhook_per_host: 2,
        ..Config::default()
    };
    let secrets = Secrets::supplied([("HELD_SECRET".to_owned(), "s".to_owned())]);
    let channels = Arc::new(Channels::from_config(&cfg, secrets).unwrap());
    let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let mut sends = Vec::new();
    for id in 0..12_i64 {
        let channels = Arc::clone(&channels);
        let payload = rollcall::domain::render::Payload::Webhook {
            url: urls[(id % 2) as usize].clone(),
            secret_env: Some("HELD_SECRET".into()),
            body: rollcall::domain::render::RawJson::of(&serde_json::json!({ "n": id })).unwrap(),
        };
        sends.push(tokio::spawn(async move {
            channels.send(id, &payload, now).await
        }));
    }
    // Both hosts fill up to their limit while nothing has answered: the
    // second host is not held up behind the first.
    while receivers.iter().any(|r| r.in_flight.load(SeqCst) < 2) {
        tokio::task::yield_now().await;
    }
    // Let one POST at a time answer; each frees a place for one more.
    for r in &receivers {
        for done in 1..=6 {
            r.release.add_permits(1);
            while r.answered.load(SeqCst) < done {
                tokio::task::yield_now().await;
            }
        }
    }
    for send in sends {
        let result = send.await.unwrap();
        assert!(
            matches!(result, rollcall::store::SendResult::Accepted { .. }),
            "{result:?}"
        );
    }
    for r in &receivers {
        assert_eq!(r.answered.load(SeqCst), 6);
        assert_eq!(r.most.load(SeqCst), 2, "at most `per_host` at once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_twilio_calls_opted_out_gets_no_more_sms() {
    // The first number Twilio is asked to reach has opted out (21610).
    let victim: Arc<Mutex<Option<String>>> = Arc::default();
    let chosen = Arc::clone(&victim);
    let (addr, seen) = fake_twilio(Arc::new(move |to, n| {
        let mut chosen = chosen.lock().unwrap();
        if chosen.get_or_insert_with(|| to.to_owned()) == to {
            (
                StatusCode::BAD_REQUEST,
                serde_json::json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
            )
        } else {
            accepted(n)
        }
    }))
    .await;
    let night = night(vec![twilio_provider(addr, None)], retry(5, 15), false).await;
    night.drain().await;
    let victim = victim.lock().unwrap().clone().expect("R01 sent SMS");

    let opt_outs = night.store.opt_outs().await.unwrap();
    assert_eq!(opt_outs.len(), 1);
    assert_eq!(
        (opt_outs[0].address.as_str(), opt_outs[0].source.as_str()),
        (victim.as_str(), "primary")
    );
    assert_eq!(opt_outs[0].opted_out_at, night.t0);
    let findings = night.events("contact.finding").await;
    assert_eq!(
        findings.len(),
        1,
        "an opt-out is also a finding: {findings:?}"
    );

    // R02, the next night's round: the number is not tried again, and its
    // SMS says why it was not sent; everyone else is reached. (The same
    // tick writes R01's second step too late to send: it expires, unsent.)
    let r02 = night.t0 + TimeDelta::minutes(270);
    night.clock.set(r02);
    night.engine.tick().await.unwrap();
    night.drain().await;
    let Store::Sqlite(pool) = &night.store else {
        unreachable!()
    };
    let r02_sms: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT address, state, state_reason FROM messages WHERE channel = 'sms' AND step = 1 AND created_at >= $1",
    )
    .bind(r02.timestamp_millis())
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(r02_sms.len() >= 3, "{r02_sms:?}");
    for (address, state, reason) in &r02_sms {
        if *address == victim {
            assert_eq!(
                (state.as_str(), reason.as_deref()),
                ("cancelled", Some("opted_out"))
            );
        } else {
            assert_eq!(state, "accepted", "{address}");
        }
    }
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|t| **t == victim)
            .count(),
        1,
        "Twilio was asked once, in R01"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_segment_sms_at_five_segments_a_second_leave_two_fifths_of_a_second_apart() {
    // Templates that make every SMS exactly two segments: 161-306 GSM-7
    // characters in English, 71-134 UCS-2 characters in Chinese.
    let filler = "Exercise round for the 24x7 contact check. ".repeat(4);
    let templates = format!(
        "templates:\n    sms:\n      en: \"{{{{ marker }}}} {filler}Reply {{{{ code }}}}. {{{{ marker }}}}\"\n      \
         zh: \"{{{{ marker }}}} {zh}回覆 {{{{ code }}}} {{{{ marker }}}}\"",
        zh = "演習測試，請確認收到。".repeat(6),
    );
    let (addr, _) = fake_twilio(Arc::new(|_, n| accepted(n))).await;
    let rate = Rate {
        per_second: 5.0,
        burst: 1,
    };
    let night = night_of(
        vec![twilio_provider(addr, Some(rate))],
        retry(5, 15),
        |text| {
            text.replace("targets: [DPO, HKPF, FSD]", "targets: all")
                .replace("templates: {}", &templates)
        },
    )
    .await;
    let Store::Sqlite(pool) = &night.store else {
        unreachable!()
    };
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM messages WHERE channel = 'sms' AND state IN ('pending', 'sending')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(texts.len() >= 10, "{} SMS", texts.len());
    for payload in &texts {
        let payload: serde_json::Value = serde_json::from_str(payload).unwrap();
        let text = payload["text"].as_str().unwrap();
        assert_eq!(
            rollcall::domain::sms::segments(text).count,
            2,
            "every SMS is two segments: {text}"
        );
    }
    night.drain().await;
    let sms = night.sms().await;
    let mut at: Vec<i64> = sms.iter().map(|m| m.3.expect("accepted")).collect();
    at.sort_unstable();
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= 400, "{} ms apart", pair[1] - pair[0]);
    }
    // n two-segment SMS take as long as 2n one-segment ones: the last one
    // leaves (2n - 1) fifths of a second after the round fires.
    let n = sms.len() as i64;
    let last = at.last().unwrap() - night.t0.timestamp_millis();
    assert!(
        last >= (2 * n - 1) * 200,
        "{n} two-segment SMS were all accepted {last} ms after T0"
    );
    assert!(
        sms.iter().all(|m| m.2 == 1),
        "pacing is not a failed attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_hears_by_sms_and_email_when_a_provider_fails_over_and_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let healthy = Arc::new(AtomicBool::new(false));
    let twilio_healthy = Arc::clone(&healthy);
    let (primary, _) = fake_twilio(Arc::new(move |_, n| {
        if twilio_healthy.load(SeqCst) {
            accepted(n)
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"code": 20500, "message": "Internal Server Error"}),
            )
        }
    }))
    .await;
    let gw = Fake {
        script: Arc::new(|_, n| accepted(n)),
        seen: Arc::default(),
    };
    let gw_seen = Arc::clone(&gw.seen);
    let backup = serve(Router::new().route("/send", post(gateway)).with_state(gw)).await;
    let providers = vec![
        twilio_provider(primary, None),
        SmsProvider {
            name: "backup".into(),
            kind: ProviderKind::HttpJson {
                url: format!("http://{backup}/send"),
                headers_env: Vec::new(),
                body: r#"{"to": {{ to|tojson }}, "text": {{ text|tojson }}}"#.into(),
                inbound_secret_env: None,
            },
            rate: None,
        },
    ];
    // The smoke drill's three departments; control is the duty controller
    // (English) and the exercise director (Chinese). No SMTP is configured.
    let night = night(providers, retry(5, 15), false).await;
    let controllers = ["+85298868636", "+85260796221"];
    let run = || async {
        for _ in 0..1_000 {
            rollcall::daemon::step(&night.engine, &night.dispatcher)
                .await
                .unwrap();
            match night.store.next_message_due().await.unwrap() {
                Some(t) => night.clock.set(t.max(night.clock.now())),
                None => return,
            }
        }
        panic!("the outbox never drained");
    };
    run().await;

    let notices = night.store.notices("smoke").await.unwrap();
    let failover: Vec<_> = notices
        .iter()
        .filter(|n| n.kind == "provider.failover")
        .collect();
    // Each controller, by SMS and by email.
    assert_eq!(failover.len(), 4, "{notices:#?}");
    for n in &failover {
        match n.channel.as_str() {
            // The SMS went out through the backup, the provider still up.
            "sms" => assert_eq!(
                (n.state.as_str(), n.provider.as_deref()),
                ("accepted", Some("backup"))
            ),
            // Email has nowhere to go here; the store says so.
            _ => assert_eq!(
                (n.state.as_str(), n.last_error.as_deref()),
                ("failed", Some("no provider configured for this channel"))
            ),
        }
        assert!(controllers.contains(&n.address.as_str()) || n.channel == "email");
    }
    let told: Vec<String> = gw_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|to| controllers.contains(&to.as_str()))
        .cloned()
        .collect();
    assert_eq!(told.len(), 2, "each controller's SMS once: {told:?}");

    // Twilio comes back; the next night's round goes through it after the
    // breaker's cooldown, and control hears of the recovery.
    healthy.store(true, SeqCst);
    night.clock.set(night.t0 + TimeDelta::minutes(270));
    run().await;
    let recovered: Vec<_> = night
        .store
        .notices("smoke")
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == "provider.recovered")
        .collect();
    assert_eq!(recovered.len(), 4, "{recovered:#?}");
    let sms: Vec<_> = recovered.iter().filter(|n| n.channel == "sms").collect();
    assert!(sms.iter().all(|n| n.state == "accepted"), "{sms:#?}");
    // Nothing is told twice, however often the events are read.
    night.engine.queue_control_notices().await.unwrap();
    assert_eq!(night.store.notices("smoke").await.unwrap().len(), 8);
}
