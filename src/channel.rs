//! Channels: how a rendered message reaches a provider. Email goes over SMTP
//! (lettre), SMS through the Twilio REST wire format, webhooks as signed JSON.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MessageBuilder};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{Config, ProviderKind, Secrets, Smtp};
use crate::domain::render::Payload;
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
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    domain: String,
}

struct TwilioChannel {
    name: String,
    base_url: String,
    account_sid: String,
    auth_token: Option<String>,
    from: Option<String>,
    status_callback: String,
}

/// Every channel the daemon can send on, built once from the configuration.
pub struct Channels {
    email: Option<EmailChannel>,
    sms: Option<TwilioChannel>,
    http: reqwest::Client,
    webhook_timeout: Duration,
    default_webhook_secret_env: String,
    secrets: Secrets,
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
        let sms = cfg.sms_providers.iter().find_map(|p| match &p.kind {
            ProviderKind::Twilio {
                base_url,
                account_sid,
                auth_token_env,
                ..
            } => Some(TwilioChannel {
                name: p.name.clone(),
                base_url: base_url.clone(),
                account_sid: account_sid.clone(),
                auth_token: secrets.get(auth_token_env).map(|s| s.expose().to_owned()),
                from: cfg.sms_from.clone(),
                status_callback: format!("{}/hooks/sms/{}/status", cfg.public_url, p.name),
            }),
            ProviderKind::HttpJson { .. } => None,
        });
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
        })
    }

    /// Hands one message to its provider.
    #[tracing::instrument(name = "channel.send", skip_all, fields(channel.kind))]
    pub async fn send(&self, message_id: i64, payload: &Payload, now: DateTime<Utc>) -> SendResult {
        match payload {
            Payload::Email { to, subject, text } => {
                tracing::Span::current().record("channel.kind", "email");
                match &self.email {
                    Some(ch) => ch.send(message_id, to, subject, text).await,
                    None => SendResult::NotConfigured,
                }
            }
            Payload::Sms {
                to,
                text,
                deadline_at,
            } => {
                tracing::Span::current().record("channel.kind", "sms");
                match &self.sms {
                    Some(ch) => ch.send(&self.http, to, text, *deadline_at, now).await,
                    None => SendResult::NotConfigured,
                }
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

    async fn send_webhook(
        &self,
        message_id: i64,
        url: &str,
        secret: &[u8],
        body: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> SendResult {
        let raw = body.to_string().into_bytes();
        let sig = signature_header(secret, now.timestamp(), &raw);
        let result = self
            .http
            .post(url)
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
                let permanent =
                    status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408;
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

fn redact_url(s: &str) -> String {
    // reqwest errors name the URL; keep the message, drop any query string.
    match s.find('?') {
        Some(i) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn email_channel(
    cfg: &Config,
    smtp: &Smtp,
    secrets: &Secrets,
) -> Result<EmailChannel, ChannelSetupError> {
    let err = |e: &dyn std::fmt::Display| ChannelSetupError::Smtp(e.to_string());
    let tls_params = || -> Result<TlsParameters, ChannelSetupError> {
        let mut b = TlsParameters::builder(smtp.host.clone());
        if let Some(ca) = &smtp.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ChannelSetupError::Smtp(format!("{}: {e}", ca.display())))?;
            b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| err(&e))?);
        }
        b.build_rustls().map_err(|e| err(&e))
    };
    let tls = match smtp.tls {
        crate::config::Tls::None => Tls::None,
        crate::config::Tls::Starttls => Tls::Required(tls_params()?),
        crate::config::Tls::Implicit => Tls::Wrapper(tls_params()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)))
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(smtp.pool));
    if let (Some(user), Some(env)) = (&smtp.username, &smtp.password_env)
        && let Some(pw) = secrets.get(env)
    {
        builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_owned()));
    }
    let from: Mailbox = cfg.email_from.parse().map_err(|e| err(&e))?;
    let reply_to = cfg
        .email_reply_to
        .as_ref()
        .and_then(|a| a.as_str().parse().ok());
    let domain = from.email.domain().to_owned();
    Ok(EmailChannel {
        transport: builder.build(),
        from,
        reply_to,
        domain,
    })
}

impl EmailChannel {
    async fn send(&self, message_id: i64, to: &str, subject: &str, text: &str) -> SendResult {
        let provider = "smtp".to_owned();
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                return SendResult::Failed {
                    provider,
                    permanent: true,
                    error: format!("bad address: {e}"),
                };
            }
        };
        let mut builder: MessageBuilder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<rollcall.{message_id}.{}@{}>",
                hex::encode(rand::random::<[u8; 6]>()),
                self.domain
            )))
            .header(ContentType::TEXT_PLAIN);
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        let email = match builder.body(text.to_owned()) {
            Ok(m) => m,
            Err(e) => {
                return SendResult::Failed {
                    provider,
                    permanent: true,
                    error: e.to_string(),
                };
            }
        };
        match self.transport.send(email).await {
            Ok(resp) => SendResult::Accepted {
                provider,
                provider_ref: resp.message().next().map(str::to_owned),
            },
            Err(e) => SendResult::Failed {
                provider,
                permanent: e.is_permanent(),
                error: e.to_string(),
            },
        }
    }
}

impl TwilioChannel {
    async fn send(
        &self,
        http: &reqwest::Client,
        to: &str,
        text: &str,
        deadline_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> SendResult {
        let provider = self.name.clone();
        let (Some(token), Some(from)) = (&self.auth_token, &self.from) else {
            return SendResult::Failed {
                provider,
                permanent: true,
                error: "twilio auth token or sender `from` not set".into(),
            };
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
            }
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let code = body.get("code").and_then(serde_json::Value::as_i64);
                let permanent = match code {
                    Some(21211 | 21614 | 21610 | 21408 | 21612) => true,
                    _ => {
                        status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 401
                    }
                };
                let message = body.get("message").and_then(|m| m.as_str()).unwrap_or("");
                SendResult::Failed {
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
