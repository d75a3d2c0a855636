//! Provider webhooks on the public listener: delivery receipts from
//! Twilio-format SMS providers, `POST /hooks/sms/{provider}/status`.
//!
//! A receipt counts only if its `X-Twilio-Signature` verifies against the
//! provider's current auth token or, during a rotation, its alternate one,
//! over the URL Twilio requested: the configured `http.public_url` (rollcall
//! may sit behind a proxy, so never the `Host` header) plus the path and raw
//! query. Anything else is refused with a generic 403 and stored as a refused
//! inbound attempt; an address that keeps failing is answered 429 for a while
//! (PRODUCT.md §9). A verified receipt moves its message (found by
//! `MessageSid`, the `provider_ref` stored when the provider accepted it) from
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

/// What the public listener needs to check providers' webhooks: the public
/// base URL they were given and each Twilio-format provider's auth tokens.
#[derive(Debug, Clone, Default)]
pub struct SmsHooks {
    public_url: String,
    /// Provider name → tokens to try, current first. Empty when the
    /// environment holds neither, and then nothing verifies.
    twilio: HashMap<String, Vec<Secret>>,
}

impl SmsHooks {
    /// The Twilio-format providers of `cfg` with the tokens their `*_env`
    /// keys name. Generic `http-json` gateways have no receipts route yet,
    /// so their names are unknown here (404).
    pub fn from_config(cfg: &Config, secrets: &Secrets) -> SmsHooks {
        let mut twilio = HashMap::new();
        for p in &cfg.sms_providers {
            if let ProviderKind::Twilio {
                auth_token_env,
                alternate_auth_token_env,
                ..
            } = &p.kind
            {
                let tokens: Vec<Secret> = std::iter::once(auth_token_env)
                    .chain(alternate_auth_token_env)
                    .filter_map(|env| secrets.get(env))
                    .collect();
                if tokens.is_empty() {
                    tracing::warn!(
                        provider = %p.name,
                        env = %auth_token_env,
                        "no auth token set: this provider's delivery receipts will be refused"
                    );
                }
                twilio.insert(p.name.clone(), tokens);
            }
        }
        SmsHooks {
            public_url: cfg.public_url.trim_end_matches('/').to_owned(),
            twilio,
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
    let Some(tokens) = state.sms_hooks.twilio.get(&provider) else {
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

    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let url = format!("{}{path}", state.sms_hooks.public_url);
    let signature = headers
        .get(twilio_signature::HEADER)
        .and_then(|v| v.to_str().ok());
    let keys: Vec<&str> = tokens.iter().map(Secret::expose).collect();
    let refusal = match signature {
        None => Some("missing signature"),
        Some(_) if keys.is_empty() => Some("no auth token configured for this provider"),
        Some(sig) if !twilio_signature::verify(&keys, &url, &params, sig) => {
            Some("signature mismatch")
        }
        Some(_) => None,
    };
    if let Some(reason) = refusal {
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

    let field = |names: &[&str]| {
        names.iter().find_map(|name| {
            params
                .iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.as_str())
        })
    };
    let (Some(sid), Some(status)) = (
        field(&["MessageSid", "SmsSid"]),
        field(&["MessageStatus", "SmsStatus"]),
    ) else {
        return plain(StatusCode::BAD_REQUEST, "bad request\n");
    };
    let report = match status.to_ascii_lowercase().as_str() {
        // `read` comes from channels with read receipts: delivered and more.
        "delivered" | "read" => DeliveryReport::Delivered,
        "undelivered" => DeliveryReport::Undelivered,
        "failed" => DeliveryReport::Failed,
        _ => DeliveryReport::Progress,
    };
    let receipt = NewReceipt {
        provider: &provider,
        provider_ref: sid,
        status,
        error_code: field(&["ErrorCode"]),
        report,
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
