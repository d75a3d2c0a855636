//! The SMS providers in priority order: pacing per provider (a token bucket
//! of segments, in the injected clock's time) and a circuit breaker that
//! holds a failing provider open so the next one takes the traffic.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

use super::http_json::HttpJsonChannel;
use super::sms::TwilioChannel;
use crate::store::SendResult;

/// Consecutive transient failures that open a provider's breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// How long an open provider is left alone before one message probes it.
pub const BREAKER_COOLDOWN: TimeDelta = TimeDelta::seconds(60);

/// What a provider answered, with whether it asked us to slow down (which
/// backs off without counting against its breaker).
pub(super) struct Reply {
    pub(super) result: SendResult,
    pub(super) rate_limited: bool,
}

impl From<SendResult> for Reply {
    fn from(result: SendResult) -> Self {
        Reply {
            result,
            rate_limited: false,
        }
    }
}

pub(super) enum ProviderChannel {
    Twilio(TwilioChannel),
    HttpJson(HttpJsonChannel),
}

/// A token bucket of SMS segments. A message of `n` segments leaves once
/// `n` tokens have accumulated (the bucket holds at least `n`), so a
/// two-segment SMS costs as much time as two one-segment ones. A message
/// that must wait reserves its slot (the bucket goes into debt), so the
/// messages of a round queue up in order instead of all retrying at once.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<DateTime<Utc>>,
    reserved: std::collections::HashMap<i64, DateTime<Utc>>,
}

impl Bucket {
    fn new(per_second: f64, burst: u32) -> Self {
        Bucket {
            per_second,
            burst: f64::from(burst),
            tokens: 0.0,
            last: None,
            reserved: std::collections::HashMap::new(),
        }
    }

    /// Lets message `id` of `need` segments go at `now`, or reserves the
    /// instant it may go and returns it.
    fn take(&mut self, id: i64, need: f64, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        if let Some(&slot) = self.reserved.get(&id) {
            if slot <= now {
                self.reserved.remove(&id);
                return Ok(());
            }
            return Err(slot);
        }
        let cap = self.burst.max(need);
        let tokens = match self.last {
            None => self.burst,
            Some(last) => {
                let elapsed = (now - last).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                (self.tokens + elapsed * self.per_second).min(cap)
            }
        };
        self.last = Some(now.max(self.last.unwrap_or(now)));
        self.tokens = tokens - need;
        if tokens + 1e-9 >= need {
            Ok(())
        } else {
            // Whole milliseconds, as the outbox stores due times: a slot
            // between two milliseconds would be stored before itself, and
            // the message offered again and again before it may go.
            let wait = (need - tokens) / self.per_second;
            let slot = now + TimeDelta::milliseconds((wait * 1e3 - 1e-6).ceil() as i64);
            self.reserved.insert(id, slot);
            Err(slot)
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<DateTime<Utc>>,
}

pub(super) struct Provider {
    pub(super) name: String,
    pub(super) channel: ProviderChannel,
    bucket: Option<Mutex<Bucket>>,
    breaker: Mutex<Breaker>,
}

impl Provider {
    pub(super) fn new(name: String, channel: ProviderChannel, rate: Option<(f64, u32)>) -> Self {
        Provider {
            name,
            channel,
            bucket: rate.map(|(per_second, burst)| Mutex::new(Bucket::new(per_second, burst))),
            breaker: Mutex::new(Breaker::default()),
        }
    }
}

/// Something control should be told about (PRODUCT.md §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// `provider` was held open after repeated failures; `next` takes over.
    FailedOver {
        provider: String,
        next: Option<String>,
        error: String,
    },
    Recovered {
        provider: String,
    },
}

pub(super) struct SmsRoute {
    providers: Vec<Provider>,
    events: Mutex<Vec<ProviderEvent>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SmsRoute {
    pub(super) fn new(providers: Vec<Provider>) -> Self {
        SmsRoute {
            providers,
            events: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub(super) fn drain_events(&self) -> Vec<ProviderEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Sends through the first provider that is not held open, paced by its
    /// bucket; a transient failure that opens a breaker hands the message to
    /// the next provider at once.
    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
        message_id: i64,
        to: &str,
        text: &str,
        deadline_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> SendResult {
        let mut earliest_probe: Option<DateTime<Utc>> = None;
        // Counted only for a provider with a rate.
        let mut segments = None;
        for (i, p) in self.providers.iter().enumerate() {
            let probing = {
                let b = lock(&p.breaker);
                match b.open_until {
                    Some(until) if until > now => {
                        earliest_probe = Some(earliest_probe.map_or(until, |e| e.min(until)));
                        continue;
                    }
                    Some(_) => true,
                    None => false,
                }
            };
            if let Some(bucket) = &p.bucket {
                let need = *segments
                    .get_or_insert_with(|| crate::domain::sms::segments(text).count as u32);
                if let Err(until) = lock(bucket).take(message_id, f64::from(need), now) {
                    return SendResult::Deferred { until };
                }
            }
            let Reply {
                result,
                rate_limited,
            } = match &p.channel {
                ProviderChannel::Twilio(t) => t.send(http, to, text, deadline_at, now).await,
                ProviderChannel::HttpJson(h) => h.send(http, message_id, to, text).await,
            };
            match &result {
                // Rate limiting says "slower", not "down": back off, keep the provider.
                SendResult::Failed {
                    permanent: false,
                    error,
                    ..
                } if !rate_limited => {
                    let (opened_now, open) = {
                        let mut b = lock(&p.breaker);
                        b.failures += 1;
                        let was_open = b.open_until.is_some_and(|u| u > now);
                        if probing || (!was_open && b.failures >= BREAKER_THRESHOLD) {
                            b.open_until = Some(now + BREAKER_COOLDOWN);
                        }
                        let open = b.open_until.is_some_and(|u| u > now);
                        (open && !was_open && !probing, open)
                    };
                    if opened_now {
                        lock(&self.events).push(ProviderEvent::FailedOver {
                            provider: p.name.clone(),
                            next: self.providers.get(i + 1).map(|n| n.name.clone()),
                            error: error.clone(),
                        });
                    }
                    // Held open (by this failure or a concurrent one): the
                    // next provider takes this message now.
                    if open && i + 1 < self.providers.len() {
                        continue;
                    }
                    return result;
                }
                SendResult::Accepted { .. } => {
                    let mut b = lock(&p.breaker);
                    if b.open_until.take().is_some() {
                        lock(&self.events).push(ProviderEvent::Recovered {
                            provider: p.name.clone(),
                        });
                    }
                    b.failures = 0;
                    return result;
                }
                _ => return result,
            }
        }
        // Every provider is held open: wait for the first probe, which is
        // not an attempt (and expires the message if past its deadline).
        match earliest_probe {
            Some(until) => SendResult::Deferred { until },
            None => SendResult::Failed {
                provider: "sms".into(),
                permanent: false,
                error: "no SMS provider could take the message".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    /// Offers `n` messages of `seg` segments at once, then each again at its
    /// reserved slot, and returns when the last one left.
    fn drain(n: i64, seg: f64, per_second: f64) -> DateTime<Utc> {
        let mut b = Bucket::new(per_second, 1);
        let slots: Vec<Option<DateTime<Utc>>> =
            (0..n).map(|id| b.take(id, seg, t(0)).err()).collect();
        for (id, slot) in (0..n).zip(&slots) {
            if let Some(slot) = slot {
                assert_eq!(
                    b.take(id, seg, *slot),
                    Ok(()),
                    "message {id} goes at its slot"
                );
            }
        }
        slots.into_iter().flatten().max().unwrap_or(t(0))
    }

    #[test]
    fn twenty_one_segment_and_ten_two_segment_sms_take_as_long_at_five_a_second() {
        assert_eq!(drain(20, 1.0, 5.0), t(3_800));
        assert_eq!(drain(10, 2.0, 5.0), t(3_800));
    }

    #[test]
    fn a_burst_lets_that_many_segments_leave_at_once() {
        let mut b = Bucket::new(1.0, 3);
        assert!(b.take(1, 1.0, t(0)).is_ok());
        assert!(b.take(2, 1.0, t(0)).is_ok());
        assert!(b.take(3, 1.0, t(0)).is_ok());
        assert_eq!(b.take(4, 1.0, t(0)), Err(t(1_000)));
        assert_eq!(b.take(4, 1.0, t(500)), Err(t(1_000)), "a reservation holds");
        assert_eq!(b.take(4, 1.0, t(1_000)), Ok(()));
    }
}
