//! Plans (PRODUCT.md §2.2, §11): cron read as crontab(5) reads it, checked
//! against an independent reader (Python's croniter); the planner's rules
//! over random schedules and seeds (proptest); a golden plan of the nine-day
//! drill; Hong Kong holidays and the 1823 feed; daylight saving; and every
//! plan error reported at its own `path:line:col`.
//!
//! Every instant is fixed: the binary reads a test clock file, and library
//! calls are given `now`. Nothing sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::LazyLock;

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveDateTime, TimeDelta, Timelike as _, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rollcall::domain::contacts::{self, Roster};
use rollcall::domain::holidays::Holidays;
use rollcall::domain::plan::{self, Bucket, Plan, Source};
use rollcall::domain::schedule::{self, Schedule};
use rollcall::yaml::{self, Problems, Severity};
use serde_json::Value;

use crate::support;
use crate::support::daemon::Workspace;

const EXIT_INVALID: i32 = 3;

/// Four small departments: CTL (exercise control, never a target), PLA and
/// PLB (the exercise's office hours) and EXT (its own, longer hours).
const CONTACTS: &str = "tests/fixtures/plans/contacts";
/// EXT's office hours as `tests/fixtures/plans/contacts/ext.yaml` gives
/// them (Monday first, minutes of the day, gaps count as office).
const EXT_OFFICE: Span = [
    Some((hm(7, 30), hm(20, 0))),
    Some((hm(7, 30), hm(20, 0))),
    Some((hm(7, 30), hm(20, 0))),
    Some((hm(7, 30), hm(20, 0))),
    Some((hm(7, 30), hm(20, 0))),
    Some((hm(9, 0), hm(13, 0))),
    None,
];
/// The expected plan of `schedules/nine-day-drill.yaml`.
const GOLDEN: &str = "tests/fixtures/plans/nine-day-drill.golden";
/// Set to rewrite [`GOLDEN`] from the current planner.
const BLESS_ENV: &str = "ROLLCALL_BLESS";
/// A 2028 holiday list in the 1823 feed's JSON shape, with its UTF-8 BOM.
const HOLIDAYS_1823: &str = "tests/fixtures/plans/holidays-1823-2028.json";
/// Names the Python interpreter that has croniter (tests/requirements.txt).
const PYTHON_ENV: &str = "ROLLCALL_TEST_PYTHON";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_utc()
}

fn minutes(local: NaiveDateTime) -> u32 {
    local.hour() * 60 + local.minute()
}

const fn hm(h: u32, m: u32) -> u32 {
    h * 60 + m
}

/// A schedule in the shape of `schedules/smoke.yaml`, played by the
/// departments in [`CONTACTS`].
struct Drill<'a> {
    id: &'a str,
    timezone: &'a str,
    window: (&'a str, &'a str),
    calendar: String,
    rounds: Vec<String>,
    ack: &'a str,
}

impl<'a> Drill<'a> {
    fn new(id: &'a str, start: &'a str, end: &'a str) -> Self {
        Drill {
            id,
            timezone: "Asia/Hong_Kong",
            window: (start, end),
            calendar: calendar(r#"{ mon-fri: "09:00-18:00" }"#, "hk", false),
            rounds: Vec::new(),
            ack: "{ target: 30m, deadline: 60m, settle: 1m }",
        }
    }

    fn timezone(mut self, tz: &'a str) -> Self {
        self.timezone = tz;
        self
    }

    fn calendar(mut self, calendar: String) -> Self {
        self.calendar = calendar;
        self
    }

    fn ack(mut self, ack: &'a str) -> Self {
        self.ack = ack;
        self
    }

    /// One `rounds:` entry, as written after `- `.
    fn round(mut self, entry: impl Into<String>) -> Self {
        self.rounds.push(entry.into());
        self
    }

    fn yaml(&self) -> String {
        let rounds: String = self.rounds.iter().map(|r| format!("    - {r}\n")).collect();
        format!(
            "# Written by tests/integration/plan.rs.
exercise:
  id: {id}
  title: \"Plan test: {id}\"
  scenario: Planner check; nothing is sent.
  objectives: [Check the plan]
  sponsor: Cyber Security and Technology Crime Bureau
  handling: RESTRICTED
  timezone: {tz}
  window: {{ start: {start}, end: {end} }}
  notice: announced
  marker: {{ en: \"[EXERCISE]\", zh: \"[演習]\" }}
  control: [ctl-controller, ctl-director]
  targets: all
  calendar: {calendar}
  rounds:
{rounds}  ack: {ack}
  escalation:
    - {{ after: 0m, notify: [primary, duty], via: [email] }}
  templates: {{}}
",
            id = self.id,
            tz = self.timezone,
            start = self.window.0,
            end = self.window.1,
            calendar = self.calendar,
            ack = self.ack,
        )
    }
}

fn calendar(office_hours: &str, holidays: &str, allow_uncovered: bool) -> String {
    format!(
        "{{ office_hours: {office_hours}, holidays: {holidays}, allow_uncovered: {allow_uncovered} }}"
    )
}

/// `line:col` of the `rounds:` entry whose text contains `needle`: the
/// column after its `- `, where the entry's mapping starts.
fn entry_at(text: &str, needle: &str) -> (usize, usize) {
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.trim_start().starts_with("- ") && l.contains(needle))
        .unwrap_or_else(|| panic!("no rounds entry containing `{needle}` in:\n{text}"));
    let dash = line.find("- ").expect("an entry line starts with `- `");
    (i + 1, dash + 3)
}

/// A workspace whose clock reads `now`, with a SQLite database in it and
/// [`CONTACTS`] as the configuration's contacts directory.
fn workspace(now: &str) -> Workspace {
    let ws = Workspace::new("", utc(now));
    ws.write_config(&format!(
        "database: \"sqlite://{}\"\ncontacts: \"{}\"\n",
        ws.path().join("rollcall.db").display(),
        support::root().join(CONTACTS).display()
    ));
    std::fs::create_dir_all(ws.path().join("schedules")).expect("schedules directory");
    ws
}

/// Writes a schedule into the workspace's `schedules/` and returns its path.
fn write_schedule(ws: &Workspace, name: &str, text: &str) -> PathBuf {
    let path = ws.path().join("schedules").join(name);
    std::fs::write(&path, text).expect("write schedule");
    path
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        support::stdout(out),
        support::stderr(out)
    )
}

/// `rollcall check` on the fixture contacts and the workspace's schedules.
fn check(ws: &Workspace) -> Output {
    let contacts = support::root().join(CONTACTS);
    let schedules = ws.path().join("schedules");
    let out = ws.cli(&[
        "check",
        "--contacts",
        arg(&contacts),
        "--schedules",
        arg(&schedules),
    ]);
    assert!(
        !support::stderr(&out).contains("panicked"),
        "{}",
        describe(&out)
    );
    out
}

/// `rollcall --json plan FILE`: the exit code and the document.
fn plan_json(ws: &Workspace, file: &Path) -> (Option<i32>, Value) {
    let out = ws.cli(&["--json", "plan", arg(file)]);
    let doc: Value = serde_json::from_str(support::stdout(&out).trim())
        .unwrap_or_else(|e| panic!("plan --json printed no JSON ({e})\n{}", describe(&out)));
    assert_eq!(doc["schema"], 1, "{doc:#}");
    (out.status.code(), doc)
}

/// `rollcall --json plan FILE`, which must succeed: the plan.
fn plan_ok(ws: &Workspace, file: &Path) -> Value {
    let (code, doc) = plan_json(ws, file);
    assert_eq!(code, Some(0), "plan failed:\n{doc:#}");
    assert_eq!(doc["ok"], true, "{doc:#}");
    doc["plan"].clone()
}

fn rounds(plan: &Value) -> &Vec<Value> {
    plan["rounds"].as_array().expect("`rounds` is a list")
}

/// Each round as `(local time, bucket, holiday name)`.
fn buckets(plan: &Value) -> Vec<(String, String, Option<String>)> {
    rounds(plan)
        .iter()
        .map(|r| {
            (
                r["local"].as_str().unwrap_or_default().to_owned(),
                r["bucket"].as_str().unwrap_or_default().to_owned(),
                r["holiday"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn is_warning(line: &str) -> bool {
    line.contains(": warning: ")
}

/// The `path:line:col: message` error lines printed on stdout by `check`.
fn error_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("ok: ") && !l.trim().is_empty() && !is_warning(l))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `check` failed with exit 3 and exactly the `expected`
/// errors, each `(file, line, col, message)` in full.
fn assert_check_errors(ws: &Workspace, expected: &[(&Path, usize, usize, &str)]) {
    let out = check(ws);
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&out));
    let errors = error_lines(&support::stdout(&out));
    let want: Vec<String> = expected
        .iter()
        .map(|(f, l, c, m)| format!("{}:{l}:{c}: {m}", f.display()))
        .collect();
    assert_eq!(errors, want, "{}", describe(&out));
}

/// Loads a schedule from text (names unchecked) and plans it with the
/// library, against `roster` when given.
fn plan_text(
    text: &str,
    roster: Option<&Roster>,
    now: DateTime<Utc>,
) -> (Schedule, Plan, Problems) {
    let path = Path::new("test-schedule.yaml");
    let node = yaml::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let mut problems = Problems::default();
    let s = schedule::load(&node, path, None, &mut problems)
        .unwrap_or_else(|| panic!("schedule does not load:\n{}\n{text}", list(&problems)));
    let p = plan::plan_schedule(&s, path, roster, now, false, &mut problems)
        .unwrap_or_else(|| panic!("no plan:\n{}\n{text}", list(&problems)));
    (s, p, problems)
}

fn list(problems: &Problems) -> String {
    problems.iter().map(|p| format!("  {p}\n")).collect()
}

// ---------------------------------------------------------------------------
// 1. Cron as crontab(5) reads it, against croniter
// ---------------------------------------------------------------------------

/// Reads `{"start", "end", "exprs"}` on stdin and prints, per expression,
/// every local time croniter gives from `start` to `end`, both included.
const CRONITER: &str = r#"
import json, sys
from datetime import datetime, timedelta
from croniter import croniter

req = json.load(sys.stdin)
start = datetime.fromisoformat(req["start"]) - timedelta(minutes=1)
end = datetime.fromisoformat(req["end"])
out = {}
for expr in req["exprs"]:
    it = croniter(expr, start)
    times = []
    while True:
        t = it.get_next(datetime)
        if t > end:
            break
        times.append(t.strftime("%Y-%m-%dT%H:%M"))
    out[expr] = times
json.dump(out, sys.stdout)
"#;

fn python() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// Whether croniter can be imported; the reason when not.
fn croniter_importable(python: &str) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", "import croniter"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = support::stderr(&out);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "`{python} -c 'import croniter'` failed: {}",
        last.unwrap_or("no output")
    ))
}

/// croniter's local times per expression over `[start, end]`; `None` after
/// printing `SKIPPED (croniter): …` when croniter is missing outside CI.
fn croniter_times(start: &str, end: &str, exprs: &[&str]) -> Option<BTreeMap<String, Vec<String>>> {
    let python = python();
    if let Err(reason) = croniter_importable(&python) {
        if support::under_ci() {
            panic!(
                "croniter is required under CI but unusable: {reason}\n\
                 Install it with `pip install -r tests/requirements.txt` and point \
                 {PYTHON_ENV} at that interpreter."
            );
        }
        eprintln!("SKIPPED (croniter): {reason}");
        return None;
    }
    let mut child = Command::new(&python)
        .args(["-c", CRONITER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
    let request = serde_json::json!({"start": start, "end": end, "exprs": exprs});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write to croniter");
    let out = child.wait_with_output().expect("croniter exits");
    assert!(out.status.success(), "croniter failed:\n{}", describe(&out));
    Some(
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("croniter printed no JSON ({e}):\n{}", describe(&out))),
    )
}

#[test]
fn cron_weekdays_land_on_the_days_crontab_gives_as_croniter_reads_them() {
    // Numeric and named weekdays, 0 and 7 for Sunday, ranges, lists, steps,
    // and a day-of-month with a weekday (crontab(5): either matches).
    const EXPRS: &[&str] = &[
        "0 22 * * 2-4",
        "0 22 * * MON-FRI",
        "0 22 * * 0",
        "0 22 * * 7",
        "0 22 * * SAT",
        "0 22 * * 1,3,5",
        "30 21 * * 5-7",
        "15 2 * * sun,tue",
        "10 23 * * MON,FRI",
        "0 20 * * 6,0",
        "30 2 * * 1-5/2",
        "0 3 13 * FRI",
        "45 1 */10 * *",
        "5 0 * 3 Thu",
    ];
    // Thirteen weeks across Lunar New Year and Easter 2027 (Hong Kong has no
    // daylight saving, so local times compare one for one). The window opens
    // on a Monday at 22:00, itself a time several expressions give.
    let (start, end) = ("2027-01-04T22:00", "2027-04-04T23:59");
    let Some(expected) = croniter_times(start, end, EXPRS) else {
        return;
    };
    let now = utc("2026-12-01T00:00:00Z");
    let mut weekdays = BTreeSet::new();
    for expr in EXPRS {
        let text = Drill::new("cron-days", start, end)
            .round(format!("cron: \"{expr}\""))
            .ack("{ target: 2m, deadline: 5m }")
            .yaml();
        let (_, p, problems) = plan_text(&text, None, now);
        assert!(
            !problems.has_errors(),
            "`{expr}` planned with errors:\n{}",
            list(&problems)
        );
        assert!(
            p.rounds
                .iter()
                .all(|r| matches!(&r.source, Source::Cron { expr: e, .. } if e == expr)),
            "`{expr}`: {:#?}",
            p.rounds
        );
        let ours: Vec<String> = p
            .rounds
            .iter()
            .map(|r| r.local.format("%Y-%m-%dT%H:%M").to_string())
            .collect();
        let theirs = &expected[*expr];
        assert!(!theirs.is_empty(), "croniter gives no time for `{expr}`");
        assert_eq!(
            &ours,
            theirs,
            "`{expr}` ({}): rollcall's rounds (left) differ from croniter's (right)",
            plan::cron_in_words(expr)
        );
        weekdays.extend(
            p.rounds
                .iter()
                .map(|r| r.local.weekday().num_days_from_monday()),
        );
    }
    assert_eq!(weekdays.len(), 7, "the expressions cover every weekday");
}

// ---------------------------------------------------------------------------
// 2. Properties over random schedules and seeds
// ---------------------------------------------------------------------------

/// Office spans per weekday, Monday first: (first start, last end) in
/// minutes of the day.
type Span = [Option<(u32, u32)>; 7];

/// Office hours the random schedules use: their YAML and their spans.
const OFFICES: &[(&str, Span)] = &[
    (
        r#"{ mon-fri: "09:00-18:00" }"#,
        [
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            None,
            None,
        ],
    ),
    (
        r#"{ mon-fri: "08:45-12:45,13:15-17:30" }"#,
        [
            Some((hm(8, 45), hm(17, 30))),
            Some((hm(8, 45), hm(17, 30))),
            Some((hm(8, 45), hm(17, 30))),
            Some((hm(8, 45), hm(17, 30))),
            Some((hm(8, 45), hm(17, 30))),
            None,
            None,
        ],
    ),
    (
        r#"{ mon-fri: "09:00-18:00", sat: "09:00-13:00" }"#,
        [
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(18, 0))),
            Some((hm(9, 0), hm(13, 0))),
            None,
        ],
    ),
    (
        r#"{ mon-thu: "08:30-18:00", fri: "08:30-17:30" }"#,
        [
            Some((hm(8, 30), hm(18, 0))),
            Some((hm(8, 30), hm(18, 0))),
            Some((hm(8, 30), hm(18, 0))),
            Some((hm(8, 30), hm(18, 0))),
            Some((hm(8, 30), hm(17, 30))),
            None,
            None,
        ],
    ),
    (
        // Office before 07:00 and after 23:00: no early morning, no evening.
        r#"{ mon-fri: "06:00-23:30" }"#,
        [
            Some((hm(6, 0), hm(23, 30))),
            Some((hm(6, 0), hm(23, 30))),
            Some((hm(6, 0), hm(23, 30))),
            Some((hm(6, 0), hm(23, 30))),
            Some((hm(6, 0), hm(23, 30))),
            None,
            None,
        ],
    ),
];

const BUCKET_NAMES: [&str; 5] = [
    "early-morning",
    "weekday-evening",
    "late-night",
    "weekend",
    "holiday",
];

static HK_HOLIDAYS: LazyLock<BTreeSet<NaiveDate>> =
    LazyLock::new(|| Holidays::hk().days.keys().copied().collect());

static FIXTURE_ROSTER: LazyLock<Roster> = LazyLock::new(|| {
    let mut problems = Problems::default();
    let (roster, _) = contacts::load_dir(&support::root().join(CONTACTS), &mut problems);
    assert!(!problems.has_errors(), "{}", list(&problems));
    roster
});

/// Whether office hours `span` are in at a local time (on a working day:
/// general holidays close every office).
fn in_office(span: &Span, local: NaiveDateTime) -> bool {
    if HK_HOLIDAYS.contains(&local.date()) {
        return false;
    }
    let m = minutes(local);
    span[local.weekday().num_days_from_monday() as usize].is_some_and(|(a, b)| a <= m && m < b)
}

/// PRODUCT.md §2.2's buckets, written out again from the text.
fn bucket_of(span: &Span, local: NaiveDateTime) -> Bucket {
    let date = local.date();
    if HK_HOLIDAYS.contains(&date) {
        return Bucket::Holiday;
    }
    let day = date.weekday().num_days_from_monday() as usize;
    if day >= 5 {
        return Bucket::Weekend;
    }
    // A working day without office: 07:00-23:00 is evening.
    let (start, end) = span[day].unwrap_or((hm(7, 0), hm(7, 0)));
    let m = minutes(local);
    if (start..end).contains(&m) {
        Bucket::Office
    } else if m < start.min(hm(7, 0)) {
        Bucket::LateNight
    } else if m < start {
        Bucket::EarlyMorning
    } else if m < hm(23, 0).max(end) {
        Bucket::WeekdayEvening
    } else {
        Bucket::LateNight
    }
}

#[derive(Debug, Clone)]
struct Block {
    count: u32,
    buckets: Vec<&'static str>,
    gap_secs: i64,
    seed: u64,
}

/// A random schedule. Durations and instants are mostly whole minutes, and
/// sometimes carry seconds (`90s`, `02:15:30`), which the loader accepts.
#[derive(Debug, Clone)]
struct Case {
    tz: &'static str,
    start: NaiveDateTime,
    len_secs: i64,
    office: usize,
    target_secs: i64,
    deadline_secs: i64,
    /// `at` rounds, in seconds after the window's start.
    fixed: Vec<i64>,
    blocks: Vec<Block>,
}

/// A local time as a schedule writes it, with seconds only when it has them.
fn written(t: NaiveDateTime) -> String {
    if t.second() == 0 {
        t.format("%Y-%m-%dT%H:%M").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    }
}

/// A duration as a schedule writes it: `15m`, or `90s` when it has seconds.
fn duration(secs: i64) -> String {
    if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Case {
    fn yaml(&self) -> String {
        let start = written(self.start);
        let end = written(self.start + TimeDelta::seconds(self.len_secs));
        let ack = format!(
            "{{ target: {}, deadline: {} }}",
            duration(self.target_secs),
            duration(self.deadline_secs)
        );
        let mut d = Drill::new("prop", &start, &end)
            .timezone(self.tz)
            .calendar(calendar(OFFICES[self.office].0, "hk", false))
            .ack(&ack);
        for offset in &self.fixed {
            d = d.round(format!(
                "at: {}",
                written(self.start + TimeDelta::seconds(*offset))
            ));
        }
        for b in &self.blocks {
            d = d.round(format!(
                "random: {{ count: {}, buckets: [{}], min_gap: {}, seed: {} }}",
                b.count,
                b.buckets.join(", "),
                duration(b.gap_secs),
                b.seed
            ));
        }
        d.yaml()
    }
}

/// Seconds: whole minutes from `minutes`, or now and then any second in
/// that range.
fn secs(minutes: std::ops::RangeInclusive<i64>) -> impl Strategy<Value = i64> {
    let (a, b) = (*minutes.start(), *minutes.end());
    prop_oneof![
        4 => (a..=b).prop_map(|m| m * 60),
        1 => a * 60..=b * 60,
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (
        1u32..=6,
        proptest::sample::subsequence(BUCKET_NAMES.to_vec(), 1..=5),
        prop_oneof![Just(0i64), secs(1..=24 * 60)],
        any::<u64>(),
    )
        .prop_map(|(count, buckets, gap_secs, seed)| Block {
            count,
            buckets,
            gap_secs,
            seed,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just("Asia/Hong_Kong"), Just("Europe/London")],
        // Start between 2026-01-01 and 2027-12-01, mostly on the half hour:
        // inside the years the shipped holiday list covers.
        0i64..=700,
        0i64..48,
        prop_oneof![4 => Just(0i64), 1 => 1i64..60],
        secs(6 * 60..=12 * 24 * 60),
        0..OFFICES.len(),
        secs(1..=60),
        secs(0..=120),
        proptest::collection::vec((0.0f64..1.0, any::<bool>()), 0..=2),
        proptest::collection::vec(block(), 1..=2),
    )
        .prop_map(
            |(tz, day, half_hour, second, len_secs, office, target_secs, extra, fixed, blocks)| {
                let first = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
                let start = (first + TimeDelta::days(day))
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight")
                    + TimeDelta::minutes(half_hour * 30)
                    + TimeDelta::seconds(second);
                Case {
                    tz,
                    start,
                    len_secs,
                    office,
                    target_secs,
                    deadline_secs: target_secs + extra,
                    fixed: fixed
                        .into_iter()
                        .map(|(f, whole_minute)| {
                            let offset = (f * len_secs as f64) as i64;
                            if whole_minute {
                                offset - offset % 60
                            } else {
                                offset
                            }
                        })
                        .collect(),
                    blocks,
                }
            },
        )
}

fn index_of(source: &Source) -> usize {
    match source {
        Source::Cron { index, .. } | Source::At { index } | Source::Random { index, .. } => *index,
    }
}

/// Checks one random schedule against the rules of PRODUCT.md §2.2.
fn check_case(c: &Case) -> Result<(), TestCaseError> {
    let text = c.yaml();
    let now = utc("2025-06-01T00:00:00Z");
    let (s, p, problems) = plan_text(&text, Some(&FIXTURE_ROSTER), now);
    let (_, again, again_problems) = plan_text(&text, Some(&FIXTURE_ROSTER), now);
    prop_assert_eq!(
        &p,
        &again,
        "the same schedule and seed planned twice differ"
    );
    prop_assert_eq!(list(&problems), list(&again_problems));

    let tz: Tz = c.tz.parse().expect("zone");
    let office = &OFFICES[c.office].1;
    let target = TimeDelta::seconds(c.target_secs);
    let deadline = TimeDelta::seconds(c.deadline_secs);
    let at_local = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
    let line_of = |r: &plan::PlannedRound| s.round_pos[index_of(&r.source)].line;
    let error_at = |line: u64, needle: &str| {
        problems
            .iter()
            .any(|p| p.severity == Severity::Error && p.line == line && p.message.contains(needle))
    };
    let players: BTreeSet<&str> = ["EXT", "PLA", "PLB"].into();

    for (i, r) in p.rounds.iter().enumerate() {
        prop_assert_eq!(&r.label, &format!("R{:02}", i + 1));
        if i > 0 {
            prop_assert!(p.rounds[i - 1].at <= r.at, "rounds out of order");
        }
        let local = at_local(r.at);
        prop_assert_eq!(r.local, local);
        prop_assert_eq!(r.bucket, bucket_of(office, local), "bucket of {}", local);

        let in_window = r.at >= s.window_start && r.at + deadline <= s.window_end;
        let out_of_office =
            !in_office(office, local) && !in_office(office, at_local(r.at + target));
        let line = line_of(r);
        match &r.source {
            Source::Random { index, .. } => {
                prop_assert!(
                    in_window,
                    "{} {local}: T0 or T0 + deadline outside the window",
                    r.label
                );
                prop_assert!(
                    out_of_office,
                    "{} {local}: office hours at T0 or T0 + target",
                    r.label
                );
                let Some(spec_block) = c.blocks.get(index - c.fixed.len()) else {
                    return Err(TestCaseError::fail(format!("no block {index}")));
                };
                prop_assert!(
                    spec_block.buckets.contains(&r.bucket.as_str()),
                    "{} {local} is {:?}, not one of {:?}",
                    r.label,
                    r.bucket,
                    spec_block.buckets
                );
                // Clear of every other round by the deadline, and of its own
                // block's rounds by min_gap too.
                for o in p.rounds.iter().filter(|o| o.label != r.label) {
                    let apart = (o.at - r.at).abs();
                    let need = match &o.source {
                        Source::Random { index: j, .. } if j == index => {
                            deadline.max(TimeDelta::seconds(spec_block.gap_secs))
                        }
                        _ => deadline,
                    };
                    prop_assert!(
                        apart >= need,
                        "{} {local} and {} {} are {apart} apart, less than {need}",
                        r.label,
                        o.label,
                        o.local
                    );
                }
            }
            _ => {
                if !in_window {
                    prop_assert!(
                        error_at(line, "outside the window"),
                        "{} {local} not reported:\n{}",
                        r.label,
                        list(&problems)
                    );
                }
                if !out_of_office {
                    prop_assert!(
                        error_at(line, "office hours"),
                        "{} {local} not reported:\n{}",
                        r.label,
                        list(&problems)
                    );
                }
            }
        }

        // Departments: a target is out of its own office hours at T0 and T0
        // + target; one left out is in them.
        for code in &r.targets {
            prop_assert!(
                players.contains(code.as_str()),
                "{} targets {code}",
                r.label
            );
        }
        let excluded: Vec<&str> = r.excluded.iter().map(|e| e.department.as_str()).collect();
        let ext_in =
            in_office(&EXT_OFFICE, local) || in_office(&EXT_OFFICE, at_local(r.at + target));
        let mut expected_targets = vec!["PLA", "PLB"];
        if ext_in {
            prop_assert_eq!(&excluded, &vec!["EXT"], "{} {}", r.label, local);
        } else {
            prop_assert!(
                excluded.is_empty(),
                "{} {local} leaves out {excluded:?}",
                r.label
            );
            expected_targets.insert(0, "EXT");
        }
        prop_assert_eq!(&r.targets, &expected_targets, "{} {}", r.label, local);
    }

    // Two fixed rounds closer than the deadline: an error at the later one.
    for pair in p.rounds.windows(2) {
        let fixed = |r: &plan::PlannedRound| !matches!(r.source, Source::Random { .. });
        if fixed(&pair[0]) && fixed(&pair[1]) && pair[1].at - pair[0].at < deadline {
            prop_assert!(
                error_at(line_of(&pair[1]), "closer than the ack deadline"),
                "{} and {} not reported:\n{}",
                pair[0].label,
                pair[1].label,
                list(&problems)
            );
        }
    }

    // Every block draws its count, or says how many fit.
    for (k, b) in c.blocks.iter().enumerate() {
        let index = c.fixed.len() + k;
        let drawn = p
            .rounds
            .iter()
            .filter(|r| matches!(r.source, Source::Random { index: i, .. } if i == index))
            .count();
        let line = s.round_pos[index].line;
        if drawn < b.count as usize {
            prop_assert!(
                error_at(line, &format!("only {drawn} of {} rounds fit", b.count)),
                "block {index} drew {drawn} of {} without saying so:\n{}",
                b.count,
                list(&problems)
            );
        } else {
            prop_assert_eq!(drawn, b.count as usize);
            prop_assert!(
                !error_at(line, "cannot be satisfied"),
                "{}",
                list(&problems)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_plans_keep_every_rule(c in case()) {
        check_case(&c)?;
    }
}

#[test]
fn a_different_seed_usually_draws_a_different_plan() {
    let drill = std::fs::read_to_string(support::root().join("schedules/nine-day-drill.yaml"))
        .expect("read the nine-day drill");
    assert!(drill.contains("seed: 20270227"), "the drill's seed moved");
    let now = utc("2027-01-01T00:00:00Z");
    let split = |p: &Plan| {
        let (random, fixed): (Vec<_>, Vec<_>) = p
            .rounds
            .iter()
            .partition(|r| matches!(r.source, Source::Random { .. }));
        let at = |v: Vec<&plan::PlannedRound>| v.iter().map(|r| r.at).collect::<Vec<_>>();
        (at(fixed), at(random))
    };
    let (fixed, _) = split(&plan_text(&drill, None, now).1);
    let mut draws = BTreeSet::new();
    for seed in 1..=20u64 {
        let text = drill.replace("seed: 20270227", &format!("seed: {seed}"));
        let (_, p, problems) = plan_text(&text, None, now);
        assert!(!problems.has_errors(), "seed {seed}:\n{}", list(&problems));
        let (f, random) = split(&p);
        assert_eq!(f, fixed, "seed {seed} moved a fixed round");
        assert_eq!(random.len(), 4, "seed {seed}");
        draws.insert(random);
        // Draws go round-robin over the block's buckets, whatever the seed.
        for r in &p.rounds {
            if let Source::Random { draw, .. } = r.source {
                let want = ["weekday-evening", "late-night", "weekend"][draw as usize % 3];
                assert_eq!(
                    r.bucket.as_str(),
                    want,
                    "seed {seed}: draw {draw} at {}",
                    r.local
                );
            }
        }
    }
    assert!(
        draws.len() >= 18,
        "20 seeds gave only {} different draws",
        draws.len()
    );
}

// ---------------------------------------------------------------------------
// 3. Golden plan of the nine-day drill
// ---------------------------------------------------------------------------

fn golden_lines(p: &Plan) -> Vec<String> {
    p.rounds
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {:<15} {}",
                r.label,
                r.local.format("%a %Y-%m-%d %H:%M"),
                r.at.format("%Y-%m-%dT%H:%MZ"),
                r.bucket.as_str(),
                r.slot
            )
        })
        .collect()
}

#[test]
fn golden_plan_of_the_nine_day_drill() {
    let root = support::root();
    let now = utc("2027-01-01T00:00:00Z");
    let (_, _, p) = plan::load_and_plan(
        &root.join("contacts"),
        &root.join("schedules/nine-day-drill.yaml"),
        now,
        false,
    )
    .unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("the nine-day drill does not plan:\n{}", lines.join("\n"))
    });
    let actual = golden_lines(&p);
    let golden = root.join(GOLDEN);
    if std::env::var(BLESS_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
        let text = format!(
            "# The plan of schedules/nine-day-drill.yaml with contacts/, checked by\n\
             # tests/integration/plan.rs. After an intended planner change, regenerate with\n\
             #   {BLESS_ENV}=1 cargo nextest run -E 'test(plan::golden_plan_of_the_nine_day_drill)'\n\
             # label  local time (Asia/Hong_Kong)  UTC  bucket  slot\n{}\n",
            actual.join("\n")
        );
        std::fs::write(&golden, text).expect("write the golden plan");
        eprintln!("blessed {}", golden.display());
        return;
    }
    let text = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "cannot read {GOLDEN} ({e}); create it with {BLESS_ENV}=1 cargo nextest run -E 'test(plan::golden_plan_of_the_nine_day_drill)'"
        )
    });
    let expected: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    if actual != expected {
        let mut diff = String::new();
        for i in 0..actual.len().max(expected.len()) {
            match (expected.get(i), actual.get(i)) {
                (Some(e), Some(a)) if *e == a.as_str() => diff.push_str(&format!("    {a}\n")),
                (e, a) => {
                    if let Some(e) = e {
                        diff.push_str(&format!("  - {e}\n"));
                    }
                    if let Some(a) = a {
                        diff.push_str(&format!("  + {a}\n"));
                    }
                }
            }
        }
        panic!(
            "the plan of schedules/nine-day-drill.yaml differs from {GOLDEN} \
             (- committed, + planned now):\n{diff}\
             If the change is intended, regenerate the fixture with\n  \
             {BLESS_ENV}=1 cargo nextest run -E 'test(plan::golden_plan_of_the_nine_day_drill)'\n\
             and review its diff before committing it."
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Holidays
// ---------------------------------------------------------------------------

/// The rounds the `rounds:` entry `index` gave, as `plan --json` lists them.
fn rounds_of_rule(plan: &Value, index: usize) -> Vec<&Value> {
    let labels: Vec<&str> = plan["rules"][index]["rounds"]
        .as_array()
        .expect("rule rounds")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rounds(plan)
        .iter()
        .filter(|r| labels.contains(&r["label"].as_str().unwrap_or_default()))
        .collect()
}

#[test]
fn easter_2027_good_friday_the_saturday_after_and_easter_monday_are_holidays() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = Drill::new("easter-2027", "2027-03-25T18:00", "2027-03-30T06:00")
        .round("at: 2027-03-25T20:00")
        .round("at: 2027-03-26T10:00")
        .round("at: 2027-03-27T10:00")
        .round("at: 2027-03-28T10:00")
        .round("at: 2027-03-29T10:00")
        .round("at: 2027-03-30T02:00")
        .yaml();
    let file = write_schedule(&ws, "easter.yaml", &text);
    let plan = plan_ok(&ws, &file);
    let s = |x: &str| x.to_owned();
    assert_eq!(
        buckets(&plan),
        vec![
            (s("2027-03-25 20:00"), s("weekday-evening"), None),
            (s("2027-03-26 10:00"), s("holiday"), Some(s("Good Friday"))),
            (
                s("2027-03-27 10:00"),
                s("holiday"),
                Some(s("The day following Good Friday"))
            ),
            (s("2027-03-28 10:00"), s("weekend"), None),
            (
                s("2027-03-29 10:00"),
                s("holiday"),
                Some(s("Easter Monday"))
            ),
            (s("2027-03-30 02:00"), s("late-night"), None),
        ],
        "{plan:#}"
    );
    // The shipped 2027 dates are provisional, and `plan` says so.
    assert_eq!(rounds(&plan)[1]["holiday_provisional"], true, "{plan:#}");
    let out = ws.cli(&["plan", arg(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let good_friday = support::stdout(&out)
        .lines()
        .find(|l| l.starts_with("R02 "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        good_friday.contains("holiday") && good_friday.ends_with("Good Friday (provisional)"),
        "{}",
        describe(&out)
    );
}

#[test]
fn lunar_new_year_2026_is_three_holidays_and_holiday_draws_land_on_them() {
    let ws = workspace("2026-01-01T00:00:00Z");
    let text = Drill::new("lny-2026", "2026-02-16T18:00", "2026-02-20T08:00")
        .round("at: 2026-02-16T20:00")
        .round("at: 2026-02-17T10:00")
        .round("at: 2026-02-18T10:00")
        .round("at: 2026-02-19T10:00")
        .round("at: 2026-02-20T02:00")
        .round("random: { count: 3, buckets: [holiday], min_gap: 6h, seed: 2026 }")
        .yaml();
    let file = write_schedule(&ws, "lny.yaml", &text);
    let plan = plan_ok(&ws, &file);
    // The three draws from `holiday` land on the three holidays' free time.
    let drawn = rounds_of_rule(&plan, 5);
    assert_eq!(drawn.len(), 3, "{plan:#}");
    for r in &drawn {
        let local = r["local"].as_str().unwrap_or_default();
        assert_eq!(r["bucket"], "holiday", "{plan:#}");
        assert!(
            ["2026-02-17", "2026-02-18", "2026-02-19"]
                .iter()
                .any(|d| local.starts_with(d)),
            "a holiday draw at {local}:\n{plan:#}"
        );
    }
    let fixed: Vec<_> = buckets(&plan)
        .into_iter()
        .filter(|(l, _, _)| !drawn.iter().any(|r| r["local"] == l.as_str()))
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        fixed,
        vec![
            (s("2026-02-16 20:00"), s("weekday-evening"), None),
            (
                s("2026-02-17 10:00"),
                s("holiday"),
                Some(s("Lunar New Year's Day"))
            ),
            (
                s("2026-02-18 10:00"),
                s("holiday"),
                Some(s("The second day of Lunar New Year"))
            ),
            (
                s("2026-02-19 10:00"),
                s("holiday"),
                Some(s("The third day of Lunar New Year"))
            ),
            (s("2026-02-20 02:00"), s("late-night"), None),
        ],
        "{plan:#}"
    );
    assert_eq!(rounds(&plan).len(), 8, "{plan:#}");
    // 2026 is the official list: nothing provisional.
    assert!(
        rounds(&plan)
            .iter()
            .all(|r| r["holiday_provisional"] == false),
        "{plan:#}"
    );
}

#[test]
fn a_general_holiday_on_a_saturday_is_a_holiday_not_a_weekend() {
    let ws = workspace("2026-01-01T00:00:00Z");
    let text = Drill::new("sat-holiday", "2026-09-25T18:00", "2026-12-27T23:00")
        .round("at: 2026-09-26T10:00")
        .round("at: 2026-09-27T10:00")
        .round("at: 2026-12-26T10:00")
        .round("at: 2026-12-27T10:00")
        .yaml();
    let file = write_schedule(&ws, "sat.yaml", &text);
    let plan = plan_ok(&ws, &file);
    let s = |x: &str| x.to_owned();
    assert_eq!(
        buckets(&plan),
        vec![
            (
                s("2026-09-26 10:00"),
                s("holiday"),
                Some(s("The day following the Chinese Mid-Autumn Festival"))
            ),
            (s("2026-09-27 10:00"), s("weekend"), None),
            (
                s("2026-12-26 10:00"),
                s("holiday"),
                Some(s("The first weekday after Christmas Day"))
            ),
            (s("2026-12-27 10:00"), s("weekend"), None),
        ],
        "{plan:#}"
    );
    assert!(
        rounds(&plan)
            .iter()
            .all(|r| r["weekday"] == "Sat" || r["weekday"] == "Sun"),
        "{plan:#}"
    );
}

#[test]
fn a_holiday_file_in_the_1823_json_shape_with_its_bom_is_used() {
    let fixture =
        std::fs::read(support::root().join(HOLIDAYS_1823)).expect("read the 1823 fixture");
    assert!(
        fixture.starts_with(&[0xef, 0xbb, 0xbf]),
        "{HOLIDAYS_1823} must keep the UTF-8 BOM the 1823 feed is served with"
    );
    let ws = workspace("2027-06-01T00:00:00Z");
    std::fs::write(ws.path().join("schedules/hk-2028.json"), &fixture).expect("copy the feed");
    let drill = |holidays: &str| {
        Drill::new("feed-2028", "2028-01-25T18:00", "2028-01-30T06:00")
            .calendar(calendar(r#"{ mon-fri: "09:00-18:00" }"#, holidays, false))
            .round("at: 2028-01-25T20:00")
            .round("at: 2028-01-26T10:00")
            .round("at: 2028-01-27T10:00")
            .round("at: 2028-01-28T10:00")
            // The feed's second event runs 27-29 Jan with an exclusive
            // DTEND: Saturday the 29th is a weekend, not a holiday.
            .round("at: 2028-01-29T10:00")
            .yaml()
    };
    let file = write_schedule(&ws, "feed.yaml", &drill("hk-2028.json"));
    let plan = plan_ok(&ws, &file);
    let s = |x: &str| x.to_owned();
    let both = Some(s("The second and third days of Lunar New Year"));
    assert_eq!(
        buckets(&plan),
        vec![
            (s("2028-01-25 20:00"), s("weekday-evening"), None),
            (
                s("2028-01-26 10:00"),
                s("holiday"),
                Some(s("Lunar New Year's Day"))
            ),
            (s("2028-01-27 10:00"), s("holiday"), both.clone()),
            (s("2028-01-28 10:00"), s("holiday"), both),
            (s("2028-01-29 10:00"), s("weekend"), None),
        ],
        "{plan:#}"
    );
    assert!(
        plan["holiday_source"]
            .as_str()
            .is_some_and(|h| h.ends_with("hk-2028.json")),
        "{plan:#}"
    );
    assert!(
        rounds(&plan)
            .iter()
            .all(|r| r["holiday_provisional"] == false),
        "{plan:#}"
    );

    // The shipped list does not cover 2028: the same window is an error, and
    // the 10:00 rounds of those working days are in office hours.
    let file = write_schedule(&ws, "feed.yaml", &drill("hk"));
    let (code, doc) = plan_json(&ws, &file);
    assert_eq!(code, Some(EXIT_INVALID), "{doc:#}");
    let messages: Vec<&str> = doc["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["severity"] == "error")
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("does not cover 2028")),
        "{doc:#}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("round at Wed 2028-01-26 10:00 is in office hours")),
        "{doc:#}"
    );
}

#[test]
fn a_window_the_holiday_calendar_does_not_cover_needs_allow_uncovered() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let drill = |allow: bool| {
        Drill::new("uncovered-2029", "2029-03-03T18:00", "2029-03-04T06:00")
            .calendar(calendar(r#"{ mon-fri: "09:00-18:00" }"#, "hk", allow))
            .round("at: 2029-03-03T22:00")
            .yaml()
    };
    let file = write_schedule(&ws, "uncovered.yaml", &drill(false));
    let source = Holidays::hk().source;
    assert_check_errors(
        &ws,
        &[(
            &file,
            1,
            1,
            &format!(
                "the holiday calendar ({source}) does not cover 2029: holidays then are unknown; give a holiday file that covers them, or set calendar.allow_uncovered: true"
            ),
        )],
    );

    write_schedule(&ws, "uncovered.yaml", &drill(true));
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = support::stdout(&out);
    let warning = format!(
        "{}:1:1: warning: the holiday calendar ({source}) does not cover 2029: holidays then are unknown (allowed by allow_uncovered)",
        file.display()
    );
    assert!(stdout.lines().any(|l| l == warning), "{}", describe(&out));
    assert!(error_lines(&stdout).is_empty(), "{}", describe(&out));
}

#[test]
fn a_department_whose_own_office_hours_cover_a_round_is_left_out_with_a_warning() {
    let ws = workspace("2027-01-01T00:00:00Z");
    // EXT works weekdays 07:30-20:00 and Saturday 09:00-13:00.
    let text = Drill::new("own-hours", "2027-03-01T18:00", "2027-03-07T06:00")
        // Early morning for the exercise, but EXT is in at T0 + 30m.
        .round("at: 2027-03-02T07:00")
        // Weekday evening for the exercise, EXT's office hours.
        .round("at: 2027-03-02T19:00")
        // After EXT's day: everyone.
        .round("at: 2027-03-03T21:00")
        // A weekend for the exercise, EXT's Saturday morning.
        .round("at: 2027-03-06T10:00")
        .round("at: 2027-03-06T22:00")
        .yaml();
    let file = write_schedule(&ws, "own-hours.yaml", &text);
    let plan = plan_ok(&ws, &file);
    let rows: Vec<(String, u64, Vec<String>)> = rounds(&plan)
        .iter()
        .map(|r| {
            (
                r["local"].as_str().unwrap_or_default().to_owned(),
                r["targets"].as_u64().unwrap_or(0),
                r["excluded"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    let ext = || vec!["EXT".to_owned()];
    assert_eq!(
        rows,
        vec![
            ("2027-03-02 07:00".to_owned(), 2, ext()),
            ("2027-03-02 19:00".to_owned(), 2, ext()),
            ("2027-03-03 21:00".to_owned(), 3, vec![]),
            ("2027-03-06 10:00".to_owned(), 2, ext()),
            ("2027-03-06 22:00".to_owned(), 3, vec![]),
        ],
        "{plan:#}"
    );
    let warnings: Vec<&str> = plan["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for label in ["R01", "R02", "R04"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("EXT is left out of {label}: "))),
            "no warning for {label}: {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 3, "{warnings:#?}");

    // `check` passes and prints each warning at its round's line.
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = support::stdout(&out);
    for (needle, label) in [
        ("2027-03-02T07:00", "R01"),
        ("2027-03-02T19:00", "R02"),
        ("2027-03-06T10:00", "R04"),
    ] {
        let (line, col) = entry_at(&text, needle);
        let want = format!(
            "{}:{line}:{col}: warning: EXT is left out of {label}: its own office hours cover",
            file.display()
        );
        assert!(
            stdout.lines().any(|l| l.starts_with(&want)),
            "no `{want}`:\n{}",
            describe(&out)
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Daylight saving (Europe/London)
// ---------------------------------------------------------------------------

/// Each round as `(UTC instant, local time)`.
fn instants(plan: &Value) -> Vec<(String, String)> {
    rounds(plan)
        .iter()
        .map(|r| {
            (
                r["at"].as_str().unwrap_or_default().to_owned(),
                r["local"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_local_time_in_the_spring_gap_shifts_forward() {
    // 28 Mar 2027: London's clocks go from 01:00 GMT to 02:00 BST.
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = Drill::new("spring-gap", "2027-03-27T18:00", "2027-03-28T06:00")
        .timezone("Europe/London")
        .round("at: 2027-03-28T01:30")
        .yaml();
    let file = write_schedule(&ws, "spring.yaml", &text);
    let plan = plan_ok(&ws, &file);
    assert_eq!(
        instants(&plan),
        pairs(&[("2027-03-28T01:00:00Z", "2027-03-28 02:00")]),
        "{plan:#}"
    );
}

#[test]
fn an_ambiguous_autumn_time_takes_the_earlier_instant() {
    // 31 Oct 2027: 01:00-02:00 happens twice (BST, then GMT).
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = Drill::new("autumn-fold", "2027-10-30T18:00", "2027-10-31T06:00")
        .timezone("Europe/London")
        .round("at: 2027-10-31T01:30")
        .yaml();
    let file = write_schedule(&ws, "autumn.yaml", &text);
    let plan = plan_ok(&ws, &file);
    assert_eq!(
        instants(&plan),
        pairs(&[("2027-10-31T00:30:00Z", "2027-10-31 01:30")]),
        "{plan:#}"
    );
}

#[test]
fn a_daily_cron_across_the_spring_change_gives_one_round_that_day() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = Drill::new("spring-cron", "2027-03-26T00:00", "2027-03-30T12:00")
        .timezone("Europe/London")
        .round("cron: \"30 1 * * *\"")
        .ack("{ target: 5m, deadline: 10m }")
        .yaml();
    let file = write_schedule(&ws, "spring-cron.yaml", &text);
    let plan = plan_ok(&ws, &file);
    assert_eq!(
        instants(&plan),
        pairs(&[
            ("2027-03-26T01:30:00Z", "2027-03-26 01:30"),
            ("2027-03-27T01:30:00Z", "2027-03-27 01:30"),
            ("2027-03-28T01:00:00Z", "2027-03-28 02:00"),
            ("2027-03-29T00:30:00Z", "2027-03-29 01:30"),
            ("2027-03-30T00:30:00Z", "2027-03-30 01:30"),
        ]),
        "{plan:#}"
    );
}

#[test]
fn a_daily_cron_across_the_autumn_change_fires_once_at_the_earlier_instant() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = Drill::new("autumn-cron", "2027-10-30T00:00", "2027-11-01T12:00")
        .timezone("Europe/London")
        .round("cron: \"30 1 * * *\"")
        .ack("{ target: 5m, deadline: 10m }")
        .yaml();
    let file = write_schedule(&ws, "autumn-cron.yaml", &text);
    let plan = plan_ok(&ws, &file);
    assert_eq!(
        instants(&plan),
        pairs(&[
            ("2027-10-30T00:30:00Z", "2027-10-30 01:30"),
            ("2027-10-31T00:30:00Z", "2027-10-31 01:30"),
            ("2027-11-01T01:30:00Z", "2027-11-01 01:30"),
        ]),
        "{plan:#}"
    );
}

// ---------------------------------------------------------------------------
// 6. Plan errors at their own path:line:col
// ---------------------------------------------------------------------------

/// Mon 1 Mar 18:00 to Sun 7 Mar 06:00 2027, ack target 30m, deadline 60m.
fn week(id: &str) -> Drill<'_> {
    Drill::new(id, "2027-03-01T18:00", "2027-03-07T06:00")
}

#[test]
fn a_round_in_office_hours_is_an_error_at_its_line() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = week("in-office")
        .round("at: 2027-03-01T22:00")
        .round("at: 2027-03-02T10:00")
        .yaml();
    let file = write_schedule(&ws, "in-office.yaml", &text);
    let (line, col) = entry_at(&text, "2027-03-02T10:00");
    let message = "round at Tue 2027-03-02 10:00 is in office hours";
    assert_check_errors(&ws, &[(&file, line, col, message)]);

    // `plan` shows the plan and fails the same way.
    let out = ws.cli(&["plan", arg(&file)]);
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&out));
    let want = format!("{}:{line}:{col}: {message}", file.display());
    assert!(
        support::stderr(&out).lines().any(|l| l == want),
        "no `{want}`:\n{}",
        describe(&out)
    );
}

#[test]
fn a_round_whose_ack_target_falls_in_office_hours_is_an_error_at_its_line() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = week("target-in-office")
        .round("at: 2027-03-02T08:45")
        .round("at: 2027-03-03T08:29")
        .yaml();
    let file = write_schedule(&ws, "target.yaml", &text);
    // 08:29 + 30m = 08:59 is still out of hours; 08:45 + 30m is not.
    let (line, col) = entry_at(&text, "2027-03-02T08:45");
    assert_check_errors(
        &ws,
        &[(
            &file,
            line,
            col,
            "round at Tue 2027-03-02 08:45: its ack target (30m, 09:15) falls in office hours",
        )],
    );
}

#[test]
fn a_deadline_past_the_window_end_is_an_error_at_its_line() {
    let ws = workspace("2027-01-01T00:00:00Z");
    // 05:00 + 60m ends exactly at 06:00, the window's end: allowed.
    let fits = week("to-the-end").round("at: 2027-03-07T05:00").yaml();
    write_schedule(&ws, "end-fits.yaml", &fits);
    let text = week("past-the-end").round("at: 2027-03-07T05:30").yaml();
    let file = write_schedule(&ws, "end.yaml", &text);
    let (line, col) = entry_at(&text, "2027-03-07T05:30");
    assert_check_errors(
        &ws,
        &[(
            &file,
            line,
            col,
            "round at Sun 2027-03-07 05:30 is outside the window: T0 and T0 + deadline (1h) must fall between its start and end",
        )],
    );
}

#[test]
fn a_random_block_that_cannot_be_satisfied_says_how_many_fit() {
    let ws = workspace("2027-01-01T00:00:00Z");
    // Sat 18:00 to Sun 06:00: T0 from 18:00 to 05:00, 4h apart: 3 at most.
    let text = Drill::new("too-many", "2027-03-06T18:00", "2027-03-07T06:00")
        .round("random: { count: 5, buckets: [weekend], min_gap: 4h, seed: 11 }")
        .yaml();
    let file = write_schedule(&ws, "too-many.yaml", &text);
    let (code, doc) = plan_json(&ws, &file);
    assert_eq!(code, Some(EXIT_INVALID), "{doc:#}");
    let drawn = rounds(&doc["plan"]).len();
    assert!((1..=3).contains(&drawn), "{doc:#}");
    let (line, col) = entry_at(&text, "random:");
    assert_check_errors(
        &ws,
        &[(
            &file,
            line,
            col,
            &format!(
                "random block cannot be satisfied: only {drawn} of 5 rounds fit in weekend at least 4h apart, out of office hours and clear of the other rounds"
            ),
        )],
    );
}

#[test]
fn two_rounds_closer_than_the_deadline_are_an_error_at_the_later_one() {
    let ws = workspace("2027-01-01T00:00:00Z");
    let text = week("too-close")
        .round("at: 2027-03-02T22:40")
        .round("at: 2027-03-02T22:00")
        .round("at: 2027-03-03T22:00")
        .yaml();
    let file = write_schedule(&ws, "close.yaml", &text);
    let (line, col) = entry_at(&text, "2027-03-02T22:40");
    assert_check_errors(
        &ws,
        &[(
            &file,
            line,
            col,
            "round at Tue 2027-03-02 22:40 is 40m after the round at Tue 2027-03-02 22:00, closer than the ack deadline (1h)",
        )],
    );
}

#[test]
fn a_round_in_the_past_warns_in_check_and_plan_but_fails_exercise_load() {
    // Wed 3 Mar 2027 08:00 in Hong Kong: the Tuesday night round is past.
    let ws = workspace("2027-03-03T00:00:00Z");
    let text = week("in-the-past")
        .round("at: 2027-03-02T22:00")
        .round("at: 2027-03-05T22:00")
        .yaml();
    let file = write_schedule(&ws, "past.yaml", &text);
    let (line, col) = entry_at(&text, "2027-03-02T22:00");
    let message = "round at Tue 2027-03-02 22:00 is in the past";

    let out = check(&ws);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let warning = format!("{}:{line}:{col}: warning: {message}", file.display());
    assert!(
        support::stdout(&out).lines().any(|l| l == warning),
        "no `{warning}`:\n{}",
        describe(&out)
    );

    let (code, doc) = plan_json(&ws, &file);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["ok"], true, "{doc:#}");
    let problems = doc["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|p| p["severity"] == "warning"
            && p["line"] == line as u64
            && p["column"] == col as u64
            && p["message"] == message),
        "{doc:#}"
    );

    let out = ws.cli(&["exercise", "load", arg(&file)]);
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&out));
    let error = format!("{}:{line}:{col}: {message}", file.display());
    assert!(
        support::stderr(&out).lines().any(|l| l == error),
        "no `{error}`:\n{}",
        describe(&out)
    );
    // Nothing was stored.
    let listed = ws.cli(&["exercise", "list"]);
    assert!(
        !support::stdout(&listed).contains("in-the-past"),
        "{}",
        describe(&listed)
    );

    // The same file two days earlier loads.
    ws.set_clock(utc("2027-03-01T00:00:00Z"));
    let out = ws.cli(&["exercise", "load", arg(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let listed = ws.cli(&["exercise", "list"]);
    assert!(
        support::stdout(&listed).contains("in-the-past"),
        "{}",
        describe(&listed)
    );
}

/// Once started, an exercise's plan is frozen: reloading the same file
/// changes nothing, a changed file is refused with what would change, and a
/// loaded exercise whose rounds have passed cannot be started.
#[test]
fn a_started_plan_is_frozen_and_a_stale_one_cannot_start() {
    let mut ws = workspace("2027-02-20T00:00:00Z");
    ws.write_config(&format!(
        "database: \"sqlite://{}\"\n",
        ws.path().join("rollcall.db").display()
    ));
    ws.set_env("RUST_LOG", "warn");
    let smoke = std::fs::read_to_string(support::root().join("schedules/smoke.yaml")).unwrap();
    let file = write_schedule(&ws, "smoke.yaml", &smoke);
    ws.cli_ok(&["exercise", "load", arg(&file)]);
    ws.cli_ok(&["exercise", "start", "smoke", "--yes"]);
    let again = ws.cli_ok(&["exercise", "load", arg(&file)]);
    assert!(again.contains("smoke unchanged"), "{again}");

    let changed = smoke.replace("target: 2m", "target: 3m").replace(
        "    - at: 2027-02-28T02:30\n",
        "    - at: 2027-02-28T02:30\n    - at: 2027-02-28T04:00\n",
    );
    assert_ne!(changed, smoke);
    let file = write_schedule(&ws, "smoke.yaml", &changed);
    let refused = ws.cli(&["exercise", "load", arg(&file)]);
    assert_eq!(
        refused.status.code(),
        Some(EXIT_INVALID),
        "{}",
        describe(&refused)
    );
    let err = support::stderr(&refused);
    assert!(err.contains("has started"), "{err}");
    assert!(
        err.contains("~ ack:"),
        "the changed setting is named: {err}"
    );
    assert!(
        err.contains("+ R03 Sun 2027-02-28 04:00"),
        "the new round is named: {err}"
    );
    let show = ws.cli_ok(&["--json", "exercise", "show", "smoke"]);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        show["rounds"].as_array().unwrap().len(),
        2,
        "the stored plan is untouched"
    );

    // A second exercise, loaded in time but started after its first round.
    let late = write_schedule(
        &ws,
        "late.yaml",
        &smoke.replace("id: smoke", "id: smoke-late"),
    );
    ws.cli_ok(&["exercise", "load", arg(&late)]);
    ws.set_clock(utc("2027-02-27T14:05:00Z"));
    let start = ws.cli(&["exercise", "start", "smoke-late", "--yes"]);
    assert_eq!(
        start.status.code(),
        Some(EXIT_INVALID),
        "{}",
        describe(&start)
    );
    assert!(
        support::stderr(&start).contains("already in the past: R01"),
        "{}",
        describe(&start)
    );
}
