//! What `rollcall plan` shows a controller before signing off: every round
//! with its local time, bucket, holiday and targets, the messages step 1
//! sends per channel, SMS segments per language, and how long the SMS take
//! at the configured provider rate.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::domain::contacts::Roster;
use crate::domain::plan::{Bucket, Plan, Source, cron_in_words};
use crate::domain::render::Alert;
use crate::domain::schedule::Schedule;
use crate::domain::sms::{Segments, segments};
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
    /// SMS segments of the step-1 text per language.
    pub sms_segments: BTreeMap<String, Segments>,
    /// Segments per second of the first SMS provider, if one is configured.
    pub sms_rate_per_second: Option<f64>,
    pub warnings: Vec<String>,
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
pub fn build(schedule: &Schedule, plan: &Plan, roster: &Roster, cfg: &Config) -> PlanView {
    let paced = cfg.sms_providers.first().and_then(|p| p.rate.as_ref());
    let rate = paced.map(|r| r.per_second);
    // The same token bucket the dispatcher paces with: `burst` segments leave
    // at once, each further one 1/rate later.
    let send_secs = |segments: usize| {
        paced.map(|r| segments.saturating_sub(r.burst as usize) as f64 / r.per_second)
    };
    let step = schedule.escalation.first();
    let sms_text = |lang: Lang| {
        let at = plan.rounds.first().map_or(schedule.window_start, |r| r.at);
        Alert {
            marker: &schedule.marker,
            lang,
            exercise_title: &schedule.title,
            round: "R01",
            department: "WFSFAA",
            code: "ABCDE",
            ack_url: "",
            deadline_at: at + schedule.ack.deadline(),
            tz: schedule.tz(),
            sms_two_way: cfg.sms_mode == crate::config::SenderMode::TwoWay,
        }
        .sms()
    };
    let seg: BTreeMap<Lang, Segments> = [Lang::En, Lang::Zh]
        .into_iter()
        .map(|l| (l, segments(&sms_text(l))))
        .collect();
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
                    sms_segments += seg.get(&c.lang).map_or(1, |s| s.count);
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
        sms_segments: seg
            .into_iter()
            .map(|(l, s)| (l.as_str().to_owned(), s))
            .collect(),
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
    let _ = writeln!(o, "\nSMS text per language (step 1):");
    for (lang, s) in &v.sms_segments {
        let enc = match s.encoding {
            crate::domain::sms::Encoding::Gsm7 => "GSM-7",
            crate::domain::sms::Encoding::Ucs2 => "UCS-2",
        };
        let _ = writeln!(
            o,
            "  {lang}: {} segment(s), {} {}",
            s.count,
            s.units,
            if enc == "GSM-7" {
                "septets"
            } else {
                "UTF-16 units"
            }
        );
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
    o
}
