//! rollcall runs out-of-hours emergency communication exercises.
//!
//! Modules, lowest layer first:
//! - [`yaml`]: located YAML tree and the problem list loaders report into
//! - [`domain`]: pure types: contacts, schedules, codes, statuses, message texts
//! - [`twilio_signature`]: `X-Twilio-Signature`, as Twilio signs its webhooks
//! - [`clock`]: the injected clock (system or manual)
//! - [`config`]: `rollcall.yaml`, environment twins, secrets
//! - [`store`]: SQLite and PostgreSQL behind one type
//! - [`channel`]: SMTP, Twilio-format SMS and signed webhooks
//! - [`dispatch`]: the outbox worker
//! - [`engine`]: fan-out, escalation, finalisation
//! - [`ack`]: the public HTTP surface (ack links, health)
//! - [`hooks`]: provider webhooks on it (SMS delivery receipts)
//! - [`plan_view`]: what `rollcall plan` shows before sign-off
//! - [`report`]: the report model and its renderings
//! - [`sinks`]: loopback SMTP / SMS / webhook peers for simulate and tests
//! - [`simulate`]: a whole exercise in virtual time
//! - [`daemon`]: the composition root of `rollcall run`
//! - [`cli`]: the command line

pub mod ack;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod hooks;
pub mod plan_view;
pub mod report;
pub mod simulate;
pub mod sinks;
pub mod store;
pub mod twilio_signature;
pub mod yaml;
