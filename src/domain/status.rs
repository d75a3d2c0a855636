//! Notification and message states, and the rule that turns a
//! notification's outcome rows into its final status (PRODUCT.md §6).

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// A department's status inside one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    Open,
    Escalated,
    OnTarget,
    Late,
    Missed,
    Unreachable,
    Cancelled,
}

impl NotificationStatus {
    pub const ALL: [NotificationStatus; 7] = [
        NotificationStatus::Open,
        NotificationStatus::Escalated,
        NotificationStatus::OnTarget,
        NotificationStatus::Late,
        NotificationStatus::Missed,
        NotificationStatus::Unreachable,
        NotificationStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Open => "open",
            NotificationStatus::Escalated => "escalated",
            NotificationStatus::OnTarget => "on_target",
            NotificationStatus::Late => "late",
            NotificationStatus::Missed => "missed",
            NotificationStatus::Unreachable => "unreachable",
            NotificationStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            NotificationStatus::Open | NotificationStatus::Escalated
        )
    }
}

/// An outbox row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Pending,
    Sending,
    Accepted,
    Delivered,
    Undelivered,
    Failed,
    Expired,
    Cancelled,
    NotConfigured,
}

impl MessageState {
    pub const ALL: [MessageState; 9] = [
        MessageState::Pending,
        MessageState::Sending,
        MessageState::Accepted,
        MessageState::Delivered,
        MessageState::Undelivered,
        MessageState::Failed,
        MessageState::Expired,
        MessageState::Cancelled,
        MessageState::NotConfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Sending => "sending",
            MessageState::Accepted => "accepted",
            MessageState::Delivered => "delivered",
            MessageState::Undelivered => "undelivered",
            MessageState::Failed => "failed",
            MessageState::Expired => "expired",
            MessageState::Cancelled => "cancelled",
            MessageState::NotConfigured => "not_configured",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The provider took the message: it counts as reaching the department
    /// for the `missed` / `unreachable` split.
    pub fn reached_provider(self) -> bool {
        matches!(self, MessageState::Accepted | MessageState::Delivered)
    }
}

/// What the final-status rule needs to know about one notification.
#[derive(Debug, Clone)]
pub struct NotificationFacts {
    pub fired_at: DateTime<Utc>,
    /// The first valid ack from a contact whose ack counts (not an observer).
    pub first_ack_at: Option<DateTime<Utc>>,
    /// Whether any message of this notification was accepted or delivered.
    pub any_message_reached_provider: bool,
    pub escalated: bool,
}

/// The status of a notification at `now`, with `target` and `deadline`
/// measured from T0 and `settle` the grace before it becomes final.
pub fn status_at(
    facts: &NotificationFacts,
    target: TimeDelta,
    deadline: TimeDelta,
    settle: TimeDelta,
    now: DateTime<Utc>,
) -> NotificationStatus {
    let target_at = facts.fired_at + target;
    let deadline_at = facts.fired_at + deadline;
    match facts.first_ack_at {
        Some(at) if at <= target_at => return NotificationStatus::OnTarget,
        Some(at) if at <= deadline_at => return NotificationStatus::Late,
        _ => {}
    }
    if now < deadline_at + settle {
        return if facts.escalated {
            NotificationStatus::Escalated
        } else {
            NotificationStatus::Open
        };
    }
    if facts.any_message_reached_provider {
        NotificationStatus::Missed
    } else {
        NotificationStatus::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ack_min: Option<i64>, reached: bool) -> NotificationFacts {
        let t0 = DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
            .unwrap()
            .to_utc();
        NotificationFacts {
            fired_at: t0,
            first_ack_at: ack_min.map(|m| t0 + TimeDelta::minutes(m)),
            any_message_reached_provider: reached,
            escalated: false,
        }
    }

    fn at(f: &NotificationFacts, mins: i64) -> NotificationStatus {
        status_at(
            f,
            TimeDelta::minutes(30),
            TimeDelta::minutes(60),
            TimeDelta::minutes(1),
            f.fired_at + TimeDelta::minutes(mins),
        )
    }

    #[test]
    fn ack_at_the_target_is_on_target_and_after_it_is_late() {
        assert_eq!(at(&facts(Some(30), true), 30), NotificationStatus::OnTarget);
        assert_eq!(at(&facts(Some(31), true), 31), NotificationStatus::Late);
        assert_eq!(at(&facts(Some(60), true), 90), NotificationStatus::Late);
    }

    #[test]
    fn late_ack_after_the_deadline_counts_as_missed() {
        assert_eq!(at(&facts(Some(61), true), 62), NotificationStatus::Missed);
    }

    #[test]
    fn nothing_accepted_is_unreachable_only_after_settle() {
        assert_eq!(at(&facts(None, false), 60), NotificationStatus::Open);
        assert_eq!(at(&facts(None, false), 61), NotificationStatus::Unreachable);
        assert_eq!(at(&facts(None, true), 61), NotificationStatus::Missed);
    }
}
