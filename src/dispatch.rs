//! The outbox worker: claim due messages, hand them to their channel, record
//! what happened, retry transient failures with backoff.

use std::sync::Arc;

use chrono::TimeDelta;
use tokio::task::JoinSet;

use crate::channel::{Channels, ProviderEvent};
use crate::clock::SharedClock;
use crate::domain::render::Payload;
use crate::store::{SendResult, Store, StoreError};

/// How long a claim lasts before another worker may take the row over.
pub const CLAIM_TTL: TimeDelta = TimeDelta::seconds(60);
const BATCH: i64 = 64;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: TimeDelta,
    pub max_backoff: TimeDelta,
}

pub struct Dispatcher {
    store: Store,
    clock: SharedClock,
    channels: Arc<Channels>,
    retry: RetryPolicy,
    worker: String,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        clock: SharedClock,
        channels: Arc<Channels>,
        retry: RetryPolicy,
        worker: String,
    ) -> Self {
        Dispatcher {
            store,
            clock,
            channels,
            retry,
            worker,
        }
    }

    /// The channels this dispatcher sends on.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Sends everything due now; returns how many messages were handled.
    #[tracing::instrument(name = "dispatch.pending", skip(self))]
    pub async fn dispatch_pending(&self) -> Result<usize, StoreError> {
        // Numbers that opted out get nothing more (PRODUCT.md §5).
        self.store.cancel_opted_out(self.clock.now()).await?;
        let mut handled = 0;
        loop {
            let now = self.clock.now();
            let batch = self
                .store
                .claim_messages(&self.worker, now, now + CLAIM_TTL, BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(handled);
            }
            handled += batch.len();
            let mut set = JoinSet::new();
            for msg in batch {
                let channels = Arc::clone(&self.channels);
                let clock = Arc::clone(&self.clock);
                set.spawn(async move {
                    let result = match msg.payload.as_deref().map(serde_json::from_str::<Payload>) {
                        Some(Ok(payload)) => channels.send(msg.id, &payload, clock.now()).await,
                        _ => SendResult::Failed {
                            provider: "rollcall".into(),
                            permanent: true,
                            error: "message payload missing or unreadable".into(),
                        },
                    };
                    (msg, result)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((msg, result)) = joined else { continue };
                let retry_after = (msg.attempts < i64::from(self.retry.attempts))
                    .then(|| backoff_for(&self.retry, msg.id, msg.attempts));
                if let SendResult::Failed {
                    error,
                    permanent,
                    provider,
                } = &result
                {
                    tracing::warn!(message.id = msg.id, channel.kind = %msg.channel, permanent, error = %error, "send failed");
                    if *permanent && msg.channel == "sms" {
                        // An invalid, fixed-line or opted-out number is a
                        // contact-data finding for the report, not a retry.
                        self.store
                            .event(
                                self.clock.now(),
                                "contact.finding",
                                None,
                                serde_json::json!({
                                    "message": msg.id,
                                    "contact": msg.contact_id,
                                    "channel": msg.channel,
                                    "provider": provider,
                                    "error": error,
                                }),
                            )
                            .await?;
                        if crate::channel::is_opt_out(error) {
                            self.store
                                .record_opt_out(
                                    self.clock.now(),
                                    &msg.address,
                                    provider,
                                    Some(error),
                                )
                                .await?;
                        }
                    }
                }
                self.store
                    .finish_message(&msg, &result, self.clock.now(), retry_after)
                    .await?;
            }
            for e in self.channels.drain_provider_events() {
                let (kind, data) = match &e {
                    ProviderEvent::FailedOver {
                        provider,
                        next,
                        error,
                    } => {
                        tracing::error!(%provider, next = ?next, %error, "SMS provider held open; failing over");
                        (
                            "provider.failover",
                            serde_json::json!({"provider": provider, "next": next, "error": error}),
                        )
                    }
                    ProviderEvent::Recovered { provider } => {
                        tracing::info!(%provider, "SMS provider recovered");
                        (
                            "provider.recovered",
                            serde_json::json!({"provider": provider}),
                        )
                    }
                };
                self.store.event(self.clock.now(), kind, None, data).await?;
            }
        }
    }
}

/// Exponential backoff from `backoff` (doubling per attempt, capped at
/// `max_backoff`) with jitter: between half and all of it, drawn from the
/// message and attempt so retries of one round spread out yet a run is
/// reproducible.
pub fn backoff_for(retry: &RetryPolicy, message_id: i64, attempts: i64) -> TimeDelta {
    let factor = 1i32 << (attempts - 1).clamp(0, 16);
    let full = (retry.backoff * factor).min(retry.max_backoff);
    let digest = crate::domain::codes::sha256_hex(format!("{message_id}/{attempts}").as_bytes());
    let fraction = u64::from_str_radix(&digest[..8], 16).unwrap_or(0) as f64 / f64::from(u32::MAX);
    let ms = full.num_milliseconds() as f64 * (0.5 + 0.5 * fraction);
    TimeDelta::milliseconds(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let retry = RetryPolicy {
            attempts: 5,
            backoff: TimeDelta::seconds(15),
            max_backoff: TimeDelta::minutes(5),
        };
        let d = |id, attempts| {
            let full = (retry.backoff * (1 << (attempts - 1))).min(retry.max_backoff);
            let got = backoff_for(&retry, id, attempts);
            assert!(got >= full / 2 && got <= full, "{got} of {full}");
            got
        };
        d(1, 1);
        d(1, 2);
        d(1, 9);
        let spread: std::collections::BTreeSet<TimeDelta> = (0..50).map(|id| d(id, 3)).collect();
        assert!(spread.len() > 40, "retries of one round spread out");
        assert_eq!(d(7, 2), d(7, 2), "reproducible");
    }
}
