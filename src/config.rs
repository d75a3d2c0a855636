//! `rollcall.yaml`: every key of PRODUCT.md §2.3, with built-in defaults and
//! `ROLLCALL_*` environment twins. Secrets are never read from the file,
//! only from the environment variables it names.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::TimeDelta;

use crate::domain::contacts::is_env_name;
use crate::domain::{EmailAddress, parse_duration};
use crate::yaml::{self, MapView, Node, Pos, Problems, Value};

/// A secret read from the environment; its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Reads the secret an `*_env` key names.
pub fn secret_from_env(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderMode {
    TwoWay,
    OneWay,
}

#[derive(Debug, Clone)]
pub struct Rate {
    pub per_second: f64,
    /// Segments that may go at once before pacing starts (`burst`, default 1).
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub enum ProviderKind {
    Twilio {
        base_url: String,
        account_sid: String,
        auth_token_env: String,
        alternate_auth_token_env: Option<String>,
    },
    HttpJson {
        url: String,
        headers_env: Vec<(String, String)>,
        body: String,
        inbound_secret_env: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct SmsProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub pool: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: String,
    pub contacts: PathBuf,
    pub schedules: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub public_url: String,
    pub api_token_env: String,
    pub sms_mode: SenderMode,
    pub sms_from: Option<String>,
    pub sms_providers: Vec<SmsProvider>,
    pub email_from: String,
    pub email_reply_to: Option<EmailAddress>,
    pub smtp: Option<Smtp>,
    pub webhook_timeout: TimeDelta,
    pub webhook_secret_env: String,
    /// Webhook POSTs in flight at once to one host (`host:port`), so a
    /// round never floods a department's receiver.
    pub webhook_per_host: u32,
    pub retry_attempts: u32,
    pub retry_backoff: TimeDelta,
    pub retry_max_backoff: TimeDelta,
    pub grace: TimeDelta,
    pub unverified_after: TimeDelta,
    pub audit_key_env: Option<String>,
    /// Where the file came from, if there was one.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    /// The embedded default: SQLite, loopback listeners, no live provider.
    fn default() -> Self {
        Config {
            database: "sqlite://rollcall.db".into(),
            contacts: "contacts".into(),
            schedules: "schedules".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            public_url: "http://127.0.0.1:8080".into(),
            api_token_env: "ROLLCALL_API_TOKEN".into(),
            sms_mode: SenderMode::TwoWay,
            sms_from: None,
            sms_providers: Vec::new(),
            email_from: "Exercise Control <drill@rollcall.example>".into(),
            email_reply_to: None,
            smtp: None,
            webhook_timeout: TimeDelta::seconds(10),
            webhook_secret_env: "ROLLCALL_WEBHOOK_SECRET".into(),
            webhook_per_host: 8,
            retry_attempts: 5,
            retry_backoff: TimeDelta::seconds(15),
            retry_max_backoff: TimeDelta::minutes(5),
            grace: TimeDelta::minutes(5),
            unverified_after: TimeDelta::days(180),
            audit_key_env: None,
            source: None,
        }
    }
}

/// Scalar keys that have `ROLLCALL_` environment twins.
const TWINNED: &[&str] = &[
    "database",
    "contacts",
    "schedules",
    "http.listen",
    "http.admin_listen",
    "http.public_url",
    "http.api_token_env",
    "sms.sender.mode",
    "sms.sender.from",
    "email.from",
    "email.reply_to",
    "email.smtp.host",
    "email.smtp.port",
    "email.smtp.tls",
    "email.smtp.username",
    "email.smtp.password_env",
    "email.smtp.ca_file",
    "email.smtp.pool",
    "email.imap.host",
    "email.imap.port",
    "email.imap.tls",
    "email.imap.username",
    "email.imap.auth",
    "email.imap.password_env",
    "email.imap.mailbox",
    "email.imap.poll",
    "email.imap.ca_file",
    "webhook.timeout",
    "webhook.secret_env",
    "webhook.per_host",
    "delivery.retry.attempts",
    "delivery.retry.backoff",
    "delivery.retry.max_backoff",
    "delivery.grace",
    "report.unverified_after",
    "audit.key_env",
];

/// The environment variable twin of a key path: `http.listen` → `ROLLCALL_HTTP__LISTEN`.
pub fn env_twin(key_path: &str) -> String {
    format!(
        "ROLLCALL_{}",
        key_path.replace('.', "__").to_ascii_uppercase()
    )
}

/// Sets `path` in a mapping tree, creating mappings on the way.
fn overlay(node: &mut Node, path: &[&str], value: String) {
    if !matches!(node.value, Value::Map(_)) {
        node.value = Value::Map(Vec::new());
    }
    let Value::Map(entries) = &mut node.value else {
        return;
    };
    let (head, rest) = (path[0], &path[1..]);
    let idx = match entries.iter().position(|(k, _)| k.as_str() == Some(head)) {
        Some(i) => i,
        None => {
            entries.push((
                Node::synthetic(Value::Str(head.into())),
                Node::synthetic(Value::Null),
            ));
            entries.len() - 1
        }
    };
    let child = &mut entries[idx].1;
    if rest.is_empty() {
        *child = Node::synthetic(Value::Str(value));
    } else {
        overlay(child, rest, value);
    }
}

/// Finds the configuration file: `--config`, then `ROLLCALL_CONFIG`, then
/// `./rollcall.yaml` if present.
pub fn locate(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("ROLLCALL_CONFIG")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("rollcall.yaml");
    local.is_file().then_some(local)
}

/// Loads the configuration: file (if any) overlaid with environment twins,
/// over the built-in defaults. Problems are collected.
pub fn load(file: Option<&Path>, problems: &mut Problems) -> Config {
    let label = file.map_or_else(|| PathBuf::from("<defaults>"), Path::to_path_buf);
    let mut root = match file {
        Some(f) => yaml::read_file(f, problems).unwrap_or_else(|| Node::synthetic(Value::Null)),
        None => Node::synthetic(Value::Null),
    };
    for key in TWINNED {
        if let Ok(v) = std::env::var(env_twin(key)) {
            let parts: Vec<&str> = key.split('.').collect();
            overlay(&mut root, &parts, v);
        }
    }
    let mut cfg = Config {
        source: file.map(Path::to_path_buf),
        ..Config::default()
    };
    if matches!(root.value, Value::Null) {
        return cfg;
    }
    read_into(&mut cfg, &root, &label, problems);
    cfg
}

fn read_into(cfg: &mut Config, root: &Node, path: &Path, problems: &mut Problems) {
    let Some(top) = MapView::open(
        root,
        path,
        "the configuration",
        &[
            "database",
            "contacts",
            "schedules",
            "http",
            "sms",
            "email",
            "webhook",
            "delivery",
            "report",
            "audit",
        ],
        problems,
    ) else {
        return;
    };
    if let Some((s, _)) = top.str("database", problems) {
        cfg.database = s.to_owned();
    }
    if let Some((s, _)) = top.str("contacts", problems) {
        cfg.contacts = relative_to(path, s);
    }
    if let Some((s, _)) = top.str("schedules", problems) {
        cfg.schedules = relative_to(path, s);
    }
    if let Some(n) = top.get("http")
        && let Some(m) = MapView::open(
            n,
            path,
            "`http`",
            &["listen", "admin_listen", "public_url", "api_token_env"],
            problems,
        )
    {
        if let Some(a) = addr(&m, "listen", path, problems) {
            cfg.listen = a;
        }
        if let Some(a) = addr(&m, "admin_listen", path, problems) {
            cfg.admin_listen = a;
        }
        if let Some((s, pos)) = m.str("public_url", problems) {
            match reqwest::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {
                    cfg.public_url = s.trim_end_matches('/').to_owned()
                }
                _ => problems.error(path, pos, format!("`{s}` is not an http(s) URL")),
            }
        }
        if let Some(e) = env_name(&m, "api_token_env", path, problems) {
            cfg.api_token_env = e;
        }
    }
    if let Some(n) = top.get("sms") {
        read_sms(cfg, n, path, problems);
    }
    if let Some(n) = top.get("email") {
        read_email(cfg, n, path, problems);
    }
    if let Some(n) = top.get("webhook")
        && let Some(m) = MapView::open(
            n,
            path,
            "`webhook`",
            &["timeout", "secret_env", "per_host"],
            problems,
        )
    {
        if let Some(k) = number(&m, "per_host", path, problems) {
            if k == 0 {
                let pos = m.str("per_host", problems).map_or(Pos::START, |(_, p)| p);
                problems.error(path, pos, "`per_host` must be at least 1".to_owned());
            } else {
                cfg.webhook_per_host = k;
            }
        }
        if let Some(d) = duration(&m, "timeout", path, problems) {
            cfg.webhook_timeout = d;
        }
        if let Some(e) = env_name(&m, "secret_env", path, problems) {
            cfg.webhook_secret_env = e;
        }
    }
    if let Some(n) = top.get("delivery")
        && let Some(m) = MapView::open(n, path, "`delivery`", &["retry", "grace"], problems)
    {
        if let Some(r) = m.get("retry")
            && let Some(rm) = MapView::open(
                r,
                path,
                "`retry`",
                &["attempts", "backoff", "max_backoff"],
                problems,
            )
        {
            if let Some(n) = number(&rm, "attempts", path, problems) {
                cfg.retry_attempts = n.max(1);
            }
            if let Some(d) = duration(&rm, "backoff", path, problems) {
                cfg.retry_backoff = d;
            }
            if let Some(d) = duration(&rm, "max_backoff", path, problems) {
                cfg.retry_max_backoff = d;
            }
        }
        if let Some(d) = duration(&m, "grace", path, problems) {
            cfg.grace = d;
        }
    }
    if let Some(n) = top.get("report")
        && let Some(m) = MapView::open(n, path, "`report`", &["unverified_after"], problems)
        && let Some(d) = duration(&m, "unverified_after", path, problems)
    {
        cfg.unverified_after = d;
    }
    if let Some(n) = top.get("audit")
        && let Some(m) = MapView::open(n, path, "`audit`", &["key_env"], problems)
    {
        cfg.audit_key_env = env_name(&m, "key_env", path, problems);
    }
}

fn read_sms(cfg: &mut Config, node: &Node, path: &Path, problems: &mut Problems) {
    let Some(m) = MapView::open(node, path, "`sms`", &["sender", "providers"], problems) else {
        return;
    };
    if let Some(s) = m.get("sender")
        && let Some(sm) = MapView::open(s, path, "`sender`", &["mode", "from"], problems)
    {
        match sm.str("mode", problems) {
            Some(("two-way", _)) | None => cfg.sms_mode = SenderMode::TwoWay,
            Some(("one-way", _)) => cfg.sms_mode = SenderMode::OneWay,
            Some((other, pos)) => problems.error(
                path,
                pos,
                format!("sender mode `{other}` must be two-way or one-way"),
            ),
        }
        cfg.sms_from = sm.str("from", problems).map(|(s, _)| s.to_owned());
    }
    let Some(list) = m.get("providers") else {
        return;
    };
    let Some(items) = list.as_seq() else {
        problems.error(path, list.pos, "`providers` must be a list");
        return;
    };
    for item in items {
        let keys = &[
            "name",
            "kind",
            "base_url",
            "account_sid",
            "auth_token_env",
            "alternate_auth_token_env",
            "rate",
            "burst",
            "url",
            "headers_env",
            "body",
            "inbound_secret_env",
        ];
        let Some(p) = MapView::open(item, path, "a provider", keys, problems) else {
            continue;
        };
        let name = p
            .require_str("name", "a provider", problems)
            .map(|(s, _)| s.to_owned());
        let mut rate = p
            .str("rate", problems)
            .and_then(|(s, pos)| parse_rate(s).map_err(|e| problems.error(path, pos, e)).ok());
        if let Some((b, pos)) = p.str("burst", problems) {
            match (b.parse::<u32>(), rate.as_mut()) {
                (Ok(n), Some(r)) if n >= 1 => r.burst = n,
                (Ok(_), None) => problems.error(path, pos, "`burst` needs a `rate`"),
                _ => problems.error(
                    path,
                    pos,
                    format!("`burst` must be a whole number of segments, at least 1, found `{b}`"),
                ),
            }
        }
        let kind = match p.require_str("kind", "a provider", problems) {
            Some(("twilio", _)) => {
                let base_url = p
                    .str("base_url", problems)
                    .map_or("https://api.twilio.com".to_owned(), |(s, _)| {
                        s.trim_end_matches('/').to_owned()
                    });
                let sid = p
                    .require_str("account_sid", "a twilio provider", problems)
                    .map(|(s, _)| s.to_owned());
                let token = env_name(&p, "auth_token_env", path, problems);
                if token.is_none() && p.get("auth_token_env").is_none() {
                    problems.error(
                        path,
                        p.pos(),
                        "a twilio provider is missing `auth_token_env`",
                    );
                }
                let alt = env_name(&p, "alternate_auth_token_env", path, problems);
                sid.zip(token)
                    .map(|(account_sid, auth_token_env)| ProviderKind::Twilio {
                        base_url,
                        account_sid,
                        auth_token_env,
                        alternate_auth_token_env: alt,
                    })
            }
            Some(("http-json", _)) => {
                let url = p
                    .require_str("url", "an http-json provider", problems)
                    .map(|(s, _)| s.to_owned());
                let body = p
                    .require_str("body", "an http-json provider", problems)
                    .map(|(s, _)| s.to_owned());
                let mut headers = Vec::new();
                if let Some(h) = p.get("headers_env") {
                    match h.as_map() {
                        Some(entries) => {
                            for (k, v) in entries {
                                match (k.as_str(), v.as_str()) {
                                    (Some(k), Some(v)) if is_env_name(v) => headers.push((k.to_owned(), v.to_owned())),
                                    _ => problems.error(path, v.pos, "`headers_env` maps a header name to an environment variable name"),
                                }
                            }
                        }
                        None => problems.error(path, h.pos, "`headers_env` must be a mapping"),
                    }
                }
                let inbound = env_name(&p, "inbound_secret_env", path, problems);
                url.zip(body).map(|(url, body)| ProviderKind::HttpJson {
                    url,
                    headers_env: headers,
                    body,
                    inbound_secret_env: inbound,
                })
            }
            Some((other, pos)) => {
                problems.error(
                    path,
                    pos,
                    format!("provider kind `{other}` must be twilio or http-json"),
                );
                None
            }
            None => None,
        };
        if let (Some(name), Some(kind)) = (name, kind) {
            cfg.sms_providers.push(SmsProvider { name, kind, rate });
        }
    }
}

fn read_email(cfg: &mut Config, node: &Node, path: &Path, problems: &mut Problems) {
    let Some(m) = MapView::open(
        node,
        path,
        "`email`",
        &["from", "reply_to", "smtp", "imap"],
        problems,
    ) else {
        return;
    };
    if let Some((s, pos)) = m.str("from", problems) {
        match s.parse::<lettre::message::Mailbox>() {
            Ok(_) => cfg.email_from = s.to_owned(),
            Err(e) => problems.error(
                path,
                pos,
                format!("`{s}` is not a mailbox such as \"Name <a@b.example>\": {e}"),
            ),
        }
    }
    if let Some((s, pos)) = m.str("reply_to", problems) {
        cfg.email_reply_to = EmailAddress::parse(s)
            .map_err(|e| problems.error(path, pos, e))
            .ok();
    }
    if let Some(n) = m.get("smtp")
        && let Some(sm) = MapView::open(
            n,
            path,
            "`smtp`",
            &[
                "host",
                "port",
                "tls",
                "username",
                "password_env",
                "ca_file",
                "pool",
            ],
            problems,
        )
    {
        let host = sm
            .require_str("host", "`smtp`", problems)
            .map(|(s, _)| s.to_owned());
        let tls = tls(&sm, path, problems).unwrap_or(Tls::Starttls);
        let port = number(&sm, "port", path, problems).map_or(
            match tls {
                Tls::Implicit => 465,
                Tls::Starttls => 587,
                Tls::None => 25,
            },
            |p| p as u16,
        );
        let smtp = host.map(|host| Smtp {
            host,
            port,
            tls,
            username: sm.str("username", problems).map(|(s, _)| s.to_owned()),
            password_env: env_name(&sm, "password_env", path, problems),
            ca_file: sm
                .str("ca_file", problems)
                .map(|(s, _)| relative_to(path, s)),
            pool: number(&sm, "pool", path, problems).unwrap_or(4).max(1),
        });
        cfg.smtp = smtp;
    }
    if let Some(n) = m.get("imap") {
        // The IMAP poller arrives with the acknowledgement issue; its keys are checked now.
        if let Some(im) = MapView::open(
            n,
            path,
            "`imap`",
            &[
                "host",
                "port",
                "tls",
                "username",
                "auth",
                "password_env",
                "mailbox",
                "poll",
                "ca_file",
            ],
            problems,
        ) {
            let _ = tls(&im, path, problems);
            let _ = number(&im, "port", path, problems);
            let _ = duration(&im, "poll", path, problems);
            let _ = env_name(&im, "password_env", path, problems);
        }
    }
}

fn relative_to(config_file: &Path, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        return p;
    }
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && config_file.is_file() => dir.join(p),
        _ => p,
    }
}

fn addr(m: &MapView<'_>, key: &str, path: &Path, problems: &mut Problems) -> Option<SocketAddr> {
    let (s, pos) = m.str(key, problems)?;
    s.parse()
        .map_err(|_| {
            problems.error(
                path,
                pos,
                format!("`{s}` is not a listen address such as 127.0.0.1:8080"),
            )
        })
        .ok()
}

fn duration(m: &MapView<'_>, key: &str, path: &Path, problems: &mut Problems) -> Option<TimeDelta> {
    let (s, pos) = m.str(key, problems)?;
    parse_duration(s)
        .map_err(|e| problems.error(path, pos, e))
        .ok()
}

fn number(m: &MapView<'_>, key: &str, path: &Path, problems: &mut Problems) -> Option<u32> {
    let (s, pos) = m.str(key, problems)?;
    s.parse()
        .map_err(|_| {
            problems.error(
                path,
                pos,
                format!("`{key}` must be a whole number, found `{s}`"),
            )
        })
        .ok()
}

fn env_name(m: &MapView<'_>, key: &str, path: &Path, problems: &mut Problems) -> Option<String> {
    let (s, pos) = m.str(key, problems)?;
    if is_env_name(s) {
        Some(s.to_owned())
    } else {
        problems.error(
            path,
            pos,
            format!("`{s}` is not an environment variable name (A-Z, 0-9, _)"),
        );
        None
    }
}

fn tls(m: &MapView<'_>, path: &Path, problems: &mut Problems) -> Option<Tls> {
    match m.str("tls", problems)? {
        ("none", _) => Some(Tls::None),
        ("starttls", _) => Some(Tls::Starttls),
        ("implicit", _) => Some(Tls::Implicit),
        (other, pos) => {
            problems.error(
                path,
                pos,
                format!("tls `{other}` must be none, starttls or implicit"),
            );
            None
        }
    }
}

/// `1/s`, `30/min`, `20/s`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("rate `{s}` must look like 1/s or 30/min");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    if n <= 0.0 || !n.is_finite() {
        return Err(bad());
    }
    let per_second = match unit.trim() {
        "s" | "sec" => n,
        "min" | "m" => n / 60.0,
        "h" => n / 3600.0,
        _ => return Err(bad()),
    };
    Ok(Rate {
        per_second,
        burst: 1,
    })
}

impl Config {
    /// Every secret the configuration names, with whether a live destination
    /// needs it now.
    pub fn secret_envs(&self) -> Vec<(&'static str, String, bool)> {
        let mut out = Vec::new();
        for p in &self.sms_providers {
            match &p.kind {
                ProviderKind::Twilio { auth_token_env, .. } => {
                    out.push(("sms provider", auth_token_env.clone(), true))
                }
                ProviderKind::HttpJson {
                    headers_env,
                    inbound_secret_env,
                    ..
                } => {
                    for (_, e) in headers_env {
                        out.push(("sms provider header", e.clone(), true));
                    }
                    if let Some(e) = inbound_secret_env {
                        out.push(("sms inbound signature", e.clone(), true));
                    }
                }
            }
        }
        if let Some(smtp) = &self.smtp
            && let Some(e) = &smtp.password_env
        {
            out.push(("smtp password", e.clone(), true));
        }
        out
    }

    pub fn has_live_provider(&self) -> bool {
        !self.sms_providers.is_empty() || self.smtp.is_some()
    }
}

impl Node {
    /// A node made by rollcall itself (defaults, environment twins).
    pub fn synthetic(value: Value) -> Node {
        Node::new(Pos::START, value)
    }
}

/// Where secrets come from: the environment, unless a value was supplied
/// in-process (simulate and tests, which must not mutate the environment).
#[derive(Clone, Default)]
pub struct Secrets {
    supplied: std::sync::Arc<std::collections::HashMap<String, Secret>>,
}

impl Secrets {
    pub fn from_env() -> Self {
        Secrets::default()
    }

    pub fn supplied(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Secrets {
            supplied: std::sync::Arc::new(
                values
                    .into_iter()
                    .map(|(k, v)| (k, Secret::new(v)))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, var: &str) -> Option<Secret> {
        self.supplied
            .get(var)
            .cloned()
            .or_else(|| secret_from_env(var))
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} supplied)", self.supplied.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses_without_problems() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rollcall.example.yaml");
        let mut problems = Problems::default();
        let cfg = load(Some(&file), &mut problems);
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(listed.is_empty(), "{listed:#?}");
        assert_eq!(cfg.sms_providers.len(), 2);
        assert_eq!(cfg.smtp.as_ref().map(|s| s.port), Some(587));
        assert_eq!(cfg.grace, TimeDelta::minutes(5));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_at_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rollcall.yaml");
        std::fs::write(
            &file,
            "http:\n  listen: nowhere\n  lisen: 127.0.0.1:1\ndelivery:\n  grace: soon\n",
        )
        .unwrap();
        let mut problems = Problems::default();
        load(Some(&file), &mut problems);
        let lines: Vec<(u64, String)> = problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 2 && m.contains("listen address")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 3 && m.contains("unknown key `lisen`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 5 && m.contains("not a duration")),
            "{lines:?}"
        );
    }

    #[test]
    fn environment_twins_are_named_after_the_key_path() {
        assert_eq!(env_twin("http.listen"), "ROLLCALL_HTTP__LISTEN");
        assert_eq!(
            env_twin("delivery.retry.attempts"),
            "ROLLCALL_DELIVERY__RETRY__ATTEMPTS"
        );
    }
}
