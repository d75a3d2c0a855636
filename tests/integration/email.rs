//! The email channel against a real SMTP server (aiosmtpd, started by the
//! harness): STARTTLS and implicit TLS with a CA this test makes and trusts
//! through `ca_file`, AUTH, failure classes, the shape of the message, and the
//! connection pool with `TCP_NODELAY`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rollcall::channel::Channels;
use rollcall::channel::email::{EmailChannel, email_channel, parse_message_id};
use rollcall::clock::{Clock as _, ManualClock, SharedClock};
use rollcall::config::{Config, Secrets, Smtp, Tls};
use rollcall::dispatch::{Dispatcher, RetryPolicy};
use rollcall::domain::render::{Alert, is_marked};
use rollcall::domain::schedule::Marker;
use rollcall::domain::{EmailAddress, Lang};
use rollcall::engine::Engine;
use rollcall::store::{SendResult, Store};

use crate::support::smtp_server::{Aiosmtpd, ServerTls, SmtpOptions, StoredMail};

const PATIENCE: Duration = Duration::from_secs(30);
const PASSWORD_ENV: &str = "ROLLCALL_TEST_SMTP_PASSWORD";
const LOGIN: (&str, &str) = ("drill", "s3cret-pw");

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`,
/// written as PEM files.
struct TestPki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestPki {
    fn new(name: &str) -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("rollcall test CA {name}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the ca");
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("sign the leaf");

        let write = |file: &str, pem: String| {
            let path = dir.path().join(file);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        TestPki {
            ca: write("ca.crt", ca_cert.pem()),
            cert: write("smtp.crt", leaf_cert.pem()),
            key: write("smtp.key", leaf_key.serialize_pem()),
            _dir: dir,
        }
    }

    fn starttls(&self) -> ServerTls {
        ServerTls::Starttls {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    fn implicit(&self) -> ServerTls {
        ServerTls::Implicit {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// How the channel under test connects.
struct Client<'a> {
    host: &'a str,
    tls: Tls,
    ca_file: Option<&'a Path>,
    login: Option<(&'a str, &'a str)>,
    pool: u32,
}

impl Default for Client<'_> {
    fn default() -> Self {
        Client {
            host: "127.0.0.1",
            tls: Tls::None,
            ca_file: None,
            login: None,
            pool: 4,
        }
    }
}

fn channel(server: &Aiosmtpd, client: Client<'_>) -> EmailChannel {
    rollcall::channel::install_crypto_provider();
    let cfg = Config {
        email_from: "Exercise Control <drill@cstcb.example>".into(),
        email_reply_to: Some(EmailAddress::parse("acks@cstcb.example").expect("reply-to")),
        ..Config::default()
    };
    let smtp = Smtp {
        host: client.host.to_owned(),
        port: server.port,
        tls: client.tls,
        username: client.login.map(|(user, _)| user.to_owned()),
        password_env: client.login.map(|_| PASSWORD_ENV.to_owned()),
        ca_file: client.ca_file.map(Path::to_path_buf),
        pool: client.pool,
    };
    let secrets = Secrets::supplied(
        client
            .login
            .map(|(_, password)| (PASSWORD_ENV.to_owned(), password.to_owned())),
    );
    email_channel(&cfg, &smtp, &secrets).expect("build the email channel")
}

async fn send(ch: &EmailChannel, id: i64, to: &str) -> SendResult {
    ch.send(
        id,
        to,
        &format!("[EXERCISE] message {id} [EXERCISE]"),
        &format!("[EXERCISE]\n\nMessage {id}.\n\n[EXERCISE]\n"),
        sent_at(),
    )
    .await
}

/// The instant the tests' emails are sent at (a manual clock's, not the
/// machine's): the `Date` header says it.
fn sent_at() -> DateTime<chrono::Utc> {
    DateTime::parse_from_rfc3339("2027-02-27T14:00:05Z")
        .expect("instant")
        .to_utc()
}

#[track_caller]
fn assert_accepted(result: &SendResult) {
    assert!(
        matches!(result, SendResult::Accepted { provider, .. } if provider == "smtp"),
        "{result:?}"
    );
}

/// `(permanent, error)` of a failure; panics on anything else.
#[track_caller]
fn failure(result: &SendResult) -> (bool, &str) {
    match result {
        SendResult::Failed {
            provider,
            permanent,
            error,
        } if provider == "smtp" => (*permanent, error.as_str()),
        other => panic!("expected an smtp failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_with_auth_to_a_relay_trusted_through_ca_file() {
    let pki = TestPki::new("starttls");
    let Some(server) = Aiosmtpd::start_with(&SmtpOptions {
        tls: pki.starttls(),
        login: Some((LOGIN.0.into(), LOGIN.1.into())),
        ..SmtpOptions::default()
    }) else {
        return;
    };
    let ch = channel(
        &server,
        Client {
            host: "localhost",
            tls: Tls::Starttls,
            ca_file: Some(&pki.ca),
            login: Some(LOGIN),
            ..Client::default()
        },
    );
    for (id, to) in [
        (1, "a@dpo.example"),
        (2, "b@dpo.example"),
        (3, "c@fsd.example"),
    ] {
        assert_accepted(&send(&ch, id, to).await);
    }
    let mails = server.wait_for(3, PATIENCE);
    let rcpts: Vec<Vec<String>> = mails.iter().map(StoredMail::rcpt_to).collect();
    assert_eq!(
        rcpts,
        [["a@dpo.example"], ["b@dpo.example"], ["c@fsd.example"]]
    );
    // The server takes mail only after AUTH; every connection logged in once.
    let attempts = server.auth_attempts();
    assert!(!attempts.is_empty());
    assert_eq!(attempts.len(), server.connections(), "{attempts:?}");
    for attempt in &attempts {
        assert!(attempt.ends_with(" drill ok"), "{attempt}");
    }

    // Without credentials the same relay refuses the mail (530), proving
    // that the accepted ones above were authenticated.
    let anonymous = channel(
        &server,
        Client {
            host: "localhost",
            tls: Tls::Starttls,
            ca_file: Some(&pki.ca),
            ..Client::default()
        },
    );
    let refused = send(&anonymous, 4, "d@dpo.example").await;
    let (permanent, error) = failure(&refused);
    assert!(permanent && error.contains("530"), "{error}");
    assert_eq!(server.messages().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_smtp_password_is_a_permanent_failure() {
    let pki = TestPki::new("wrong-password");
    let Some(server) = Aiosmtpd::start_with(&SmtpOptions {
        tls: pki.starttls(),
        login: Some((LOGIN.0.into(), LOGIN.1.into())),
        ..SmtpOptions::default()
    }) else {
        return;
    };
    let ch = channel(
        &server,
        Client {
            tls: Tls::Starttls,
            ca_file: Some(&pki.ca),
            login: Some((LOGIN.0, "not-the-password")),
            ..Client::default()
        },
    );
    let result = send(&ch, 1, "a@dpo.example").await;
    let (permanent, error) = failure(&result);
    assert!(permanent, "{error}");
    assert!(
        error.starts_with("smtp auth:") && error.contains("535"),
        "{error}"
    );
    assert_eq!(server.auth_attempts(), ["PLAIN drill refused"]);
    assert!(server.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_implicit_tls_with_the_same_ca() {
    let pki = TestPki::new("implicit");
    let Some(server) = Aiosmtpd::start_with(&SmtpOptions {
        tls: pki.implicit(),
        login: Some((LOGIN.0.into(), LOGIN.1.into())),
        ..SmtpOptions::default()
    }) else {
        return;
    };
    let ch = channel(
        &server,
        Client {
            tls: Tls::Implicit,
            ca_file: Some(&pki.ca),
            login: Some(LOGIN),
            ..Client::default()
        },
    );
    for id in 1..=2 {
        assert_accepted(&send(&ch, id, "a@dpo.example").await);
    }
    let mails = server.wait_for(2, PATIENCE);
    assert_eq!(mails[0].subject, "[EXERCISE] message 1 [EXERCISE]");
    assert_eq!(server.auth_attempts(), ["PLAIN drill ok"]);
    assert_eq!(
        server.connections(),
        1,
        "the second email reused the session"
    );
    let stats = ch.connection_stats();
    assert_eq!((stats.opened, stats.nodelay), (1, 1));
}

/// A relay whose certificate chains to a CA we do not trust is refused before
/// anything is sent, with STARTTLS and with implicit TLS alike.
///
/// The failure is *transient*: it is about the connection, not the message
/// (the same message is fine once the relay's certificate or `ca_file` is
/// put right), nothing was delivered so a retry cannot duplicate it, and the
/// outbox's bounded backoff gives an operator the retry window to fix it
/// instead of failing every queued email for good on the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_from_an_unknown_ca_is_refused_as_transient() {
    let trusted = TestPki::new("trusted");
    let stranger = TestPki::new("stranger");
    for (server_tls, client_tls) in [
        (stranger.starttls(), Tls::Starttls),
        (stranger.implicit(), Tls::Implicit),
    ] {
        let Some(server) = Aiosmtpd::start_with(&SmtpOptions {
            tls: server_tls,
            login: Some((LOGIN.0.into(), LOGIN.1.into())),
            ..SmtpOptions::default()
        }) else {
            return;
        };
        let ch = channel(
            &server,
            Client {
                tls: client_tls,
                ca_file: Some(&trusted.ca),
                login: Some(LOGIN),
                ..Client::default()
            },
        );
        let result = send(&ch, 1, "a@dpo.example").await;
        let (permanent, error) = failure(&result);
        assert!(!permanent, "{error}");
        assert!(
            error.contains("certificate") || error.contains("UnknownIssuer"),
            "{error}"
        );
        eprintln!("refused as expected: {error}");
        assert!(server.auth_attempts().is_empty(), "no password went out");
        assert!(server.messages().is_empty());
    }
}

/// Visible text of an HTML document: tags dropped, the five entities decoded.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_is_text_and_escaped_html_with_reply_to_message_id_marker_and_code() {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let ch = channel(&server, Client::default());
    let marker = Marker {
        en: "[EXERCISE]".into(),
        zh: "[演習]".into(),
    };
    let ack_url = "https://drill.cstcb.example/a/Tk3n?x=1&y=2";
    for (id, lang) in [(101, Lang::En), (102, Lang::Zh)] {
        let alert = Alert {
            marker: &marker,
            lang,
            exercise_title: "Typhoon <b>drill</b> & \"night\" 颱風",
            round: "R03",
            department: "DPO",
            code: "7KQ4M",
            ack_url,
            deadline_at: DateTime::from_timestamp(1_800_000_000, 0).expect("instant"),
            tz: chrono_tz::Asia::Hong_Kong,
            sms_two_way: true,
        };
        let result = ch
            .send(
                id,
                "duty@dpo.example",
                &alert.email_subject(),
                &alert.email_body(),
                sent_at(),
            )
            .await;
        assert_accepted(&result);
    }
    let mails = server.wait_for(2, PATIENCE);
    for (mail, (id, lang)) in mails.iter().zip([(101, Lang::En), (102, Lang::Zh)]) {
        let m = marker.for_lang(lang);
        assert_eq!(mail.mime_type(), "multipart/alternative", "{}", mail.raw);
        let date = mail.header("Date").expect("a Date header");
        assert_eq!(
            DateTime::parse_from_rfc2822(date).map(|d| d.to_utc()),
            Ok(sent_at()),
            "dated by the injected clock: {date}"
        );
        assert!(is_marked(&mail.subject, m) && mail.subject.contains("7KQ4M"));
        assert!(is_marked(&mail.body, m), "{}", mail.body);
        assert!(mail.body.contains("7KQ4M") && mail.body.contains(ack_url));

        let html = mail.html.as_deref().expect("an html part");
        let body = html
            .split_once("<body>")
            .and_then(|(_, rest)| rest.split_once("</body>"))
            .map(|(body, _)| body)
            .expect("an html body");
        assert!(is_marked(&visible_text(body), m), "{html}");
        assert!(html.contains("7KQ4M"));
        let href = ack_url.replace('&', "&amp;");
        assert!(html.contains(&format!("<a href=\"{href}\">")), "{html}");
        assert!(
            !html.contains("<b>drill"),
            "untrusted text is escaped: {html}"
        );
        assert!(html.contains("&lt;b&gt;drill&lt;/b&gt; &amp; &quot;night&quot;"));

        assert_eq!(mail.header("Reply-To"), Some("acks@cstcb.example"));
        let message_id = mail.header("Message-ID").expect("a Message-ID");
        assert!(message_id.ends_with("@cstcb.example>"), "{message_id}");
        assert_eq!(parse_message_id(message_id), Some(id));
        assert!(
            mail.header_decoded("From")
                .is_some_and(|f| f.contains("drill@cstcb.example"))
        );
    }
    let zh = &mails[1];
    assert!(zh.subject.contains("演習第R03輪"), "{}", zh.subject);
    assert!(
        zh.body.contains("請於") && zh.body.contains("確認收到"),
        "{}",
        zh.body
    );
    assert!(zh.html.as_deref().is_some_and(|h| h.contains("這是演習")));
}

/// Nagle's algorithm costs every pooled email a delayed ACK (~40 ms), so the
/// channel opens its own sockets with `TCP_NODELAY`. Asserted by behaviour:
/// every socket the channel opened reports the option set, and a burst of
/// concurrent emails shares at most `pool` connections (counted by the
/// server). The timings are printed for the curious, never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_at_most_pool_connections_all_with_tcp_nodelay() {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let ch = Arc::new(channel(
        &server,
        Client {
            pool: 2,
            ..Client::default()
        },
    ));
    const BURST: i64 = 24;
    let mut sends = tokio::task::JoinSet::new();
    for id in 1..=BURST {
        let ch = Arc::clone(&ch);
        sends.spawn(async move { send(&ch, id, &format!("user{id}@dpo.example")).await });
    }
    while let Some(result) = sends.join_next().await {
        assert_accepted(&result.expect("send task"));
    }
    let mails = server.wait_for(BURST as usize, PATIENCE);
    let peers: BTreeSet<&str> = mails
        .iter()
        .filter_map(|m| m.header_all("X-Peer").last().copied())
        .collect();
    assert!(peers.len() <= 2, "{peers:?}");
    assert!(
        server.connections() <= 2,
        "{} connections",
        server.connections()
    );
    let stats = ch.connection_stats();
    assert!(stats.opened >= 1 && stats.opened <= 2, "{stats:?}");
    assert_eq!(stats.nodelay, stats.opened, "every socket has TCP_NODELAY");

    // Numbers only: one connection, emails one after another, ours against
    // lettre's own pooled transport (Nagle left on).
    const ROUNDS: i64 = 20;
    let ours = channel(
        &server,
        Client {
            pool: 1,
            ..Client::default()
        },
    );
    assert_accepted(&send(&ours, 0, "warm@dpo.example").await);
    let started = Instant::now();
    for id in 1..=ROUNDS {
        assert_accepted(&send(&ours, id, "seq@dpo.example").await);
    }
    let nodelay_ms = started.elapsed().as_secs_f64() * 1000.0 / ROUNDS as f64;
    let stock = lettre_stock_ms_per_email(server.port, ROUNDS).await;
    eprintln!(
        "email over one pooled connection to aiosmtpd: {nodelay_ms:.2} ms/email with TCP_NODELAY, \
         {stock:.2} ms/email with lettre's own transport"
    );
}

async fn lettre_stock_ms_per_email(port: u16, rounds: i64) -> f64 {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let message = || {
        Message::builder()
            .from("drill@cstcb.example".parse().expect("from"))
            .to("stock@dpo.example".parse().expect("to"))
            .subject("[EXERCISE] stock [EXERCISE]")
            .body("[EXERCISE] stock [EXERCISE]".to_owned())
            .expect("message")
    };
    transport.send(message()).await.expect("warm-up send");
    let started = Instant::now();
    for _ in 0..rounds {
        transport.send(message()).await.expect("stock send");
    }
    started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_replaced_and_nothing_is_lost() {
    let Some(server) = Aiosmtpd::start_with(&SmtpOptions {
        close_after_message: true,
        ..SmtpOptions::default()
    }) else {
        return;
    };
    let ch = channel(
        &server,
        Client {
            pool: 1,
            ..Client::default()
        },
    );
    for id in 1..=3 {
        assert_accepted(&send(&ch, id, "a@dpo.example").await);
    }
    let mails = server.wait_for(3, PATIENCE);
    assert_eq!(mails.len(), 3, "each email delivered once");
    assert_eq!(server.connections(), 3);
    assert_eq!(ch.connection_stats().opened, 3);
}

/// The smoke drill's first round fired on a manual clock with only email
/// configured, against a relay with STARTTLS and AUTH on `port`.
struct MailNight {
    store: Store,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
    _dir: tempfile::TempDir,
}

impl MailNight {
    async fn fire(pki: &TestPki, port: u16) -> MailNight {
        rollcall::channel::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .expect("store");
        let t0 = DateTime::parse_from_rfc3339("2027-02-27T14:00:00Z")
            .expect("t0")
            .to_utc();
        let clock = ManualClock::new(t0 - TimeDelta::hours(1));
        let shared: SharedClock = clock.clone();
        crate::support::start_exercise(
            &store,
            &crate::support::root().join("schedules/smoke.yaml"),
            clock.now(),
        )
        .await;
        let cfg = Config {
            email_from: "Exercise Control <drill@cstcb.example>".into(),
            email_reply_to: Some(EmailAddress::parse("acks@cstcb.example").expect("reply-to")),
            smtp: Some(Smtp {
                host: "localhost".into(),
                port,
                tls: Tls::Starttls,
                username: Some(LOGIN.0.into()),
                password_env: Some(PASSWORD_ENV.into()),
                ca_file: Some(pki.ca.clone()),
                pool: 4,
            }),
            ..Config::default()
        };
        let secrets = Secrets::supplied([(PASSWORD_ENV.to_owned(), LOGIN.1.to_owned())]);
        let channels = Arc::new(Channels::from_config(&cfg, secrets).expect("channels"));
        let engine = Engine::new(
            store.clone(),
            Arc::clone(&shared),
            rollcall::daemon::engine_settings(&cfg),
        );
        let retry = RetryPolicy {
            attempts: 8,
            backoff: TimeDelta::seconds(5),
            max_backoff: TimeDelta::minutes(1),
        };
        let dispatcher = Dispatcher::new(store.clone(), shared, channels, retry, "mail".into());
        clock.set(t0);
        engine.tick().await.expect("the round fires");
        MailNight {
            store,
            clock,
            dispatcher,
            _dir: dir,
        }
    }

    /// (id, state, attempts) of every email in the outbox.
    async fn emails(&self) -> Vec<(i64, String, i64)> {
        let Store::Sqlite(pool) = &self.store else {
            unreachable!("the night runs on SQLite")
        };
        sqlx::query_as(
            "SELECT id, state, attempts FROM messages WHERE channel = 'email' ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .expect("read the outbox")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_when_the_round_fires_and_back_30s_later_delivers_every_email_once() {
    let pki = TestPki::new("down-and-back");
    let options = |port| SmtpOptions {
        tls: pki.starttls(),
        login: Some((LOGIN.0.into(), LOGIN.1.into())),
        port,
        ..SmtpOptions::default()
    };
    // Learn a port the relay can have, then take the relay down.
    let Some(first) = Aiosmtpd::start_with(&options(None)) else {
        return;
    };
    let port = first.port;
    drop(first);

    let night = MailNight::fire(&pki, port).await;
    let t0 = night.clock.now();
    let back_at = t0 + TimeDelta::seconds(30);
    let mut relay = None;
    let mut refused_attempts = 0;
    for _ in 0..1_000 {
        if relay.is_none() && night.clock.now() >= back_at {
            relay = Some(Aiosmtpd::start_with(&options(Some(port))).expect("the relay comes back"));
        }
        night.dispatcher.dispatch_pending().await.expect("dispatch");
        if relay.is_none() {
            refused_attempts = night.emails().await.iter().map(|e| e.2).sum::<i64>();
        }
        match night.store.next_message_due().await.expect("next due") {
            Some(t) => night.clock.set(t.max(night.clock.now())),
            None => break,
        }
    }
    let relay = relay.expect("the outbox still had work when the relay came back");

    let emails = night.emails().await;
    assert!(
        emails.len() >= 3,
        "the round mails every primary: {emails:?}"
    );
    assert!(
        refused_attempts >= emails.len() as i64,
        "every email was tried while the relay was down ({refused_attempts} attempts)"
    );
    for (id, state, attempts) in &emails {
        assert_eq!(state, "accepted", "email {id}");
        assert!(
            *attempts >= 2,
            "email {id} went out on a retry, not the first try"
        );
    }
    // Exactly once: one mail per outbox row, each row's Message-ID once.
    let mails = relay.wait_for(emails.len(), PATIENCE);
    let mut ids: Vec<i64> = mails
        .iter()
        .map(|m| {
            parse_message_id(m.header("Message-ID").expect("a Message-ID"))
                .expect("a rollcall Message-ID")
        })
        .collect();
    ids.sort_unstable();
    let rows: Vec<i64> = emails.iter().map(|e| e.0).collect();
    assert_eq!(ids, rows, "each email delivered exactly once");
    // Nothing is left to send: a later pass delivers nothing more.
    night.clock.set(t0 + TimeDelta::minutes(10));
    night.dispatcher.dispatch_pending().await.expect("dispatch");
    assert_eq!(relay.messages().len(), rows.len());
}
