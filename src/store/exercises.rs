//! Exercises and their rounds.

use chrono::{DateTime, Utc};

use super::{
    ExerciseRow, NewExercise, Result, RoundRow, Store, StoreError, WritePool, from_ms, ms,
};
use crate::domain::codes::sha256_hex;

/// What `exercise load` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadResult {
    Created,
    Unchanged,
    Replaced,
}

const EXERCISE_COLUMNS: &str = "id, title, schedule_json, schedule_digest, plan_json, roster_version, state, loaded_at, started_at, authorised_by, ended_at";
const ROUND_COLUMNS: &str = "id, exercise_id, label, slot, planned_at, fired_at, closed_at, state, state_reason, roster_version, departments, fanned_out_at";

/// [`ROUND_COLUMNS`] of the rounds table under `alias` in a join.
fn round_columns_of(alias: &str) -> String {
    ROUND_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Stores an exercise and its planned rounds. Loading the same file again
    /// changes nothing; a changed file replaces a plan that has not started,
    /// and is refused once the exercise has started.
    pub async fn save_exercise(
        &self,
        exercise: &NewExercise<'_>,
        now: DateTime<Utc>,
    ) -> Result<LoadResult> {
        let NewExercise {
            id,
            title,
            schedule_json,
            plan_json,
            roster_version,
            rounds,
        } = *exercise;
        let digest = sha256_hex(format!("{schedule_json}\n{plan_json}").as_bytes());
        let existing = self.exercise(id).await?;
        let result = match &existing {
            Some(e) if e.schedule_digest == digest => return Ok(LoadResult::Unchanged),
            Some(e) if e.state != "loaded" => {
                return Err(StoreError::Conflict(format!(
                    "exercise `{id}` has started ({}); its plan cannot change. Load the changed file under a new exercise id",
                    e.state
                )));
            }
            Some(_) => LoadResult::Replaced,
            None => LoadResult::Created,
        };
        on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            if result == LoadResult::Replaced {
                sqlx::query("DELETE FROM rounds WHERE exercise_id = $1 AND state = 'planned'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE exercises SET title = $1, schedule_json = $2, schedule_digest = $3, roster_version = $4, loaded_at = $5, plan_json = $6 WHERE id = $7")
                    .bind(title).bind(schedule_json).bind(&digest).bind(roster_version).bind(ms(now)).bind(plan_json).bind(id)
                    .execute(&mut *tx).await?;
            } else {
                sqlx::query("INSERT INTO exercises (id, title, schedule_json, schedule_digest, roster_version, state, loaded_at, plan_json) VALUES ($1, $2, $3, $4, $5, 'loaded', $6, $7)")
                    .bind(id).bind(title).bind(schedule_json).bind(&digest).bind(roster_version).bind(ms(now)).bind(plan_json)
                    .execute(&mut *tx).await?;
            }
            for r in rounds {
                sqlx::query("INSERT INTO rounds (exercise_id, label, slot, planned_at, state, departments) VALUES ($1, $2, $3, $4, 'planned', $5)")
                    .bind(id).bind(&r.label).bind(&r.slot).bind(ms(r.planned_at)).bind(&r.departments)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })?;
        self.event(now, "exercise.loaded", Some(id), serde_json::json!({"digest": digest, "rounds": rounds.len(), "roster_version": roster_version})).await?;
        Ok(result)
    }

    pub async fn exercise(&self, id: &str) -> Result<Option<ExerciseRow>> {
        let q = format!("SELECT {EXERCISE_COLUMNS} FROM exercises WHERE id = $1");
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(p)
            .await)?)
    }

    pub async fn exercises(&self) -> Result<Vec<ExerciseRow>> {
        let q = format!("SELECT {EXERCISE_COLUMNS} FROM exercises ORDER BY loaded_at, id");
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_all(p)
            .await)?)
    }

    /// Moves an exercise between `loaded`, `running`, `paused` and `ended`.
    /// Returns false when the exercise was not in one of `from`.
    pub async fn set_exercise_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now: DateTime<Utc>,
        authorised_by: Option<&str>,
    ) -> Result<bool> {
        let Some(current) = self.exercise(id).await? else {
            return Err(StoreError::NotFound(format!("exercise `{id}`")));
        };
        if !from.contains(&current.state.as_str()) {
            return Ok(false);
        }
        const Q: &str = "UPDATE exercises SET state = $1, \
             started_at = CASE WHEN $1 = 'running' AND started_at IS NULL THEN $2 ELSE started_at END, \
             ended_at = CASE WHEN $1 = 'ended' THEN $2 ELSE ended_at END, \
             authorised_by = COALESCE($3, authorised_by) \
             WHERE id = $4 AND state = $5";
        let done = on_db!(self, |p| sqlx::query(Q)
            .bind(to)
            .bind(ms(now))
            .bind(authorised_by)
            .bind(id)
            .bind(&current.state)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        if done == 1 {
            self.event(
                now,
                &format!("exercise.{to}"),
                Some(id),
                serde_json::json!({"from": current.state, "authorised_by": authorised_by}),
            )
            .await?;
        }
        Ok(done == 1)
    }

    pub async fn rounds(&self, exercise: &str) -> Result<Vec<RoundRow>> {
        let q = format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE exercise_id = $1 ORDER BY planned_at, id"
        );
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(exercise)
            .fetch_all(p)
            .await)?)
    }

    /// Rounds of running exercises whose fan-out was interrupted after its
    /// first part (a crash, a lost connection): fired, with departments
    /// still to be written.
    pub async fn unfinished_fanouts(&self) -> Result<Vec<RoundRow>> {
        let q = format!(
            "SELECT {} FROM rounds r JOIN exercises e ON e.id = r.exercise_id \
             WHERE e.state = 'running' AND r.state = 'fired' AND r.fired_at IS NOT NULL AND r.fanned_out_at IS NULL \
             ORDER BY r.id",
            round_columns_of("r")
        );
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_all(p)
            .await)?)
    }

    /// The departments a round's fan-out has written so far.
    pub async fn round_departments(&self, round_id: i64) -> Result<Vec<String>> {
        const Q: &str = "SELECT department FROM notifications WHERE round_id = $1 ORDER BY id";
        Ok(on_db!(self, |p| sqlx::query_scalar(Q)
            .bind(round_id)
            .fetch_all(p)
            .await)?)
    }

    /// Planned rounds of running exercises that are due at `now`.
    pub async fn due_rounds(&self, now: DateTime<Utc>) -> Result<Vec<RoundRow>> {
        let q = format!(
            "SELECT {} FROM rounds r JOIN exercises e ON e.id = r.exercise_id \
             WHERE e.state = 'running' AND r.state IN ('planned', 'queued') AND r.planned_at <= $1 \
             ORDER BY r.planned_at, r.id",
            round_columns_of("r")
        );
        Ok(on_db!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(ms(now))
            .fetch_all(p)
            .await)?)
    }

    /// The instant of the next planned round of a running exercise.
    pub async fn next_planned_round_at(&self) -> Result<Option<DateTime<Utc>>> {
        const Q: &str = "SELECT MIN(r.planned_at) FROM rounds r JOIN exercises e ON e.id = r.exercise_id \
             WHERE e.state = 'running' AND r.state IN ('planned', 'queued')";
        let v: Option<i64> = on_db!(self, |p| sqlx::query_scalar(Q).fetch_one(p).await)?;
        Ok(v.map(from_ms))
    }

    /// Inserts an ad-hoc round (`A01`, `A02`, ...) to be fanned out now, or
    /// when the daemon next runs if `queued`. `departments` narrows its
    /// targets and is kept on the row, so a queued round remembers them.
    pub async fn insert_adhoc_round(
        &self,
        exercise: &str,
        now: DateTime<Utc>,
        queued: bool,
        departments: Option<&[String]>,
    ) -> Result<RoundRow> {
        let state = if queued { "queued" } else { "planned" };
        let departments = departments.map(|d| d.join(","));
        on_db!(self, |p| {
            let mut tx = p.begin_write().await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM rounds WHERE exercise_id = $1 AND label LIKE 'A%'",
            )
            .bind(exercise)
            .fetch_one(&mut *tx)
            .await?;
            let label = format!("A{:02}", n + 1);
            let slot = format!("adhoc{}@{}", n + 1, now.timestamp());
            let id: i64 = sqlx::query_scalar("INSERT INTO rounds (exercise_id, label, slot, planned_at, state, departments) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
                .bind(exercise).bind(&label).bind(&slot).bind(ms(now)).bind(state).bind(&departments)
                .fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(RoundRow {
                id,
                exercise_id: exercise.to_owned(),
                label,
                slot,
                planned_at: ms(now),
                fired_at: None,
                closed_at: None,
                state: state.to_owned(),
                state_reason: None,
                roster_version: None,
                departments,
                fanned_out_at: None,
            })
        })
    }

    /// Marks a planned round skipped (missed beyond grace, or endex).
    pub async fn skip_round(
        &self,
        round_id: i64,
        state: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        const Q: &str = "UPDATE rounds SET state = $1, state_reason = $2, closed_at = $3 WHERE id = $4 AND state IN ('planned', 'queued')";
        let done = on_db!(self, |p| sqlx::query(Q)
            .bind(state)
            .bind(reason)
            .bind(ms(now))
            .bind(round_id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }
}
