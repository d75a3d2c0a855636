//! A small timing harness shared by the benches, so they need no benchmark
//! framework: it runs a closure within a fixed budget of runs and wall time,
//! keeps every sample, and reports the median and the 99th percentile.
//!
//! Each bench file includes it with `mod support;`; it is not a bench target
//! itself (Cargo only discovers `benches/*.rs` and `benches/*/main.rs`).

#![allow(dead_code, reason = "each bench uses the part of the harness it needs")]

pub mod fixtures;

use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// How many times to run a measurement, and for how long at most. A bench
/// stops at `max_runs` or when `max_time` has passed (after `min_runs`),
/// whichever comes first, so it always ends by itself.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub warmup: usize,
    pub min_runs: usize,
    pub max_runs: usize,
    pub max_time: Duration,
}

/// Every duration measured for one thing.
#[derive(Debug, Clone)]
pub struct Samples {
    pub name: String,
    times: Vec<Duration>,
}

impl Samples {
    pub fn new(name: impl Into<String>) -> Self {
        Samples {
            name: name.into(),
            times: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.times.push(d);
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The nearest-rank quantile: the smallest sample with at least `q` of
    /// all samples at or below it.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn min(&self) -> Duration {
        self.times.iter().copied().min().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.times.iter().copied().max().unwrap_or_default()
    }

    pub fn total(&self) -> Duration {
        self.times.iter().sum()
    }

    /// One line: `name  n=..  median ..  p99 ..  min ..  max ..`.
    pub fn report(&self) {
        println!(
            "{:<44} n={:<5} median {:>10}  p99 {:>10}  min {:>10}  max {:>10}",
            self.name,
            self.len(),
            Human(self.median()),
            Human(self.p99()),
            Human(self.min()),
            Human(self.max()),
        );
    }
}

/// Runs `f` as `budget` allows and returns the samples (warm-up runs are
/// not kept). The closure's result goes through `black_box` so the work is
/// not optimised away.
pub fn run<T>(name: &str, budget: Budget, mut f: impl FnMut() -> T) -> Samples {
    for _ in 0..budget.warmup {
        black_box(f());
    }
    let mut samples = Samples::new(name);
    let started = Instant::now();
    while samples.len() < budget.max_runs
        && (samples.len() < budget.min_runs || started.elapsed() < budget.max_time)
    {
        let t = Instant::now();
        black_box(f());
        samples.push(t.elapsed());
    }
    samples.report();
    samples
}

/// Prints how `subject` compares with `baseline`, as ratios of medians and
/// of p99s (subject / baseline).
pub fn compare(subject: &Samples, baseline: &Samples) {
    println!(
        "  ratio {} / {}: median x{:.2}, p99 x{:.2}",
        subject.name,
        baseline.name,
        ratio(subject.median(), baseline.median()),
        ratio(subject.p99(), baseline.p99()),
    );
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// Prints whether a measured value meets its target.
pub fn verdict(what: &str, measured: Duration, target: Duration) {
    let word = if measured < target { "MET" } else { "MISSED" };
    println!(
        "target {what}: {} against < {}: {word}",
        Human(measured),
        Human(target)
    );
}

/// A duration in the unit that reads best (ns, µs, ms or s).
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs_f64();
        let text = if s >= 1.0 {
            format!("{s:.2} s")
        } else if s >= 1e-3 {
            format!("{:.2} ms", s * 1e3)
        } else if s >= 1e-6 {
            format!("{:.1} µs", s * 1e6)
        } else {
            format!("{:.0} ns", s * 1e9)
        };
        f.pad(&text)
    }
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat`; `None` where that file does not exist.
#[allow(dead_code, reason = "not every bench reads it")]
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold
    // spaces): utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // The kernel reports clock ticks, 100 a second on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}
