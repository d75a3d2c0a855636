//! `rollcall simulate`: a schedule's rounds in virtual time, against
//! in-process SMTP, Twilio-format SMS and webhook servers on loopback, with
//! simulated contacts who acknowledge through the real `POST /a/{token}`
//! endpoint after seeded random delays (some never).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::ack::{self, AckState};
use crate::channel::Channels;
use crate::clock::{ManualClock, SharedClock};
use crate::config::{Config, ProviderKind, Secrets, SmsProvider, Smtp, Tls};
use crate::dispatch::Dispatcher;
use crate::domain::codes::LinkToken;
use crate::domain::contacts::Roster;
use crate::domain::plan::Plan;
use crate::domain::schedule::Schedule;
use crate::engine::Engine;
use crate::hooks::SmsHooks;
use crate::sinks::{self, ReceivedMail, ReceivedSms, ReceivedWebhook, Recorder, TwilioFake};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub seed: u64,
    /// Share of contacts who answer at all.
    pub response_rate: f64,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            seed: 1,
            response_rate: 0.8,
        }
    }
}

/// What the simulated contacts did, for the summary line.
#[derive(Debug, Clone)]
pub struct SimulationOutcome {
    pub exercise: String,
    pub emails: usize,
    pub sms: usize,
    pub webhooks: usize,
    pub acks_posted: usize,
    pub virtual_span: TimeDelta,
    pub ended_at: DateTime<Utc>,
}

struct PendingAck {
    at: DateTime<Utc>,
    token: String,
}

/// Runs a schedule to the end in virtual time and returns what happened.
/// The run is stored in `store`, so `report` works on it afterwards.
pub async fn run(
    schedule: &Schedule,
    plan: &Plan,
    roster: &Roster,
    store: &Store,
    options: &SimulateOptions,
) -> anyhow::Result<SimulationOutcome> {
    let Some(first) = plan.rounds.first() else {
        anyhow::bail!("the schedule has no rounds to simulate");
    };
    let start = first.at - TimeDelta::minutes(1);
    let manual = ManualClock::new(start.min(schedule.window_start));
    let clock: SharedClock = manual.clone();

    // Loopback peers speaking the real protocols.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mails: Recorder<ReceivedMail> = Recorder::new();
    let texts: Recorder<ReceivedSms> = Recorder::new();
    let hooks: Recorder<ReceivedWebhook> = Recorder::new();
    let smtp_listener = bind().await?;
    let smtp_port = smtp_listener.local_addr()?.port();
    tokio::spawn(sinks::serve_smtp(smtp_listener, mails.clone(), stopped()));
    let sms_listener = bind().await?;
    let sms_addr = sms_listener.local_addr()?;
    let sid = "ACsimulated0000000000000000000000".to_owned();
    let fake = TwilioFake {
        account_sid: sid.clone(),
        auth_token: "simulated-token".into(),
        recorder: texts.clone(),
    };
    tokio::spawn(sinks::serve_router(
        sms_listener,
        sinks::twilio_router_with_clock(fake, Arc::clone(&clock)),
        stopped(),
    ));
    let hook_listener = bind().await?;
    let hook_addr = hook_listener.local_addr()?;
    tokio::spawn(sinks::serve_router(
        hook_listener,
        sinks::webhook_router(hooks.clone()),
        stopped(),
    ));
    let ack_listener = bind().await?;
    let ack_addr = ack_listener.local_addr()?;

    // Webhooks go to the loopback receiver, whatever URL the roster names.
    let mut roster = roster.clone();
    for c in roster
        .departments
        .iter_mut()
        .flat_map(|d| d.contacts.iter_mut())
    {
        if let Some(w) = c.webhook.as_mut() {
            let path = reqwest::Url::parse(&w.url)
                .map(|u| u.path().to_owned())
                .unwrap_or_else(|_| "/".into());
            w.url = format!("http://{hook_addr}{path}");
        }
    }
    let cfg = Config {
        database: String::new(),
        public_url: format!("http://{ack_addr}"),
        sms_from: Some("+85251234567".into()),
        sms_providers: vec![SmsProvider {
            name: "simulated".into(),
            kind: ProviderKind::Twilio {
                base_url: format!("http://{sms_addr}"),
                account_sid: sid,
                auth_token_env: "SIMULATED_TWILIO_TOKEN".into(),
                alternate_auth_token_env: None,
            },
            rate: None,
        }],
        smtp: Some(Smtp {
            host: "127.0.0.1".into(),
            port: smtp_port,
            tls: Tls::None,
            username: None,
            password_env: None,
            ca_file: None,
            pool: 4,
        }),
        ..Config::default()
    };
    let mut secret_names: Vec<String> = roster.secret_envs().map(|(_, e)| e.to_owned()).collect();
    secret_names.push(cfg.webhook_secret_env.clone());
    let secrets = Secrets::supplied(
        secret_names
            .into_iter()
            .map(|n| (n, "simulated-webhook-secret".to_owned()))
            .chain([(
                "SIMULATED_TWILIO_TOKEN".to_owned(),
                "simulated-token".to_owned(),
            )]),
    );
    let state = AckState {
        store: store.clone(),
        clock: Arc::clone(&clock),
        sms_hooks: SmsHooks::from_config(&cfg, &secrets),
    };
    tokio::spawn(ack::serve(ack_listener, state, stopped()));

    let now = clock.now();
    crate::engine::load_exercise(store, &roster, schedule, plan, now).await?;
    store
        .set_exercise_state(
            &schedule.id,
            &["loaded", "paused"],
            "running",
            now,
            Some("simulate"),
        )
        .await?;

    let channels = Arc::new(Channels::from_config(&cfg, secrets)?);
    let mut engine = Engine::with_seed(
        store.clone(),
        Arc::clone(&clock),
        crate::daemon::engine_settings(&cfg),
        options.seed,
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::clone(&clock),
        channels,
        crate::daemon::retry_policy(&cfg),
        "simulate".into(),
    );
    engine.hand_first_sends_to(dispatcher.handoff());
    let http = reqwest::Client::new();

    let mut pending: Vec<PendingAck> = Vec::new();
    let mut answered: HashSet<String> = HashSet::new();
    let (mut seen_mail, mut seen_hooks) = (0, 0);
    let mut outcome = SimulationOutcome {
        exercise: schedule.id.clone(),
        emails: 0,
        sms: 0,
        webhooks: 0,
        acks_posted: 0,
        virtual_span: TimeDelta::zero(),
        ended_at: start,
    };
    let deadline = schedule.ack.deadline();

    for _ in 0..100_000 {
        crate::daemon::step(&engine, &dispatcher).await?;
        let now = clock.now();
        // Every delivered email or webhook reaches a simulated person, who
        // decides once per token whether and when to answer.
        let mut tokens: Vec<String> = Vec::new();
        for m in mails.since(seen_mail) {
            tokens.extend(LinkToken::find_in(&m.body()).map(|t| t.as_str().to_owned()));
        }
        seen_mail = mails.len();
        for h in hooks.since(seen_hooks) {
            if let Some(t) = h
                .json()
                .and_then(|j| j.get("token").and_then(|t| t.as_str().map(str::to_owned)))
            {
                tokens.push(t);
            }
        }
        seen_hooks = hooks.len();
        for token in tokens {
            if !answered.insert(token.clone()) {
                continue;
            }
            // Each person's behaviour depends on the seed and their own token
            // only, not on the order concurrent sends happened to arrive in.
            let digest =
                crate::domain::codes::sha256_hex(format!("{}/{token}", options.seed).as_bytes());
            let mut rng = ChaCha8Rng::seed_from_u64(
                u64::from_str_radix(&digest[..16], 16).unwrap_or(options.seed),
            );
            if rng.random_bool(options.response_rate) {
                // Most answer within the target; a tail answers late or after the deadline.
                let secs =
                    (rng.random::<f64>().powi(2) * deadline.num_seconds() as f64 * 1.3) as i64 + 20;
                pending.push(PendingAck {
                    at: now + TimeDelta::seconds(secs),
                    token,
                });
            }
        }
        pending.sort_by_key(|p| p.at);
        while pending.first().is_some_and(|p| p.at <= now) {
            let p = pending.remove(0);
            let resp = http
                .post(format!("http://{ack_addr}/a/{}", p.token))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::GONE => {
                    outcome.acks_posted += 1
                }
                Ok(r) => anyhow::bail!("ack endpoint answered {}", r.status()),
                Err(e) => return Err(e).context("posting a simulated ack"),
            }
        }
        let mut next: Vec<DateTime<Utc>> = Vec::new();
        next.extend(crate::daemon::next_due(&engine, store).await?);
        next.extend(pending.first().map(|p| p.at));
        match next.into_iter().min() {
            Some(t) if t > now => manual.set(t),
            Some(_) => manual.advance(TimeDelta::seconds(1)),
            None => break,
        }
    }
    let _ = stop_tx.send(true);
    outcome.emails = mails.len();
    outcome.sms = texts.len();
    outcome.webhooks = hooks.len();
    outcome.virtual_span = clock.now() - start;
    outcome.ended_at = clock.now();
    Ok(outcome)
}

async fn bind() -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind("127.0.0.1:0").await
}
