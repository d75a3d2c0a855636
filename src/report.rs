//! Reports: one model built from the store, rendered as text or JSON.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::domain::format_duration;
use crate::domain::schedule::Schedule;
use crate::store::{Store, StoreError, from_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub exercise: ExerciseInfo,
    pub generated_at: DateTime<Utc>,
    pub rows: Vec<Row>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExerciseInfo {
    pub id: String,
    pub title: String,
    pub handling: Option<String>,
    pub timezone: String,
    pub state: String,
    pub ack_target_secs: i64,
    pub ack_deadline_secs: i64,
}

/// One targeted department in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub round: String,
    pub planned_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub department: String,
    pub status: String,
    pub escalated: bool,
    pub acked_at: Option<DateTime<Utc>>,
    /// Time to acknowledge: first valid ack − T0, in seconds.
    pub tta_secs: Option<i64>,
    pub ack_channel: Option<String>,
    pub acked_by: Option<String>,
    pub ack_after_deadline_at: Option<DateTime<Utc>>,
    pub messages: i64,
    pub messages_accepted: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub notifications: usize,
    pub on_target: usize,
    pub late: usize,
    pub missed: usize,
    pub unreachable: usize,
    pub cancelled: usize,
    pub open: usize,
    /// (on_target + late) ÷ targeted and not cancelled.
    pub reach_rate: Option<f64>,
    /// on_target ÷ targeted and not cancelled.
    pub within_target: Option<f64>,
}

pub async fn build(
    store: &Store,
    exercise: &str,
    now: DateTime<Utc>,
) -> Result<Report, ReportError> {
    let ex = store
        .exercise(exercise)
        .await?
        .ok_or_else(|| ReportError::NoExercise(exercise.to_owned()))?;
    let schedule: Schedule =
        serde_json::from_str(&ex.schedule_json).map_err(|e| ReportError::Corrupt(e.to_string()))?;
    let rows: Vec<Row> = store
        .report_rows(exercise)
        .await?
        .into_iter()
        .map(|r| {
            let fired_at = r.fired_at.map(from_ms);
            let acked_at = r.acked_at.map(from_ms);
            Row {
                round: r.round_label,
                planned_at: from_ms(r.planned_at),
                fired_at,
                department: r.department,
                status: r.status,
                escalated: r.step > 1,
                acked_at,
                tta_secs: acked_at.zip(fired_at).map(|(a, f)| (a - f).num_seconds()),
                ack_channel: r.ack_channel,
                acked_by: r.ack_contact,
                ack_after_deadline_at: r.ack_after_deadline_at.map(from_ms),
                messages: r.messages,
                messages_accepted: r.messages_reached,
            }
        })
        .collect();
    let mut s = Summary {
        notifications: rows.len(),
        ..Summary::default()
    };
    for r in &rows {
        match r.status.as_str() {
            "on_target" => s.on_target += 1,
            "late" => s.late += 1,
            "missed" => s.missed += 1,
            "unreachable" => s.unreachable += 1,
            "cancelled" => s.cancelled += 1,
            _ => s.open += 1,
        }
    }
    let denominator = s.notifications - s.cancelled;
    if denominator > 0 {
        s.reach_rate = Some((s.on_target + s.late) as f64 / denominator as f64);
        s.within_target = Some(s.on_target as f64 / denominator as f64);
    }
    Ok(Report {
        schema: 1,
        exercise: ExerciseInfo {
            id: ex.id,
            title: ex.title,
            handling: schedule.handling.clone(),
            timezone: schedule.timezone.clone(),
            state: ex.state,
            ack_target_secs: schedule.ack.target_secs,
            ack_deadline_secs: schedule.ack.deadline_secs,
        },
        generated_at: now,
        rows,
        summary: s,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("exercise `{0}` not found")]
    NoExercise(String),
    #[error("stored exercise cannot be read: {0}")]
    Corrupt(String),
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.0}%", v * 100.0))
}

/// A terminal table: one row per department per round.
pub fn render_text(report: &Report) -> String {
    let tz: Tz = report
        .exercise
        .timezone
        .parse()
        .unwrap_or(chrono_tz::Asia::Hong_Kong);
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %a %H:%M").to_string();
    let mut out = String::new();
    if let Some(h) = &report.exercise.handling {
        let _ = writeln!(out, "{h}");
    }
    let _ = writeln!(
        out,
        "{} ({}) — {}",
        report.exercise.title, report.exercise.id, report.exercise.state
    );
    let _ = writeln!(
        out,
        "target {} · deadline {} · times in {}\n",
        format_duration(chrono::TimeDelta::seconds(report.exercise.ack_target_secs)),
        format_duration(chrono::TimeDelta::seconds(
            report.exercise.ack_deadline_secs
        )),
        report.exercise.timezone
    );
    let _ = writeln!(
        out,
        "{:<5} {:<20} {:<10} {:<12} {:>8}  {:<8} BY",
        "ROUND", "FIRED", "DEPT", "STATUS", "TTA", "VIA"
    );
    for r in &report.rows {
        let fired = r
            .fired_at
            .map_or_else(|| format!("({})", local(r.planned_at)), local);
        let tta = r.tta_secs.map_or("-".into(), |s| {
            format_duration(chrono::TimeDelta::seconds(s))
        });
        let status = if r.escalated && !matches!(r.status.as_str(), "open" | "escalated") {
            format!("{}*", r.status)
        } else {
            r.status.clone()
        };
        let _ = writeln!(
            out,
            "{:<5} {:<20} {:<10} {:<12} {:>8}  {:<8} {}",
            r.round,
            fired,
            r.department,
            status,
            tta,
            r.ack_channel.as_deref().unwrap_or("-"),
            r.acked_by.as_deref().unwrap_or("-")
        );
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "\n{} notifications: {} on target, {} late, {} missed, {} unreachable, {} cancelled, {} open",
        s.notifications, s.on_target, s.late, s.missed, s.unreachable, s.cancelled, s.open
    );
    let _ = writeln!(
        out,
        "reach rate {} · within target {}   (* = escalated)",
        pct(s.reach_rate),
        pct(s.within_target)
    );
    out
}
