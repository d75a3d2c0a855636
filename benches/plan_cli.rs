//! `rollcall plan schedules/nine-day-drill.yaml` end to end (target: under
//! 100 ms): the binary started as a process from the repository root, as an
//! operator runs it, reading the 70-department sample contacts directory,
//! planning the nine-day drill and printing the plan to a pipe.
//!
//! Baselines, each timed the same way:
//! - `spawn true`: starting and reaping a process that does nothing, the
//!   operating system's floor;
//! - `rollcall --version`: the same binary starting, parsing its arguments
//!   and exiting (no runtime, no files);
//! - `in process`: the command's work without a process — load the contacts
//!   and the schedule, plan, build the view and render it — timed warm, so
//!   the difference from the end-to-end time is what a fresh process pays
//!   (start, exit, and one-off initialisation, timed separately: the first
//!   phone number parsed).
//!
//! The binary is the one Cargo builds for benches (`CARGO_BIN_EXE_rollcall`);
//! `ROLLCALL_BENCH_BIN` names another, e.g. a plain `cargo build --release`.
//!
//! Run: `cargo bench --bench plan_cli` (see BENCHMARKS.md for the flag the
//! `test-clock` guard needs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollcall::clock::{Clock as _, SystemClock};
use rollcall::config::Config;
use rollcall::domain::{PhoneE164, contacts, plan, schedule};
use rollcall::yaml::Problems;
use support::{Budget, Human, compare, run, verdict};

const SCHEDULE: &str = "schedules/nine-day-drill.yaml";
const TARGET: Duration = Duration::from_millis(100);

fn main() {
    let bin = std::env::var_os("ROLLCALL_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rollcall")));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let command = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .current_dir(root)
            // The defaults, whatever the shell running the bench has set.
            .env_remove("ROLLCALL_CONFIG")
            .env_remove("ROLLCALL_CONTACTS")
            .env_remove("ROLLCALL_LOG")
            .stdin(Stdio::null());
        c
    };

    // The command must succeed and print the whole plan.
    let out = command(&["plan", SCHEDULE])
        .output()
        .expect("rollcall runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rollcall plan failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("R12"),
        "the plan shows all 12 rounds:\n{text}"
    );
    println!(
        "rollcall plan {SCHEDULE}: {} bytes of output, {} lines",
        out.stdout.len(),
        text.lines().count()
    );

    let budget = Budget {
        warmup: 3,
        min_runs: 30,
        max_runs: 200,
        max_time: Duration::from_secs(20),
    };
    let subject = run("rollcall plan nine-day-drill (process)", budget, || {
        let out = command(&["plan", SCHEDULE])
            .output()
            .expect("rollcall runs");
        assert!(out.status.success());
        out.stdout.len()
    });
    let spawn = run("baseline: spawn true", budget, || {
        Command::new("true")
            .stdin(Stdio::null())
            .status()
            .expect("true runs")
    });
    let version = run("baseline: rollcall --version", budget, || {
        let out = command(&["--version"]).output().expect("rollcall runs");
        assert!(out.status.success());
        out.stdout.len()
    });
    // The first phone number a process parses makes the `phonenumber` crate
    // build its metadata (every region's patterns, compiled as regexes); each
    // `rollcall` process pays this once, the in-process runs below only in
    // their warm-up.
    let began = Instant::now();
    PhoneE164::parse("+852 9123 4567").expect("a mobile number");
    let cold = began.elapsed();
    let began = Instant::now();
    PhoneE164::parse("+852 9123 4568").expect("a mobile number");
    println!(
        "one-off: first phone number parsed in {} (metadata built), the next in {}",
        Human(cold),
        Human(began.elapsed())
    );
    let cfg = Config::default();
    let in_process = run("baseline: in process (load, plan, render)", budget, || {
        let mut problems = Problems::default();
        let (roster, index) = contacts::load_dir(&root.join("contacts"), &mut problems);
        let path = root.join(SCHEDULE);
        let s = schedule::load_file(&path, Some((&roster, &index)), &mut problems)
            .expect("the schedule loads");
        let p = plan::plan_schedule(
            &s,
            &path,
            Some(&roster),
            SystemClock.now(),
            false,
            &mut problems,
        )
        .expect("the schedule plans");
        assert!(!problems.has_errors());
        let view = rollcall::plan_view::build(&s, &p, &roster, &cfg);
        rollcall::plan_view::render_text(&view).len()
    });
    // Where the in-process time goes, one stage at a time.
    let load_contacts = run("  stage: load contacts (70 files)", budget, || {
        let mut problems = Problems::default();
        contacts::load_dir(&root.join("contacts"), &mut problems)
    });
    let mut problems = Problems::default();
    let (roster, index) = contacts::load_dir(&root.join("contacts"), &mut problems);
    let path = root.join(SCHEDULE);
    run("  stage: load schedule", budget, || {
        let mut problems = Problems::default();
        schedule::load_file(&path, Some((&roster, &index)), &mut problems)
    });
    let s = schedule::load_file(&path, Some((&roster, &index)), &mut problems)
        .expect("the schedule loads");
    run("  stage: plan", budget, || {
        let mut problems = Problems::default();
        plan::plan_schedule(
            &s,
            &path,
            Some(&roster),
            SystemClock.now(),
            false,
            &mut problems,
        )
    });
    let p = plan::plan_schedule(
        &s,
        &path,
        Some(&roster),
        SystemClock.now(),
        false,
        &mut problems,
    )
    .expect("the schedule plans");
    run("  stage: build view and render", budget, || {
        let view = rollcall::plan_view::build(&s, &p, &roster, &cfg);
        rollcall::plan_view::render_text(&view)
    });

    compare(&subject, &spawn);
    compare(&subject, &version);
    compare(&subject, &in_process);
    compare(&in_process, &load_contacts);
    verdict("rollcall plan median", subject.median(), TARGET);
    verdict("rollcall plan p99", subject.p99(), TARGET);
}
