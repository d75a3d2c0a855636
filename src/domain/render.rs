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
}
