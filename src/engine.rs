//! What a round does: fan-out to every targeted department, escalation
//! steps, finalisation. `tick` is public so tests drive it with a manual
//! clock; the daemon calls it in a thin loop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::clock::SharedClock;
use crate::config::SenderMode;
use crate::dispatch::Handoff;
use crate::domain::codes::{AckCode, LinkToken};
use crate::domain::contacts::{Contact, Department, Roster};
use crate::domain::plan::Plan;
use crate::domain::render::{Alert, Names, Payload, RawJson, TextKind};
use crate::domain::schedule::{Schedule, Step};
use crate::domain::{ChannelKind, Lang};
use crate::store::{
    ClaimedMessage, Clockwork, FanoutClaim, FanoutPart, NewMessage, NewNotification, NewOutcome,
    OpenNotification, RoundRow, Store, StoreError, from_ms, message_count,
};

mod notices;
pub use notices::{NOTICE_EVENTS, send_control_notices};

/// Links stay usable this long after the deadline, so a late ack is still
/// recorded (as `ack_after_deadline_at`).
pub const TOKEN_LIFETIME_AFTER_DEADLINE: TimeDelta = TimeDelta::hours(24);
/// A round to fewer departments is rendered on one thread: starting a
/// thread costs about what rendering a few departments' messages does. A
/// round to all 70 departments of the sample roster is rendered in parallel.
const PARALLEL_RENDER_FROM: usize = 64;
/// A fan-out written for a dispatcher goes in parts, each committed on its
/// own, so the dispatcher sends the first departments' messages while the
/// rest are written. By default the first part holds at least this many
/// messages (a pass's fill: about what it sends while the next part
/// commits); each part after it twice the one before, up to
/// [`FANOUT_PART_MAX`]. A round of seventy departments is one or two parts.
pub const FANOUT_FIRST_PART: usize = 512;
/// Messages in a fan-out's later parts at most.
pub const FANOUT_PART_MAX: usize = 8_192;

/// A contact a step notifies, with the code and link token drawn for it.
type Draw<'d> = (&'d Contact, AckCode, LinkToken);

/// The webhook payload (README, "Webhook payload"), its fields in the
/// order they are written.
#[derive(serde::Serialize)]
struct WebhookBody<'a> {
    ack_url: &'a str,
    code: &'a str,
    deadline: String,
    department: &'a str,
    drill: bool,
    exercise: &'a str,
    lang: &'a str,
    notification: String,
    round: &'a str,
    schema: u32,
    text: String,
    token: &'a str,
}

/// A webhook body as JSON text (serialising plain strings cannot fail).
fn webhook_body(body: &WebhookBody<'_>) -> RawJson {
    RawJson::of(body).expect("a webhook body serialises")
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("exercise `{0}` not found")]
    NoExercise(String),
    #[error("stored schedule of exercise `{0}` cannot be read: {1}")]
    BadSchedule(String, String),
    #[error("unknown department(s) {0}")]
    UnknownDepartments(String),
    #[error("could not draw unique ack codes after several tries")]
    CodeSpace,
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub public_url: String,
    pub sms_mode: SenderMode,
    /// A round missed by less than this (daemon down, queued) still fires
    /// late; an older one is recorded `skipped` (`delivery.grace`).
    pub grace: TimeDelta,
    /// Messages in the first part of a fan-out written for a dispatcher
    /// ([`FANOUT_FIRST_PART`]); each later part holds twice the one before,
    /// up to [`FANOUT_PART_MAX`].
    pub fanout_first_part: usize,
}

/// What one tick did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub rounds_fired: Vec<String>,
    /// Rounds whose interrupted fan-out this tick completed.
    pub fanouts_resumed: Vec<String>,
    pub rounds_skipped: Vec<String>,
    pub steps_sent: usize,
    pub finalised: u64,
}

pub struct Engine {
    store: Store,
    clock: SharedClock,
    settings: EngineSettings,
    rng: Mutex<ChaCha8Rng>,
    /// Roster versions never change once stored: each is read (and its
    /// addresses re-validated) once per engine, not once per fan-out.
    rosters: Mutex<HashMap<i64, Arc<Roster>>>,
    /// The last event turned into control notices; `None` until the first
    /// pass reads it from the store.
    notice_cursor: Mutex<Option<i64>>,
    /// Where fan-outs leave their messages, written already claimed; without
    /// one they are written `pending` for any dispatcher to claim.
    handoff: Option<Arc<Handoff>>,
}

impl Engine {
    pub fn new(store: Store, clock: SharedClock, settings: EngineSettings) -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Engine {
            store,
            clock,
            settings,
            rng: Mutex::new(ChaCha8Rng::from_seed(seed)),
            rosters: Mutex::default(),
            notice_cursor: Mutex::default(),
            handoff: None,
        }
    }

    /// Codes and tokens from a seeded generator, for reproducible simulations.
    pub fn with_seed(
        store: Store,
        clock: SharedClock,
        settings: EngineSettings,
        seed: u64,
    ) -> Self {
        Engine {
            store,
            clock,
            settings,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            rosters: Mutex::default(),
            notice_cursor: Mutex::default(),
            handoff: None,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fans rounds out in parts, with their messages already claimed for
    /// the dispatcher `handoff` belongs to, which sends them without
    /// claiming them again: part by part when its pass runs beside the tick
    /// ([`crate::dispatch::Dispatcher::dispatch_beside`], the daemon's
    /// loop), else on its next pass. Only for a dispatcher that runs beside
    /// or after this engine's ticks: the claims lapse after
    /// [`crate::dispatch::CLAIM_TTL`] and the messages are then claimed
    /// again by whichever pass comes first.
    pub fn hand_first_sends_to(&mut self, handoff: Arc<Handoff>) {
        self.handoff = Some(handoff);
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn roster(&self, version: i64) -> Result<Arc<Roster>, EngineError> {
        let cached = self
            .rosters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&version)
            .cloned();
        if let Some(r) = cached {
            return Ok(r);
        }
        let roster = Arc::new(self.store.roster(version).await?);
        self.rosters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version, Arc::clone(&roster));
        Ok(roster)
    }

    /// Reads the current roster ahead of the first round, as the daemon
    /// does when it starts: a round of thousands of contacts otherwise pays
    /// for parsing it (tens of milliseconds) between T0 and its first send.
    pub async fn prepare(&self) -> Result<(), EngineError> {
        if let Some(version) = self.store.latest_roster_version().await? {
            self.roster(version).await?;
        }
        Ok(())
    }

    async fn schedule_of(&self, exercise: &str) -> Result<Schedule, EngineError> {
        let row = self
            .store
            .exercise(exercise)
            .await?
            .ok_or_else(|| EngineError::NoExercise(exercise.to_owned()))?;
        serde_json::from_str(&row.schedule_json)
            .map_err(|e| EngineError::BadSchedule(exercise.to_owned(), e.to_string()))
    }

    /// One pass: fire due rounds, send due escalation steps, finalise.
    #[tracing::instrument(name = "engine.tick", skip(self))]
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let mut report = TickReport::default();
        // A fan-out interrupted part-way is completed before anything new
        // fires: its round is already fired, its T0 already past.
        for round in self.store.unfinished_fanouts().await? {
            self.resume_fanout(&round).await?;
            report
                .fanouts_resumed
                .push(format!("{}/{}", round.exercise_id, round.label));
        }
        for round in self.store.due_rounds(self.now()).await? {
            let name = format!("{}/{}", round.exercise_id, round.label);
            let late = self.now() - from_ms(round.planned_at);
            if late > self.settings.grace {
                if self.skip_late(&round, late).await? {
                    report.rounds_skipped.push(name);
                }
                continue;
            }
            // A planned round keeps its planned targets; a queued ad-hoc round
            // the departments it was fired for.
            let only = round.listed_departments();
            match self.fire(&round, only.as_deref()).await {
                Ok(true) => report.rounds_fired.push(name),
                Ok(false) => {}
                // The roster changed under a queued round: record why it did not fire
                // rather than retrying it forever.
                Err(EngineError::UnknownDepartments(codes)) => {
                    let reason = format!("no targeted department is in the roster: {codes}");
                    if self
                        .store
                        .skip_round(round.id, "skipped", &reason, self.now())
                        .await?
                    {
                        tracing::warn!(round = %name, %reason, "round skipped");
                        report.rounds_skipped.push(name);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        report.steps_sent = self.escalate().await?;
        report.finalised = self.store.finalise_due(self.now()).await?;
        Ok(report)
    }

    /// Records a round that was due longer ago than `delivery.grace` as
    /// `skipped`, with how late it was. Returns false if it had moved on.
    async fn skip_late(&self, round: &RoundRow, late: TimeDelta) -> Result<bool, EngineError> {
        let now = self.now();
        let reason = format!(
            "missed by {} (grace {}); the daemon was not running at its time",
            crate::domain::format_duration(late),
            crate::domain::format_duration(self.settings.grace)
        );
        if !self
            .store
            .skip_round(round.id, "skipped", &reason, now)
            .await?
        {
            return Ok(false);
        }
        self.store
            .event(
                now,
                "round.skipped",
                Some(&round.exercise_id),
                serde_json::json!({
                    "round": round.label,
                    "planned_at": round.planned_at,
                    "lateness_ms": late.num_milliseconds(),
                    "reason": reason,
                }),
            )
            .await?;
        tracing::warn!(exercise.id = %round.exercise_id, round = %round.label, %reason, "round skipped");
        Ok(true)
    }

    /// The next instant the engine has something to do, if any.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let mut next: Vec<DateTime<Utc>> = Vec::new();
        next.extend(self.store.next_planned_round_at().await?);
        next.extend(self.store.next_final_at().await?);
        next.extend(self.next_step_at().await?);
        Ok(next.into_iter().min())
    }

    /// Fans a round out at T0 = now. `departments` narrows the targets (an
    /// ad-hoc round for some departments). Returns false if it had fired.
    #[tracing::instrument(name = "engine.round", skip(self, round), fields(exercise.id = %round.exercise_id, round = %round.label))]
    pub async fn fire(
        &self,
        round: &RoundRow,
        departments: Option<&[String]>,
    ) -> Result<bool, EngineError> {
        let schedule = self.schedule_of(&round.exercise_id).await?;
        let version = self.store.latest_roster_version().await?.ok_or_else(|| {
            EngineError::Store(StoreError::NotFound(
                "roster (run `rollcall contacts load`)".into(),
            ))
        })?;
        let roster = self.roster(version).await?;
        let targets = self.targets(&schedule, &roster, departments, &round.label)?;
        let now = self.now();
        let clock = clockwork(&schedule, now);
        let codes: Vec<&str> = targets.iter().map(|d| d.code.as_str()).collect();
        let departments = codes.join(",");
        for _attempt in 0..5 {
            let mut rest = self.first_step_notifications(&schedule, &targets, &round.label, clock);
            let parts = Parts {
                round,
                schedule: &schedule,
                roster: &roster,
                clock,
                round_messages: message_count(&rest),
            };
            // Without a dispatcher to send beside the fan-out, one part.
            let first = match self.handoff {
                Some(_) => take_part(&mut rest, self.settings.fanout_first_part),
                None => std::mem::take(&mut rest),
            };
            let part = parts.part(now, &first, rest.is_empty());
            let claim = self.fanout_claim(now);
            match self
                .store
                .fire_round_part(version, &departments, &part, claim.as_ref())
                .await
            {
                Ok(None) => return Ok(false),
                Ok(Some(claimed)) => {
                    self.hand_over(claimed, claim.as_ref());
                    self.store
                        .event(
                            now,
                            "round.fired",
                            Some(&round.exercise_id),
                            serde_json::json!({
                                "round": round.label,
                                "planned_at": round.planned_at,
                                "lateness_ms": (now.timestamp_millis() - round.planned_at).max(0),
                                "departments": codes,
                                "roster_version": version,
                            }),
                        )
                        .await?;
                    tracing::info!(departments = targets.len(), "round fired");
                    if !rest.is_empty() {
                        let size = (self.settings.fanout_first_part * 2).min(FANOUT_PART_MAX);
                        self.write_parts(&parts, rest, size).await?;
                    }
                    return Ok(true);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::CodeSpace)
    }

    /// The claim a fan-out written at `now` takes for this engine's
    /// dispatcher, if it has one.
    fn fanout_claim(&self, now: DateTime<Utc>) -> Option<FanoutClaim<'_>> {
        self.handoff.as_deref().map(|h| FanoutClaim {
            worker: h.worker(),
            until: h.claim_until(now),
        })
    }

    /// Leaves messages a fan-out wrote claimed with `claim` to the
    /// dispatcher.
    fn hand_over(&self, claimed: Vec<ClaimedMessage>, claim: Option<&FanoutClaim<'_>>) {
        if let (Some(handoff), Some(claim)) = (&self.handoff, claim) {
            handoff.hand_over(claimed, claim.until);
        }
    }

    /// Writes the rest of a fired round's fan-out, `rest`, in parts of
    /// `size` messages and more, the last one marking the fan-out complete.
    /// At least one part is written, so a fan-out with nothing left to
    /// write is marked complete too. A clash of ack codes draws new codes
    /// for that part's departments only.
    async fn write_parts(
        &self,
        parts: &Parts<'_>,
        mut rest: Vec<NewNotification>,
        mut size: usize,
    ) -> Result<(), EngineError> {
        loop {
            let mut notifications = take_part(&mut rest, size);
            size = (size * 2).min(FANOUT_PART_MAX);
            let mut attempts = 0;
            loop {
                let now = self.now();
                let part = parts.part(
                    now.max(parts.clock.fired_at),
                    &notifications,
                    rest.is_empty(),
                );
                let claim = self.fanout_claim(now);
                match self.store.continue_fanout(&part, claim.as_ref()).await {
                    Ok(Some(claimed)) => {
                        self.hand_over(claimed, claim.as_ref());
                        break;
                    }
                    // Completed (or closed) meanwhile by someone else.
                    Ok(None) => return Ok(()),
                    Err(StoreError::Conflict(_)) if attempts < 5 => {
                        attempts += 1;
                        let targets: Vec<&Department> = notifications
                            .iter()
                            .filter_map(|n| parts.roster.department(&n.department))
                            .collect();
                        notifications = self.first_step_notifications(
                            parts.schedule,
                            &targets,
                            &parts.round.label,
                            parts.clock,
                        );
                    }
                    Err(StoreError::Conflict(_)) => return Err(EngineError::CodeSpace),
                    Err(e) => return Err(e.into()),
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Completes a fan-out interrupted after its first part: the round's
    /// departments with no notification yet are written with the round's
    /// own T0 (and deadline), from the roster it fired with.
    async fn resume_fanout(&self, round: &RoundRow) -> Result<(), EngineError> {
        let schedule = self.schedule_of(&round.exercise_id).await?;
        let (Some(version), Some(fired_at)) = (round.roster_version, round.fired_at) else {
            return Err(EngineError::Store(StoreError::NotFound(format!(
                "the roster version or T0 of fired round {}/{}",
                round.exercise_id, round.label
            ))));
        };
        let roster = self.roster(version).await?;
        let listed = round.listed_departments().unwrap_or_default();
        let written: HashSet<String> = self
            .store
            .round_departments(round.id)
            .await?
            .into_iter()
            .collect();
        let mut missing = self.targets(&schedule, &roster, Some(&listed), &round.label)?;
        missing.retain(|d| !written.contains(d.code.as_str()));
        let clock = clockwork(&schedule, from_ms(fired_at));
        let rest = self.first_step_notifications(&schedule, &missing, &round.label, clock);
        let codes: Vec<&str> = missing.iter().map(|d| d.code.as_str()).collect();
        tracing::warn!(exercise.id = %round.exercise_id, round = %round.label, departments = codes.len(), "completing a fan-out interrupted part-way");
        self.store
            .event(
                self.now(),
                "round.fanout_resumed",
                Some(&round.exercise_id),
                serde_json::json!({
                    "round": round.label,
                    "fired_at": fired_at,
                    "departments": codes,
                }),
            )
            .await?;
        let parts = Parts {
            round,
            schedule: &schedule,
            roster: &roster,
            clock,
            round_messages: message_count(&rest),
        };
        self.write_parts(&parts, rest, FANOUT_PART_MAX).await
    }

    /// A round's departments: the list it was planned or fired with (those
    /// still in the roster), else the schedule's targets, a `sample` drawn
    /// from the plan seed and the round label.
    fn targets<'r>(
        &self,
        schedule: &Schedule,
        roster: &'r Roster,
        only: Option<&[String]>,
        round_label: &str,
    ) -> Result<Vec<&'r Department>, EngineError> {
        if let Some(only) = only {
            let gone: Vec<&str> = only
                .iter()
                .filter(|c| roster.department(c).is_none())
                .map(String::as_str)
                .collect();
            let kept: Vec<&Department> = roster
                .departments
                .iter()
                .filter(|d| only.iter().any(|c| c == d.code.as_str()))
                .collect();
            if kept.is_empty() {
                return Err(EngineError::UnknownDepartments(if gone.is_empty() {
                    "(none planned)".into()
                } else {
                    gone.join(", ")
                }));
            }
            if !gone.is_empty() {
                tracing::warn!(round = round_label, departments = %gone.join(", "), "planned departments no longer in the roster are left out");
            }
            return Ok(kept);
        }
        let stream = crate::domain::codes::sha256_hex(round_label.as_bytes());
        let stream = u64::from_str_radix(&stream[..16], 16).unwrap_or(0);
        Ok(crate::domain::plan::targets(
            schedule,
            roster,
            crate::domain::plan::plan_seed(schedule),
            stream,
        ))
    }

    /// New outcomes (contacts with codes, tokens and messages) for one step.
    /// `drawn` holds the codes drawn so far for the same write; each new
    /// code differs from them.
    #[expect(clippy::too_many_arguments, reason = "one step of one department")]
    fn outcomes_for_step(
        &self,
        schedule: &Schedule,
        dept: &Department,
        step_index: usize,
        round_label: &str,
        clock: Clockwork,
        already: &HashSet<String>,
        drawn: &mut HashSet<AckCode>,
    ) -> Vec<NewOutcome> {
        let Some(step) = schedule.escalation.get(step_index) else {
            return Vec::new();
        };
        let draws = self.draw_step(step, dept, already, drawn);
        self.render_step(schedule, dept, step, step_index, round_label, clock, &draws)
    }

    /// The contacts `step` notifies, each with a fresh code (differing from
    /// those in `drawn`) and link token. Drawing is kept apart from
    /// rendering so that a round's codes come from the generator in one
    /// fixed order while its messages are rendered in parallel.
    fn draw_step<'d>(
        &self,
        step: &Step,
        dept: &'d Department,
        already: &HashSet<String>,
        drawn: &mut HashSet<AckCode>,
    ) -> Vec<Draw<'d>> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        dept.contacts
            .iter()
            .filter(|c| step.notify.contains(&c.role) && !already.contains(c.id.as_str()))
            .map(|contact| {
                let code = loop {
                    let code = AckCode::generate(&mut *rng);
                    if drawn.insert(code.clone()) {
                        break code;
                    }
                };
                (contact, code, LinkToken::generate(&mut *rng))
            })
            .collect()
    }

    /// The outcomes of drawn contacts, with their messages rendered.
    #[expect(clippy::too_many_arguments, reason = "one step of one department")]
    fn render_step(
        &self,
        schedule: &Schedule,
        dept: &Department,
        step: &Step,
        step_index: usize,
        round_label: &str,
        clock: Clockwork,
        draws: &[Draw<'_>],
    ) -> Vec<NewOutcome> {
        draws
            .iter()
            .map(|(contact, code, token)| NewOutcome {
                contact_id: contact.id.to_string(),
                role: contact.role.as_str().to_owned(),
                code: code.to_string(),
                token_digest: token.digest(),
                token_expires_at: clock.deadline_at + TOKEN_LIFETIME_AFTER_DEADLINE,
                step: step_index as i64 + 1,
                messages: self.messages_for(
                    schedule,
                    dept,
                    contact,
                    &step.via,
                    round_label,
                    code,
                    token,
                    clock,
                ),
            })
            .collect()
    }

    /// A round's first-step notifications: codes drawn in department order,
    /// messages rendered on every core (a round of thousands of contacts
    /// renders tens of thousands of texts, the larger part of its firing
    /// tick after the store's write).
    fn first_step_notifications(
        &self,
        schedule: &Schedule,
        targets: &[&Department],
        round_label: &str,
        clock: Clockwork,
    ) -> Vec<NewNotification> {
        // A round of thousands of contacts draws thousands of codes at
        // once; they must differ among themselves, not only from the
        // codes already live (10,000 draws from 31^5 codes repeat one
        // with a probability of about 83%).
        let mut drawn = HashSet::new();
        let none = HashSet::new();
        let step = schedule.escalation.first();
        let draws: Vec<_> = targets
            .iter()
            .map(|dept| {
                let draws = step.map_or_else(Vec::new, |step| {
                    self.draw_step(step, dept, &none, &mut drawn)
                });
                (*dept, draws)
            })
            .collect();
        let render = |part: &[(&Department, Vec<Draw<'_>>)]| {
            part.iter()
                .map(|(dept, draws)| NewNotification {
                    department: dept.code.to_string(),
                    outcomes: step.map_or_else(Vec::new, |step| {
                        self.render_step(schedule, dept, step, 0, round_label, clock, draws)
                    }),
                })
                .collect::<Vec<_>>()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(4);
        if threads < 2 || draws.len() < PARALLEL_RENDER_FROM {
            return render(&draws);
        }
        std::thread::scope(|scope| {
            let mut parts = draws.chunks(draws.len().div_ceil(threads));
            // This thread renders the first part while the others run.
            let first = parts.next().unwrap_or_default();
            let others: Vec<_> = parts.map(|part| scope.spawn(|| render(part))).collect();
            let mut out = render(first);
            for other in others {
                match other.join() {
                    Ok(rendered) => out.extend(rendered),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    }

    #[expect(clippy::too_many_arguments, reason = "everything a message says")]
    fn messages_for(
        &self,
        schedule: &Schedule,
        dept: &Department,
        contact: &Contact,
        via: &[ChannelKind],
        round_label: &str,
        code: &AckCode,
        token: &LinkToken,
        clock: Clockwork,
    ) -> Vec<NewMessage> {
        let ack_url = format!("{}/a/{}", self.settings.public_url, token.as_str());
        let alert = Alert {
            marker: &schedule.marker,
            lang: contact.lang,
            exercise_title: &schedule.title,
            round: round_label,
            department: dept.code.as_str(),
            code: code.as_str(),
            ack_url: &ack_url,
            deadline_at: clock.deadline_at,
            tz: schedule.tz(),
            sms_two_way: self.settings.sms_mode == SenderMode::TwoWay,
        };
        let names = Names::of(&schedule.id, dept, Some(contact), contact.lang);
        // The exercise's templates, else the built-in ones. A template that
        // passed `check` but fails on these values is logged and replaced by
        // the built-in text: the message still goes out, marked.
        let text = |kind: TextKind| {
            let rendered = schedule.templates.render(kind, &alert, &names);
            if let Some(why) = &rendered.fallback {
                tracing::warn!(
                    exercise.id = %schedule.id,
                    department.code = %dept.code,
                    round = round_label,
                    error = %why,
                    "the exercise's template failed; the built-in text is sent instead"
                );
            }
            rendered.text
        };
        let mut out = Vec::new();
        for channel in via {
            let (address, payload) = match channel {
                ChannelKind::Sms => match &contact.sms {
                    Some(p) => (
                        p.as_str().to_owned(),
                        Payload::Sms {
                            to: p.as_str().to_owned(),
                            text: text(TextKind::sms(alert.sms_two_way)),
                            deadline_at: clock.deadline_at,
                        },
                    ),
                    None => continue,
                },
                ChannelKind::Email => match &contact.email {
                    Some(e) => (
                        e.as_str().to_owned(),
                        Payload::Email {
                            to: e.as_str().to_owned(),
                            subject: text(TextKind::EmailSubject),
                            text: text(TextKind::EmailBody),
                        },
                    ),
                    None => continue,
                },
                ChannelKind::Webhook => match &contact.webhook {
                    Some(w) => (
                        w.url.clone(),
                        Payload::Webhook {
                            url: w.url.clone(),
                            secret_env: w.secret_env.clone(),
                            body: webhook_body(&WebhookBody {
                                ack_url: &ack_url,
                                code: code.as_str(),
                                deadline: clock
                                    .deadline_at
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                department: dept.code.as_str(),
                                drill: true,
                                exercise: &schedule.id,
                                lang: match contact.lang {
                                    Lang::En => "en",
                                    Lang::Zh => "zh",
                                },
                                notification: format!(
                                    "{}/{}/{}",
                                    schedule.id, round_label, dept.code
                                ),
                                round: round_label,
                                schema: 1,
                                text: text(TextKind::WebhookText),
                                token: token.as_str(),
                            }),
                        },
                    ),
                    None => continue,
                },
            };
            out.push(NewMessage {
                channel: channel.as_str().to_owned(),
                address,
                payload: serde_json::to_string(&payload).unwrap_or_default(),
                state: "pending",
                expires_at: clock.deadline_at,
            });
        }
        out
    }

    /// Unacknowledged open notifications, each with its exercise's schedule
    /// (read once per exercise).
    async fn unacked(&self) -> Result<Vec<(OpenNotification, Arc<Schedule>)>, EngineError> {
        let mut schedules: HashMap<String, Arc<Schedule>> = HashMap::new();
        let mut out = Vec::new();
        for n in self.store.open_notifications().await? {
            if n.acked_at.is_some() {
                continue;
            }
            let schedule = match schedules.get(&n.exercise_id) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = Arc::new(self.schedule_of(&n.exercise_id).await?);
                    schedules.insert(n.exercise_id.clone(), Arc::clone(&s));
                    s
                }
            };
            out.push((n, schedule));
        }
        Ok(out)
    }

    async fn next_step_at(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        Ok(self
            .unacked()
            .await?
            .iter()
            .filter_map(|(n, s)| step_due_at(s, from_ms(n.fired_at), n.step as usize))
            .min())
    }

    /// Sends every escalation step that is due for an unacknowledged notification.
    async fn escalate(&self) -> Result<usize, EngineError> {
        let now = self.now();
        let mut sent = 0;
        for (n, schedule) in self.unacked().await? {
            let schedule = schedule.as_ref();
            let fired_at = from_ms(n.fired_at);
            // Steps are numbered from 1; `n.step` is the last one sent.
            let mut step_index = n.step as usize;
            while let Some(due) = step_due_at(schedule, fired_at, step_index) {
                if due > now {
                    break;
                }
                let roster = self.roster(n.roster_version).await?;
                let Some(dept) = roster.department(&n.department) else {
                    break;
                };
                let already: HashSet<String> = self
                    .store
                    .notified_contacts(n.id)
                    .await?
                    .into_iter()
                    .collect();
                let clock = clockwork(schedule, fired_at);
                let mut done = false;
                for _attempt in 0..5 {
                    let outcomes = self.outcomes_for_step(
                        schedule,
                        dept,
                        step_index,
                        &n.round_label,
                        clock,
                        &already,
                        &mut HashSet::new(),
                    );
                    match self
                        .store
                        .add_step(n.id, step_index as i64 + 1, &outcomes, now)
                        .await
                    {
                        Ok(_) => {
                            done = true;
                            break;
                        }
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if !done {
                    return Err(EngineError::CodeSpace);
                }
                self.store
                    .event(now, "notification.escalated", Some(&n.exercise_id), serde_json::json!({
                        "round": n.round_label, "department": n.department, "step": step_index + 1,
                    }))
                    .await?;
                sent += 1;
                step_index += 1;
            }
        }
        Ok(sent)
    }
}

/// Stores an exercise as `exercise load` does: the roster as a version, the
/// schedule, its plan, and the plan's rounds with their targets.
/// Returns what the store did and the roster version.
pub async fn load_exercise(
    store: &Store,
    roster: &Roster,
    schedule: &Schedule,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<(crate::store::LoadResult, i64), EngineError> {
    let version = store.save_roster(roster, now).await?;
    let rounds: Vec<crate::store::NewRound> = plan
        .rounds
        .iter()
        .map(|r| crate::store::NewRound {
            label: r.label.clone(),
            slot: r.slot.clone(),
            planned_at: r.at,
            departments: Some(r.targets.join(",")),
        })
        .collect();
    let bad = |e: serde_json::Error| EngineError::BadSchedule(schedule.id.clone(), e.to_string());
    let json = serde_json::to_string(schedule).map_err(bad)?;
    let plan_json = serde_json::to_string(plan).map_err(bad)?;
    let result = store
        .save_exercise(
            &crate::store::NewExercise {
                id: &schedule.id,
                title: &schedule.title,
                schedule_json: &json,
                plan_json: &plan_json,
                roster_version: version,
                rounds: &rounds,
            },
            now,
        )
        .await?;
    Ok((result, version))
}

/// When step `index` (0-based) of a notification fired at `fired_at` is due,
/// if the schedule has it and it falls before the deadline.
fn step_due_at(
    schedule: &Schedule,
    fired_at: DateTime<Utc>,
    index: usize,
) -> Option<DateTime<Utc>> {
    let step = schedule.escalation.get(index)?;
    let due = fired_at + TimeDelta::seconds(step.after_secs);
    (due < fired_at + schedule.ack.deadline()).then_some(due)
}

/// What every part of one round's fan-out shares.
struct Parts<'a> {
    round: &'a RoundRow,
    schedule: &'a Schedule,
    roster: &'a Roster,
    clock: Clockwork,
    /// Messages in the whole fan-out.
    round_messages: usize,
}

impl Parts<'_> {
    /// The part of `notifications`, written at `now`; `last` completes the
    /// fan-out.
    fn part<'n>(
        &self,
        now: DateTime<Utc>,
        notifications: &'n [NewNotification],
        last: bool,
    ) -> FanoutPart<'n> {
        FanoutPart {
            round_id: self.round.id,
            clock: self.clock,
            now,
            notifications,
            last,
            round_messages: self.round_messages,
        }
    }
}

/// Takes whole departments off the front of `rest` until they hold at least
/// `messages` messages (or `rest` is empty).
fn take_part(rest: &mut Vec<NewNotification>, messages: usize) -> Vec<NewNotification> {
    let mut held = 0;
    let mut end = 0;
    while end < rest.len() && held < messages {
        held += message_count(std::slice::from_ref(&rest[end]));
        end += 1;
    }
    rest.drain(..end).collect()
}

/// The instants a notification fired at `fired_at` is measured against.
fn clockwork(schedule: &Schedule, fired_at: DateTime<Utc>) -> Clockwork {
    let deadline_at = fired_at + schedule.ack.deadline();
    Clockwork {
        fired_at,
        target_at: fired_at + schedule.ack.target(),
        deadline_at,
        final_at: deadline_at + schedule.ack.settle(),
    }
}
