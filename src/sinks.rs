//! Loopback peers that speak the real wire protocols rollcall talks to.
//!
//! `rollcall simulate` runs whole exercises in virtual time, and the tests
//! check delivery end to end. Both need something on the other side of the
//! socket that behaves like a mail relay, like Twilio's Messages API and like
//! a webhook receiver, without reaching the internet. Going through real
//! sockets and real protocols (instead of mocking the sending code) means the
//! production SMTP and HTTP clients are exercised exactly as they run in
//! deployment, including MIME encoding, authentication and error handling.
//!
//! Every server takes an already-bound listener, so callers can bind port 0
//! and read the chosen port before anything is spawned, and a shutdown future,
//! so nobody has to sleep or poll to start or stop a server. Everything a
//! server receives lands in a [`Recorder`], whose waiters are woken on every
//! new record.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Form, Json};
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::clock::{SharedClock, SystemClock};

// ---------------------------------------------------------------------------
// Recorder
// ---------------------------------------------------------------------------

/// A shared, append-only log of everything a sink received.
///
/// Clones share the same log, so a test can keep one clone while the server
/// owns another.
pub struct Recorder<T> {
    inner: Arc<RecorderInner<T>>,
}

struct RecorderInner<T> {
    items: Mutex<Vec<T>>,
    notify: Notify,
}

impl<T> Clone for Recorder<T> {
    // Written by hand because deriving would needlessly require `T: Clone`.
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Default for Recorder<T> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RecorderInner {
                items: Mutex::new(Vec::new()),
                notify: Notify::new(),
            }),
        }
    }
}

impl<T> fmt::Debug for Recorder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("len", &self.lock().len())
            .finish()
    }
}

impl<T> Recorder<T> {
    // A panic while the lock is held cannot leave a `Vec` half-pushed, so a
    // poisoned lock still guards consistent data and is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.inner
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Clone> Recorder<T> {
    /// Creates an empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an item and wakes everyone waiting in [`Recorder::wait_for_len`].
    pub fn push(&self, item: T) {
        self.lock().push(item);
        self.inner.notify.notify_waiters();
    }

    /// Returns a snapshot of everything recorded so far.
    pub fn all(&self) -> Vec<T> {
        self.lock().clone()
    }

    /// Returns how many items have been recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns true if nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Returns the items recorded at index `n` and later, which lets a caller
    /// remember `len()` before an action and then look only at what it caused.
    pub fn since(&self, n: usize) -> Vec<T> {
        self.lock().get(n..).map(<[T]>::to_vec).unwrap_or_default()
    }

    /// Resolves once at least `n` items have been recorded.
    pub async fn wait_for_len(&self, n: usize) {
        loop {
            // The waiter is registered before the length is checked, so a push
            // that lands between the check and the await still wakes us;
            // `notify_waiters` only reaches waiters that already exist.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() >= n {
                return;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------

/// The name the SMTP sink uses for itself in greetings.
const SMTP_SERVER_NAME: &str = "rollcall-sink";
/// RFC 5321 limits text lines to 1000 octets including CRLF; commands are
/// held to the same limit, which is more generous than the 512 the RFC
/// requires servers to accept.
const SMTP_MAX_LINE: usize = 1000;
/// The largest message accepted, advertised through the SIZE extension.
const SMTP_MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Guards against a client growing the envelope without bound.
const SMTP_MAX_RECIPIENTS: usize = 1000;

/// A message accepted by [`serve_smtp`].
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The reverse-path from `MAIL FROM`, without angle brackets; empty for
    /// the null sender `<>`.
    pub from: String,
    /// The forward-paths from every accepted `RCPT TO`, in order.
    pub to: Vec<String>,
    /// The raw message as sent after `DATA`, dot-unstuffed, with every line
    /// ending normalised to `\n`.
    pub data: String,
}

impl ReceivedMail {
    /// Returns the first header called `name` (compared case-insensitively),
    /// unfolded and trimmed but otherwise undecoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = split_entity(&self.data);
        find_header(&headers, name)
    }

    /// Returns the subject with RFC 2047 encoded-words decoded, because mail
    /// libraries encode any non-ASCII subject that way.
    pub fn subject(&self) -> Option<String> {
        self.header("subject").map(|value| decode_rfc2047(&value))
    }

    /// Returns the readable text of the message.
    ///
    /// The content transfer encoding is undone and line endings are `\n`.
    /// For a multipart message this is the first `text/plain` part, searched
    /// depth first; if there is none the raw body is returned. The line break
    /// that ends the final line is dropped, since SMTP adds one whether or
    /// not the author wrote it.
    pub fn body(&self) -> String {
        let (headers, body) = split_entity(&self.data);
        let body = body.strip_suffix('\n').unwrap_or(body);
        if is_multipart(&headers) {
            text_plain_part(&headers, body, 0).unwrap_or_else(|| body.to_owned())
        } else {
            decode_entity_body(&headers, body)
        }
    }
}

/// Runs a minimal RFC 5321 server on `listener`, recording every accepted
/// message into `recorder`.
///
/// Each connection gets its own task. When `shutdown` resolves the server
/// stops accepting, tells idle sessions it is closing (421), lets any message
/// that is in the middle of `DATA` finish, and returns once every session has
/// ended. That way everything a client was told was accepted is in the
/// recorder by the time this returns.
///
/// Accept errors that concern a single connection are skipped; any other
/// accept error ends the server and is returned.
pub async fn serve_smtp(
    listener: TcpListener,
    recorder: Recorder<ReceivedMail>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            // Reaping finished sessions keeps the join set from growing over
            // a long simulation with many short connections.
            Some(finished) = sessions.join_next(), if !sessions.is_empty() => {
                log_session_end(finished);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Replies are small and each one is awaited by the client,
                    // so Nagle's algorithm would only add latency.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %err, "smtp sink could not set TCP_NODELAY");
                    }
                    let recorder = recorder.clone();
                    let stop = stop_rx.clone();
                    sessions.spawn(smtp_session(stream, recorder, stop));
                }
                Err(err) if is_per_connection_error(&err) => {
                    tracing::debug!(error = %err, "smtp sink skipped a failed connection");
                }
                Err(err) => break Err(err),
            },
        }
    };

    // Sending only fails when no session is listening, which is fine.
    let _ = stop_tx.send(true);
    while let Some(finished) = sessions.join_next().await {
        log_session_end(finished);
    }
    result
}

fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn log_session_end(finished: Result<io::Result<()>, tokio::task::JoinError>) {
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(error = %err, "smtp sink session ended with an error"),
        Err(err) => tracing::warn!(error = %err, "smtp sink session task failed"),
    }
}

/// Resolves when the server asks sessions to stop, or when the server itself
/// is gone, which means the same thing.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// The per-connection protocol state.
#[derive(Default)]
struct SmtpSession {
    greeted: bool,
    from: Option<String>,
    to: Vec<String>,
}

impl SmtpSession {
    fn reset_transaction(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

/// What the session loop must do after a command line was interpreted.
enum SmtpStep {
    Reply(String),
    StartData,
    Quit,
}

fn reply(text: &str) -> SmtpStep {
    SmtpStep::Reply(format!("{text}\r\n"))
}

async fn smtp_session(
    stream: TcpStream,
    recorder: Recorder<ReceivedMail>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (read_half, mut writer) = stream.into_split();
    // The buffered reader keeps bytes of pipelined commands that arrived in
    // one packet, so they are answered one after another in order.
    let mut reader = BufReader::new(read_half);
    let mut session = SmtpSession::default();
    let mut line = Vec::new();

    send(
        &mut writer,
        &format!("220 {SMTP_SERVER_NAME} ESMTP rollcall sink ready\r\n"),
    )
    .await?;

    loop {
        let read = tokio::select! {
            biased;
            () = stop_requested(&mut stop) => {
                send(&mut writer, &format!("421 {SMTP_SERVER_NAME} shutting down\r\n")).await?;
                return Ok(());
            }
            read = read_line_limited(&mut reader, &mut line, SMTP_MAX_LINE) => read?,
        };
        let step = match read {
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => reply("500 Line too long"),
            LineRead::Complete => smtp_command(&mut session, &line),
        };
        match step {
            SmtpStep::Reply(text) => send(&mut writer, &text).await?,
            SmtpStep::Quit => {
                send(
                    &mut writer,
                    &format!("221 {SMTP_SERVER_NAME} closing connection\r\n"),
                )
                .await?;
                return Ok(());
            }
            SmtpStep::StartData => {
                send(&mut writer, "354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let Some(outcome) = read_data(&mut reader, &mut line).await? else {
                    // The client went away mid-message; nothing was accepted.
                    return Ok(());
                };
                let answer = match outcome {
                    DataOutcome::TooBig => {
                        "552 Message size exceeds fixed maximum message size\r\n".to_owned()
                    }
                    DataOutcome::LineTooLong => "500 Line too long\r\n".to_owned(),
                    DataOutcome::Message(data) => {
                        let mail = ReceivedMail {
                            from: session.from.take().unwrap_or_default(),
                            to: std::mem::take(&mut session.to),
                            data: String::from_utf8_lossy(&data).into_owned(),
                        };
                        tracing::debug!(
                            from = %mail.from,
                            recipients = mail.to.len(),
                            bytes = mail.data.len(),
                            "smtp sink accepted a message"
                        );
                        recorder.push(mail);
                        "250 OK message accepted\r\n".to_owned()
                    }
                };
                // Whatever the outcome, the transaction is over (RFC 5321 4.1.1.4).
                session.reset_transaction();
                send(&mut writer, &answer).await?;
            }
        }
    }
}

async fn send(writer: &mut OwnedWriteHalf, text: &str) -> io::Result<()> {
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}

/// Interprets one command line and updates the session state.
fn smtp_command(session: &mut SmtpSession, line: &[u8]) -> SmtpStep {
    let Ok(text) = std::str::from_utf8(line) else {
        return reply("500 Syntax error, command is not valid UTF-8");
    };
    let (verb, args) = match text.split_once(' ') {
        Some((verb, args)) => (verb, args.trim()),
        None => (text.trim_end(), ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => {
            if args.is_empty() {
                return reply("501 Syntax: EHLO domain");
            }
            // A new greeting also abandons any transaction in progress
            // (RFC 5321 4.1.4).
            session.greeted = true;
            session.reset_transaction();
            SmtpStep::Reply(format!(
                "250-{SMTP_SERVER_NAME} greets {args}\r\n\
                 250-PIPELINING\r\n\
                 250-8BITMIME\r\n\
                 250-SMTPUTF8\r\n\
                 250 SIZE {SMTP_MAX_MESSAGE}\r\n"
            ))
        }
        "HELO" => {
            if args.is_empty() {
                return reply("501 Syntax: HELO domain");
            }
            session.greeted = true;
            session.reset_transaction();
            SmtpStep::Reply(format!("250 {SMTP_SERVER_NAME}\r\n"))
        }
        "MAIL" => smtp_mail(session, args),
        "RCPT" => smtp_rcpt(session, args),
        "DATA" => {
            if !args.is_empty() {
                reply("501 Syntax: DATA takes no arguments")
            } else if session.from.is_none() {
                reply("503 Bad sequence of commands: need MAIL first")
            } else if session.to.is_empty() {
                reply("503 Bad sequence of commands: need RCPT first")
            } else {
                SmtpStep::StartData
            }
        }
        "RSET" => {
            if !args.is_empty() {
                return reply("501 Syntax: RSET takes no arguments");
            }
            session.reset_transaction();
            reply("250 OK")
        }
        // NOOP may carry a string that must be ignored (RFC 5321 4.1.1.9).
        "NOOP" => reply("250 OK"),
        "QUIT" => SmtpStep::Quit,
        "VRFY" => {
            if args.is_empty() {
                reply("501 Syntax: VRFY address")
            } else {
                reply("252 Cannot VRFY user, but will accept message and attempt delivery")
            }
        }
        // Known commands that this sink deliberately does not offer.
        "HELP" | "EXPN" | "STARTTLS" | "AUTH" | "BDAT" | "TURN" | "ETRN" => {
            reply("502 Command not implemented")
        }
        "" => reply("500 Syntax error, empty command"),
        _ => reply("500 Syntax error, command unrecognized"),
    }
}

fn smtp_mail(session: &mut SmtpSession, args: &str) -> SmtpStep {
    if !session.greeted {
        return reply("503 Bad sequence of commands: send EHLO or HELO first");
    }
    if session.from.is_some() {
        return reply("503 Bad sequence of commands: nested MAIL command");
    }
    let Some((address, params)) = strip_keyword(args, "FROM:").and_then(parse_path) else {
        return reply("501 Syntax: MAIL FROM:<address>");
    };
    for param in params.split_whitespace() {
        let (keyword, value) = match param.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (param, None),
        };
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("BODY", Some(body))
                if body.eq_ignore_ascii_case("7BIT") || body.eq_ignore_ascii_case("8BITMIME") => {}
            ("BODY", _) => return reply("501 Syntax: BODY=7BIT or BODY=8BITMIME"),
            ("SMTPUTF8", None) => {}
            ("SIZE", Some(size)) => match size.parse::<u64>() {
                Ok(size) if size > SMTP_MAX_MESSAGE as u64 => {
                    return reply("552 Message size exceeds fixed maximum message size");
                }
                Ok(_) => {}
                Err(_) => return reply("501 Syntax: SIZE=<octets>"),
            },
            _ => return reply("555 MAIL FROM parameters not recognized or not implemented"),
        }
    }
    session.from = Some(address.to_owned());
    reply("250 OK")
}

fn smtp_rcpt(session: &mut SmtpSession, args: &str) -> SmtpStep {
    if session.from.is_none() {
        return reply("503 Bad sequence of commands: need MAIL first");
    }
    let Some((address, params)) = strip_keyword(args, "TO:").and_then(parse_path) else {
        return reply("501 Syntax: RCPT TO:<address>");
    };
    if address.is_empty() {
        return reply("501 Syntax: RCPT TO:<address>");
    }
    if !params.trim().is_empty() {
        return reply("555 RCPT TO parameters not recognized or not implemented");
    }
    if session.to.len() >= SMTP_MAX_RECIPIENTS {
        return reply("452 Too many recipients");
    }
    session.to.push(address.to_owned());
    reply("250 OK")
}

/// Strips a case-insensitive keyword such as `FROM:` and the optional space
/// some clients put after the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    args.get(keyword.len()..).map(str::trim_start)
}

/// Splits `<path> params` into the bare address and the parameter text.
fn parse_path(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('<')?;
    let end = inner.find('>')?;
    let path = &inner[..end];
    let params = &inner[end + 1..];
    // Parameters must be separated from the path by a space.
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    // Source routes (`@relay:user@host`) must be accepted and may be ignored
    // (RFC 5321 4.1.1.3).
    let address = if path.starts_with('@') {
        path.split_once(':').map_or(path, |(_, address)| address)
    } else {
        path
    };
    Some((address, params))
}

enum LineRead {
    /// The connection closed before a complete line arrived.
    Eof,
    /// The line was longer than allowed; it has been consumed and discarded.
    TooLong,
    /// The buffer holds the line without its line ending.
    Complete,
}

/// Reads one line into `buf` without ever holding more than `max` bytes, so a
/// client sending an endless line cannot exhaust memory. Both CRLF and a bare
/// LF end a line.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (taken, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (available.len(), false),
        };
        if !too_long {
            if buf.len() + taken > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..taken]);
            }
        }
        reader.consume(taken);
        if complete {
            if too_long {
                return Ok(LineRead::TooLong);
            }
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(LineRead::Complete);
        }
    }
}

enum DataOutcome {
    Message(Vec<u8>),
    LineTooLong,
    TooBig,
}

/// Reads message content up to the terminating `.` line. Oversized content
/// is read to the end and discarded, so the session stays in step with the
/// client and can report the error. Returns `None` if the client hung up.
async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> io::Result<Option<DataOutcome>> {
    let mut data = Vec::new();
    let mut too_big = false;
    let mut line_too_long = false;
    loop {
        match read_line_limited(reader, line, SMTP_MAX_LINE).await? {
            LineRead::Eof => return Ok(None),
            LineRead::TooLong => line_too_long = true,
            LineRead::Complete => {
                if line.as_slice() == b"." {
                    break;
                }
                // Transparency (RFC 5321 4.5.2): the client doubled every
                // leading dot, so exactly one is removed.
                let content = line.strip_prefix(b".").unwrap_or(line);
                if too_big {
                    continue;
                }
                if data.len() + content.len() + 1 > SMTP_MAX_MESSAGE {
                    too_big = true;
                    data = Vec::new();
                } else {
                    data.extend_from_slice(content);
                    data.push(b'\n');
                }
            }
        }
    }
    Ok(Some(if too_big {
        DataOutcome::TooBig
    } else if line_too_long {
        DataOutcome::LineTooLong
    } else {
        DataOutcome::Message(data)
    }))
}

// ---------------------------------------------------------------------------
// MIME decoding for ReceivedMail
// ---------------------------------------------------------------------------

/// Splits an entity into unfolded headers and the body after the first blank
/// line. Line endings in the body are normalised to `\n`.
fn split_entity(raw: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest = raw;
    loop {
        let (line, remainder) = match rest.split_once('\n') {
            Some((line, remainder)) => (line, remainder),
            None => (rest, ""),
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            // Either the blank separator line or the end of the input.
            return (headers, remainder);
        }
        if line.starts_with([' ', '\t']) {
            // Unfolding removes only the line break; the whitespace stays
            // (RFC 5322 2.2.3).
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim_start().to_owned()));
        }
        // Lines that are neither headers nor continuations are ignored.
        rest = remainder;
    }
}

fn find_header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
}

/// A parsed `Content-Type`: the lower-cased media type and its parameters
/// with lower-cased names.
struct ContentType {
    media: String,
    params: Vec<(String, String)>,
}

impl ContentType {
    fn of(headers: &[(String, String)]) -> Self {
        // RFC 2045 5.2: without a Content-Type the entity is US-ASCII text.
        let value = find_header(headers, "content-type").unwrap_or_else(|| "text/plain".to_owned());
        let mut pieces = split_unquoted(&value, ';').into_iter();
        let media = pieces
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let params = pieces
            .filter_map(|piece| {
                let (name, value) = piece.split_once('=')?;
                Some((name.trim().to_ascii_lowercase(), unquote(value.trim())))
            })
            .collect();
        Self { media, params }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits on `separator` except inside double quotes.
fn split_unquoted(text: &str, separator: char) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            pieces.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    pieces.push(current);
    pieces
}

fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_multipart(headers: &[(String, String)]) -> bool {
    ContentType::of(headers).media.starts_with("multipart/")
}

/// Finds the first `text/plain` leaf, descending into nested multiparts.
/// The depth limit stops a maliciously nested message from recursing forever.
fn text_plain_part(headers: &[(String, String)], body: &str, depth: usize) -> Option<String> {
    const MAX_DEPTH: usize = 16;
    let content_type = ContentType::of(headers);
    if content_type.media.starts_with("multipart/") {
        if depth >= MAX_DEPTH {
            return None;
        }
        let boundary = content_type.param("boundary")?;
        split_multipart(body, boundary)
            .into_iter()
            .find_map(|part| {
                let (part_headers, part_body) = split_entity(&part);
                text_plain_part(&part_headers, part_body, depth + 1)
            })
    } else if content_type.media == "text/plain" {
        Some(decode_entity_body(headers, body))
    } else {
        None
    }
}

/// Returns the parts between the boundary delimiters of a multipart body.
/// The line break before each delimiter belongs to the delimiter (RFC 2046
/// 5.1.1), which joining the lines with `\n` reproduces.
fn split_multipart(body: &str, boundary: &str) -> Vec<String> {
    let open = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in body.split('\n') {
        // Delimiter lines may carry trailing whitespace added in transport.
        let trimmed = line.trim_end();
        if trimmed == close {
            if let Some(lines) = current.take() {
                parts.push(lines.join("\n"));
            }
            return parts;
        }
        if trimmed == open {
            if let Some(lines) = current.take() {
                parts.push(lines.join("\n"));
            }
            current = Some(Vec::new());
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    // A missing close delimiter still yields the last part.
    if let Some(lines) = current {
        parts.push(lines.join("\n"));
    }
    parts
}

/// Undoes the content transfer encoding and character set of a leaf body.
fn decode_entity_body(headers: &[(String, String)], body: &str) -> String {
    let encoding = find_header(headers, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let charset = ContentType::of(headers)
        .param("charset")
        .unwrap_or("utf-8")
        .to_owned();
    let decoded = match encoding.as_str() {
        "quoted-printable" => decode_charset(&charset, &quoted_printable_decode(body)),
        "base64" => match base64_decode(body.as_bytes()) {
            Some(bytes) => decode_charset(&charset, &bytes),
            // A damaged body is more useful shown raw than hidden.
            None => body.to_owned(),
        },
        _ => body.to_owned(),
    };
    decoded.replace("\r\n", "\n")
}

/// Turns bytes in a declared charset into text. Only UTF-8 (and its ASCII
/// subset) and Latin-1 are understood, which covers what rollcall sends;
/// anything else is read as UTF-8 with replacement characters.
fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    let charset = charset.trim().to_ascii_lowercase();
    if matches!(charset.as_str(), "iso-8859-1" | "latin1" | "latin-1") {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `=XX` escapes; a malformed escape is kept literally rather than
/// rejected, as RFC 2045 6.7 recommends.
fn decode_hex_escapes(text: &[u8], underscore_is_space: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'=' {
            let escaped = text
                .get(i + 1)
                .and_then(|&hi| hex_value(hi))
                .zip(text.get(i + 2).and_then(|&lo| hex_value(lo)));
            if let Some((hi, lo)) = escaped {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if underscore_is_space && b == b'_' {
            b' '
        } else {
            b
        });
        i += 1;
    }
}

/// Decodes a quoted-printable body (RFC 2045 6.7).
fn quoted_printable_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // Trailing whitespace may have been added in transport and must go.
        let line = line.trim_end_matches([' ', '\t']);
        let (content, soft_break) = match line.strip_suffix('=') {
            Some(content) => (content, true),
            None => (line, false),
        };
        decode_hex_escapes(content.as_bytes(), false, &mut out);
        if !soft_break && lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}

/// Decodes standard-alphabet base64 (RFC 4648 section 4).
///
/// Whitespace is skipped because MIME wraps base64 bodies into lines.
/// Padding is optional, but if present it must complete the final quantum
/// and nothing but whitespace may follow it. Returns `None` for anything
/// else that is not valid base64.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut padding = 0usize;
    for &c in input {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            // Truncation keeps exactly the eight bits just completed.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover symbol carries six bits, less than one byte, so the
    // input must have been cut short.
    if symbols % 4 == 1 {
        return None;
    }
    if padding > 0 && (padding > 2 || !(symbols + padding).is_multiple_of(4)) {
        return None;
    }
    Some(out)
}

/// Parses one RFC 2047 encoded-word at the start of `text`, returning its
/// charset, decoded bytes and length in `text`.
fn parse_encoded_word(text: &str) -> Option<(String, Vec<u8>, usize)> {
    let rest = text.strip_prefix("=?")?;
    let (charset, rest) = rest.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let payload = &rest[..end];
    let malformed = |token: &str| token.chars().any(|c| c.is_whitespace() || c == '?');
    if charset.is_empty() || malformed(charset) || malformed(payload) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64_decode(payload.as_bytes())?,
        "Q" | "q" => {
            let mut out = Vec::with_capacity(payload.len());
            decode_hex_escapes(payload.as_bytes(), true, &mut out);
            out
        }
        _ => return None,
    };
    let consumed = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    // RFC 2231 allows a language suffix such as `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or(charset).to_owned();
    Some((charset, bytes, consumed))
}

/// Decodes RFC 2047 encoded-words in an unstructured header value.
///
/// Whitespace between adjacent encoded-words is dropped (RFC 2047 6.2), and
/// adjacent words in the same charset are joined as bytes before decoding,
/// so a multi-byte character split across two words still comes out whole.
fn decode_rfc2047(value: &str) -> String {
    fn flush(out: &mut String, pending: &mut Option<(String, Vec<u8>)>) {
        if let Some((charset, bytes)) = pending.take() {
            out.push_str(&decode_charset(&charset, &bytes));
        }
    }

    let mut out = String::with_capacity(value.len());
    let mut pending: Option<(String, Vec<u8>)> = None;
    // Whitespace seen after an encoded-word; it is kept only if ordinary text
    // follows.
    let mut gap = String::new();
    let mut i = 0;
    while let Some(rest) = value.get(i..) {
        if rest.starts_with("=?")
            && let Some((charset, bytes, consumed)) = parse_encoded_word(rest)
        {
            let same_charset = pending
                .as_ref()
                .is_some_and(|(previous, _)| previous.eq_ignore_ascii_case(&charset));
            if same_charset {
                if let Some((_, buffer)) = pending.as_mut() {
                    buffer.extend_from_slice(&bytes);
                }
            } else {
                flush(&mut out, &mut pending);
                pending = Some((charset, bytes));
            }
            gap.clear();
            i += consumed;
            continue;
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        if pending.is_some() && matches!(c, ' ' | '\t' | '\r' | '\n') {
            gap.push(c);
        } else {
            flush(&mut out, &mut pending);
            out.push_str(&gap);
            gap.clear();
            out.push(c);
        }
        i += c.len_utf8();
    }
    flush(&mut out, &mut pending);
    out.push_str(&gap);
    out
}

// ---------------------------------------------------------------------------
// Twilio Messages API
// ---------------------------------------------------------------------------

/// An SMS accepted by the fake Twilio Messages API.
#[derive(Clone, Debug)]
pub struct ReceivedSms {
    pub account_sid: String,
    pub to: String,
    /// The `From` number, or the `MessagingServiceSid` when no `From` was
    /// given.
    pub from: String,
    pub body: String,
    pub validity_period: Option<String>,
    pub status_callback: Option<String>,
    /// The message sid returned to the client.
    pub sid: String,
}

/// Configuration for [`twilio_router`]: the credentials the fake accepts and
/// where it records messages.
pub struct TwilioFake {
    pub account_sid: String,
    pub auth_token: String,
    pub recorder: Recorder<ReceivedSms>,
}

struct TwilioState {
    account_sid: String,
    auth_token: String,
    recorder: Recorder<ReceivedSms>,
    clock: SharedClock,
    next_message: AtomicU64,
}

/// Twilio rejects bodies longer than this many characters (error 21617).
const TWILIO_MAX_BODY_CHARS: usize = 1600;

/// Builds a router that answers `POST /2010-04-01/Accounts/{sid}/Messages.json`
/// the way Twilio does, including its error codes for bad credentials and
/// missing parameters. Message sids come from a counter, so runs are
/// reproducible. Timestamps in responses are wall time; see
/// [`twilio_router_with_clock`] for virtual time.
pub fn twilio_router(fake: TwilioFake) -> Router {
    twilio_router_with_clock(fake, Arc::new(SystemClock))
}

/// Like [`twilio_router`], but response timestamps come from `clock`, so a
/// simulated run reports the virtual time at which each message was sent.
pub fn twilio_router_with_clock(fake: TwilioFake, clock: SharedClock) -> Router {
    let state = Arc::new(TwilioState {
        account_sid: fake.account_sid,
        auth_token: fake.auth_token,
        recorder: fake.recorder,
        clock,
        next_message: AtomicU64::new(1),
    });
    Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_create_message),
        )
        .fallback(twilio_not_found)
        .with_state(state)
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

async fn twilio_not_found(uri: Uri) -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        &format!("The requested resource {} was not found", uri.path()),
    )
}

/// Extracts `user:password` from an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim().as_bytes())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

async fn twilio_create_message(
    State(state): State<Arc<TwilioState>>,
    Path(path_sid): Path<String>,
    request: Request,
) -> Response {
    // Twilio checks credentials before anything else about the request.
    let authorised = basic_credentials(request.headers())
        .is_some_and(|(user, password)| user == state.account_sid && password == state.auth_token);
    if !authorised {
        let mut response = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
        return response;
    }
    if path_sid != state.account_sid {
        let path = request.uri().path().to_owned();
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource {path} was not found"),
        );
    }

    // A body that is not form-encoded carries no parameters Twilio can see,
    // so it falls through to the missing-parameter errors below, as it does
    // against the real API.
    let fields = match Form::<Vec<(String, String)>>::from_request(request, &()).await {
        Ok(Form(fields)) => fields,
        Err(rejection) => {
            tracing::debug!(error = %rejection, "twilio sink got a body that is not a form");
            Vec::new()
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.clone())
    };

    let Some(to) = field("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let from = field("From");
    let service = field("MessagingServiceSid");
    let Some(sender) = from.clone().or_else(|| service.clone()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    };
    let Some(body) = field("Body") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    if body.chars().count() > TWILIO_MAX_BODY_CHARS {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }

    let number = state.next_message.fetch_add(1, Ordering::Relaxed);
    let sid = format!("SM{number:032x}");
    let sms = ReceivedSms {
        account_sid: state.account_sid.clone(),
        to: to.clone(),
        from: sender,
        body: body.clone(),
        validity_period: field("ValidityPeriod"),
        status_callback: field("StatusCallback"),
        sid: sid.clone(),
    };
    tracing::debug!(sid = %sms.sid, to = %sms.to, "twilio sink accepted a message");
    state.recorder.push(sms);

    let now = state.clock.now().to_rfc2822();
    let account = &state.account_sid;
    // Messages sent through a messaging service start out "accepted" rather
    // than "queued" while Twilio picks a sender.
    let status = if from.is_some() { "queued" } else { "accepted" };
    let response = json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": sms_segments(&body).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": status,
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"),
        },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    });
    (StatusCode::CREATED, Json(response)).into_response()
}

impl ReceivedSms {
    /// The form Twilio posts to the message's `StatusCallback` when it
    /// reaches `status` (`queued`, `sent`, `delivered`, `undelivered`,
    /// `failed`…); failures carry an `ErrorCode` such as 30003.
    pub fn status_params(&self, status: &str, error_code: Option<u32>) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("AccountSid", self.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("From", self.from.as_str()),
            ("MessageSid", self.sid.as_str()),
            ("MessageStatus", status),
            ("SmsSid", self.sid.as_str()),
            ("SmsStatus", status),
            ("To", self.to.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(code) = error_code {
            params.push(("ErrorCode".to_owned(), code.to_string()));
        }
        params
    }
}

/// Why the fake could not call back.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("message {0} was sent without a StatusCallback URL")]
    NoCallbackUrl(String),
    #[error("status callback failed: {0}")]
    Http(#[from] reqwest::Error),
}

/// Posts `params` form-encoded to `url` the way Twilio posts its webhooks:
/// with the `X-Twilio-Signature` it computes from `auth_token`, the URL and
/// the parameters.
pub async fn post_signed_by_twilio(
    http: &reqwest::Client,
    url: &str,
    auth_token: &str,
    params: &[(String, String)],
) -> reqwest::Result<reqwest::Response> {
    let signature = crate::twilio_signature::sign(auth_token, url, params);
    http.post(url)
        .header(crate::twilio_signature::HEADER, signature)
        .header(header::USER_AGENT, "TwilioProxy/1.1")
        .form(params)
        .send()
        .await
}

/// Has the fake call back the `StatusCallback` URL `sms` was sent with, as
/// Twilio does when the message reaches `status`, signed with `auth_token`.
/// Returns the HTTP status the callback was answered with.
pub async fn twilio_status_callback(
    http: &reqwest::Client,
    auth_token: &str,
    sms: &ReceivedSms,
    status: &str,
    error_code: Option<u32>,
) -> Result<StatusCode, CallbackError> {
    let Some(url) = sms.status_callback.as_deref() else {
        return Err(CallbackError::NoCallbackUrl(sms.sid.clone()));
    };
    let params = sms.status_params(status, error_code);
    let response = post_signed_by_twilio(http, url, auth_token, &params).await?;
    // reqwest and axum share the `http` crate, so the status carries over.
    Ok(response.status())
}

/// The GSM 03.38 default alphabet, without the escape code.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                          ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters reachable through the GSM escape code, which cost two septets.
const GSM7_EXTENDED: &str = "\u{c}^{}\\[~]|€";

/// Counts SMS segments the way carriers do: 160 GSM-7 septets or 70 UCS-2
/// units fit in one message, and concatenated messages lose room to the
/// user-data header (153 and 67). This is close enough for a fake; it does
/// not model the rule that an escaped pair never straddles two segments.
fn sms_segments(body: &str) -> usize {
    let mut septets = 0usize;
    for c in body.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENDED.contains(c) {
            septets += 2;
        } else {
            let units = body.encode_utf16().count();
            return if units <= 70 { 1 } else { units.div_ceil(67) };
        }
    }
    if septets <= 160 {
        1
    } else {
        septets.div_ceil(153)
    }
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

/// A request accepted by [`webhook_router`].
#[derive(Clone, Debug)]
pub struct ReceivedWebhook {
    /// The request path, without the query string.
    pub path: String,
    /// Every header in arrival order, with lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ReceivedWebhook {
    /// Returns the first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Parses the body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Builds a router that records a POST to any path and answers
/// `200 {"ok":true}`. Other methods get 405.
pub fn webhook_router(recorder: Recorder<ReceivedWebhook>) -> Router {
    Router::new().fallback(record_webhook).with_state(recorder)
}

async fn record_webhook(
    State(recorder): State<Recorder<ReceivedWebhook>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let headers = headers
        .iter()
        .map(|(name, value)| {
            // Header names from the http crate are already lower case; values
            // are kept even if they are not valid UTF-8.
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    recorder.push(ReceivedWebhook {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    Json(json!({ "ok": true })).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// in-flight requests to finish.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Responses are small and latency matters more than packet count.
    let listener = listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "http sink could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Binds a loopback port and starts the SMTP sink on it; the sender stops it.
    async fn start_smtp() -> (
        u16,
        Recorder<ReceivedMail>,
        oneshot::Sender<()>,
        JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let recorder = Recorder::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_smtp(listener, recorder.clone(), async move {
            let _ = stopped.await;
        }));
        (port, recorder, stop, server)
    }

    async fn start_router(router: Router) -> (String, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_router(listener, router, async move {
            let _ = stopped.await;
        }));
        (base, stop)
    }

    fn http_client() -> reqwest::Client {
        crate::channel::install_crypto_provider();
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn recorder_wait_for_len_wakes_on_push() {
        let recorder = Recorder::<u32>::new();
        let waiter = {
            let recorder = recorder.clone();
            tokio::spawn(async move { recorder.wait_for_len(2).await })
        };
        recorder.push(1);
        recorder.push(2);
        waiter.await.unwrap();
        assert_eq!(recorder.all(), vec![1, 2]);
        assert_eq!(recorder.since(1), vec![2]);
        assert!(recorder.since(5).is_empty());
        assert_eq!(recorder.len(), 2);
        assert!(!recorder.is_empty());
        // Already satisfied, so this must return at once.
        recorder.wait_for_len(1).await;
    }

    #[tokio::test]
    async fn lettre_delivers_utf8_mail() {
        use lettre::transport::smtp::client::Tls;
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

        let (port, recorder, stop, server) = start_smtp().await;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .tls(Tls::None)
            .build();

        let subject = "演练通知：请确认收到";
        let body = "这是一次演练。\n请回复“收到”。";
        let message = Message::builder()
            .from("Rollcall <rollcall@example.org>".parse().unwrap())
            .to("值班员 <duty@example.org>".parse().unwrap())
            .subject(subject)
            .body(body.to_owned())
            .unwrap();
        transport.send(message).await.unwrap();

        // A long subject is folded into several encoded-words, and the pooled
        // connection is reused for the second message.
        let long_subject = "紧急联络演练第二轮：请在十五分钟内确认收到本通知，谢谢配合。".repeat(3);
        let second = Message::builder()
            .from("rollcall@example.org".parse().unwrap())
            .to("a@example.org".parse().unwrap())
            .to("b@example.org".parse().unwrap())
            .subject(long_subject.as_str())
            .body("plain ascii".to_owned())
            .unwrap();
        transport.send(second).await.unwrap();

        recorder.wait_for_len(2).await;
        let mails = recorder.all();
        assert_eq!(mails[0].from, "rollcall@example.org");
        assert_eq!(mails[0].to, vec!["duty@example.org".to_owned()]);
        assert_eq!(mails[0].subject().as_deref(), Some(subject));
        assert_eq!(mails[0].body(), body);
        assert_eq!(
            mails[1].to,
            vec!["a@example.org".to_owned(), "b@example.org".to_owned()]
        );
        assert_eq!(mails[1].subject().as_deref(), Some(long_subject.as_str()));
        assert_eq!(mails[1].body(), "plain ascii");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    async fn read_reply(reader: &mut BufReader<OwnedReadHalf>) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).await.unwrap() > 0, "closed");
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    async fn command(
        reader: &mut BufReader<OwnedReadHalf>,
        writer: &mut OwnedWriteHalf,
        line: &str,
    ) -> u16 {
        writer.write_all(line.as_bytes()).await.unwrap();
        read_reply(reader).await.0
    }

    #[tokio::test]
    async fn raw_smtp_protocol() {
        let (port, recorder, stop, server) = start_smtp().await;
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read_half, mut w) = stream.into_split();
        let mut r = BufReader::new(read_half);

        assert_eq!(read_reply(&mut r).await.0, 220);
        assert_eq!(command(&mut r, &mut w, "MAIL FROM:<a@x>\r\n").await, 503);
        assert_eq!(command(&mut r, &mut w, "FROB\r\n").await, 500);
        assert_eq!(command(&mut r, &mut w, "STARTTLS\r\n").await, 502);
        w.write_all(b"EHLO client.test\r\n").await.unwrap();
        let (code, ehlo) = read_reply(&mut r).await;
        assert_eq!(code, 250);
        assert!(ehlo.contains("250-8BITMIME\r\n"));
        assert!(ehlo.contains("250 SIZE 10485760\r\n"));
        assert!(!ehlo.contains("STARTTLS"));
        assert_eq!(command(&mut r, &mut w, "RCPT TO:<b@x>\r\n").await, 503);
        assert_eq!(command(&mut r, &mut w, "DATA\r\n").await, 503);
        assert_eq!(command(&mut r, &mut w, "NOOP\r\n").await, 250);
        let long = format!("NOOP {}\r\n", "x".repeat(2000));
        assert_eq!(command(&mut r, &mut w, &long).await, 500);
        assert_eq!(
            command(&mut r, &mut w, "MAIL FROM:<a@x> SIZE=99999999999\r\n").await,
            552
        );
        assert_eq!(
            command(&mut r, &mut w, "MAIL FROM:<a@x> FOO=1\r\n").await,
            555
        );
        assert_eq!(
            command(
                &mut r,
                &mut w,
                "mail from: <a@x> BODY=8BITMIME SMTPUTF8\r\n"
            )
            .await,
            250
        );
        assert_eq!(command(&mut r, &mut w, "MAIL FROM:<a@x>\r\n").await, 503);
        assert_eq!(command(&mut r, &mut w, "RSET\r\n").await, 250);

        // Pipelined: the whole transaction arrives in one write.
        w.write_all(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
            .await
            .unwrap();
        for expected in [250, 250, 250, 354] {
            assert_eq!(read_reply(&mut r).await.0, expected);
        }
        w.write_all(b"Subject: dots\r\n\r\n..x\r\n...\r\nline\r\n.\r\n")
            .await
            .unwrap();
        assert_eq!(read_reply(&mut r).await.0, 250);
        let mail = recorder.all().pop().unwrap();
        assert_eq!(mail.from, "a@x");
        assert_eq!(mail.to, vec!["b@x".to_owned(), "c@x".to_owned()]);
        assert_eq!(mail.data, "Subject: dots\n\n.x\n..\nline\n");
        assert_eq!(mail.header("SUBJECT").as_deref(), Some("dots"));
        assert_eq!(mail.body(), ".x\n..\nline");

        // The transaction ended, so a new one needs MAIL again.
        assert_eq!(command(&mut r, &mut w, "RCPT TO:<b@x>\r\n").await, 503);

        // An over-long text line spoils the message but not the session.
        command(&mut r, &mut w, "MAIL FROM:<>\r\n").await;
        command(&mut r, &mut w, "RCPT TO:<b@x>\r\n").await;
        assert_eq!(command(&mut r, &mut w, "DATA\r\n").await, 354);
        let body = format!("{}\r\n.\r\n", "y".repeat(1500));
        assert_eq!(command(&mut r, &mut w, &body).await, 500);
        assert_eq!(recorder.len(), 1);

        assert_eq!(command(&mut r, &mut w, "QUIT\r\n").await, 221);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_message_is_rejected_and_session_survives() {
        let (port, recorder, stop, server) = start_smtp().await;
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read_half, mut w) = stream.into_split();
        let mut r = BufReader::new(read_half);
        read_reply(&mut r).await;
        command(&mut r, &mut w, "HELO client\r\n").await;
        command(&mut r, &mut w, "MAIL FROM:<a@x>\r\n").await;
        command(&mut r, &mut w, "RCPT TO:<b@x>\r\n").await;
        assert_eq!(command(&mut r, &mut w, "DATA\r\n").await, 354);
        let line = format!("{}\r\n", "z".repeat(998));
        let chunk = line.repeat(1024);
        // Writing and reading concurrently keeps the socket buffers from
        // filling up and deadlocking the test.
        let writer = tokio::spawn(async move {
            for _ in 0..11 {
                w.write_all(chunk.as_bytes()).await.unwrap();
            }
            w.write_all(b".\r\n").await.unwrap();
            w
        });
        assert_eq!(read_reply(&mut r).await.0, 552);
        let mut w = writer.await.unwrap();
        assert_eq!(command(&mut r, &mut w, "NOOP\r\n").await, 250);
        assert!(recorder.is_empty());
        stop.send(()).unwrap();
        // The idle session is told the server is going away.
        assert_eq!(read_reply(&mut r).await.0, 421);
        server.await.unwrap().unwrap();
    }

    #[test]
    fn base64_decoder() {
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(base64_decode(b"Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode(b"Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode(b"Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode(b"Zm9v\r\nYmE=\r\n").unwrap(), b"fooba");
        assert_eq!(base64_decode(b"+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64_decode(b"QUN4eHg6c2VjcmV0").unwrap(), b"ACxxx:secret");
        assert!(base64_decode(b"Zm9v!").is_none());
        assert!(base64_decode(b"Z").is_none());
        assert!(base64_decode(b"Zg=").is_none());
        assert!(base64_decode(b"Zg===").is_none());
        assert!(base64_decode(b"Zg==Zg==").is_none());
        assert!(base64_decode(b"-_").is_none());
    }

    #[test]
    fn mime_decoding() {
        assert_eq!(
            decode_rfc2047("=?UTF-8?B?5ryU57uD?= =?utf-8?q?=E9=80=9A_=E7=9F=A5?= done"),
            "演练通 知 done"
        );
        // A character split across two words is reassembled.
        assert_eq!(decode_rfc2047("=?utf-8?q?=E6=BC?=\n =?utf-8?q?=94?="), "演");
        assert_eq!(
            decode_rfc2047("plain =? not encoded"),
            "plain =? not encoded"
        );
        assert_eq!(decode_rfc2047("a =?iso-8859-1?q?caf=E9?= b"), "a café b");

        assert_eq!(
            quoted_printable_decode("a=3Db=\nc\nd  \n=E2=82=AC"),
            b"a=bc\nd\n\xe2\x82\xac"
        );
        assert_eq!(quoted_printable_decode("bad=ZZ="), b"bad=ZZ");

        let mail = ReceivedMail {
            from: String::new(),
            to: vec![],
            data: "Content-Type: multipart/mixed;\r\n boundary=\"outer\"\r\n\r\n\
                   preamble\r\n--outer\r\n\
                   Content-Type: multipart/alternative; boundary=inner\r\n\r\n\
                   --inner\r\nContent-Type: text/html\r\n\r\n<p>no</p>\r\n\
                   --inner\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\n5L2g5aW9DQrkuJbnlYw=\r\n\
                   --inner--\r\n--outer--\r\n"
                .to_owned(),
        };
        assert_eq!(mail.body(), "你好\n世界");
        assert_eq!(mail.subject(), None);
    }

    #[test]
    fn sms_segments_follow_carrier_rules() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(sms_segments("hello"), 1);
        assert_eq!(sms_segments(&"a".repeat(160)), 1);
        assert_eq!(sms_segments(&"a".repeat(161)), 2);
        assert_eq!(sms_segments(&"{".repeat(80)), 1);
        assert_eq!(sms_segments(&"{".repeat(81)), 2);
        assert_eq!(sms_segments(&"演".repeat(70)), 1);
        assert_eq!(sms_segments(&"演".repeat(71)), 2);
    }

    #[tokio::test]
    async fn twilio_route_accepts_and_rejects_like_twilio() {
        let recorder = Recorder::new();
        let router = twilio_router(TwilioFake {
            account_sid: "AC123".to_owned(),
            auth_token: "token".to_owned(),
            recorder: recorder.clone(),
        });
        let (base, _stop) = start_router(router).await;
        let url = format!("{base}/2010-04-01/Accounts/AC123/Messages.json");
        let client = http_client();

        let response = client
            .post(&url)
            .basic_auth("AC123", Some("token"))
            .form(&[
                ("To", "+41790000001"),
                ("From", "+41790000000"),
                ("Body", "Übung: bitte bestätigen"),
                ("ValidityPeriod", "600"),
                ("StatusCallback", "http://127.0.0.1:1/status"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["sid"], "SM00000000000000000000000000000001");
        assert_eq!(json["status"], "queued");
        assert_eq!(json["to"], "+41790000001");
        assert_eq!(json["num_segments"], "1");
        assert!(json["error_code"].is_null());
        assert!(
            chrono::DateTime::parse_from_rfc2822(json["date_created"].as_str().unwrap()).is_ok()
        );

        let sms = recorder.all().pop().unwrap();
        assert_eq!(sms.to, "+41790000001");
        assert_eq!(sms.from, "+41790000000");
        assert_eq!(sms.body, "Übung: bitte bestätigen");
        assert_eq!(sms.validity_period.as_deref(), Some("600"));
        assert_eq!(
            sms.status_callback.as_deref(),
            Some("http://127.0.0.1:1/status")
        );
        assert_eq!(sms.account_sid, "AC123");

        let response = client
            .post(&url)
            .basic_auth("AC123", Some("wrong"))
            .form(&[("To", "+1"), ("From", "+2"), ("Body", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["code"], 20003);
        assert_eq!(json["message"], "Authenticate");

        let response = client
            .post(&url)
            .form(&[("To", "+1"), ("From", "+2"), ("Body", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);

        let response = client
            .post(&url)
            .basic_auth("AC123", Some("token"))
            .form(&[("To", "+1"), ("From", "+2")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["code"], 21602);

        let response = client
            .post(format!("{base}/2010-04-01/Accounts/AC999/Messages.json"))
            .basic_auth("AC123", Some("token"))
            .form(&[("To", "+1"), ("From", "+2"), ("Body", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);

        let response = client
            .post(&url)
            .basic_auth("AC123", Some("token"))
            .form(&[("To", "+1"), ("MessagingServiceSid", "MG1"), ("Body", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["sid"], "SM00000000000000000000000000000002");
        assert_eq!(json["status"], "accepted");
        assert_eq!(recorder.len(), 2);
    }

    #[tokio::test]
    async fn twilio_timestamps_follow_the_injected_clock() {
        use crate::clock::ManualClock;
        use tower::ServiceExt;

        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let router = twilio_router_with_clock(
            TwilioFake {
                account_sid: "AC1".to_owned(),
                auth_token: "t".to_owned(),
                recorder: Recorder::new(),
            },
            ManualClock::new(start),
        );
        let request = axum::http::Request::post("/2010-04-01/Accounts/AC1/Messages.json")
            // "AC1:t" in base64.
            .header(header::AUTHORIZATION, "Basic QUMxOnQ=")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from("To=%2B1&From=%2B2&Body=hi"))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["date_created"], "Fri, 15 Jan 2027 08:00:00 +0000");
        assert_eq!(json["to"], "+1");
    }

    #[tokio::test]
    async fn webhook_route_records_headers_and_body() {
        let recorder = Recorder::new();
        let (base, stop) = start_router(webhook_router(recorder.clone())).await;
        let response = http_client()
            .post(format!("{base}/hooks/rollcall?x=1"))
            .header("X-Rollcall-Signature", "sha256=abc")
            .json(&json!({ "event": "round.started" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer, json!({ "ok": true }));

        let hook = recorder.all().pop().unwrap();
        assert_eq!(hook.path, "/hooks/rollcall");
        assert_eq!(hook.header("x-rollcall-signature"), Some("sha256=abc"));
        assert_eq!(hook.header("Content-Type"), Some("application/json"));
        assert!(
            hook.headers
                .iter()
                .all(|(name, _)| *name == name.to_lowercase())
        );
        assert_eq!(hook.json(), Some(json!({ "event": "round.started" })));

        let response = http_client()
            .get(format!("{base}/hooks/rollcall"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(recorder.len(), 1);
        stop.send(()).unwrap();
    }
}
