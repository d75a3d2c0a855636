//! Delivering one round of 30,000 messages (targets: at least half the
//! throughput of a bare client loop measured in the same run, and never
//! below 2,000 messages/s on SQLite).
//!
//! One exercise whose one round targets 2,000 departments of 5 contacts,
//! every contact with SMS, email and webhook; its only escalation step
//! notifies all five on all three channels, so the fan-out writes 30,000
//! outbox messages. The store is SQLite in a temporary directory under
//! `target/tmp` (WAL, `synchronous=FULL`, as `rollcall run` opens it) and,
//! when `ROLLCALL_TEST_POSTGRES_URL` is set, also a fresh PostgreSQL
//! database per run. The providers are the loopback sinks of
//! `rollcall::sinks` (the SMTP server, the Twilio Messages API and the
//! webhook receiver `simulate` uses), with no SMS rate limit.
//!
//! Each run gets a fresh store and fresh sinks. Its **delivery** time runs
//! from the tick that fires the round (`Engine::tick` on a manual clock set
//! to the round's instant) until `Dispatcher::dispatch_pending` has
//! recorded every message; the bench then checks that all 30,000 are
//! `accepted` and that each sink received its 10,000.
//!
//! The **baseline**, in the same run against the same sinks: a bare client
//! loop with the channels' client setup — a `reqwest` client built as
//! `Channels` builds it, and SMTP connections opened as the email channel
//! opens them (our own socket with `TCP_NODELAY`, handed to lettre), at
//! most `email.smtp.pool` of them — sending the same 30,000 messages
//! (taken from a fired round's outbox, formatted before the clock starts)
//! with as many in flight as the dispatcher has, and no store and no logic.
//!
//! Run: `cargo bench --bench deliver`. It exits non-zero when a target is
//! missed. `ROLLCALL_BENCH_QUICK=1` makes two runs per store and skips the
//! stages, for trying a change; `ROLLCALL_BENCH_STAGES=1` times only the
//! store stages, for trying a change to the store;
//! `ROLLCALL_BENCH_STORE=sqlite` (or `postgres`) benches that store alone.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use rollcall::channel::email::message_id_header;
use rollcall::channel::{Channels, signature_header};
use rollcall::clock::{ManualClock, SharedClock};
use rollcall::config::{Config, ProviderKind, Secrets, SmsProvider, Smtp, Tls};
use rollcall::daemon::{engine_settings, retry_policy};
use rollcall::dispatch::{CONCURRENCY, Dispatcher};
use rollcall::domain::contacts::Role;
use rollcall::domain::plan::Plan;
use rollcall::domain::render::{Payload, email_html};
use rollcall::domain::schedule::{RoundSpec, Schedule, Step};
use rollcall::domain::{ChannelKind, EmailAddress};
use rollcall::engine::Engine;
use rollcall::sinks::{self, ReceivedMail, ReceivedSms, ReceivedWebhook, Recorder, TwilioFake};
use rollcall::store::{
    Claim, Clockwork, Finished, NewMessage, NewNotification, NewOutcome, SendResult, Store,
};
use support::{Human, Samples};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

const DEPARTMENTS: usize = 2_000;
const CONTACTS_PER_DEPARTMENT: usize = 5;
const CHANNELS: usize = 3;
const MESSAGES: usize = DEPARTMENTS * CONTACTS_PER_DEPARTMENT * CHANNELS;
/// The configuration's default `email.smtp.pool`: connections to the relay.
const SMTP_POOL: u32 = 4;
/// Measured runs per store, after one warm-up run.
const RUNS: usize = 7;
/// A store's runs stop early (after at least `MIN_RUNS`) past this.
const WALL_LIMIT: Duration = Duration::from_secs(300);
const MIN_RUNS: usize = 3;
/// Delivery must reach this share of the bare loop's throughput.
const MIN_SHARE_OF_BASELINE: f64 = 0.5;
/// ... and never fall below this many messages a second on SQLite.
const MIN_RATE_SQLITE: f64 = 2_000.0;

const TWILIO_SID: &str = "ACbench00000000000000000000000000";
const TWILIO_TOKEN: &str = "bench-twilio-token";
const TWILIO_TOKEN_ENV: &str = "BENCH_TWILIO_TOKEN";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const SMS_FROM: &str = "+85251234567";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ok = runtime.block_on(bench());
    if !ok {
        eprintln!("deliver: a target was MISSED (see above)");
        std::process::exit(1);
    }
}

/// Where a run's store lives.
#[derive(Clone)]
enum Backend {
    Sqlite,
    Postgres { base: String },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// A fresh store for one run; dropped (and its database removed) after.
struct FreshStore {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<(String, String)>,
}

impl FreshStore {
    async fn open(backend: &Backend, run: usize) -> FreshStore {
        match backend {
            Backend::Sqlite => {
                // On the project's disk (target/tmp), where a real database would live.
                let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                    .expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                let store = Store::connect(&url).await.expect("the store opens");
                FreshStore {
                    store,
                    _dir: Some(dir),
                    pg_database: None,
                }
            }
            Backend::Postgres { base } => {
                let name = format!("rollcall_bench_deliver_{}_{run}", std::process::id());
                pg_admin(
                    base,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await;
                pg_admin(base, &format!("CREATE DATABASE {name}")).await;
                let mut url = reqwest::Url::parse(base).expect("a postgres url");
                url.set_path(&format!("/{name}"));
                let store = Store::connect(url.as_str()).await.expect("the store opens");
                store.migrate().await.expect("the schema migrates");
                FreshStore {
                    store,
                    _dir: None,
                    pg_database: Some((base.clone(), name)),
                }
            }
        }
    }

    async fn close(self) {
        self.store.close().await;
        if let Some((base, name)) = &self.pg_database {
            pg_admin(
                base,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    }
}

async fn pg_admin(base: &str, sql: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to postgres");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The loopback sinks of one run.
struct Sinks {
    smtp_port: u16,
    twilio: SocketAddr,
    webhooks: SocketAddr,
    mails: Recorder<ReceivedMail>,
    texts: Recorder<ReceivedSms>,
    hooks: Recorder<ReceivedWebhook>,
    stop: watch::Sender<bool>,
}

impl Sinks {
    async fn start() -> Sinks {
        let (stop, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let mails = Recorder::new();
        let texts = Recorder::new();
        let hooks = Recorder::new();
        let smtp = bind().await.expect("bind smtp");
        let smtp_port = smtp.local_addr().expect("addr").port();
        tokio::spawn(sinks::serve_smtp(smtp, mails.clone(), stopped()));
        let twilio_listener = bind().await.expect("bind twilio");
        let twilio = twilio_listener.local_addr().expect("addr");
        tokio::spawn(sinks::serve_router(
            twilio_listener,
            sinks::twilio_router(TwilioFake {
                account_sid: TWILIO_SID.into(),
                auth_token: TWILIO_TOKEN.into(),
                recorder: texts.clone(),
            }),
            stopped(),
        ));
        let hook_listener = bind().await.expect("bind webhooks");
        let webhooks = hook_listener.local_addr().expect("addr");
        tokio::spawn(sinks::serve_router(
            hook_listener,
            sinks::webhook_router(hooks.clone()),
            stopped(),
        ));
        Sinks {
            smtp_port,
            twilio,
            webhooks,
            mails,
            texts,
            hooks,
            stop,
        }
    }

    fn counts(&self) -> [usize; 3] {
        [self.texts.len(), self.mails.len(), self.hooks.len()]
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The providers as an operator would configure them for these sinks, with
/// no SMS rate limit.
fn config(sinks: &Sinks) -> Config {
    Config {
        sms_from: Some(SMS_FROM.into()),
        sms_providers: vec![SmsProvider {
            name: "bench".into(),
            kind: ProviderKind::Twilio {
                base_url: format!("http://{}", sinks.twilio),
                account_sid: TWILIO_SID.into(),
                auth_token_env: TWILIO_TOKEN_ENV.into(),
                alternate_auth_token_env: None,
            },
            rate: None,
        }],
        smtp: Some(Smtp {
            host: "127.0.0.1".into(),
            port: sinks.smtp_port,
            tls: Tls::None,
            username: None,
            password_env: None,
            ca_file: None,
            pool: SMTP_POOL,
        }),
        email_reply_to: Some(EmailAddress::parse("acks@rollcall.example").expect("address")),
        ..Config::default()
    }
}

fn secrets(cfg: &Config) -> Secrets {
    Secrets::supplied([
        (TWILIO_TOKEN_ENV.to_owned(), TWILIO_TOKEN.to_owned()),
        (cfg.webhook_secret_env.clone(), WEBHOOK_SECRET.to_owned()),
    ])
}

/// The exercise: one round on a Saturday evening, every department, all
/// five contacts at once on all three channels.
fn exercise(webhook_base: &str) -> (rollcall::domain::contacts::Roster, Schedule, Plan) {
    let roster =
        support::fixtures::reachable_roster(DEPARTMENTS, CONTACTS_PER_DEPARTMENT, webhook_base);
    let day = NaiveDate::from_ymd_opt(2027, 6, 5).expect("a Saturday");
    let mut schedule = support::fixtures::schedule(
        "bench-deliver",
        day,
        2,
        vec![RoundSpec::At {
            local: day.and_time(NaiveTime::from_hms_opt(21, 30, 0).expect("valid time")),
        }],
    );
    schedule.escalation = vec![Step {
        after_secs: 0,
        notify: vec![Role::Primary, Role::Alternate, Role::Duty],
        via: vec![ChannelKind::Sms, ChannelKind::Email, ChannelKind::Webhook],
    }];
    let plan = support::fixtures::plan_of(&schedule, &roster);
    assert_eq!(plan.rounds.len(), 1, "one round");
    assert_eq!(
        plan.rounds[0].targets.len(),
        DEPARTMENTS,
        "every department"
    );
    (roster, schedule, plan)
}

/// One run's store, engine and dispatcher, with the exercise loaded and
/// started and the clock just before the round.
struct Rig {
    fresh: FreshStore,
    clock: Arc<ManualClock>,
    engine: Engine,
    dispatcher: Dispatcher,
    round_at: DateTime<Utc>,
    exercise: String,
}

async fn rig(backend: &Backend, run: usize, sinks: &Sinks) -> Rig {
    let fresh = FreshStore::open(backend, run).await;
    let store = fresh.store.clone();
    let (roster, schedule, plan) = exercise(&format!("http://{}", sinks.webhooks));
    let start = plan.rounds[0].at - TimeDelta::minutes(1);
    support::fixtures::load_and_start(&store, &roster, &schedule, &plan, start).await;
    let clock = ManualClock::new(start);
    let shared: SharedClock = clock.clone();
    let cfg = config(sinks);
    let channels = Channels::from_config(&cfg, secrets(&cfg)).expect("channels");
    let mut engine = Engine::with_seed(
        store.clone(),
        Arc::clone(&shared),
        engine_settings(&cfg),
        run as u64,
    );
    // As `rollcall run` does when it starts.
    engine.prepare().await.expect("the roster loads");
    let dispatcher = Dispatcher::new(
        store,
        shared,
        Arc::new(channels),
        retry_policy(&cfg),
        "bench".into(),
    );
    // As the daemon does: the round's messages are written already claimed
    // for this dispatcher.
    engine.hand_first_sends_to(dispatcher.handoff());
    Rig {
        fresh,
        clock,
        engine,
        dispatcher,
        round_at: plan.rounds[0].at,
        exercise: schedule.id,
    }
}

/// What one delivery took.
struct Delivery {
    /// From the firing tick's start until every message is recorded.
    total: Duration,
    /// The firing tick alone (fan-out of 30,000 messages).
    fire: Duration,
    /// CPU time the process used meanwhile (all threads, sinks included).
    cpu: Option<Duration>,
}

/// CPU time used since `began`.
fn cpu_used(began: Option<Duration>) -> Option<Duration> {
    Some(support::cpu_time()?.saturating_sub(began?))
}

/// A CPU time for the run lines.
fn cpu_text(cpu: Option<Duration>) -> String {
    cpu.map_or_else(|| "cpu n/a".into(), |c| format!("cpu {}", Human(c)))
}

/// Fires the round and dispatches until the outbox is empty; checks that
/// every message was accepted and reached its sink.
async fn deliver(rig: &Rig, sinks: &Sinks) -> Result<Delivery, String> {
    let before = sinks.counts();
    rig.clock.set(rig.round_at);
    let cpu_began = support::cpu_time();
    let began = Instant::now();
    // As the daemon does: the pass runs beside the tick and sends each part
    // of the fan-out as it is committed.
    let tick = async {
        let report = rig.engine.tick().await;
        (report, began.elapsed())
    };
    let ((report, fire), first) = rig.dispatcher.dispatch_beside(tick).await;
    let report = report.map_err(|e| e.to_string())?;
    if report.rounds_fired.len() != 1 {
        return Err(format!("the round did not fire: {report:?}"));
    }
    let mut handled = first.map_err(|e| e.to_string())?;
    loop {
        let n = rig
            .dispatcher
            .dispatch_pending()
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        handled += n;
    }
    let total = began.elapsed();
    let cpu = cpu_used(cpu_began);
    let states = rig
        .fresh
        .store
        .message_states(&rig.exercise)
        .await
        .map_err(|e| e.to_string())?;
    let accepted: i64 = states
        .iter()
        .filter(|(_, state, _)| state == "accepted")
        .map(|(_, _, n)| n)
        .sum();
    if accepted != MESSAGES as i64 || handled < MESSAGES {
        return Err(format!(
            "{accepted} of {MESSAGES} accepted after {handled} sends: {states:?}"
        ));
    }
    let after = sinks.counts();
    let per_channel = MESSAGES / CHANNELS;
    if after.iter().zip(before).any(|(a, b)| a - b != per_channel) {
        return Err(format!(
            "the sinks received {after:?} (before {before:?}), not {per_channel} each"
        ));
    }
    Ok(Delivery { total, fire, cpu })
}

// ---- the bare client loop ---------------------------------------------

/// One message as it goes on the wire, formatted before the clock starts.
enum Wire {
    Sms(String),
    Email {
        /// The parts the email channel builds a message from: its id (for
        /// the Message-ID), the recipient, the rendered subject, text and
        /// HTML.
        id: i64,
        to: Mailbox,
        subject: String,
        text: String,
        html: String,
        /// The same message already formatted, for the replay loop.
        envelope: Envelope,
        bytes: Vec<u8>,
    },
    Webhook {
        path: String,
        key: String,
        signature: String,
        body: Vec<u8>,
    },
}

/// The rendered messages of a fired round, in the order the outbox hands
/// them out.
async fn outbox_payloads(store: &Store) -> Vec<(i64, Payload)> {
    const Q: &str = "SELECT id, payload FROM messages WHERE state IN ('pending', 'sending') ORDER BY due_at, id";
    let rows: Vec<(i64, String)> = match store {
        Store::Sqlite(p) => sqlx::query_as(Q).fetch_all(p).await,
        Store::Postgres(p) => sqlx::query_as(Q).fetch_all(p).await,
    }
    .expect("outbox rows");
    rows.into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).expect("a payload")))
        .collect()
}

/// What the channels would put on the wire for each payload: the Twilio
/// form, the formatted email (text and HTML, as the email channel builds
/// it), the signed webhook body.
fn wires(payloads: &[(i64, Payload)], cfg: &Config, now: DateTime<Utc>) -> Vec<Wire> {
    let parts = MailParts::new(cfg);
    let callback = format!("{}/hooks/sms/bench/status", cfg.public_url);
    payloads
        .iter()
        .map(|(id, payload)| match payload {
            Payload::Sms {
                to,
                text,
                deadline_at,
            } => {
                let validity = (*deadline_at - now).num_seconds().clamp(1, 36_000);
                Wire::Sms(
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("To", to)
                        .append_pair("From", SMS_FROM)
                        .append_pair("Body", text)
                        .append_pair("ValidityPeriod", &validity.to_string())
                        .append_pair("StatusCallback", &callback)
                        .finish(),
                )
            }
            Payload::Email { to, subject, text } => {
                let to: Mailbox = to.parse().expect("an address");
                let html = email_html(text);
                let message = lettre_message(
                    &parts,
                    *id,
                    to.clone(),
                    subject,
                    text.clone(),
                    html.clone(),
                    now,
                );
                Wire::Email {
                    id: *id,
                    to,
                    subject: subject.clone(),
                    text: text.clone(),
                    html,
                    envelope: message.envelope().clone(),
                    bytes: message.formatted(),
                }
            }
            Payload::Webhook { url, body, .. } => {
                let body = body.get().as_bytes().to_vec();
                Wire::Webhook {
                    path: reqwest::Url::parse(url).expect("a url").path().to_owned(),
                    key: id.to_string(),
                    signature: signature_header(WEBHOOK_SECRET.as_bytes(), now.timestamp(), &body),
                    body,
                }
            }
        })
        .collect()
}

/// What every email of the round shares: sender, reply address and the
/// Message-ID domain, as the email channel takes them from the config.
#[derive(Clone)]
struct MailParts {
    from: Mailbox,
    reply_to: Mailbox,
    domain: String,
}

impl MailParts {
    fn new(cfg: &Config) -> MailParts {
        let from: Mailbox = cfg.email_from.parse().expect("email.from");
        let reply_to: Mailbox = cfg
            .email_reply_to
            .as_ref()
            .expect("reply_to")
            .as_str()
            .parse()
            .expect("reply_to");
        let domain = from.email.domain().to_owned();
        MailParts {
            from,
            reply_to,
            domain,
        }
    }
}

/// One email built with lettre's message builder, with the headers and
/// parts the email channel gives it.
fn lettre_message(
    parts: &MailParts,
    id: i64,
    to: Mailbox,
    subject: &str,
    text: String,
    html: String,
    now: DateTime<Utc>,
) -> Message {
    Message::builder()
        .date(std::time::SystemTime::from(now))
        .from(parts.from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(message_id_header(id, &parts.domain)))
        .reply_to(parts.reply_to.clone())
        .multipart(MultiPart::alternative_plain_html(text, html))
        .expect("an email")
}

/// How the bare loop hands an email to lettre.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mail {
    /// Built with lettre's message builder at each send, from the rendered
    /// subject, text and HTML: the work any program sending these emails
    /// through lettre does. The baseline of the target.
    Built,
    /// Replayed as bytes formatted before the clock started: the wire
    /// alone, a floor no sender of fresh emails can reach, reported beside.
    Replayed,
}

/// The bare clients: `reqwest` as `Channels` builds it, and a pool of SMTP
/// connections opened as the email channel opens them.
struct Bare {
    http: reqwest::Client,
    sms_url: String,
    webhook_base: String,
    smtp_port: u16,
    smtp_slots: Semaphore,
    smtp_idle: Mutex<Vec<AsyncSmtpConnection>>,
    mail: Mail,
    parts: MailParts,
    now: DateTime<Utc>,
}

impl Bare {
    fn new(sinks: &Sinks, mail: Mail, now: DateTime<Utc>) -> Bare {
        rollcall::channel::install_crypto_provider();
        Bare {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
            sms_url: format!(
                "http://{}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                sinks.twilio
            ),
            webhook_base: format!("http://{}", sinks.webhooks),
            smtp_port: sinks.smtp_port,
            smtp_slots: Semaphore::new(SMTP_POOL as usize),
            smtp_idle: Mutex::new(Vec::new()),
            mail,
            parts: MailParts::new(&config(sinks)),
            now,
        }
    }

    async fn send(&self, wire: &Wire) -> Result<(), String> {
        match wire {
            Wire::Sms(form) => {
                let resp = self
                    .http
                    .post(&self.sms_url)
                    .basic_auth(TWILIO_SID, Some(TWILIO_TOKEN))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = resp.status().is_success();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                ok.then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&body).into_owned())
            }
            Wire::Webhook {
                path,
                key,
                signature,
                body,
            } => {
                let resp = self
                    .http
                    .post(format!("{}{path}", self.webhook_base))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .header("rollcall-signature", signature)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = resp.status().is_success();
                let _ = resp.bytes().await;
                ok.then_some(()).ok_or_else(|| "webhook refused".into())
            }
            Wire::Email {
                id,
                to,
                subject,
                text,
                html,
                envelope,
                bytes,
            } => {
                let built = (self.mail == Mail::Built).then(|| {
                    let message = lettre_message(
                        &self.parts,
                        *id,
                        to.clone(),
                        subject,
                        text.clone(),
                        html.clone(),
                        self.now,
                    );
                    (message.envelope().clone(), message.formatted())
                });
                let (envelope, bytes) = match &built {
                    Some((envelope, bytes)) => (envelope, bytes),
                    None => (envelope, bytes),
                };
                let _slot = self.smtp_slots.acquire().await.map_err(|e| e.to_string())?;
                let pooled = self.smtp_idle.lock().expect("pool").pop();
                let mut conn = match pooled {
                    Some(conn) => conn,
                    None => {
                        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.smtp_port))
                            .await
                            .map_err(|e| e.to_string())?;
                        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                        AsyncSmtpConnection::connect_with_transport(
                            Box::new(tcp),
                            &ClientId::default(),
                        )
                        .await
                        .map_err(|e| e.to_string())?
                    }
                };
                conn.send(envelope, bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                self.smtp_idle.lock().expect("pool").push(conn);
                Ok(())
            }
        }
    }
}

/// Sends every wire message with `CONCURRENCY` in flight; returns the time
/// and the CPU time used.
async fn bare_loop(
    sinks: &Sinks,
    wires: &Arc<Vec<Wire>>,
    mail: Mail,
    now: DateTime<Utc>,
) -> Result<(Duration, Option<Duration>), String> {
    let before = sinks.counts();
    let bare = Arc::new(Bare::new(sinks, mail, now));
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_began = support::cpu_time();
    let began = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (bare, wires, next) = (Arc::clone(&bare), Arc::clone(wires), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(wire) = wires.get(i) else {
                    return Ok::<(), String>(());
                };
                bare.send(wire).await?;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    let took = began.elapsed();
    let cpu = cpu_used(cpu_began);
    let after = sinks.counts();
    let per_channel = MESSAGES / CHANNELS;
    if after.iter().zip(before).any(|(a, b)| a - b != per_channel) {
        return Err(format!(
            "the sinks received {after:?} (before {before:?}), not {per_channel} each"
        ));
    }
    Ok((took, cpu))
}

// ---- the bench ----------------------------------------------------------

/// `ROLLCALL_BENCH_QUICK=1`: two measured runs and no stages, for trying a
/// change; the figures in BENCHMARKS.md come from full runs.
fn quick() -> bool {
    std::env::var("ROLLCALL_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// `ROLLCALL_BENCH_STAGES=1`: only the store stages, no delivery runs and
/// no verdict.
fn stages_only() -> bool {
    std::env::var("ROLLCALL_BENCH_STAGES").is_ok_and(|v| v == "1")
}

fn rate(d: Duration) -> f64 {
    MESSAGES as f64 / d.as_secs_f64()
}

/// The figures of one store.
struct Outcome {
    backend: &'static str,
    total: Samples,
    fire: Samples,
    after_fire: Samples,
    bare: Samples,
    replay: Samples,
    /// The store's parts of a delivery, each timed alone.
    stages: Vec<Samples>,
}

async fn bench() -> bool {
    let mut backends = vec![Backend::Sqlite];
    match std::env::var("ROLLCALL_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => backends.push(Backend::Postgres { base }),
        _ => println!("postgres: skipped (ROLLCALL_TEST_POSTGRES_URL is not set)"),
    }
    if let Ok(only) = std::env::var("ROLLCALL_BENCH_STORE") {
        backends.retain(|b| b.name() == only);
        if backends.is_empty() {
            println!("ROLLCALL_BENCH_STORE={only}: no such store to bench (sqlite, postgres)");
            return false;
        }
    }
    println!(
        "{DEPARTMENTS} departments x {CONTACTS_PER_DEPARTMENT} contacts x {CHANNELS} channels = \
         {MESSAGES} messages a round; {CONCURRENCY} sends in flight, {SMTP_POOL} SMTP connections"
    );
    let mut ok = true;
    let mut outcomes = Vec::new();
    for backend in &backends {
        match bench_backend(backend).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                println!("{}: FAILED: {e}", backend.name());
                ok = false;
            }
        }
    }
    for o in &outcomes {
        ok &= verdicts(o);
    }
    ok
}

async fn bench_backend(backend: &Backend) -> Result<Outcome, String> {
    let name = backend.name();
    // The messages the bare loop sends: a round fired once, untimed, and
    // read back from its outbox.
    let payloads = {
        let sinks = Sinks::start().await;
        let rig = rig(backend, RUNS + 1, &sinks).await;
        rig.clock.set(rig.round_at);
        rig.engine.tick().await.map_err(|e| e.to_string())?;
        let payloads = outbox_payloads(&rig.fresh.store).await;
        rig.fresh.close().await;
        payloads
    };
    if payloads.len() != MESSAGES {
        return Err(format!("the round wrote {} messages", payloads.len()));
    }
    let mut total = Samples::new(format!("{name}: fire -> all {MESSAGES} accepted"));
    let mut fire = Samples::new(format!("{name}:   of which the firing tick"));
    let mut after_fire = Samples::new(format!("{name}:   after the firing tick"));
    let mut bare = Samples::new(format!("{name}: baseline: bare client loop"));
    let mut replay = Samples::new(format!("{name}:   bare loop replaying formatted emails"));
    let started = Instant::now();
    // Run 0 warms up and is not counted.
    let runs = if quick() { 2 } else { RUNS };
    for run in (0..=runs).filter(|_| !stages_only()) {
        if run > MIN_RUNS && started.elapsed() > WALL_LIMIT {
            println!(
                "{name}: stopped after {} runs: the {} s wall limit was reached",
                run - 1,
                WALL_LIMIT.as_secs()
            );
            break;
        }
        let sinks = Sinks::start().await;
        let rig = rig(backend, run, &sinks).await;
        let wires = Arc::new(wires(&payloads, &config(&sinks), rig.round_at));
        let now = rig.round_at;
        // Alternate which goes first, so neither always runs on a warmer
        // machine.
        let (delivery, (bare_took, bare_cpu), (replay_took, _)) = if run % 2 == 0 {
            let d = deliver(&rig, &sinks).await?;
            let b = bare_loop(&sinks, &wires, Mail::Built, now).await?;
            (d, b, bare_loop(&sinks, &wires, Mail::Replayed, now).await?)
        } else {
            let r = bare_loop(&sinks, &wires, Mail::Replayed, now).await?;
            let b = bare_loop(&sinks, &wires, Mail::Built, now).await?;
            (deliver(&rig, &sinks).await?, b, r)
        };
        rig.fresh.close().await;
        println!(
            "{name} run {run}{}: delivery {} ({:.0}/s; firing tick {}; {}), bare loop {} ({:.0}/s; {}), replay {} ({:.0}/s)",
            if run == 0 { " (warm-up)" } else { "" },
            Human(delivery.total),
            rate(delivery.total),
            Human(delivery.fire),
            cpu_text(delivery.cpu),
            Human(bare_took),
            rate(bare_took),
            cpu_text(bare_cpu),
            Human(replay_took),
            rate(replay_took),
        );
        if run > 0 {
            total.push(delivery.total);
            fire.push(delivery.fire);
            after_fire.push(delivery.total - delivery.fire);
            bare.push(bare_took);
            replay.push(replay_took);
        }
    }
    let stages = if quick() && !stages_only() {
        Vec::new()
    } else {
        stages(backend, &payloads).await?
    };
    Ok(Outcome {
        backend: name,
        total,
        fire,
        after_fire,
        bare,
        replay,
        stages,
    })
}

/// How many times each store stage is timed alone.
const STAGE_RUNS: usize = 3;
/// Messages a stage's recording transaction carries: about what one of the
/// dispatcher's writes carries under this load.
const STAGE_BATCH: usize = 256;

/// The store's share of a delivery, each part timed alone on a fresh store:
/// the fan-out's writes (`Store::fire_round` with the round's messages
/// already rendered), claiming all 30,000 in one statement, and recording
/// them `accepted`, `STAGE_BATCH` a transaction.
async fn stages(backend: &Backend, payloads: &[(i64, Payload)]) -> Result<Vec<Samples>, String> {
    let name = backend.name();
    let mut fan_out = Samples::new(format!("{name}:   store: fire_round alone"));
    let mut claim = Samples::new(format!("{name}:   store: claim {MESSAGES} at once"));
    let mut record = Samples::new(format!(
        "{name}:   store: record {MESSAGES}, {STAGE_BATCH} a transaction"
    ));
    let err = |e: rollcall::store::StoreError| e.to_string();
    for run in 0..STAGE_RUNS {
        let sinks = Sinks::start().await;
        let rig = rig(backend, 2 * RUNS + 2 + run, &sinks).await;
        let store = &rig.fresh.store;
        let round = store
            .rounds(&rig.exercise)
            .await
            .map_err(err)?
            .into_iter()
            .next()
            .ok_or("no round")?;
        let version = store
            .latest_roster_version()
            .await
            .map_err(err)?
            .ok_or("no roster")?;
        let t = rig.round_at;
        let clock = Clockwork {
            fired_at: t,
            target_at: t + TimeDelta::minutes(30),
            deadline_at: t + TimeDelta::minutes(60),
            final_at: t + TimeDelta::minutes(61),
        };
        let notifications = prepared_round(payloads, clock);
        let began = Instant::now();
        if !store
            .fire_round(round.id, version, clock, &notifications)
            .await
            .map_err(err)?
        {
            return Err("the prepared round did not fire".into());
        }
        fan_out.push(began.elapsed());
        let began = Instant::now();
        let claimed = store
            .claim_messages("bench", t, t + TimeDelta::minutes(1), MESSAGES as i64)
            .await
            .map_err(err)?;
        claim.push(began.elapsed());
        if claimed.len() != MESSAGES {
            return Err(format!("claimed {} of {MESSAGES}", claimed.len()));
        }
        let finished: Vec<Finished> = claimed
            .into_iter()
            .map(|message| Finished {
                message,
                result: SendResult::Accepted {
                    provider: "bench".into(),
                    provider_ref: Some("2.0.0 OK".into()),
                },
                at: t,
                retry_after: None,
            })
            .collect();
        let nothing_more = Claim {
            worker: "bench",
            now: t,
            until: t,
            limit: 0,
            lapsed: false,
        };
        let began = Instant::now();
        for batch in finished.chunks(STAGE_BATCH) {
            store
                .finish_and_claim(batch, &nothing_more)
                .await
                .map_err(err)?;
        }
        record.push(began.elapsed());
        rig.fresh.close().await;
    }
    Ok(vec![fan_out, claim, record])
}

/// The round's notifications as the engine hands them to the store, with
/// the messages already rendered (taken from a fired round's outbox) and
/// codes and token digests made up.
fn prepared_round(payloads: &[(i64, Payload)], clock: Clockwork) -> Vec<NewNotification> {
    let alphabet = rollcall::domain::codes::CODE_ALPHABET;
    let mut rendered = payloads.iter().map(|(_, p)| p);
    let mut serial = 0usize;
    (1..=DEPARTMENTS)
        .map(|d| NewNotification {
            department: format!("D{d:04}"),
            outcomes: (0..CONTACTS_PER_DEPARTMENT)
                .map(|c| {
                    serial += 1;
                    let mut n = serial;
                    let code = (0..5)
                        .map(|_| {
                            let letter = alphabet[n % alphabet.len()] as char;
                            n /= alphabet.len();
                            letter
                        })
                        .collect();
                    let messages = (0..CHANNELS)
                        .filter_map(|_| rendered.next())
                        .map(|payload| {
                            let (channel, address) = match payload {
                                Payload::Sms { to, .. } => ("sms", to),
                                Payload::Email { to, .. } => ("email", to),
                                Payload::Webhook { url, .. } => ("webhook", url),
                            };
                            NewMessage {
                                channel: channel.into(),
                                address: address.clone(),
                                payload: serde_json::to_string(payload).expect("a payload"),
                                state: "pending",
                                expires_at: clock.deadline_at,
                            }
                        })
                        .collect();
                    NewOutcome {
                        contact_id: format!("d{d:04}-c{c}"),
                        role: if c == 0 { "primary" } else { "alternate" }.into(),
                        code,
                        token_digest: format!("{serial:064}"),
                        token_expires_at: clock.deadline_at + TimeDelta::hours(24),
                        step: 1,
                        messages,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Prints a store's figures and whether they meet the targets.
fn verdicts(o: &Outcome) -> bool {
    println!();
    for s in [&o.total, &o.fire, &o.after_fire, &o.bare, &o.replay] {
        if !s.is_empty() {
            s.report();
        }
    }
    for s in &o.stages {
        s.report();
    }
    if o.total.is_empty() {
        println!("{}: stages only, no verdict", o.backend);
        return true;
    }
    let delivered = rate(o.total.median());
    let bare = rate(o.bare.median());
    let share = delivered / bare;
    println!(
        "{}: delivery {:.0} messages/s (p99 run {:.0}/s), bare loop {:.0}/s (p99 run {:.0}/s): \
         delivery is {:.1}% of the bare loop",
        o.backend,
        delivered,
        rate(o.total.p99()),
        bare,
        rate(o.bare.p99()),
        share * 100.0
    );
    let mut ok = true;
    let word = |met: bool| if met { "MET" } else { "MISSED" };
    let met = share >= MIN_SHARE_OF_BASELINE;
    ok &= met;
    println!(
        "target {}: at least {:.0}% of the bare loop's throughput: {:.1}%: {}",
        o.backend,
        MIN_SHARE_OF_BASELINE * 100.0,
        share * 100.0,
        word(met)
    );
    if o.backend == "sqlite" {
        let met = delivered >= MIN_RATE_SQLITE;
        ok &= met;
        println!(
            "target sqlite: at least {MIN_RATE_SQLITE:.0} messages/s: {delivered:.0}/s: {}",
            word(met)
        );
    }
    ok
}
