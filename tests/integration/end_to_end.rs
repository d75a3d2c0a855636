//! A round over the real stack: contacts/ → store → the daemon's step →
//! a real SMTP server (aiosmtpd), a Twilio-format HTTP server and a webhook
//! receiver → acks through the real link endpoint → report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{KeyInit, Mac};
use rollcall::ack::{self, AckState};
use rollcall::channel::Channels;
use rollcall::clock::{Clock, ManualClock, SharedClock};
use rollcall::config::{Config, ProviderKind, Secrets, SmsProvider, Smtp, Tls};
use rollcall::dispatch::Dispatcher;
use rollcall::domain::codes::LinkToken;
use rollcall::domain::contacts::{self, Roster};
use rollcall::domain::schedule;
use rollcall::engine::Engine;
use rollcall::sinks::{self, ReceivedSms, ReceivedWebhook, Recorder, TwilioFake};
use rollcall::store::Store;
use rollcall::yaml::Problems;

use crate::support::{self, smtp_server::Aiosmtpd};

const SID: &str = "AC00000000000000000000000000000e2e";
const TOKEN: &str = "e2e-twilio-token";
const HOOK_SECRET: &str = "e2e-webhook-secret";

fn t0() -> DateTime<Utc> {
    // Saturday 27 Feb 2027, 22:00 in Hong Kong: a weekend night.
    DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
        .unwrap()
        .to_utc()
}

struct Peers {
    smtp: Aiosmtpd,
    sms: Recorder<ReceivedSms>,
    hooks: Recorder<ReceivedWebhook>,
    sms_addr: std::net::SocketAddr,
    hook_addr: std::net::SocketAddr,
    ack_addr: std::net::SocketAddr,
}

fn roster_with_loopback_webhooks(hook_addr: std::net::SocketAddr) -> Roster {
    let mut problems = Problems::default();
    let (mut roster, _) = contacts::load_dir(&support::root().join("contacts"), &mut problems);
    assert!(!problems.has_errors(), "sample contacts must load");
    // The sample webhook hosts are fictitious: send them to the local receiver,
    // keeping each contact's path so deliveries can be told apart.
    for c in roster
        .departments
        .iter_mut()
        .flat_map(|d| d.contacts.iter_mut())
    {
        if let Some(w) = c.webhook.as_mut() {
            let url = reqwest::Url::parse(&w.url).unwrap();
            w.url = format!(
                "http://{hook_addr}/{}{}",
                url.host_str().unwrap(),
                url.path()
            );
        }
    }
    roster
}

fn hmac_hex(secret: &str, msg: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks `Rollcall-Signature` the way a receiver would, without rollcall's code.
fn signature_is_valid(hook: &ReceivedWebhook) -> bool {
    let Some(header) = hook.header("rollcall-signature") else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    hmac_hex(HOOK_SECRET, &signed) == v1
}

async fn start_peers(clock: SharedClock, store: &Store) -> Option<Peers> {
    let smtp = Aiosmtpd::start()?;
    let sms: Recorder<ReceivedSms> = Recorder::new();
    let hooks: Recorder<ReceivedWebhook> = Recorder::new();
    let sms_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sms_addr = sms_listener.local_addr().unwrap();
    let fake = TwilioFake {
        account_sid: SID.into(),
        auth_token: TOKEN.into(),
        recorder: sms.clone(),
    };
    tokio::spawn(sinks::serve_router(
        sms_listener,
        sinks::twilio_router_with_clock(fake, Arc::clone(&clock)),
        std::future::pending(),
    ));
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook_listener.local_addr().unwrap();
    tokio::spawn(sinks::serve_router(
        hook_listener,
        sinks::webhook_router(hooks.clone()),
        std::future::pending(),
    ));
    let ack_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ack_addr = ack_listener.local_addr().unwrap();
    tokio::spawn(ack::serve(
        ack_listener,
        AckState {
            store: store.clone(),
            clock,
        },
        std::future::pending(),
    ));
    Some(Peers {
        smtp,
        sms,
        hooks,
        sms_addr,
        hook_addr,
        ack_addr,
    })
}

fn config_for(peers: &Peers) -> Config {
    Config {
        public_url: format!("http://{}", peers.ack_addr),
        sms_from: Some("+85251234567".into()),
        sms_providers: vec![SmsProvider {
            name: "primary".into(),
            kind: ProviderKind::Twilio {
                base_url: format!("http://{}", peers.sms_addr),
                account_sid: SID.into(),
                auth_token_env: "E2E_TWILIO_TOKEN".into(),
                alternate_auth_token_env: None,
            },
            rate: None,
        }],
        smtp: Some(Smtp {
            host: "127.0.0.1".into(),
            port: peers.smtp.port,
            tls: Tls::None,
            username: None,
            password_env: None,
            ca_file: None,
            pool: 2,
        }),
        ..Config::default()
    }
}

async fn a_round_reaches_every_department_and_the_report_agrees(store: Store) {
    let clock = ManualClock::new(t0() - TimeDelta::hours(1));
    let shared: SharedClock = clock.clone();
    let Some(peers) = start_peers(Arc::clone(&shared), &store).await else {
        return;
    };
    let roster = roster_with_loopback_webhooks(peers.hook_addr);
    let cfg = config_for(&peers);
    let mut secret_names: Vec<(String, String)> = roster
        .secret_envs()
        .map(|(_, e)| (e.to_owned(), HOOK_SECRET.to_owned()))
        .collect();
    secret_names.push((cfg.webhook_secret_env.clone(), HOOK_SECRET.into()));
    secret_names.push(("E2E_TWILIO_TOKEN".into(), TOKEN.into()));
    let secrets = Secrets::supplied(secret_names);

    // `exercise load` + `exercise start`, as the CLI does them.
    let mut problems = Problems::default();
    let index = contacts::load_dir(&support::root().join("contacts"), &mut problems).1;
    let schedule = schedule::load_file(
        &support::root().join("schedules/nine-day-drill.yaml"),
        Some((&roster, &index)),
        &mut problems,
    )
    .expect("sample schedule loads");
    let now = clock.now();
    let version = store.save_roster(&roster, now).await.unwrap();
    store
        .save_exercise(
            &schedule.id,
            &schedule.title,
            &serde_json::to_string(&schedule).unwrap(),
            version,
            &[],
            now,
        )
        .await
        .unwrap();
    assert!(
        store
            .set_exercise_state(&schedule.id, &["loaded"], "running", now, Some("e2e"))
            .await
            .unwrap()
    );

    // `round fire` at T0, then one pass of the daemon.
    clock.set(t0());
    let engine = Engine::new(
        store.clone(),
        Arc::clone(&shared),
        rollcall::daemon::engine_settings(&cfg),
    );
    let round = store
        .insert_adhoc_round(&schedule.id, clock.now(), false)
        .await
        .unwrap();
    assert!(engine.fire(&round, None).await.unwrap());
    assert!(
        !engine.fire(&round, None).await.unwrap(),
        "a round fires once"
    );
    let channels = Arc::new(Channels::from_config(&cfg, secrets).unwrap());
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::clone(&shared),
        channels,
        rollcall::daemon::retry_policy(&cfg),
        "e2e".into(),
    );
    rollcall::daemon::step(&engine, &dispatcher).await.unwrap();

    let targeted: Vec<&rollcall::domain::contacts::Department> = roster
        .departments
        .iter()
        .filter(|d| d.code.as_str() != "CSTCB")
        .collect();
    assert_eq!(
        targeted.len(),
        69,
        "every department but exercise control is targeted"
    );

    // Step 1 reaches each department's primaries on each of their channels.
    let expected_mail: usize = targeted
        .iter()
        .flat_map(|d| &d.contacts)
        .filter(|c| c.role.as_str() == "primary" && c.email.is_some())
        .count();
    let expected_sms: usize = targeted
        .iter()
        .flat_map(|d| &d.contacts)
        .filter(|c| c.role.as_str() == "primary" && c.sms.is_some())
        .count();
    let expected_hooks: usize = targeted
        .iter()
        .flat_map(|d| &d.contacts)
        .filter(|c| c.role.as_str() == "primary" && c.webhook.is_some())
        .count();
    let mails = peers
        .smtp
        .wait_for(expected_mail, std::time::Duration::from_secs(30));
    assert_eq!(mails.len(), expected_mail);
    assert_eq!(peers.sms.len(), expected_sms);
    assert_eq!(peers.hooks.len(), expected_hooks);

    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    let mut reached: BTreeSet<String> = BTreeSet::new();
    for m in &mails {
        let marker = if m.subject.contains("[演習]") {
            "[演習]"
        } else {
            "[EXERCISE]"
        };
        assert!(
            m.subject.starts_with(marker) && m.subject.ends_with(marker),
            "subject marked: {}",
            m.subject
        );
        let body = m.body.trim();
        assert!(
            body.starts_with(marker) && body.ends_with(marker),
            "body marked: {body}"
        );
        let to = m.header("To").unwrap_or_default().to_owned();
        let contact = roster
            .contacts()
            .find(|c| c.email.as_ref().is_some_and(|e| to.contains(e.as_str())))
            .expect("mail to a roster contact");
        assert!(
            m.subject.contains(contact.department.as_str()),
            "subject names the department: {}",
            m.subject
        );
        let code = m
            .subject
            .split_whitespace()
            .find(|w| w.len() == 5 && rollcall::domain::codes::AckCode::parse(w).is_ok())
            .unwrap_or_else(|| panic!("subject carries the code: {}", m.subject));
        assert!(body.contains(code), "body carries the code");
        let token = LinkToken::find_in(body)
            .expect("email carries a confirm link")
            .as_str()
            .to_owned();
        reached.insert(contact.department.to_string());
        tokens
            .entry(contact.department.to_string())
            .or_insert(token);
    }
    for s in peers.sms.all() {
        let marker = if s.body.contains("[演習]") {
            "[演習]"
        } else {
            "[EXERCISE]"
        };
        assert!(
            s.body.starts_with(marker) && s.body.ends_with(marker),
            "sms marked: {}",
            s.body
        );
        assert!(!s.body.contains("http"), "no link in SMS");
        assert!(
            s.validity_period.is_some(),
            "stale SMS are dropped by the provider"
        );
        let contact = roster
            .contacts()
            .find(|c| c.sms.as_ref().is_some_and(|p| p.as_str() == s.to))
            .expect("sms to a roster contact");
        assert!(
            s.body.contains(contact.department.as_str()),
            "sms names the department: {}",
            s.body
        );
        reached.insert(contact.department.to_string());
    }
    for h in peers.hooks.all() {
        assert!(
            signature_is_valid(&h),
            "webhook signature verifies independently"
        );
        assert!(h.header("idempotency-key").is_some());
        let body = h.json().unwrap();
        assert_eq!(body["drill"], true);
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("[EXERCISE]") || text.starts_with("[演習]"),
            "{text}"
        );
        assert_eq!(body["code"].as_str().unwrap().len(), 5);
        let dept = body["department"].as_str().unwrap().to_owned();
        reached.insert(dept.clone());
        tokens
            .entry(dept)
            .or_insert_with(|| body["token"].as_str().unwrap().to_owned());
    }
    let all: BTreeSet<String> = targeted.iter().map(|d| d.code.to_string()).collect();
    assert_eq!(reached, all, "every targeted department was messaged");
    // SMS-only primaries have no link (links in SMS look like scams); they ack by reply.
    assert!(
        tokens.len() >= all.len() - 2,
        "most departments got a link or token"
    );

    // Half the departments acknowledge through the link, two minutes in.
    clock.set(t0() + TimeDelta::minutes(2));
    let http = reqwest::Client::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for (i, (dept, token)) in tokens.iter().enumerate() {
        if i % 2 != 0 {
            continue;
        }
        let url = format!("http://{}/a/{token}", peers.ack_addr);
        let page = http.get(&url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(
            page.text().await.unwrap().contains("Confirm"),
            "GET shows a confirm page"
        );
        let ack = http.post(&url).send().await.unwrap();
        assert_eq!(ack.status(), 200);
        assert!(ack.text().await.unwrap().contains("Acknowledged"));
        acked.insert(dept.clone());
    }
    let first = tokens.values().next().unwrap();
    let again = http
        .post(format!("http://{}/a/{first}", peers.ack_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert!(
        again
            .text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("already acknowledged")
    );
    let unknown = http
        .post(format!("http://{}/a/{}", peers.ack_addr, "0".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Escalation at 15 minutes reaches the others' alternates; then the round closes.
    clock.set(t0() + TimeDelta::minutes(15));
    rollcall::daemon::step(&engine, &dispatcher).await.unwrap();
    clock.set(t0() + TimeDelta::minutes(62));
    rollcall::daemon::step(&engine, &dispatcher).await.unwrap();

    let report = rollcall::report::build(&store, &schedule.id, clock.now())
        .await
        .unwrap();
    assert_eq!(report.rows.len(), targeted.len());
    for row in &report.rows {
        if acked.contains(&row.department) {
            assert_eq!(row.status, "on_target", "{}", row.department);
            assert_eq!(row.tta_secs, Some(120));
            assert_eq!(row.ack_channel.as_deref(), Some("link"));
            assert!(!row.escalated, "acked before the second step");
        } else {
            assert_eq!(row.status, "missed", "{}", row.department);
            assert!(row.escalated, "{} escalated to alternates", row.department);
        }
    }
    assert_eq!(report.summary.on_target, acked.len());
    assert_eq!(report.summary.missed, targeted.len() - acked.len());
    let text = rollcall::report::render_text(&report);
    assert!(text.contains(&format!("{} on target", acked.len())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_smtp_sms_and_webhook_is_acked_and_reported_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("e2e.db").display()))
        .await
        .unwrap();
    a_round_reaches_every_department_and_the_report_agrees(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_smtp_sms_and_webhook_is_acked_and_reported_on_postgres() {
    let Some(base) = support::postgres_url() else {
        return;
    };
    let url = support::fresh_postgres(&base, "e2e").await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    a_round_reaches_every_department_and_the_report_agrees(store).await;
}

#[test]
fn round_fire_refuses_when_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let load = support::rollcall(&["--db", &db, "exercise", "load", "schedules/smoke.yaml"]);
    assert!(load.status.success(), "{}", support::stderr(&load));
    let fire = support::rollcall(&["--db", &db, "round", "fire", "smoke"]);
    assert_eq!(fire.status.code(), Some(1));
    assert!(
        support::stderr(&fire).contains("daemon is not running"),
        "{}",
        support::stderr(&fire)
    );
    let queued = support::rollcall(&["--db", &db, "round", "fire", "smoke", "--queue"]);
    assert!(queued.status.success());
    assert!(support::stdout(&queued).contains("A01 queued"));
}
