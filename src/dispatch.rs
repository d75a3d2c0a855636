//! The outbox worker: claim due messages, hand them to their channel, record
//! what happened, retry transient failures with backoff.
//!
//! Sending and recording overlap. Up to [`CONCURRENCY`] sends are in flight
//! while one store write at a time records every send that finished since
//! the previous write and claims as many messages as there is room for,
//! in one transaction ([`Store::finish_and_claim`]). A write takes about as
//! long as a durable commit, so under load each one carries a batch of
//! results (group commit), and with no load it carries one.
//!
//! A round's first messages need no claim of their own: the engine writes
//! them already claimed for this dispatcher's worker in the fan-out's
//! transactions and leaves them in the dispatcher's [`Handoff`]. A pass run
//! beside the engine's tick ([`Dispatcher::dispatch_beside`]) sends each part
//! of a fan-out as soon as it is committed, while the engine writes the next.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::channel::{Channels, ProviderEvent};
use crate::clock::SharedClock;
use crate::domain::render::Payload;
use crate::store::{Claim, ClaimedMessage, Finished, SendResult, Store, StoreError};

/// How long a claim lasts before another worker may take the row over.
pub const CLAIM_TTL: TimeDelta = TimeDelta::seconds(60);
/// How many sends are in flight at once.
pub const CONCURRENCY: usize = 64;
/// Claimed messages held at most: those in flight and those waiting for a
/// free slot. Claiming ahead keeps every slot busy while a write commits,
/// and lets each write carry hundreds of rows. It also bounds the sends
/// not yet recorded: a pass holds at most this many messages in flight or
/// sent and awaiting their write, even when a fan-out has handed it a whole
/// round, so after a crash at most this many can go out twice.
const CLAIM_AHEAD: usize = 8 * CONCURRENCY;
/// A claimed message still waiting for a slot this close to its claim's
/// lapse is left alone: another pass (or worker) takes it over once the
/// claim lapses, so it is never sent by two senders at once.
const CLAIM_MARGIN: TimeDelta = TimeDelta::seconds(30);
/// Results recorded per write under load; fewer go with a write that
/// claims, or when the pass is draining.
const RECORD_BATCH: usize = 4 * CONCURRENCY;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: TimeDelta,
    pub max_backoff: TimeDelta,
}

pub struct Dispatcher {
    outbox: Arc<Outbox>,
}

/// Messages a fan-out wrote already claimed for a dispatcher's worker,
/// waiting in memory for that dispatcher's next pass. Each keeps the
/// instant its claim lapses: one still waiting near its lapse is left to
/// the lapsed-claim path like any other claimed message.
pub struct Handoff {
    worker: String,
    waiting: std::sync::Mutex<Vec<(ClaimedMessage, DateTime<Utc>)>>,
    /// Ticks running beside a pass that may still hand messages over.
    producers: AtomicUsize,
    /// Woken when messages are handed over or a producer finishes.
    changed: tokio::sync::Notify,
}

/// A tick running beside a pass: while one is held, the pass waits for
/// what the tick hands over instead of ending.
struct Producing<'a>(&'a Handoff);

impl<'a> Producing<'a> {
    fn new(handoff: &'a Handoff) -> Self {
        handoff.producers.fetch_add(1, Ordering::SeqCst);
        Producing(handoff)
    }
}

impl Drop for Producing<'_> {
    fn drop(&mut self) {
        self.0.producers.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

impl Handoff {
    /// The worker the messages are claimed for.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// When a claim taken at `now` lapses.
    pub fn claim_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + CLAIM_TTL
    }

    /// Leaves `claimed` (claimed until `until`) for the next pass.
    pub fn hand_over(&self, claimed: Vec<ClaimedMessage>, until: DateTime<Utc>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.extend(claimed.into_iter().map(|m| (m, until)));
        drop(waiting);
        self.changed.notify_one();
    }

    /// Whether a tick beside a pass may still hand messages over.
    fn producing(&self) -> bool {
        self.producers.load(Ordering::SeqCst) > 0
    }

    /// Everything handed over so far.
    fn take(&self) -> Vec<(ClaimedMessage, DateTime<Utc>)> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a pass works with, shared by the pass's task and the dispatcher.
struct Outbox {
    store: Store,
    clock: SharedClock,
    channels: Arc<Channels>,
    retry: RetryPolicy,
    handoff: Arc<Handoff>,
}

/// A spawned pass, aborted if whoever awaits it goes away.
struct PassTask(tokio::task::JoinHandle<Result<usize, StoreError>>);

impl Drop for PassTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A store write in progress: it resolves to the messages it claimed and
/// the instant their claim lapses.
type Write<'a> = Pin<
    Box<dyn Future<Output = Result<(Vec<ClaimedMessage>, DateTime<Utc>), StoreError>> + Send + 'a>,
>;

/// A write in progress, with how many messages it asked for and how many
/// results it records.
struct InFlight<'a> {
    write: Write<'a>,
    room: usize,
    recording: usize,
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
            outbox: Arc::new(Outbox {
                store,
                clock,
                channels,
                retry,
                handoff: Arc::new(Handoff {
                    worker,
                    waiting: std::sync::Mutex::default(),
                    producers: AtomicUsize::new(0),
                    changed: tokio::sync::Notify::new(),
                }),
            }),
        }
    }

    /// Where an engine leaves the messages it fans out already claimed for
    /// this dispatcher ([`crate::engine::Engine::hand_first_sends_to`]).
    pub fn handoff(&self) -> Arc<Handoff> {
        Arc::clone(&self.outbox.handoff)
    }

    /// The channels this dispatcher sends on.
    pub fn channels(&self) -> &Channels {
        &self.outbox.channels
    }

    /// Sends everything due now; returns how many messages were handled.
    /// Returns once nothing due is left to claim and every send is recorded.
    ///
    /// The pass runs as a task of its own on the runtime's workers, where
    /// the wake-up of each finished send is a queue push. Awaited in place
    /// by a caller on the thread that blocks on the runtime (the daemon's
    /// main loop), each of those wake-ups crossed threads through a futex.
    pub async fn dispatch_pending(&self) -> Result<usize, StoreError> {
        let outbox = Arc::clone(&self.outbox);
        // In the caller's span, so the pass's log lines keep their context.
        let pass = async move { outbox.pass().await }.in_current_span();
        let mut task = PassTask(tokio::spawn(pass));
        match (&mut task.0).await {
            Ok(handled) => handled,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only the runtime shutting down cancels a pass that is still
            // awaited.
            Err(e) => Err(StoreError::Cancelled(e.to_string())),
        }
    }
}

impl Dispatcher {
    /// Runs `tick` (an engine's tick, whose fan-outs hand their messages to
    /// this dispatcher) and a pass side by side: each part of a fan-out is
    /// sent as soon as it is committed, while the tick writes the next. The
    /// pass claims nothing until the tick has ended, so what the tick wrote
    /// for any dispatcher (an escalation step) is claimed with the rest;
    /// it ends with everything due claimed and every send recorded.
    pub async fn dispatch_beside<T>(
        &self,
        tick: impl Future<Output = T>,
    ) -> (T, Result<usize, StoreError>) {
        // Counted before either starts, so the pass cannot end before the
        // tick has begun.
        let producing = Producing::new(&self.outbox.handoff);
        let tick = async move {
            let out = tick.await;
            drop(producing);
            out
        };
        tokio::join!(tick, self.dispatch_pending())
    }
}

impl Outbox {
    #[tracing::instrument(name = "dispatch.pending", skip(self))]
    async fn pass(&self) -> Result<usize, StoreError> {
        // Expired, acked-meanwhile and opted-out (PRODUCT.md §5) messages
        // are settled before anything is claimed.
        self.store.sweep_outbox(self.clock.now()).await?;
        let mut handled = 0;
        // Claimed, waiting for a slot, with the instant the claim lapses.
        let mut queue: VecDeque<(ClaimedMessage, DateTime<Utc>)> = VecDeque::new();
        let mut sending: JoinSet<Finished> = JoinSet::new();
        // Sent, not yet recorded.
        let mut finished: Vec<Finished> = Vec::new();
        let mut write: Option<InFlight<'_>> = None;
        // Whether the outbox may hold more due messages.
        let mut more = true;
        let mut first = true;
        // Whether a tick beside this pass may still hand messages over; true
        // until read, so what was handed over before the pass is taken.
        let mut producing = true;
        loop {
            if producing {
                // Read before the handoff, so what a tick handed over before
                // it finished is taken below.
                let still = self.handoff.producing();
                // A fan-out's messages, claimed for this worker, go first.
                let handed = self.handoff.take();
                handled += handed.len();
                queue.extend(handed);
                producing = still;
            }
            let now = self.clock.now();
            let recording = write.as_ref().map_or(0, |w| w.recording);
            while sending.len() < CONCURRENCY
                && sending.len() + finished.len() + recording < CLAIM_AHEAD
                && let Some((message, lapses)) = queue.pop_front()
            {
                if lapses - now < CLAIM_MARGIN {
                    tracing::warn!(
                        message.id = message.id,
                        "claim about to lapse before a slot freed; left for the next pass"
                    );
                    continue;
                }
                sending.spawn(send(
                    Arc::clone(&self.channels),
                    Arc::clone(&self.clock),
                    message,
                ));
            }
            if write.is_none() {
                // Nothing is claimed while a tick beside the pass may still
                // write: its messages come handed over or, after it, with
                // the claim.
                let room = if more && !producing {
                    CLAIM_AHEAD.saturating_sub(queue.len() + sending.len())
                } else {
                    0
                };
                // Claim when fewer than a slot-set wait; record when a batch
                // has gathered, when the pass is draining (nothing more to
                // claim, hand over or send), or when nothing else is in
                // flight. Between, sends go on without a write, so each
                // commit carries more.
                let claim = room > 0 && queue.len() < CONCURRENCY;
                let draining = !more && !producing && queue.is_empty();
                let record = finished.len() >= RECORD_BATCH
                    || (!finished.is_empty() && (draining || sending.is_empty()));
                if claim || record {
                    let batch = std::mem::take(&mut finished);
                    let recording = batch.len();
                    // The pass's first claim also takes over lapsed claims.
                    write = Some(InFlight {
                        write: Box::pin(self.write(batch, room, first && room > 0)),
                        room,
                        recording,
                    });
                    first &= room == 0;
                } else if sending.is_empty() && queue.is_empty() && !producing {
                    return Ok(handled);
                }
            }
            tokio::select! {
                () = self.handoff.changed.notified(), if producing => {}
                Some(joined) = sending.join_next(), if !sending.is_empty() => {
                    // A send that panicked stays claimed; its claim lapses and
                    // it is retried.
                    if let Ok(done) = joined {
                        finished.push(done);
                    }
                }
                claimed = async { write.as_mut().map(|w| &mut w.write).expect("a write").await }, if write.is_some() => {
                    let wanted = write.take().map_or(0, |w| w.room);
                    let (claimed, lapses) = claimed?;
                    if wanted > 0 {
                        // Fewer than asked for: nothing more is due now.
                        more = claimed.len() >= wanted;
                    }
                    handled += claimed.len();
                    queue.extend(claimed.into_iter().map(|m| (m, lapses)));
                }
            }
        }
    }

    /// Records `finished` and claims up to `room` more messages (lapsed
    /// claims too when `lapsed`); provider events and contact-data findings
    /// become events.
    async fn write(
        &self,
        mut finished: Vec<Finished>,
        room: usize,
        lapsed: bool,
    ) -> Result<(Vec<ClaimedMessage>, DateTime<Utc>), StoreError> {
        for f in &mut finished {
            let SendResult::Failed {
                error,
                permanent,
                provider,
            } = &f.result
            else {
                continue;
            };
            let msg = &f.message;
            tracing::warn!(message.id = msg.id, channel.kind = %msg.channel, permanent, error = %error, "send failed");
            f.retry_after = (msg.attempts < i64::from(self.retry.attempts))
                .then(|| backoff_for(&self.retry, msg.id, msg.attempts));
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
                        .record_opt_out(self.clock.now(), &msg.address, provider, Some(error))
                        .await?;
                }
            }
        }
        let now = self.clock.now();
        let until = now + CLAIM_TTL;
        let claimed = self
            .store
            .finish_and_claim(
                &finished,
                &Claim {
                    worker: &self.handoff.worker,
                    now,
                    until,
                    limit: room as i64,
                    lapsed,
                },
            )
            .await?;
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
        Ok((claimed, until))
    }
}

/// Hands one message to its channel.
async fn send(channels: Arc<Channels>, clock: SharedClock, message: ClaimedMessage) -> Finished {
    let result = match message
        .payload
        .as_deref()
        .map(serde_json::from_str::<Payload>)
    {
        // Boxed: a channel's send future is about 11 KB, and a spawned task
        // holding it inline was copied whole on every spawn; this one is
        // about 500 bytes.
        Some(Ok(payload)) => Box::pin(channels.send(message.id, &payload, clock.now())).await,
        _ => SendResult::Failed {
            provider: "rollcall".into(),
            permanent: true,
            error: "message payload missing or unreadable".into(),
        },
    };
    Finished {
        message,
        result,
        at: clock.now(),
        retry_after: None,
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
