//! Message templates (PRODUCT.md §2.2 `templates:`, §3 `plan --preview`,
//! §4): an exercise's own templates are what `plan --preview` shows and what
//! the engine puts in the outbox; a template without the marker at either
//! end, an SMS template with a link, a syntax error, an unknown variable,
//! kind or language are refused by `check`, `plan` and `exercise load`
//! (exit 3) at their `path:line:col`; a Chinese SMS template changes the
//! plan's segment count; the built-in templates render the texts rollcall
//! always sent; the README's example passes `check`.
//!
//! The binary reads a test clock file set before the exercise window, so no
//! round is in the past.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, TimeDelta, Utc};
use rollcall::clock::{ManualClock, SharedClock};
use rollcall::config::Config;
use rollcall::domain::Lang;
use rollcall::domain::render::{Alert, Names, Payload, Templates, TextKind};
use rollcall::domain::schedule::Marker;
use rollcall::domain::sms::segments;
use rollcall::engine::Engine;
use rollcall::store::Store;
use serde_json::Value;

use crate::support;
use crate::support::daemon::Workspace;

const EXIT_INVALID: i32 = 3;
/// What the binary's clock reads: weeks before the window.
const NOW: &str = "2027-02-01T00:00:00Z";
/// The only round: Saturday 22:00 in Hong Kong; its deadline is 23:00.
const ROUND_AT: &str = "2027-02-27T14:00:00Z";

/// ENA's contacts read English, ZHB's Chinese; each primary has an SMS
/// number, an email address and a webhook.
const ENA: &str = "department:
  code: ENA
  name: { en: English Affairs Department, zh: 英文事務署 }
contacts:
  - id: ena-primary
    name: WONG Ka-ho
    role: primary
    sms: \"+852 9123 4567\"
    email: primary@ena.example
    webhook: { url: \"https://soc.ena.example/hooks/rollcall\" }
    lang: en
  - id: ena-duty
    name: ENA Duty Desk
    role: duty
    email: duty@ena.example
";
const ZHB: &str = "department:
  code: ZHB
  name: { en: Chinese Affairs Department, zh: 中文事務署 }
contacts:
  - id: zhb-primary
    name: 陳大文
    role: primary
    sms: \"+852 9234 5678\"
    email: primary@zhb.example
    webhook: { url: \"https://soc.zhb.example/hooks/rollcall\" }
    lang: zh
  - id: zhb-duty
    name: ZHB Duty Desk
    role: duty
    email: duty@zhb.example
    lang: zh
";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_utc()
}

fn markers() -> Marker {
    Marker {
        en: "[EXERCISE]".into(),
        zh: "[演習]".into(),
    }
}

/// A schedule with one round whose `templates:` block is `templates`
/// (lines indented by four spaces), or `{}` when empty.
fn schedule_text(templates: &str) -> String {
    let templates = if templates.is_empty() {
        " {}\n".to_owned()
    } else {
        format!("\n{templates}")
    };
    format!(
        "# Written by tests/integration/templates.rs.
exercise:
  id: tpl
  title: Template drill
  timezone: Asia/Hong_Kong
  window: {{ start: 2027-02-27T20:00, end: 2027-02-28T06:00 }}
  marker: {{ en: \"[EXERCISE]\", zh: \"[演習]\" }}
  targets: all
  rounds:
    - at: 2027-02-27T22:00
  ack: {{ target: 30m, deadline: 60m }}
  escalation:
    - {{ after: 0m, notify: [primary], via: [sms, email, webhook] }}
  templates:{templates}"
    )
}

/// A workspace with ENA and ZHB as its contacts, a SQLite database, and
/// the schedule with `templates` in `schedules/tpl.yaml`.
struct Drill {
    ws: Workspace,
    schedule: PathBuf,
    text: String,
}

fn drill(templates: &str) -> Drill {
    drill_with_config(templates, "")
}

fn drill_with_config(templates: &str, config: &str) -> Drill {
    let ws = Workspace::new("", utc(NOW));
    let contacts = ws.path().join("contacts");
    std::fs::create_dir_all(&contacts).expect("contacts directory");
    std::fs::write(contacts.join("ena.yaml"), ENA).expect("write contacts");
    std::fs::write(contacts.join("zhb.yaml"), ZHB).expect("write contacts");
    ws.write_config(&format!(
        "database: \"sqlite://{}\"\ncontacts: \"{}\"\n{config}",
        ws.path().join("rollcall.db").display(),
        contacts.display()
    ));
    std::fs::create_dir_all(ws.path().join("schedules")).expect("schedules directory");
    let schedule = ws.path().join("schedules").join("tpl.yaml");
    let text = schedule_text(templates);
    std::fs::write(&schedule, &text).expect("write schedule");
    Drill { ws, schedule, text }
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        support::stdout(out),
        support::stderr(out)
    )
}

impl Drill {
    fn contacts(&self) -> PathBuf {
        self.ws.path().join("contacts")
    }

    fn rewrite(&self, templates: &str) {
        std::fs::write(&self.schedule, schedule_text(templates)).expect("write schedule");
    }

    fn check(&self) -> Output {
        let out = self.ws.cli(&[
            "check",
            "--contacts",
            arg(&self.contacts()),
            "--schedules",
            arg(&self.ws.path().join("schedules")),
        ]);
        assert!(
            !support::stderr(&out).contains("panicked"),
            "{}",
            describe(&out)
        );
        out
    }

    fn plan(&self, extra: &[&str]) -> Output {
        let mut args = vec!["plan", arg(&self.schedule)];
        args.extend_from_slice(extra);
        let out = self.ws.cli(&args);
        assert!(
            !support::stderr(&out).contains("panicked"),
            "{}",
            describe(&out)
        );
        out
    }

    /// `plan --json` (with `extra`), which must succeed: the plan.
    fn plan_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.plan(&args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let doc: Value = serde_json::from_str(support::stdout(&out).trim())
            .unwrap_or_else(|e| panic!("plan --json printed no JSON ({e})\n{}", describe(&out)));
        doc["plan"].clone()
    }

    /// `path:line:col` of the first occurrence of `needle` in the schedule.
    fn at(&self, needle: &str) -> String {
        let (i, line) = self
            .text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` is not in:\n{}", self.text));
        let col = line[..line.find(needle).unwrap_or_default()]
            .chars()
            .count()
            + 1;
        format!("{}:{}:{col}", self.schedule.display(), i + 1)
    }

    /// Where the first content line after the line holding `needle` (a
    /// block scalar's `|`) starts: a block scalar's own position.
    fn block_at(&self, needle: &str) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` is not in:\n{}", self.text));
        let content = lines[i + 1];
        let col = content.len() - content.trim_start().len() + 1;
        format!("{}:{}:{col}", self.schedule.display(), i + 2)
    }
}

/// The `path:line:col: message` error lines `check` printed.
fn check_errors(out: &Output) -> Vec<String> {
    support::stdout(out)
        .lines()
        .filter(|l| !l.starts_with("ok: ") && !l.trim().is_empty() && !l.contains(": warning: "))
        .map(str::to_owned)
        .collect()
}

/// The error lines about the schedule a command printed on stderr.
fn schedule_errors(d: &Drill, out: &Output) -> Vec<String> {
    support::stderr(out)
        .lines()
        .filter(|l| l.starts_with(arg(&d.schedule)))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `check`, `plan` and `exercise load` all refuse the schedule
/// with exit 3 and exactly the errors `expected` (each a location and a
/// message prefix).
fn assert_refused(d: &Drill, expected: &[(String, &str)]) {
    let check = d.check();
    let plan = d.plan(&[]);
    let load = d.ws.cli(&["exercise", "load", arg(&d.schedule)]);
    for out in [&check, &plan, &load] {
        assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(out));
    }
    for (command, errors) in [
        ("check", check_errors(&check)),
        ("plan", schedule_errors(d, &plan)),
        ("exercise load", schedule_errors(d, &load)),
    ] {
        let matches = |(at, message): &(String, &str)| {
            let prefix = format!("{at}: {message}");
            errors.iter().any(|e| e.starts_with(&prefix))
        };
        let missing: Vec<String> = expected
            .iter()
            .filter(|e| !matches(e))
            .map(|(at, m)| format!("{at}: {m}…"))
            .collect();
        assert!(
            missing.is_empty() && errors.len() == expected.len(),
            "{command}: expected exactly these errors:\n  {}\nmissing:\n  {}\nreported:\n  {}",
            expected
                .iter()
                .map(|(at, m)| format!("{at}: {m}…"))
                .collect::<Vec<_>>()
                .join("\n  "),
            missing.join("\n  "),
            errors.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// The built-in templates
// ---------------------------------------------------------------------------

#[test]
fn the_built_in_templates_render_the_texts_rollcall_always_sent() {
    let marker = markers();
    let alert = |lang, sms_two_way| Alert {
        marker: &marker,
        lang,
        exercise_title: "Nine-day drill",
        round: "R03",
        department: "DPO",
        code: "7KQ4M",
        ack_url: "https://drill.cstcb.example/a/Tk3n",
        // 03:15 in Hong Kong.
        deadline_at: utc("2027-03-01T19:15:00Z"),
        tz: chrono_tz::Asia::Hong_Kong,
        sms_two_way,
    };
    let en = alert(Lang::En, true);
    let zh_one_way = alert(Lang::Zh, false);
    let pinned = [
        (
            en.sms(),
            "[EXERCISE] Drill round R03 for DPO. Reply 7KQ4M to confirm receipt by 03:15. [EXERCISE]",
        ),
        (
            alert(Lang::En, false).sms(),
            "[EXERCISE] Drill round R03 for DPO. Confirm receipt by replying to the drill email or \
             calling exercise control, quoting code 7KQ4M, by 03:15. [EXERCISE]",
        ),
        (
            zh_one_way.sms(),
            "[演習] 演習第R03輪（DPO）。請於03:15前回覆演習電郵或致電演習控制中心，並提供代碼 7KQ4M。 [演習]",
        ),
        (
            en.email_subject(),
            "[EXERCISE] Drill round R03 for DPO: confirm with code 7KQ4M [EXERCISE]",
        ),
        (
            en.email_body(),
            "[EXERCISE]\n\nThis is an exercise: Nine-day drill.\nRound R03 for DPO.\n\n\
             Confirm receipt by 03:15:\n  open https://drill.cstcb.example/a/Tk3n and press Confirm,\n  \
             or reply to this email with code 7KQ4M,\n  or quote code 7KQ4M to exercise control.\n\n\
             In a real emergency, stop exercise play and say \"This is a real-world emergency\".\n\n\
             [EXERCISE]\n",
        ),
        (
            zh_one_way.webhook_text(),
            "[演習] 演習第R03輪（DPO）：請於03:15前以代碼 7KQ4M 確認。 [演習]",
        ),
    ];
    for (got, want) in &pinned {
        assert_eq!(got, want);
    }
    // The send path without overrides gives the same texts.
    let none = Templates::default();
    for a in [&en, &zh_one_way] {
        let r = |kind| none.render(kind, a, &Names::default());
        assert_eq!(r(TextKind::sms(a.sms_two_way)).text, a.sms());
        assert_eq!(r(TextKind::EmailSubject).text, a.email_subject());
        assert_eq!(r(TextKind::EmailBody).text, a.email_body());
        assert_eq!(r(TextKind::WebhookText).text, a.webhook_text());
        assert!(!r(TextKind::EmailBody).overridden);
    }
}

// ---------------------------------------------------------------------------
// plan --preview
// ---------------------------------------------------------------------------

#[test]
fn plan_preview_prints_one_message_of_each_kind_per_language_with_sms_segments() {
    let d = drill("");
    let out = d.plan(&["--preview"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = support::stdout(&out);
    let en_sms =
        "[EXERCISE] Drill round R01 for ENA. Reply K7QX3 to confirm receipt by 23:00. [EXERCISE]";
    let zh_sms = "[演習] 演習第R01輪（ZHB）。請於23:00前回覆 K7QX3 確認收到。 [演習]";
    let (en_seg, zh_seg) = (segments(en_sms), segments(zh_sms));
    let expected = format!(
        "
Preview (en): round R01 to WONG Ka-ho of ENA (English Affairs Department), sample code K7QX3
  SMS (two-way sender), built-in template, 1 segment, GSM-7, {en_units} septets:
    {en_sms}
  email subject, built-in template:
    [EXERCISE] Drill round R01 for ENA: confirm with code K7QX3 [EXERCISE]
  email body, built-in template:
    [EXERCISE]

    This is an exercise: Template drill.
    Round R01 for ENA.

    Confirm receipt by 23:00:
      open http://127.0.0.1:8080/a/sample-link-token and press Confirm,
      or reply to this email with code K7QX3,
      or quote code K7QX3 to exercise control.

    In a real emergency, stop exercise play and say \"This is a real-world emergency\".

    [EXERCISE]
  webhook text, built-in template:
    [EXERCISE] Drill round R01 for ENA: acknowledge with code K7QX3 by 23:00. [EXERCISE]

Preview (zh): round R01 to 陳大文 of ZHB (中文事務署), sample code K7QX3
  SMS (two-way sender), built-in template, 1 segment, UCS-2, {zh_units} UTF-16 units:
    {zh_sms}
  email subject, built-in template:
    [演習] 演習第R01輪（ZHB）：請以代碼 K7QX3 確認 [演習]
  email body, built-in template:
",
        en_units = en_seg.units,
        zh_units = zh_seg.units,
    );
    assert!(
        text.contains(&expected),
        "expected:\n{expected}\nin:\n{text}"
    );
    assert!(
        text.ends_with(
            "  webhook text, built-in template:\n    [演習] 演習第R01輪（ZHB）：請於23:00前以代碼 K7QX3 確認。 [演習]\n"
        ),
        "{text}"
    );
    assert_eq!((en_seg.count, zh_seg.count), (1, 1));

    // Without --preview there is no preview.
    let plain = support::stdout(&d.plan(&[]));
    assert!(!plain.contains("Preview ("), "{plain}");

    // --json carries the same messages.
    let plan = d.plan_json(&["--preview"]);
    let previews = plan["preview"].as_array().expect("a preview list");
    assert_eq!(previews.len(), 2, "{plan:#}");
    let kinds: Vec<&str> = previews[0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        ["sms", "email_subject", "email_body", "webhook_text"]
    );
    assert_eq!(previews[1]["lang"], "zh");
    assert_eq!(previews[1]["messages"][0]["text"], zh_sms);
    assert_eq!(previews[1]["messages"][0]["segments"]["encoding"], "ucs2");
    assert_eq!(previews[1]["messages"][0]["template"], "built-in");
    assert!(d.plan_json(&[]).get("preview").is_none());
}

#[test]
fn plan_preview_shows_the_exercises_templates_with_the_configured_sender() {
    let d = drill_with_config(
        r#"    sms_one_way:
      en: "{{ marker }} {{ department_name }} drill {{ round }}: email or call control with code {{ code }} by {{ deadline }} {{ marker }}"
    email_subject: { zh: "{{ marker }} {{ department_name }}演習 {{ round }}，代碼 {{ code }} {{ marker }}" }
    email_body:
      en: |
        {{ marker }}
        Dear {{ contact_name }},
        please confirm {{ title }} round {{ round }} at {{ ack_url }} or with code {{ code }} by {{ deadline_date }} {{ deadline }} ({{ timezone }}).
        {{ marker }}
    webhook_text: { en: "{{ marker }} {{ exercise }}/{{ round }}/{{ department }} {{ code }} {{ marker }}" }
"#,
        "sms:\n  sender: { mode: one-way, from: \"#CSTCB\" }\n",
    );
    let out = d.plan(&["--preview"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = support::stdout(&out);
    let sms = "[EXERCISE] English Affairs Department drill R01: email or call control with code K7QX3 by 23:00 [EXERCISE]";
    let expected = format!(
        "
Preview (en): round R01 to WONG Ka-ho of ENA (English Affairs Department), sample code K7QX3
  SMS (one-way sender), exercise template, 1 segment, GSM-7, {} septets:
    {sms}
  email subject, built-in template:
    [EXERCISE] Drill round R01 for ENA: confirm with code K7QX3 [EXERCISE]
  email body, exercise template:
    [EXERCISE]
    Dear WONG Ka-ho,
    please confirm Template drill round R01 at http://127.0.0.1:8080/a/sample-link-token or with code K7QX3 by 2027-02-27 23:00 (Asia/Hong_Kong).
    [EXERCISE]
  webhook text, exercise template:
    [EXERCISE] tpl/R01/ENA K7QX3 [EXERCISE]

Preview (zh): round R01 to 陳大文 of ZHB (中文事務署), sample code K7QX3
  SMS (one-way sender), built-in template, 1 segment, UCS-2, ",
        segments(sms).units
    );
    assert!(
        text.contains(&expected),
        "expected:\n{expected}\nin:\n{text}"
    );
    assert!(
        text.contains(
            "  email subject, exercise template:\n    [演習] 中文事務署演習 R01，代碼 K7QX3 [演習]\n"
        ),
        "{text}"
    );
    let plan = d.plan_json(&["--preview"]);
    assert_eq!(plan["preview"][0]["messages"][0]["kind"], "sms_one_way");
    assert_eq!(plan["preview"][0]["messages"][0]["template"], "exercise");
    assert_eq!(plan["preview"][0]["messages"][0]["text"], sms);
}

// ---------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------

#[test]
fn a_chinese_sms_template_changes_the_segment_count_of_the_plan() {
    let d = drill("");
    let before = d.plan_json(&[]);
    assert_eq!(before["sms_segments"]["zh"]["count"], 1, "{before:#}");
    // One SMS each for ENA and ZHB, one segment each.
    assert_eq!(before["rounds"][0]["sms_segments"], 2, "{before:#}");
    assert_eq!(before["sms_segments"]["en"]["encoding"], "gsm7");

    // A longer Chinese text needs a second UCS-2 segment; an English one
    // with a character outside GSM-7 (the en dash) travels as UCS-2.
    let zh = "{{ marker }} {{ department_name }}演習第{{ round }}輪。請於{{ deadline }}前回覆代碼 {{ code }} 以確認收到本短訊；如未能回覆，請致電演習控制中心並提供代碼。 {{ marker }}";
    let en = "{{ marker }} Drill {{ round }} – reply {{ code }} by {{ deadline }} {{ marker }}";
    d.rewrite(&format!(
        "    sms:\n      zh: \"{zh}\"\n      en: \"{en}\"\n"
    ));
    let after = d.plan_json(&[]);
    assert_eq!(after["sms_segments"]["zh"]["encoding"], "ucs2", "{after:#}");
    assert_eq!(after["sms_segments"]["zh"]["count"], 2, "{after:#}");
    assert_eq!(after["sms_segments"]["en"]["encoding"], "ucs2", "{after:#}");
    assert_eq!(after["sms_segments"]["en"]["count"], 1, "{after:#}");
    assert_eq!(after["rounds"][0]["sms_segments"], 3, "{after:#}");
    let text = support::stdout(&d.plan(&[]));
    assert!(
        text.contains("  zh: 2 segments, UCS-2, ") && text.contains("  en: 1 segment, UCS-2, "),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// What is refused, and where
// ---------------------------------------------------------------------------

const MARKER_HINT: &str = "every message starts and ends with it: write {{ marker }} at both ends";

#[test]
fn a_template_without_the_marker_at_either_end_is_refused_by_check_and_plan() {
    let d = drill(
        r#"    sms:
      en: "Round {{ round }}: reply {{ code }} {{ marker }}"
    webhook_text: { zh: "{{ marker }} 演習 {{ code }}" }
    email_body:
      en: |
        [EXERCISE]
        Round {{ round }}: code {{ code }}, {{ ack_url }}.
        [EXERCISE]
      zh: |
        {{ marker }}
        演習 {{ code }} {{ ack_url }}
"#,
    );
    let start = format!(
        "template `templates.sms.en`: the text does not start with the exercise marker `[EXERCISE]`; {MARKER_HINT}"
    );
    let end = format!(
        "template `templates.webhook_text.zh`: the text does not end with the exercise marker `[演習]`; {MARKER_HINT}"
    );
    let body_end = format!(
        "template `templates.email_body.zh`: the text does not end with the exercise marker `[演習]`; {MARKER_HINT}"
    );
    // The English body writes the marker out rather than `{{ marker }}`: that is allowed.
    assert_refused(
        &d,
        &[
            (d.at("\"Round {{ round }}"), start.as_str()),
            (d.at("\"{{ marker }} 演習 {{ code }}\""), end.as_str()),
            (d.block_at("zh: |"), body_end.as_str()),
        ],
    );
    // The exact line `check` prints.
    let check = support::stdout(&d.check());
    assert!(
        check.contains(&format!("{}: {start}\n", d.at("\"Round {{ round }}"))),
        "{check}"
    );
}

#[test]
fn a_template_without_the_ack_code_or_the_emails_confirm_link_is_refused() {
    let d = drill(
        r#"    sms_one_way: { zh: "{{ marker }} 請致電演習控制中心確認 {{ marker }}" }
    email_subject: { en: "{{ marker }} Drill subject {{ round }} {{ marker }}" }
    email_body: { en: "{{ marker }} Reply with code {{ code }}. {{ marker }}" }
    webhook_text: { en: "{{ marker }} Drill round {{ round }} {{ marker }}" }
"#,
    );
    // The webhook payload carries the code and link in fields of their own.
    assert_refused(
        &d,
        &[
            (
                d.at("\"{{ marker }} 請致電"),
                "template `templates.sms_one_way.zh`: an SMS carries the ack code so the contact can acknowledge: write {{ code }} in it",
            ),
            (
                d.at("\"{{ marker }} Drill subject"),
                "template `templates.email_subject.en`: an email subject carries the ack code so the contact can acknowledge: write {{ code }} in it",
            ),
            (
                d.at("\"{{ marker }} Reply with code"),
                "template `templates.email_body.en`: an email body carries the confirm link so the contact can acknowledge: write {{ ack_url }} in it",
            ),
        ],
    );
}

#[test]
fn syntax_errors_unknown_variables_kinds_and_languages_are_refused_at_their_lines() {
    let d = drill(
        r#"    sms:
      en: "{{ marker }} Reply {{ cdoe }} by {{ deadline }} {{ marker }}"
      fr: "{{ marker }} Répondez {{ code }} {{ marker }}"
    email_subject: { zh: "{{ marker }} {% if code %} 演習 {{ marker }}" }
    email_body:
      en: |
        {{ marker }}
        Code {{ code | no_such_filter }}.
        {{ marker }}
    pager: { en: "{{ marker }} {{ code }} {{ marker }}" }
"#,
    );
    assert_refused(
        &d,
        &[
            (
                d.at("\"{{ marker }} Reply"),
                "template `templates.sms.en`: unknown variable `cdoe`; a template can use marker, title, exercise, round, department, department_name, contact_name, code, ack_url, deadline, deadline_date, timezone, lang",
            ),
            (
                d.at("fr:"),
                "unknown key `fr` in `templates.sms`; expected one of: en, zh",
            ),
            (
                d.at("\"{{ marker }} {% if"),
                "template `templates.email_subject.zh`: syntax error: ",
            ),
            (
                d.block_at("en: |"),
                "template `templates.email_body.en`: unknown filter: ",
            ),
            (
                d.at("pager:"),
                "unknown key `pager` in `templates`; expected one of: sms, sms_one_way, email_subject, email_body, webhook_text",
            ),
        ],
    );
    let check = support::stdout(&d.check());
    assert!(check.contains("(line 2 of the template)"), "{check}");
}

#[test]
fn an_sms_template_with_a_link_is_refused() {
    let link = "template `templates.sms.en`: an SMS carries no link (links in SMS look like scams); \
                the email and the webhook carry {{ ack_url }}";
    let one_way = link.replace("sms.en", "sms_one_way.zh");
    let d = drill(
        r#"    sms: { en: "{{ marker }} Confirm {{ code }} at {{ ack_url }} {{ marker }}" }
    sms_one_way: { zh: "{{ marker }} 請到 https://drill.example 以代碼 {{ code }} 確認 {{ marker }}" }
    email_body: { en: "{{ marker }} Open {{ ack_url }} or reply {{ code }} {{ marker }}" }
    webhook_text: { en: "{{ marker }} {{ ack_url }} {{ marker }}" }
"#,
    );
    // Email and webhook texts carry the link; only the SMS ones are refused.
    assert_refused(
        &d,
        &[
            (d.at("\"{{ marker }} Confirm"), link),
            (d.at("\"{{ marker }} 請到"), one_way.as_str()),
        ],
    );
}

// ---------------------------------------------------------------------------
// The send path: exercise load → store → engine → outbox
// ---------------------------------------------------------------------------

/// The code a marked text carries between `before` and `after`.
fn code_between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let code = text
        .strip_prefix(before)
        .and_then(|t| t.strip_suffix(after))
        .unwrap_or_else(|| panic!("`{text}` is not `{before}<code>{after}`"));
    assert_eq!(code.len(), 5, "{text}");
    code
}

#[tokio::test]
async fn the_engine_sends_the_exercises_templates_and_the_built_in_text_when_one_fails() {
    // The Chinese SMS template passes `check` (rendered with ENA, the
    // roster's first department) but fails for ZHB at send time.
    let d = drill(
        r#"    sms:
      en: "{{ marker }} {{ department_name }}: drill {{ round }}. {{ contact_name }}, reply {{ code }} by {{ deadline }}. {{ marker }}"
      zh: "{{ marker }} {% if department == 'ZHB' %}{{ code.missing }}{% endif %}演習 {{ code }} {{ marker }}"
    email_subject: { en: "{{ marker }} {{ exercise }} {{ round }}: code {{ code }} {{ marker }}" }
    webhook_text: { en: "{{ marker }} {{ title }} / {{ department }} / {{ code }} / {{ deadline_date }} {{ deadline }} {{ marker }}" }
"#,
    );
    let check = d.check();
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    // `plan --preview` warns about the failing template.
    let preview = support::stdout(&d.plan(&["--preview"]));
    assert!(
        preview.contains(
            "  warning: the exercise's template fails here (templates.sms.zh: undefined value"
        ),
        "{preview}"
    );

    let (now, at) = (utc(NOW), utc(ROUND_AT));
    let (roster, schedule, plan) =
        rollcall::domain::plan::load_and_plan(&d.contacts(), &d.schedule, now, true)
            .unwrap_or_else(|e| panic!("the schedule loads: {e:?}"));
    let store = Store::connect(&format!(
        "sqlite://{}",
        d.ws.path().join("engine.db").display()
    ))
    .await
    .expect("store");
    rollcall::engine::load_exercise(&store, &roster, &schedule, &plan, now)
        .await
        .expect("exercise load");
    assert!(
        store
            .set_exercise_state("tpl", &["loaded"], "running", now, Some("test"))
            .await
            .expect("exercise start")
    );
    let clock: SharedClock = ManualClock::new(at);
    let engine = Engine::new(
        store.clone(),
        clock,
        rollcall::daemon::engine_settings(&Config::default()),
    );
    let report = engine.tick().await.expect("tick");
    assert_eq!(report.rounds_fired, ["tpl/R01"]);

    let claimed = store
        .claim_messages("templates-test", at, at + TimeDelta::minutes(1), 100)
        .await
        .expect("claim");
    let mut sent: BTreeMap<(String, String), Payload> = BTreeMap::new();
    for m in claimed {
        let payload: Payload =
            serde_json::from_str(m.payload.as_deref().expect("a payload")).expect("payload");
        sent.insert((m.contact_id, m.channel), payload);
    }
    let get = |contact: &str, channel: &str| {
        sent.get(&(contact.to_owned(), channel.to_owned()))
            .unwrap_or_else(|| panic!("no {channel} to {contact} in {sent:#?}"))
    };
    let (sms, subject, body, hook) = match (
        get("ena-primary", "sms"),
        get("ena-primary", "email"),
        get("ena-primary", "webhook"),
    ) {
        (
            Payload::Sms { text: sms, .. },
            Payload::Email { subject, text, .. },
            Payload::Webhook { body, .. },
        ) => (
            sms,
            subject,
            text,
            serde_json::from_str::<serde_json::Value>(body.get()).unwrap(),
        ),
        other => panic!("unexpected payloads {other:?}"),
    };
    let code = code_between(subject, "[EXERCISE] tpl R01: code ", " [EXERCISE]");
    assert_eq!(
        sms,
        &format!(
            "[EXERCISE] English Affairs Department: drill R01. WONG Ka-ho, reply {code} by 23:00. [EXERCISE]"
        )
    );
    // No English body template: the built-in one.
    assert!(
        body.starts_with(
            "[EXERCISE]\n\nThis is an exercise: Template drill.\nRound R01 for ENA.\n"
        ),
        "{body}"
    );
    assert_eq!(
        hook["text"],
        format!("[EXERCISE] Template drill / ENA / {code} / 2027-02-27 23:00 [EXERCISE]")
    );

    // ZHB's SMS template failed on ZHB: the built-in Chinese text went out.
    let Payload::Sms { text: zh_sms, .. } = get("zhb-primary", "sms") else {
        panic!("not an SMS");
    };
    let zh_code = code_between(
        zh_sms,
        "[演習] 演習第R01輪（ZHB）。請於23:00前回覆 ",
        " 確認收到。 [演習]",
    );
    let Payload::Email { subject, .. } = get("zhb-primary", "email") else {
        panic!("not an email");
    };
    assert_eq!(
        subject,
        &format!("[演習] 演習第R01輪（ZHB）：請以代碼 {zh_code} 確認 [演習]")
    );
    store.close().await;
}

#[test]
fn templates_are_stored_with_the_exercise_and_frozen_once_it_starts() {
    let templates = "    sms: { en: \"{{ marker }} Reply {{ code }} {{ marker }}\" }\n";
    let d = drill(templates);
    let file = arg(&d.schedule);
    let first = d.ws.cli_ok(&["exercise", "load", file]);
    assert!(first.contains("exercise tpl loaded"), "{first}");
    let again = d.ws.cli_ok(&["exercise", "load", file]);
    assert!(again.contains("exercise tpl unchanged"), "{again}");
    d.ws.cli_ok(&[
        "exercise",
        "start",
        "tpl",
        "--yes",
        "--authorised-by",
        "Test",
    ]);

    for changed in [
        "    sms: { en: \"{{ marker }} Reply {{ code }} now {{ marker }}\" }\n",
        "",
    ] {
        d.rewrite(changed);
        let out = d.ws.cli(&["exercise", "load", file]);
        assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&out));
        assert!(
            support::stderr(&out).contains("~ templates: "),
            "{}",
            describe(&out)
        );
    }
}

/// The README's example `templates:` block passes `check`, and `plan
/// --preview` shows its texts.
#[test]
fn the_readme_example_passes_check_and_is_what_the_preview_shows() {
    let readme = std::fs::read_to_string(support::root().join("README.md")).expect("README");
    let block = readme
        .split("## Message templates")
        .nth(1)
        .and_then(|s| s.split("```yaml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a templates example");
    let body = block
        .strip_prefix("  templates:\n")
        .expect("the example is a `templates:` block");
    let d = drill(body);
    let check = d.check();
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    let out = d.plan(&["--preview"]);
    let text = support::stdout(&out);
    let sms =
        "[EXERCISE] English Affairs Department: drill round R01. Reply K7QX3 by 23:00. [EXERCISE]";
    let line = format!(
        "  SMS (two-way sender), exercise template, 1 segment, GSM-7, {} septets:\n    {sms}\n",
        segments(sms).units
    );
    assert!(text.contains(&line), "{}", describe(&out));
    assert!(text.contains("    Dear WONG Ka-ho,\n"), "{text}");
    assert!(
        text.contains("    [演習] 中文事務署演習第R01輪：請以代碼 K7QX3 確認 [演習]\n"),
        "{text}"
    );
}
