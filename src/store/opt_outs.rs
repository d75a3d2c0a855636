//! SMS opt-outs (PRODUCT.md §5): a number that said `STOP`, or that a
//! provider reported as opted out (Twilio 21610), gets no more SMS until it
//! says `START`. Its pending SMS end `cancelled(opted_out)`, which counts as
//! not reached (PRODUCT.md §6).

use chrono::{DateTime, Utc};

use super::{Result, Store, from_ms, ms};

/// One number that opted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOut {
    /// E.164, as messages store SMS addresses.
    pub address: String,
    pub opted_out_at: DateTime<Utc>,
    /// Who said so: a provider's name, or the inbound channel of a `STOP`.
    pub source: String,
    pub detail: Option<String>,
}

/// Ends the SMS waiting for numbers that opted out (bound: `$1`, now); run
/// alone by [`Store::cancel_opted_out`] and in every [`Store::sweep_outbox`].
pub(super) const CANCEL_OPTED_OUT: &str = "UPDATE messages SET state = 'cancelled', state_reason = 'opted_out', payload = NULL, \
     finished_at = $1, claimed_by = NULL, claim_expires_at = NULL \
     WHERE id IN (SELECT id FROM messages WHERE state = 'pending' \
                  AND channel = 'sms' AND address IN (SELECT address FROM opt_outs) \
                  UNION ALL \
                  SELECT id FROM messages WHERE state = 'sending' AND claim_expires_at < $1 \
                  AND channel = 'sms' AND address IN (SELECT address FROM opt_outs))";

impl Store {
    /// Records that `address` opted out. The first record stands; returns
    /// whether this one was new.
    pub async fn record_opt_out(
        &self,
        at: DateTime<Utc>,
        address: &str,
        source: &str,
        detail: Option<&str>,
    ) -> Result<bool> {
        const Q: &str = "INSERT INTO opt_outs (address, opted_out_at, source, detail) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (address) DO NOTHING";
        let n = on_db!(self, |p| sqlx::query(Q)
            .bind(address)
            .bind(ms(at))
            .bind(source)
            .bind(detail)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// `START`: `address` may get SMS again. Returns whether it had opted out.
    pub async fn opt_in(&self, address: &str) -> Result<bool> {
        const Q: &str = "DELETE FROM opt_outs WHERE address = $1";
        let n = on_db!(self, |p| sqlx::query(Q)
            .bind(address)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Every number that has opted out, oldest first.
    pub async fn opt_outs(&self) -> Result<Vec<OptOut>> {
        const Q: &str = "SELECT address, opted_out_at, source, detail FROM opt_outs ORDER BY opted_out_at, address";
        let rows: Vec<(String, i64, String, Option<String>)> =
            on_db!(self, |p| sqlx::query_as(Q).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(address, at, source, detail)| OptOut {
                address,
                opted_out_at: from_ms(at),
                source,
                detail,
            })
            .collect())
    }

    /// Ends the SMS waiting for numbers that opted out as
    /// `cancelled(opted_out)`: pending ones, and claims that lapsed (a
    /// sender that crashed). Returns how many.
    pub async fn cancel_opted_out(&self, now: DateTime<Utc>) -> Result<u64> {
        Ok(on_db!(self, |p| sqlx::query(CANCEL_OPTED_OUT)
            .bind(ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?)
    }
}
