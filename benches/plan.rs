//! Planning a year (target: under 50 ms): a 365-day exercise with one
//! `random` block of 500 rounds over all five out-of-hours buckets, against
//! 200 departments (every tenth with its own 7-day office hours, so rounds
//! have exclusions to work out), with the shipped Hong Kong holidays and
//! `allow_uncovered` for the year they do not cover.
//!
//! Baselines, each timed the same way:
//! - `classify minutes`: a bare loop that puts each of the window's 525,600
//!   local minutes into its bucket (one holiday lookup per day, four
//!   comparisons per minute) — the floor of any planner that looks at every
//!   minute once;
//! - `draw numbers`: the same 500 uniform draws from ChaCha8 that the random
//!   block needs, and nothing else;
//! - `output floor`: allocating the plan's 500 × 200 target codes, the
//!   least any plan of this size must build.
//!
//! Run: `cargo bench --bench plan` (see BENCHMARKS.md for the flag the
//! `test-clock` guard needs).

mod support;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use chrono::{Datelike as _, NaiveDate, TimeDelta, Weekday};
use rand::rngs::ChaCha8Rng;
use rand::{Rng as _, SeedableRng as _};
use rollcall::domain::holidays::Holidays;
use rollcall::domain::plan::{Bucket, PlanInput, Source, plan};
use rollcall::domain::schedule::BUCKETS;
use rollcall::yaml::Problems;
use support::{Budget, compare, fixtures, run, verdict};

const DAYS: i64 = 365;
const RANDOM_ROUNDS: u32 = 500;
const DEPARTMENTS: usize = 200;
const TARGET: Duration = Duration::from_millis(50);

fn main() {
    let start = NaiveDate::from_ymd_opt(2027, 6, 1).expect("valid date");
    let roster = fixtures::roster(DEPARTMENTS, Some(10));
    // A 2-hour gap keeps 500 draws well inside the year's out-of-hours time.
    let schedule = fixtures::schedule(
        "bench-year",
        start,
        DAYS,
        vec![fixtures::random_block(
            RANDOM_ROUNDS,
            &BUCKETS,
            2 * 3600,
            20_270_601,
        )],
    );
    let holidays = Holidays::hk();
    let input = PlanInput {
        schedule: &schedule,
        path: Path::new("bench-year.yaml"),
        positions: &[],
        roster: Some(&roster),
        holidays: &holidays,
        now: schedule.window_start - TimeDelta::days(1),
        past_is_error: false,
    };

    // The plan must be real work: every round drawn, no errors.
    let mut problems = Problems::default();
    let checked = plan(&input, &mut problems);
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| p.severity == rollcall::yaml::Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "the bench plan has errors: {errors:#?}");
    let random = checked
        .rounds
        .iter()
        .filter(|r| matches!(r.source, Source::Random { .. }))
        .count();
    assert_eq!(
        random, RANDOM_ROUNDS as usize,
        "every random round is drawn"
    );
    let targets: usize = checked.rounds.iter().map(|r| r.targets.len()).sum();
    let excluded: usize = checked.rounds.iter().map(|r| r.excluded.len()).sum();
    let mut per_bucket = std::collections::BTreeMap::<&str, usize>::new();
    for r in &checked.rounds {
        *per_bucket.entry(r.bucket.as_str()).or_default() += 1;
    }
    println!(
        "plan: {} rounds ({random} random), {targets} targets, {excluded} exclusions, {} warnings; buckets {per_bucket:?}",
        checked.rounds.len(),
        problems.warning_count(),
    );

    let budget = Budget {
        warmup: 3,
        min_runs: 30,
        max_runs: 300,
        max_time: Duration::from_secs(20),
    };
    let subject = run("plan 365 d, 500 random, 200 depts", budget, || {
        let mut problems = Problems::default();
        let p = plan(&input, &mut problems);
        (p, problems)
    });

    let minutes = run("baseline: classify minutes", budget, || {
        classify_minutes(start, DAYS, &holidays)
    });
    let pool = minutes_out_of_hours(start, DAYS, &holidays);
    let draws = run("baseline: draw numbers", budget, || {
        draw(RANDOM_ROUNDS, pool)
    });
    let codes: Vec<String> = roster
        .departments
        .iter()
        .map(|d| d.code.to_string())
        .collect();
    let output = run("baseline: output floor", budget, || {
        (0..RANDOM_ROUNDS)
            .map(|_| codes.clone())
            .collect::<Vec<Vec<String>>>()
    });

    compare(&subject, &minutes);
    compare(&subject, &draws);
    compare(&subject, &output);
    verdict("plan median", subject.median(), TARGET);
    verdict("plan p99", subject.p99(), TARGET);
}

/// The bucket of each local minute of `days` days from `first`, counted.
/// Office hours are Mon–Fri 09:00–18:00 as in the schedule.
fn classify_minutes(first: NaiveDate, days: i64, holidays: &Holidays) -> [u32; 6] {
    let mut counts = [0u32; 6];
    for date in first.iter_days().take(days as usize) {
        let whole_day = if holidays.get(date).is_some() {
            Some(Bucket::Holiday)
        } else if matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            Some(Bucket::Weekend)
        } else {
            None
        };
        for minute in 0..24 * 60u32 {
            let bucket = whole_day.unwrap_or(match minute {
                0..420 => Bucket::LateNight,
                420..540 => Bucket::EarlyMorning,
                540..1080 => Bucket::Office,
                1080..1380 => Bucket::WeekdayEvening,
                _ => Bucket::LateNight,
            });
            // Opaque to the optimiser, so the loop cannot become arithmetic.
            counts[black_box(bucket as usize)] += 1;
        }
    }
    counts
}

/// How many minutes of the window are out of hours: the size of the pool
/// the draws pick from.
fn minutes_out_of_hours(first: NaiveDate, days: i64, holidays: &Holidays) -> u64 {
    let counts = classify_minutes(first, days, holidays);
    let total: u32 = counts.iter().sum();
    assert_eq!(
        i64::from(total),
        days * 24 * 60,
        "every minute is classified"
    );
    u64::from(total - counts[Bucket::Office as usize])
}

/// `count` uniform draws in `0..n` by rejection, as the planner draws them.
fn draw(count: u32, n: u64) -> u64 {
    let mut rng = ChaCha8Rng::from_seed([7; 32]);
    let zone = u64::MAX - (u64::MAX % n);
    let mut sum = 0u64;
    for _ in 0..count {
        let x = loop {
            let x = rng.next_u64();
            if x < zone {
                break x % n;
            }
        };
        sum = sum.wrapping_add(x);
    }
    sum
}
