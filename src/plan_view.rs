//! What `rollcall plan` shows a controller before signing off: every round
//! with its local time, bucket, holiday and targets, the messages step 1
//! sends per channel, SMS segments per language, and how long the SMS take
//! at the configured provider rate.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::{Config, SenderMode};
use crate::domain::contacts::{Contact, Department, Roster};
use crate::domain::plan::{Bucket, Plan, Source, cron_in_words};
use crate::domain::render::{Alert, Names, Rendered, SAMPLE_CODE, TextKind};
use crate::domain::schedule::Schedule;
use crate::domain::sms::{Encoding, Segments, segments};
use crate::domain::{ChannelKind, Lang, format_duration};

#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub schema: u32,
    pub exercise: String,
    pub title: String,
    pub timezone: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub seed: u64,
    pub holiday_source: String,
    pub rules: Vec<RuleView>,
    pub rounds: Vec<RoundView>,
    pub buckets: BTreeMap<String, usize>,
    /// SMS segments of the longest step-1 text per language, rendered with
    /// the exercise's templates.
    pub sms_segments: BTreeMap<String, Segments>,
    /// Segments per second of the first SMS provider, if one is configured.
    pub sms_rate_per_second: Option<f64>,
    pub warnings: Vec<String>,
    /// `plan --preview`: one message of each kind per language.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<Preview>,
}

/// One language's messages as `plan --preview` shows them, rendered with
/// sample values: the first round, a real department and contact, a sample
/// code and link.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub lang: Lang,
    pub round: String,
    pub department: String,
    pub department_name: String,
    pub contact: String,
    pub code: String,
    pub messages: Vec<PreviewMessage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewMessage {
    pub kind: TextKind,
    /// `exercise` (the schedule's own template) or `built-in`.
    pub template: &'static str,
    pub text: String,
    /// SMS only: how the text travels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Segments>,
    /// Why the exercise's template failed on these values (the built-in
    /// text would be sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// What the plan renders messages with: the first round and its deadline,
/// the configured SMS sender mode, a sample code and link.
struct Sample<'a> {
    schedule: &'a Schedule,
    /// The SMS kind the configured sender sends.
    kind: TextKind,
    round: &'a str,
    deadline_at: DateTime<Utc>,
    ack_url: String,
}

impl<'a> Sample<'a> {
    fn new(schedule: &'a Schedule, plan: &'a Plan, cfg: &Config) -> Sample<'a> {
        let first = plan.rounds.first();
        Sample {
            schedule,
            kind: TextKind::sms(cfg.sms_mode == SenderMode::TwoWay),
            round: first.map_or("R01", |r| r.label.as_str()),
            deadline_at: first.map_or(schedule.window_start, |r| r.at) + schedule.ack.deadline(),
            ack_url: format!("{}/a/sample-link-token", cfg.public_url),
        }
    }

    fn render(
        &self,
        kind: TextKind,
        dept: &Department,
        contact: Option<&Contact>,
        lang: Lang,
    ) -> Rendered {
        let s = self.schedule;
        let alert = Alert {
            marker: &s.marker,
            lang,
            exercise_title: &s.title,
            round: self.round,
            department: dept.code.as_str(),
            code: SAMPLE_CODE,
            ack_url: &self.ack_url,
            deadline_at: self.deadline_at,
            tz: s.tz(),
            sms_two_way: self.kind == TextKind::Sms,
        };
        let names = Names::of(&s.id, dept, contact, lang);
        s.templates.render(kind, &alert, &names)
    }
}

/// One message of each kind (the configured SMS kind, email subject and
/// body, webhook text) per language the targeted departments' contacts
/// read, rendered as the first round would send them to a real contact.
pub fn preview(schedule: &Schedule, plan: &Plan, roster: &Roster, cfg: &Config) -> Vec<Preview> {
    let sample = Sample::new(schedule, plan, cfg);
    let step = schedule.escalation.first();
    let mut seen = HashSet::new();
    let targeted: Vec<&Department> = plan
        .rounds
        .iter()
        .flat_map(|r| &r.targets)
        .filter(|code| seen.insert(code.as_str()))
        .filter_map(|code| roster.department(code))
        .collect();
    let first_step = |c: &Contact| step.is_some_and(|s| s.notify.contains(&c.role));
    let mut out = Vec::new();
    for lang in [Lang::En, Lang::Zh] {
        // The first targeted department with a contact reading this
        // language, a step-1 recipient if there is one.
        let pick = |wanted: &dyn Fn(&Contact) -> bool| {
            targeted.iter().find_map(|d| {
                d.contacts
                    .iter()
                    .find(|c| c.lang == lang && wanted(c))
                    .map(|c| (*d, c))
            })
        };
        let Some((dept, contact)) = pick(&first_step).or_else(|| pick(&|_| true)) else {
            continue;
        };
        let messages = [
            sample.kind,
            TextKind::EmailSubject,
            TextKind::EmailBody,
            TextKind::WebhookText,
        ]
        .into_iter()
        .map(|kind| {
            let r = sample.render(kind, dept, Some(contact), lang);
            PreviewMessage {
                kind,
                template: if r.overridden { "exercise" } else { "built-in" },
                segments: kind.is_sms().then(|| segments(&r.text)),
                text: r.text,
                fallback: r.fallback,
            }
        })
        .collect();
        out.push(Preview {
            lang,
            round: sample.round.to_owned(),
            department: dept.code.to_string(),
            department_name: Names::of(&schedule.id, dept, None, lang)
                .department_name
                .to_owned(),
            contact: contact.name.clone(),
            code: SAMPLE_CODE.to_owned(),
            messages,
        });
    }
    out
}

/// "1 segment, GSM-7, 94 septets".
fn segments_in_words(s: &Segments) -> String {
    let (encoding, units) = match s.encoding {
        Encoding::Gsm7 => ("GSM-7", "septets"),
        Encoding::Ucs2 => ("UCS-2", "UTF-16 units"),
    };
    format!(
        "{} segment{}, {encoding}, {} {units}",
        s.count,
        if s.count == 1 { "" } else { "s" },
        s.units
    )
}

/// One `rounds:` entry in words.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub index: usize,
    pub text: String,
    pub rounds: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundView {
    pub label: String,
    pub at: DateTime<Utc>,
    pub local: String,
    pub weekday: String,
    pub bucket: Bucket,
    pub holiday: Option<String>,
    pub holiday_provisional: bool,
    pub targets: usize,
    pub excluded: Vec<String>,
    /// Step-1 messages per channel.
    pub messages: BTreeMap<String, usize>,
    pub sms_segments: usize,
    /// How long the step-1 SMS take at the provider rate.
    pub sms_send_secs: Option<f64>,
}

/// Builds the view of a plan; `roster` gives the per-channel counts.
pub fn build<'a>(
    schedule: &'a Schedule,
    plan: &'a Plan,
    roster: &'a Roster,
    cfg: &'a Config,
) -> PlanView {
    let paced = cfg.sms_providers.first().and_then(|p| p.rate.as_ref());
    let rate = paced.map(|r| r.per_second);
    // The same token bucket the dispatcher paces with: `burst` segments leave
    // at once, each further one 1/rate later.
    let send_secs = |segments: usize| {
        paced.map(|r| segments.saturating_sub(r.burst as usize) as f64 / r.per_second)
    };
    let step = schedule.escalation.first();
    let sample = Sample::new(schedule, plan, cfg);
    // Segments of each step-1 recipient's SMS, rendered once per contact
    // with the exercise's templates (a template may name the department or
    // the contact, so the length can differ between them).
    let mut contact_segments: HashMap<&str, Segments> = HashMap::new();
    let mut longest: BTreeMap<Lang, Segments> = BTreeMap::new();
    let mut segments_of = |dept: &'a Department, contact: &'a Contact| -> Segments {
        *contact_segments
            .entry(contact.id.as_str())
            .or_insert_with(|| {
                let text = sample.render(sample.kind, dept, Some(contact), contact.lang);
                let s = segments(&text.text);
                let l = longest.entry(contact.lang).or_insert(s);
                if (s.count, s.units) > (l.count, l.units) {
                    *l = s;
                }
                s
            })
    };
    let mut rounds = Vec::new();
    let mut buckets: BTreeMap<String, usize> = BTreeMap::new();
    for r in &plan.rounds {
        *buckets.entry(r.bucket.as_str().to_owned()).or_default() += 1;
        let mut messages: BTreeMap<String, usize> = BTreeMap::new();
        let mut sms_segments = 0;
        for code in &r.targets {
            let Some(dept) = roster.department(code) else {
                continue;
            };
            for c in dept
                .contacts
                .iter()
                .filter(|c| step.is_some_and(|s| s.notify.contains(&c.role)))
            {
                let via = |k: ChannelKind| step.is_some_and(|s| s.via.contains(&k));
                if via(ChannelKind::Sms) && c.sms.is_some() {
                    *messages.entry("sms".into()).or_default() += 1;
                    sms_segments += segments_of(dept, c).count;
                }
                if via(ChannelKind::Email) && c.email.is_some() {
                    *messages.entry("email".into()).or_default() += 1;
                }
                if via(ChannelKind::Webhook) && c.webhook.is_some() {
                    *messages.entry("webhook".into()).or_default() += 1;
                }
            }
        }
        rounds.push(RoundView {
            label: r.label.clone(),
            at: r.at,
            local: r.local.format("%Y-%m-%d %H:%M").to_string(),
            weekday: r.local.format("%a").to_string(),
            bucket: r.bucket,
            holiday: r.holiday.as_ref().map(|h| h.name.clone()),
            holiday_provisional: r.holiday.as_ref().is_some_and(|h| h.provisional),
            targets: r.targets.len(),
            excluded: r.excluded.iter().map(|e| e.department.clone()).collect(),
            messages,
            sms_segments,
            sms_send_secs: send_secs(sms_segments),
        });
    }
    let rules = schedule
        .rounds
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let text = match spec {
                crate::domain::schedule::RoundSpec::Cron { expr } => {
                    format!("cron `{expr}`: {}", cron_in_words(expr))
                }
                crate::domain::schedule::RoundSpec::At { local } => {
                    format!("at {}", local.format("%Y-%m-%d %H:%M"))
                }
                crate::domain::schedule::RoundSpec::Random {
                    count,
                    buckets,
                    min_gap_secs,
                    seed,
                } => format!(
                    "random: {count} rounds over {}, at least {} apart, seed {seed}",
                    buckets.join(", "),
                    format_duration(TimeDelta::seconds(*min_gap_secs))
                ),
            };
            let labels = plan
                .rounds
                .iter()
                .filter(|r| match &r.source {
                    Source::Cron { index: i, .. }
                    | Source::At { index: i }
                    | Source::Random { index: i, .. } => *i == index,
                })
                .map(|r| r.label.clone())
                .collect();
            RuleView {
                index,
                text,
                rounds: labels,
            }
        })
        .collect();
    PlanView {
        schema: 1,
        exercise: plan.exercise.clone(),
        title: schedule.title.clone(),
        timezone: plan.timezone.clone(),
        window_start: schedule.window_start,
        window_end: schedule.window_end,
        seed: plan.seed,
        holiday_source: plan.holiday_source.clone(),
        rules,
        rounds,
        buckets,
        sms_segments: [Lang::En, Lang::Zh]
            .into_iter()
            .map(|lang| {
                // A language nobody receives SMS in: the first department's text.
                let s = longest.get(&lang).copied().unwrap_or_else(|| {
                    let text = match roster.departments.first() {
                        Some(d) => sample.render(sample.kind, d, None, lang).text,
                        None => String::new(),
                    };
                    segments(&text)
                });
                (lang.as_str().to_owned(), s)
            })
            .collect(),
        preview: Vec::new(),
        sms_rate_per_second: rate,
        warnings: plan.warnings.clone(),
    }
}

fn secs(s: f64) -> String {
    format_duration(TimeDelta::milliseconds((s * 1000.0).round() as i64))
}

/// The terminal rendering.
pub fn render_text(v: &PlanView) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let tz: chrono_tz::Tz = v.timezone.parse().unwrap_or(chrono_tz::Asia::Hong_Kong);
    let _ = writeln!(o, "{} — {}", v.exercise, v.title);
    let _ = writeln!(
        o,
        "window {} to {} ({}), plan seed {}",
        v.window_start
            .with_timezone(&tz)
            .format("%a %Y-%m-%d %H:%M"),
        v.window_end.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"),
        v.timezone,
        v.seed
    );
    let _ = writeln!(o, "holidays: {}", v.holiday_source);
    let _ = writeln!(o, "\nrules:");
    for r in &v.rules {
        let _ = writeln!(
            o,
            "  {}. {} → {}",
            r.index + 1,
            r.text,
            if r.rounds.is_empty() {
                "no rounds".to_owned()
            } else {
                r.rounds.join(" ")
            }
        );
    }
    let _ = writeln!(
        o,
        "\n{:<4} {:<16} {:<3} {:<15} {:>7} {:>5} {:>5} {:>7} {:>8} {:>9}  holiday",
        "",
        "local time",
        "",
        "bucket",
        "targets",
        "sms",
        "email",
        "webhook",
        "segments",
        "sms time"
    );
    for r in &v.rounds {
        let holiday = match (&r.holiday, r.holiday_provisional) {
            (Some(h), true) => format!("{h} (provisional)"),
            (Some(h), false) => h.clone(),
            (None, _) => String::new(),
        };
        let n = |k: &str| r.messages.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "{:<4} {:<16} {:<3} {:<15} {:>7} {:>5} {:>5} {:>7} {:>8} {:>9}  {holiday}",
            r.label,
            r.local,
            r.weekday,
            r.bucket.as_str(),
            r.targets,
            n("sms"),
            n("email"),
            n("webhook"),
            r.sms_segments,
            r.sms_send_secs.map_or("-".to_owned(), secs),
        );
        if !r.excluded.is_empty() {
            let _ = writeln!(
                o,
                "     left out (their own office hours): {}",
                r.excluded.join(", ")
            );
        }
    }
    let _ = writeln!(o, "\nrounds per bucket:");
    for b in Bucket::OUT_OF_HOURS {
        let _ = writeln!(
            o,
            "  {:<16} {}",
            b.as_str(),
            v.buckets.get(b.as_str()).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(o, "\nSMS text per language (step 1, the longest):");
    for (lang, s) in &v.sms_segments {
        let _ = writeln!(o, "  {lang}: {}", segments_in_words(s));
    }
    match v.sms_rate_per_second {
        Some(rate) => {
            if let Some(slowest) = v
                .rounds
                .iter()
                .max_by(|a, b| a.sms_segments.cmp(&b.sms_segments))
                .filter(|r| r.sms_segments > 0)
            {
                let t = slowest.sms_send_secs.unwrap_or_default();
                let _ = writeln!(
                    o,
                    "\nAt {rate}/s the largest round ({}) needs {} to send {} SMS segments{}.",
                    slowest.label,
                    secs(t),
                    slowest.sms_segments,
                    if t > 60.0 {
                        ": the last SMS leaves over a minute after T0"
                    } else {
                        ""
                    }
                );
            }
        }
        None => {
            let _ = writeln!(
                o,
                "\nNo SMS provider rate is configured, so send times are not estimated."
            );
        }
    }
    if !v.warnings.is_empty() {
        let _ = writeln!(o, "\n{} warnings:", v.warnings.len());
        for w in &v.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    for p in &v.preview {
        let _ = writeln!(
            o,
            "\nPreview ({}): round {} to {} of {} ({}), sample code {}",
            p.lang.as_str(),
            p.round,
            p.contact,
            p.department,
            p.department_name,
            p.code
        );
        for m in &p.messages {
            let segments = m
                .segments
                .as_ref()
                .map(|s| format!(", {}", segments_in_words(s)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {}, {} template{segments}:",
                m.kind.describe(),
                m.template
            );
            if let Some(why) = &m.fallback {
                let _ = writeln!(
                    o,
                    "  warning: the exercise's template fails here ({why}); the built-in text below would be sent"
                );
            }
            for line in m.text.lines() {
                if line.is_empty() {
                    let _ = writeln!(o);
                } else {
                    let _ = writeln!(o, "    {line}");
                }
            }
        }
    }
    o
}
