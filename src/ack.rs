//! The public HTTP surface: ack links, provider hooks and health.
//! `GET /a/{token}` shows a confirm page and changes nothing (mail scanners
//! prefetch links); `POST /a/{token}` records the ack at the injected clock's
//! time; `POST /hooks/sms/{provider}/status` takes delivery receipts
//! ([`crate::hooks`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::clock::SharedClock;
use crate::domain::codes::LinkToken;
use crate::hooks::{self, SmsHooks};
use crate::store::{AckOutcome, Store};

/// Bodies over this are refused (PRODUCT.md §9).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AckState {
    pub store: Store,
    pub clock: SharedClock,
    /// What verifies the SMS providers' webhooks; the default knows no
    /// provider, so every `/hooks/sms/...` answers 404.
    pub sms_hooks: SmsHooks,
}

pub fn router(state: AckState) -> Router {
    Router::new()
        .route("/a/{token}", get(confirm_page).post(acknowledge))
        .route("/hooks/sms/{provider}/status", post(hooks::sms_status))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(state))
}

/// Serves the public router on a listener the caller bound, until `shutdown`.
/// Handlers see the peer's address (failed authentications are rate-limited
/// per source).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AckState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn healthz(State(state): State<Arc<AckState>>) -> Response {
    match state.store.last_heartbeat().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         button{{font-size:1.4rem;padding:.8rem 2rem;width:100%}}.drill{{font-weight:bold;color:#8a1c1c}}</style></head>\
         <body><p class=\"drill\">EXERCISE · 演習</p>{body}<p class=\"drill\">EXERCISE · 演習</p></body></html>",
        title = escape(title),
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not recognised",
        "<h1>Link not recognised · 連結無效</h1><p>This acknowledgement link is not valid. Reply to the drill message with its code, or call exercise control.</p>\
         <p>此確認連結無效。請以代碼回覆演習訊息，或致電演習控制中心。</p>",
    )
}

fn expired() -> Response {
    page(
        StatusCode::GONE,
        "Link expired",
        "<h1>Link expired · 連結已過期</h1><p>This round has closed. Call exercise control if you need to report.</p><p>此輪演習已結束。如需報告，請致電演習控制中心。</p>",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "<h1>Not recorded · 未能記錄</h1><p>Your confirmation could not be recorded just now. Please try again, or call exercise control.</p><p>暫時未能記錄你的確認，請再試一次或致電演習控制中心。</p>",
    )
}

#[tracing::instrument(name = "ack.page", skip_all)]
async fn confirm_page(State(state): State<Arc<AckState>>, Path(raw): Path<String>) -> Response {
    let Some(token) = LinkToken::parse(&raw) else {
        return not_found();
    };
    let info = match state.store.token_info(&token.digest()).await {
        Ok(Some(i)) => i,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "token lookup failed");
            return unavailable();
        }
    };
    if state.clock.now().timestamp_millis() > info.token_expires_at {
        return expired();
    }
    let already = if info.outcome_acked_at.is_some() {
        "<p><strong>You have already confirmed. · 你已確認。</strong></p>"
    } else {
        ""
    };
    page(
        StatusCode::OK,
        "Confirm receipt",
        &format!(
            "<h1>Confirm receipt · 確認收到</h1>\
             <p>{title}<br>Round {round} · {dept}</p>{already}\
             <form method=\"post\" action=\"/a/{token}\"><button type=\"submit\">Confirm · 確認</button></form>\
             <p>Opening this page records nothing; only the button does. · 開啟此頁不會記錄；請按「確認」。</p>",
            title = escape(&info.exercise_title),
            round = escape(&info.round_label),
            dept = escape(&info.department),
            token = token.as_str(),
        ),
    )
}

#[tracing::instrument(name = "ack.receive", skip_all, fields(channel.kind = "link"))]
async fn acknowledge(State(state): State<Arc<AckState>>, Path(raw): Path<String>) -> Response {
    let now = state.clock.now();
    let Some(token) = LinkToken::parse(&raw) else {
        // Junk is still evidence of something: store the attempt.
        let shown: String = raw.chars().take(8).collect();
        let _ = state
            .store
            .record_inbound(
                now,
                "link",
                None,
                &format!("POST /a/{shown}…"),
                None,
                "refused",
                Some("malformed token"),
            )
            .await;
        return not_found();
    };
    match state
        .store
        .record_link_ack(&token.digest(), now, None)
        .await
    {
        Ok(AckOutcome::Acked {
            department, round, ..
        }) => page(
            StatusCode::OK,
            "Acknowledged",
            &format!(
                "<h1>Acknowledged · 已確認</h1><p>Thank you. {dept}'s receipt of round {round} is recorded.</p><p>多謝。已記錄{dept}收到第{round}輪通知。</p>",
                dept = escape(&department),
                round = escape(&round)
            ),
        ),
        Ok(AckOutcome::AlreadyAcknowledged { department, round }) => page(
            StatusCode::OK,
            "Already acknowledged",
            &format!(
                "<h1>Already acknowledged · 已確認</h1><p>Your confirmation for {dept}, round {round}, was already recorded.</p><p>你的確認早已記錄。</p>",
                dept = escape(&department),
                round = escape(&round)
            ),
        ),
        Ok(AckOutcome::Expired) => expired(),
        Ok(AckOutcome::Unknown) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "ack could not be stored");
            unavailable()
        }
    }
}
