//! The plan of an exercise (PRODUCT.md §2.2): every round's instant, its
//! out-of-hours bucket, holiday and targets, with the rules a controller
//! signs off against. Pure: the same schedule, roster, holidays and seed
//! give the same plan on every machine.
//!
//! Time is planned in whole UTC minutes. Candidate instants for `random`
//! rounds are kept as sorted, disjoint minute spans per bucket; each draw
//! removes the span around it, so every later draw is feasible by
//! construction and planning a year costs milliseconds.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike as _, Utc, Weekday,
};
use chrono_tz::Tz;
use rand::rngs::ChaCha8Rng;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use super::calendar::OfficeHours;
use super::contacts::{Department, Roster};
use super::holidays::{Holiday, Holidays};
use super::schedule::{HolidaySource, RoundSpec, Schedule, Targets, parse_cron, resolve_local};
use crate::yaml::{Pos, Problems};

/// Where a local time falls (PRODUCT.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bucket {
    Office,
    EarlyMorning,
    WeekdayEvening,
    LateNight,
    Weekend,
    Holiday,
}

impl Bucket {
    pub const OUT_OF_HOURS: [Bucket; 5] = [
        Bucket::EarlyMorning,
        Bucket::WeekdayEvening,
        Bucket::LateNight,
        Bucket::Weekend,
        Bucket::Holiday,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Office => "office",
            Bucket::EarlyMorning => "early-morning",
            Bucket::WeekdayEvening => "weekday-evening",
            Bucket::LateNight => "late-night",
            Bucket::Weekend => "weekend",
            Bucket::Holiday => "holiday",
        }
    }

    pub fn parse(s: &str) -> Option<Bucket> {
        Self::OUT_OF_HOURS
            .into_iter()
            .chain([Bucket::Office])
            .find(|b| b.as_str() == s)
    }
}

const MINUTES_PER_DAY: u32 = 24 * 60;
/// More rounds than this from one cron line is a typo, not a plan.
const MAX_CRON_ROUNDS: usize = 1000;
const SEVEN: u32 = 7 * 60;
const TWENTY_THREE: u32 = 23 * 60;

fn minute_of(t: NaiveTime) -> u32 {
    t.num_seconds_from_midnight() / 60
}

/// The exercise's calendar: zone, office hours and general holidays.
#[derive(Debug, Clone)]
pub struct Calendar<'a> {
    pub tz: Tz,
    pub office: &'a OfficeHours,
    pub holidays: &'a Holidays,
}

impl Calendar<'_> {
    /// The office span of a date (first range's start to last range's end,
    /// gaps included), in minutes of the day; `None` when nobody is in.
    fn office_span(office: &OfficeHours, date: NaiveDate) -> Option<(u32, u32)> {
        let day = &office.days[date.weekday().num_days_from_monday() as usize];
        Some((minute_of(day.first()?.0), minute_of(day.last()?.1)))
    }

    /// The bucket segments of one local date, `[start, end)` in minutes.
    /// A working day with no office ranges has no office and no early
    /// morning: 07:00–23:00 counts as evening.
    fn segments(&self, date: NaiveDate) -> Vec<(u32, u32, Bucket)> {
        if self.holidays.get(date).is_some() {
            return vec![(0, MINUTES_PER_DAY, Bucket::Holiday)];
        }
        if matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            return vec![(0, MINUTES_PER_DAY, Bucket::Weekend)];
        }
        let (start, end) = Self::office_span(self.office, date).unwrap_or((SEVEN, SEVEN));
        let mut out = Vec::with_capacity(5);
        let mut push = |a: u32, b: u32, bucket| {
            if a < b {
                out.push((a, b, bucket));
            }
        };
        push(0, start.min(SEVEN), Bucket::LateNight);
        push(SEVEN.min(start), start, Bucket::EarlyMorning);
        push(start, end, Bucket::Office);
        push(end, TWENTY_THREE.max(end), Bucket::WeekdayEvening);
        push(TWENTY_THREE.max(end), MINUTES_PER_DAY, Bucket::LateNight);
        out
    }

    /// The bucket of a local time.
    pub fn bucket(&self, local: NaiveDateTime) -> Bucket {
        let m = minute_of(local.time());
        self.segments(local.date())
            .into_iter()
            .find(|(a, b, _)| (*a..*b).contains(&m))
            .map_or(Bucket::LateNight, |s| s.2)
    }

    /// Whether `office` (the exercise's or a department's) is in at a local
    /// time: a working day inside the office span.
    pub fn in_office(&self, office: &OfficeHours, local: NaiveDateTime) -> bool {
        self.holidays.get(local.date()).is_none() && office.covers(local)
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    fn utc_minute(&self, date: NaiveDate, minute: u32) -> i64 {
        let local = date.and_time(NaiveTime::MIN) + TimeDelta::minutes(i64::from(minute));
        resolve_local(self.tz, local).timestamp().div_euclid(60)
    }
}

/// Sorted, disjoint half-open spans of UTC minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spans(Vec<(i64, i64)>);

impl Spans {
    fn push(&mut self, a: i64, b: i64) {
        if a >= b {
            return;
        }
        match self.0.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => self.0.push((a, b)),
        }
    }

    fn len(&self) -> i64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes `[a, b)`.
    fn remove(&mut self, a: i64, b: i64) {
        if a >= b {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(x, y) in &self.0 {
            if y <= a || x >= b {
                out.push((x, y));
                continue;
            }
            if x < a {
                out.push((x, a));
            }
            if y > b {
                out.push((b, y));
            }
        }
        self.0 = out;
    }

    /// Keeps only what is also in `other` (both sorted).
    fn intersect(&self, other: &Spans) -> Spans {
        let mut out = Spans::default();
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = self.0[i];
            let (c, d) = other.0[j];
            out.push(a.max(c), b.min(d));
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        out
    }

    /// Removes every minute whose instant is less than `radius` seconds
    /// from the instant `t` (seconds since the epoch).
    fn clear_of(&mut self, t: i64, radius: i64) {
        self.remove(
            (t - radius).div_euclid(60) + 1,
            (t + radius + 59).div_euclid(60),
        );
    }

    /// The `k`-th minute (0-based) across all spans.
    fn nth(&self, mut k: i64) -> Option<i64> {
        for &(a, b) in &self.0 {
            if k < b - a {
                return Some(a + k);
            }
            k -= b - a;
        }
        None
    }
}

/// A uniform draw in `0..n` from the raw 64-bit stream, by rejection, so the
/// result depends only on ChaCha8's output and not on `rand`'s algorithms.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

/// A portable generator: ChaCha8 keyed by the seed's little-endian bytes.
fn generator(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// How a round came to be in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Cron { index: usize, expr: String },
    At { index: usize },
    Random { index: usize, draw: u32 },
}

/// A department left out of one round, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub department: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRound {
    /// `R01`, `R02`, ... in planned order.
    pub label: String,
    /// Unique within the exercise: which rule produced it.
    pub slot: String,
    pub at: DateTime<Utc>,
    pub local: NaiveDateTime,
    pub bucket: Bucket,
    pub holiday: Option<Holiday>,
    pub source: Source,
    /// Targeted departments, sorted; empty when planned without a roster.
    pub targets: Vec<String>,
    pub excluded: Vec<Exclusion>,
}

/// The plan of one exercise; stored at `exercise load`, never re-drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub exercise: String,
    pub timezone: String,
    /// Seeds the `targets: {sample: N}` draws (the first `random` block's
    /// seed, else one derived from the exercise id).
    pub seed: u64,
    pub rounds: Vec<PlannedRound>,
    /// General holidays inside the window.
    pub holidays: Vec<Holiday>,
    pub holiday_source: String,
    /// Plan-level warnings, also reported as problems.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn round(&self, label: &str) -> Option<&PlannedRound> {
        self.rounds.iter().find(|r| r.label == label)
    }
}

/// What planning needs beside the schedule.
pub struct PlanInput<'a> {
    pub schedule: &'a Schedule,
    /// The file the schedule came from, for `path:line:col`.
    pub path: &'a Path,
    /// Where each `rounds:` entry is in that file (may be empty).
    pub positions: &'a [Pos],
    pub roster: Option<&'a Roster>,
    pub holidays: &'a Holidays,
    pub now: DateTime<Utc>,
    /// `exercise load`/`start`: a round in the past is an error, not a warning.
    pub past_is_error: bool,
}

/// Loads the contacts directory and one schedule checked against it, and
/// plans it, as `exercise load` and `simulate` need them; the errors
/// otherwise.
pub fn load_and_plan(
    contacts_dir: &Path,
    schedule_file: &Path,
    now: DateTime<Utc>,
    past_is_error: bool,
) -> Result<(Roster, Schedule, Plan), Vec<crate::yaml::Problem>> {
    let mut problems = Problems::default();
    let (roster, index) = super::contacts::load_dir(contacts_dir, &mut problems);
    let schedule =
        super::schedule::load_file(schedule_file, Some((&roster, &index)), &mut problems);
    let plan = schedule.as_ref().and_then(|s| {
        plan_schedule(
            s,
            schedule_file,
            Some(&roster),
            now,
            past_is_error,
            &mut problems,
        )
    });
    match (schedule, plan) {
        (Some(s), Some(p)) if !problems.has_errors() => Ok((roster, s, p)),
        _ => Err(problems
            .into_sorted()
            .into_iter()
            .filter(|p| p.severity == crate::yaml::Severity::Error)
            .collect()),
    }
}

/// Plans a loaded schedule with the holidays it names.
pub fn plan_schedule(
    schedule: &Schedule,
    path: &Path,
    roster: Option<&Roster>,
    now: DateTime<Utc>,
    past_is_error: bool,
    problems: &mut Problems,
) -> Option<Plan> {
    let holidays = holidays_for(schedule, path, problems)?;
    Some(plan(
        &PlanInput {
            schedule,
            path,
            positions: &schedule.round_pos,
            roster,
            holidays: &holidays,
            now,
            past_is_error,
        },
        problems,
    ))
}

/// The holidays a schedule names: the shipped list or its file.
pub fn holidays_for(schedule: &Schedule, path: &Path, problems: &mut Problems) -> Option<Holidays> {
    match &schedule.calendar.holidays {
        HolidaySource::Hk => Some(Holidays::hk()),
        HolidaySource::File(f) => {
            let resolved = path.parent().unwrap_or(Path::new(".")).join(f);
            Holidays::load_file(&resolved, problems)
        }
    }
}

/// The seed of `targets: {sample: N}` draws.
pub fn plan_seed(schedule: &Schedule) -> u64 {
    schedule
        .rounds
        .iter()
        .find_map(|r| match r {
            RoundSpec::Random { seed, .. } => Some(*seed),
            _ => None,
        })
        .unwrap_or_else(|| {
            let digest = super::codes::sha256_hex(schedule.id.as_bytes());
            u64::from_str_radix(&digest[..16], 16).unwrap_or(0)
        })
}

/// The departments that play: every department but the controllers' own.
pub fn players<'r>(schedule: &Schedule, roster: &'r Roster) -> Vec<&'r Department> {
    let control: Vec<&str> = schedule.control.iter().map(|c| c.as_str()).collect();
    roster
        .departments
        .iter()
        .filter(|d| !d.contacts.iter().all(|c| control.contains(&c.id.as_str())))
        .collect()
}

/// The departments a round targets before office-hour exclusions; a
/// `sample` is drawn from `seed` and the round's `stream`.
pub fn targets<'r>(
    schedule: &Schedule,
    roster: &'r Roster,
    seed: u64,
    stream: u64,
) -> Vec<&'r Department> {
    let players = players(schedule, roster);
    let mut chosen: Vec<&Department> = match &schedule.targets {
        Targets::All => players,
        Targets::List(codes) => players
            .into_iter()
            .filter(|d| codes.contains(&d.code))
            .collect(),
        Targets::Sample(n) => {
            let mut all = players;
            let mut rng = generator(seed, stream.wrapping_add(1 << 32));
            // Fisher–Yates on the portable draw.
            for i in (1..all.len()).rev() {
                let j = below(&mut rng, i as u64 + 1) as usize;
                all.swap(i, j);
            }
            all.truncate(*n as usize);
            all
        }
    };
    chosen.sort_by(|a, b| a.code.cmp(&b.code));
    chosen
}

struct Draft {
    at: DateTime<Utc>,
    slot: String,
    source: Source,
    pos: Pos,
}

/// Plans a schedule. Problems (errors and warnings) go to `problems`,
/// located at the round entry that causes them; the plan is returned even
/// with errors so `plan` can show what it could.
pub fn plan(input: &PlanInput<'_>, problems: &mut Problems) -> Plan {
    let s = input.schedule;
    let cal = Calendar {
        tz: s.tz(),
        office: &s.calendar.office_hours,
        holidays: input.holidays,
    };
    let pos_of = |i: usize| input.positions.get(i).copied().unwrap_or(Pos::START);
    let target = s.ack.target();
    let deadline = s.ack.deadline();
    let mut warnings = Vec::new();
    let mut warn = |problems: &mut Problems, at: Pos, msg: String| {
        problems.warning(input.path, at, msg.clone());
        warnings.push(msg);
    };

    // Dates in the window the holiday list does not speak for.
    let first_date = cal.local(s.window_start).date();
    let last_date = cal.local(s.window_end).date();
    let uncovered: Vec<i32> = first_date
        .iter_days()
        .take_while(|d| *d <= last_date)
        .filter(|d| !input.holidays.covers(*d))
        .map(|d| d.year())
        .fold(Vec::new(), |mut v, y| {
            if v.last() != Some(&y) {
                v.push(y);
            }
            v
        });
    if !uncovered.is_empty() {
        let years = uncovered
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let msg = format!(
            "the holiday calendar ({}) does not cover {years}: holidays then are unknown",
            input.holidays.source
        );
        if s.calendar.allow_uncovered {
            warn(
                problems,
                Pos::START,
                format!("{msg} (allowed by allow_uncovered)"),
            );
        } else {
            problems.error(
                input.path,
                Pos::START,
                format!("{msg}; give a holiday file that covers them, or set calendar.allow_uncovered: true"),
            );
        }
    }

    let mut drafts: Vec<Draft> = Vec::new();
    for (index, spec) in s.rounds.iter().enumerate() {
        match spec {
            RoundSpec::At { local } => {
                let at = resolve_local(cal.tz, *local);
                drafts.push(Draft {
                    at,
                    slot: format!("at{index}@{}", at.timestamp()),
                    source: Source::At { index },
                    pos: pos_of(index),
                });
            }
            RoundSpec::Cron { expr } => {
                let Ok(cron) = parse_cron(expr) else { continue };
                let start_local = cal.local(s.window_start);
                let mut instants: Vec<DateTime<Utc>> = Vec::new();
                for local in cron
                    .iter_from(start_local, croner::Direction::Forward)
                    .take(MAX_CRON_ROUNDS + 1)
                {
                    let at = resolve_local(cal.tz, local);
                    if at > s.window_end {
                        break;
                    }
                    // Two local times in one DST gap shift to the same instant.
                    if at >= s.window_start && instants.last() != Some(&at) {
                        instants.push(at);
                    }
                }
                if instants.len() > MAX_CRON_ROUNDS {
                    problems.error(
                        input.path,
                        pos_of(index),
                        format!(
                            "cron `{expr}` gives more than {MAX_CRON_ROUNDS} rounds in the window"
                        ),
                    );
                    continue;
                }
                let n = instants.len();
                for at in instants {
                    drafts.push(Draft {
                        at,
                        slot: format!("cron{index}@{}", at.timestamp()),
                        source: Source::Cron {
                            index,
                            expr: expr.clone(),
                        },
                        pos: pos_of(index),
                    });
                }
                if n == 0 {
                    warn(
                        problems,
                        pos_of(index),
                        format!(
                            "cron `{expr}` ({}) gives no round inside the window",
                            cron_in_words(expr)
                        ),
                    );
                }
            }
            RoundSpec::Random { .. } => {}
        }
    }

    // Fixed rounds: each rule, at its own entry.
    for d in &drafts {
        check_instant(&cal, s, d.at, d.pos, input, problems);
    }

    // Random rounds: drawn into what the rules leave free.
    let window_end_minute = (s.window_end - deadline).timestamp().div_euclid(60);
    let window_start_minute = s.window_start.timestamp().div_euclid(60)
        + i64::from(s.window_start.timestamp().rem_euclid(60) != 0);
    let mut free = Spans::default();
    free.push(window_start_minute, window_end_minute + 1);
    // Not in office at T0 nor at T0 + target.
    let target_min = target.num_minutes().max(0);
    for date in first_date
        .pred_opt()
        .unwrap_or(first_date)
        .iter_days()
        .take_while(|d| *d <= last_date)
    {
        if input.holidays.get(date).is_some() {
            continue;
        }
        if let Some((a, b)) = Calendar::office_span(cal.office, date) {
            free.remove(
                cal.utc_minute(date, a) - target_min,
                cal.utc_minute(date, b),
            );
        }
    }
    // Bucket spans over the window.
    let mut bucket_spans: BTreeMap<Bucket, Spans> = BTreeMap::new();
    for date in first_date.iter_days().take_while(|d| *d <= last_date) {
        for (a, b, bucket) in cal.segments(date) {
            bucket_spans
                .entry(bucket)
                .or_default()
                .push(cal.utc_minute(date, a), cal.utc_minute(date, b));
        }
    }
    // Radii in seconds: a deadline or gap with seconds (`90s`), or an `at`
    // with seconds, must not be rounded down to whole minutes.
    let deadline_secs = deadline.num_seconds().max(1);
    for (index, spec) in s.rounds.iter().enumerate() {
        let RoundSpec::Random {
            count,
            buckets,
            min_gap_secs,
            seed,
        } = spec
        else {
            continue;
        };
        let gap = (*min_gap_secs).max(deadline_secs);
        let mut pools: Vec<(Bucket, Spans)> = Vec::new();
        for name in buckets {
            let Some(bucket) = Bucket::parse(name) else {
                continue;
            };
            let pool = bucket_spans
                .get(&bucket)
                .map(|sp| sp.intersect(&free))
                .unwrap_or_default();
            if pool.is_empty() {
                warn(
                    problems,
                    pos_of(index),
                    format!(
                        "bucket `{name}` has no time in the window that is out of office hours at T0 and T0 + target"
                    ),
                );
            } else {
                pools.push((bucket, pool));
            }
        }
        // Keep clear of every round already planned.
        for d in &drafts {
            let radius = if matches!(d.source, Source::Random { index: i, .. } if i == index) {
                gap
            } else {
                deadline_secs
            };
            for (_, pool) in &mut pools {
                pool.clear_of(d.at.timestamp(), radius);
            }
        }
        let mut rng = generator(*seed, index as u64);
        let mut drawn = 0;
        for draw in 0..*count {
            let n = pools.len();
            let Some(k) = (0..n)
                .map(|o| (draw as usize + o) % n.max(1))
                .find(|&k| pools.get(k).is_some_and(|(_, p)| !p.is_empty()))
            else {
                break;
            };
            let pool = &pools[k].1;
            let pick = below(&mut rng, pool.len() as u64) as i64;
            let Some(minute) = pool.nth(pick) else { break };
            let at = DateTime::from_timestamp(minute * 60, 0).unwrap_or(s.window_start);
            for (_, p) in &mut pools {
                p.clear_of(minute * 60, gap);
            }
            drafts.push(Draft {
                at,
                slot: format!("random{index}#{draw}"),
                source: Source::Random { index, draw },
                pos: pos_of(index),
            });
            drawn += 1;
        }
        if drawn < *count {
            problems.error(
                input.path,
                pos_of(index),
                format!(
                    "random block cannot be satisfied: only {drawn} of {count} rounds fit in {} at least {} apart, out of office hours and clear of the other rounds",
                    buckets.join(", "),
                    super::format_duration(TimeDelta::seconds(gap))
                ),
            );
        }
        // Past random draws are judged like any other round.
        for d in drafts
            .iter()
            .filter(|d| matches!(d.source, Source::Random { index: i, .. } if i == index))
        {
            if d.at < input.now {
                past_round(d.at, d.pos, &cal, input, problems);
            }
        }
    }

    drafts.sort_by(|a, b| a.at.cmp(&b.at).then(a.slot.cmp(&b.slot)));
    // Two rounds closer than the deadline overlap their ack clocks.
    for pair in drafts.windows(2) {
        if pair[1].at - pair[0].at < deadline {
            problems.error(
                input.path,
                pair[1].pos,
                format!(
                    "round at {} is {} after the round at {}, closer than the ack deadline ({})",
                    fmt_local(&cal, pair[1].at),
                    super::format_duration(pair[1].at - pair[0].at),
                    fmt_local(&cal, pair[0].at),
                    super::format_duration(deadline)
                ),
            );
        }
    }

    let seed = plan_seed(s);
    let mut rounds = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.into_iter().enumerate() {
        let label = format!("R{:02}", i + 1);
        let local = cal.local(d.at);
        let mut targets_out = Vec::new();
        let mut excluded = Vec::new();
        if let Some(roster) = input.roster {
            for dept in targets(s, roster, seed, i as u64) {
                let own = dept.office_hours.as_ref();
                let covered = own.filter(|oh| {
                    cal.in_office(oh, local) || cal.in_office(oh, cal.local(d.at + target))
                });
                if covered.is_some() {
                    let reason = format!(
                        "its own office hours cover {} ({}) or the ack target after it",
                        local.format("%a %H:%M"),
                        label
                    );
                    warn(
                        problems,
                        d.pos,
                        format!("{} is left out of {label}: {reason}", dept.code),
                    );
                    excluded.push(Exclusion {
                        department: dept.code.to_string(),
                        reason,
                    });
                } else {
                    targets_out.push(dept.code.to_string());
                }
            }
        }
        rounds.push(PlannedRound {
            label,
            slot: d.slot,
            at: d.at,
            local,
            bucket: cal.bucket(local),
            holiday: input.holidays.get(local.date()).cloned(),
            source: d.source,
            targets: targets_out,
            excluded,
        });
    }
    let holidays = first_date
        .iter_days()
        .take_while(|d| *d <= last_date)
        .filter_map(|d| input.holidays.get(d).cloned())
        .collect();
    Plan {
        exercise: s.id.clone(),
        timezone: s.timezone.clone(),
        seed,
        rounds,
        holidays,
        holiday_source: input.holidays.source.clone(),
        warnings,
    }
}

/// What changed between a stored schedule and plan and a new one, one
/// line each: `~ key: old → new` for settings, `- R03 …`/`+ R03 …` for
/// rounds. Empty when nothing did.
pub fn diff(
    old_schedule: Option<&Schedule>,
    old_plan: Option<&Plan>,
    schedule: &Schedule,
    plan: &Plan,
) -> Vec<String> {
    let mut out = Vec::new();
    let value = |s: &Schedule| serde_json::to_value(s).unwrap_or_default();
    let new_v = value(schedule);
    match old_schedule.map(value) {
        Some(old_v) => {
            // Keys of both: a field left out when empty (`templates`) is
            // absent from one side when it is added or removed.
            let keys: std::collections::BTreeSet<&String> = [&old_v, &new_v]
                .into_iter()
                .flat_map(|v| v.as_object().into_iter().flat_map(|o| o.keys()))
                .collect();
            for key in keys.into_iter().filter(|k| *k != "rounds") {
                let (old_field, new_field) = (&old_v[key.as_str()], &new_v[key.as_str()]);
                if old_field != new_field {
                    out.push(format!("~ {key}: {old_field} → {new_field}"));
                }
            }
        }
        None => out.push("~ the stored schedule cannot be read".to_owned()),
    }
    let line = |r: &PlannedRound| {
        format!(
            "{} {} {} targets {}",
            r.label,
            r.local.format("%a %Y-%m-%d %H:%M"),
            r.bucket.as_str(),
            if r.targets.len() > 6 {
                format!("{} departments", r.targets.len())
            } else {
                r.targets.join(",")
            }
        )
    };
    let old_lines: Vec<String> = old_plan
        .map(|p| p.rounds.iter().map(line).collect())
        .unwrap_or_default();
    let new_lines: Vec<String> = plan.rounds.iter().map(line).collect();
    for l in old_lines.iter().filter(|l| !new_lines.contains(l)) {
        out.push(format!("- {l}"));
    }
    for l in new_lines.iter().filter(|l| !old_lines.contains(l)) {
        out.push(format!("+ {l}"));
    }
    if old_plan.is_some_and(|p| p.seed != plan.seed) {
        out.push(format!(
            "~ seed: {} → {}",
            old_plan.map_or(0, |p| p.seed),
            plan.seed
        ));
    }
    out
}

fn fmt_local(cal: &Calendar<'_>, t: DateTime<Utc>) -> String {
    cal.local(t).format("%a %Y-%m-%d %H:%M").to_string()
}

/// The rules one fixed round instant must meet.
fn check_instant(
    cal: &Calendar<'_>,
    s: &Schedule,
    at: DateTime<Utc>,
    pos: Pos,
    input: &PlanInput<'_>,
    problems: &mut Problems,
) {
    let local = cal.local(at);
    let target_at = cal.local(at + s.ack.target());
    if at < s.window_start || at + s.ack.deadline() > s.window_end {
        problems.error(
            input.path,
            pos,
            format!(
                "round at {} is outside the window: T0 and T0 + deadline ({}) must fall between its start and end",
                fmt_local(cal, at),
                super::format_duration(s.ack.deadline())
            ),
        );
    }
    if cal.in_office(cal.office, local) {
        problems.error(
            input.path,
            pos,
            format!("round at {} is in office hours", fmt_local(cal, at)),
        );
    } else if cal.in_office(cal.office, target_at) {
        problems.error(
            input.path,
            pos,
            format!(
                "round at {}: its ack target ({}, {}) falls in office hours",
                fmt_local(cal, at),
                super::format_duration(s.ack.target()),
                target_at.format("%H:%M")
            ),
        );
    }
    if at < input.now {
        past_round(at, pos, cal, input, problems);
    }
}

fn past_round(
    at: DateTime<Utc>,
    pos: Pos,
    cal: &Calendar<'_>,
    input: &PlanInput<'_>,
    problems: &mut Problems,
) {
    let msg = format!("round at {} is in the past", fmt_local(cal, at));
    if input.past_is_error {
        problems.error(input.path, pos, msg);
    } else {
        problems.warning(input.path, pos, msg);
    }
}

/// A cron expression in words, for people signing off a plan.
pub fn cron_in_words(expr: &str) -> String {
    let f: Vec<&str> = expr.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = f.as_slice() else {
        return format!("cron `{expr}`");
    };
    let time = match (minute.parse::<u32>(), hour.parse::<u32>()) {
        (Ok(m), Ok(h)) => format!("at {h:02}:{m:02}"),
        (Ok(m), Err(_)) if *hour == "*" => format!("at minute {m} of every hour"),
        _ => format!("at minute `{minute}` of hour `{hour}`"),
    };
    let days = match (*dom, *dow) {
        ("*", "*") => "every day".to_owned(),
        ("*", d) => format!("on {}", weekdays_in_words(d)),
        (m, "*") => format!("on day {m} of the month"),
        (m, d) => format!("on day {m} of the month or on {}", weekdays_in_words(d)),
    };
    let months = if *month == "*" {
        String::new()
    } else {
        format!(" in month {month}")
    };
    format!("{time} {days}{months}")
}

const WEEKDAY_NAMES: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn weekday_name(s: &str) -> Option<&'static str> {
    if let Ok(n) = s.parse::<usize>() {
        return WEEKDAY_NAMES.get(n % 7).copied().filter(|_| n <= 7);
    }
    let s = s.to_ascii_lowercase();
    WEEKDAY_NAMES
        .iter()
        .find(|n| n.to_ascii_lowercase().starts_with(&s) && s.len() >= 3)
        .copied()
}

fn weekdays_in_words(field: &str) -> String {
    let mut parts: Vec<String> = field
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (weekday_name(a), weekday_name(b)) {
                (Some(a), Some(b)) => format!("{a} to {b}"),
                _ => format!("`{part}`"),
            },
            None => weekday_name(part).map_or_else(|| format!("`{part}`"), str::to_owned),
        })
        .collect();
    parts.dedup();
    match parts.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
        [] => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn buckets_follow_the_product_rules() {
        let office = OfficeHours::default();
        let holidays = Holidays::hk();
        let cal = Calendar {
            tz: chrono_tz::Asia::Hong_Kong,
            office: &office,
            holidays: &holidays,
        };
        // Tue 2 Mar 2027 is a working day.
        assert_eq!(cal.bucket(at("2027-03-02 06:59")), Bucket::LateNight);
        assert_eq!(cal.bucket(at("2027-03-02 07:00")), Bucket::EarlyMorning);
        assert_eq!(cal.bucket(at("2027-03-02 09:00")), Bucket::Office);
        assert_eq!(cal.bucket(at("2027-03-02 17:59")), Bucket::Office);
        assert_eq!(cal.bucket(at("2027-03-02 18:00")), Bucket::WeekdayEvening);
        assert_eq!(cal.bucket(at("2027-03-02 22:59")), Bucket::WeekdayEvening);
        assert_eq!(cal.bucket(at("2027-03-02 23:00")), Bucket::LateNight);
        // 00:00–07:00 belongs to its own date: Saturday's small hours are weekend.
        assert_eq!(cal.bucket(at("2027-03-06 02:00")), Bucket::Weekend);
        assert_eq!(cal.bucket(at("2027-03-08 02:00")), Bucket::LateNight);
        // Easter Monday 2027 is a holiday; a holiday on a Saturday is a holiday.
        assert_eq!(cal.bucket(at("2027-03-29 12:00")), Bucket::Holiday);
        assert_eq!(cal.bucket(at("2027-03-27 12:00")), Bucket::Holiday);
        assert!(!cal.in_office(&office, at("2027-03-29 12:00")));
    }

    #[test]
    fn split_office_ranges_count_their_gap_as_office() {
        let node = crate::yaml::parse("mon-fri: \"08:45-12:45,13:15-17:30\"").unwrap();
        let mut p = Problems::default();
        let office = OfficeHours::from_node(&node, Path::new("x"), &mut p).unwrap();
        let holidays = Holidays::default();
        let cal = Calendar {
            tz: chrono_tz::Asia::Hong_Kong,
            office: &office,
            holidays: &holidays,
        };
        assert_eq!(cal.bucket(at("2027-03-02 13:00")), Bucket::Office);
        assert_eq!(cal.bucket(at("2027-03-02 08:44")), Bucket::EarlyMorning);
        assert_eq!(cal.bucket(at("2027-03-02 17:30")), Bucket::WeekdayEvening);
    }

    #[test]
    fn spans_remove_and_intersect() {
        let mut s = Spans::default();
        s.push(0, 10);
        s.push(20, 30);
        s.remove(5, 25);
        assert_eq!(s.0, vec![(0, 5), (25, 30)]);
        assert_eq!(s.len(), 10);
        assert_eq!(s.nth(5), Some(25));
        assert_eq!(s.nth(10), None);
        let mut o = Spans::default();
        o.push(3, 27);
        assert_eq!(s.intersect(&o).0, vec![(3, 5), (25, 27)]);
    }

    #[test]
    fn clearing_a_radius_with_seconds_rounds_outwards() {
        let mut s = Spans::default();
        s.push(0, 10);
        // 90 s around minute 5: minutes 4, 5 and 6 are closer than that.
        s.clear_of(5 * 60, 90);
        assert_eq!(s.0, vec![(0, 4), (7, 10)]);
        // 60 s around 02:30 past minute 1: minutes 1 and 2 only.
        let mut s = Spans::default();
        s.push(0, 10);
        s.clear_of(60 + 30, 60);
        assert_eq!(s.0, vec![(0, 1), (3, 10)]);
    }

    #[test]
    fn cron_reads_as_words() {
        assert_eq!(cron_in_words("30 21 * * SAT"), "at 21:30 on Saturday");
        assert_eq!(cron_in_words("15 2 * * 3"), "at 02:15 on Wednesday");
        assert_eq!(
            cron_in_words("10 23 * * MON,FRI"),
            "at 23:10 on Monday and Friday"
        );
        assert_eq!(
            cron_in_words("0 22 * * 1-5"),
            "at 22:00 on Monday to Friday"
        );
        assert_eq!(cron_in_words("0 3 * * 0,7"), "at 03:00 on Sunday");
    }

    #[test]
    fn the_uniform_draw_is_fixed_by_the_seed() {
        let a: Vec<u64> = (0..5)
            .map(|_| 0)
            .scan(generator(7, 0), |r, _| Some(below(r, 1000)))
            .collect();
        let b: Vec<u64> = (0..5)
            .map(|_| 0)
            .scan(generator(7, 0), |r, _| Some(below(r, 1000)))
            .collect();
        let c: Vec<u64> = (0..5)
            .map(|_| 0)
            .scan(generator(8, 0), |r, _| Some(below(r, 1000)))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| *x < 1000));
    }
}
