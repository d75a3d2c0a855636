//! A generic JSON-over-HTTP SMS gateway (`kind: http-json`): one POST per
//! message, its body a minijinja template whose values are JSON-encoded
//! with `tojson`, headers read from the environment.

use super::route::Reply;
use super::{http_status_is_permanent, redact_url};
use crate::store::SendResult;

pub(super) struct HttpJsonChannel {
    pub(super) name: String,
    pub(super) url: String,
    /// Header name and value (already read from its environment variable).
    pub(super) headers: Vec<(String, String)>,
    pub(super) env: minijinja::Environment<'static>,
}

/// The template's name inside its environment.
const BODY: &str = "body";

impl HttpJsonChannel {
    /// Compiles the body template once; a broken template is a setup error.
    pub(super) fn new(
        name: String,
        url: String,
        headers: Vec<(String, String)>,
        body: &str,
    ) -> Result<Self, String> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned(BODY, body.to_owned())
            .map_err(|e| format!("sms provider `{name}`: body template: {e}"))?;
        Ok(HttpJsonChannel {
            name,
            url,
            headers,
            env,
        })
    }

    /// The request body for one message.
    pub(super) fn render(&self, message_id: i64, to: &str, text: &str) -> Result<String, String> {
        let tmpl = self.env.get_template(BODY).map_err(|e| e.to_string())?;
        let body = tmpl
            .render(minijinja::context! { to => to, text => text, message_id => message_id.to_string() })
            .map_err(|e| e.to_string())?;
        // The gateway is promised JSON: refuse to send anything else.
        serde_json::from_str::<serde_json::Value>(&body)
            .map_err(|e| format!("the body template did not render JSON: {e}"))?;
        Ok(body)
    }

    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
        message_id: i64,
        to: &str,
        text: &str,
    ) -> Reply {
        let provider = self.name.clone();
        let body = match self.render(message_id, to, text) {
            Ok(b) => b,
            Err(error) => {
                return SendResult::Failed {
                    provider,
                    permanent: true,
                    error,
                }
                .into();
            }
        };
        let mut req = http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", message_id.to_string());
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => {
                let json: serde_json::Value = r.json().await.unwrap_or_default();
                let reference = ["id", "ref", "message_id"]
                    .iter()
                    .find_map(|k| match &json[*k] {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| message_id.to_string());
                SendResult::Accepted {
                    provider,
                    provider_ref: Some(reference),
                }
                .into()
            }
            Ok(r) => {
                let status = r.status();
                Reply {
                    result: SendResult::Failed {
                        provider,
                        permanent: http_status_is_permanent(status),
                        error: format!("HTTP {status}"),
                    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_encoded_so_quotes_and_newlines_cannot_break_the_body() {
        let ch = HttpJsonChannel::new(
            "backup".into(),
            "http://127.0.0.1:1/send".into(),
            vec![],
            r#"{"to": {{ to|tojson }}, "text": {{ text|tojson }}, "ref": {{ message_id|tojson }}}"#,
        )
        .unwrap();
        let body = ch
            .render(42, "+85291234567", "[演習] say \"ACK\"\nnow [演習]")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["text"], "[演習] say \"ACK\"\nnow [演習]");
        assert_eq!(v["ref"], "42");
        assert_eq!(v["to"], "+85291234567");
    }

    #[test]
    fn a_template_that_does_not_render_json_is_refused() {
        let ch = HttpJsonChannel::new("b".into(), "u".into(), vec![], "to={{ to }}").unwrap();
        assert!(ch.render(1, "+85291234567", "x").is_err());
        assert!(HttpJsonChannel::new("b".into(), "u".into(), vec![], "{{ to ").is_err());
    }
}
