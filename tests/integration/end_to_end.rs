//! A round over the real stack, driven as an operator drives it: the real
//! binary's `exercise load`, `exercise start`, `round fire` and `rollcall
//! run` over `contacts/`, a real SMTP server (aiosmtpd), a Twilio-format
//! HTTP server and a webhook receiver, acks through the daemon's link
//! endpoint, then `report`. Virtual time comes from the `test-clock` file.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{KeyInit, Mac};
use rollcall::domain::codes::LinkToken;
use rollcall::domain::contacts::{self, Roster};
use rollcall::sinks::{self, ReceivedSms, ReceivedWebhook, Recorder, TwilioFake};
use rollcall::yaml::Problems;

use crate::support::daemon::{PATIENCE, Workspace, eventually};
use crate::support::smtp_server::{Aiosmtpd, free_port};
use crate::support::{self};

const SID: &str = "AC00000000000000000000000000000e2e";
const TOKEN: &str = "e2e-twilio-token";
const HOOK_SECRET: &str = "e2e-webhook-secret";
const EXERCISE: &str = "e2e-drill";

fn t0() -> DateTime<Utc> {
    // Saturday 27 Feb 2027, 22:00 in Hong Kong: a weekend night.
    DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
        .unwrap()
        .to_utc()
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

/// The drill the end-to-end test loads: every player department of
/// `contacts/`, the sample's timings, one planned round far from T0.
const SCHEDULE: &str = r#"
exercise:
  id: e2e-drill
  title: End-to-end drill
  scenario: Every department confirms its out-of-hours contacts.
  objectives: [Reach every B/D within 30 minutes]
  sponsor: Cyber Security and Technology Crime Bureau
  handling: RESTRICTED
  timezone: Asia/Hong_Kong
  window: { start: 2027-02-27T18:00, end: 2027-03-07T23:59 }
  notice: announced
  marker: { en: "[EXERCISE]", zh: "[演習]" }
  control: [cstcb-duty-controller, cstcb-exercise-director]
  targets: all
  calendar:
    office_hours: { mon-fri: "09:00-18:00" }
    holidays: hk
    allow_uncovered: false
  rounds:
    - at: 2027-03-06T21:30
  ack: { target: 30m, deadline: 60m, settle: 1m }
  escalation:
    - { after: 0m,  notify: [primary],         via: [sms, email, webhook] }
    - { after: 15m, notify: [alternate, duty], via: [sms, email, webhook] }
"#;

/// Loopback peers living in the test process; aiosmtpd is a child process.
struct Peers {
    smtp: Aiosmtpd,
    sms: Recorder<ReceivedSms>,
    hooks: Recorder<ReceivedWebhook>,
    sms_addr: std::net::SocketAddr,
    hook_addr: std::net::SocketAddr,
}

async fn start_peers() -> Option<Peers> {
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
        sinks::twilio_router(fake),
        std::future::pending(),
    ));
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook_listener.local_addr().unwrap();
    tokio::spawn(sinks::serve_router(
        hook_listener,
        sinks::webhook_router(hooks.clone()),
        std::future::pending(),
    ));
    Some(Peers {
        smtp,
        sms,
        hooks,
        sms_addr,
        hook_addr,
    })
}

/// Copies `contacts/` into `dir`, pointing the sample's fictitious webhook
/// hosts at the local receiver (keeping host and path in the path, so
/// deliveries can be told apart). Returns the roster as rollcall loads it.
fn copy_contacts(dir: &std::path::Path, hook_addr: std::net::SocketAddr) -> Roster {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(support::root().join("contacts")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("url: https://", &format!("url: http://{hook_addr}/"));
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
    let mut problems = Problems::default();
    let (roster, _) = contacts::load_dir(dir, &mut problems);
    assert!(!problems.has_errors(), "copied contacts must load");
    roster
}

fn config_yaml(database: &str, contacts: &std::path::Path, port: u16, peers: &Peers) -> String {
    format!(
        r#"
database: {database}
contacts: {contacts}
http:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
sms:
  sender: {{ mode: two-way, from: "+85251234567" }}
  providers:
    - name: primary
      kind: twilio
      base_url: http://{sms}
      account_sid: {SID}
      auth_token_env: E2E_TWILIO_TOKEN
email:
  from: "Exercise Control <drill@cstcb.example>"
  reply_to: acks@cstcb.example
  smtp: {{ host: 127.0.0.1, port: {smtp}, tls: none, pool: 2 }}
webhook:
  secret_env: E2E_WEBHOOK_SECRET
"#,
        contacts = contacts.display(),
        sms = peers.sms_addr,
        smtp = peers.smtp.port,
    )
}

fn report_json(ws: &Workspace) -> serde_json::Value {
    let out = ws.cli_ok(&["report", EXERCISE, "--format", "json"]);
    serde_json::from_str(&out).expect("report --format json is JSON")
}

fn rows(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["rows"].as_array().cloned().unwrap_or_default()
}

/// How many step messages (sms, email, webhook) `roles` of `depts` get.
fn expected_sends(roster: &Roster, depts: &BTreeSet<String>, roles: &[&str]) -> [usize; 3] {
    let mut n = [0; 3];
    for c in roster.contacts() {
        if depts.contains(c.department.as_str()) && roles.contains(&c.role.as_str()) {
            n[0] += usize::from(c.sms.is_some());
            n[1] += usize::from(c.email.is_some());
            n[2] += usize::from(c.webhook.is_some());
        }
    }
    n
}

async fn a_round_reaches_every_department_and_the_report_agrees(database: Option<String>) {
    let Some(peers) = start_peers().await else {
        return;
    };
    let port = free_port();
    let mut ws = Workspace::new("", t0() - TimeDelta::hours(1));
    let database =
        database.unwrap_or_else(|| format!("sqlite://{}", ws.path().join("e2e.db").display()));
    let roster = copy_contacts(&ws.path().join("contacts"), peers.hook_addr);
    ws.write_config(&config_yaml(
        &database,
        &ws.path().join("contacts"),
        port,
        &peers,
    ));
    for (_, env) in roster.secret_envs() {
        ws.set_env(env, HOOK_SECRET);
    }
    ws.set_env("E2E_WEBHOOK_SECRET", HOOK_SECRET);
    ws.set_env("E2E_TWILIO_TOKEN", TOKEN);
    let schedule = ws.path().join("drill.yaml");
    std::fs::write(&schedule, SCHEDULE).unwrap();

    if database.starts_with("postgres") {
        ws.cli_ok(&["db", "migrate"]);
    }
    let loaded = ws.cli_ok(&["exercise", "load", schedule.to_str().unwrap()]);
    assert!(loaded.contains("e2e-drill loaded"), "{loaded}");
    ws.cli_ok(&[
        "exercise",
        "start",
        EXERCISE,
        "--yes",
        "--authorised-by",
        "e2e",
    ]);

    // The daemon runs; an operator fires an ad-hoc round at T0; the daemon sends it.
    ws.set_clock(t0());
    let daemon = ws.start_daemon();
    let fired = ws.cli_ok(&["round", "fire", EXERCISE]);
    assert!(fired.contains("round A01 fired"), "{fired}");

    let targeted: BTreeSet<String> = roster
        .departments
        .iter()
        .filter(|d| d.code.as_str() != "CSTCB")
        .map(|d| d.code.to_string())
        .collect();
    assert_eq!(
        targeted.len(),
        69,
        "every department but exercise control is targeted"
    );
    let [step1_sms, step1_mail, step1_hooks] = expected_sends(&roster, &targeted, &["primary"]);
    let mails = peers.smtp.wait_for(step1_mail, PATIENCE);
    tokio::time::timeout(PATIENCE, peers.sms.wait_for_len(step1_sms))
        .await
        .expect("step-1 SMS arrive");
    tokio::time::timeout(PATIENCE, peers.hooks.wait_for_len(step1_hooks))
        .await
        .expect("step-1 webhooks arrive");
    assert_eq!(mails.len(), step1_mail);
    assert_eq!(peers.sms.len(), step1_sms);
    assert_eq!(peers.hooks.len(), step1_hooks);

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
        assert_eq!(contact.role.as_str(), "primary", "step 1 mails primaries");
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
        assert!(
            body.contains(&format!("http://127.0.0.1:{port}/a/{token}")),
            "the link points at the daemon's public URL"
        );
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
    assert_eq!(reached, targeted, "every targeted department was messaged");
    // SMS-only primaries have no link (links in SMS look like scams); they ack by reply.
    assert!(
        tokens.len() >= targeted.len() - 2,
        "most departments got a link or token"
    );

    // Half the departments acknowledge through the daemon's link, two minutes in.
    ws.set_clock(t0() + TimeDelta::minutes(2));
    let base = format!("http://{}", daemon.addr());
    rollcall::channel::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for (i, (dept, token)) in tokens.iter().enumerate() {
        if i % 2 != 0 {
            continue;
        }
        let url = format!("{base}/a/{token}");
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
    let again = http.post(format!("{base}/a/{first}")).send().await.unwrap();
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
        .post(format!("{base}/a/{}", "0".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // At 15 minutes the daemon escalates the others to their alternates and duty desks.
    let silent: BTreeSet<String> = targeted.difference(&acked).cloned().collect();
    let [step2_sms, step2_mail, step2_hooks] =
        expected_sends(&roster, &silent, &["alternate", "duty"]);
    assert!(step2_sms + step2_mail + step2_hooks > 0);
    ws.set_clock(t0() + TimeDelta::minutes(15));
    let mails = peers.smtp.wait_for(step1_mail + step2_mail, PATIENCE);
    tokio::time::timeout(PATIENCE, peers.sms.wait_for_len(step1_sms + step2_sms))
        .await
        .expect("step-2 SMS arrive");
    tokio::time::timeout(
        PATIENCE,
        peers.hooks.wait_for_len(step1_hooks + step2_hooks),
    )
    .await
    .expect("step-2 webhooks arrive");
    for m in &mails[step1_mail..] {
        let to = m.header("To").unwrap_or_default().to_owned();
        let contact = roster
            .contacts()
            .find(|c| c.email.as_ref().is_some_and(|e| to.contains(e.as_str())))
            .expect("mail to a roster contact");
        assert!(
            silent.contains(contact.department.as_str()),
            "only departments that have not acked escalate: {}",
            contact.department
        );
    }

    // After deadline + settle the daemon closes the round; the report agrees.
    ws.set_clock(t0() + TimeDelta::minutes(62));
    let report = eventually("the round to be finalised", || {
        let r = report_json(&ws);
        rows(&r)
            .iter()
            .all(|row| !matches!(row["status"].as_str(), Some("open" | "escalated")))
            .then_some(r)
    })
    .await;
    let rows = rows(&report);
    assert_eq!(rows.len(), targeted.len());
    for row in &rows {
        let dept = row["department"].as_str().unwrap();
        if acked.contains(dept) {
            assert_eq!(row["status"], "on_target", "{dept}");
            assert_eq!(row["tta_secs"], 120, "{dept}");
            assert_eq!(row["ack_channel"], "link", "{dept}");
            assert_eq!(
                row["escalated"], false,
                "{dept} acked before the second step"
            );
        } else {
            assert_eq!(row["status"], "missed", "{dept}");
            assert_eq!(row["escalated"], true, "{dept} escalated to alternates");
        }
    }
    assert_eq!(report["summary"]["on_target"], acked.len());
    assert_eq!(report["summary"]["missed"], targeted.len() - acked.len());
    let text = ws.cli_ok(&["report", EXERCISE]);
    assert!(
        text.contains(&format!("{} on target", acked.len())),
        "{text}"
    );

    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_smtp_sms_and_webhook_is_acked_and_reported_on_sqlite() {
    a_round_reaches_every_department_and_the_report_agrees(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_smtp_sms_and_webhook_is_acked_and_reported_on_postgres() {
    let Some(base) = support::postgres_url() else {
        return;
    };
    let url = support::fresh_postgres(&base, "e2e").await;
    a_round_reaches_every_department_and_the_report_agrees(Some(url)).await;
}

fn round_states(ws: &Workspace, exercise: &str) -> BTreeMap<String, serde_json::Value> {
    let out = ws.cli_ok(&["--json", "exercise", "show", exercise]);
    let show: serde_json::Value = serde_json::from_str(&out).expect("exercise show --json");
    show["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["round"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_missed_while_the_daemon_was_down_fire_within_grace_and_are_skipped_beyond() {
    // smoke.yaml plans R01 at Sat 27 Feb 22:00 Hong Kong = t0(); grace is 5m.
    let mut ws = Workspace::new("", t0() - TimeDelta::hours(1));
    let db = format!("sqlite://{}", ws.path().join("grace.db").display());
    ws.write_config(&format!(
        "database: {db}\nhttp: {{ listen: \"127.0.0.1:0\" }}\n"
    ));
    ws.set_env("RUST_LOG", "warn");
    ws.cli_ok(&["exercise", "load", "schedules/smoke.yaml"]);
    ws.cli_ok(&["exercise", "start", "smoke", "--yes"]);

    ws.set_clock(t0());
    let refused = ws.cli(&["round", "fire", "smoke"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        support::stderr(&refused).contains("daemon is not running"),
        "{}",
        support::stderr(&refused)
    );
    let unknown = ws.cli(&[
        "round",
        "fire",
        "smoke",
        "--queue",
        "--departments",
        "DPO,NOPE",
    ]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "a department list naming nothing is a usage error"
    );
    assert!(support::stderr(&unknown).contains("NOPE"));
    let queued = ws.cli_ok(&["round", "fire", "smoke", "--queue", "--departments", "dpo"]);
    assert!(queued.contains("round A01 queued"), "{queued}");
    let rounds = round_states(&ws, "smoke");
    assert_eq!(rounds["A01"]["state"], "queued");
    assert!(
        !rounds.contains_key("A02"),
        "the refused list stored nothing"
    );

    // The daemon comes up two minutes late: R01 and the queued A01 still fire.
    ws.set_clock(t0() + TimeDelta::minutes(2));
    let daemon = ws.start_daemon();
    let rounds = eventually("R01 and A01 to fire", || {
        let r = round_states(&ws, "smoke");
        (r["R01"]["state"] == "fired" && r["A01"]["state"] == "fired").then_some(r)
    })
    .await;
    assert_eq!(
        rounds["A01"]["departments"], "DPO",
        "the queued round kept its list"
    );
    assert_eq!(rounds["R02"]["state"], "planned");
    daemon.stop();

    // Queued now, but the daemon only returns ten minutes later: skipped, with why.
    ws.set_clock(t0() + TimeDelta::minutes(3));
    let queued = ws.cli_ok(&["round", "fire", "smoke", "--queue"]);
    assert!(queued.contains("round A02 queued"), "{queued}");
    ws.set_clock(t0() + TimeDelta::minutes(13));
    let daemon = ws.start_daemon();
    let rounds = eventually("A02 to be skipped", || {
        let r = round_states(&ws, "smoke");
        (r["A02"]["state"] == "skipped").then_some(r)
    })
    .await;
    let reason = rounds["A02"]["reason"].as_str().unwrap();
    assert!(reason.contains("missed by 10m (grace 5m)"), "{reason}");
    daemon.stop();

    // R02 (Sun 28 Feb 02:30 Hong Kong) passes while the daemon is down; it
    // comes back 20 minutes later and records the planned round skipped.
    let r02 = DateTime::parse_from_rfc3339("2027-02-27T18:30:00Z")
        .unwrap()
        .to_utc();
    ws.set_clock(r02 + TimeDelta::minutes(20));
    let daemon = ws.start_daemon();
    let rounds = eventually("R02 to be skipped", || {
        let r = round_states(&ws, "smoke");
        (r["R02"]["state"] == "skipped").then_some(r)
    })
    .await;
    assert!(
        rounds["R02"]["reason"]
            .as_str()
            .unwrap()
            .contains("missed by 20m (grace 5m)")
    );
    daemon.stop();

    let text = ws.cli_ok(&["exercise", "show", "smoke"]);
    assert!(text.contains("skipped (missed by 10m"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&ws.cli_ok(&["report", "smoke", "--format", "json"])).unwrap();
    let mut seen: Vec<(String, String)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["round"].as_str().unwrap().to_owned(),
                r["department"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String)> = [
        ("A01", "DPO"),
        ("R01", "DPO"),
        ("R01", "FSD"),
        ("R01", "HKPF"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(seen, expected, "a skipped round has no notifications");
}
