//! The outbox worker: claim due messages, hand them to their channel, record
//! what happened, retry transient failures with backoff.

use std::sync::Arc;

use chrono::TimeDelta;
use tokio::task::JoinSet;

use crate::channel::Channels;
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

    /// Sends everything due now; returns how many messages were handled.
    #[tracing::instrument(name = "dispatch.pending", skip(self))]
    pub async fn dispatch_pending(&self) -> Result<usize, StoreError> {
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
                    .then(|| self.backoff(msg.attempts));
                if let SendResult::Failed {
                    error, permanent, ..
                } = &result
                {
                    tracing::warn!(message.id = msg.id, channel.kind = %msg.channel, permanent, error = %error, "send failed");
                }
                self.store
                    .finish_message(&msg, &result, self.clock.now(), retry_after)
                    .await?;
            }
        }
    }

    /// Exponential backoff from `backoff`, capped at `max_backoff`.
    fn backoff(&self, attempts: i64) -> TimeDelta {
        let factor = 1i32 << attempts.clamp(0, 16);
        (self.retry.backoff * factor).min(self.retry.max_backoff)
    }
}
