//! The text of every message. Every SMS, email subject, email body and
//! webhook `text` starts and ends with the exercise marker (PRODUCT.md §4).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::Lang;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        body: serde_json::Value,
    },
}

fn wrap(marker: &str, text: &str) -> String {
    format!("{marker} {text} {marker}")
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

    /// SMS: the reply code and no link (links in SMS look like scams).
    pub fn sms(&self) -> String {
        let text = match (self.lang, self.sms_two_way) {
            (Lang::En, true) => format!(
                "Drill round {} for {}. Reply {} to confirm receipt by {}.",
                self.round,
                self.department,
                self.code,
                self.deadline_local()
            ),
            (Lang::En, false) => format!(
                "Drill round {} for {}. Confirm receipt by replying to the drill email or calling exercise control, quoting code {}, by {}.",
                self.round,
                self.department,
                self.code,
                self.deadline_local()
            ),
            (Lang::Zh, true) => format!(
                "演習第{}輪（{}）。請於{}前回覆 {} 確認收到。",
                self.round,
                self.department,
                self.deadline_local(),
                self.code
            ),
            (Lang::Zh, false) => format!(
                "演習第{}輪（{}）。請於{}前回覆演習電郵或致電演習控制中心，並提供代碼 {}。",
                self.round,
                self.department,
                self.deadline_local(),
                self.code
            ),
        };
        wrap(self.marker(), &text)
    }

    pub fn email_subject(&self) -> String {
        let text = match self.lang {
            Lang::En => format!(
                "Drill round {} for {}: confirm with code {}",
                self.round, self.department, self.code
            ),
            Lang::Zh => format!(
                "演習第{}輪（{}）：請以代碼 {} 確認",
                self.round, self.department, self.code
            ),
        };
        wrap(self.marker(), &text)
    }

    pub fn email_body(&self) -> String {
        let m = self.marker();
        match self.lang {
            Lang::En => format!(
                "{m}\n\nThis is an exercise: {title}.\nRound {round} for {dept}.\n\nConfirm receipt by {deadline}:\n  open {url} and press Confirm,\n  or reply to this email with code {code},\n  or quote code {code} to exercise control.\n\nIn a real emergency, stop exercise play and say \"This is a real-world emergency\".\n\n{m}\n",
                title = self.exercise_title,
                round = self.round,
                dept = self.department,
                deadline = self.deadline_local(),
                url = self.ack_url,
                code = self.code,
            ),
            Lang::Zh => format!(
                "{m}\n\n這是演習：{title}。\n第{round}輪（{dept}）。\n\n請於{deadline}前確認收到：\n  開啟 {url} 並按「確認」，\n  或回覆此電郵並附上代碼 {code}，\n  或向演習控制中心提供代碼 {code}。\n\n如遇真實緊急事故，請停止演習並說明「這是真實緊急事故」。\n\n{m}\n",
                title = self.exercise_title,
                round = self.round,
                dept = self.department,
                deadline = self.deadline_local(),
                url = self.ack_url,
                code = self.code,
            ),
        }
    }

    pub fn webhook_text(&self) -> String {
        let text = match self.lang {
            Lang::En => format!(
                "Drill round {} for {}: acknowledge with code {} by {}.",
                self.round,
                self.department,
                self.code,
                self.deadline_local()
            ),
            Lang::Zh => format!(
                "演習第{}輪（{}）：請於{}前以代碼 {} 確認。",
                self.round,
                self.department,
                self.deadline_local(),
                self.code
            ),
        };
        wrap(self.marker(), &text)
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
}
