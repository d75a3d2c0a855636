//! The real binary as an operator runs it: a configuration file, the CLI and
//! `rollcall run` as a child process, all reading one settable clock (the
//! `test-clock` feature's clock file).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

use super::root;

/// How long a black-box test waits for the daemon to react before failing.
/// The daemon acts on CLI writes within 1 s; this only bounds a hung run.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A directory holding a configuration file, a clock file and whatever the
/// test writes next to them (databases, contact copies, schedules).
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    clock: PathBuf,
    env: Vec<(String, String)>,
}

impl Workspace {
    /// A workspace whose clock reads `now` and whose configuration is `yaml`.
    pub fn new(yaml: &str, now: DateTime<Utc>) -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("rollcall.yaml");
        let clock = dir.path().join("clock");
        std::fs::write(&config, yaml).expect("write config");
        let ws = Workspace {
            dir,
            config,
            clock,
            env: Vec::new(),
        };
        ws.set_clock(now);
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites the configuration (for settings known only after start-up).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).expect("write config");
    }

    /// An environment variable for every later command and daemon.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Moves the clock every rollcall process of this workspace reads.
    pub fn set_clock(&self, t: DateTime<Utc>) {
        // Write then rename, so a reader never sees a half-written instant.
        let tmp = self.clock.with_extension("tmp");
        std::fs::write(&tmp, t.to_rfc3339_opts(SecondsFormat::Millis, true)).expect("clock");
        std::fs::rename(&tmp, &self.clock).expect("clock");
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollcall"));
        cmd.current_dir(root())
            .env("ROLLCALL_CONFIG", &self.config)
            .env("ROLLCALL_TEST_CLOCK_FILE", &self.clock)
            .env_remove("ROLLCALL_DATABASE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs one CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run rollcall")
    }

    /// Runs one CLI command and fails the test unless it exits 0.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rollcall {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `rollcall run` and returns once it has announced that it is
    /// listening (after its first heartbeat).
    pub fn start_daemon(&self) -> Daemon {
        let mut child = self
            .command()
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rollcall run");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.parse::<SocketAddr>().ok());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut daemon = Daemon {
            child,
            addr: None,
            log,
        };
        match rx.recv_timeout(PATIENCE) {
            Ok(Some(addr)) => daemon.addr = Some(addr),
            _ => panic!(
                "rollcall run did not announce its address; exit {:?}\n{}",
                daemon.child.try_wait().ok().flatten(),
                daemon.log()
            ),
        }
        daemon
    }
}

/// A running `rollcall run`; killed if the test ends without stopping it.
pub struct Daemon {
    child: Child,
    addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// The public listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("daemon address")
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for the daemon to exit by itself and fails the
    /// test unless it exited 0.
    pub fn stop(self) {
        let log = Arc::clone(&self.log);
        let status = self.terminate();
        assert!(
            status.success(),
            "the daemon exited with {status} on SIGTERM\n{}",
            log.lock().unwrap()
        );
    }

    /// Sends SIGTERM and waits for the daemon to exit by itself.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal the daemon");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it gives a value, failing with `what` after
/// [`PATIENCE`]. For waiting on another process; never for letting virtual
/// time pass (that is what the clock file is for).
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
