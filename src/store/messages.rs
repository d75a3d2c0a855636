//! Fan-out, the outbox, escalation, acks and finalisation.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::status::{NotificationFacts, status_at};

use super::{
    AckOutcome, ClaimedMessage, DueNotification, NewMessage, NewNotification, NewOutcome,
    OpenNotification, ReportRow, Result, SendResult, Store, StoreError, TokenInfo, WritePool,
    from_ms, ms,
};

/// What the channel said about one claimed message, for
/// [`Store::finish_and_claim`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub message: ClaimedMessage,
    pub result: SendResult,
    /// When the channel answered.
    pub at: DateTime<Utc>,
    /// For a transient failure: how long until the next attempt, if any
    /// attempts remain.
    pub retry_after: Option<TimeDelta>,
}

/// Up to `limit` due messages for `worker`, claimed at `now` until `until`.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub worker: &'a str,
    pub now: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub limit: i64,
    /// Whether to look for lapsed claims (a crashed sender's `sending`
    /// rows) before pending messages. They only appear a claim's lifetime
    /// after a crash, so a sender looks once per pass, not on every claim.
    pub lapsed: bool,
}

/// A fan-out's sendable messages written already claimed by `worker` until
/// `until` (attempt 1), for that worker to send without claiming them again.
#[derive(Debug, Clone, Copy)]
pub struct FanoutClaim<'a> {
    pub worker: &'a str,
    pub until: DateTime<Utc>,
}

/// One part of a round's fan-out: some of its departments' notifications,
/// written in a transaction of its own ([`Store::fire_round_part`] for the
/// first, [`Store::continue_fanout`] for the others).
#[derive(Debug, Clone, Copy)]
pub struct FanoutPart<'a> {
    pub round_id: i64,
    /// The round's instants, from its T0.
    pub clock: Clockwork,
    /// When the part is written: T0 for a fan-out written in one go, later
    /// for the rest of one resumed after an interruption.
    pub now: DateTime<Utc>,
    pub notifications: &'a [NewNotification],
    /// Whether this part completes the fan-out.
    pub last: bool,
    /// Messages in the whole fan-out: once a large one is complete,
    /// PostgreSQL's statistics of the outbox are refreshed.
    pub round_messages: usize,
}

/// The messages `notifications` hold.
pub fn message_count(notifications: &[NewNotification]) -> usize {
    notifications
        .iter()
        .flat_map(|n| &n.outcomes)
        .map(|o| o.messages.len())
        .sum()
}

/// The instants a notification is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Clockwork {
    pub fired_at: DateTime<Utc>,
    pub target_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub final_at: DateTime<Utc>,
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Rows per multi-row `INSERT` on SQLite (a message row binds 13 values):
/// far inside SQLite's limit on bound parameters, and few enough statements
/// that a round of thousands of messages is written in a few dozen
/// statements instead of one per row.
const INSERT_ROWS: usize = 500;

/// A fan-out of at least this many messages refreshes PostgreSQL's
/// statistics of the outbox tables (see [`Store::fire_round`]).
const ANALYZE_AFTER: usize = 1_000;

/// Accepted messages per SQLite recording statement.
const ACCEPT_ROWS: usize = 64;

/// The SQLite statements that record `ACCEPT_ROWS` accepted messages: the
/// messages from rows of (id, accepted at, provider, provider's reference),
/// their outcomes from rows of (outcome id, accepted at), the earliest
/// acceptance counting.
fn sqlite_accept() -> (&'static str, &'static str) {
    static SQL: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
        // Anonymous `?` parameters: sqlx looks up each parameter's name to
        // bind it, and SQLite finds a `$n` name by walking the statement's
        // list of names, which costs the square of the count.
        let rows = |width: usize| {
            let row = format!("({})", vec!["?"; width].join(", "));
            vec![row; ACCEPT_ROWS].join(", ")
        };
        (
            format!(
                "UPDATE messages SET state = 'accepted', accepted_at = j.column2, provider = j.column3, \
                 provider_ref = j.column4, payload = NULL, claimed_by = NULL, claim_expires_at = NULL, last_error = NULL \
                 FROM (VALUES {}) AS j WHERE messages.id = j.column1",
                rows(4)
            ),
            format!(
                "UPDATE outcomes SET accepted_at = j.at_ms \
                 FROM (SELECT column1 AS id, MIN(column2) AS at_ms FROM (VALUES {}) \
                       WHERE column1 IS NOT NULL GROUP BY column1) AS j \
                 WHERE outcomes.id = j.id AND (outcomes.accepted_at IS NULL OR outcomes.accepted_at > j.at_ms)",
                rows(2)
            ),
        )
    });
    (SQL.0.as_str(), SQL.1.as_str())
}

/// One message of a fan-out with the ids it hangs from: its notification,
/// its outcome, the outcome, the message and the state it is written in
/// (`sending` when the fan-out claims it).
type MessageRow<'a> = (i64, i64, &'a NewOutcome, &'a NewMessage, &'static str);

/// What a claiming fan-out's insert returns of each row: its id, its outcome
/// and its channel's number ([`channel_number`]). Numbers, not texts: a
/// round returns tens of thousands.
const RETURNING_IDS: &str = " RETURNING id, outcome_id, \
     CAST(CASE channel WHEN 'sms' THEN 1 WHEN 'email' THEN 2 ELSE 3 END AS BIGINT)";

/// A channel's number in [`RETURNING_IDS`].
fn channel_number(channel: &str) -> i64 {
    match channel {
        "sms" => 1,
        "email" => 2,
        _ => 3,
    }
}

/// One accepted message, as the bulk statements read it.
struct Accepted<'a> {
    id: i64,
    outcome_id: i64,
    at_ms: i64,
    provider: &'a str,
    provider_ref: Option<&'a str>,
}

type DbResult<T> = std::result::Result<T, sqlx::Error>;

/// The outbox's bulk writes inside a write transaction. Each backend
/// supplies the statements it runs fastest, one chunk of rows at a time;
/// the chunking and the matching of returned ids are shared.
trait OutboxWrites {
    /// Rows per fan-out statement.
    const FANOUT_ROWS: usize;

    /// Inserts notifications; returns each one's (id, department).
    async fn notification_rows(
        &mut self,
        round_id: i64,
        clock: Clockwork,
        chunk: &[NewNotification],
    ) -> DbResult<Vec<(i64, String)>>;

    /// Inserts outcomes, each with its notification id; returns each one's
    /// (id, notification id, contact).
    async fn outcome_rows(
        &mut self,
        chunk: &[(i64, &NewOutcome)],
        now_ms: i64,
    ) -> DbResult<Vec<(i64, i64, String)>>;

    /// Inserts messages, those in state `sending` claimed as `claim` says;
    /// with a claim, returns the (id, outcome id, channel number) of each
    /// ([`RETURNING_IDS`]).
    async fn message_rows(
        &mut self,
        chunk: &[MessageRow<'_>],
        now_ms: i64,
        claim: Option<&FanoutClaim<'_>>,
    ) -> DbResult<Vec<(i64, i64, i64)>>;

    /// Records accepted messages, and their outcomes' first acceptance.
    /// A batch takes several statements, and a contact's messages may fall
    /// in different ones: its outcome keeps the earliest acceptance of them
    /// all.
    async fn record_accepted(&mut self, accepted: &[Accepted<'_>]) -> DbResult<()>;

    /// Inserts a round's notifications; returns their ids by department.
    async fn insert_notifications(
        &mut self,
        round_id: i64,
        clock: Clockwork,
        notifications: &[NewNotification],
    ) -> DbResult<HashMap<String, i64>> {
        let mut ids = HashMap::with_capacity(notifications.len());
        for chunk in notifications.chunks(Self::FANOUT_ROWS) {
            let rows = self.notification_rows(round_id, clock, chunk).await?;
            ids.extend(rows.into_iter().map(|(id, department)| (department, id)));
        }
        Ok(ids)
    }

    /// Inserts outcomes (each with its notification id) and their messages.
    /// With `claim`, the messages that could be claimed now (pending, before
    /// their deadline, not an SMS to a number in `opted_out`) are written
    /// claimed, and returned as claimed.
    async fn insert_outcomes(
        &mut self,
        items: &[(i64, &NewOutcome)],
        now: DateTime<Utc>,
        claim: Option<(&FanoutClaim<'_>, &HashSet<String>)>,
    ) -> DbResult<Vec<ClaimedMessage>> {
        let now_ms = ms(now);
        // Each item's place by (notification, contact), keyed by the items'
        // own strings, so the ids that come back are matched without a copy.
        let places: HashMap<(i64, &str), usize> = items
            .iter()
            .enumerate()
            .map(|(i, (nid, o))| ((*nid, o.contact_id.as_str()), i))
            .collect();
        let mut outcome_ids: Vec<Option<i64>> = vec![None; items.len()];
        for chunk in items.chunks(Self::FANOUT_ROWS) {
            for (id, nid, contact) in self.outcome_rows(chunk, now_ms).await? {
                if let Some(&i) = places.get(&(nid, contact.as_str())) {
                    outcome_ids[i] = Some(id);
                }
            }
        }
        let state_of = |m: &NewMessage| -> &'static str {
            let claimable = claim.is_some_and(|(_, opted_out)| {
                m.state == "pending"
                    && ms(m.expires_at) > now_ms
                    && !(m.channel == "sms" && opted_out.contains(m.address.as_str()))
            });
            if claimable { "sending" } else { m.state }
        };
        let mut messages: Vec<MessageRow<'_>> = Vec::with_capacity(items.len() * 3);
        for ((nid, o), oid) in items.iter().zip(outcome_ids) {
            let oid = oid.ok_or_else(|| {
                sqlx::Error::Protocol(format!("no id came back for outcome {}", o.contact_id))
            })?;
            messages.extend(o.messages.iter().map(|m| (*nid, oid, *o, m, state_of(m))));
        }
        // With a claim, the messages' ids by (outcome, channel number).
        let mut ids: HashMap<(i64, i64), i64> = HashMap::new();
        for chunk in messages.chunks(Self::FANOUT_ROWS) {
            let rows = self
                .message_rows(chunk, now_ms, claim.map(|(c, _)| c))
                .await?;
            for (id, oid, channel) in rows {
                ids.insert((oid, channel), id);
            }
        }
        let mut claimed = Vec::with_capacity(messages.len());
        for (nid, oid, o, m, state) in messages {
            if state != "sending" {
                continue;
            }
            let id = ids
                .get(&(oid, channel_number(&m.channel)))
                .copied()
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "no id came back for the {} message to {}",
                        m.channel, o.contact_id
                    ))
                })?;
            claimed.push(ClaimedMessage {
                id,
                notification_id: nid,
                outcome_id: oid,
                contact_id: o.contact_id.clone(),
                channel: m.channel.clone(),
                address: m.address.clone(),
                payload: Some(m.payload.clone()),
                attempts: 1,
                expires_at: ms(m.expires_at),
            });
        }
        Ok(claimed)
    }
}

/// SQLite: multi-row `VALUES`, `INSERT_ROWS` rows a statement; acceptances
/// from rows of bound values ([`sqlite_accept`]).
impl OutboxWrites for sqlx::Transaction<'static, sqlx::Sqlite> {
    const FANOUT_ROWS: usize = INSERT_ROWS;

    async fn notification_rows(
        &mut self,
        round_id: i64,
        clock: Clockwork,
        chunk: &[NewNotification],
    ) -> DbResult<Vec<(i64, String)>> {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO notifications (round_id, department, status, step, fired_at, target_at, deadline_at, final_at) ",
        );
        q.push_values(chunk, |mut row, n| {
            row.push_bind(round_id)
                .push_bind(n.department.as_str())
                .push_bind("open")
                .push_bind(1_i64)
                .push_bind(ms(clock.fired_at))
                .push_bind(ms(clock.target_at))
                .push_bind(ms(clock.deadline_at))
                .push_bind(ms(clock.final_at));
        });
        q.push(" RETURNING id, department");
        q.build_query_as().fetch_all(&mut **self).await
    }

    async fn outcome_rows(
        &mut self,
        chunk: &[(i64, &NewOutcome)],
        now_ms: i64,
    ) -> DbResult<Vec<(i64, i64, String)>> {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO outcomes (notification_id, contact_id, role, code, token_digest, token_expires_at, step, notified_at) ",
        );
        q.push_values(chunk, |mut row, (nid, o)| {
            row.push_bind(*nid)
                .push_bind(o.contact_id.as_str())
                .push_bind(o.role.as_str())
                .push_bind(o.code.as_str())
                .push_bind(o.token_digest.as_str())
                .push_bind(ms(o.token_expires_at))
                .push_bind(o.step)
                .push_bind(now_ms);
        });
        q.push(" RETURNING id, notification_id, contact_id");
        q.build_query_as().fetch_all(&mut **self).await
    }

    async fn message_rows(
        &mut self,
        chunk: &[MessageRow<'_>],
        now_ms: i64,
        claim: Option<&FanoutClaim<'_>>,
    ) -> DbResult<Vec<(i64, i64, i64)>> {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, step, state, \
             payload, created_at, due_at, expires_at, finished_at, attempts, claimed_by, claim_expires_at) ",
        );
        q.push_values(chunk, |mut row, (nid, oid, o, m, state)| {
            let sendable = *state == "pending" || *state == "sending";
            let claimed = claim.filter(|_| *state == "sending");
            row.push_bind(*nid)
                .push_bind(*oid)
                .push_bind(o.contact_id.as_str())
                .push_bind(m.channel.as_str())
                .push_bind(m.address.as_str())
                .push_bind(o.step)
                .push_bind(*state)
                .push_bind(sendable.then_some(m.payload.as_str()))
                .push_bind(now_ms)
                .push_bind(now_ms)
                .push_bind(ms(m.expires_at))
                .push_bind((!sendable).then_some(now_ms))
                .push_bind(i64::from(claimed.is_some()))
                .push_bind(claimed.map(|c| c.worker))
                .push_bind(claimed.map(|c| ms(c.until)));
        });
        if claim.is_none() {
            q.build().execute(&mut **self).await?;
            return Ok(Vec::new());
        }
        q.push(RETURNING_IDS);
        q.build_query_as().fetch_all(&mut **self).await
    }

    async fn record_accepted(&mut self, accepted: &[Accepted<'_>]) -> DbResult<()> {
        let (accept_rows, accept_outcome_rows) = sqlite_accept();
        for chunk in accepted.chunks(ACCEPT_ROWS) {
            // Each statement takes `ACCEPT_ROWS` rows; a short chunk is
            // padded with rows of nulls, which match nothing.
            let mut q = sqlx::query(accept_rows);
            let mut o = sqlx::query(accept_outcome_rows);
            for i in 0..ACCEPT_ROWS {
                let a = chunk.get(i);
                q = q
                    .bind(a.map(|a| a.id))
                    .bind(a.map(|a| a.at_ms))
                    .bind(a.map(|a| a.provider))
                    .bind(a.and_then(|a| a.provider_ref));
                o = o.bind(a.map(|a| a.outcome_id)).bind(a.map(|a| a.at_ms));
            }
            q.execute(&mut **self).await?;
            o.execute(&mut **self).await?;
        }
        Ok(())
    }
}

/// Rows per PostgreSQL fan-out statement, which binds each column as one
/// array. A round of 30,000 messages is then five statements rather than
/// the 84 of 500-row `VALUES` lists, and PostgreSQL parses and plans each
/// once.
const PG_FANOUT_ROWS: usize = 10_000;

/// One column of `rows`, as the array PostgreSQL reads with `unnest`.
fn column<'a, T, V>(rows: &'a [T], f: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(f).collect()
}

/// PostgreSQL: every column bound as one array and read back with `unnest`,
/// `PG_FANOUT_ROWS` rows a statement; a batch's acceptances in one statement
/// for the messages and one for their outcomes. (These requests run to
/// hundreds of kilobytes: sqlx sets `TCP_NODELAY` since 0.9.1, without which
/// each one's last segment waited out the server's delayed ACK, about 40 ms.)
impl OutboxWrites for sqlx::Transaction<'static, sqlx::Postgres> {
    const FANOUT_ROWS: usize = PG_FANOUT_ROWS;

    async fn notification_rows(
        &mut self,
        round_id: i64,
        clock: Clockwork,
        chunk: &[NewNotification],
    ) -> DbResult<Vec<(i64, String)>> {
        const INSERT: &str = "INSERT INTO notifications (round_id, department, status, step, fired_at, target_at, deadline_at, final_at) \
             SELECT $1, d, 'open', 1, $3, $4, $5, $6 FROM unnest($2::text[]) AS u(d) RETURNING id, department";
        sqlx::query_as(INSERT)
            .bind(round_id)
            .bind(column(chunk, |n| n.department.as_str()))
            .bind(ms(clock.fired_at))
            .bind(ms(clock.target_at))
            .bind(ms(clock.deadline_at))
            .bind(ms(clock.final_at))
            .fetch_all(&mut **self)
            .await
    }

    async fn outcome_rows(
        &mut self,
        chunk: &[(i64, &NewOutcome)],
        now_ms: i64,
    ) -> DbResult<Vec<(i64, i64, String)>> {
        const INSERT: &str = "INSERT INTO outcomes (notification_id, contact_id, role, code, token_digest, token_expires_at, step, notified_at) \
             SELECT n, c, r, k, t, e, s, $8 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[]) \
             AS u(n, c, r, k, t, e, s) RETURNING id, notification_id, contact_id";
        sqlx::query_as(INSERT)
            .bind(column(chunk, |(nid, _)| *nid))
            .bind(column(chunk, |(_, o)| o.contact_id.as_str()))
            .bind(column(chunk, |(_, o)| o.role.as_str()))
            .bind(column(chunk, |(_, o)| o.code.as_str()))
            .bind(column(chunk, |(_, o)| o.token_digest.as_str()))
            .bind(column(chunk, |(_, o)| ms(o.token_expires_at)))
            .bind(column(chunk, |(_, o)| o.step))
            .bind(now_ms)
            .fetch_all(&mut **self)
            .await
    }

    async fn message_rows(
        &mut self,
        chunk: &[MessageRow<'_>],
        now_ms: i64,
        claim: Option<&FanoutClaim<'_>>,
    ) -> DbResult<Vec<(i64, i64, i64)>> {
        const INSERT: &str = "INSERT INTO messages (notification_id, outcome_id, contact_id, channel, address, step, state, \
             payload, created_at, due_at, expires_at, finished_at, attempts, claimed_by, claim_expires_at) \
             SELECT n, o, c, ch, a, s, st, p, $10, $10, e, CASE WHEN st IN ('pending', 'sending') THEN NULL ELSE $10 END, \
             CASE WHEN st = 'sending' THEN 1 ELSE 0 END, CASE WHEN st = 'sending' THEN $11 END, CASE WHEN st = 'sending' THEN $12::bigint END \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::bigint[]) \
             AS u(n, o, c, ch, a, s, st, p, e)";
        // Only a claiming fan-out needs the ids back.
        let sql = match claim {
            Some(_) => std::borrow::Cow::Owned(format!("{INSERT}{RETURNING_IDS}")),
            None => std::borrow::Cow::Borrowed(INSERT),
        };
        let query = sqlx::query_as::<_, (i64, i64, i64)>(sqlx::AssertSqlSafe(sql))
            .bind(column(chunk, |(nid, ..)| *nid))
            .bind(column(chunk, |(_, oid, ..)| *oid))
            .bind(column(chunk, |(_, _, o, ..)| o.contact_id.as_str()))
            .bind(column(chunk, |(.., m, _)| m.channel.as_str()))
            .bind(column(chunk, |(.., m, _)| m.address.as_str()))
            .bind(column(chunk, |(_, _, o, ..)| o.step))
            .bind(column(chunk, |(.., state)| *state))
            .bind(column(chunk, |(.., m, state)| {
                (*state == "pending" || *state == "sending").then_some(m.payload.as_str())
            }))
            .bind(column(chunk, |(.., m, _)| ms(m.expires_at)))
            .bind(now_ms)
            .bind(claim.map(|c| c.worker))
            .bind(claim.map(|c| ms(c.until)));
        query.fetch_all(&mut **self).await
    }

    async fn record_accepted(&mut self, accepted: &[Accepted<'_>]) -> DbResult<()> {
        const ACCEPT: &str = "UPDATE messages SET state = 'accepted', accepted_at = j.at_ms, provider = j.provider, \
             provider_ref = j.provider_ref, payload = NULL, claimed_by = NULL, claim_expires_at = NULL, last_error = NULL \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS j(id, at_ms, provider, provider_ref) \
             WHERE messages.id = j.id";
        // Each outcome found by its key (`= ANY`), which PostgreSQL plans as
        // index lookups. Joined with the batch (grouped in SQL, which the
        // planner guesses at 200 groups) it was planned as a hash join over
        // a scan of the whole table: 1-2 ms a batch with 10,000 outcomes.
        const ACCEPT_OUTCOMES: &str = "UPDATE outcomes SET accepted_at = ($2::bigint[])[array_position($1::bigint[], id)] \
             WHERE id = ANY($1::bigint[]) \
             AND (accepted_at IS NULL OR accepted_at > ($2::bigint[])[array_position($1::bigint[], id)])";
        if accepted.is_empty() {
            return Ok(());
        }
        // Each contact's first acceptance in the batch, one row per outcome.
        let mut firsts: Vec<(i64, i64)> =
            accepted.iter().map(|a| (a.outcome_id, a.at_ms)).collect();
        firsts.sort_unstable();
        firsts.dedup_by_key(|(outcome, _)| *outcome);
        sqlx::query(ACCEPT)
            .bind(column(accepted, |a| a.id))
            .bind(column(accepted, |a| a.at_ms))
            .bind(column(accepted, |a| a.provider))
            .bind(column(accepted, |a| a.provider_ref))
            .execute(&mut **self)
            .await?;
        sqlx::query(ACCEPT_OUTCOMES)
            .bind(column(&firsts, |(outcome, _)| *outcome))
            .bind(column(&firsts, |(_, at)| *at))
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Fires a round: marks it fired at T0 and writes every department's
    /// notification, first contacts and step-1 messages in one transaction.
    /// Returns false if the round had already fired (exactly-once).
    /// A clash of ack codes comes back as [`StoreError::Conflict`] so the
    /// caller can draw new codes.
    pub async fn fire_round(
        &self,
        round_id: i64,
        roster_version: i64,
        clock: Clockwork,
        notifications: &[NewNotification],
    ) -> Result<bool> {
        let fired = self
            .fire_round_claiming(round_id, roster_version, clock, notifications, None)
            .await?;
        Ok(fired.is_some())
    }

    /// Fires a round in one part as [`Store::fire_round`] does; with
    /// `claim`, its messages are written claimed and come back, as
    /// [`Store::fire_round_part`] says. Returns `None` if the round had
    /// already fired.
    pub async fn fire_round_claiming(
        &self,
        round_id: i64,
        roster_version: i64,
        clock: Clockwork,
        notifications: &[NewNotification],
        claim: Option<&FanoutClaim<'_>>,
    ) -> Result<Option<Vec<ClaimedMessage>>> {
        let departments: Vec<&str> = notifications
            .iter()
            .map(|n| n.department.as_str())
            .collect();
        let part = FanoutPart {
            round_id,
            clock,
            now: clock.fired_at,
            notifications,
            last: true,
            round_messages: message_count(notifications),
        };
        self.fire_round_part(roster_version, &departments.join(","), &part, claim)
            .await
    }

    /// Writes the first part of a round's fan-out: marks the round fired at
    /// T0 (`part.clock.fired_at`) for `departments` (every department of the
    /// fan-out, comma-separated) and writes the part's notifications, as
    /// [`Store::fire_round`] does. With `claim`, the messages that could be
    /// claimed at T0 are written already claimed (`sending`, attempt 1) and
    /// come back, for that worker to send without another write. Returns
    /// `None` if the round had already fired.
    pub async fn fire_round_part(
        &self,
        roster_version: i64,
        departments: &str,
        part: &FanoutPart<'_>,
        claim: Option<&FanoutClaim<'_>>,
    ) -> Result<Option<Vec<ClaimedMessage>>> {
        self.write_fanout_part(Some((roster_version, departments)), part, claim)
            .await
    }

    /// Writes a later part of a fired round's fan-out, claimed as
    /// [`Store::fire_round_part`] does. Returns `None` if the round's
    /// fan-out is not unfinished (not fired, or completed already).
    pub async fn continue_fanout(
        &self,
        part: &FanoutPart<'_>,
        claim: Option<&FanoutClaim<'_>>,
    ) -> Result<Option<Vec<ClaimedMessage>>> {
        self.write_fanout_part(None, part, claim).await
    }

    /// One part of a fan-out in its own transaction; `first` (the roster
    /// version and the departments) marks the round fired.
    async fn write_fanout_part(
        &self,
        first: Option<(i64, &str)>,
        part: &FanoutPart<'_>,
        claim: Option<&FanoutClaim<'_>>,
    ) -> Result<Option<Vec<ClaimedMessage>>> {
        let FanoutPart {
            round_id,
            clock,
            now,
            notifications,
            last,
            round_messages,
        } = *part;
        // The part that completes the fan-out says when.
        let fanned_out_at = last.then(|| ms(now));
        // An async block keeps each `?` inside it, so a unique violation
        // reaches the match below instead of leaving as a database error.
        let outcome = on_db!(self, |p| {
            async {
                let mut tx = p.begin_write().await?;
                let updated = match first {
                    Some((roster_version, departments)) => sqlx::query(
                        "UPDATE rounds SET state = 'fired', fired_at = $1, roster_version = $2, departments = $3, \
                         fanned_out_at = $5 WHERE id = $4 AND state IN ('planned', 'queued')",
                    )
                    .bind(ms(clock.fired_at)).bind(roster_version).bind(departments).bind(round_id)
                    .bind(fanned_out_at)
                    .execute(&mut *tx).await?,
                    // Also holds the round's row for the part, so two
                    // writers of one fan-out take turns.
                    None => sqlx::query(
                        "UPDATE rounds SET fanned_out_at = $1 \
                         WHERE id = $2 AND state = 'fired' AND fired_at IS NOT NULL AND fanned_out_at IS NULL",
                    )
                    .bind(fanned_out_at).bind(round_id)
                    .execute(&mut *tx).await?,
                };
                if updated.rows_affected() != 1 {
                    return Ok(None);
                }
                let notification_ids = tx.insert_notifications(round_id, clock, notifications).await?;
                let mut outcomes = Vec::new();
                for n in notifications {
                    let nid = notification_ids.get(&n.department).copied().ok_or_else(|| {
                        sqlx::Error::Protocol(format!("no id came back for notification {}", n.department))
                    })?;
                    outcomes.extend(n.outcomes.iter().map(|o| (nid, o)));
                }
                // SMS to numbers that opted out stay pending, for the sweep
                // to cancel.
                let opted_out: HashSet<String> = match claim {
                    Some(_) => sqlx::query_scalar("SELECT address FROM opt_outs")
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect(),
                    None => HashSet::new(),
                };
                let claimed = tx
                    .insert_outcomes(&outcomes, now, claim.map(|c| (c, &opted_out)))
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Some(claimed))
            }
            .await
        });
        if let (Ok(Some(_)), Store::Postgres(p), true) = (&outcome, self, last)
            && round_messages >= ANALYZE_AFTER
        {
            // A large fan-out can change the outbox's size by orders of
            // magnitude; without fresh statistics PostgreSQL may plan the
            // claims as if the tables were still empty (a nested loop over
            // every department per claim). Only the columns the claims
            // filter and join on: the statistics of the texts (payloads,
            // addresses) cost most of a full ANALYZE and guide no plan.
            // The round is committed, so a failure only costs speed. When
            // the round's sends were claimed at fan-out they need no plan,
            // and this runs beside them rather than before them.
            let pool = p.clone();
            let analyze = async move {
                if let Err(e) = sqlx::query(
                    "ANALYZE messages (state, due_at, expires_at, channel, notification_id), \
                     outcomes (notification_id), notifications (status, acked_at)",
                )
                .execute(&pool)
                .await
                {
                    tracing::warn!(error = %e, "could not refresh the outbox statistics");
                }
            };
            if claim.is_some() {
                tokio::spawn(analyze);
            } else {
                analyze.await;
            }
        }
        match outcome {
            Ok(fired) => Ok(fired),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::Conflict("ack code already live".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds an escalation step's contacts to an open notification.
    pub async fn add_step(
        &self,
        notification_id: i64,
        step: i64,
        outcomes: &[NewOutcome],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // An async block keeps each `?` inside it, so a unique violation
        // reaches the match below instead of leaving as a database error.
        let outcome = on_db!(self, |p| {
            async {
                let mut tx = p.begin_write().await?;
                let updated = sqlx::query(
                    "UPDATE notifications SET step = $1, status = 'escalated' \
                     WHERE id = $2 AND step < $1 AND status IN ('open', 'escalated') AND acked_at IS NULL",
                )
                .bind(step).bind(notification_id)
                .execute(&mut *tx).await?;
                if updated.rows_affected() != 1 {
                    return Ok(false);
                }
                let outcomes: Vec<(i64, &NewOutcome)> =
                    outcomes.iter().map(|o| (notification_id, o)).collect();
                tx.insert_outcomes(&outcomes, now, None).await?;
                tx.commit().await?;
                Ok::<bool, sqlx::Error>(true)
            }
            .await
        });
        match outcome {
            Ok(done) => Ok(done),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::Conflict("ack code already live".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Contacts already notified in a notification.
    pub async fn notified_contacts(&self, notification_id: i64) -> Result<Vec<String>> {
        const Q: &str = "SELECT contact_id FROM outcomes WHERE notification_id = $1";
        Ok(on_db!(self, |p| sqlx::query_scalar(Q)
            .bind(notification_id)
            .fetch_all(p)
            .await)?)
    }

    /// Notifications not yet final, with their round's T0.
    pub async fn open_notifications(&self) -> Result<Vec<OpenNotification>> {
        const Q: &str = "SELECT n.id, n.round_id, r.exercise_id, r.label AS round_label, n.department, n.fired_at, n.step, \
             r.roster_version AS roster_version, n.acked_at \
             FROM notifications n JOIN rounds r ON r.id = n.round_id \
             WHERE n.status IN ('open', 'escalated') ORDER BY n.id";
        Ok(on_db!(self, |p| sqlx::query_as(Q).fetch_all(p).await)?)
    }

    // ---- the outbox ----------------------------------------------------

    /// Marks pending messages past their deadline `expired` (never sent late)
    /// and claims up to `limit` due messages for `worker` until `claim_until`.
    /// A `sending` row whose claim lapsed is claimed again only while its
    /// notification is open.
    pub async fn claim_messages(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        self.sweep_outbox(now).await?;
        self.finish_and_claim(
            &[],
            &Claim {
                worker,
                now,
                until: claim_until,
                limit,
                lapsed: true,
            },
        )
        .await
    }

    /// Settles what can no longer go out, in one transaction: pending
    /// messages (and lapsed claims) at or past their deadline become
    /// `expired`, lapsed claims of a department that has acked since become
    /// `cancelled(acked)`, and SMS to numbers that opted out
    /// `cancelled(opted_out)` (as [`Store::cancel_opted_out`]).
    pub async fn sweep_outbox(&self, now: DateTime<Utc>) -> Result<()> {
        const EXPIRE: &str = "UPDATE messages SET state = 'expired', state_reason = 'deadline passed before sending', \
             payload = NULL, finished_at = $1, claimed_by = NULL, claim_expires_at = NULL \
             WHERE id IN (SELECT id FROM messages WHERE state = 'pending' AND expires_at <= $1 \
                          UNION ALL \
                          SELECT id FROM messages WHERE state = 'sending' AND claim_expires_at < $1 AND expires_at <= $1)";
        // A sender that crashed mid-send leaves `sending` rows; if the
        // department has acked since, they are not sent again.
        const CANCEL_ACKED: &str = "UPDATE messages SET state = 'cancelled', state_reason = 'acked', payload = NULL, \
             finished_at = $1, claimed_by = NULL, claim_expires_at = NULL \
             WHERE state = 'sending' AND claim_expires_at < $1 \
             AND notification_id IN (SELECT id FROM notifications WHERE acked_at IS NOT NULL)";
        on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            for sweep in [EXPIRE, CANCEL_ACKED, super::opt_outs::CANCEL_OPTED_OUT] {
                sqlx::query(sweep).bind(ms(now)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Records what the channel said about a claimed message. A transient
    /// failure goes back to `pending` after `retry_after` while attempts remain.
    pub async fn finish_message(
        &self,
        message: &ClaimedMessage,
        result: &SendResult,
        now: DateTime<Utc>,
        retry_after: Option<TimeDelta>,
    ) -> Result<()> {
        let finished = Finished {
            message: message.clone(),
            result: result.clone(),
            at: now,
            retry_after,
        };
        self.finish_and_claim(
            &[finished],
            &Claim {
                worker: "",
                now,
                until: now,
                limit: 0,
                lapsed: false,
            },
        )
        .await?;
        Ok(())
    }

    /// Records every message in `finished` (as [`Store::finish_message`]
    /// would, one by one) and claims up to `claim.limit` due messages, all in
    /// one write transaction: a dispatcher pays one durable commit per batch
    /// of sends instead of one per message. Lapsed claims (when
    /// `claim.lapsed`) are taken first, then pending messages in due order.
    /// A message at or past its deadline, or an SMS to a number that opted
    /// out, is never claimed ([`Store::sweep_outbox`] marks the first
    /// `expired`, [`Store::cancel_opted_out`] the second `cancelled`).
    pub async fn finish_and_claim(
        &self,
        finished: &[Finished],
        claim: &Claim<'_>,
    ) -> Result<Vec<ClaimedMessage>> {
        /// Claims rows matching a condition on `m`, oldest due first.
        macro_rules! claim_sql {
            ($which:literal, $lock:literal) => {
                concat!(
                    "UPDATE messages SET state = 'sending', claimed_by = $1, claim_expires_at = $2, attempts = attempts + 1 \
                     WHERE id IN (SELECT m.id FROM messages m JOIN notifications n ON n.id = m.notification_id WHERE ",
                    $which,
                    " AND m.expires_at > $3 AND n.status IN ('open', 'escalated') AND n.acked_at IS NULL \
                     AND NOT (m.channel = 'sms' AND EXISTS (SELECT 1 FROM opt_outs o WHERE o.address = m.address)) \
                     ORDER BY m.due_at, m.id LIMIT $4",
                    $lock,
                    ") RETURNING id, notification_id, outcome_id, contact_id, channel, address, payload, attempts, expires_at"
                )
            };
        }
        // Two claims, each walking its state's index in order, rather
        // than one over both states that must sort every due row to find
        // the first few.
        const SQLITE_CLAIMS: [&str; 2] = [
            claim_sql!("m.state = 'sending' AND m.claim_expires_at < $3", ""),
            claim_sql!("m.state = 'pending' AND m.due_at <= $3", ""),
        ];
        const PG_CLAIMS: [&str; 2] = [
            claim_sql!(
                "m.state = 'sending' AND m.claim_expires_at < $3",
                " FOR UPDATE OF m SKIP LOCKED"
            ),
            claim_sql!(
                "m.state = 'pending' AND m.due_at <= $3",
                " FOR UPDATE OF m SKIP LOCKED"
            ),
        ];
        const RETRY: &str = "UPDATE messages SET state = 'pending', due_at = $1, provider = $2, last_error = $3, \
             claimed_by = NULL, claim_expires_at = NULL WHERE id = $4";
        // `failed` or `expired`: final, with the provider's last word.
        const END: &str = "UPDATE messages SET state = $1, state_reason = $2, provider = $3, last_error = $4, \
             payload = NULL, finished_at = $5, claimed_by = NULL, claim_expires_at = NULL WHERE id = $6";
        // Paced, not attempted: the claim's attempt is given back.
        const DEFER: &str = "UPDATE messages SET state = 'pending', due_at = $1, attempts = attempts - 1, \
             claimed_by = NULL, claim_expires_at = NULL WHERE id = $2 AND state = 'sending'";
        const NOT_CONFIGURED: &str = "UPDATE messages SET state = 'not_configured', state_reason = 'no provider configured for this channel', \
             payload = NULL, finished_at = $1, claimed_by = NULL, claim_expires_at = NULL WHERE id = $2";
        const RETRIES_TOO_LATE: &str = "retries would run past the deadline";

        let accepted: Vec<Accepted<'_>> = finished
            .iter()
            .filter_map(|f| match &f.result {
                SendResult::Accepted {
                    provider,
                    provider_ref,
                } => Some(Accepted {
                    id: f.message.id,
                    outcome_id: f.message.outcome_id,
                    at_ms: ms(f.at),
                    provider,
                    provider_ref: provider_ref.as_deref(),
                }),
                _ => None,
            })
            .collect();
        let claims = match self {
            Store::Sqlite(_) => SQLITE_CLAIMS,
            Store::Postgres(_) => PG_CLAIMS,
        };
        let claimed = on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            // Accepted messages (nearly all of them) in bulk; the rest one
            // by one below.
            tx.record_accepted(&accepted).await?;
            for f in finished {
                let (id, at) = (f.message.id, ms(f.at));
                // When the message would be tried next, if at all.
                let next = match &f.result {
                    SendResult::Failed {
                        permanent: false, ..
                    } => f.retry_after.map(|after| ms(f.at + after)),
                    SendResult::Deferred { until } => Some(ms(*until)),
                    _ => None,
                };
                // A retry or paced slot that would land after the deadline is
                // never sent: the message is `expired`, not sent late. A
                // failure with no next attempt is `failed`.
                let late = next.is_some_and(|t| t >= f.message.expires_at);
                let ended = match &f.result {
                    SendResult::Failed {
                        provider, error, ..
                    } if late => Some((
                        "expired",
                        RETRIES_TOO_LATE,
                        provider.as_str(),
                        error.as_str(),
                    )),
                    SendResult::Deferred { .. } if late => Some((
                        "expired",
                        RETRIES_TOO_LATE,
                        "pacing",
                        "the provider's rate would send it after the deadline",
                    )),
                    SendResult::Failed {
                        provider,
                        permanent,
                        error,
                    } if next.is_none() => {
                        let reason = if *permanent { "permanent" } else { "transient" };
                        Some(("failed", reason, provider.as_str(), error.as_str()))
                    }
                    _ => None,
                };
                if let Some((state, reason, provider, error)) = ended {
                    sqlx::query(END)
                        .bind(state)
                        .bind(reason)
                        .bind(provider)
                        .bind(error)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    continue;
                }
                match &f.result {
                    SendResult::Accepted { .. } => {}
                    SendResult::Failed {
                        provider, error, ..
                    } => {
                        sqlx::query(RETRY)
                            .bind(next)
                            .bind(provider)
                            .bind(error)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    SendResult::Deferred { until } => {
                        sqlx::query(DEFER)
                            .bind(ms(*until))
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    SendResult::NotConfigured => {
                        sqlx::query(NOT_CONFIGURED)
                            .bind(at)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            let mut claimed: Vec<ClaimedMessage> = Vec::new();
            // Lapsed claims first, and only when asked for.
            for sql in &claims[usize::from(!claim.lapsed)..] {
                let room = claim.limit - claimed.len() as i64;
                if room <= 0 {
                    break;
                }
                let rows: Vec<ClaimedMessage> = sqlx::query_as(*sql)
                    .bind(claim.worker)
                    .bind(ms(claim.until))
                    .bind(ms(claim.now))
                    .bind(room)
                    .fetch_all(&mut *tx)
                    .await?;
                claimed.extend(rows);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(claimed)
        })?;
        Ok(claimed)
    }

    /// The earliest instant something in the outbox becomes due.
    pub async fn next_message_due(&self) -> Result<Option<DateTime<Utc>>> {
        // Each side reads the first entry of its claim index. A claim
        // counts as lapsed the millisecond after `claim_expires_at`.
        const Q: &str = "SELECT MIN(at) FROM (SELECT MIN(due_at) AS at FROM messages WHERE state = 'pending' \
             UNION ALL SELECT MIN(claim_expires_at) + 1 AS at FROM messages WHERE state = 'sending') AS due";
        let v: Option<i64> = on_db!(self, |p| sqlx::query_scalar(Q).fetch_one(p).await)?;
        Ok(v.map(from_ms))
    }

    /// The earliest instant an open notification becomes final.
    pub async fn next_final_at(&self) -> Result<Option<DateTime<Utc>>> {
        const Q: &str =
            "SELECT MIN(final_at) FROM notifications WHERE status IN ('open', 'escalated')";
        let v: Option<i64> = on_db!(self, |p| sqlx::query_scalar(Q).fetch_one(p).await)?;
        Ok(v.map(from_ms))
    }

    // ---- finalisation --------------------------------------------------

    /// Makes every notification past `final_at` final with the status rule
    /// of [`status_at`], and closes rounds with nothing left open. Returns
    /// how many notifications became final.
    pub async fn finalise_due(&self, now: DateTime<Utc>) -> Result<u64> {
        const DUE: &str = "SELECT n.id, n.target_at, n.deadline_at, n.final_at, n.acked_at, n.step, \
             EXISTS (SELECT 1 FROM outcomes o JOIN messages m ON m.outcome_id = o.id WHERE o.notification_id = n.id \
                     AND m.state IN ('accepted', 'delivered')) AS reached \
             FROM notifications n WHERE n.status IN ('open', 'escalated') AND n.final_at <= $1";
        const SET: &str = "UPDATE notifications SET status = $1, finalised_at = $2 \
             WHERE id = $3 AND status IN ('open', 'escalated')";
        const RETIRE_CODES: &str =
            "UPDATE outcomes SET code_live = 0 WHERE code_live = 1 AND token_expires_at <= $1";
        const CLOSE_ROUNDS: &str = "UPDATE rounds SET state = 'closed', closed_at = $1 WHERE state = 'fired' AND fanned_out_at IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.round_id = rounds.id AND n.status IN ('open', 'escalated'))";
        let done = on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            let due: Vec<DueNotification> = sqlx::query_as(DUE)
                .bind(ms(now))
                .fetch_all(&mut *tx)
                .await?;
            let mut done = 0;
            for n in due {
                let facts = NotificationFacts {
                    target_at: from_ms(n.target_at),
                    deadline_at: from_ms(n.deadline_at),
                    final_at: from_ms(n.final_at),
                    first_ack_at: n.acked_at.map(from_ms),
                    any_message_reached_provider: n.reached,
                    escalated: n.step > 1,
                };
                let status = status_at(&facts, now);
                done += sqlx::query(SET)
                    .bind(status.as_str())
                    .bind(ms(now))
                    .bind(n.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            sqlx::query(CLOSE_ROUNDS)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            // A code stays live (answerable by SMS) as long as its link: until
            // deadline + 24 h. Retiring it lets the code space be reused.
            sqlx::query(RETIRE_CODES)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done)
        })?;
        Ok(done)
    }

    /// Ends an exercise's open work at once: open notifications become
    /// `cancelled`, unsent messages `cancelled(endex)`, planned rounds `cancelled`.
    pub async fn cancel_exercise_work(&self, exercise: &str, now: DateTime<Utc>) -> Result<u64> {
        on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "UPDATE messages SET state = 'cancelled', state_reason = 'endex', payload = NULL, finished_at = $1, \
                 claimed_by = NULL, claim_expires_at = NULL \
                 WHERE state IN ('pending', 'sending') AND outcome_id IN \
                 (SELECT o.id FROM outcomes o JOIN notifications n ON n.id = o.notification_id JOIN rounds r ON r.id = n.round_id \
                  WHERE r.exercise_id = $2)",
            )
            .bind(ms(now)).bind(exercise).execute(&mut *tx).await?;
            let n = sqlx::query(
                "UPDATE notifications SET status = 'cancelled', finalised_at = $1 WHERE status IN ('open', 'escalated') \
                 AND round_id IN (SELECT id FROM rounds WHERE exercise_id = $2)",
            )
            .bind(ms(now)).bind(exercise).execute(&mut *tx).await?;
            sqlx::query("UPDATE rounds SET state = 'cancelled', state_reason = 'endex', closed_at = $1 WHERE exercise_id = $2 AND state IN ('planned', 'queued')")
                .bind(ms(now)).bind(exercise).execute(&mut *tx).await?;
            sqlx::query("UPDATE rounds SET state = 'closed', closed_at = $1 WHERE exercise_id = $2 AND state = 'fired'")
                .bind(ms(now)).bind(exercise).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(n.rows_affected())
        })
    }

    // ---- acknowledgements ----------------------------------------------

    pub async fn token_info(&self, token_digest: &str) -> Result<Option<TokenInfo>> {
        const Q: &str = "SELECT o.id AS outcome_id, o.notification_id, o.contact_id, o.role, o.code, o.token_expires_at, \
             n.department, r.label AS round_label, r.exercise_id, e.title AS exercise_title, o.acked_at AS outcome_acked_at \
             FROM outcomes o JOIN notifications n ON n.id = o.notification_id JOIN rounds r ON r.id = n.round_id \
             JOIN exercises e ON e.id = r.exercise_id WHERE o.token_digest = $1";
        Ok(on_db!(self, |p| sqlx::query_as(Q)
            .bind(token_digest)
            .fetch_optional(p)
            .await)?)
    }

    /// Records a link ack (`POST /a/{token}`) durably: every attempt is an
    /// inbound row; the first ack per contact and channel is an ack row; the
    /// department's first counting ack sets its ack time and cancels its
    /// unsent messages.
    pub async fn record_link_ack(
        &self,
        token_digest: &str,
        at: DateTime<Utc>,
        source: Option<&str>,
    ) -> Result<AckOutcome> {
        let info = self.token_info(token_digest).await?;
        let raw = format!("POST /a/{}…", &token_digest[..8.min(token_digest.len())]);
        let Some(info) = info else {
            self.record_inbound(
                at,
                "link",
                source,
                &raw,
                None,
                "refused",
                Some("unknown token"),
            )
            .await?;
            return Ok(AckOutcome::Unknown);
        };
        if ms(at) > info.token_expires_at {
            self.record_inbound(
                at,
                "link",
                source,
                &raw,
                Some(info.outcome_id),
                "refused",
                Some("token expired"),
            )
            .await?;
            return Ok(AckOutcome::Expired);
        }
        let counts = info.role != "observer";
        let result = on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            let inbound_id: i64 = sqlx::query_scalar(
                "INSERT INTO inbound (received_at, channel, source, raw, outcome_id, result, reason) \
                 VALUES ($1, 'link', $2, $3, $4, 'acked', NULL) RETURNING id",
            )
            .bind(ms(at)).bind(source).bind(&raw).bind(info.outcome_id)
            .fetch_one(&mut *tx).await?;
            // The unique key decides between simultaneous posts of one link
            // (PostgreSQL makes the second wait for the first to commit); a
            // check before the insert would let both through to a unique
            // violation, losing the second attempt's inbound row.
            let ack: Option<i64> = sqlx::query_scalar(
                "INSERT INTO acks (notification_id, outcome_id, contact_id, channel, acked_at, counts, inbound_id) \
                 VALUES ($1, $2, $3, 'link', $4, $5, $6) \
                 ON CONFLICT (notification_id, contact_id, channel) DO NOTHING RETURNING id",
            )
            .bind(info.notification_id).bind(info.outcome_id).bind(&info.contact_id).bind(ms(at))
            .bind(i64::from(counts)).bind(inbound_id)
            .fetch_optional(&mut *tx).await?;
            let result = if ack.is_some() { "acked" } else { "repeat" };
            if ack.is_none() {
                sqlx::query("UPDATE inbound SET result = 'repeat' WHERE id = $1")
                    .bind(inbound_id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE outcomes SET acked_at = COALESCE(acked_at, $1) WHERE id = $2")
                    .bind(ms(at))
                    .bind(info.outcome_id)
                    .execute(&mut *tx)
                    .await?;
                if counts {
                    // Within the deadline it is the department's ack; after it, a
                    // recorded fact that does not change the status.
                    sqlx::query(
                        "UPDATE notifications SET \
                           acked_at = CASE WHEN $1 <= deadline_at THEN $1 ELSE acked_at END, \
                           ack_after_deadline_at = CASE WHEN $1 > deadline_at THEN $1 ELSE ack_after_deadline_at END \
                         WHERE id = $2 AND acked_at IS NULL AND ack_after_deadline_at IS NULL",
                    )
                    .bind(ms(at)).bind(info.notification_id).execute(&mut *tx).await?;
                    sqlx::query(
                        "UPDATE messages SET state = 'cancelled', state_reason = 'acked', payload = NULL, finished_at = $1 \
                         WHERE outcome_id IN (SELECT id FROM outcomes WHERE notification_id = $2) AND state = 'pending'",
                    )
                    .bind(ms(at)).bind(info.notification_id).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(result)
        })?;
        if result == "repeat" {
            return Ok(AckOutcome::AlreadyAcknowledged {
                department: info.department,
                round: info.round_label,
            });
        }
        self.event(
            at,
            "ack.recorded",
            Some(&info.exercise_id),
            serde_json::json!({"round": info.round_label, "department": info.department, "contact": info.contact_id, "channel": "link", "counts": counts}),
        )
        .await?;
        Ok(AckOutcome::Acked {
            department: info.department,
            round: info.round_label,
            at,
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one column each")]
    pub async fn record_inbound(
        &self,
        at: DateTime<Utc>,
        channel: &str,
        source: Option<&str>,
        raw: &str,
        outcome_id: Option<i64>,
        result: &str,
        reason: Option<&str>,
    ) -> Result<i64> {
        const Q: &str = "INSERT INTO inbound (received_at, channel, source, raw, outcome_id, result, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
        Ok(on_db!(self, |p| sqlx::query_scalar(Q)
            .bind(ms(at))
            .bind(channel)
            .bind(source)
            .bind(raw)
            .bind(outcome_id)
            .bind(result)
            .bind(reason)
            .fetch_one(p)
            .await)?)
    }

    pub async fn inbound_count(&self) -> Result<i64> {
        Ok(on_db!(self, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbound"
        )
        .fetch_one(p)
        .await)?)
    }

    pub async fn ack_count(&self) -> Result<i64> {
        Ok(on_db!(self, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM acks"
        )
        .fetch_one(p)
        .await)?)
    }

    // ---- reports -------------------------------------------------------

    /// One row per notification of the exercise; its messages are counted
    /// in one grouped pass over the exercise's outcomes, not once per column.
    pub async fn report_rows(&self, exercise: &str) -> Result<Vec<ReportRow>> {
        const Q: &str = "SELECT r.id AS round_id, r.label AS round_label, r.state AS round_state, r.planned_at, r.fired_at, \
             n.id AS notification_id, n.department, n.status, n.step, n.acked_at, n.ack_after_deadline_at, \
             (SELECT a.channel FROM acks a WHERE a.notification_id = n.id AND a.counts = 1 ORDER BY a.acked_at, a.id LIMIT 1) AS ack_channel, \
             (SELECT a.contact_id FROM acks a WHERE a.notification_id = n.id AND a.counts = 1 ORDER BY a.acked_at, a.id LIMIT 1) AS ack_contact, \
             s.first_accepted_at, COALESCE(s.messages, 0) AS messages, COALESCE(s.messages_reached, 0) AS messages_reached \
             FROM rounds r JOIN notifications n ON n.round_id = r.id \
             LEFT JOIN (SELECT o.notification_id AS id, MIN(m.accepted_at) AS first_accepted_at, COUNT(*) AS messages, \
                        SUM(CASE WHEN m.state IN ('accepted', 'delivered') THEN 1 ELSE 0 END) AS messages_reached \
                        FROM rounds r2 JOIN notifications n2 ON n2.round_id = r2.id \
                        JOIN outcomes o ON o.notification_id = n2.id JOIN messages m ON m.outcome_id = o.id \
                        WHERE r2.exercise_id = $1 GROUP BY o.notification_id) s ON s.id = n.id \
             WHERE r.exercise_id = $1 ORDER BY r.planned_at, r.id, n.department";
        Ok(on_db!(self, |p| sqlx::query_as(Q)
            .bind(exercise)
            .fetch_all(p)
            .await)?)
    }

    /// Message counts per channel and state, for reports and tests.
    pub async fn message_states(&self, exercise: &str) -> Result<Vec<(String, String, i64)>> {
        const Q: &str = "SELECT m.channel, m.state, COUNT(*) FROM messages m JOIN notifications n ON n.id = m.notification_id \
             JOIN rounds r ON r.id = n.round_id WHERE r.exercise_id = $1 GROUP BY m.channel, m.state ORDER BY m.channel, m.state";
        Ok(on_db!(self, |p| sqlx::query_as(Q)
            .bind(exercise)
            .fetch_all(p)
            .await)?)
    }
}
