//! `rollcall simulate schedules/smoke.yaml`: the README's main command.

use crate::support;

#[test]
fn simulating_the_smoke_schedule_prints_a_report_for_both_rounds() {
    let out = support::rollcall(&["simulate", "schedules/smoke.yaml", "--seed", "7"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let text = support::stdout(&out);
    for dept in ["DPO", "HKPF", "FSD"] {
        assert_eq!(
            text.lines()
                .filter(|l| l.split_whitespace().nth(4) == Some(dept))
                .count(),
            2,
            "{dept} in both rounds:\n{text}"
        );
    }
    assert!(text.contains("6 notifications"), "{text}");
    assert!(text.contains("link acks posted"), "{text}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let a = support::rollcall(&["--json", "simulate", "schedules/smoke.yaml", "--seed", "3"]);
    let b = support::rollcall(&["--json", "simulate", "schedules/smoke.yaml", "--seed", "3"]);
    let rows = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_str(&support::stdout(o)).expect("json report");
        v["rows"].clone()
    };
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn a_simulation_kept_with_db_can_be_reported_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("sim.db").display());
    let sim = support::rollcall(&["--db", &db, "simulate", "schedules/smoke.yaml"]);
    assert!(sim.status.success(), "{}", support::stderr(&sim));
    let report = support::rollcall(&["--db", &db, "report", "smoke", "--format", "json"]);
    assert!(report.status.success(), "{}", support::stderr(&report));
    let v: serde_json::Value = serde_json::from_str(&support::stdout(&report)).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["rows"].as_array().unwrap().len(), 6);
}
