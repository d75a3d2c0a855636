//! Delivery receipts, `POST /hooks/sms/{provider}/status`, over real HTTP.
//!
//! Messages reach `accepted` the way they do in production: the smoke
//! schedule's first round fires on a manual clock, the real dispatcher sends
//! its SMS to the fake Twilio Messages API on loopback, and the fake's
//! message sids become the messages' `provider_ref`. Receipts then arrive at
//! the public router bound on 127.0.0.1:0, signed by Twilio's own Python
//! library (the oracle, `$ROLLCALL_TEST_PYTHON` with `twilio` installed from
//! `tests/requirements.txt`), by the fake, or forged.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rollcall::ack::{self, AckState};
use rollcall::channel::Channels;
use rollcall::clock::{ManualClock, SharedClock};
use rollcall::config::{Config, ProviderKind, Secrets, SmsProvider};
use rollcall::dispatch::Dispatcher;
use rollcall::domain::contacts::Roster;
use rollcall::engine::Engine;
use rollcall::hooks::{FAILED_AUTH_LIMIT, FAILED_AUTH_WINDOW, SmsHooks};
use rollcall::sinks::{self, ReceivedSms, ReceivedWebhook, Recorder, TwilioFake};
use rollcall::store::{MessageDelivery, RECEIPT_CHANNEL, Store};
use rollcall::twilio_signature;

use crate::support;
use crate::support::smtp_server::PYTHON_ENV;

const EX: &str = "smoke";
const PROVIDER: &str = "primary";
const ACCOUNT: &str = "AC0000000000000000000000000000a11c";
/// The token after a rotation, and the one before it (still accepted).
const TOKEN: &str = "receipts-current-token";
const OLD_TOKEN: &str = "receipts-previous-token";

fn t0() -> DateTime<Utc> {
    // smoke.yaml's R01: Saturday 27 Feb 2027, 22:00 in Hong Kong.
    DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
        .unwrap()
        .to_utc()
}

/// The smoke exercise running against the fake Twilio and the public router.
struct Drill {
    store: Store,
    clock: Arc<ManualClock>,
    engine: Engine,
    dispatcher: Dispatcher,
    roster: Roster,
    /// Every SMS the fake accepted.
    sms: Recorder<ReceivedSms>,
    /// `http://127.0.0.1:<port>` of the public router.
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn drill() -> Drill {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("receipts.db").display());
    drill_on(Store::connect(&url).await.unwrap(), dir).await
}

async fn drill_on(store: Store, dir: tempfile::TempDir) -> Drill {
    rollcall::channel::install_crypto_provider();
    let start = t0() - TimeDelta::hours(1);
    let clock = ManualClock::new(start);
    let shared: SharedClock = clock.clone();
    let (roster, _) =
        support::start_exercise(&store, &support::root().join("schedules/smoke.yaml"), start).await;

    let sms = Recorder::new();
    let sms_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sms_addr = sms_listener.local_addr().unwrap();
    let fake = TwilioFake {
        account_sid: ACCOUNT.into(),
        auth_token: TOKEN.into(),
        recorder: sms.clone(),
    };
    tokio::spawn(sinks::serve_router(
        sms_listener,
        sinks::twilio_router_with_clock(fake, Arc::clone(&shared)),
        std::future::pending(),
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = Config {
        public_url: base.clone(),
        sms_from: Some("+85251234567".into()),
        sms_providers: vec![SmsProvider {
            name: PROVIDER.into(),
            kind: ProviderKind::Twilio {
                base_url: format!("http://{sms_addr}"),
                account_sid: ACCOUNT.into(),
                auth_token_env: "RECEIPTS_TWILIO_TOKEN".into(),
                alternate_auth_token_env: Some("RECEIPTS_TWILIO_TOKEN_OLD".into()),
            },
            rate: None,
        }],
        ..Config::default()
    };
    // No webhook secrets and no SMTP: those messages end without touching
    // the network, and only SMS reach a provider.
    let secrets = Secrets::supplied([
        ("RECEIPTS_TWILIO_TOKEN".to_owned(), TOKEN.to_owned()),
        ("RECEIPTS_TWILIO_TOKEN_OLD".to_owned(), OLD_TOKEN.to_owned()),
    ]);
    let state = AckState {
        store: store.clone(),
        clock: Arc::clone(&shared),
        sms_hooks: SmsHooks::from_config(&cfg, &secrets),
    };
    tokio::spawn(ack::serve(listener, state, std::future::pending()));

    let channels = Arc::new(Channels::from_config(&cfg, secrets).unwrap());
    let engine = Engine::new(
        store.clone(),
        Arc::clone(&shared),
        rollcall::daemon::engine_settings(&cfg),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        shared,
        channels,
        rollcall::daemon::retry_policy(&cfg),
        "receipts-test".into(),
    );
    Drill {
        store,
        clock,
        engine,
        dispatcher,
        roster,
        sms,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Drill {
    /// Moves the clock to `t` and runs the daemon's step once.
    async fn step_at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
        rollcall::daemon::step(&self.engine, &self.dispatcher)
            .await
            .unwrap();
    }

    /// Fires R01 and sends its first step; returns the SMS the fake accepted.
    async fn fire(&self) -> Vec<ReceivedSms> {
        self.step_at(t0()).await;
        let texts = self.sms.all();
        assert!(texts.len() >= 3, "R01 sends SMS: {}", texts.len());
        for text in &texts {
            let m = self.message(text).await;
            assert_eq!(m.state, "accepted", "{text:?}");
            assert_eq!(m.channel, "sms");
        }
        texts
    }

    async fn message(&self, sms: &ReceivedSms) -> MessageDelivery {
        self.store
            .message_by_provider_ref(PROVIDER, &sms.sid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a message has provider_ref {}", sms.sid))
    }

    fn status_url(&self) -> String {
        format!("{}/hooks/sms/{PROVIDER}/status", self.base)
    }

    /// Posts `params` with whatever `signature` header the test wants.
    async fn post(
        &self,
        url: &str,
        params: &[(String, String)],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.post(url).form(params);
        if let Some(sig) = signature {
            req = req.header(twilio_signature::HEADER, sig);
        }
        req.send().await.unwrap()
    }

    /// The fake calls back, signed with the current token; rollcall answers 200.
    async fn callback(&self, sms: &ReceivedSms, status: &str, error_code: Option<u32>) {
        let answered = sinks::twilio_status_callback(&self.http, TOKEN, sms, status, error_code)
            .await
            .unwrap();
        assert_eq!(answered, 200, "{status} receipt for {}", sms.sid);
    }

    fn department_of(&self, sms: &ReceivedSms) -> String {
        self.roster
            .contacts()
            .find(|c| c.sms.as_ref().is_some_and(|p| p.as_str() == sms.to))
            .map(|c| c.department.to_string())
            .unwrap_or_else(|| panic!("{} is a roster number", sms.to))
    }
}

// ---- Twilio's Python library, the oracle ---------------------------------

/// The interpreter that has the `twilio` package, or `None` after printing
/// `SKIPPED (twilio): reason` outside CI. Under CI it must be there.
fn twilio_python() -> Option<String> {
    let python = std::env::var(PYTHON_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let reason = match Command::new(&python)
        .args(["-c", "import twilio.request_validator"])
        .output()
    {
        Ok(o) if o.status.success() => return Some(python),
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("import failed")
            .to_owned(),
        Err(e) => format!("cannot run {python}: {e}"),
    };
    if support::under_ci() {
        panic!(
            "the twilio package is required under CI but unusable: {reason}\n\
             Install it with `pip install -r tests/requirements.txt` and point {PYTHON_ENV} at that interpreter."
        );
    }
    eprintln!("SKIPPED (twilio): {reason}");
    None
}

/// Runs `script` with `input` as JSON on stdin; returns its trimmed stdout.
fn run_python(python: &str, script: &str, input: &serde_json::Value) -> String {
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn as_dict(params: &[(String, String)]) -> serde_json::Value {
    params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `RequestValidator(token).compute_signature(url, params)`.
fn python_signature(python: &str, token: &str, url: &str, params: &[(String, String)]) -> String {
    const SIGN: &str = "import json, sys\n\
        from twilio.request_validator import RequestValidator\n\
        a = json.load(sys.stdin)\n\
        print(RequestValidator(a['token']).compute_signature(a['url'], a['params']))";
    run_python(
        python,
        SIGN,
        &serde_json::json!({"token": token, "url": url, "params": as_dict(params)}),
    )
}

/// `RequestValidator(token).validate(url, params, signature)`.
fn python_validates(
    python: &str,
    token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    const VALIDATE: &str = "import json, sys\n\
        from twilio.request_validator import RequestValidator\n\
        a = json.load(sys.stdin)\n\
        print(RequestValidator(a['token']).validate(a['url'], a['params'], a['signature']))";
    let out = run_python(
        python,
        VALIDATE,
        &serde_json::json!({"token": token, "url": url, "params": as_dict(params), "signature": signature}),
    );
    out == "True"
}

// ---- tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_signed_by_twilios_python_library_with_either_token_mark_messages_delivered() {
    let Some(python) = twilio_python() else {
        return;
    };
    let d = drill().await;
    let texts = d.fire().await;
    let url = texts[0].status_callback.clone().unwrap();
    assert_eq!(
        url,
        d.status_url(),
        "rollcall asked for receipts at its public URL"
    );

    d.clock.set(t0() + TimeDelta::seconds(40));
    let params = texts[0].status_params("delivered", None);
    let sig = python_signature(&python, TOKEN, &url, &params);
    let resp = d.post(&url, &params, Some(&sig)).await;
    assert_eq!(resp.status(), 200);
    let m = d.message(&texts[0]).await;
    assert_eq!(m.state, "delivered");
    assert_eq!(
        m.delivered_at(),
        Some(t0() + TimeDelta::seconds(40)),
        "the injected clock's time"
    );

    // Signed with the token from before the rotation: still Twilio.
    d.clock.set(t0() + TimeDelta::seconds(55));
    let params = texts[1].status_params("delivered", None);
    let sig = python_signature(&python, OLD_TOKEN, &url, &params);
    assert_eq!(d.post(&url, &params, Some(&sig)).await.status(), 200);
    let m = d.message(&texts[1]).await;
    assert_eq!(m.state, "delivered");
    assert_eq!(m.delivered_at(), Some(t0() + TimeDelta::seconds(55)));

    assert_eq!(
        d.message(&texts[2]).await.state,
        "accepted",
        "others wait for theirs"
    );
    assert!(d.store.refusals(RECEIPT_CHANNEL).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_callbacks_satisfy_twilios_python_validator() {
    let Some(python) = twilio_python() else {
        return;
    };
    rollcall::channel::install_crypto_provider();
    let hooks: Recorder<ReceivedWebhook> = Recorder::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/sms/primary/status?tag=a%20b",
        listener.local_addr().unwrap()
    );
    tokio::spawn(sinks::serve_router(
        listener,
        sinks::webhook_router(hooks.clone()),
        std::future::pending(),
    ));
    let sms = ReceivedSms {
        account_sid: ACCOUNT.into(),
        to: "+85291234567".into(),
        from: "+85251234567".into(),
        body: "[EXERCISE] 演習 [EXERCISE]".into(),
        validity_period: None,
        status_callback: Some(url.clone()),
        sid: "SM00000000000000000000000000000007".into(),
    };
    let answered = sinks::twilio_status_callback(
        &reqwest::Client::new(),
        TOKEN,
        &sms,
        "undelivered",
        Some(30003),
    )
    .await
    .unwrap();
    assert_eq!(answered, 200);
    let got = hooks.all().pop().unwrap();
    let signature = got.header(twilio_signature::HEADER).unwrap().to_owned();
    let params: Vec<(String, String)> = form_urlencoded(&got.body);
    assert_eq!(params, sms.status_params("undelivered", Some(30003)));
    assert!(python_validates(&python, TOKEN, &url, &params, &signature));
    assert!(!python_validates(
        &python, OLD_TOKEN, &url, &params, &signature
    ));
}

fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body))).unwrap();
    url.query_pairs().into_owned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_receipts_get_a_generic_403_are_recorded_and_change_nothing() {
    let d = drill().await;
    let texts = d.fire().await;
    let sms = &texts[0];
    let url = d.status_url();
    let delivered = sms.status_params("delivered", None);

    // Signed with a token that is not the provider's.
    let wrong = twilio_signature::sign("not-the-token", &url, &delivered);
    // A genuine "undelivered" receipt rewritten to say "delivered".
    let genuine =
        twilio_signature::sign(TOKEN, &url, &sms.status_params("undelivered", Some(30003)));
    // Signed for another host: rollcall checks its public URL, not `Host`.
    let elsewhere = twilio_signature::sign(
        TOKEN,
        &format!("https://attacker.example/hooks/sms/{PROVIDER}/status"),
        &delivered,
    );
    for signature in [
        Some(wrong.as_str()),
        Some(genuine.as_str()),
        None,
        Some(elsewhere.as_str()),
    ] {
        let resp = d.post(&url, &delivered, signature).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.text().await.unwrap(),
            "forbidden\n",
            "nothing about why"
        );
    }

    let refusals = d.store.refusals(RECEIPT_CHANNEL).await.unwrap();
    let reasons: Vec<&str> = refusals
        .iter()
        .map(|(_, _, r)| r.as_deref().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "signature mismatch",
            "signature mismatch",
            "missing signature",
            "signature mismatch"
        ]
    );
    for (source, raw, _) in &refusals {
        assert_eq!(
            source.as_deref(),
            Some("127.0.0.1"),
            "the peer address is kept"
        );
        assert!(raw.contains(&sms.sid), "the raw request is kept: {raw}");
    }
    let m = d.message(sms).await;
    assert_eq!(m.state, "accepted");
    assert_eq!(m.delivered_at, None);
    assert!(
        d.store.receipts().await.unwrap().is_empty(),
        "no receipt was taken"
    );

    // A provider rollcall does not have: 404, whatever the signature.
    let other = format!("{}/hooks/sms/backup/status", d.base);
    let sig = twilio_signature::sign(TOKEN, &other, &delivered);
    let resp = d.post(&other, &delivered, Some(&sig)).await;
    assert_eq!(resp.status(), 404);

    // Bodies over 64 KiB are refused before anyone reads them.
    let mut huge = delivered.clone();
    huge.push(("Padding".into(), "x".repeat(65 * 1024)));
    let sig = twilio_signature::sign(TOKEN, &url, &huge);
    assert_eq!(d.post(&url, &huge, Some(&sig)).await.status(), 413);
    assert_eq!(d.store.refusals(RECEIPT_CHANNEL).await.unwrap().len(), 4);
    assert_eq!(d.message(sms).await.state, "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_authentication_is_held_off_for_a_while() {
    let d = drill().await;
    let texts = d.fire().await;
    let url = d.status_url();
    let delivered = texts[0].status_params("delivered", None);
    for _ in 0..FAILED_AUTH_LIMIT {
        assert_eq!(d.post(&url, &delivered, None).await.status(), 403);
    }
    let held = d.post(&url, &delivered, None).await;
    assert_eq!(held.status(), 429);
    assert!(held.headers().contains_key("retry-after"));
    let good = twilio_signature::sign(TOKEN, &url, &delivered);
    assert_eq!(
        d.post(&url, &delivered, Some(&good)).await.status(),
        429,
        "held off entirely"
    );
    assert_eq!(
        d.store.refusals(RECEIPT_CHANNEL).await.unwrap().len(),
        usize::try_from(FAILED_AUTH_LIMIT).unwrap(),
        "held-off requests are not stored"
    );
    assert_eq!(d.message(&texts[0]).await.state, "accepted");

    d.clock
        .set(t0() + FAILED_AUTH_WINDOW + TimeDelta::seconds(1));
    assert_eq!(d.post(&url, &delivered, Some(&good)).await.status(), 200);
    assert_eq!(d.message(&texts[0]).await.state, "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_and_failed_keep_their_error_codes_and_final_states_never_move_back() {
    let d = drill().await;
    let texts = d.fire().await;
    let (a, b, c) = (&texts[0], &texts[1], &texts[2]);

    d.clock.set(t0() + TimeDelta::seconds(5));
    d.callback(a, "sent", None).await;
    assert_eq!(
        d.message(a).await.state,
        "accepted",
        "progress moves nothing"
    );
    d.callback(a, "undelivered", Some(30003)).await;
    let m = d.message(a).await;
    assert_eq!(m.state, "undelivered");
    assert!(
        m.last_error.as_deref().unwrap().contains("30003"),
        "{:?}",
        m.last_error
    );
    d.callback(a, "delivered", None).await;
    assert_eq!(
        d.message(a).await.state,
        "undelivered",
        "a final state stays"
    );

    let delivered_at = t0() + TimeDelta::seconds(9);
    d.clock.set(delivered_at);
    d.callback(b, "delivered", None).await;
    d.clock.set(t0() + TimeDelta::seconds(30));
    for late in ["sent", "queued", "delivered"] {
        d.callback(b, late, None).await;
    }
    let m = d.message(b).await;
    assert_eq!(m.state, "delivered");
    assert_eq!(
        m.delivered_at(),
        Some(delivered_at),
        "the first delivery is the one kept"
    );

    d.callback(c, "failed", Some(30008)).await;
    let m = d.message(c).await;
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("failed", Some("permanent"))
    );
    assert!(m.last_error.as_deref().unwrap().contains("30008"));

    // Twilio's receipt for a message rollcall never sent: kept, answered 200.
    let stranger = ReceivedSms {
        sid: format!("SM{}", "f".repeat(32)),
        ..a.clone()
    };
    d.callback(&stranger, "delivered", None).await;

    let receipts: Vec<(String, String, Option<String>, String)> = d
        .store
        .receipts()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.provider_ref, r.status, r.error_code, r.effect))
        .collect();
    let row = |sms: &ReceivedSms, status: &str, code: Option<&str>, effect: &str| {
        (
            sms.sid.clone(),
            status.to_owned(),
            code.map(str::to_owned),
            effect.to_owned(),
        )
    };
    assert_eq!(
        receipts,
        vec![
            row(a, "sent", None, "unchanged"),
            row(a, "undelivered", Some("30003"), "applied"),
            row(a, "delivered", None, "unchanged"),
            row(b, "delivered", None, "applied"),
            row(b, "sent", None, "unchanged"),
            row(b, "queued", None, "unchanged"),
            row(b, "delivered", None, "unchanged"),
            row(c, "failed", Some("30008"), "applied"),
            row(&stranger, "delivered", None, "unmatched"),
        ]
    );
    assert!(d.store.refusals(RECEIPT_CHANNEL).await.unwrap().is_empty());
}

/// The whole loop: rollcall sends, the fake calls back every SMS at the
/// StatusCallback rollcall gave it, and finalisation tells a department
/// whose SMS all bounced (`unreachable`) from one that was reached and did
/// not answer (`missed`).
async fn the_fake_calls_back_and_finalisation_sees_who_was_really_reached(d: Drill) {
    const BOUNCES: &str = "FSD";
    let mut seen = 0;
    let mut bounced = 0;
    for at in [t0(), t0() + TimeDelta::minutes(2)] {
        d.step_at(at).await;
        let texts = d.sms.since(seen);
        seen += texts.len();
        d.clock.set(at + TimeDelta::seconds(20));
        for text in &texts {
            d.callback(text, "sent", None).await;
            if d.department_of(text) == BOUNCES {
                d.callback(text, "undelivered", Some(30005)).await;
                bounced += 1;
            } else {
                d.callback(text, "delivered", None).await;
                let m = d.message(text).await;
                assert_eq!(m.delivered_at(), Some(at + TimeDelta::seconds(20)));
            }
        }
    }
    assert!(bounced > 0, "{BOUNCES} was sent SMS");
    let states = d.store.message_states(EX).await.unwrap();
    let sms_states: Vec<(&str, i64)> = states
        .iter()
        .filter(|(ch, _, _)| ch == "sms")
        .map(|(_, s, n)| (s.as_str(), *n))
        .collect();
    assert_eq!(
        sms_states,
        [
            ("delivered", (seen - bounced) as i64),
            ("undelivered", bounced as i64)
        ]
    );

    // Nobody acks; after deadline + settle every notification is final.
    d.step_at(t0() + TimeDelta::minutes(6)).await;
    let rows = d.store.report_rows(EX).await.unwrap();
    let r01: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.round_label == "R01")
        .map(|r| (r.department.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        r01,
        [
            ("DPO", "missed"),
            ("FSD", "unreachable"),
            ("HKPF", "missed")
        ]
    );
    let applied_deliveries = d
        .store
        .receipts()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.effect == "applied" && r.status == "delivered")
        .count();
    assert_eq!(applied_deliveries, seen - bounced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_calls_back_every_sms_and_finalisation_sees_who_was_reached_on_sqlite() {
    the_fake_calls_back_and_finalisation_sees_who_was_really_reached(drill().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_calls_back_every_sms_and_finalisation_sees_who_was_reached_on_postgres() {
    let Some(base) = support::postgres_url() else {
        return;
    };
    let url = support::fresh_postgres(&base, "receipts").await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let d = drill_on(store, tempfile::tempdir().unwrap()).await;
    the_fake_calls_back_and_finalisation_sees_who_was_really_reached(d).await;
}

// ---- An http-json gateway's receipts, signed with Rollcall-Signature -------

const GATEWAY: &str = "backup";
const GATEWAY_SECRET: &str = "gateway-inbound-secret";

/// The smoke drill's R01 sent through a generic `http-json` gateway on
/// loopback, which answers each send with its own id `gw-<n>`.
struct GatewayDrill {
    store: Store,
    clock: Arc<ManualClock>,
    /// (to, gateway id) of every SMS the gateway took, in order.
    taken: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn gateway_drill() -> GatewayDrill {
    use axum::extract::State;
    type Taken = Arc<std::sync::Mutex<Vec<(String, String)>>>;
    async fn take(
        State(taken): State<Taken>,
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        let mut taken = taken.lock().unwrap();
        let id = format!("gw-{}", taken.len() + 1);
        taken.push((
            body["to"].as_str().unwrap_or_default().to_owned(),
            id.clone(),
        ));
        axum::Json(serde_json::json!({ "id": id }))
    }

    rollcall::channel::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("gw.db").display()))
        .await
        .unwrap();
    let start = t0() - TimeDelta::hours(1);
    let clock = ManualClock::new(start);
    let shared: SharedClock = clock.clone();
    support::start_exercise(&store, &support::root().join("schedules/smoke.yaml"), start).await;

    let taken: Taken = Arc::default();
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = gw_listener.local_addr().unwrap();
    tokio::spawn(sinks::serve_router(
        gw_listener,
        axum::Router::new()
            .route("/send", axum::routing::post(take))
            .with_state(Arc::clone(&taken)),
        std::future::pending(),
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = Config {
        public_url: base.clone(),
        sms_from: Some("+85251234567".into()),
        sms_providers: vec![SmsProvider {
            name: GATEWAY.into(),
            kind: ProviderKind::HttpJson {
                url: format!("http://{gw_addr}/send"),
                headers_env: Vec::new(),
                body: r#"{"to": {{ to|tojson }}, "text": {{ text|tojson }}, "ref": {{ message_id|tojson }}}"#
                    .into(),
                inbound_secret_env: Some("RECEIPTS_GW_SECRET".into()),
            },
            rate: None,
        }],
        ..Config::default()
    };
    let secrets = Secrets::supplied([("RECEIPTS_GW_SECRET".to_owned(), GATEWAY_SECRET.to_owned())]);
    let state = AckState {
        store: store.clone(),
        clock: Arc::clone(&shared),
        sms_hooks: SmsHooks::from_config(&cfg, &secrets),
    };
    tokio::spawn(ack::serve(listener, state, std::future::pending()));
    let engine = Engine::new(
        store.clone(),
        Arc::clone(&shared),
        rollcall::daemon::engine_settings(&cfg),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::clone(&shared),
        Arc::new(Channels::from_config(&cfg, secrets).unwrap()),
        rollcall::daemon::retry_policy(&cfg),
        "gateway-receipts".into(),
    );
    clock.set(t0());
    rollcall::daemon::step(&engine, &dispatcher).await.unwrap();
    assert!(
        taken.lock().unwrap().len() >= 3,
        "R01 goes out through the gateway"
    );
    GatewayDrill {
        store,
        clock,
        taken,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl GatewayDrill {
    fn ids(&self) -> Vec<String> {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .map(|(_, id)| id.clone())
            .collect()
    }

    async fn message(&self, gateway_id: &str) -> MessageDelivery {
        self.store
            .message_by_provider_ref(GATEWAY, gateway_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a message has provider_ref {gateway_id}"))
    }

    /// Posts `body` to the gateway's receipt route with `signature`.
    async fn post(&self, body: &str, signature: Option<String>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/hooks/sms/{GATEWAY}/status", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(sig) = signature {
            req = req.header("Rollcall-Signature", sig);
        }
        req.send().await.unwrap()
    }

    /// `Rollcall-Signature` for `body` at the drill clock's time (shifted).
    fn sign(&self, secret: &str, shift: TimeDelta, body: &str) -> String {
        use rollcall::clock::Clock as _;
        let t = (self.clock.now() + shift).timestamp();
        rollcall::channel::signature_header(secret.as_bytes(), t, body.as_bytes())
    }
}

fn gateway_receipt(id: &str, status: &str, error_code: Option<&str>) -> String {
    serde_json::json!({ "id": id, "status": status, "error_code": error_code }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_receipts_signed_with_the_inbound_secret_move_messages_once() {
    let d = gateway_drill().await;
    let ids = d.ids();
    let later = TimeDelta::seconds(40);
    d.clock.set(t0() + later);

    let delivered = gateway_receipt(&ids[0], "delivered", None);
    let resp = d
        .post(
            &delivered,
            Some(d.sign(GATEWAY_SECRET, TimeDelta::zero(), &delivered)),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let m = d.message(&ids[0]).await;
    assert_eq!((m.state.as_str(), m.channel.as_str()), ("delivered", "sms"));
    assert_eq!(
        m.delivered_at(),
        Some(t0() + later),
        "the receipt's arrival time"
    );

    let undelivered = gateway_receipt(&ids[1], "undelivered", Some("30003"));
    // A timestamp a little behind the clock is within tolerance.
    let sig = d.sign(GATEWAY_SECRET, TimeDelta::minutes(-4), &undelivered);
    assert_eq!(d.post(&undelivered, Some(sig)).await.status(), 200);
    let m = d.message(&ids[1]).await;
    assert_eq!(m.state, "undelivered");
    assert_eq!(m.delivered_at, None);

    // Progress changes nothing; a late "undelivered" never undoes "delivered".
    let sent = gateway_receipt(&ids[2], "sent", None);
    let sig = d.sign(GATEWAY_SECRET, TimeDelta::zero(), &sent);
    assert_eq!(d.post(&sent, Some(sig)).await.status(), 200);
    assert_eq!(d.message(&ids[2]).await.state, "accepted");
    let undo = gateway_receipt(&ids[0], "undelivered", Some("30005"));
    let sig = d.sign(GATEWAY_SECRET, TimeDelta::zero(), &undo);
    assert_eq!(d.post(&undo, Some(sig)).await.status(), 200);
    assert_eq!(d.message(&ids[0]).await.state, "delivered");

    let effects: Vec<(String, String, Option<String>)> = d
        .store
        .receipts()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.provider_ref, r.effect, r.error_code))
        .collect();
    assert_eq!(
        effects,
        [
            (ids[0].clone(), "applied".to_owned(), None),
            (
                ids[1].clone(),
                "applied".to_owned(),
                Some("30003".to_owned())
            ),
            (ids[2].clone(), "unchanged".to_owned(), None),
            (
                ids[0].clone(),
                "unchanged".to_owned(),
                Some("30005".to_owned())
            ),
        ]
    );

    // Signed but not a receipt: 400, nothing stored.
    let junk = r#"{"status": "delivered"}"#;
    let sig = d.sign(GATEWAY_SECRET, TimeDelta::zero(), junk);
    assert_eq!(d.post(junk, Some(sig)).await.status(), 400);
    assert_eq!(d.store.receipts().await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_stale_gateway_receipts_get_403_are_recorded_and_change_nothing() {
    let d = gateway_drill().await;
    let id = d.ids()[0].clone();
    let delivered = gateway_receipt(&id, "delivered", None);
    let genuine_undelivered = gateway_receipt(&id, "undelivered", None);
    let now = TimeDelta::zero();
    for signature in [
        // Another secret.
        Some(d.sign("not-the-secret", now, &delivered)),
        // A genuine signature of another body.
        Some(d.sign(GATEWAY_SECRET, now, &genuine_undelivered)),
        // Genuine, but older or newer than five minutes.
        Some(d.sign(GATEWAY_SECRET, TimeDelta::seconds(-301), &delivered)),
        Some(d.sign(GATEWAY_SECRET, TimeDelta::seconds(301), &delivered)),
        None,
        Some("t=abc,v1=zz".to_owned()),
    ] {
        let resp = d.post(&delivered, signature).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.text().await.unwrap(),
            "forbidden\n",
            "nothing about why"
        );
    }
    let reasons: Vec<String> = d
        .store
        .refusals(RECEIPT_CHANNEL)
        .await
        .unwrap()
        .into_iter()
        .map(|(source, raw, reason)| {
            assert_eq!(source.as_deref(), Some("127.0.0.1"));
            assert!(raw.contains(&id), "the raw request is kept: {raw}");
            reason.unwrap()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "signature mismatch",
            "signature mismatch",
            "signature timestamp outside tolerance",
            "signature timestamp outside tolerance",
            "missing signature",
            "malformed signature",
        ]
    );
    assert_eq!(d.message(&id).await.state, "accepted");
    assert!(d.store.receipts().await.unwrap().is_empty());
}
