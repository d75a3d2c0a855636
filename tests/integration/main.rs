//! The one integration-test binary (fast to link on two cores).
//!
//! Table of contents:
//! - `check`: `rollcall check` on a broken contacts directory and on bad input
//! - `delivery`: SMS under provider faults on a manual clock: 429 retried, an
//!   invalid number a finding, an opted-out number left alone, failover to
//!   the http-json backup, expiry, pacing, the webhook limit per host
//! - `email`: the email channel against aiosmtpd: STARTTLS and implicit TLS
//!   with a CA made by the test, AUTH, a wrong password, an unknown CA, the
//!   multipart message (en, zh), the pool with `TCP_NODELAY`, reconnects, a
//!   relay down when the round fires and back 30 s later
//! - `end_to_end`: the daemon sends a round over real SMTP, a Twilio-format
//!   server and signed webhooks; half the departments ack by link; the
//!   report agrees. Runs on SQLite, and on PostgreSQL when
//!   `ROLLCALL_TEST_POSTGRES_URL` is set
//! - `plan`: cron against croniter, planner properties, the nine-day drill's
//!   golden plan, holidays and 1823 feeds, daylight saving, plan errors
//! - `receipts`: Twilio delivery receipts on the public router: signed by
//!   Twilio's Python library (either token of a rotation) or by the fake
//!   Twilio after a real send, forged, rate-limited, out of order; the
//!   end-to-end loop on SQLite and PostgreSQL; an http-json gateway's signed
//!   JSON receipts, forged and stale ones
//! - `scheduler`: the nine-day sample on a manual clock: rounds fire once at
//!   their instants, steps and closes on time, pause, resume, endex
//! - `simulate`: the README's main command on the smoke schedule
//! - `store`: the store conformance suite, one set of bodies run on SQLite
//!   and on PostgreSQL (when `ROLLCALL_TEST_POSTGRES_URL` is set), and the
//!   schema parity of the two dialects' migrations
//! - `templates`: message templates: the built-in texts, per-exercise
//!   overrides refused at `check`/`plan` when they break a rule, the engine
//!   sending them, `plan --preview`

mod check;
mod delivery;
mod email;
mod end_to_end;
mod plan;
mod receipts;
mod scheduler;
mod simulate;
mod store;
mod support;
mod templates;
