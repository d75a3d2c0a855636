//! Shared test harness: the real binary, databases, servers.

pub mod daemon;
pub mod smtp_server;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (where `contacts/` and `schedules/` are).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real `rollcall` binary with `args` from the repository root,
/// with no configuration file from the environment.
pub fn rollcall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(args)
        .current_dir(root())
        .env_remove("ROLLCALL_CONFIG")
        .env_remove("ROLLCALL_DATABASE")
        .output()
        .expect("run rollcall")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether this run is CI, where no test may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The PostgreSQL URL for the shared suite: `None` (reported as skipped)
/// outside CI when unset; a failure under CI.
pub fn postgres_url() -> Option<String> {
    match std::env::var("ROLLCALL_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if under_ci() => panic!("ROLLCALL_TEST_POSTGRES_URL must be set under CI"),
        _ => {
            eprintln!("SKIPPED (postgres): ROLLCALL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh, empty PostgreSQL database for one test, dropped by the caller
/// never: names are unique per test and process, so runs do not collide.
pub async fn fresh_postgres(base: &str, name: &str) -> String {
    use sqlx::Connection as _;
    let db = format!("rollcall_test_{name}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to postgres");
    let drop = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut conn)
        .await
        .expect("drop test database");
    let create = format!("CREATE DATABASE {db}");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = reqwest::Url::parse(base).expect("postgres url");
    url.set_path(&format!("/{db}"));
    url.to_string()
}

/// Loads `schedule` over the sample `contacts/` into `store` and starts it
/// at `at`, as `exercise load` and `exercise start` do; returns the roster
/// and the plan.
pub async fn start_exercise(
    store: &rollcall::store::Store,
    schedule: &std::path::Path,
    at: chrono::DateTime<chrono::Utc>,
) -> (
    rollcall::domain::contacts::Roster,
    rollcall::domain::plan::Plan,
) {
    let (roster, schedule, plan) =
        rollcall::domain::plan::load_and_plan(&root().join("contacts"), schedule, at, true)
            .expect("the schedule loads and plans");
    rollcall::engine::load_exercise(store, &roster, &schedule, &plan, at)
        .await
        .expect("exercise load");
    assert!(
        store
            .set_exercise_state(&schedule.id, &["loaded"], "running", at, Some("test"))
            .await
            .expect("exercise start"),
        "the exercise starts"
    );
    (roster, plan)
}
