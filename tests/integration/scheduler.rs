//! The scheduler and the notification clock over the whole nine-day sample,
//! driven by a manual clock through the daemon's public `step`: every round
//! fires once at its instant and in order, steps and finalisation land on
//! their instants, and pause, resume and endex do what an operator expects.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rollcall::channel::Channels;
use rollcall::clock::{Clock, ManualClock, SharedClock};
use rollcall::config::{Config, Secrets};
use rollcall::dispatch::Dispatcher;
use rollcall::domain::plan::Plan;
use rollcall::engine::Engine;
use rollcall::store::{Store, from_ms};

use crate::support;

struct Drill {
    store: Store,
    clock: Arc<ManualClock>,
    engine: Engine,
    dispatcher: Dispatcher,
    plan: Plan,
    _dir: tempfile::TempDir,
}

const EX: &str = "ooh-2027-q1";

/// The nine-day sample loaded and started at 17:00 on its first day, with no
/// live provider (every message ends `not_configured`).
async fn nine_day_drill() -> Drill {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let start = DateTime::parse_from_rfc3339("2027-02-27T09:00:00Z")
        .unwrap()
        .to_utc();
    let clock = ManualClock::new(start);
    let shared: SharedClock = clock.clone();
    let (_, plan) = support::start_exercise(
        &store,
        &support::root().join("schedules/nine-day-drill.yaml"),
        start,
    )
    .await;
    let cfg = Config::default();
    let engine = Engine::new(
        store.clone(),
        Arc::clone(&shared),
        rollcall::daemon::engine_settings(&cfg),
    );
    let channels = Arc::new(
        Channels::from_config(&cfg, Secrets::supplied(Vec::<(String, String)>::new())).unwrap(),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        shared,
        channels,
        rollcall::daemon::retry_policy(&cfg),
        "scheduler-test".into(),
    );
    Drill {
        store,
        clock,
        engine,
        dispatcher,
        plan,
        _dir: dir,
    }
}

impl Drill {
    /// Runs the daemon's step at every instant it has work, up to `until`.
    async fn run_until(&self, until: DateTime<Utc>) {
        for _ in 0..100_000 {
            rollcall::daemon::step(&self.engine, &self.dispatcher)
                .await
                .unwrap();
            let next = rollcall::daemon::next_due(&self.engine, &self.store)
                .await
                .unwrap();
            match next {
                Some(t) if t <= until => self.clock.set(t.max(self.clock.now())),
                _ => {
                    self.clock.set(until);
                    rollcall::daemon::step(&self.engine, &self.dispatcher)
                        .await
                        .unwrap();
                    return;
                }
            }
        }
        panic!("the daemon never ran out of work");
    }

    async fn events(&self, kind: &str) -> Vec<(DateTime<Utc>, serde_json::Value)> {
        self.store
            .events(Some(EX))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| (from_ms(e.at), serde_json::from_str(&e.data).unwrap()))
            .collect()
    }

    async fn round_states(&self) -> BTreeMap<String, (String, Option<String>)> {
        self.store
            .rounds(EX)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.label, (r.state, r.state_reason)))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_of_the_nine_day_sample_fires_once_at_its_instant_and_closes_on_time() {
    let d = nine_day_drill().await;
    assert_eq!(d.plan.rounds.len(), 12);
    let end = DateTime::parse_from_rfc3339("2027-03-08T00:00:00Z")
        .unwrap()
        .to_utc();
    d.run_until(end).await;

    let fired = d.events("round.fired").await;
    let labels: Vec<&str> = fired
        .iter()
        .map(|(_, data)| data["round"].as_str().unwrap())
        .collect();
    let planned: Vec<&str> = d.plan.rounds.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, planned, "each round fires once, in planned order");
    for ((at, data), round) in fired.iter().zip(&d.plan.rounds) {
        assert_eq!(*at, round.at, "{} fires at its instant", round.label);
        assert_eq!(data["lateness_ms"], 0, "{}", round.label);
        assert_eq!(
            data["departments"].as_array().unwrap().len(),
            round.targets.len(),
            "{} reaches its planned targets",
            round.label
        );
    }

    // Nobody answers: every notification escalates at T0 + 15m ...
    let escalated = d.events("notification.escalated").await;
    let per_round: usize = d.plan.rounds[0].targets.len();
    assert_eq!(escalated.len(), per_round * d.plan.rounds.len());
    for (at, data) in &escalated {
        let round = d.plan.round(data["round"].as_str().unwrap()).unwrap();
        assert_eq!(*at, round.at + TimeDelta::minutes(15));
    }
    // ... and each round closes at deadline + settle (60m + 1m).
    let rounds = d.store.rounds(EX).await.unwrap();
    for r in &rounds {
        assert_eq!(r.state, "closed", "{}", r.label);
        assert_eq!(
            r.closed_at.map(from_ms),
            r.fired_at.map(|t| from_ms(t) + TimeDelta::minutes(61)),
            "{} closes at deadline + settle",
            r.label
        );
    }
    // No live provider: no message reached one, so every department is unreachable.
    let report = d.store.report_rows(EX).await.unwrap();
    assert_eq!(report.len(), per_round * 12);
    assert!(report.iter().all(|r| r.status == "unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_rounds_resume_skips_those_missed_beyond_grace_and_endex_cancels() {
    let d = nine_day_drill().await;
    let r = |label: &str| d.plan.round(label).unwrap().at;

    // R01 fires; pause after it, and R02 and R03 pass while paused.
    d.run_until(r("R01") + TimeDelta::minutes(1)).await;
    assert!(
        d.store
            .set_exercise_state(EX, &["running"], "paused", d.clock.now(), None)
            .await
            .unwrap()
    );
    d.run_until(r("R03") + TimeDelta::minutes(2)).await;
    let states = d.round_states().await;
    assert_eq!(
        states["R01"].0, "closed",
        "a fired round still runs to its end"
    );
    assert_eq!(states["R02"].0, "planned", "pause holds future rounds");
    assert_eq!(states["R03"].0, "planned");

    // Resume two minutes after R03: R03 is within grace (5m) and fires late;
    // R02, three hours earlier, is skipped with the reason.
    assert!(
        d.store
            .set_exercise_state(EX, &["paused"], "running", d.clock.now(), None)
            .await
            .unwrap()
    );
    d.run_until(d.clock.now()).await;
    let states = d.round_states().await;
    assert_eq!(states["R02"].0, "skipped");
    assert!(
        states["R02"].1.as_deref().unwrap().starts_with("missed by"),
        "{:?}",
        states["R02"].1
    );
    assert_eq!(states["R03"].0, "fired");
    let fired = d.events("round.fired").await;
    let r03 = fired
        .iter()
        .find(|(_, data)| data["round"] == "R03")
        .unwrap();
    assert_eq!(r03.1["lateness_ms"], 2 * 60 * 1000, "lateness is recorded");

    // Endex ten minutes into R04: its open notifications are cancelled, its
    // pending step-2 messages never go, and every later round is cancelled.
    d.run_until(r("R04") + TimeDelta::minutes(10)).await;
    assert!(
        d.store
            .set_exercise_state(EX, &["running", "paused"], "ended", d.clock.now(), None)
            .await
            .unwrap()
    );
    let cancelled = d
        .store
        .cancel_exercise_work(EX, d.clock.now())
        .await
        .unwrap();
    assert_eq!(
        cancelled as usize,
        d.plan.round("R04").unwrap().targets.len()
    );
    let escalations_before = d.events("notification.escalated").await.len();
    d.run_until(r("R12") + TimeDelta::hours(2)).await;
    assert_eq!(
        d.events("notification.escalated").await.len(),
        escalations_before,
        "nothing escalates after endex"
    );
    let states = d.round_states().await;
    for label in ["R05", "R08", "R12"] {
        assert_eq!(states[label].0, "cancelled", "{label}");
    }
    let rows = d.store.report_rows(EX).await.unwrap();
    assert!(
        rows.iter()
            .filter(|row| row.round_label == "R04")
            .all(|row| row.status == "cancelled")
    );
    let fired: Vec<String> = d
        .events("round.fired")
        .await
        .iter()
        .map(|(_, data)| data["round"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fired, ["R01", "R03", "R04"]);
}
