//! Exercise schedules: one YAML file per exercise (PRODUCT.md §2.2).

use std::path::Path;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::calendar::OfficeHours;
use super::contacts::{Role, Roster, RosterIndex};
use super::render::{
    self, Alert, Names, SAMPLE_CODE, TEMPLATE_KEYS, TEMPLATE_LANGS, Templates, TextKind,
};
use super::{ChannelKind, ContactId, DepartmentCode, Lang, parse_duration};
use crate::yaml::{self, MapView, Node, Pos, Problems, scalar};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    Announced,
    Partial,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub en: String,
    pub zh: String,
}

impl Marker {
    pub fn for_lang(&self, lang: super::Lang) -> &str {
        match lang {
            super::Lang::En => &self.en,
            super::Lang::Zh => &self.zh,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    All,
    List(Vec<DepartmentCode>),
    Sample(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolidaySource {
    Hk,
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarSpec {
    pub office_hours: OfficeHours,
    pub holidays: HolidaySource,
    pub allow_uncovered: bool,
}

/// The named out-of-hours buckets of PRODUCT.md §2.2.
pub const BUCKETS: [&str; 5] = [
    "early-morning",
    "weekday-evening",
    "late-night",
    "weekend",
    "holiday",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundSpec {
    Cron {
        expr: String,
    },
    At {
        local: NaiveDateTime,
    },
    Random {
        count: u32,
        buckets: Vec<String>,
        min_gap_secs: i64,
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckPolicy {
    pub target_secs: i64,
    pub deadline_secs: i64,
    pub settle_secs: i64,
}

impl AckPolicy {
    pub fn target(&self) -> TimeDelta {
        TimeDelta::seconds(self.target_secs)
    }
    pub fn deadline(&self) -> TimeDelta {
        TimeDelta::seconds(self.deadline_secs)
    }
    pub fn settle(&self) -> TimeDelta {
        TimeDelta::seconds(self.settle_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub after_secs: i64,
    pub notify: Vec<Role>,
    pub via: Vec<ChannelKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub title: String,
    pub scenario: Option<String>,
    pub objectives: Vec<String>,
    pub sponsor: Option<String>,
    pub handling: Option<String>,
    pub timezone: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub notice: Notice,
    pub marker: Marker,
    pub control: Vec<ContactId>,
    pub targets: Targets,
    pub calendar: CalendarSpec,
    pub rounds: Vec<RoundSpec>,
    pub ack: AckPolicy,
    pub escalation: Vec<Step>,
    /// The exercise's own message templates (`templates:`), stored with the
    /// schedule so the engine renders with them. Left out of the stored form
    /// when there are none, so schedules stored before templates existed
    /// read back, and compare, the same.
    #[serde(default, skip_serializing_if = "Templates::is_empty")]
    pub templates: Templates,
    /// Where each `rounds:` entry is in its file, for located plan problems;
    /// not stored.
    #[serde(skip)]
    pub round_pos: Vec<Pos>,
}

impl Schedule {
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Asia::Hong_Kong)
    }
}

/// Resolves a local wall-clock time: a time in a DST gap shifts forward to
/// the first valid instant, an ambiguous one takes the earlier instant.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.to_utc(),
        LocalResult::Ambiguous(a, b) => a.min(b).to_utc(),
        LocalResult::None => {
            // Walk forward minute by minute; gaps are at most a few hours.
            let mut probe = local;
            for _ in 0..(26 * 60) {
                probe += TimeDelta::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.to_utc();
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

fn parse_local(s: &str) -> Result<NaiveDateTime, String> {
    for fmt in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s.trim(), fmt) {
            return Ok(t);
        }
    }
    Err(format!(
        "`{s}` is not a local date and time; write e.g. 2027-03-02T02:15"
    ))
}

/// Parses a standard 5-field Unix cron expression as crontab(5) reads it
/// (0 and 7 are Sunday, 1 is Monday, names allowed).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "cron `{expr}` has {fields} fields; write the 5 fields of crontab(5): minute hour day-of-month month day-of-week"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron `{expr}` is invalid: {e}"))
}

const EXERCISE_KEYS: &[&str] = &[
    "id",
    "title",
    "scenario",
    "objectives",
    "sponsor",
    "handling",
    "timezone",
    "window",
    "notice",
    "marker",
    "control",
    "targets",
    "calendar",
    "rounds",
    "ack",
    "escalation",
    "templates",
];

/// Loads and checks one schedule file. With a roster, `targets` and
/// `control` are checked against it.
pub fn load_file(
    path: &Path,
    roster: Option<(&Roster, &RosterIndex)>,
    problems: &mut Problems,
) -> Option<Schedule> {
    let root = yaml::read_file(path, problems)?;
    load(&root, path, roster, problems)
}

pub fn load(
    root: &Node,
    path: &Path,
    roster: Option<(&Roster, &RosterIndex)>,
    problems: &mut Problems,
) -> Option<Schedule> {
    let top = MapView::open(root, path, "a schedule file", &["exercise"], problems)?;
    top.require("exercise", "a schedule file", problems)?;
    // Opened as the child of its key, so a missing key is reported at the
    // `exercise:` line rather than at whichever key happens to come first.
    let ex = top.child("exercise", "`exercise`", EXERCISE_KEYS, problems)?;
    let before = problems.error_count();
    let what = "`exercise`";

    let id = ex.require_str("id", what, problems).and_then(|(s, pos)| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Some(s.to_owned())
        } else {
            problems.error(
                path,
                pos,
                format!("exercise id `{s}` must be 1 to 64 characters of a-z, 0-9, `-` or `_`"),
            );
            None
        }
    });
    let title = ex
        .require_str("title", what, problems)
        .map(|(s, _)| s.to_owned());
    let scenario = ex.str("scenario", problems).map(|(s, _)| s.to_owned());
    let sponsor = ex.str("sponsor", problems).map(|(s, _)| s.to_owned());
    let handling = ex.str("handling", problems).map(|(s, _)| s.to_owned());
    let objectives = ex
        .get("objectives")
        .map(|n| string_list(n, path, "objectives", problems))
        .unwrap_or_default();

    let tz: Tz = match ex.str("timezone", problems) {
        Some((s, pos)) => match s.parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                problems.error(
                    path,
                    pos,
                    format!("`{s}` is not an IANA time zone such as Asia/Hong_Kong"),
                );
                chrono_tz::Asia::Hong_Kong
            }
        },
        None => chrono_tz::Asia::Hong_Kong,
    };

    let window = ex.require("window", what, problems).and_then(|_| {
        let m = ex.child("window", "`window`", &["start", "end"], problems)?;
        let start = m
            .require_str("start", "`window`", problems)
            .and_then(|(s, pos)| {
                parse_local(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()
            });
        let end = m
            .require_str("end", "`window`", problems)
            .and_then(|(s, pos)| {
                let t = parse_local(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()?;
                Some((t, pos))
            });
        let (start, (end, end_pos)) = (start?, end?);
        if end <= start {
            problems.error(path, end_pos, "window `end` must be after `start`");
            return None;
        }
        Some((resolve_local(tz, start), resolve_local(tz, end)))
    });

    let notice = match ex.str("notice", problems) {
        Some((s, pos)) => match s {
            "announced" => Some(Notice::Announced),
            "partial" => Some(Notice::Partial),
            "none" => Some(Notice::None),
            _ => {
                problems.error(
                    path,
                    pos,
                    format!("notice `{s}` must be announced, partial or none"),
                );
                None
            }
        },
        None => Some(Notice::Partial),
    };

    let marker = match ex.get("marker") {
        None => {
            problems.error(
                path,
                ex.pos(),
                "`exercise` is missing `marker`: every message must start and end with the exercise marker, e.g. marker: { en: \"[EXERCISE]\", zh: \"[演習]\" }",
            );
            None
        }
        Some(_) => ex
            .child("marker", "`marker`", &["en", "zh"], problems)
            .and_then(|m| {
                let mut get = |lang: &str| {
                    m.require_str(lang, "`marker`", problems)
                        .and_then(|(s, pos)| {
                            if s.trim().is_empty() {
                                problems.error(path, pos, format!("marker `{lang}` is empty"));
                                None
                            } else {
                                Some(s.trim().to_owned())
                            }
                        })
                };
                let en = get("en");
                let zh = get("zh");
                Some(Marker { en: en?, zh: zh? })
            }),
    };

    let control: Vec<ContactId> = match ex.get("control") {
        Some(n) => list_items(n, path, "control", problems)
            .into_iter()
            .filter_map(|(s, pos)| {
                if let Some((roster, index)) = roster
                    && roster.contact(s).is_none()
                    && !index.may_have_contact(s)
                {
                    problems.error(path, pos, format!("control names unknown contact `{s}`"));
                    return None;
                }
                ContactId::parse(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()
            })
            .collect(),
        None => Vec::new(),
    };

    let targets = match ex.get("targets") {
        None => Some(Targets::All),
        Some(n) => load_targets(&ex, n, path, roster, problems),
    };

    let calendar = match ex.get("calendar") {
        None => Some(CalendarSpec {
            office_hours: OfficeHours::default(),
            holidays: HolidaySource::Hk,
            allow_uncovered: false,
        }),
        Some(n) => load_calendar(n, path, problems),
    };

    let ack = ex.require("ack", what, problems).and_then(|_| {
        let m = ex.child("ack", "`ack`", &["target", "deadline", "settle"], problems)?;
        let mut dur = |key: &str, required: bool| -> Option<(i64, Pos)> {
            let found = if required {
                m.require_str(key, "`ack`", problems)
            } else {
                m.str(key, problems)
            };
            let (s, pos) = found?;
            match parse_duration(s) {
                Ok(d) if d > TimeDelta::zero() => Some((d.num_seconds(), pos)),
                Ok(_) => {
                    problems.error(path, pos, format!("`{key}` must be longer than zero"));
                    None
                }
                Err(e) => {
                    problems.error(path, pos, e);
                    None
                }
            }
        };
        let target = dur("target", true);
        let deadline = dur("deadline", true);
        let settle = dur("settle", false).map(|(s, _)| s).unwrap_or(60);
        let ((target, target_pos), (deadline, _)) = (target?, deadline?);
        if target > deadline {
            problems.error(
                path,
                target_pos,
                "ack `target` must not be later than `deadline`",
            );
            return None;
        }
        Some(AckPolicy {
            target_secs: target,
            deadline_secs: deadline,
            settle_secs: settle,
        })
    });

    let escalation = ex
        .require("escalation", what, problems)
        .and_then(|n| load_escalation(n, path, ack.as_ref(), problems));

    let (rounds, round_pos): (Vec<RoundSpec>, Vec<Pos>) = ex
        .require("rounds", what, problems)
        .map(|n| load_rounds(n, path, tz, window, problems))
        .unwrap_or_default()
        .into_iter()
        .unzip();

    let templates = load_templates(
        &ex,
        path,
        &TemplateSample {
            exercise: id.as_deref().unwrap_or("exercise"),
            title: title.as_deref().unwrap_or("Exercise"),
            marker: marker.as_ref(),
            tz,
            deadline_at: window.map_or(DateTime::UNIX_EPOCH, |(start, _)| start)
                + ack
                    .as_ref()
                    .map_or(TimeDelta::hours(1), AckPolicy::deadline),
            roster: roster.map(|(r, _)| r),
        },
        problems,
    );

    if problems.error_count() > before {
        return None;
    }
    let (window_start, window_end) = window?;
    Some(Schedule {
        id: id?,
        title: title?,
        scenario,
        objectives,
        sponsor,
        handling,
        timezone: tz.name().to_owned(),
        window_start,
        window_end,
        notice: notice?,
        marker: marker?,
        control,
        targets: targets?,
        calendar: calendar?,
        rounds,
        ack: ack?,
        escalation: escalation?,
        templates,
        round_pos,
    })
}

/// What the exercise's templates are rendered with when the schedule is
/// loaded: its own title, marker and zone, and a real department of the
/// roster when there is one.
struct TemplateSample<'a> {
    exercise: &'a str,
    title: &'a str,
    marker: Option<&'a Marker>,
    tz: Tz,
    deadline_at: DateTime<Utc>,
    roster: Option<&'a Roster>,
}

/// The link a template is tried with at load time: an `https://` one, so
/// an SMS template that sends `{{ ack_url }}` is caught.
const SAMPLE_ACK_URL: &str = "https://rollcall.example/a/sample-link-token";

/// `templates:` — per kind (`sms`, `sms_one_way`, `email_subject`,
/// `email_body`, `webhook_text`), per language (`en`, `zh`), a minijinja
/// template. Each is compiled and rendered once with sample values, so a
/// syntax error, an unknown variable, a text that does not start and end
/// with the marker, or an SMS with a link is reported here, at the
/// template's line, rather than when a round fires.
fn load_templates(
    ex: &MapView<'_>,
    path: &Path,
    sample: &TemplateSample<'_>,
    problems: &mut Problems,
) -> Templates {
    let mut templates = Templates::default();
    let Some(by_kind) = ex.child("templates", "`templates`", TEMPLATE_KEYS, problems) else {
        return templates;
    };
    // A marker problem is reported at `marker:`; the templates are still
    // checked for everything else against the usual markers.
    let fallback_marker = Marker {
        en: "[EXERCISE]".to_owned(),
        zh: "[演習]".to_owned(),
    };
    let marker = sample.marker.unwrap_or(&fallback_marker);
    let department = sample.roster.and_then(|r| r.departments.first());
    for kind in TextKind::ALL {
        let what = format!("`templates.{kind}`");
        let Some(by_lang) = by_kind.child(kind.key(), &what, TEMPLATE_LANGS, problems) else {
            continue;
        };
        for lang in [Lang::En, Lang::Zh] {
            let Some((source, pos)) = by_lang.str(lang.as_str(), problems) else {
                continue;
            };
            let contact = department.and_then(|d| {
                d.contacts
                    .iter()
                    .find(|c| c.lang == lang)
                    .or(d.contacts.first())
            });
            let names = match department {
                Some(d) => Names::of(sample.exercise, d, contact, lang),
                None => Names {
                    exercise: sample.exercise,
                    department_name: match lang {
                        Lang::En => "Digital Policy Office",
                        Lang::Zh => "數字政策辦公室",
                    },
                    contact_name: "CHAN Tai-man",
                },
            };
            let alert = Alert {
                marker,
                lang,
                exercise_title: sample.title,
                round: "R01",
                department: department.map_or("DPO", |d| d.code.as_str()),
                code: SAMPLE_CODE,
                ack_url: SAMPLE_ACK_URL,
                deadline_at: sample.deadline_at,
                tz: sample.tz,
                sms_two_way: kind != TextKind::SmsOneWay,
            };
            let found = render::template_problems(kind, source, &alert, &names);
            for problem in &found {
                problems.error(
                    path,
                    pos,
                    format!("template `{}`: {problem}", kind.template_name(lang)),
                );
            }
            if found.is_empty() {
                templates.insert(kind, lang, source.to_owned());
            }
        }
    }
    templates
}

fn list_items<'a>(
    node: &'a Node,
    path: &Path,
    what: &str,
    problems: &mut Problems,
) -> Vec<(&'a str, Pos)> {
    match node.as_seq() {
        Some(items) => items
            .iter()
            .filter_map(|i| scalar(i, path, what, problems).map(|s| (s, i.pos)))
            .collect(),
        None => {
            problems.error(
                path,
                node.pos,
                format!("`{what}` must be a list, found {}", node.value.kind()),
            );
            Vec::new()
        }
    }
}

fn string_list(node: &Node, path: &Path, what: &str, problems: &mut Problems) -> Vec<String> {
    list_items(node, path, what, problems)
        .into_iter()
        .map(|(s, _)| s.to_owned())
        .collect()
}

fn load_targets(
    ex: &MapView<'_>,
    node: &Node,
    path: &Path,
    roster: Option<(&Roster, &RosterIndex)>,
    problems: &mut Problems,
) -> Option<Targets> {
    match &node.value {
        yaml::Value::Str(s) if s == "all" => Some(Targets::All),
        yaml::Value::Seq(_) => {
            let mut codes = Vec::new();
            let mut ok = true;
            for (s, pos) in list_items(node, path, "targets", problems) {
                match DepartmentCode::parse(s) {
                    Ok(code) => {
                        // A department whose file could not be loaded is not
                        // unknown: that file's own error is the one to fix.
                        if let Some((roster, index)) = roster
                            && roster.department(code.as_str()).is_none()
                            && !index.may_have_department(code.as_str())
                        {
                            problems.error(
                                path,
                                pos,
                                format!("targets name unknown department `{s}`"),
                            );
                            ok = false;
                        }
                        codes.push(code);
                    }
                    Err(e) => {
                        problems.error(path, pos, e);
                        ok = false;
                    }
                }
            }
            if codes.is_empty() && ok {
                problems.error(path, node.pos, "`targets` is an empty list");
                ok = false;
            }
            ok.then_some(Targets::List(codes))
        }
        yaml::Value::Map(_) => {
            let m = ex.child("targets", "`targets`", &["sample"], problems)?;
            let (s, pos) = m.require_str("sample", "`targets`", problems)?;
            match s.parse::<u32>() {
                Ok(n) if n > 0 => Some(Targets::Sample(n)),
                _ => {
                    problems.error(
                        path,
                        pos,
                        format!("`sample` must be a positive whole number, found `{s}`"),
                    );
                    None
                }
            }
        }
        _ => {
            problems.error(
                path,
                node.pos,
                "`targets` must be `all`, a list of department codes, or { sample: N }",
            );
            None
        }
    }
}

fn load_calendar(node: &Node, path: &Path, problems: &mut Problems) -> Option<CalendarSpec> {
    let m = MapView::open(
        node,
        path,
        "`calendar`",
        &["office_hours", "holidays", "allow_uncovered"],
        problems,
    )?;
    let office_hours = match m.get("office_hours") {
        Some(n) => OfficeHours::from_node(n, path, problems),
        None => Some(OfficeHours::default()),
    };
    let holidays = match m.str("holidays", problems) {
        None => Some(HolidaySource::Hk),
        Some(("hk", _)) => Some(HolidaySource::Hk),
        Some((file, pos)) => {
            let resolved = path.parent().unwrap_or(Path::new(".")).join(file);
            let ext = resolved.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "ics" | "json") {
                problems.error(
                    path,
                    pos,
                    format!("holidays `{file}` must be `hk` or a path to an .ics or .json file"),
                );
                None
            } else if !resolved.is_file() {
                problems.error(
                    path,
                    pos,
                    format!("holiday file `{}` does not exist", resolved.display()),
                );
                None
            } else {
                Some(HolidaySource::File(file.to_owned()))
            }
        }
    };
    let allow_uncovered = match m.get("allow_uncovered") {
        None => Some(false),
        Some(Node {
            value: yaml::Value::Bool(b),
            ..
        }) => Some(*b),
        Some(n) => {
            problems.error(path, n.pos, "`allow_uncovered` must be true or false");
            None
        }
    };
    Some(CalendarSpec {
        office_hours: office_hours?,
        holidays: holidays?,
        allow_uncovered: allow_uncovered?,
    })
}

fn load_escalation(
    node: &Node,
    path: &Path,
    ack: Option<&AckPolicy>,
    problems: &mut Problems,
) -> Option<Vec<Step>> {
    let Some(items) = node.as_seq() else {
        problems.error(path, node.pos, "`escalation` must be a list of steps");
        return None;
    };
    let mut steps = Vec::new();
    let mut ok = true;
    let mut last_after = -1;
    for (i, item) in items.iter().enumerate() {
        let Some(m) = MapView::open(
            item,
            path,
            "an escalation step",
            &["after", "notify", "via"],
            problems,
        ) else {
            ok = false;
            continue;
        };
        let after = m
            .require_str("after", "an escalation step", problems)
            .and_then(|(s, pos)| {
                let d = parse_duration(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()?;
                let secs = d.num_seconds();
                if i == 0 && secs != 0 {
                    problems.error(
                        path,
                        pos,
                        "the first escalation step must be `after: 0m` (it is the round itself)",
                    );
                    return None;
                }
                if secs <= last_after {
                    problems.error(
                        path,
                        pos,
                        "escalation steps must be in increasing order of `after`",
                    );
                    return None;
                }
                if let Some(a) = ack
                    && secs >= a.deadline_secs
                {
                    problems.error(
                        path,
                        pos,
                        "an escalation step after the ack deadline would never fire",
                    );
                    return None;
                }
                last_after = secs;
                Some(secs)
            });
        let notify: Vec<Role> = m
            .require("notify", "an escalation step", problems)
            .map(|n| list_items(n, path, "notify", problems))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(s, pos)| {
                Role::parse(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()
            })
            .collect();
        let via: Vec<ChannelKind> = m
            .require("via", "an escalation step", problems)
            .map(|n| list_items(n, path, "via", problems))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(s, pos)| {
                ChannelKind::parse(s)
                    .map_err(|e| problems.error(path, pos, e))
                    .ok()
            })
            .collect();
        match after {
            Some(after_secs) if !notify.is_empty() && !via.is_empty() => steps.push(Step {
                after_secs,
                notify,
                via,
            }),
            _ => ok = false,
        }
    }
    if items.is_empty() {
        problems.error(path, node.pos, "`escalation` needs at least one step");
        ok = false;
    }
    ok.then_some(steps)
}

/// The `rounds:` entries with where each is written. An `at` outside the
/// window is caught here, with the file's other problems; whether instants
/// fit the calendar, the deadline and each other is the plan's to judge.
fn load_rounds(
    node: &Node,
    path: &Path,
    tz: Tz,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    problems: &mut Problems,
) -> Vec<(RoundSpec, Pos)> {
    let Some(items) = node.as_seq() else {
        problems.error(path, node.pos, "`rounds` must be a list");
        return Vec::new();
    };
    if items.is_empty() {
        problems.error(
            path,
            node.pos,
            "`rounds` is empty: give at least one `cron`, `at` or `random` entry",
        );
    }
    let mut out = Vec::new();
    for item in items {
        let Some(m) = MapView::open(item, path, "a round", &["cron", "at", "random"], problems)
        else {
            continue;
        };
        let given: Vec<&str> = ["cron", "at", "random"]
            .into_iter()
            .filter(|k| m.get(k).is_some())
            .collect();
        if given.len() != 1 {
            problems.error(
                path,
                item.pos,
                "a round needs exactly one of `cron`, `at` or `random`",
            );
            continue;
        }
        if let Some((expr, pos)) = m.str("cron", problems) {
            match parse_cron(expr) {
                Ok(_) => out.push((
                    RoundSpec::Cron {
                        expr: expr.to_owned(),
                    },
                    item.pos,
                )),
                Err(e) => problems.error(path, pos, e),
            }
        } else if let Some((s, pos)) = m.str("at", problems) {
            match parse_local(s) {
                Ok(local) => {
                    let at = resolve_local(tz, local);
                    if let Some((start, end)) = window
                        && (at < start || at > end)
                    {
                        problems.error(
                            path,
                            pos,
                            format!("round at {s} is outside the exercise window"),
                        );
                        continue;
                    }
                    out.push((RoundSpec::At { local }, item.pos));
                }
                Err(e) => problems.error(path, pos, e),
            }
        } else if let Some(r) = m.child(
            "random",
            "`random`",
            &["count", "buckets", "min_gap", "seed"],
            problems,
        ) && let Some(spec) = load_random(&r, path, problems)
        {
            out.push((spec, item.pos));
        }
    }
    out
}

fn load_random(m: &MapView<'_>, path: &Path, problems: &mut Problems) -> Option<RoundSpec> {
    let what = "`random`";
    let count =
        m.require_str("count", what, problems)
            .and_then(|(s, pos)| match s.parse::<u32>() {
                Ok(n) if (1..=500).contains(&n) => Some(n),
                _ => {
                    problems.error(
                        path,
                        pos,
                        format!("`count` must be a whole number from 1 to 500, found `{s}`"),
                    );
                    None
                }
            });
    let buckets: Option<Vec<String>> = m.require("buckets", what, problems).map(|n| {
        list_items(n, path, "buckets", problems)
            .into_iter()
            .filter_map(|(s, pos)| {
                if BUCKETS.contains(&s) {
                    Some(s.to_owned())
                } else {
                    problems.error(
                        path,
                        pos,
                        format!("bucket `{s}` must be one of {}", BUCKETS.join(", ")),
                    );
                    None
                }
            })
            .collect()
    });
    let min_gap = match m.str("min_gap", problems) {
        Some((s, pos)) => parse_duration(s)
            .map_err(|e| problems.error(path, pos, e))
            .ok(),
        None => Some(TimeDelta::zero()),
    };
    let seed = m.require_str("seed", what, problems).and_then(|(s, pos)| {
        s.parse::<u64>()
            .map_err(|_| {
                problems.error(
                    path,
                    pos,
                    format!("`seed` must be a whole number, found `{s}`"),
                )
            })
            .ok()
    });
    Some(RoundSpec::Random {
        count: count?,
        buckets: buckets?,
        min_gap_secs: min_gap?.num_seconds(),
        seed: seed?,
    })
}
