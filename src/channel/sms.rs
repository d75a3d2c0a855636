//! SMS through the Twilio REST wire format.

use chrono::{DateTime, Utc};

use super::route::Reply;
use super::{http_status_is_permanent, redact_url};
use crate::store::SendResult;

/// Twilio's error code for a number that replied `STOP` to this sender.
const OPTED_OUT: i64 = 21610;

/// Whether a failure this module described (`HTTP 400 ... code 21610: ...`)
/// is Twilio's opted-out answer.
pub(super) fn says_opted_out(error: &str) -> bool {
    let code = format!(" code {OPTED_OUT}");
    error.ends_with(&code) || error.contains(&format!("{code}:"))
}

pub(super) struct TwilioChannel {
    pub(super) name: String,
    pub(super) base_url: String,
    pub(super) account_sid: String,
    pub(super) auth_token: Option<String>,
    pub(super) from: Option<String>,
    pub(super) status_callback: String,
}

impl TwilioChannel {
    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
        to: &str,
        text: &str,
        deadline_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Reply {
        let provider = self.name.clone();
        let (Some(token), Some(from)) = (&self.auth_token, &self.from) else {
            return SendResult::Failed {
                provider,
                permanent: true,
                error: "twilio auth token or sender `from` not set".into(),
            }
            .into();
        };
        // Twilio drops a queued SMS once its validity runs out: a stale alert
        // is never delivered after the deadline.
        let validity = (deadline_at - now)
            .num_seconds()
            .clamp(1, 36_000)
            .to_string();
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base_url, self.account_sid
        );
        let form = [
            ("To", to),
            ("From", from.as_str()),
            ("Body", text),
            ("ValidityPeriod", validity.as_str()),
            ("StatusCallback", self.status_callback.as_str()),
        ];
        let resp = http
            .post(&url)
            .basic_auth(&self.account_sid, Some(token))
            .form(&form)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let sid = body.get("sid").and_then(|s| s.as_str()).map(str::to_owned);
                SendResult::Accepted {
                    provider,
                    provider_ref: sid,
                }
                .into()
            }
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let code = body.get("code").and_then(serde_json::Value::as_i64);
                let permanent = match code {
                    Some(21211 | 21614 | OPTED_OUT | 21408 | 21612) => true,
                    // A refused credential is fixed by an operator, then retried.
                    _ => status.as_u16() != 401 && http_status_is_permanent(status),
                };
                let message = body.get("message").and_then(|m| m.as_str()).unwrap_or("");
                let failed = SendResult::Failed {
                    provider,
                    permanent,
                    error: format!(
                        "HTTP {status}{}{}",
                        code.map(|c| format!(" code {c}")).unwrap_or_default(),
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    ),
                };
                Reply {
                    result: failed,
                    rate_limited: status == reqwest::StatusCode::TOO_MANY_REQUESTS,
                }
            }
            Err(e) => SendResult::Failed {
                provider,
                permanent: false,
                error: redact_url(&e.to_string()),
            }
            .into(),
        }
    }
}
