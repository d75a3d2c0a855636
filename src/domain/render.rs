//! The text of every message. Every SMS, email subject, email body and
//! webhook `text` starts and ends with the exercise marker (PRODUCT.md §4).
//!
//! Each text is a minijinja template per kind and language: a built-in one
//! (`templates/*.txt` beside this file, compiled into the binary) unless the
//! exercise's schedule overrides it under `templates:`. Templates render with
//! no auto-escaping (SMS and email text are plain text; [`email_html`]
//! escapes the HTML part itself), with strict undefined values (a misspelt
//! variable is an error, not an empty string) and without a loader (a
//! template cannot read files or include other templates).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Lang;
use super::contacts::{Contact, Department};
use super::schedule::Marker;

/// What a message says, independent of channel.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub marker: &'a Marker,
    pub lang: Lang,
    pub exercise_title: &'a str,
    pub round: &'a str,
    pub department: &'a str,
    pub code: &'a str,
    pub ack_url: &'a str,
    pub deadline_at: DateTime<Utc>,
    pub tz: Tz,
    /// One-way senders (a registered `#` ID) cannot take SMS replies.
    pub sms_two_way: bool,
}

/// A rendered message as stored in the outbox until the provider has it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Payload {
    Sms {
        to: String,
        text: String,
        deadline_at: DateTime<Utc>,
    },
    Email {
        to: String,
        subject: String,
        text: String,
    },
    Webhook {
        url: String,
        secret_env: Option<String>,
        body: RawJson,
    },
}

/// A JSON document kept as its text: a webhook body goes from the renderer
/// to the outbox and from the outbox to the wire without being taken apart
/// and put together again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// `value` as JSON text.
    pub fn of(value: &impl Serialize) -> Result<RawJson, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

/// A stored payload's fields, read in one pass. (serde's internally tagged
/// enums buffer their fields, and a buffered field cannot be kept as raw
/// JSON, so [`Payload`] reads this and checks it by hand.)
#[derive(Deserialize)]
struct StoredPayload {
    kind: String,
    to: Option<String>,
    text: Option<String>,
    deadline_at: Option<DateTime<Utc>>,
    subject: Option<String>,
    url: Option<String>,
    secret_env: Option<String>,
    body: Option<RawJson>,
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        use serde::de::Error;
        fn need<T, E: Error>(field: Option<T>, name: &'static str) -> Result<T, E> {
            field.ok_or_else(|| E::missing_field(name))
        }
        let p = StoredPayload::deserialize(deserializer)?;
        match p.kind.as_str() {
            "sms" => Ok(Payload::Sms {
                to: need(p.to, "to")?,
                text: need(p.text, "text")?,
                deadline_at: need(p.deadline_at, "deadline_at")?,
            }),
            "email" => Ok(Payload::Email {
                to: need(p.to, "to")?,
                subject: need(p.subject, "subject")?,
                text: need(p.text, "text")?,
            }),
            "webhook" => Ok(Payload::Webhook {
                url: need(p.url, "url")?,
                secret_env: p.secret_env,
                body: need(p.body, "body")?,
            }),
            other => Err(D::Error::unknown_variant(
                other,
                &["sms", "email", "webhook"],
            )),
        }
    }
}

/// What a template can say beyond the alert itself: the names behind the
/// codes. Empty names are allowed: a missing department name reads as the
/// department's code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// The exercise id.
    pub exercise: &'a str,
    /// The department's name in the message's language.
    pub department_name: &'a str,
    /// The name of the contact the message goes to.
    pub contact_name: &'a str,
}

impl<'a> Names<'a> {
    /// The names of a message to `contact` of `department` in `lang`: the
    /// department's Chinese name when it has one and the message is in
    /// Chinese, else its English name.
    pub fn of(
        exercise: &'a str,
        department: &'a Department,
        contact: Option<&'a Contact>,
        lang: Lang,
    ) -> Names<'a> {
        let department_name = match (lang, &department.name_zh) {
            (Lang::Zh, Some(zh)) => zh.as_str(),
            _ => department.name_en.as_str(),
        };
        Names {
            exercise,
            department_name,
            contact_name: contact.map_or("", |c| c.name.as_str()),
        }
    }
}

/// The kind of a message text: one template per kind and language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// The SMS of a two-way sender: it asks for the code as a reply.
    Sms,
    /// The SMS of a one-way sender (a registered `#` ID cannot take
    /// replies): it asks for an email reply or a call quoting the code.
    SmsOneWay,
    EmailSubject,
    EmailBody,
    WebhookText,
}

/// The keys under a schedule's `templates:`, one per [`TextKind`].
pub const TEMPLATE_KEYS: &[&str] = &[
    "sms",
    "sms_one_way",
    "email_subject",
    "email_body",
    "webhook_text",
];

/// The languages a template can be given for, as keys under its kind.
pub const TEMPLATE_LANGS: &[&str] = &["en", "zh"];

/// The ack code templates are rendered with before any code is issued
/// (`check`, `plan`).
pub const SAMPLE_CODE: &str = "K7QX3";

/// The variables every template can use (README "Message templates").
pub const VARIABLES: &[&str] = &[
    "marker",
    "title",
    "exercise",
    "round",
    "department",
    "department_name",
    "contact_name",
    "code",
    "ack_url",
    "deadline",
    "deadline_date",
    "timezone",
    "lang",
];

impl TextKind {
    pub const ALL: [TextKind; 5] = [
        TextKind::Sms,
        TextKind::SmsOneWay,
        TextKind::EmailSubject,
        TextKind::EmailBody,
        TextKind::WebhookText,
    ];

    /// Its key under `templates:` in a schedule.
    pub fn key(self) -> &'static str {
        match self {
            TextKind::Sms => "sms",
            TextKind::SmsOneWay => "sms_one_way",
            TextKind::EmailSubject => "email_subject",
            TextKind::EmailBody => "email_body",
            TextKind::WebhookText => "webhook_text",
        }
    }

    /// The SMS kind a sender of this mode sends.
    pub fn sms(two_way: bool) -> TextKind {
        if two_way {
            TextKind::Sms
        } else {
            TextKind::SmsOneWay
        }
    }

    pub fn is_sms(self) -> bool {
        matches!(self, TextKind::Sms | TextKind::SmsOneWay)
    }

    /// What it is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            TextKind::Sms => "SMS (two-way sender)",
            TextKind::SmsOneWay => "SMS (one-way sender)",
            TextKind::EmailSubject => "email subject",
            TextKind::EmailBody => "email body",
            TextKind::WebhookText => "webhook text",
        }
    }

    /// The template's name, as errors and the schedule key path show it:
    /// `templates.sms.en`.
    pub fn template_name(self, lang: Lang) -> String {
        format!("templates.{}.{}", self.key(), lang.as_str())
    }

    /// The shape every text of this kind is given: SMS, subject and webhook
    /// text lose surrounding white space (a YAML block scalar ends with a
    /// line break an SMS must not pay for); an email body keeps its inner
    /// layout and ends with one line break.
    fn tidy(self, text: &str) -> String {
        match self {
            TextKind::EmailBody => format!("{}\n", text.trim()),
            _ => text.trim().to_owned(),
        }
    }
}

impl fmt::Display for TextKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The built-in templates: the texts every exercise sends unless its
/// schedule says otherwise.
const BUILT_IN_SOURCES: [(TextKind, Lang, &str); 10] = [
    (
        TextKind::Sms,
        Lang::En,
        include_str!("templates/sms.en.txt"),
    ),
    (
        TextKind::Sms,
        Lang::Zh,
        include_str!("templates/sms.zh.txt"),
    ),
    (
        TextKind::SmsOneWay,
        Lang::En,
        include_str!("templates/sms_one_way.en.txt"),
    ),
    (
        TextKind::SmsOneWay,
        Lang::Zh,
        include_str!("templates/sms_one_way.zh.txt"),
    ),
    (
        TextKind::EmailSubject,
        Lang::En,
        include_str!("templates/email_subject.en.txt"),
    ),
    (
        TextKind::EmailSubject,
        Lang::Zh,
        include_str!("templates/email_subject.zh.txt"),
    ),
    (
        TextKind::EmailBody,
        Lang::En,
        include_str!("templates/email_body.en.txt"),
    ),
    (
        TextKind::EmailBody,
        Lang::Zh,
        include_str!("templates/email_body.zh.txt"),
    ),
    (
        TextKind::WebhookText,
        Lang::En,
        include_str!("templates/webhook_text.en.txt"),
    ),
    (
        TextKind::WebhookText,
        Lang::Zh,
        include_str!("templates/webhook_text.zh.txt"),
    ),
];

/// An environment as every message template is compiled in: no
/// auto-escaping, strict undefined values, no loader.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// The built-in templates, compiled once per process.
static BUILT_IN: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = environment();
    for (kind, lang, source) in BUILT_IN_SOURCES {
        // A unit test compiles every built-in; were one broken anyway, its
        // texts would come from `last_resort` rather than a panic.
        let _ = env.add_template_owned(kind.template_name(lang), source);
    }
    env
});

/// The values a template sees.
fn context(alert: &Alert<'_>, names: &Names<'_>) -> minijinja::Value {
    let local = alert.deadline_at.with_timezone(&alert.tz);
    let department_name = if names.department_name.is_empty() {
        alert.department
    } else {
        names.department_name
    };
    minijinja::context! {
        marker => alert.marker(),
        title => alert.exercise_title,
        exercise => names.exercise,
        round => alert.round,
        department => alert.department,
        department_name => department_name,
        contact_name => names.contact_name,
        code => alert.code,
        ack_url => alert.ack_url,
        deadline => local.format("%H:%M").to_string(),
        deadline_date => local.format("%Y-%m-%d").to_string(),
        timezone => alert.tz.name(),
        lang => alert.lang.as_str(),
    }
}

/// The built-in text of `kind`.
fn render_built_in(kind: TextKind, alert: &Alert<'_>, names: &Names<'_>) -> String {
    BUILT_IN
        .get_template(&kind.template_name(alert.lang))
        .and_then(|t| t.render(context(alert, names)))
        .map_or_else(|_| last_resort(alert), |text| kind.tidy(&text))
}

/// A text that is still marked and still carries the code, for a built-in
/// template that failed (none does: a unit test renders each one).
fn last_resort(alert: &Alert<'_>) -> String {
    let m = alert.marker();
    format!(
        "{m} {} {} {} {} {m}",
        alert.round,
        alert.department,
        alert.code,
        alert.deadline_local()
    )
}

/// Says what went wrong in a template, in one line.
fn describe(e: &minijinja::Error, source: &str) -> String {
    let mut out = e.kind().to_string();
    if let Some(detail) = e.detail() {
        out = format!("{out}: {detail}");
    }
    if source.trim_end().contains('\n')
        && let Some(line) = e.line()
    {
        out = format!("{out} (line {line} of the template)");
    }
    out
}

/// Whether a text holds a web link.
fn has_link(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("http://") || lower.contains("https://")
}

/// Why a rendered text does not start and end with the exercise marker
/// (PRODUCT.md §4), if it does not.
fn marker_problem(text: &str, marker: &str) -> Option<String> {
    let t = text.trim();
    let missing = match (t.starts_with(marker), t.ends_with(marker)) {
        (true, true) => return None,
        (false, true) => "start",
        (true, false) => "end",
        (false, false) => "start or end",
    };
    Some(format!(
        "the text does not {missing} with the exercise marker `{marker}`; every message starts and ends with it: write {{{{ marker }}}} at both ends"
    ))
}

const SMS_LINK: &str = "an SMS carries no link (links in SMS look like scams); the email and the webhook carry {{ ack_url }}";

/// Why a rendered text lacks what PRODUCT.md §4 says it carries, if it
/// does: every SMS and email subject the contact's ack code, every email
/// body the code and the confirm link. (The webhook payload carries both in
/// fields of their own, so its text need not.)
fn content_problem(kind: TextKind, text: &str, alert: &Alert<'_>) -> Option<String> {
    let what = match kind {
        TextKind::Sms | TextKind::SmsOneWay => "an SMS",
        TextKind::EmailSubject => "an email subject",
        TextKind::EmailBody => "an email body",
        TextKind::WebhookText => return None,
    };
    let no_code = !text.contains(alert.code);
    let no_link = kind == TextKind::EmailBody && !text.contains(alert.ack_url);
    let (missing, write) = match (no_code, no_link) {
        (false, false) => return None,
        (true, false) => ("the ack code", "{{ code }}"),
        (false, true) => ("the confirm link", "{{ ack_url }}"),
        (true, true) => (
            "the ack code and the confirm link",
            "{{ code }} and {{ ack_url }}",
        ),
    };
    Some(format!(
        "{what} carries {missing} so the contact can acknowledge: write {write} in it"
    ))
}

/// What makes a rendered text unsendable: the marker missing at either end,
/// the code (or the email's link) missing, or a link in an SMS.
fn unsendable(kind: TextKind, text: &str, alert: &Alert<'_>) -> Option<String> {
    marker_problem(text, alert.marker())
        .or_else(|| content_problem(kind, text, alert))
        .or_else(|| (kind.is_sms() && has_link(text)).then(|| SMS_LINK.to_owned()))
}

/// Every problem with one exercise template, found by compiling it and
/// rendering it once with `sample` values: its syntax, a variable no
/// template has, a failure while rendering, the marker missing at either
/// end, the ack code (or an email body's confirm link) missing, a link in
/// an SMS, a subject of several lines. Empty when it is fit
/// to send.
pub fn template_problems(
    kind: TextKind,
    source: &str,
    sample: &Alert<'_>,
    names: &Names<'_>,
) -> Vec<String> {
    let name = kind.template_name(sample.lang);
    let mut env = environment();
    if let Err(e) = env.add_template_owned(name.clone(), source.to_owned()) {
        return vec![describe(&e, source)];
    }
    let Ok(template) = env.get_template(&name) else {
        return vec!["the template could not be compiled".to_owned()];
    };
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !VARIABLES.contains(&v.as_str()) && !env.globals().any(|(g, _)| g == v))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return vec![format!(
            "unknown variable{} {}; a template can use {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
            VARIABLES.join(", ")
        )];
    }
    let text = match template.render(context(sample, names)) {
        Ok(text) => kind.tidy(&text),
        Err(e) => return vec![describe(&e, source)],
    };
    let mut problems: Vec<String> = marker_problem(&text, sample.marker()).into_iter().collect();
    problems.extend(content_problem(kind, &text, sample));
    // The source too: a link may sit behind a condition the sample did not take.
    if kind.is_sms() && (has_link(&text) || has_link(source)) {
        problems.push(SMS_LINK.to_owned());
    }
    if kind == TextKind::EmailSubject && text.contains('\n') {
        problems.push("an email subject is one line; this template renders several".to_owned());
    }
    problems
}

/// A text as a template made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Whether the exercise's own template made it (else a built-in one).
    pub overridden: bool,
    /// Why the exercise's template for this text was not used although it
    /// has one: it failed on values `check` never tried, or rendered a text
    /// without its marker or (SMS) with a link. The built-in text was used.
    pub fallback: Option<String>,
}

/// An exercise's own templates (a schedule's `templates:`): per kind, per
/// language, the template source. A kind and language without one uses
/// the built-in template.
#[derive(Default)]
pub struct Templates {
    overrides: BTreeMap<TextKind, BTreeMap<Lang, String>>,
    /// The overrides compiled on first use, so a schedule read back from
    /// the store compiles them once however many messages it renders.
    compiled: OnceLock<Arc<Environment<'static>>>,
}

impl Templates {
    /// Sets the exercise's template of `kind` in `lang`.
    pub fn insert(&mut self, kind: TextKind, lang: Lang, source: String) {
        self.overrides.entry(kind).or_default().insert(lang, source);
        self.compiled = OnceLock::new();
    }

    /// The exercise's template of `kind` in `lang`, if it has one.
    pub fn get(&self, kind: TextKind, lang: Lang) -> Option<&str> {
        self.overrides.get(&kind)?.get(&lang).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.overrides.values().all(BTreeMap::is_empty)
    }

    fn compiled(&self) -> &Environment<'static> {
        self.compiled.get_or_init(|| {
            let mut env = environment();
            for (kind, by_lang) in &self.overrides {
                for (lang, source) in by_lang {
                    // One that does not compile is left out; rendering it
                    // then says why and falls back to the built-in.
                    let _ = env.add_template_owned(kind.template_name(*lang), source.clone());
                }
            }
            Arc::new(env)
        })
    }

    /// The text of `kind` for `alert`: the exercise's template for the
    /// alert's language if it has one, else the built-in. Never fails: an
    /// exercise template that fails here (it passed `check`, so only on
    /// values `check` did not try) gives the built-in text, with the reason
    /// in [`Rendered::fallback`] for the caller to log.
    pub fn render(&self, kind: TextKind, alert: &Alert<'_>, names: &Names<'_>) -> Rendered {
        let Some(source) = self.get(kind, alert.lang) else {
            return Rendered {
                text: render_built_in(kind, alert, names),
                overridden: false,
                fallback: None,
            };
        };
        match self.render_override(kind, source, alert, names) {
            Ok(text) => Rendered {
                text,
                overridden: true,
                fallback: None,
            },
            Err(why) => Rendered {
                text: render_built_in(kind, alert, names),
                overridden: false,
                fallback: Some(format!("{}: {why}", kind.template_name(alert.lang))),
            },
        }
    }

    fn render_override(
        &self,
        kind: TextKind,
        source: &str,
        alert: &Alert<'_>,
        names: &Names<'_>,
    ) -> Result<String, String> {
        let name = kind.template_name(alert.lang);
        let template = match self.compiled().get_template(&name) {
            Ok(t) => t,
            Err(_) => {
                // Left out of the environment because it did not compile.
                let mut env = environment();
                return Err(env
                    .add_template_owned(name, source.to_owned())
                    .err()
                    .map_or_else(|| "does not compile".to_owned(), |e| describe(&e, source)));
            }
        };
        let text = template
            .render(context(alert, names))
            .map(|t| kind.tidy(&t))
            .map_err(|e| describe(&e, source))?;
        match unsendable(kind, &text, alert) {
            Some(why) => Err(why),
            None => Ok(text),
        }
    }
}

impl Clone for Templates {
    fn clone(&self) -> Self {
        Templates {
            overrides: self.overrides.clone(),
            compiled: self.compiled.clone(),
        }
    }
}

impl PartialEq for Templates {
    fn eq(&self, other: &Self) -> bool {
        self.overrides == other.overrides
    }
}

impl Eq for Templates {}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(&self.overrides).finish()
    }
}

/// Stored with the schedule as `{kind: {lang: source}}`.
impl Serialize for Templates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.overrides.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Templates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Templates {
            overrides: BTreeMap::deserialize(d)?,
            compiled: OnceLock::new(),
        })
    }
}

impl Alert<'_> {
    fn deadline_local(&self) -> String {
        self.deadline_at
            .with_timezone(&self.tz)
            .format("%H:%M")
            .to_string()
    }

    pub fn marker(&self) -> &str {
        self.marker.for_lang(self.lang)
    }

    /// The built-in text of `kind`.
    pub fn text(&self, kind: TextKind) -> String {
        render_built_in(kind, self, &Names::default())
    }

    /// SMS: the reply code and no link (links in SMS look like scams).
    pub fn sms(&self) -> String {
        self.text(TextKind::sms(self.sms_two_way))
    }

    pub fn email_subject(&self) -> String {
        self.text(TextKind::EmailSubject)
    }

    pub fn email_body(&self) -> String {
        self.text(TextKind::EmailBody)
    }

    pub fn webhook_text(&self) -> String {
        self.text(TextKind::WebhookText)
    }
}

/// The HTML alternative of an email body: the same text, paragraph for
/// paragraph, so the marker still opens and closes it and the code and the
/// confirm link are in it. Everything is escaped (titles and department names
/// come from operator files); only `http://` and `https://` links become
/// anchors, so nothing in the text can smuggle in markup or a `javascript:` URL.
pub fn email_html(text: &str) -> String {
    let mut html =
        String::from("<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"></head>\n<body>\n");
    let paragraphs = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
    for paragraph in paragraphs {
        html.push_str("<p>");
        for (i, line) in paragraph.lines().enumerate() {
            if i > 0 {
                html.push_str("<br>\n");
            }
            push_linked(&mut html, line.trim());
        }
        html.push_str("</p>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// Appends `line` escaped, with its web links as anchors.
fn push_linked(html: &mut String, line: &str) {
    let mut rest = line;
    while let Some(start) = ["https://", "http://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        let (before, from_link) = rest.split_at(start);
        push_escaped(html, before);
        let end = from_link
            .find(char::is_whitespace)
            .unwrap_or(from_link.len());
        // Sentence punctuation after a link is not part of it.
        let link = from_link[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')']);
        html.push_str("<a href=\"");
        push_escaped(html, link);
        html.push_str("\">");
        push_escaped(html, link);
        html.push_str("</a>");
        rest = &from_link[link.len()..];
    }
    push_escaped(html, rest);
}

fn push_escaped(html: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            c => html.push(c),
        }
    }
}

/// Whether a text starts and ends with the marker.
pub fn is_marked(text: &str, marker: &str) -> bool {
    let t = text.trim();
    t.starts_with(marker) && t.ends_with(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_is_wrapped_in_the_marker() {
        let marker = Marker {
            en: "[EXERCISE]".into(),
            zh: "[演習]".into(),
        };
        for lang in [Lang::En, Lang::Zh] {
            for two_way in [true, false] {
                let a = Alert {
                    marker: &marker,
                    lang,
                    exercise_title: "Drill",
                    round: "R01",
                    department: "DPO",
                    code: "7KQ4M",
                    ack_url: "http://x/a/t",
                    deadline_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                    tz: chrono_tz::Asia::Hong_Kong,
                    sms_two_way: two_way,
                };
                let m = a.marker().to_owned();
                for text in [a.sms(), a.email_subject(), a.email_body(), a.webhook_text()] {
                    assert!(is_marked(&text, &m), "{text}");
                    assert!(text.contains("7KQ4M"), "{text}");
                }
                assert!(!a.sms().contains("http"), "no links in SMS");
                assert!(a.email_body().contains("http://x/a/t"));
            }
        }
    }

    fn sample<'a>(marker: &'a Marker, lang: Lang, department: &'a str) -> Alert<'a> {
        Alert {
            marker,
            lang,
            exercise_title: "Typhoon drill",
            round: "R02",
            department,
            code: "K7QX3",
            ack_url: "https://drill.example/a/t0k",
            deadline_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            tz: chrono_tz::Asia::Hong_Kong,
            sms_two_way: true,
        }
    }

    fn markers() -> Marker {
        Marker {
            en: "[EXERCISE]".into(),
            zh: "[演習]".into(),
        }
    }

    #[test]
    fn every_built_in_template_compiles_and_passes_the_override_rules() {
        let marker = markers();
        for (kind, lang, source) in BUILT_IN_SOURCES {
            let alert = sample(&marker, lang, "DPO");
            assert!(
                BUILT_IN.get_template(&kind.template_name(lang)).is_ok(),
                "{kind} {lang:?}"
            );
            assert_eq!(
                template_problems(kind, source, &alert, &Names::default()),
                Vec::<String>::new(),
                "{kind} {lang:?}"
            );
        }
    }

    #[test]
    fn the_schedule_keys_are_the_kinds_keys() {
        assert_eq!(TextKind::ALL.map(TextKind::key).as_slice(), TEMPLATE_KEYS);
    }

    #[test]
    fn every_variable_can_be_used_and_loops_and_globals_are_not_unknown() {
        let marker = markers();
        let alert = sample(&marker, Lang::En, "DPO");
        let all: String = VARIABLES
            .iter()
            .map(|v| format!("[{{{{ {v} }}}}]"))
            .collect();
        let source = format!(
            "{{{{ marker }}}} {all} {{% for i in range(2) %}}{{{{ loop.index }}}}{{{{ i }}}}{{% endfor %}} {{{{ marker }}}}"
        );
        let names = Names {
            exercise: "ooh-2027-q1",
            department_name: "Digital Policy Office",
            contact_name: "CHAN Tai-man",
        };
        assert_eq!(
            template_problems(TextKind::EmailBody, &source, &alert, &names),
            Vec::<String>::new()
        );
        let text = Templates::default();
        assert!(text.is_empty());
        let mut t = Templates::default();
        t.insert(TextKind::EmailBody, Lang::En, source);
        let r = t.render(TextKind::EmailBody, &alert, &names);
        assert!(r.overridden && r.fallback.is_none(), "{r:?}");
        assert_eq!(
            r.text,
            "[EXERCISE] [[EXERCISE]][Typhoon drill][ooh-2027-q1][R02][DPO][Digital Policy Office]\
             [CHAN Tai-man][K7QX3][https://drill.example/a/t0k][16:00][2027-01-15][Asia/Hong_Kong][en] \
             1021 [EXERCISE]\n"
        );
    }

    #[test]
    fn values_are_inserted_as_they_are_never_escaped_or_read_as_template() {
        let marker = markers();
        let mut alert = sample(&marker, Lang::En, "DPO");
        alert.exercise_title = "<b>Q&A</b> {{ code }}";
        let mut t = Templates::default();
        t.insert(
            TextKind::WebhookText,
            Lang::En,
            "{{ marker }} {{ title }} {{ marker }}".into(),
        );
        assert_eq!(
            t.render(TextKind::WebhookText, &alert, &Names::default())
                .text,
            "[EXERCISE] <b>Q&A</b> {{ code }} [EXERCISE]"
        );
    }

    #[test]
    fn a_template_that_fails_at_send_time_gives_the_built_in_text_and_the_reason() {
        let marker = markers();
        let mut t = Templates::default();
        // Passes with the sample department, fails for another one.
        let fails_for_zhb = "{{ marker }} {% if department == 'ZHB' %}{{ code.missing }}{% endif %}ok {{ code }} {{ marker }}";
        let unmarked_for_zhb = "{% if department == 'ZHB' %}oops {{ code }}{% else %}{{ marker }} ok {{ code }} {{ marker }}{% endif %}";
        for source in [fails_for_zhb, unmarked_for_zhb] {
            let good = sample(&marker, Lang::En, "DPO");
            assert_eq!(
                template_problems(TextKind::Sms, source, &good, &Names::default()),
                Vec::<String>::new()
            );
            t.insert(TextKind::Sms, Lang::En, source.to_owned());
            let ok = t.render(TextKind::Sms, &good, &Names::default());
            assert_eq!(ok.text, "[EXERCISE] ok K7QX3 [EXERCISE]");
            let bad = sample(&marker, Lang::En, "ZHB");
            let r = t.render(TextKind::Sms, &bad, &Names::default());
            assert_eq!(r.text, bad.sms());
            assert!(!r.overridden);
            let why = r.fallback.expect("the reason is given");
            assert!(why.starts_with("templates.sms.en: "), "{why}");
        }
    }

    #[test]
    fn a_kind_or_language_without_an_override_uses_the_built_in() {
        let marker = markers();
        let mut t = Templates::default();
        t.insert(
            TextKind::Sms,
            Lang::Zh,
            "{{ marker }} 收到請回覆 {{ code }} {{ marker }}".into(),
        );
        let en = sample(&marker, Lang::En, "DPO");
        let zh = sample(&marker, Lang::Zh, "DPO");
        let names = Names::default();
        assert_eq!(t.render(TextKind::Sms, &en, &names).text, en.sms());
        assert_eq!(
            t.render(TextKind::EmailSubject, &zh, &names).text,
            zh.email_subject()
        );
        assert_eq!(
            t.render(TextKind::Sms, &zh, &names).text,
            "[演習] 收到請回覆 K7QX3 [演習]"
        );
    }

    #[test]
    fn overrides_are_stored_by_kind_and_language_and_read_back() {
        let mut t = Templates::default();
        t.insert(
            TextKind::SmsOneWay,
            Lang::Zh,
            "{{ marker }} 一 {{ marker }}".into(),
        );
        t.insert(
            TextKind::EmailSubject,
            Lang::En,
            "{{ marker }} s {{ marker }}".into(),
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"sms_one_way":{"zh":"{{ marker }} 一 {{ marker }}"},"email_subject":{"en":"{{ marker }} s {{ marker }}"}}"#
        );
        let back: Templates = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.get(TextKind::EmailSubject, Lang::En),
            t.get(TextKind::EmailSubject, Lang::En)
        );
    }

    #[test]
    fn template_problems_name_what_is_wrong() {
        let marker = markers();
        let alert = sample(&marker, Lang::En, "DPO");
        let names = Names::default();
        let problems = |kind, source: &str| template_problems(kind, source, &alert, &names);
        assert_eq!(
            problems(
                TextKind::Sms,
                "{{ marker }} {{ cod }} {{ titel }} {{ marker }}"
            ),
            [format!(
                "unknown variables `cod`, `titel`; a template can use {}",
                VARIABLES.join(", ")
            )]
        );
        assert!(
            problems(TextKind::Sms, "{{ marker }} {% if %} {{ marker }}")[0]
                .starts_with("syntax error: ")
        );
        assert!(
            problems(
                TextKind::EmailBody,
                "{{ marker }}\n\n{{ code }\n{{ marker }}"
            )[0]
            .ends_with("(line 3 of the template)")
        );
        assert!(
            problems(TextKind::Sms, "{{ code }} {{ marker }}")[0]
                .starts_with("the text does not start with the exercise marker `[EXERCISE]`")
        );
        assert!(
            problems(TextKind::Sms, "{{ marker }} {{ code }}")[0]
                .starts_with("the text does not end with the exercise marker `[EXERCISE]`")
        );
        assert!(
            problems(TextKind::WebhookText, "{{ code }}")[0]
                .starts_with("the text does not start or end with the exercise marker")
        );
        for link in [
            "{{ marker }} {{ code }} {{ ack_url }} {{ marker }}",
            "{{ marker }} {{ code }} see HTTP://x.example {{ marker }}",
            "{{ marker }} {{ code }}{% if department == 'X' %} https://x.example{% endif %} {{ marker }}",
        ] {
            assert_eq!(problems(TextKind::SmsOneWay, link), [SMS_LINK], "{link}");
        }
        assert_eq!(
            problems(
                TextKind::EmailBody,
                "{{ marker }} {{ code }} {{ ack_url }} {{ marker }}"
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(
                TextKind::Sms,
                "{{ marker }} Reply by {{ deadline }} {{ marker }}"
            ),
            ["an SMS carries the ack code so the contact can acknowledge: write {{ code }} in it"]
        );
        assert_eq!(
            problems(
                TextKind::EmailBody,
                "{{ marker }} code {{ code }} {{ marker }}"
            ),
            [
                "an email body carries the confirm link so the contact can acknowledge: write {{ ack_url }} in it"
            ]
        );
        assert_eq!(
            problems(TextKind::EmailBody, "{{ marker }} drill {{ marker }}"),
            [
                "an email body carries the ack code and the confirm link so the contact can acknowledge: write {{ code }} and {{ ack_url }} in it"
            ]
        );
        assert_eq!(
            problems(TextKind::WebhookText, "{{ marker }} drill {{ marker }}"),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(
                TextKind::EmailSubject,
                "{{ marker }}\n{{ code }} {{ marker }}"
            ),
            ["an email subject is one line; this template renders several"]
        );
    }

    /// The visible text of an HTML fragment: tags dropped, entities kept.
    fn visible(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn the_html_body_is_the_text_escaped_with_a_clickable_confirm_link() {
        let marker = Marker {
            en: "[EXERCISE]".into(),
            zh: "[演習]".into(),
        };
        for lang in [Lang::En, Lang::Zh] {
            let a = Alert {
                marker: &marker,
                lang,
                exercise_title: "<script>alert(\"x\")</script> & co",
                round: "R01",
                department: "DPO",
                code: "7KQ4M",
                ack_url: "https://drill.example/a/t0k?x=1&y=2",
                deadline_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                tz: chrono_tz::Asia::Hong_Kong,
                sms_two_way: true,
            };
            let html = email_html(&a.email_body());
            let body = html
                .split_once("<body>")
                .and_then(|(_, b)| b.split_once("</body>"))
                .map(|(b, _)| b)
                .unwrap();
            assert!(is_marked(&visible(body), a.marker()), "{html}");
            assert!(html.contains("7KQ4M"));
            assert!(
                html.contains(
                    "<a href=\"https://drill.example/a/t0k?x=1&amp;y=2\">https://drill.example/a/t0k?x=1&amp;y=2</a>"
                ),
                "{html}"
            );
            assert!(!html.contains("<script>"), "{html}");
            assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"));
        }
        let zh = Alert {
            marker: &marker,
            lang: Lang::Zh,
            exercise_title: "颱風演習",
            round: "R01",
            department: "DPO",
            code: "7KQ4M",
            ack_url: "https://drill.example/a/t",
            deadline_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            tz: chrono_tz::Asia::Hong_Kong,
            sms_two_way: true,
        };
        assert!(email_html(&zh.email_body()).contains("這是演習：颱風演習。"));
    }

    #[test]
    fn only_web_links_become_anchors_and_trailing_punctuation_stays_outside() {
        assert_eq!(
            email_html("see https://x.example/a. or javascript:alert(1)"),
            "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"></head>\n<body>\n\
             <p>see <a href=\"https://x.example/a\">https://x.example/a</a>. or javascript:alert(1)</p>\n\
             </body>\n</html>\n"
        );
        assert!(email_html("a\nb\n\nc").contains("<p>a<br>\nb</p>\n<p>c</p>"));
    }

    #[test]
    fn a_stored_payload_reads_back_as_written_and_a_bad_one_says_what_is_wrong() {
        let deadline = DateTime::parse_from_rfc3339("2027-02-27T15:00:00Z")
            .unwrap()
            .to_utc();
        let body = RawJson::of(&serde_json::json!({"code": "K7M2Q", "text": "a\n\"b\""})).unwrap();
        for payload in [
            Payload::Sms {
                to: "+85291234567".into(),
                text: "reply K7M2Q".into(),
                deadline_at: deadline,
            },
            Payload::Email {
                to: "a@example.org".into(),
                subject: "drill".into(),
                text: "line\nline".into(),
            },
            Payload::Webhook {
                url: "https://hooks.example.org/r".into(),
                secret_env: Some("HOOK_SECRET".into()),
                body: body.clone(),
            },
        ] {
            let stored = serde_json::to_string(&payload).unwrap();
            assert_eq!(
                serde_json::from_str::<Payload>(&stored).unwrap(),
                payload,
                "{stored}"
            );
        }
        // The webhook body goes to the wire as it was rendered, byte for byte.
        let stored = serde_json::to_string(&Payload::Webhook {
            url: "u".into(),
            secret_env: None,
            body: body.clone(),
        })
        .unwrap();
        let Payload::Webhook { body: read, .. } = serde_json::from_str(&stored).unwrap() else {
            panic!("not a webhook");
        };
        assert_eq!(read.get(), r#"{"code":"K7M2Q","text":"a\n\"b\""}"#);
        // A row written before bodies were kept raw reads the same.
        let old =
            r#"{"kind":"webhook","url":"u","secret_env":null,"body":{"schema":1,"drill":true}}"#;
        let Payload::Webhook { body, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not a webhook");
        };
        let body: serde_json::Value = serde_json::from_str(body.get()).unwrap();
        assert_eq!(body["schema"], 1);

        let error = |json: &str| {
            serde_json::from_str::<Payload>(json)
                .unwrap_err()
                .to_string()
        };
        assert!(error(r#"{"kind":"sms","to":"+85291234567"}"#).contains("missing field `text`"));
        assert!(error(r#"{"kind":"webhook","url":"u"}"#).contains("missing field `body`"));
        assert!(error(r#"{"kind":"fax","to":"1"}"#).contains("unknown variant `fax`"));
        assert!(error(r#"{"to":"1"}"#).contains("missing field `kind`"));
    }
}
