//! Rows read from and written to the store.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub exercise_id: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExerciseRow {
    pub id: String,
    pub title: String,
    pub schedule_json: String,
    pub schedule_digest: String,
    pub plan_json: Option<String>,
    pub roster_version: i64,
    pub state: String,
    pub loaded_at: i64,
    pub started_at: Option<i64>,
    pub authorised_by: Option<String>,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoundRow {
    pub id: i64,
    pub exercise_id: String,
    pub label: String,
    pub slot: String,
    pub planned_at: i64,
    pub fired_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub state: String,
    pub state_reason: Option<String>,
    pub roster_version: Option<i64>,
    pub departments: Option<String>,
    /// When the fan-out's last part was written; `None` before the round
    /// fired, and while (or if) its fan-out is unfinished.
    pub fanned_out_at: Option<i64>,
}

impl RoundRow {
    /// The departments the round was planned, queued or fired for, if it
    /// names them (`departments`, comma-separated).
    pub fn listed_departments(&self) -> Option<Vec<String>> {
        self.departments.as_deref().map(|d| {
            d.split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }
}

/// A round to be written: planned at load, or ad hoc.
/// An exercise as `exercise load` stores it.
#[derive(Debug, Clone, Copy)]
pub struct NewExercise<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub schedule_json: &'a str,
    pub plan_json: &'a str,
    pub roster_version: i64,
    pub rounds: &'a [NewRound],
}

#[derive(Debug, Clone)]
pub struct NewRound {
    pub label: String,
    pub slot: String,
    pub planned_at: DateTime<Utc>,
    /// The planned targets, comma-separated; `None` lets the engine decide
    /// at fan-out.
    pub departments: Option<String>,
}

/// A department's notification with its first contacts, written at fan-out.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub department: String,
    pub outcomes: Vec<NewOutcome>,
}

/// A contact notified in a notification, with the messages that go to it.
#[derive(Debug, Clone)]
pub struct NewOutcome {
    pub contact_id: String,
    pub role: String,
    pub code: String,
    pub token_digest: String,
    pub token_expires_at: DateTime<Utc>,
    pub step: i64,
    pub messages: Vec<NewMessage>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: String,
    pub address: String,
    /// The rendered message, JSON; cleared once the provider has it.
    pub payload: String,
    /// Set when the message is final before it is sent (`not_configured`).
    pub state: &'static str,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedMessage {
    pub id: i64,
    pub notification_id: i64,
    pub outcome_id: i64,
    pub contact_id: String,
    pub channel: String,
    pub address: String,
    pub payload: Option<String>,
    pub attempts: i64,
    pub expires_at: i64,
}

/// What happened when a message was handed to its channel.
#[derive(Debug, Clone)]
pub enum SendResult {
    Accepted {
        provider: String,
        provider_ref: Option<String>,
    },
    Failed {
        provider: String,
        permanent: bool,
        error: String,
    },
    NotConfigured,
    /// Not sent yet: the provider's pacing lets it go at `until`. Not an
    /// attempt.
    Deferred {
        until: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenNotification {
    pub id: i64,
    pub round_id: i64,
    pub exercise_id: String,
    pub round_label: String,
    pub department: String,
    pub fired_at: i64,
    pub step: i64,
    pub roster_version: i64,
    pub acked_at: Option<i64>,
}

/// Everything the confirm page and the ack need to know about a token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub outcome_id: i64,
    pub notification_id: i64,
    pub contact_id: String,
    pub role: String,
    pub code: String,
    pub token_expires_at: i64,
    pub department: String,
    pub round_label: String,
    pub exercise_id: String,
    pub exercise_title: String,
    pub outcome_acked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    Acked {
        department: String,
        round: String,
        at: DateTime<Utc>,
    },
    AlreadyAcknowledged {
        department: String,
        round: String,
    },
    Expired,
    Unknown,
}

/// One department in one round, for reports.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReportRow {
    pub round_id: i64,
    pub round_label: String,
    pub round_state: String,
    pub planned_at: i64,
    pub fired_at: Option<i64>,
    pub notification_id: i64,
    pub department: String,
    pub status: String,
    pub step: i64,
    pub acked_at: Option<i64>,
    pub ack_after_deadline_at: Option<i64>,
    pub ack_channel: Option<String>,
    pub ack_contact: Option<String>,
    pub first_accepted_at: Option<i64>,
    pub messages: i64,
    pub messages_reached: i64,
}

/// A notification whose `final_at` has passed, with what its status needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueNotification {
    pub id: i64,
    pub target_at: i64,
    pub deadline_at: i64,
    pub final_at: i64,
    pub acked_at: Option<i64>,
    pub step: i64,
    pub reached: bool,
}
