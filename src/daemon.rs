//! The composition root of `rollcall run`: builds the adapters, runs the
//! engine, the dispatcher and the public HTTP server until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::ack::{self, AckState};
use crate::channel::Channels;
use crate::clock::SharedClock;
use crate::config::{Config, Secrets};
use crate::dispatch::{Dispatcher, RetryPolicy};
use crate::engine::{Engine, EngineSettings};
use crate::hooks::SmsHooks;
use crate::store::Store;

/// The daemon's longest sleep: CLI writes take effect within this (PRODUCT.md §3).
pub const POLL: Duration = Duration::from_millis(500);
pub const HEARTBEAT_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

pub fn engine_settings(cfg: &Config) -> EngineSettings {
    EngineSettings {
        public_url: cfg.public_url.clone(),
        sms_mode: cfg.sms_mode,
        grace: cfg.grace,
        fanout_first_part: crate::engine::FANOUT_FIRST_PART,
    }
}

pub fn retry_policy(cfg: &Config) -> RetryPolicy {
    RetryPolicy {
        attempts: cfg.retry_attempts,
        backoff: cfg.retry_backoff,
        max_backoff: cfg.retry_max_backoff,
    }
}

/// Holds the single-daemon lock of an SQLite database for the daemon's life.
pub struct InstanceLock {
    _file: Option<std::fs::File>,
}

/// A second daemon on the same SQLite file refuses to start.
pub fn lock_instance(database_url: &str) -> anyhow::Result<InstanceLock> {
    let Some(rest) = database_url.strip_prefix("sqlite:") else {
        return Ok(InstanceLock { _file: None });
    };
    let path = rest
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(InstanceLock { _file: None });
    }
    let lock_path = PathBuf::from(format!("{path}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: Some(file) }),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!(
                "another rollcall daemon is already running on {path} (lock {})",
                lock_path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

/// Runs the daemon until `shutdown` resolves. The caller binds the public
/// listener, so tests use port 0 and never wait for start-up.
pub async fn run(
    cfg: &Config,
    store: Store,
    clock: SharedClock,
    secrets: Secrets,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    store.check_schema().await?;
    let sms_hooks = SmsHooks::from_config(cfg, &secrets);
    let channels = Arc::new(Channels::from_config(cfg, secrets)?);
    let mut engine = Engine::new(store.clone(), Arc::clone(&clock), engine_settings(cfg));
    if let Err(e) = engine.prepare().await {
        // The first round that needs the roster reports it again.
        tracing::warn!(error = %e, "could not read the current roster ahead of the first round");
    }
    let worker = format!("{}:{}", hostname(), std::process::id());
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::clone(&clock),
        channels,
        retry_policy(cfg),
        worker,
    );
    // The daemon's loop dispatches beside every tick: a round's messages are
    // written already claimed for this dispatcher, part by part, and each
    // part is sent while the next is written.
    engine.hand_first_sends_to(dispatcher.handoff());

    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = {
        let mut rx = stop_rx.clone();
        let state = AckState {
            store: store.clone(),
            clock: Arc::clone(&clock),
            sms_hooks,
        };
        tokio::spawn(ack::serve(listener, state, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    tracing::info!(
        database = store.backend(),
        live = cfg.has_live_provider(),
        "rollcall daemon started"
    );
    store
        .event(
            clock.now(),
            "daemon.started",
            None,
            serde_json::json!({"pid": std::process::id()}),
        )
        .await?;

    // Announced after the first heartbeat, so `round fire` accepts work as
    // soon as an operator (or a test) sees this line.
    store.heartbeat("daemon", clock.now()).await?;
    let mut last_heartbeat = Some(clock.now());
    eprintln!(
        "rollcall: listening on http://{addr} (database {})",
        store.backend()
    );

    let mut shutdown = std::pin::pin!(shutdown);
    let mut changes = clock.changes();
    loop {
        let now = clock.now();
        if last_heartbeat.is_none_or(|t| now - t >= HEARTBEAT_EVERY) {
            store.heartbeat("daemon", now).await?;
            last_heartbeat = Some(now);
        }
        if let Err(e) = step(&engine, &dispatcher).await {
            tracing::error!(error = %format!("{e:#}"), "daemon step failed; retrying");
        }
        // Sleep until the next due instant (a round, a step, a finalisation,
        // a retry), but never longer than POLL, so CLI writes and acks made by
        // other processes are picked up within a second.
        let wait = match next_due(&engine, &store).await {
            Ok(Some(t)) => (t - clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(POLL),
            Ok(None) => POLL,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the next due instant");
                POLL
            }
        };
        let clock_moved = async {
            match changes.as_mut() {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
            () = clock_moved => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    store
        .event(clock.now(), "daemon.stopped", None, serde_json::json!({}))
        .await?;
    tracing::info!("rollcall daemon stopped");
    Ok(())
}

/// The next instant the daemon has work: the engine's (rounds, steps,
/// finalisation) or the outbox's (a retry coming due).
pub async fn next_due(
    engine: &Engine,
    store: &Store,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let engine_next = engine.next_due().await?;
    let outbox_next = store.next_message_due().await?;
    Ok(engine_next.into_iter().chain(outbox_next).min())
}

/// One pass of the daemon's work; public so tests can drive it.
pub async fn step(engine: &Engine, dispatcher: &Dispatcher) -> anyhow::Result<()> {
    let (ticked, dispatched) = dispatcher.dispatch_beside(engine.tick()).await;
    ticked?;
    dispatched?;
    // What the sends just did to the providers, control hears at once.
    engine.queue_control_notices().await?;
    crate::engine::send_control_notices(engine.store(), dispatcher.channels(), engine.now())
        .await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
