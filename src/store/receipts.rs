//! Delivery receipts: what a provider later says about a message it accepted
//! (PRODUCT.md §6: `accepted → delivered | undelivered`). Every authenticated
//! receipt is kept, whether it moved its message or not, so reports can use
//! a provider's `sent` time and reviewers can see late or unmatched ones.

use chrono::{DateTime, Utc};

use super::{Result, Store, WritePool, from_ms, ms};

/// The `inbound.channel` of refused delivery-receipt requests.
pub const RECEIPT_CHANNEL: &str = "sms_receipt";

/// What a receipt means for its message, whatever the provider's word for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryReport {
    /// On its way (queued, sending, sent): no change of state.
    Progress,
    /// Reached the handset.
    Delivered,
    /// The carrier could not deliver it.
    Undelivered,
    /// The provider gave up before it left (it is not retried).
    Failed,
}

/// One authenticated receipt as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct NewReceipt<'a> {
    /// The configured provider name the receipt was posted for.
    pub provider: &'a str,
    /// The provider's id of the message (Twilio's `MessageSid`).
    pub provider_ref: &'a str,
    /// The provider's own word (`delivered`, `undelivered`, `sent`…).
    pub status: &'a str,
    pub error_code: Option<&'a str>,
    pub report: DeliveryReport,
}

/// What storing a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptEffect {
    /// The message moved from `accepted` to a final state.
    Applied { message_id: i64 },
    /// Progress, a repeat, or a late receipt for a message already final:
    /// kept, and the message left as it was.
    Unchanged { message_id: i64 },
    /// No message of this provider has that id.
    Unmatched,
}

impl ReceiptEffect {
    fn as_str(self) -> &'static str {
        match self {
            ReceiptEffect::Applied { .. } => "applied",
            ReceiptEffect::Unchanged { .. } => "unchanged",
            ReceiptEffect::Unmatched => "unmatched",
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReceiptRow {
    pub id: i64,
    pub received_at: i64,
    pub provider: String,
    pub provider_ref: String,
    pub message_id: Option<i64>,
    pub status: String,
    pub error_code: Option<String>,
    pub effect: String,
}

/// A message as delivery receipts see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageDelivery {
    pub id: i64,
    pub channel: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub provider: Option<String>,
    pub provider_ref: Option<String>,
    pub accepted_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
}

impl MessageDelivery {
    pub fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.delivered_at.map(from_ms)
    }
}

impl Store {
    /// Stores a receipt and applies it in one transaction: a message in
    /// `accepted` becomes `delivered` (with `delivered_at = at`),
    /// `undelivered` or `failed` (with the error code); a message already
    /// final never moves again, so repeats and late progress are harmless.
    pub async fn record_receipt(
        &self,
        at: DateTime<Utc>,
        r: &NewReceipt<'_>,
    ) -> Result<ReceiptEffect> {
        const FIND: &str =
            "SELECT id FROM messages WHERE provider = $1 AND provider_ref = $2 ORDER BY id LIMIT 1";
        const DELIVERED: &str = "UPDATE messages SET state = 'delivered', delivered_at = $1, finished_at = $1 \
             WHERE id = $2 AND state = 'accepted'";
        const OUTCOME_DELIVERED: &str = "UPDATE outcomes SET delivered_at = COALESCE(delivered_at, $1) \
             WHERE id = (SELECT outcome_id FROM messages WHERE id = $2)";
        const NOT_DELIVERED: &str = "UPDATE messages SET state = $3, state_reason = $4, last_error = $5, finished_at = $1 \
             WHERE id = $2 AND state = 'accepted'";
        const INSERT: &str = "INSERT INTO receipts (received_at, provider, provider_ref, message_id, status, error_code, effect) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let error = r.error_code.map_or_else(
            || r.status.to_owned(),
            |code| format!("{} (error {code})", r.status),
        );
        let effect = on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            let found: Option<i64> = sqlx::query_scalar(FIND)
                .bind(r.provider)
                .bind(r.provider_ref)
                .fetch_optional(&mut *tx)
                .await?;
            let effect = match found {
                None => ReceiptEffect::Unmatched,
                Some(id) => {
                    let moved = match r.report {
                        DeliveryReport::Progress => 0,
                        DeliveryReport::Delivered => {
                            let n = sqlx::query(DELIVERED)
                                .bind(ms(at))
                                .bind(id)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                            if n == 1 {
                                sqlx::query(OUTCOME_DELIVERED)
                                    .bind(ms(at))
                                    .bind(id)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            n
                        }
                        DeliveryReport::Undelivered | DeliveryReport::Failed => {
                            // The provider does not try again after either,
                            // so neither does the outbox.
                            let (state, reason) = if r.report == DeliveryReport::Failed {
                                ("failed", Some("permanent"))
                            } else {
                                ("undelivered", None)
                            };
                            sqlx::query(NOT_DELIVERED)
                                .bind(ms(at))
                                .bind(id)
                                .bind(state)
                                .bind(reason)
                                .bind(&error)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                        }
                    };
                    if moved == 1 {
                        ReceiptEffect::Applied { message_id: id }
                    } else {
                        ReceiptEffect::Unchanged { message_id: id }
                    }
                }
            };
            let message_id = match effect {
                ReceiptEffect::Applied { message_id } | ReceiptEffect::Unchanged { message_id } => {
                    Some(message_id)
                }
                ReceiptEffect::Unmatched => None,
            };
            sqlx::query(INSERT)
                .bind(ms(at))
                .bind(r.provider)
                .bind(r.provider_ref)
                .bind(message_id)
                .bind(r.status)
                .bind(r.error_code)
                .bind(effect.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(effect)
        })?;
        Ok(effect)
    }

    /// Every stored receipt, oldest first.
    pub async fn receipts(&self) -> Result<Vec<ReceiptRow>> {
        const Q: &str = "SELECT id, received_at, provider, provider_ref, message_id, status, error_code, effect \
             FROM receipts ORDER BY id";
        Ok(on_db!(self, |p| sqlx::query_as(Q).fetch_all(p).await)?)
    }

    /// The message a provider knows as `provider_ref`.
    pub async fn message_by_provider_ref(
        &self,
        provider: &str,
        provider_ref: &str,
    ) -> Result<Option<MessageDelivery>> {
        const Q: &str = "SELECT id, channel, state, state_reason, provider, provider_ref, accepted_at, delivered_at, last_error \
             FROM messages WHERE provider = $1 AND provider_ref = $2 ORDER BY id LIMIT 1";
        Ok(on_db!(self, |p| sqlx::query_as(Q)
            .bind(provider)
            .bind(provider_ref)
            .fetch_optional(p)
            .await)?)
    }

    /// How many attempts on `channel` from `source` were refused since
    /// `since`: the count failed authentications are rate-limited by.
    pub async fn refused_since(
        &self,
        channel: &str,
        source: &str,
        since: DateTime<Utc>,
    ) -> Result<i64> {
        const Q: &str = "SELECT COUNT(*) FROM inbound WHERE source = $1 AND received_at >= $2 \
             AND channel = $3 AND result = 'refused'";
        Ok(on_db!(self, |p| sqlx::query_scalar(Q)
            .bind(source)
            .bind(ms(since))
            .bind(channel)
            .fetch_one(p)
            .await)?)
    }

    /// The refused attempts on `channel`, oldest first: (source, raw, reason).
    pub async fn refusals(
        &self,
        channel: &str,
    ) -> Result<Vec<(Option<String>, String, Option<String>)>> {
        const Q: &str = "SELECT source, raw, reason FROM inbound WHERE channel = $1 AND result = 'refused' ORDER BY id";
        Ok(on_db!(self, |p| sqlx::query_as(Q)
            .bind(channel)
            .fetch_all(p)
            .await)?)
    }
}
