//! Channels: how a rendered message reaches a provider. Email goes over SMTP
//! (lettre), SMS through the Twilio REST wire format, webhooks as signed JSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
pub mod email;
mod http_json;
pub mod route;
mod sms;

use email::{EmailChannel, email_channel};
use http_json::HttpJsonChannel;
pub use route::ProviderEvent;
use route::{Provider, ProviderChannel, SmsRoute};
use sms::TwilioChannel;

use crate::config::{Config, ProviderKind, Secrets};
use crate::domain::render::{Payload, RawJson};
use crate::store::SendResult;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// `Rollcall-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
pub fn signature_header(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this branch cannot be reached.
        <HmacSha256 as KeyInit>::new_from_slice(b"").expect("empty HMAC key")
    });
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    #[error("smtp: {0}")]
    Smtp(String),
    #[error("{0}")]
    Sms(String),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Every channel the daemon can send on, built once from the configuration.
pub struct Channels {
    email: Option<EmailChannel>,
    sms: SmsRoute,
    http: reqwest::Client,
    webhook_timeout: Duration,
    default_webhook_secret_env: String,
    secrets: Secrets,
    /// One gate per webhook `host:port`, letting `webhook.per_host` POSTs
    /// through at once.
    webhook_hosts: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    webhook_per_host: usize,
}

/// Installs the process's TLS crypto provider (ring) once; reqwest is built
/// without one so that only one provider is ever compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Channels {
    pub fn from_config(cfg: &Config, secrets: Secrets) -> Result<Self, ChannelSetupError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()?;
        let email = match &cfg.smtp {
            Some(smtp) => Some(email_channel(cfg, smtp, &secrets)?),
            None => None,
        };
        let mut providers = Vec::new();
        for p in &cfg.sms_providers {
            let channel = match &p.kind {
                ProviderKind::Twilio {
                    base_url,
                    account_sid,
                    auth_token_env,
                    ..
                } => ProviderChannel::Twilio(TwilioChannel {
                    name: p.name.clone(),
                    messages_url: TwilioChannel::messages_url(base_url, account_sid)
                        .map_err(ChannelSetupError::Sms)?,
                    account_sid: account_sid.clone(),
                    auth_token: secrets.get(auth_token_env).map(|s| s.expose().to_owned()),
                    from: cfg.sms_from.clone(),
                    status_callback: format!("{}/hooks/sms/{}/status", cfg.public_url, p.name),
                }),
                ProviderKind::HttpJson {
                    url,
                    headers_env,
                    body,
                    ..
                } => {
                    let headers = headers_env
                        .iter()
                        .filter_map(|(h, env)| {
                            secrets.get(env).map(|v| (h.clone(), v.expose().to_owned()))
                        })
                        .collect();
                    ProviderChannel::HttpJson(
                        HttpJsonChannel::new(p.name.clone(), url.clone(), headers, body)
                            .map_err(ChannelSetupError::Sms)?,
                    )
                }
            };
            providers.push(Provider::new(
                p.name.clone(),
                channel,
                p.rate.as_ref().map(|r| (r.per_second, r.burst)),
            ));
        }
        let sms = SmsRoute::new(providers);
        Ok(Channels {
            email,
            sms,
            http,
            webhook_timeout: cfg
                .webhook_timeout
                .to_std()
                .unwrap_or(Duration::from_secs(10)),
            default_webhook_secret_env: cfg.webhook_secret_env.clone(),
            secrets,
            webhook_hosts: std::sync::Mutex::default(),
            webhook_per_host: usize::try_from(cfg.webhook_per_host).unwrap_or(1).max(1),
        })
    }

    /// Hands one message to its provider.
    #[tracing::instrument(name = "channel.send", skip_all, fields(channel.kind))]
    pub async fn send(&self, message_id: i64, payload: &Payload, now: DateTime<Utc>) -> SendResult {
        match payload {
            Payload::Email { to, subject, text } => {
                tracing::Span::current().record("channel.kind", "email");
                match &self.email {
                    Some(ch) => ch.send(message_id, to, subject, text, now).await,
                    None => SendResult::NotConfigured,
                }
            }
            Payload::Sms {
                to,
                text,
                deadline_at,
            } => {
                tracing::Span::current().record("channel.kind", "sms");
                if self.sms.is_empty() {
                    return SendResult::NotConfigured;
                }
                self.sms
                    .send(&self.http, message_id, to, text, *deadline_at, now)
                    .await
            }
            Payload::Webhook {
                url,
                secret_env,
                body,
            } => {
                tracing::Span::current().record("channel.kind", "webhook");
                let env = secret_env
                    .as_deref()
                    .unwrap_or(&self.default_webhook_secret_env);
                let Some(secret) = self.secrets.get(env) else {
                    return SendResult::Failed {
                        provider: "webhook".into(),
                        permanent: true,
                        error: format!("signing secret {env} is not set"),
                    };
                };
                self.send_webhook(message_id, url, secret.expose().as_bytes(), body, now)
                    .await
            }
        }
    }

    /// The gate of `url`'s `host:port` (the whole string if it does not
    /// parse: such a POST fails on its own).
    fn webhook_gate(
        &self,
        parsed: Option<&reqwest::Url>,
        url: &str,
    ) -> Arc<tokio::sync::Semaphore> {
        let key = parsed.map_or_else(
            || url.to_owned(),
            |u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or(0)
                )
            },
        );
        let mut hosts = self
            .webhook_hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.webhook_per_host))),
        )
    }

    /// Provider failovers and recoveries since the last call, for control.
    pub fn drain_provider_events(&self) -> Vec<ProviderEvent> {
        self.sms.drain_events()
    }

    async fn send_webhook(
        &self,
        message_id: i64,
        url: &str,
        secret: &[u8],
        body: &RawJson,
        now: DateTime<Utc>,
    ) -> SendResult {
        // Waiting for the host's gate is pacing, not part of the POST's
        // timeout; a closed gate cannot happen (semaphores are never closed).
        // Parsed once, for the gate and the request.
        let parsed = reqwest::Url::parse(url).ok();
        let gate = self.webhook_gate(parsed.as_ref(), url);
        let _permit = gate.acquire().await;
        let raw = body.get().as_bytes().to_vec();
        let sig = signature_header(secret, now.timestamp(), &raw);
        let request = match parsed {
            Some(u) => self.http.post(u),
            None => self.http.post(url),
        };
        let result = request
            .timeout(self.webhook_timeout)
            .header("content-type", "application/json")
            .header("idempotency-key", message_id.to_string())
            .header("rollcall-signature", sig)
            .body(raw)
            .send()
            .await;
        let provider = "webhook".to_owned();
        match result {
            Ok(resp) if resp.status().is_success() => SendResult::Accepted {
                provider,
                provider_ref: None,
            },
            Ok(resp) => {
                let status = resp.status();
                let permanent = http_status_is_permanent(status);
                SendResult::Failed {
                    provider,
                    permanent,
                    error: format!("HTTP {status}"),
                }
            }
            Err(e) => SendResult::Failed {
                provider,
                permanent: false,
                error: redact_url(&e.to_string()),
            },
        }
    }
}

/// Whether a permanent SMS failure says the number opted out (Twilio 21610,
/// "Attempt to send to unsubscribed recipient"): no more SMS go to it until
/// it sends `START` (PRODUCT.md §5).
pub fn is_opt_out(error: &str) -> bool {
    sms::says_opted_out(error)
}

/// Whether an HTTP answer means "this message can never go": a client error
/// other than a timeout (408) or rate limiting (429), which pass with time.
pub(super) fn http_status_is_permanent(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 408 | 429)
}

pub(super) fn redact_url(s: &str) -> String {
    // reqwest errors name the URL; keep the message, drop any query string.
    match s.find('?') {
        Some(i) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // HMAC-SHA256("secret", "1700000000.{}") computed with Python's hmac module.
        let h = signature_header(b"secret", 1_700_000_000, b"{}");
        assert_eq!(
            h,
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
