//! Exercise control notices (PRODUCT.md §12): a small outbox of what the
//! `control` contacts are told. Each notice comes from one stored event
//! (`event_seq`) and is written once per exercise, contact and channel, so
//! reading the events again after a restart queues nothing twice.

use chrono::{DateTime, Utc};

use super::{EventRow, Result, SendResult, Store, ms};

/// A notice to queue.
#[derive(Debug, Clone)]
pub struct NewNotice {
    pub exercise_id: String,
    pub event_seq: i64,
    pub kind: String,
    pub contact_id: String,
    /// `sms` or `email`.
    pub channel: &'static str,
    pub address: String,
    /// The rendered `Payload`, as JSON.
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NoticeRow {
    pub id: i64,
    pub exercise_id: String,
    pub event_seq: i64,
    pub kind: String,
    pub contact_id: String,
    pub channel: String,
    pub address: String,
    pub payload: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub created_at: i64,
    pub due_at: i64,
    pub finished_at: Option<i64>,
    pub provider: Option<String>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "id, exercise_id, event_seq, kind, contact_id, channel, address, payload, state, \
     attempts, created_at, due_at, finished_at, provider, last_error";

impl Store {
    /// The events after `seq` of the given kinds, oldest first.
    pub async fn events_after(&self, seq: i64, kinds: &[&str]) -> Result<Vec<EventRow>> {
        const Q: &str =
            "SELECT seq, at, kind, exercise_id, data FROM events WHERE seq > $1 ORDER BY seq";
        let rows: Vec<EventRow> = on_db!(self, |p| sqlx::query_as(Q).bind(seq).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter(|e| kinds.contains(&e.kind.as_str()))
            .collect())
    }

    /// The latest event any notice was queued for (0 when none was).
    pub async fn last_noticed_event(&self) -> Result<i64> {
        const Q: &str = "SELECT COALESCE(MAX(event_seq), 0) FROM notices";
        Ok(on_db!(self, |p| sqlx::query_scalar(Q).fetch_one(p).await)?)
    }

    /// Queues `notices` due at `now`; one already queued is left as it is.
    /// Returns how many were new.
    pub async fn queue_notices(&self, now: DateTime<Utc>, notices: &[NewNotice]) -> Result<u64> {
        const Q: &str = "INSERT INTO notices (exercise_id, event_seq, kind, contact_id, channel, address, \
             payload, state, created_at, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) \
             ON CONFLICT (exercise_id, event_seq, contact_id, channel) DO NOTHING";
        let mut new = 0;
        for n in notices {
            new += on_db!(self, |p| sqlx::query(Q)
                .bind(&n.exercise_id)
                .bind(n.event_seq)
                .bind(&n.kind)
                .bind(&n.contact_id)
                .bind(n.channel)
                .bind(&n.address)
                .bind(&n.payload)
                .bind(ms(now))
                .execute(p)
                .await
                .map(|r| r.rows_affected()))?;
        }
        Ok(new)
    }

    /// Takes up to `limit` notices due at `now` for one sender: each taken
    /// notice's next try moves to `lease` (so another daemon leaves it alone
    /// while this one sends) and its attempts go up by one.
    pub async fn take_due_notices(
        &self,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<NoticeRow>> {
        let due = format!(
            "SELECT {COLUMNS} FROM notices WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT $2"
        );
        const TAKE: &str = "UPDATE notices SET due_at = $1, attempts = attempts + 1 \
             WHERE id = $2 AND state = 'pending' AND due_at = $3";
        let candidates: Vec<NoticeRow> =
            on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(due.clone()))
                .bind(ms(now))
                .bind(limit)
                .fetch_all(p)
                .await)?;
        let mut taken = Vec::new();
        for mut n in candidates {
            let won = on_db!(self, |p| sqlx::query(TAKE)
                .bind(ms(lease))
                .bind(n.id)
                .bind(n.due_at)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))?;
            if won == 1 {
                n.attempts += 1;
                n.due_at = ms(lease);
                taken.push(n);
            }
        }
        Ok(taken)
    }

    /// Records what the provider said about a taken notice: `accepted`, or
    /// `failed` for good, or back to `pending` at `retry_at`.
    pub async fn finish_notice(
        &self,
        id: i64,
        result: &SendResult,
        now: DateTime<Utc>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        const ACCEPTED: &str = "UPDATE notices SET state = 'accepted', provider = $1, payload = NULL, \
             finished_at = $2, last_error = NULL WHERE id = $3 AND state = 'pending'";
        const FAILED: &str = "UPDATE notices SET state = 'failed', provider = $1, payload = NULL, \
             finished_at = $2, last_error = $3 WHERE id = $4 AND state = 'pending'";
        const RETRY: &str = "UPDATE notices SET due_at = $1, provider = $2, last_error = $3 \
             WHERE id = $4 AND state = 'pending'";
        match result {
            SendResult::Accepted { provider, .. } => {
                on_db!(self, |p| sqlx::query(ACCEPTED)
                    .bind(provider)
                    .bind(ms(now))
                    .bind(id)
                    .execute(p)
                    .await
                    .map(|_| ()))?;
            }
            SendResult::Failed {
                provider,
                permanent,
                error,
            } => match retry_at.filter(|_| !permanent) {
                Some(at) => on_db!(self, |p| sqlx::query(RETRY)
                    .bind(ms(at))
                    .bind(provider)
                    .bind(error)
                    .bind(id)
                    .execute(p)
                    .await
                    .map(|_| ()))?,
                None => on_db!(self, |p| sqlx::query(FAILED)
                    .bind(provider)
                    .bind(ms(now))
                    .bind(error)
                    .bind(id)
                    .execute(p)
                    .await
                    .map(|_| ()))?,
            },
            SendResult::Deferred { until } => on_db!(self, |p| sqlx::query(RETRY)
                .bind(ms(*until))
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(id)
                .execute(p)
                .await
                .map(|_| ()))?,
            SendResult::NotConfigured => on_db!(self, |p| sqlx::query(FAILED)
                .bind(None::<String>)
                .bind(ms(now))
                .bind("no provider configured for this channel")
                .bind(id)
                .execute(p)
                .await
                .map(|_| ()))?,
        }
        Ok(())
    }

    /// Every notice of `exercise`, oldest first.
    pub async fn notices(&self, exercise: &str) -> Result<Vec<NoticeRow>> {
        let q = format!("SELECT {COLUMNS} FROM notices WHERE exercise_id = $1 ORDER BY id");
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(
            q.clone()
        ))
        .bind(exercise)
        .fetch_all(p)
        .await)?)
    }
}
