//! The one source of "now". Persisted timestamps and latencies come from a
//! [`Clock`]; `tokio::time` is only used for waiting. A [`ManualClock`] lets
//! tests and `simulate` run days of exercise in milliseconds.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// A receiver that changes whenever a virtual clock is moved; `None` for
    /// wall time, which moves by itself.
    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        None
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// Wall time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        #[expect(clippy::disallowed_methods, reason = "the one place wall time is read")]
        Utc::now()
    }
}

/// Virtual time that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    tx: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        let (tx, _) = watch::channel(start);
        Arc::new(ManualClock {
            now: Mutex::new(start),
            tx,
        })
    }

    /// Moves the clock to `t`; the clock never goes backwards.
    pub fn set(&self, t: DateTime<Utc>) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if t > *now {
            *now = t;
            self.tx.send_replace(t);
        }
    }

    pub fn advance(&self, by: TimeDelta) {
        let t = self.now() + by;
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        Some(self.tx.subscribe())
    }
}

/// Virtual time shared across processes, for black-box tests of the real
/// binary: every reading is the RFC 3339 instant in a file the test writes.
/// Built only with the `test-clock` feature, which release builds never have.
#[cfg(feature = "test-clock")]
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
}

#[cfg(feature = "test-clock")]
impl FileClock {
    /// The environment variable that names the clock file.
    pub const ENV: &str = "ROLLCALL_TEST_CLOCK_FILE";

    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        FileClock { path: path.into() }
    }

    /// The clock named by [`FileClock::ENV`], if set.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(Self::ENV)
            .filter(|p| !p.is_empty())
            .map(FileClock::new)
    }
}

#[cfg(feature = "test-clock")]
impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.to_utc())
            .unwrap_or_else(|e| {
                panic!(
                    "test clock {} must hold an RFC 3339 instant, not {text:?}: {e}",
                    self.path.display()
                )
            })
    }
}

/// The process's clock: wall time, or a test's file clock when the
/// `test-clock` feature is built in and [`FileClock::ENV`] is set.
pub fn from_env() -> SharedClock {
    #[cfg(feature = "test-clock")]
    if let Some(c) = FileClock::from_env() {
        return Arc::new(c);
    }
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forwards() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let c = ManualClock::new(t0);
        c.advance(TimeDelta::hours(26));
        assert_eq!(c.now(), t0 + TimeDelta::hours(26));
        c.set(t0);
        assert_eq!(c.now(), t0 + TimeDelta::hours(26));
    }
}
