//! Exercise control notices (PRODUCT.md §12): the `control` contacts of a
//! running exercise are told, marker-wrapped, by SMS and by email, when an
//! SMS provider fails over and when it recovers. The dispatcher stores those
//! moments as events; the engine turns each new one into notices, and
//! [`send_control_notices`] sends them with the same channels as everything
//! else. Control contacts count in no metric.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Engine, EngineError};
use crate::channel::Channels;
use crate::domain::Lang;
use crate::domain::render::Payload;
use crate::domain::schedule::Schedule;
use crate::store::{EventRow, NewNotice, SendResult, Store, StoreError, from_ms};

/// The events control is told about.
pub const NOTICE_EVENTS: &[&str] = &["provider.failover", "provider.recovered"];

/// Tries of one notice before it is recorded `failed`.
const ATTEMPTS: i64 = 5;
/// How long a taken notice is left to its sender before another may try.
const LEASE: TimeDelta = TimeDelta::seconds(60);
/// An SMS notice is of no use after this long (its `ValidityPeriod`).
const SMS_VALIDITY: TimeDelta = TimeDelta::hours(1);

impl Engine {
    /// Queues a notice to every control contact of every running exercise
    /// for each provider event stored since the last call (since the last
    /// one noticed, after a restart) and at or after the exercise started.
    /// Returns how many notices were new.
    pub async fn queue_control_notices(&self) -> Result<u64, EngineError> {
        let cursor = *self.notice_cursor.lock().unwrap_or_else(|p| p.into_inner());
        let after = match cursor {
            Some(seq) => seq,
            None => self.store.last_noticed_event().await?,
        };
        let events = self.store.events_after(after, NOTICE_EVENTS).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            self.set_notice_cursor(after);
            return Ok(0);
        };
        let running: Vec<_> = self
            .store
            .exercises()
            .await?
            .into_iter()
            .filter(|x| x.state == "running")
            .collect();
        let mut notices = Vec::new();
        for x in &running {
            let schedule: Schedule = serde_json::from_str(&x.schedule_json)
                .map_err(|e| EngineError::BadSchedule(x.id.clone(), e.to_string()))?;
            if schedule.control.is_empty() {
                continue;
            }
            let roster = self.roster(x.roster_version).await?;
            let started = x.started_at.map(from_ms);
            for event in events
                .iter()
                .filter(|e| started.is_none_or(|s| from_ms(e.at) >= s))
            {
                for id in &schedule.control {
                    let Some(contact) = roster.contact(id.as_str()) else {
                        tracing::warn!(exercise.id = %x.id, contact = %id, "control contact not in the roster");
                        continue;
                    };
                    let marker = schedule.marker.for_lang(contact.lang);
                    let (subject, text) = notice_text(event, contact.lang, marker);
                    let now = self.now();
                    let mut push = |channel: &'static str, address: String, payload: Payload| {
                        notices.push(NewNotice {
                            exercise_id: x.id.clone(),
                            event_seq: event.seq,
                            kind: event.kind.clone(),
                            contact_id: contact.id.to_string(),
                            channel,
                            address,
                            payload: serde_json::to_string(&payload).expect("a payload serialises"),
                        });
                    };
                    if let Some(phone) = &contact.sms {
                        push(
                            "sms",
                            phone.as_str().to_owned(),
                            Payload::Sms {
                                to: phone.as_str().to_owned(),
                                text: text.clone(),
                                deadline_at: now + SMS_VALIDITY,
                            },
                        );
                    }
                    if let Some(email) = &contact.email {
                        push(
                            "email",
                            email.as_str().to_owned(),
                            Payload::Email {
                                to: email.as_str().to_owned(),
                                subject: subject.clone(),
                                text: format!("{text}\n"),
                            },
                        );
                    }
                }
            }
        }
        let new = self.store.queue_notices(self.now(), &notices).await?;
        self.set_notice_cursor(last);
        Ok(new)
    }

    fn set_notice_cursor(&self, seq: i64) {
        *self.notice_cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(seq);
    }
}

/// (email subject, text) of the notice for `event`, wrapped in `marker`.
fn notice_text(event: &EventRow, lang: Lang, marker: &str) -> (String, String) {
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
    let field = |k: &str| data[k].as_str().unwrap_or("?").to_owned();
    let provider = field("provider");
    // Enough of the provider's answer to act on; an SMS has little room.
    let error: String = field("error").chars().take(80).collect();
    let next = data["next"].as_str();
    let (subject, body) = match (event.kind.as_str(), lang) {
        ("provider.failover", Lang::En) => (
            format!("Control: SMS provider {provider} failed over"),
            match next {
                Some(next) => format!(
                    "Exercise control notice: SMS provider {provider} keeps failing ({error}); {next} now carries the SMS."
                ),
                None => format!(
                    "Exercise control notice: SMS provider {provider} keeps failing ({error}) and no other provider is left; SMS wait until one recovers."
                ),
            },
        ),
        ("provider.failover", Lang::Zh) => (
            format!("演習控制：短訊供應商 {provider} 已切換"),
            match next {
                Some(next) => format!(
                    "演習控制通知：短訊供應商 {provider} 持續失敗（{error}），現改由 {next} 發送短訊。"
                ),
                None => format!(
                    "演習控制通知：短訊供應商 {provider} 持續失敗（{error}），已無其他供應商；短訊須待恢復後發送。"
                ),
            },
        ),
        (_, Lang::En) => (
            format!("Control: SMS provider {provider} recovered"),
            format!(
                "Exercise control notice: SMS provider {provider} has recovered and carries SMS again."
            ),
        ),
        (_, Lang::Zh) => (
            format!("演習控制：短訊供應商 {provider} 已恢復"),
            format!("演習控制通知：短訊供應商 {provider} 已恢復，重新發送短訊。"),
        ),
    };
    (
        format!("{marker} {subject} {marker}"),
        format!("{marker} {body} {marker}"),
    )
}

/// Sends the control notices due at `now` on `channels`; a transient
/// failure is tried again later (up to five tries), a permanent one is
/// recorded. Returns how many were handled.
pub async fn send_control_notices(
    store: &Store,
    channels: &Channels,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let taken = store.take_due_notices(now, now + LEASE, 50).await?;
    for n in &taken {
        let result = match n.payload.as_deref().map(serde_json::from_str::<Payload>) {
            // Negative ids keep notices apart from department messages in
            // `Idempotency-Key`s and `Message-ID`s (a reply to a notice
            // never matches a message).
            Some(Ok(payload)) => channels.send(-n.id, &payload, now).await,
            _ => SendResult::Failed {
                provider: "rollcall".into(),
                permanent: true,
                error: "notice payload missing or unreadable".into(),
            },
        };
        let retry_at = (n.attempts < ATTEMPTS)
            .then(|| now + TimeDelta::seconds(30 * (1 << (n.attempts - 1).clamp(0, 4))));
        if let SendResult::Failed { error, .. } = &result {
            tracing::warn!(notice.id = n.id, channel.kind = %n.channel, %error, "control notice failed");
        }
        store.finish_notice(n.id, &result, now, retry_at).await?;
    }
    Ok(taken.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: serde_json::Value) -> EventRow {
        EventRow {
            seq: 7,
            at: 0,
            kind: kind.into(),
            exercise_id: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn notices_are_marker_wrapped_in_the_contacts_language_and_name_the_providers() {
        let failover = event(
            "provider.failover",
            serde_json::json!({"provider": "primary", "next": "backup", "error": "HTTP 500"}),
        );
        let (subject, text) = notice_text(&failover, Lang::En, "[EXERCISE]");
        assert_eq!(
            subject,
            "[EXERCISE] Control: SMS provider primary failed over [EXERCISE]"
        );
        assert_eq!(
            text,
            "[EXERCISE] Exercise control notice: SMS provider primary keeps failing (HTTP 500); backup now carries the SMS. [EXERCISE]"
        );
        let (_, zh) = notice_text(&failover, Lang::Zh, "[演習]");
        assert!(
            zh.starts_with("[演習] 演習控制通知") && zh.ends_with(" [演習]"),
            "{zh}"
        );
        assert!(zh.contains("primary") && zh.contains("backup"), "{zh}");

        let last = event(
            "provider.failover",
            serde_json::json!({"provider": "backup", "next": null, "error": "x".repeat(500)}),
        );
        let (_, text) = notice_text(&last, Lang::En, "[EXERCISE]");
        assert!(text.contains("no other provider is left"), "{text}");
        assert!(text.chars().count() < 250, "a long error is cut: {text}");

        let recovered = event(
            "provider.recovered",
            serde_json::json!({"provider": "primary"}),
        );
        let (_, text) = notice_text(&recovered, Lang::En, "[EXERCISE]");
        assert_eq!(
            text,
            "[EXERCISE] Exercise control notice: SMS provider primary has recovered and carries SMS again. [EXERCISE]"
        );
    }
}
