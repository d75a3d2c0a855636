//! Provider webhooks on the public listener: delivery receipts from SMS
//! providers, `POST /hooks/sms/{provider}/status`.
//!
//! A Twilio-format provider's receipt counts only if its `X-Twilio-Signature`
//! verifies against the provider's current auth token or, during a rotation,
//! its alternate one, over the URL Twilio requested: the configured
//! `http.public_url` (rollcall may sit behind a proxy, so never the `Host`
//! header) plus the path and raw query. An `http-json` gateway's receipt is a
//! JSON object signed with `Rollcall-Signature` (PRODUCT.md §4) under the
//! secret its `inbound_secret_env` names, with a timestamp within five
//! minutes of now. Anything else is refused with a generic 403 and stored as
//! a refused inbound attempt; an address that keeps failing is answered 429
//! for a while (PRODUCT.md §9). A verified receipt moves its message (found
//! by the `provider_ref` stored when the provider accepted it) from
//! `accepted` to `delivered`, `undelivered` or `failed`, once and never
//! backwards, at the injected clock's time (PRODUCT.md §6).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::TimeDelta;

use crate::ack::AckState;
use crate::config::{Config, ProviderKind, Secret, Secrets};
use crate::store::{DeliveryReport, NewReceipt, RECEIPT_CHANNEL, ReceiptEffect};
use crate::twilio_signature;

/// Failed authentications from one address within [`FAILED_AUTH_WINDOW`]
/// after which its requests are answered 429 without being looked at.
pub const FAILED_AUTH_LIMIT: i64 = 20;
pub const FAILED_AUTH_WINDOW: TimeDelta = TimeDelta::minutes(10);

/// How much of a refused request's body is kept as its raw text.
const RAW_KEPT: usize = 1024;

/// The header gateways sign their receipts with (PRODUCT.md §4).
pub const SIGNATURE_HEADER: &str = "rollcall-signature";

/// How long a `Rollcall-Signature` timestamp stays acceptable, either way.
pub const SIGNATURE_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// How one provider's receipts are authenticated, with the secrets to try
/// (current first). Empty when the environment holds none, and then nothing
/// verifies.
#[derive(Debug, Clone)]
enum ReceiptAuth {
    Twilio(Vec<Secret>),
    RollcallSignature(Vec<Secret>),
}

/// What the public listener needs to check providers' webhooks: the public
/// base URL they were given and each provider's secrets.
#[derive(Debug, Clone, Default)]
pub struct SmsHooks {
    public_url: String,
    providers: HashMap<String, ReceiptAuth>,
}

impl SmsHooks {
    /// The SMS providers of `cfg` with the secrets their `*_env` keys name.
    /// An `http-json` gateway without `inbound_secret_env` takes no
    /// receipts, so its name is unknown here (404).
    pub fn from_config(cfg: &Config, secrets: &Secrets) -> SmsHooks {
        let mut providers = HashMap::new();
        for p in &cfg.sms_providers {
            let (envs, twilio): (Vec<&String>, bool) = match &p.kind {
                ProviderKind::Twilio {
                    auth_token_env,
                    alternate_auth_token_env,
                    ..
                } => (
                    std::iter::once(auth_token_env)
                        .chain(alternate_auth_token_env)
                        .collect(),
                    true,
                ),
                ProviderKind::HttpJson {
                    inbound_secret_env: Some(env),
                    ..
                } => (vec![env], false),
                ProviderKind::HttpJson { .. } => continue,
            };
            let keys: Vec<Secret> = envs.iter().filter_map(|env| secrets.get(env)).collect();
            if keys.is_empty() {
                tracing::warn!(
                    provider = %p.name,
                    env = %envs[0],
                    "secret not set: this provider's delivery receipts will be refused"
                );
            }
            let auth = if twilio {
                ReceiptAuth::Twilio(keys)
            } else {
                ReceiptAuth::RollcallSignature(keys)
            };
            providers.insert(p.name.clone(), auth);
        }
        SmsHooks {
            public_url: cfg.public_url.trim_end_matches('/').to_owned(),
            providers,
        }
    }
}

/// Checks `Rollcall-Signature: t=<unix seconds>,v1=<hex>` over `body` with
/// any of `keys`, and that `t` is within [`SIGNATURE_TOLERANCE`] of `now`.
/// The reason for a refusal is for the log and the stored attempt, never for
/// the caller.
pub fn verify_rollcall_signature(
    keys: &[&[u8]],
    header: &str,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), &'static str> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let (Some(t), false) = (t, v1.is_empty()) else {
        return Err("malformed signature");
    };
    if (now.timestamp() - t).abs() > SIGNATURE_TOLERANCE.num_seconds() {
        return Err("signature timestamp outside tolerance");
    }
    let matches = |key: &[u8], sig: &[u8]| {
        use hmac::{KeyInit as _, Mac as _};
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
            return false;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    };
    if keys
        .iter()
        .any(|key| v1.iter().any(|sig| matches(key, sig)))
    {
        Ok(())
    } else {
        Err("signature mismatch")
    }
}

/// What a receipt says, whichever provider wrote it.
struct Receipt {
    provider_ref: String,
    status: String,
    error_code: Option<String>,
}

impl Receipt {
    /// Twilio's form fields.
    fn from_twilio(params: &[(String, String)]) -> Option<Receipt> {
        let field = |names: &[&str]| {
            names.iter().find_map(|name| {
                params
                    .iter()
                    .find(|(k, v)| k == name && !v.is_empty())
                    .map(|(_, v)| v.clone())
            })
        };
        Some(Receipt {
            provider_ref: field(&["MessageSid", "SmsSid"])?,
            status: field(&["MessageStatus", "SmsStatus"])?,
            error_code: field(&["ErrorCode"]),
        })
    }

    /// A gateway's JSON: `{"id": ..., "status": ..., "error_code": ...}`,
    /// where `id` is the reference the gateway answered the send with.
    fn from_json(body: &[u8]) -> Option<Receipt> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let text = |key: &str| match &v[key] {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Some(Receipt {
            provider_ref: text("id")?,
            status: text("status")?,
            error_code: text("error_code"),
        })
    }

    fn report(&self) -> DeliveryReport {
        match self.status.to_ascii_lowercase().as_str() {
            // `read` comes from channels with read receipts: delivered and more.
            "delivered" | "read" => DeliveryReport::Delivered,
            "undelivered" => DeliveryReport::Undelivered,
            "failed" => DeliveryReport::Failed,
            _ => DeliveryReport::Progress,
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut resp = (status, text).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn truncated(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

/// `POST /hooks/sms/{provider}/status`.
#[tracing::instrument(name = "hooks.receipt", skip_all, fields(channel.kind = "sms", provider = %provider))]
pub async fn sms_status(
    State(state): State<Arc<AckState>>,
    Path(provider): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    let Some(auth) = state.sms_hooks.providers.get(&provider) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let source = peer.map(|Extension(ConnectInfo(addr))| addr.ip().to_string());
    if let Some(source) = &source {
        match state
            .store
            .refused_since(RECEIPT_CHANNEL, source, now - FAILED_AUTH_WINDOW)
            .await
        {
            Ok(n) if n >= FAILED_AUTH_LIMIT => {
                tracing::warn!(source = %source, "too many failed authentications; refusing for now");
                let mut resp = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(FAILED_AUTH_WINDOW.num_seconds()),
                );
                return resp;
            }
            Ok(_) => {}
            // The limiter failing must not lose genuine receipts; the write
            // below reports a store that is really down.
            Err(e) => tracing::error!(error = %e, "cannot count failed authentications"),
        }
    }

    let (checked, receipt) = match auth {
        ReceiptAuth::Twilio(tokens) => {
            let params: Vec<(String, String)> =
                form_urlencoded::parse(&body).into_owned().collect();
            let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
            let url = format!("{}{path}", state.sms_hooks.public_url);
            let keys: Vec<&str> = tokens.iter().map(Secret::expose).collect();
            let checked = match headers
                .get(twilio_signature::HEADER)
                .and_then(|v| v.to_str().ok())
            {
                None => Err("missing signature"),
                Some(_) if keys.is_empty() => Err("no auth token configured for this provider"),
                Some(sig) if !twilio_signature::verify(&keys, &url, &params, sig) => {
                    Err("signature mismatch")
                }
                Some(_) => Ok(()),
            };
            (checked, Receipt::from_twilio(&params))
        }
        ReceiptAuth::RollcallSignature(secrets) => {
            let keys: Vec<&[u8]> = secrets.iter().map(|s| s.expose().as_bytes()).collect();
            let checked = match headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) {
                None => Err("missing signature"),
                Some(_) if keys.is_empty() => Err("no inbound secret configured for this provider"),
                Some(sig) => verify_rollcall_signature(&keys, sig, &body, now),
            };
            (checked, Receipt::from_json(&body))
        }
    };
    if let Err(reason) = checked {
        tracing::warn!(
            source = source.as_deref().unwrap_or("-"),
            reason,
            "delivery receipt refused"
        );
        let raw = format!("POST {} {}", uri.path(), truncated(&body, RAW_KEPT));
        if let Err(e) = state
            .store
            .record_inbound(
                now,
                RECEIPT_CHANNEL,
                source.as_deref(),
                &raw,
                None,
                "refused",
                Some(reason),
            )
            .await
        {
            tracing::error!(error = %e, "refused receipt could not be stored");
        }
        return plain(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let Some(found) = receipt else {
        return plain(StatusCode::BAD_REQUEST, "bad request\n");
    };
    let (sid, status) = (found.provider_ref.as_str(), found.status.as_str());
    let receipt = NewReceipt {
        provider: &provider,
        provider_ref: sid,
        status,
        error_code: found.error_code.as_deref(),
        report: found.report(),
    };
    match state.store.record_receipt(now, &receipt).await {
        Ok(effect) => {
            match effect {
                ReceiptEffect::Applied { message_id } => {
                    tracing::info!(message.id = message_id, status, "delivery receipt applied")
                }
                ReceiptEffect::Unchanged { message_id } => {
                    tracing::debug!(
                        message.id = message_id,
                        status,
                        "delivery receipt kept; message unchanged"
                    )
                }
                ReceiptEffect::Unmatched => {
                    tracing::warn!(
                        provider_ref = sid,
                        status,
                        "delivery receipt for an unknown message"
                    )
                }
            }
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "delivery receipt could not be stored");
            plain(StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
        }
    }
}
