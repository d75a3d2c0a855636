//! A real SMTP server for tests: aiosmtpd with its `Mailbox` handler, which
//! stores every accepted message in a Maildir.
//!
//! The server is a small script ([`SERVER_PY`]) on aiosmtpd's `SMTP` class,
//! run as `python server.py --state <dir> ...`, where `python` is
//! `$ROLLCALL_TEST_PYTHON` or `python3` (`pip install -r tests/requirements.txt`
//! installs aiosmtpd). It binds port 0 (or the port asked for, to come back
//! where a stopped server was) and writes the port it got to `<dir>/ready`,
//! so start-up never races another process for a port and never sleeps. [`SmtpOptions`] turn on STARTTLS or implicit TLS (SMTPS) with
//! a given certificate, AUTH (PLAIN and LOGIN) for one login, required for
//! every message, and a server that hangs up after each message.
//!
//! Outside CI a missing aiosmtpd makes [`Aiosmtpd::start`] return `None` after
//! printing `SKIPPED (aiosmtpd): <reason>` to stderr; under CI (`CI` set) it
//! panics instead, because no test may be skipped there.
//!
//! What the Maildir files look like: aiosmtpd re-serialises each message with
//! Python's `email` package and *appends* three headers to it:
//! `X-Peer` (e.g. `('127.0.0.1', 40312)`), `X-MailFrom` (the envelope sender)
//! and `X-RcptTo` (the envelope recipients, joined with `", "`). Line endings
//! in the files are `\n`, not `\r\n`. [`StoredMail::mail_from`] and
//! [`StoredMail::rcpt_to`] read the envelope from the last occurrence of those
//! headers, so a client-supplied header of the same name cannot spoof it.
//!
//! Besides the Maildir the script keeps two logs in the state directory:
//! `connections` (one line per TCP connection, after the TLS handshake for
//! implicit TLS: [`Aiosmtpd::connections`]) and `auth.log` (one line per AUTH
//! attempt: [`Aiosmtpd::auth_attempts`]).

// Not every test binary uses every helper.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable naming the Python interpreter that has aiosmtpd.
pub const PYTHON_ENV: &str = "ROLLCALL_TEST_PYTHON";

const POLL: Duration = Duration::from_millis(20);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The server script: aiosmtpd's SMTP class with the options of
/// [`SmtpOptions`], delivering into `<state>/maildir`.
pub const SERVER_PY: &str = r#"
import argparse, asyncio, os, ssl
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

p = argparse.ArgumentParser()
p.add_argument("--state", required=True)
p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--user")
p.add_argument("--password")
p.add_argument("--close-after-message", action="store_true")
p.add_argument("--port", type=int, default=0)
a = p.parse_args()

def note(name, line):
    with open(os.path.join(a.state, name), "a") as f:
        f.write(line + "\n")

context = None
if a.tls != "none":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(a.cert, a.key)

def authenticator(server, session, envelope, mechanism, data):
    if not isinstance(data, LoginPassword):
        note("auth.log", f"{mechanism} ? refused")
        return AuthResult(success=False, handled=False)
    login = data.login.decode(errors="replace")
    ok = login == a.user and data.password.decode(errors="replace") == a.password
    note("auth.log", f"{mechanism} {login} {'ok' if ok else 'refused'}")
    # handled=False: aiosmtpd answers 535 itself (with the default, True, a
    # refusal would get no answer at all).
    return AuthResult(success=ok, handled=False)

class Handler(Mailbox):
    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        session.delivered = True
        return reply

class Server(SMTP):
    def connection_made(self, transport):
        # Called again on the same protocol after STARTTLS: count once.
        if self.transport is None:
            note("connections", repr(transport.get_extra_info("peername")))
        super().connection_made(transport)

    async def smtp_DATA(self, arg):
        await super().smtp_DATA(arg)
        if a.close_after_message and getattr(self.session, "delivered", False):
            self.transport.close()

handler = Handler(os.path.join(a.state, "maildir"))

def factory():
    return Server(
        handler,
        hostname="localhost",
        tls_context=context if a.tls == "starttls" else None,
        require_starttls=a.tls == "starttls",
        authenticator=authenticator if a.user else None,
        auth_required=bool(a.user),
        # Over implicit TLS aiosmtpd does not know the session is encrypted.
        auth_require_tls=a.tls == "starttls",
    )

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, "127.0.0.1", a.port, ssl=context if a.tls == "implicit" else None
    )
    port = server.sockets[0].getsockname()[1]
    ready = os.path.join(a.state, "ready")
    with open(ready + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(ready + ".tmp", ready)
    await asyncio.Event().wait()

asyncio.run(main())
"#;

/// How the server is set up. The default is plain SMTP without AUTH.
#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    pub tls: ServerTls,
    /// The one login accepted; when set, every message needs AUTH first.
    pub login: Option<(String, String)>,
    /// Hang up right after accepting each message, as a server that drops
    /// idle sessions does.
    pub close_after_message: bool,
    /// Listen on this port instead of one the system picks: a server
    /// coming back where it was before.
    pub port: Option<u16>,
}

/// TLS on the server side: a PEM certificate (chain) and its PEM key.
#[derive(Debug, Clone, Default)]
pub enum ServerTls {
    #[default]
    None,
    /// `STARTTLS` is offered and required before `MAIL FROM`.
    Starttls { cert: PathBuf, key: PathBuf },
    /// TLS from the first byte (SMTPS).
    Implicit { cert: PathBuf, key: PathBuf },
}

/// A running aiosmtpd process; killed (and reaped) on drop.
pub struct Aiosmtpd {
    /// The loopback port the server listens on (host is always `127.0.0.1`).
    pub port: u16,
    state: tempfile::TempDir,
    child: Child,
}

impl Aiosmtpd {
    /// Starts a plain server without AUTH; see [`Aiosmtpd::start_with`].
    pub fn start() -> Option<Aiosmtpd> {
        Aiosmtpd::start_with(&SmtpOptions::default())
    }

    /// Starts the server script and waits until it has written its port.
    ///
    /// Python is `$ROLLCALL_TEST_PYTHON` or `python3`. Returns `None`, after
    /// printing `SKIPPED (aiosmtpd): <reason>` to stderr, when aiosmtpd cannot
    /// be imported and `CI` is not set; panics with a clear message when `CI`
    /// is set. Panics (CI or not) when aiosmtpd is importable but the server
    /// does not come up; the panic message includes the tail of its log.
    pub fn start_with(options: &SmtpOptions) -> Option<Aiosmtpd> {
        let python = python();
        if let Err(reason) = check_importable(&python) {
            if ci() {
                panic!(
                    "aiosmtpd is required under CI but unusable: {reason}\n\
                     Install it with `pip install -r tests/requirements.txt` and point \
                     {PYTHON_ENV} at that interpreter."
                );
            }
            eprintln!("SKIPPED (aiosmtpd): {reason}");
            return None;
        }
        let state = tempfile::Builder::new()
            .prefix("rollcall-aiosmtpd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for aiosmtpd: {e}"));
        // Python's mailbox.Maildir creates maildir/ with tmp/ new/ cur/ itself;
        // it must not exist empty beforehand.
        let (child, port) = launch(&python, state.path(), options);
        Some(Aiosmtpd { port, state, child })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The Maildir the server delivers into.
    pub fn maildir(&self) -> PathBuf {
        self.state.path().join("maildir")
    }

    /// The server's combined stdout/stderr so far (for diagnostics).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("aiosmtpd.log")
    }

    /// How many TCP connections the server has taken so far (for implicit
    /// TLS, only those whose handshake succeeded).
    pub fn connections(&self) -> usize {
        fs::read_to_string(self.state.path().join("connections")).map_or(0, |s| s.lines().count())
    }

    /// Every AUTH attempt so far, as `<mechanism> <login> ok|refused`.
    pub fn auth_attempts(&self) -> Vec<String> {
        fs::read_to_string(self.state.path().join("auth.log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Every message in the Maildir's `new/` and `cur/` directories, parsed,
    /// in delivery order.
    pub fn messages(&self) -> Vec<StoredMail> {
        let root = self.maildir();
        let mut files: Vec<(u64, String, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = fs::read_dir(root.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                files.push((delivery_counter(&name), name, entry.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, _, path)| fs::read(&path).ok())
            .map(|bytes| StoredMail::parse(&bytes))
            .collect()
    }

    /// Polls the Maildir every 20 ms until at least `n` messages exist and
    /// returns all of them. Panics (listing what did arrive and the server
    /// log) when `timeout` of real time passes first.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<StoredMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} message(s) on aiosmtpd port {}; \
                     got {}: {subjects:?}\n{}",
                    self.port,
                    messages.len(),
                    log_tail(&self.log_path())
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as stored by aiosmtpd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// Top-level headers in file order, unfolded, values trimmed and *not*
    /// RFC 2047-decoded. Includes aiosmtpd's `X-Peer`, `X-MailFrom`, `X-RcptTo`.
    pub headers: Vec<(String, String)>,
    /// The `Subject` header with RFC 2047 encoded words decoded ("" if absent).
    pub subject: String,
    /// The decoded text body: the whole body of a single-part message, or the
    /// first `text/plain` part (else first `text/*` part) of a multipart one.
    /// Transfer encoding (quoted-printable / base64) and charset are decoded;
    /// line endings are normalised to `\n`.
    pub body: String,
    /// The decoded first `text/html` part (or single-part `text/html` body),
    /// decoded like `body`; `None` when there is none.
    pub html: Option<String>,
    /// The file as stored (lossily converted to UTF-8).
    pub raw: String,
}

impl StoredMail {
    /// The first header named `name` (case-insensitive), raw (not decoded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (case-insensitive), in file order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A header with RFC 2047 encoded words decoded (e.g. `From`, `To`).
    pub fn header_decoded(&self, name: &str) -> Option<String> {
        self.header(name).map(decode_rfc2047)
    }

    /// The SMTP envelope sender (`MAIL FROM`), as recorded by aiosmtpd.
    pub fn mail_from(&self) -> Option<&str> {
        self.header_all("X-MailFrom").last().copied()
    }

    /// The SMTP envelope recipients (`RCPT TO`), as recorded by aiosmtpd.
    pub fn rcpt_to(&self) -> Vec<String> {
        self.header_all("X-RcptTo")
            .last()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Parses a stored message file.
    pub fn parse(bytes: &[u8]) -> StoredMail {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let (headers, body_bytes) = split_message(bytes);
        let subject = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Subject"))
            .map(|(_, v)| decode_rfc2047(v))
            .unwrap_or_default();
        let body = text_body(&headers, body_bytes).unwrap_or_default();
        let html = find_part(&headers, body_bytes, 0, &|m| m == "text/html");
        StoredMail {
            headers,
            subject,
            body,
            html,
            raw,
        }
    }

    /// The top-level media type, lower-case (`text/plain` when absent).
    pub fn mime_type(&self) -> String {
        content_type(&self.headers).0
    }
}

// ---------------------------------------------------------------------------
// Process management
// ---------------------------------------------------------------------------

fn python() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// `CI` counts as set unless it is empty, `0` or `false`.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

fn check_importable(python: &str) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", "import ssl, aiosmtpd.smtp, aiosmtpd.handlers"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!(
        "`{python} -c 'import aiosmtpd'` failed ({}): {}",
        out.status,
        last.trim()
    ))
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the free port: {e}"))
        .port()
}

/// Spawns the script in `state` and waits for `state/ready`, which holds the
/// port. Panics with the log tail when the process exits or is not ready in
/// time.
fn launch(python: &str, state: &Path, options: &SmtpOptions) -> (Child, u16) {
    let script = state.join("server.py");
    fs::write(&script, SERVER_PY)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", script.display()));
    let log_path = state.join("aiosmtpd.log");
    let log = File::create(&log_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
    let stderr = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone the aiosmtpd log handle: {e}"));
    let mut command = Command::new(python);
    command.arg(&script).arg("--state").arg(state);
    match &options.tls {
        ServerTls::None => {}
        ServerTls::Starttls { cert, key } => {
            command.args(["--tls", "starttls", "--cert"]).arg(cert);
            command.arg("--key").arg(key);
        }
        ServerTls::Implicit { cert, key } => {
            command.args(["--tls", "implicit", "--cert"]).arg(cert);
            command.arg("--key").arg(key);
        }
    }
    if let Some((user, password)) = &options.login {
        command.args(["--user", user, "--password", password]);
    }
    if options.close_after_message {
        command.arg("--close-after-message");
    }
    if let Some(port) = options.port {
        command.arg("--port").arg(port.to_string());
    }
    let mut child = command
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{python} server.py`: {e}"));

    let ready = state.join("ready");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(port) = fs::read_to_string(&ready)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            return (child, port);
        }
        match child.try_wait() {
            Ok(Some(status)) => panic!(
                "aiosmtpd exited with {status} before it was ready\n{}",
                log_tail(&log_path)
            ),
            Ok(None) => {}
            Err(e) => panic!("cannot poll the aiosmtpd process: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "aiosmtpd was not ready within {READY_TIMEOUT:?}\n{}",
                log_tail(&log_path)
            );
        }
        thread::sleep(POLL);
    }
}

/// The last lines of the server log, formatted for a panic message.
fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read log: {e}>"));
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(40);
    format!(
        "--- aiosmtpd log tail ({}) ---\n{}\n--- end of aiosmtpd log ---",
        path.display(),
        lines[start..].join("\n")
    )
}

/// Python's mailbox.Maildir names files `<secs>.M<usecs>P<pid>Q<counter>.<host>`;
/// the per-process counter gives the delivery order.
fn delivery_counter(name: &str) -> u64 {
    name.split('.')
        .nth(1)
        .and_then(|part| part.rsplit_once('Q'))
        .and_then(|(_, q)| q.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Message parsing
// ---------------------------------------------------------------------------

/// Splits a message into unfolded headers and the body bytes.
fn split_message(bytes: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let mut body_start = bytes.len();
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| pos + i);
        let next = (end + 1).min(bytes.len());
        let line = String::from_utf8_lossy(&bytes[pos..end]);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            body_start = next;
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.to_owned()));
        }
        pos = next;
    }
    for (_, value) in &mut headers {
        *value = value.trim().to_owned();
    }
    (headers, &bytes[body_start..])
}

fn content_type(headers: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let value = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        .map_or("text/plain", |(_, v)| v.as_str());
    parse_content_type(value)
}

/// The text body of a message: single-part bodies are decoded whatever their
/// type; in a multipart, the first `text/plain` part (depth-first), else the
/// first `text/*` part.
fn text_body(headers: &[(String, String)], body: &[u8]) -> Option<String> {
    let (mime, _) = content_type(headers);
    if !mime.starts_with("multipart/") {
        return Some(decode_entity(headers, body));
    }
    find_part(headers, body, 0, &|m| m == "text/plain")
        .or_else(|| find_part(headers, body, 0, &|m| m.starts_with("text/")))
}

fn find_part(
    headers: &[(String, String)],
    body: &[u8],
    depth: usize,
    wanted: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let (mime, params) = content_type(headers);
    if mime.starts_with("multipart/") {
        if depth > 16 {
            return None;
        }
        let boundary = params
            .iter()
            .find(|(k, _)| k == "boundary")
            .map(|(_, v)| v.as_str())?;
        return multipart_parts(body, boundary)
            .into_iter()
            .find_map(|part| {
                let (h, b) = split_message(part);
                find_part(&h, b, depth + 1, wanted)
            });
    }
    wanted(&mime).then(|| decode_entity(headers, body))
}

/// Undoes the transfer encoding and charset of a single-part entity.
fn decode_entity(headers: &[(String, String)], body: &[u8]) -> String {
    let (_, params) = content_type(headers);
    let encoding = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Transfer-Encoding"))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let decoded = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body, false),
        "base64" => decode_base64(body),
        _ => body.to_vec(),
    };
    let charset = params
        .iter()
        .find(|(k, _)| k == "charset")
        .map_or("us-ascii", |(_, v)| v.as_str());
    decode_charset(&decoded, charset).replace("\r\n", "\n")
}

/// `type/subtype; k=v; k="quoted v"` → (lower-case type, [(lower-case k, v)]).
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            pieces.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    pieces.push(current);
    let mut iter = pieces.into_iter();
    let mime = iter.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = iter
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    (mime, params)
}

/// The body parts between `--boundary` delimiter lines.
fn multipart_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let end = body[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| pos + i);
        let next = (end + 1).min(body.len());
        let line = &body[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim_ascii_end(line);
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes())
            && (rest.is_empty() || rest == b"--")
        {
            if let Some(start) = part_start {
                // The line break before a delimiter belongs to the delimiter.
                let mut stop = pos;
                if stop > start && body[stop - 1] == b'\n' {
                    stop -= 1;
                    if stop > start && body[stop - 1] == b'\r' {
                        stop -= 1;
                    }
                }
                parts.push(&body[start..stop]);
            }
            if rest == b"--" {
                break;
            }
            part_start = Some(next);
        }
        pos = next;
    }
    parts
}

fn trim_ascii_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Quoted-printable (RFC 2045). With `q_encoding`, RFC 2047's "Q" variant:
/// `_` means a space. Malformed `=` sequences are kept literally.
fn decode_quoted_printable(input: &[u8], q_encoding: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut lines = input.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let had_newline = lines.peek().is_some();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Trailing whitespace is transport padding (RFC 2045 6.7 rule 3).
        let line = if q_encoding {
            line
        } else {
            trim_ascii_end(line)
        };
        let mut soft_break = false;
        let mut i = 0;
        while i < line.len() {
            match line[i] {
                b'=' => {
                    let hex = (
                        line.get(i + 1).copied().and_then(hex_value),
                        line.get(i + 2).copied().and_then(hex_value),
                    );
                    if i + 1 == line.len() {
                        soft_break = true;
                        i += 1;
                    } else if let (Some(h), Some(l)) = hex {
                        out.push(h * 16 + l);
                        i += 3;
                    } else {
                        out.push(b'=');
                        i += 1;
                    }
                }
                b'_' if q_encoding => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        if had_newline && !soft_break {
            out.push(b'\n');
        }
    }
    out
}

/// Base64 (standard alphabet); whitespace and other stray bytes are skipped,
/// decoding stops at the first `=`.
fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in input {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Bytes in `charset` → String. UTF-8/ASCII and Latin-1 are exact; anything
/// else is treated as UTF-8, lossily.
fn decode_charset(bytes: &[u8], charset: &str) -> String {
    match charset.trim().to_ascii_lowercase().as_str() {
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "l1" => {
            bytes.iter().map(|&b| char::from(b)).collect()
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// One `=?charset?enc?text?=` word → (lower-case charset, decoded bytes).
fn decode_encoded_word(word: &str) -> Option<(String, Vec<u8>)> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut fields = inner.splitn(3, '?');
    let charset = fields.next()?;
    let encoding = fields.next()?;
    let text = fields.next()?;
    if text.contains('?') || charset.is_empty() {
        return None;
    }
    // RFC 2231 language suffix: `utf-8*en`.
    let charset = charset.split('*').next()?.to_ascii_lowercase();
    let bytes = match encoding {
        "B" | "b" => decode_base64(text.as_bytes()),
        "Q" | "q" => decode_quoted_printable(text.as_bytes(), true),
        _ => return None,
    };
    Some((charset, bytes))
}

/// Decodes RFC 2047 encoded words in a header value. Whitespace between
/// adjacent encoded words is dropped; consecutive words in the same charset
/// are joined before charset decoding, so a multi-byte character split across
/// two words survives.
pub fn decode_rfc2047(value: &str) -> String {
    let mut out = String::new();
    // Bytes of the encoded word(s) just seen, not yet charset-decoded.
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut rest = value;
    loop {
        let trimmed = rest.trim_start();
        let ws = &rest[..rest.len() - trimmed.len()];
        if trimmed.is_empty() {
            flush(&mut out, &mut pending);
            out.push_str(ws);
            return out;
        }
        let token_len = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let (token, tail) = trimmed.split_at(token_len);
        rest = tail;
        match (decode_encoded_word(token), &mut pending) {
            // Adjacent encoded word in the same charset: the whitespace goes.
            (Some((charset, bytes)), Some((cs, buf))) if *cs == charset => {
                buf.extend_from_slice(&bytes);
            }
            (Some(word), Some(_)) => {
                flush(&mut out, &mut pending);
                pending = Some(word);
            }
            (Some(word), None) => {
                out.push_str(ws);
                pending = Some(word);
            }
            (None, _) => {
                flush(&mut out, &mut pending);
                out.push_str(ws);
                out.push_str(token);
            }
        }
    }
}

fn flush(out: &mut String, pending: &mut Option<(String, Vec<u8>)>) {
    if let Some((charset, bytes)) = pending.take() {
        out.push_str(&decode_charset(&bytes, &charset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding_and_whitespace() {
        assert_eq!(decode_base64(b"aGVsbG8="), b"hello");
        assert_eq!(decode_base64(b"aGVsbG8"), b"hello");
        assert_eq!(decode_base64(b"aGVs\r\nbG8gd29y\nbGQ="), b"hello world");
        assert_eq!(decode_base64(b""), b"");
        assert_eq!(decode_base64("w6k=".as_bytes()), "é".as_bytes());
    }

    #[test]
    fn quoted_printable_handles_soft_breaks_hex_and_padding() {
        assert_eq!(
            decode_quoted_printable(b"caf=C3=A9 =\r\nlatte  \r\nnext", false),
            "café latte\nnext".as_bytes()
        );
        assert_eq!(decode_quoted_printable(b"a=3Db=3db", false), b"a=b=b");
        assert_eq!(decode_quoted_printable(b"bad=ZZ=", false), b"bad=ZZ");
        assert_eq!(decode_quoted_printable(b"x=4", false), b"x=4");
        assert_eq!(decode_quoted_printable(b"a_b=5F", true), b"a b_");
    }

    #[test]
    fn rfc2047_decodes_b_and_q_words() {
        assert_eq!(decode_rfc2047("plain subject"), "plain subject");
        assert_eq!(decode_rfc2047("=?utf-8?b?w6lx?="), "éq");
        assert_eq!(decode_rfc2047("=?UTF-8?Q?caf=C3=A9_time?="), "café time");
        assert_eq!(decode_rfc2047("=?iso-8859-1?q?caf=E9?="), "café");
        assert_eq!(
            decode_rfc2047("Re: =?utf-8?q?caf=C3=A9?= now"),
            "Re: café now"
        );
        assert_eq!(decode_rfc2047("=?utf-8*en?Q?hi?="), "hi");
    }

    #[test]
    fn rfc2047_drops_whitespace_between_words_and_joins_split_chars() {
        assert_eq!(decode_rfc2047("=?utf-8?q?a?= =?utf-8?q?b?="), "ab");
        assert_eq!(decode_rfc2047("=?utf-8?q?a?=\t =?utf-8?q?_b?="), "a b");
        // "é" = C3 A9, split across two words.
        assert_eq!(decode_rfc2047("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?="), "café");
        assert_eq!(decode_rfc2047("=?utf-8?b?w6k=?= x"), "é x");
        assert_eq!(decode_rfc2047("x =?utf-8?q?y?="), "x y");
        // Malformed words are left as they are.
        assert_eq!(decode_rfc2047("=?utf-8?x?y?="), "=?utf-8?x?y?=");
    }

    #[test]
    fn parses_aiosmtpd_style_single_part_message() {
        let file = b"Subject: =?utf-8?q?Exercise_caf=C3=A9?=\n\
            From: Rollcall <rollcall@example.test>\n\
            To: a@example.test\n\
            Content-Type: text/plain; charset=utf-8\n\
            Content-Transfer-Encoding: quoted-printable\n\
            X-Long: one\n two\n\
            X-Peer: ('127.0.0.1', 40312)\n\
            X-MailFrom: rollcall@example.test\n\
            X-RcptTo: a@example.test, b@example.test\n\
            \n\
            Reply =E2=9C=93 with=\n code 42\n";
        let mail = StoredMail::parse(file);
        assert_eq!(mail.subject, "Exercise café");
        assert_eq!(mail.body, "Reply ✓ with code 42\n");
        assert_eq!(mail.header("x-long"), Some("one two"));
        assert_eq!(mail.header("TO"), Some("a@example.test"));
        assert_eq!(mail.mail_from(), Some("rollcall@example.test"));
        assert_eq!(mail.rcpt_to(), vec!["a@example.test", "b@example.test"]);
        assert_eq!(mail.header("missing"), None);
    }

    #[test]
    fn multipart_picks_first_text_plain_part() {
        let file = b"Subject: multi\r\n\
            MIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"outer; b\"\r\n\
            \r\n\
            preamble\r\n\
            --outer; b\r\n\
            Content-Type: multipart/alternative; boundary=inner\r\n\
            \r\n\
            --inner\r\n\
            Content-Type: text/html; charset=utf-8\r\n\
            \r\n\
            <p>html</p>\r\n\
            --inner\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: base64\r\n\
            \r\n\
            cGxhaW4gdGV4dCDinJMKbGluZSAy\r\n\
            --inner--\r\n\
            --outer; b\r\n\
            Content-Type: text/plain\r\n\
            \r\n\
            attachment-ish\r\n\
            --outer; b--\r\n\
            epilogue\r\n";
        let mail = StoredMail::parse(file);
        assert_eq!(mail.subject, "multi");
        assert_eq!(mail.mime_type(), "multipart/mixed");
        assert_eq!(mail.body, "plain text ✓\nline 2");
        assert_eq!(mail.html.as_deref(), Some("<p>html</p>"));
    }

    #[test]
    fn multipart_without_plain_falls_back_to_first_text_part() {
        let file = b"Content-Type: multipart/alternative; boundary=b\n\n--b\n\
            Content-Type: text/html\n\n<b>hi</b>\n--b--\n";
        assert_eq!(StoredMail::parse(file).body, "<b>hi</b>");
    }

    #[test]
    fn latin1_body_and_missing_subject() {
        let file = b"Content-Type: text/plain; charset=\"ISO-8859-1\"\n\ncaf\xe9\n";
        let mail = StoredMail::parse(file);
        assert_eq!(mail.subject, "");
        assert_eq!(mail.body, "café\n");
    }

    #[test]
    fn delivery_counter_reads_python_maildir_names() {
        assert_eq!(delivery_counter("1732752000.M123456P4242Q7.host"), 7);
        assert_eq!(delivery_counter("1732752000.M12P1Q12.host:2,S"), 12);
        assert_eq!(delivery_counter("weird"), u64::MAX);
    }

    /// End-to-end check of the harness itself with a raw SMTP dialogue.
    #[test]
    fn aiosmtpd_receives_a_raw_smtp_message() {
        let Some(server) = Aiosmtpd::start() else {
            return;
        };
        let mut stream = TcpStream::connect(server.addr()).expect("connect to aiosmtpd");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        fn reply(stream: &mut TcpStream, send: &str, expect: &str) {
            if !send.is_empty() {
                stream.write_all(send.as_bytes()).expect("write");
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = stream.read(&mut chunk).expect("read reply");
                assert!(n > 0, "connection closed after {send:?}");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                let last = text.trim_end().lines().last().unwrap_or("");
                if text.ends_with("\r\n") && last.as_bytes().get(3) != Some(&b'-') {
                    assert!(last.starts_with(expect), "{send:?} -> {text:?}");
                    return;
                }
            }
        }
        reply(&mut stream, "", "220");
        reply(&mut stream, "EHLO localhost\r\n", "250");
        reply(&mut stream, "MAIL FROM:<rollcall@example.test>\r\n", "250");
        reply(&mut stream, "RCPT TO:<a@example.test>\r\n", "250");
        reply(&mut stream, "RCPT TO:<b@example.test>\r\n", "250");
        reply(&mut stream, "DATA\r\n", "354");
        reply(
            &mut stream,
            "From: rollcall@example.test\r\n\
             To: a@example.test\r\n\
             Subject: =?utf-8?b?w4l4ZXJjaXNl?= 7\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\
             \r\n\
             Code =C3=A9=3D1\r\n\
             ..dot-stuffed\r\n\
             .\r\n",
            "250",
        );
        reply(&mut stream, "QUIT\r\n", "221");
        let mails = server.wait_for(1, Duration::from_secs(10));
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert_eq!(mail.subject, "Éxercise 7");
        assert_eq!(mail.body, "Code é=1\n.dot-stuffed\n");
        assert_eq!(mail.mail_from(), Some("rollcall@example.test"));
        assert_eq!(mail.rcpt_to(), vec!["a@example.test", "b@example.test"]);
        assert!(
            mail.header("X-Peer")
                .is_some_and(|p| p.contains("127.0.0.1"))
        );
    }
}
