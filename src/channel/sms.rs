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
    /// `{base_url}/2010-04-01/Accounts/{sid}/Messages.json`, parsed once.
    pub(super) messages_url: reqwest::Url,
    pub(super) account_sid: String,
    pub(super) auth_token: Option<String>,
    pub(super) from: Option<String>,
    pub(super) status_callback: String,
}

/// The part of Twilio's answer to a created message that rollcall keeps.
#[derive(serde::Deserialize)]
struct Created {
    sid: Option<String>,
}

impl TwilioChannel {
    /// The Messages resource of `account_sid` under `base_url`.
    pub(super) fn messages_url(base_url: &str, account_sid: &str) -> Result<reqwest::Url, String> {
        let url = format!("{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json");
        reqwest::Url::parse(&url).map_err(|e| format!("twilio base_url {base_url:?}: {e}"))
    }

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
        let form = [
            ("To", to),
            ("From", from.as_str()),
            ("Body", text),
            ("ValidityPeriod", validity.as_str()),
            ("StatusCallback", self.status_callback.as_str()),
        ];
        let resp = http
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(token))
            .form(&form)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                // Only the sid is kept; an answer without one is still an
                // acceptance (its receipts cannot be matched).
                let sid = match r.bytes().await {
                    Ok(body) => serde_json::from_slice::<Created>(&body)
                        .ok()
                        .and_then(|c| c.sid),
                    Err(_) => None,
                };
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
