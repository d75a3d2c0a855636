//! Email over SMTP: lettre speaks the protocol, this module owns the sockets.
//!
//! lettre 0.11.23 never sets `TCP_NODELAY` on the sockets it opens, so every
//! command of a pooled connection waits for the server's delayed ACK (about
//! 40 ms an email; reference/ecosystem.md §13). The channel therefore opens
//! each TCP connection itself, turns Nagle off, wraps the socket in TLS when
//! `tls: implicit`, and hands it to lettre
//! ([`AsyncSmtpConnection::connect_with_transport`]), which then does
//! STARTTLS (`tls: starttls`) and AUTH (PLAIN or LOGIN). Up to
//! `email.smtp.pool` live connections are kept and reused across sends; one
//! that breaks is dropped and replaced, and one the server closed while idle is
//! retried once on a fresh connection (nothing was sent on it yet).
//!
//! Failures are classified for the outbox: a 5xx reply is permanent; a 4xx
//! reply, a timeout, a TLS failure or a lost connection is transient and
//! retried with backoff, because it says nothing about the message itself.
//!
//! Every email is `multipart/alternative` (the text, and the same text as
//! escaped HTML), `Reply-To` the acknowledgement mailbox, with a `Message-ID`
//! that names the outbox message ([`message_id_header`], [`parse_message_id`])
//! so a reply's `In-Reply-To` finds it.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::ChannelSetupError;
use crate::config::{Config, Secrets, Smtp, Tls};
use crate::domain::render::email_html;
use crate::store::SendResult;

/// The `provider` every email send result names.
const PROVIDER: &str = "smtp";

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer one command (or to finish the TLS
/// handshake). RFC 5321 allows minutes; a drill that waits that long on one
/// relay is late everywhere, and a transient failure is retried anyway.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection idle longer than this is closed instead of reused:
/// servers and NAT boxes drop idle sessions, and a silently dropped one would
/// only show as a command timeout.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// The email channel: one SMTP relay and a pool of live connections to it.
pub struct EmailChannel {
    relay: Relay,
    pool: Pool,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    domain: String,
    opened: AtomicU64,
    opened_nodelay: AtomicU64,
}

/// Where and how to connect.
struct Relay {
    host: String,
    port: u16,
    security: Security,
    auth: Auth,
    hello: ClientId,
    connect_timeout: Duration,
    command_timeout: Duration,
}

enum Security {
    None,
    Starttls(TlsParameters),
    Implicit(TlsParameters),
}

enum Auth {
    None,
    Password(Credentials),
    /// `password_env` names a variable that is not set: every send fails
    /// permanently (as an unset webhook secret does) instead of mailing
    /// unauthenticated.
    MissingSecret(String),
}

/// At most `size` sends at once, each on its own connection, so at most
/// `size` connections are ever open.
struct Pool {
    slots: Semaphore,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// What the channel's connections looked like so far (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// TCP connections opened since the channel was built.
    pub opened: u64,
    /// Of those, how many reported `TCP_NODELAY` set when read back from the
    /// socket after setting it.
    pub nodelay: u64,
    /// Connections waiting in the pool now.
    pub idle: usize,
}

/// Builds the channel from `email.*`. Nothing is connected yet: the first send
/// opens the first connection.
pub fn email_channel(
    cfg: &Config,
    smtp: &Smtp,
    secrets: &Secrets,
) -> Result<EmailChannel, ChannelSetupError> {
    let setup = |what: &str, e: &dyn fmt::Display| ChannelSetupError::Smtp(format!("{what}: {e}"));
    let security = match smtp.tls {
        Tls::None => Security::None,
        Tls::Starttls => Security::Starttls(tls_parameters(smtp)?),
        Tls::Implicit => Security::Implicit(tls_parameters(smtp)?),
    };
    let auth = match (&smtp.username, &smtp.password_env) {
        (None, None) => Auth::None,
        (Some(user), Some(env)) => match secrets.get(env) {
            Some(password) => {
                Auth::Password(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            None => Auth::MissingSecret(env.clone()),
        },
        _ => {
            return Err(ChannelSetupError::Smtp(
                "email.smtp.username and email.smtp.password_env go together".into(),
            ));
        }
    };
    if matches!(security, Security::None) && !matches!(auth, Auth::None) && !is_loopback(&smtp.host)
    {
        return Err(ChannelSetupError::Smtp(format!(
            "refusing to send the password to {} in clear text: set email.smtp.tls to starttls or implicit",
            smtp.host
        )));
    }
    let from: Mailbox = cfg
        .email_from
        .parse()
        .map_err(|e| setup("email.from", &e))?;
    let reply_to = match &cfg.email_reply_to {
        Some(a) => Some(
            a.as_str()
                .parse::<Mailbox>()
                .map_err(|e| setup("email.reply_to", &e))?,
        ),
        None => None,
    };
    let domain = from.email.domain().to_owned();
    let size = usize::try_from(smtp.pool).unwrap_or(1).max(1);
    Ok(EmailChannel {
        relay: Relay {
            host: smtp.host.clone(),
            port: smtp.port,
            security,
            auth,
            hello: ClientId::default(),
            connect_timeout: CONNECT_TIMEOUT,
            command_timeout: COMMAND_TIMEOUT,
        },
        pool: Pool {
            slots: Semaphore::new(size),
            idle: Mutex::new(Vec::with_capacity(size)),
        },
        from,
        reply_to,
        domain,
        opened: AtomicU64::new(0),
        opened_nodelay: AtomicU64::new(0),
    })
}

/// The relay's certificate must name `host`. With `ca_file`, only the
/// certificates in that file are trusted (as curl's `--cacert`); without it,
/// the platform's trust store is.
fn tls_parameters(smtp: &Smtp) -> Result<TlsParameters, ChannelSetupError> {
    let mut builder = TlsParameters::builder(smtp.host.clone());
    if let Some(ca) = &smtp.ca_file {
        let file = |e: &dyn fmt::Display| {
            ChannelSetupError::Smtp(format!("email.smtp.ca_file {}: {e}", ca.display()))
        };
        let pem = std::fs::read(ca).map_err(|e| file(&e))?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(file(&"holds no PEM certificate"));
        }
        builder = builder
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(&pem).map_err(|e| file(&e))?);
    }
    builder
        .build_rustls()
        .map_err(|e| ChannelSetupError::Smtp(format!("tls for {}: {e}", smtp.host)))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `<rollcall.{message_id}.{random}@{from-domain}>`: the outbox id a reply's
/// `In-Reply-To` or `References` leads back to, and 48 random bits so two
/// installations sharing a domain never collide.
pub fn message_id_header(message_id: i64, domain: &str) -> String {
    format!(
        "<rollcall.{message_id}.{}@{domain}>",
        hex::encode(rand::random::<[u8; 6]>())
    )
}

/// The outbox message id in a `Message-ID` that [`message_id_header`] made,
/// or `None` for any other id.
pub fn parse_message_id(value: &str) -> Option<i64> {
    let inner = value.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (local, domain) = inner.split_once('@')?;
    let mut parts = local.split('.');
    let (Some("rollcall"), Some(id), Some(random), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let well_formed = !domain.is_empty()
        && !random.is_empty()
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().all(|b| b.is_ascii_digit());
    if well_formed { id.parse().ok() } else { None }
}

impl EmailChannel {
    /// Sends one email: `subject` and `text` as rendered (marker-wrapped),
    /// with an HTML alternative of the text, dated `now` (the injected
    /// clock's time, so a simulated night's mail is dated in that night).
    pub async fn send(
        &self,
        message_id: i64,
        to: &str,
        subject: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> SendResult {
        let (envelope, email) = match self.build(message_id, to, subject, text, now) {
            Ok(built) => built,
            Err(error) => return failed(true, error),
        };
        if let Auth::MissingSecret(env) = &self.relay.auth {
            return failed(true, format!("smtp password: {env} is not set"));
        }
        let Ok(_slot) = self.pool.slots.acquire().await else {
            return failed(false, "the email channel is shut down".into());
        };
        loop {
            let (mut conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => match self.open().await {
                    Ok(conn) => (conn, false),
                    Err(failure) => return failure.into_result(),
                },
            };
            match self.transaction(&mut conn, &envelope, &email).await {
                Ok(response) => {
                    self.pool.put(conn);
                    return SendResult::Accepted {
                        provider: PROVIDER.into(),
                        provider_ref: response.message().next().map(str::to_owned),
                    };
                }
                // The server (or something in between) closed this pooled
                // connection while it was idle. Nothing of the message was
                // sent, so another connection may try.
                Err(failure)
                    if reused && failure.step == Step::MailFrom && failure.session_gone() =>
                {
                    tracing::debug!(error = %failure, "dropping a pooled smtp connection that went away");
                }
                Err(failure) => {
                    if failure.answered() {
                        self.reset_and_keep(conn).await;
                    }
                    return failure.into_result();
                }
            }
        }
    }

    /// Connections opened so far and how many of them had `TCP_NODELAY`.
    pub fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            opened: self.opened.load(Ordering::Relaxed),
            nodelay: self.opened_nodelay.load(Ordering::Relaxed),
            idle: self.pool.lock().len(),
        }
    }

    /// The envelope and the formatted message, or why it cannot be built
    /// (a permanent failure: retrying builds the same message).
    fn build(
        &self,
        message_id: i64,
        to: &str,
        subject: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<(Envelope, Vec<u8>), String> {
        // Contacts' addresses are bare; parsing one as an address is much
        // cheaper than as a mailbox (which may carry a display name).
        let to = match to.parse::<lettre::Address>() {
            Ok(address) => Mailbox::new(None, address),
            Err(_) => to.parse().map_err(|e| format!("bad address: {e}"))?,
        };
        let mut builder = Message::builder()
            .date(std::time::SystemTime::from(now))
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id_header(message_id, &self.domain)));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                email_html(text),
            ))
            .map_err(|e| format!("cannot build the email: {e}"))?;
        Ok((message.envelope().clone(), message.formatted()))
    }

    /// A new connection: TCP with `TCP_NODELAY`, TLS as configured, EHLO, AUTH.
    async fn open(&self) -> Result<AsyncSmtpConnection, Failure> {
        let relay = &self.relay;
        let tcp = match tokio::time::timeout(
            relay.connect_timeout,
            TcpStream::connect((relay.host.as_str(), relay.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(Failure::new(Step::Connect, Cause::Io(e))),
            Err(_) => {
                return Err(Failure::new(
                    Step::Connect,
                    Cause::TimedOut(relay.connect_timeout),
                ));
            }
        };
        tcp.set_nodelay(true)
            .map_err(|e| Failure::new(Step::Connect, Cause::Io(e)))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        if tcp.nodelay().unwrap_or(false) {
            self.opened_nodelay.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(port = relay.port, "smtp connection opened");
        let stream: Box<dyn AsyncTokioStream> = match &relay.security {
            Security::Implicit(params) => Box::new(
                self.limit(Step::TlsHandshake, ImplicitTls::wrap(tcp, params.clone()))
                    .await?,
            ),
            Security::None | Security::Starttls(_) => Box::new(tcp),
        };
        let mut conn = self
            .limit(
                Step::Greeting,
                AsyncSmtpConnection::connect_with_transport(stream, &relay.hello),
            )
            .await?;
        if let Security::Starttls(params) = &relay.security {
            // lettre refuses when the server does not offer STARTTLS, so a
            // stripped offer never turns into a plain-text session.
            self.limit(Step::Starttls, conn.starttls(params.clone(), &relay.hello))
                .await?;
        }
        if let Auth::Password(credentials) = &relay.auth {
            self.limit(
                Step::Auth,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await?;
        }
        Ok(conn)
    }

    /// MAIL FROM, RCPT TO, DATA and the message, each within the command
    /// timeout. Driven step by step (not lettre's `send`) so that a failure
    /// says where it happened.
    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, Failure> {
        let info = conn.server_info();
        let mut parameters = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::new(
                    Step::MailFrom,
                    Cause::Unsupported("the address is not ASCII and the server lacks SMTPUTF8"),
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(Failure::new(
                    Step::MailFrom,
                    Cause::Unsupported("the message is not ASCII and the server lacks 8BITMIME"),
                ));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.limit(
            Step::MailFrom,
            conn.command(Mail::new(envelope.from().cloned(), parameters)),
        )
        .await?;
        for to in envelope.to() {
            self.limit(Step::RcptTo, conn.command(Rcpt::new(to.clone(), vec![])))
                .await?;
        }
        self.limit(Step::Data, conn.command(Data)).await?;
        self.limit(Step::Message, conn.message(email)).await
    }

    /// After a refused transaction the session is still sound: RSET it and
    /// keep it for the next send rather than reconnecting.
    async fn reset_and_keep(&self, mut conn: AsyncSmtpConnection) {
        if self.limit(Step::Reset, conn.command(Rset)).await.is_ok() {
            self.pool.put(conn);
        }
    }

    async fn limit<T>(
        &self,
        step: Step,
        work: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        let after = self.relay.command_timeout;
        match tokio::time::timeout(after, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::new(step, Cause::Smtp(e))),
            Err(_) => Err(Failure::new(step, Cause::TimedOut(after))),
        }
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used live connection, if it has not idled too long.
    /// Older ones are older still, so when the newest is stale all go.
    fn take(&self) -> Option<AsyncSmtpConnection> {
        let stale = {
            let mut idle = self.lock();
            match idle.pop() {
                Some(newest) if newest.since.elapsed() <= MAX_IDLE => return Some(newest.conn),
                Some(newest) => {
                    idle.push(newest);
                    std::mem::take(&mut *idle)
                }
                None => return None,
            }
        };
        for Idle { mut conn, .. } in stale {
            // Say goodbye without holding up the send that found them.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.command(Quit)).await;
            });
        }
        None
    }

    fn put(&self, conn: AsyncSmtpConnection) {
        if !conn.has_broken() {
            self.lock().push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// Where in a send something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    TlsHandshake,
    Greeting,
    Starttls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Message,
    Reset,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::TlsHandshake => "tls handshake",
            Step::Greeting => "greeting",
            Step::Starttls => "starttls",
            Step::Auth => "auth",
            Step::MailFrom => "mail from",
            Step::RcptTo => "rcpt to",
            Step::Data => "data",
            Step::Message => "message",
            Step::Reset => "rset",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("smtp {step}: {cause}")]
struct Failure {
    step: Step,
    #[source]
    cause: Cause,
}

#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error("{}", smtp_message(.0))]
    Smtp(lettre::transport::smtp::Error),
    #[error(transparent)]
    Io(io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A reply keeps lettre's `permanent error (535): …`; anything else shows its
/// innermost cause, since lettre nests `Connection error: ` prefixes.
fn smtp_message(e: &lettre::transport::smtp::Error) -> String {
    if e.status().is_some() {
        return e.to_string();
    }
    let mut innermost: &dyn std::error::Error = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

impl Failure {
    fn new(step: Step, cause: Cause) -> Self {
        Failure { step, cause }
    }

    /// Whether the session is in a known state after this failure: the server
    /// answered with a reply code, or the client refused before sending.
    fn answered(&self) -> bool {
        match &self.cause {
            Cause::Smtp(e) => e.status().is_some(),
            Cause::Unsupported(_) => true,
            Cause::Io(_) | Cause::TimedOut(_) => false,
        }
    }

    /// Whether the session is over: no answer, or `421` (the server is
    /// closing the channel, as some do to idle sessions).
    fn session_gone(&self) -> bool {
        match &self.cause {
            Cause::Smtp(e) => e.status().is_none_or(|code| code.to_string() == "421"),
            Cause::Unsupported(_) => false,
            Cause::Io(_) | Cause::TimedOut(_) => true,
        }
    }

    /// 5xx replies are permanent (the server will say the same again), and so
    /// is a message this server can never carry. Everything else (4xx, a
    /// timeout, TLS, a refused or lost connection) is about the relay, not the
    /// message, and is retried.
    fn permanent(&self) -> bool {
        match &self.cause {
            Cause::Smtp(e) => e.is_permanent(),
            Cause::Unsupported(_) => true,
            Cause::Io(_) | Cause::TimedOut(_) => false,
        }
    }

    fn into_result(self) -> SendResult {
        failed(self.permanent(), self.to_string())
    }
}

fn failed(permanent: bool, error: String) -> SendResult {
    SendResult::Failed {
        provider: PROVIDER.into(),
        permanent,
        error,
    }
}

/// Implicit TLS over our own socket. lettre can only wrap a socket it gets
/// from us in TLS as its (deprecated, but public) `AsyncNetworkStream`, which
/// speaks futures-io; `connect_with_transport` wants tokio's traits. This
/// adapter bridges the two, so the TLS session runs over the `TCP_NODELAY`
/// socket with lettre's own rustls configuration (the one STARTTLS uses).
#[expect(
    deprecated,
    reason = "the only public way to run lettre's TLS over our socket"
)]
#[derive(Debug)]
struct ImplicitTls(lettre::transport::smtp::client::AsyncNetworkStream);

#[expect(
    deprecated,
    reason = "the only public way to run lettre's TLS over our socket"
)]
impl ImplicitTls {
    async fn wrap(
        tcp: TcpStream,
        params: TlsParameters,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let mut stream =
            lettre::transport::smtp::client::AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream.upgrade_tls(params).await?;
        Ok(ImplicitTls(stream))
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.get_mut().0);
        let n = ready!(futures_io::AsyncRead::poll_read(
            inner,
            cx,
            buf.initialize_unfilled()
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn message_ids_name_the_outbox_message() {
        let header = message_id_header(4711, "cstcb.example");
        assert!(header.starts_with("<rollcall.4711."), "{header}");
        assert!(header.ends_with("@cstcb.example>"), "{header}");
        assert_eq!(parse_message_id(&header), Some(4711));
        assert_eq!(parse_message_id(&format!(" {header}\r\n")), Some(4711));
        assert_ne!(header, message_id_header(4711, "cstcb.example"));
        for other in [
            "<4711@cstcb.example>",
            "<rollcall.4711@cstcb.example>",
            "<rollcall.47x1.ab12@cstcb.example>",
            "<rollcall.4711.zz@cstcb.example>",
            "<rollcall.4711.ab12.cd@cstcb.example>",
            "<rollcall.4711.ab12@>",
            "rollcall.4711.ab12@cstcb.example",
            "<other.4711.ab12@cstcb.example>",
        ] {
            assert_eq!(parse_message_id(other), None, "{other}");
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("instant")
    }

    fn channel(port: u16, pool: u32) -> EmailChannel {
        let cfg = Config {
            email_reply_to: crate::domain::EmailAddress::parse("acks@rollcall.example").ok(),
            ..Config::default()
        };
        let smtp = Smtp {
            host: "127.0.0.1".into(),
            port,
            tls: Tls::None,
            username: None,
            password_env: None,
            ca_file: None,
            pool,
        };
        let mut ch = email_channel(&cfg, &smtp, &Secrets::default()).expect("channel");
        // Short enough that the silent-server test ends quickly; the fake
        // server answers in microseconds.
        ch.relay.command_timeout = Duration::from_millis(300);
        ch.relay.connect_timeout = Duration::from_millis(300);
        ch
    }

    /// A scripted SMTP server: answers `RCPT TO` with `rcpt_reply` and
    /// everything else positively. Returns its port and a connection counter.
    async fn fake_server(rcpt_reply: &'static str) -> (u16, Arc<AtomicUsize>) {
        scripted_server(rcpt_reply, false).await
    }

    /// With `hang_up_421`, a session ends after one message: the next command
    /// gets `421` and the connection closes, as idle timeouts do.
    async fn scripted_server(
        rcpt_reply: &'static str,
        hang_up_421: bool,
    ) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake ESMTP\r\n").await?;
                    let mut in_data = false;
                    let mut delivered = false;
                    while let Some(line) = lines.next_line().await? {
                        let reply: &str = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            delivered = true;
                            "250 2.0.0 queued as F4KE\r\n"
                        } else if hang_up_421 && delivered {
                            write.write_all(b"421 4.4.2 idle too long\r\n").await?;
                            break;
                        } else {
                            match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                                "EHLO" => "250-fake\r\n250 8BITMIME\r\n",
                                "RCPT" => rcpt_reply,
                                "DATA" => {
                                    in_data = true;
                                    "354 go ahead\r\n"
                                }
                                "QUIT" => {
                                    write.write_all(b"221 bye\r\n").await?;
                                    break;
                                }
                                _ => "250 OK\r\n",
                            }
                        };
                        write.write_all(reply.as_bytes()).await?;
                    }
                    io::Result::Ok(())
                });
            }
        });
        (port, connections)
    }

    fn outcome(result: &SendResult) -> (&'static str, bool, &str) {
        match result {
            SendResult::Accepted { provider_ref, .. } => {
                ("accepted", false, provider_ref.as_deref().unwrap_or(""))
            }
            SendResult::Failed {
                permanent, error, ..
            } => ("failed", *permanent, error.as_str()),
            _ => ("other", false, ""),
        }
    }

    #[tokio::test]
    async fn accepted_mail_reuses_one_connection_with_nodelay() {
        let (port, connections) = fake_server("250 OK\r\n").await;
        let ch = channel(port, 4);
        for id in 1..=3 {
            let r = ch
                .send(id, "a@example.test", "[X] s [X]", "[X] t [X]", t0())
                .await;
            assert_eq!(outcome(&r), ("accepted", false, "2.0.0 queued as F4KE"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(
            ch.connection_stats(),
            ConnectionStats {
                opened: 1,
                nodelay: 1,
                idle: 1
            }
        );
    }

    #[tokio::test]
    async fn a_pooled_session_the_server_ends_with_421_is_replaced() {
        let (port, connections) = scripted_server("250 OK\r\n", true).await;
        let ch = channel(port, 1);
        for id in 1..=3 {
            let r = ch.send(id, "a@example.test", "s", "t", t0()).await;
            assert_eq!(outcome(&r).0, "accepted", "{r:?}");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_5xx_reply_is_permanent_and_the_connection_is_kept() {
        let (port, connections) = fake_server("550 5.1.1 no such user\r\n").await;
        let ch = channel(port, 4);
        for id in 1..=2 {
            let r = ch.send(id, "gone@example.test", "s", "t", t0()).await;
            let (what, permanent, error) = outcome(&r);
            assert_eq!((what, permanent), ("failed", true), "{error}");
            assert!(
                error.contains("rcpt to") && error.contains("no such user"),
                "{error}"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "RSET, not reconnect");
    }

    #[tokio::test]
    async fn a_4xx_reply_is_transient() {
        let (port, _) = fake_server("451 4.3.0 try later\r\n").await;
        let ch = channel(port, 4);
        let r = ch.send(1, "a@example.test", "s", "t", t0()).await;
        let (what, permanent, error) = outcome(&r);
        assert_eq!((what, permanent), ("failed", false), "{error}");
        assert!(error.contains("try later"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let ch = channel(port, 4);
        let r = ch.send(1, "a@example.test", "s", "t", t0()).await;
        let (what, permanent, error) = outcome(&r);
        assert_eq!((what, permanent), ("failed", false), "{error}");
        assert!(error.starts_with("smtp connect:"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_never_greets_is_a_transient_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let ch = channel(port, 4);
        let r = ch.send(1, "a@example.test", "s", "t", t0()).await;
        let (what, permanent, error) = outcome(&r);
        assert_eq!((what, permanent), ("failed", false), "{error}");
        assert!(
            error.starts_with("smtp greeting: no answer within"),
            "{error}"
        );
        hold.abort();
    }

    #[tokio::test]
    async fn a_bad_address_is_permanent_without_connecting() {
        let (port, connections) = fake_server("250 OK\r\n").await;
        let ch = channel(port, 4);
        let r = ch.send(1, "not an address", "s", "t", t0()).await;
        assert_eq!(outcome(&r).0, "failed");
        assert!(outcome(&r).1);
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_password_is_never_sent_in_clear_text_to_a_remote_relay() {
        let smtp = |host: &str| Smtp {
            host: host.into(),
            port: 25,
            tls: Tls::None,
            username: Some("drill".into()),
            password_env: Some("SMTP_PASSWORD".into()),
            ca_file: None,
            pool: 4,
        };
        let secrets = Secrets::supplied([("SMTP_PASSWORD".to_owned(), "pw".to_owned())]);
        let cfg = Config::default();
        let err = email_channel(&cfg, &smtp("smtp.example"), &secrets)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("clear text"), "{err}");
        assert!(email_channel(&cfg, &smtp("127.0.0.1"), &secrets).is_ok());
        assert!(email_channel(&cfg, &smtp("localhost"), &secrets).is_ok());
    }
}
