//! A notification's status and the rule that derives it (PRODUCT.md §6).
//! The store finalises notifications with [`status_at`], so the rule lives
//! in one place.

use chrono::{DateTime, Utc};
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

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            NotificationStatus::Open | NotificationStatus::Escalated
        )
    }
}

/// What the status rule needs to know about one notification; the
/// instants are T0 + target, T0 + deadline and deadline + settle.
#[derive(Debug, Clone)]
pub struct NotificationFacts {
    pub target_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub final_at: DateTime<Utc>,
    /// The first valid ack within the deadline from a contact whose ack
    /// counts (not an observer).
    pub first_ack_at: Option<DateTime<Utc>>,
    /// Whether any message of this notification was accepted or delivered.
    pub any_message_reached_provider: bool,
    pub escalated: bool,
}

/// The status of a notification at `now`.
pub fn status_at(facts: &NotificationFacts, now: DateTime<Utc>) -> NotificationStatus {
    match facts.first_ack_at {
        Some(at) if at <= facts.target_at => return NotificationStatus::OnTarget,
        Some(at) if at <= facts.deadline_at => return NotificationStatus::Late,
        _ => {}
    }
    if now < facts.final_at {
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
    use chrono::TimeDelta;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn facts(ack_min: Option<i64>, reached: bool) -> NotificationFacts {
        NotificationFacts {
            target_at: t0() + TimeDelta::minutes(30),
            deadline_at: t0() + TimeDelta::minutes(60),
            final_at: t0() + TimeDelta::minutes(61),
            first_ack_at: ack_min.map(|m| t0() + TimeDelta::minutes(m)),
            any_message_reached_provider: reached,
            escalated: false,
        }
    }

    fn at(f: &NotificationFacts, mins: i64) -> NotificationStatus {
        status_at(f, t0() + TimeDelta::minutes(mins))
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
        assert!(!at(&facts(None, true), 60).is_final());
    }
}
