//! The command line. Every command writes to the store; only `run` (the
//! daemon) and `simulate` send anything.

use std::future::Future;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clock::SharedClock;
use crate::config::{self, Config, Secrets};
use crate::domain::contacts::{self, Roster};
use crate::domain::plan;
use crate::domain::schedule::{self, Schedule};
use crate::engine::Engine;
use crate::store::{LoadResult, Store};
use crate::yaml::{Pos, Problem, Problems, Severity};

/// Writes a line to stdout; a closed pipe becomes an error that `main`
/// treats as success, instead of the panic `println!` would give.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// Like [`out!`] without the newline.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// Exit codes (README "Exit codes").
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
/// Usage errors: clap's own code, and arguments that name nothing.
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INVALID: i32 = 3;

/// An error that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: EXIT_INVALID,
        message: message.into(),
    }
    .into()
}

#[derive(Debug, Parser)]
#[command(
    name = "rollcall",
    version,
    about = "Out-of-hours emergency communication exercises"
)]
pub struct Cli {
    /// Configuration file (else ROLLCALL_CONFIG, else ./rollcall.yaml if present)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL, overriding the configuration
    #[arg(long, global = true, value_name = "URL", env = "ROLLCALL_DATABASE")]
    pub db: Option<String>,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeatable)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate contacts, schedules and configuration; print every problem
    Check(CheckArgs),
    /// Contacts: store a new roster version
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Exercises: load, start, pause, resume, end, list, show
    #[command(subcommand)]
    Exercise(ExerciseCommand),
    /// Rounds: fire an ad-hoc round now
    #[command(subcommand)]
    Round(RoundCommand),
    /// The daemon: scheduler, dispatcher, escalation, acks
    Run,
    /// Per-round, per-department report
    Report(ReportArgs),
    /// Run a schedule in virtual time against in-process servers
    Simulate(SimulateArgs),
    /// Every round of a schedule: local time, bucket, holiday, targets, segments, send time
    Plan(PlanArgs),
    /// Database maintenance
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Contacts directory (default: the configuration's `contacts`)
    #[arg(long, value_name = "DIR")]
    pub contacts: Option<PathBuf>,
    /// Schedules directory (default: the configuration's `schedules`)
    #[arg(long, value_name = "DIR")]
    pub schedules: Option<PathBuf>,
    /// Treat every secret as needed now
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Store the contacts directory as a new roster version
    Load { dir: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum ExerciseCommand {
    /// Store an exercise, its plan and its roster (idempotent)
    Load { schedule: PathBuf },
    /// Start an exercise (asks to confirm on a terminal unless --yes)
    Start {
        id: String,
        #[arg(long, value_name = "NAME")]
        authorised_by: Option<String>,
        #[arg(long)]
        yes: bool,
    },
    /// Hold future rounds
    Pause { id: String },
    /// Resume a paused exercise
    Resume { id: String },
    /// End now: cancel pending rounds and messages
    Endex { id: String },
    /// List exercises
    List,
    /// Show one exercise and its rounds
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RoundCommand {
    /// Fire an ad-hoc round now
    Fire {
        exercise: String,
        /// Only these departments (comma-separated codes)
        #[arg(long, value_delimiter = ',')]
        departments: Option<Vec<String>>,
        /// Queue the round even if the daemon is not running
        #[arg(long)]
        queue: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    pub exercise: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    pub schedule: PathBuf,
    /// After the plan, render one message of each kind per language, with SMS segments
    #[arg(long)]
    pub preview: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    pub schedule: PathBuf,
    /// Seeds responders, codes and delays (never the plan)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Contacts directory (default: the configuration's `contacts`)
    #[arg(long, value_name = "DIR")]
    pub contacts: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations
    Migrate,
}

pub fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLCALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("rollcall={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command line; the caller maps errors to exit codes.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut problems = Problems::default();
    let config_file = config::locate(cli.config.as_deref());
    let mut cfg = config::load(config_file.as_deref(), &mut problems);
    if let Some(db) = &cli.db {
        cfg.database = db.clone();
    }
    let clock: SharedClock = crate::clock::from_env();
    match &cli.command {
        Command::Check(args) => return check(&cli, &cfg, problems, args, clock.now()),
        Command::Simulate(args) => {
            fail_on_config(problems)?;
            return simulate(&cli, &cfg, args).await;
        }
        Command::Plan(args) => {
            fail_on_config(problems)?;
            return plan_command(&cli, &cfg, args, clock.now());
        }
        _ => {}
    }
    fail_on_config(problems)?;
    let store = Store::connect(&cfg.database)
        .await
        .with_context(|| format!("opening {}", redact_db(&cfg.database)))?;
    let code = match &cli.command {
        Command::Db(DbCommand::Migrate) => {
            store.migrate().await?;
            say(
                &cli,
                "database migrated",
                serde_json::json!({"migrated": true}),
            )?;
            EXIT_OK
        }
        Command::Contacts(ContactsCommand::Load { dir }) => {
            let dir = dir.clone().unwrap_or_else(|| cfg.contacts.clone());
            let roster = load_roster(&dir)?;
            let version = store.save_roster(&roster, clock.now()).await?;
            say(
                &cli,
                &format!(
                    "roster version {version}: {} departments, {} contacts",
                    roster.departments.len(),
                    roster.contacts().count()
                ),
                serde_json::json!({"roster_version": version, "departments": roster.departments.len()}),
            )?;
            EXIT_OK
        }
        Command::Exercise(cmd) => exercise(&cli, &cfg, &store, &clock, cmd).await?,
        Command::Round(RoundCommand::Fire {
            exercise,
            departments,
            queue,
        }) => {
            fire(
                &cli,
                &cfg,
                &store,
                &clock,
                exercise,
                departments.as_deref(),
                *queue,
            )
            .await?
        }
        Command::Run => {
            store.check_schema().await?;
            let _lock = crate::daemon::lock_instance(&cfg.database)?;
            let shutdown = shutdown_signal()?;
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("binding {}", cfg.listen))?;
            crate::daemon::run(
                &cfg,
                store.clone(),
                clock,
                Secrets::from_env(),
                listener,
                shutdown,
            )
            .await?;
            EXIT_OK
        }
        Command::Report(args) => {
            let report = crate::report::build(&store, &args.exercise, clock.now()).await?;
            let text = match (args.format, cli.json) {
                (ReportFormat::Json, _) | (_, true) => {
                    serde_json::to_string_pretty(&report)? + "\n"
                }
                (ReportFormat::Text, false) => crate::report::render_text(&report),
            };
            match &args.output {
                Some(f) => {
                    std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?
                }
                None => out_raw!("{text}"),
            }
            EXIT_OK
        }
        Command::Check(_) | Command::Simulate(_) | Command::Plan(_) => EXIT_OK,
    };
    store.close().await;
    Ok(code)
}

fn redact_db(url: &str) -> String {
    match url.split_once('@') {
        Some((head, tail)) if head.contains(':') && head.matches(':').count() > 1 => {
            let scheme = head.split("://").next().unwrap_or("postgres");
            format!("{scheme}://…@{tail}")
        }
        _ => url.to_owned(),
    }
}

fn say(cli: &Cli, human: &str, json: serde_json::Value) -> anyhow::Result<()> {
    if cli.json {
        let mut v = json;
        if let Some(o) = v.as_object_mut() {
            o.insert("schema".into(), 1.into());
        }
        out!("{v}");
    } else {
        out!("{human}");
    }
    Ok(())
}

fn fail_on_config(problems: Problems) -> anyhow::Result<()> {
    if problems.has_errors() {
        let lines: Vec<String> = problems
            .into_sorted()
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(invalid(format!(
            "invalid configuration:\n{}",
            lines.join("\n")
        )));
    }
    Ok(())
}

fn print_problems_and_fail(problems: Vec<Problem>) -> anyhow::Error {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    invalid(lines.join("\n"))
}

fn load_roster(dir: &Path) -> anyhow::Result<Roster> {
    let mut problems = Problems::default();
    let (roster, _) = contacts::load_dir(dir, &mut problems);
    if problems.has_errors() {
        return Err(print_problems_and_fail(errors_only(problems)));
    }
    Ok(roster)
}

fn errors_only(p: Problems) -> Vec<Problem> {
    p.into_sorted()
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

fn check(
    cli: &Cli,
    cfg: &Config,
    mut problems: Problems,
    args: &CheckArgs,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i32> {
    let contacts_dir = args
        .contacts
        .clone()
        .unwrap_or_else(|| cfg.contacts.clone());
    let schedules_dir = args
        .schedules
        .clone()
        .unwrap_or_else(|| cfg.schedules.clone());
    let (roster, index) = contacts::load_dir(&contacts_dir, &mut problems);
    let mut schedules: Vec<Schedule> = Vec::new();
    match crate::yaml::yaml_files(&schedules_dir) {
        Ok(files) => {
            for f in files {
                if let Some(s) = schedule::load_file(&f, Some((&roster, &index)), &mut problems) {
                    // The plan's rules (office hours, window, gaps, draws) are
                    // part of a valid schedule; rounds in the past only warn here.
                    plan::plan_schedule(&s, &f, Some(&roster), now, false, &mut problems);
                    schedules.push(s);
                }
            }
        }
        Err(e) => problems.error(
            &schedules_dir,
            Pos::START,
            format!("cannot read schedules directory: {e}"),
        ),
    }
    // Secrets: an unset one is an error only where a live destination needs it.
    let cfg_label = cfg
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from("<defaults>"));
    for (what, var, needed) in cfg.secret_envs() {
        if std::env::var(&var).map(|v| v.is_empty()).unwrap_or(true) {
            let msg = format!("{what} secret {var} is not set");
            if needed || args.live {
                problems.error(&cfg_label, Pos::START, msg);
            } else {
                problems.warning(&cfg_label, Pos::START, msg);
            }
        }
    }
    // The daemon builds its channels from the same settings at start; what
    // would stop it there (an unreadable `ca_file`, a password over plain
    // text to a remote relay, a gateway body that is not a template) is an
    // error now, not at 3 a.m.
    crate::channel::install_crypto_provider();
    if let Err(e) = crate::channel::Channels::from_config(cfg, Secrets::from_env()) {
        problems.error(&cfg_label, Pos::START, e.to_string());
    }
    for (contact, var) in roster.secret_envs() {
        if std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
            let (file, pos) = index
                .contact_at
                .get(contact.id.as_str())
                .cloned()
                .unwrap_or((contacts_dir.clone(), Pos::START));
            let msg = format!(
                "webhook secret {var} of contact `{}` is not set",
                contact.id
            );
            if args.live {
                problems.error(&file, pos, msg);
            } else {
                problems.warning(&file, pos, msg);
            }
        }
    }
    let errors = problems.error_count();
    let warnings = problems.warning_count();
    let list = problems.into_sorted();
    let summary = format!(
        "{} departments, {} contacts, {} schedules; configuration {}",
        roster.departments.len(),
        roster.contacts().count(),
        schedules.len(),
        cfg.source
            .as_ref()
            .map_or("built-in defaults".into(), |p| p.display().to_string()),
    );
    if cli.json {
        out!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "summary": summary,
                "problems": list,
            })
        );
    } else {
        for p in &list {
            out!("{p}");
        }
        if errors == 0 {
            out!(
                "ok: {summary}{}",
                if warnings > 0 {
                    format!(" ({warnings} warnings)")
                } else {
                    String::new()
                }
            );
        } else {
            eprintln!("{errors} errors, {warnings} warnings");
        }
    }
    Ok(if errors == 0 { EXIT_OK } else { EXIT_INVALID })
}

async fn exercise(
    cli: &Cli,
    cfg: &Config,
    store: &Store,
    clock: &SharedClock,
    cmd: &ExerciseCommand,
) -> anyhow::Result<i32> {
    let now = clock.now();
    match cmd {
        ExerciseCommand::Load { schedule: file } => {
            let (roster, schedule, plan) = plan::load_and_plan(&cfg.contacts, file, now, false)
                .map_err(print_problems_and_fail)?;
            let existing = store.exercise(&schedule.id).await?;
            match &existing {
                Some(e) if e.state != "loaded" => {
                    // Started: the stored plan is frozen; say what would change.
                    let changes = plan::diff(
                        serde_json::from_str(&e.schedule_json).ok().as_ref(),
                        e.plan_json
                            .as_deref()
                            .and_then(|j| serde_json::from_str(j).ok())
                            .as_ref(),
                        &schedule,
                        &plan,
                    );
                    if !changes.is_empty() {
                        return Err(invalid(format!(
                            "{}: exercise `{}` has started ({}); its plan cannot change. Differences from the stored plan:\n{}\nLoad the changed file under a new exercise id.",
                            file.display(),
                            schedule.id,
                            e.state,
                            changes.join("\n")
                        )));
                    }
                }
                _ if plan.rounds.iter().any(|r| r.at < now) => {
                    // Not started yet: rounds in the past are errors, at their
                    // lines. The files are already read: only the rule is re-run.
                    let mut problems = Problems::default();
                    plan::plan_schedule(&schedule, file, Some(&roster), now, true, &mut problems);
                    return Err(print_problems_and_fail(errors_only(problems)));
                }
                _ => {}
            }
            let (result, version) =
                crate::engine::load_exercise(store, &roster, &schedule, &plan, now).await?;
            let what = match result {
                LoadResult::Created => "loaded",
                LoadResult::Unchanged => "unchanged",
                LoadResult::Replaced => "replaced",
            };
            say(
                cli,
                &format!(
                    "exercise {} {what}: {} rounds, roster version {version}, plan seed {}",
                    schedule.id,
                    plan.rounds.len(),
                    plan.seed
                ),
                serde_json::json!({"exercise": schedule.id, "result": what, "rounds": plan.rounds.len(), "roster_version": version, "seed": plan.seed}),
            )?;
        }
        ExerciseCommand::Start {
            id,
            authorised_by,
            yes,
        } => {
            // A planned round already in the past would fire late or be
            // skipped the moment the exercise starts: refuse instead.
            let past: Vec<String> = store
                .rounds(id)
                .await?
                .iter()
                .filter(|r| r.state == "planned" && r.planned_at < crate::store::ms(now))
                .map(|r| {
                    format!(
                        "{} ({})",
                        r.label,
                        crate::store::from_ms(r.planned_at).format("%Y-%m-%d %H:%M UTC")
                    )
                })
                .collect();
            let loaded = store
                .exercise(id)
                .await?
                .is_some_and(|e| e.state == "loaded");
            if loaded && !past.is_empty() {
                return Err(invalid(format!(
                    "exercise `{id}` cannot start: planned rounds are already in the past: {}. Load a revised schedule first.",
                    past.join(", ")
                )));
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "refusing to start `{id}` without confirmation: pass --yes (and --authorised-by NAME)"
                    );
                }
                eprint!(
                    "Start exercise `{id}`? Messages will be sent to real contacts. Type the exercise id to confirm: "
                );
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if line.trim() != id {
                    bail!("not confirmed; exercise `{id}` not started");
                }
            }
            transition(
                cli,
                store,
                id,
                &["loaded"],
                "running",
                now,
                authorised_by.as_deref(),
            )
            .await?;
        }
        ExerciseCommand::Pause { id } => {
            transition(cli, store, id, &["running"], "paused", now, None).await?
        }
        ExerciseCommand::Resume { id } => {
            transition(cli, store, id, &["paused"], "running", now, None).await?
        }
        ExerciseCommand::Endex { id } => {
            transition(
                cli,
                store,
                id,
                &["loaded", "running", "paused"],
                "ended",
                now,
                None,
            )
            .await?;
            let cancelled = store.cancel_exercise_work(id, now).await?;
            eprintln!("{cancelled} open notifications cancelled");
        }
        ExerciseCommand::List => {
            let list = store.exercises().await?;
            if cli.json {
                let items: Vec<_> = list
                    .iter()
                    .map(|e| serde_json::json!({"id": e.id, "title": e.title, "state": e.state}))
                    .collect();
                out!("{}", serde_json::json!({"schema": 1, "exercises": items}));
            } else {
                for e in list {
                    out!("{:<24} {:<8} {}", e.id, e.state, e.title);
                }
            }
        }
        ExerciseCommand::Show { id } => {
            let e = store
                .exercise(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("exercise `{id}` not found"))?;
            let rounds = store.rounds(id).await?;
            if cli.json {
                let rs: Vec<_> = rounds
                    .iter()
                    .map(|r| serde_json::json!({"round": r.label, "planned_at": crate::store::from_ms(r.planned_at), "state": r.state, "reason": r.state_reason, "fired_at": r.fired_at.map(crate::store::from_ms), "departments": r.departments}))
                    .collect();
                out!(
                    "{}",
                    serde_json::json!({"schema": 1, "id": e.id, "title": e.title, "state": e.state, "roster_version": e.roster_version, "rounds": rs})
                );
            } else {
                out!(
                    "{} — {} ({}), roster version {}",
                    e.id,
                    e.title,
                    e.state,
                    e.roster_version
                );
                for r in rounds {
                    let reason = r
                        .state_reason
                        .as_deref()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default();
                    out!(
                        "  {:<4} {}  {}{reason}",
                        r.label,
                        crate::store::from_ms(r.planned_at).format("%Y-%m-%d %H:%M UTC"),
                        r.state
                    );
                }
            }
        }
    }
    Ok(EXIT_OK)
}

async fn transition(
    cli: &Cli,
    store: &Store,
    id: &str,
    from: &[&str],
    to: &str,
    now: chrono::DateTime<chrono::Utc>,
    by: Option<&str>,
) -> anyhow::Result<()> {
    if !store.set_exercise_state(id, from, to, now, by).await? {
        let state = store
            .exercise(id)
            .await?
            .map(|e| e.state)
            .unwrap_or_default();
        bail!("exercise `{id}` is {state}; it cannot become {to}");
    }
    say(
        cli,
        &format!("exercise {id}: {to}"),
        serde_json::json!({"exercise": id, "state": to}),
    )?;
    Ok(())
}

async fn fire(
    cli: &Cli,
    cfg: &Config,
    store: &Store,
    clock: &SharedClock,
    exercise: &str,
    departments: Option<&[String]>,
    queue: bool,
) -> anyhow::Result<i32> {
    let now = clock.now();
    let ex = store
        .exercise(exercise)
        .await?
        .ok_or_else(|| anyhow::anyhow!("exercise `{exercise}` not found"))?;
    if ex.state == "ended" {
        bail!("exercise `{exercise}` has ended");
    }
    let alive = store
        .last_heartbeat()
        .await?
        .is_some_and(|t| now - t <= chrono::TimeDelta::seconds(15));
    if !alive && !queue {
        bail!(
            "the daemon is not running (no heartbeat in the last 15 s); start `rollcall run`, or pass --queue to fire when it starts"
        );
    }
    let codes: Option<Vec<String>> =
        departments.map(|d| d.iter().map(|c| c.trim().to_ascii_uppercase()).collect());
    if let Some(codes) = &codes {
        // Checked before the round is written: a stored round with a bad
        // list would otherwise be picked up by the daemon.
        let version = store.latest_roster_version().await?.ok_or_else(|| {
            anyhow::anyhow!("no roster loaded; run `rollcall contacts load` first")
        })?;
        let roster = store.roster(version).await?;
        let unknown: Vec<&str> = codes
            .iter()
            .filter(|c| roster.department(c).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() || codes.is_empty() {
            return Err(Exit {
                code: EXIT_USAGE,
                message: format!(
                    "rollcall: --departments names no department of roster version {version}: {}",
                    if unknown.is_empty() {
                        "(empty list)".to_owned()
                    } else {
                        unknown.join(", ")
                    }
                ),
            }
            .into());
        }
    }
    let round = store
        .insert_adhoc_round(exercise, now, !alive, codes.as_deref())
        .await?;
    if alive {
        let engine = Engine::new(
            store.clone(),
            Arc::clone(clock),
            crate::daemon::engine_settings(cfg),
        );
        engine.fire(&round, codes.as_deref()).await?;
        say(
            cli,
            &format!("round {} fired; the daemon sends it now", round.label),
            serde_json::json!({"round": round.label, "state": "fired"}),
        )?;
    } else {
        say(
            cli,
            &format!("round {} queued until the daemon runs", round.label),
            serde_json::json!({"round": round.label, "state": "queued"}),
        )?;
    }
    Ok(EXIT_OK)
}

/// `rollcall plan`: the plan with its problems; exit 3 if any is an error.
fn plan_command(
    cli: &Cli,
    cfg: &Config,
    args: &PlanArgs,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i32> {
    let mut problems = Problems::default();
    let (roster, index) = contacts::load_dir(&cfg.contacts, &mut problems);
    let planned = schedule::load_file(&args.schedule, Some((&roster, &index)), &mut problems)
        .and_then(|s| {
            let p =
                plan::plan_schedule(&s, &args.schedule, Some(&roster), now, false, &mut problems)?;
            Some((s, p))
        });
    let errors = problems.error_count();
    let list = problems.into_sorted();
    let view = planned.map(|(s, p)| {
        let mut view = crate::plan_view::build(&s, &p, &roster, cfg);
        if args.preview {
            view.preview = crate::plan_view::preview(&s, &p, &roster, cfg);
        }
        view
    });
    if cli.json {
        out!(
            "{}",
            serde_json::json!({"schema": 1, "ok": errors == 0, "plan": view, "problems": list})
        );
    } else {
        if let Some(v) = &view {
            out_raw!("{}", crate::plan_view::render_text(v));
        }
        for p in list
            .iter()
            .filter(|p| p.severity == crate::yaml::Severity::Error)
        {
            eprintln!("{p}");
        }
    }
    Ok(if errors == 0 && view.is_some() {
        EXIT_OK
    } else {
        EXIT_INVALID
    })
}

async fn simulate(cli: &Cli, cfg: &Config, args: &SimulateArgs) -> anyhow::Result<i32> {
    let contacts_dir = args
        .contacts
        .clone()
        .unwrap_or_else(|| cfg.contacts.clone());
    // Simulated time starts at the window, so no round is "in the past".
    let (roster, schedule, plan) = plan::load_and_plan(
        &contacts_dir,
        &args.schedule,
        chrono::DateTime::<chrono::Utc>::MIN_UTC,
        false,
    )
    .map_err(print_problems_and_fail)?;
    // Without --db the run goes to a temporary file, never the operator's store.
    let tmp = tempdir_for_simulation()?;
    let store = match &cli.db {
        Some(url) => Store::connect(url).await?,
        None => {
            Store::connect_scratch(&format!("sqlite://{}", tmp.join("simulate.db").display()))
                .await?
        }
    };
    store.migrate().await?;
    let options = crate::simulate::SimulateOptions {
        seed: args.seed,
        ..Default::default()
    };
    let outcome = crate::simulate::run(&schedule, &plan, &roster, &store, &options).await?;
    let report = crate::report::build(&store, &schedule.id, outcome.ended_at).await?;
    if cli.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out_raw!("{}", crate::report::render_text(&report));
        out!(
            "\nsimulated {} of exercise time: {} emails, {} SMS, {} webhooks sent; {} link acks posted. Stored in {}",
            crate::domain::format_duration(outcome.virtual_span),
            outcome.emails,
            outcome.sms,
            outcome.webhooks,
            outcome.acks_posted,
            match &cli.db {
                Some(url) => redact_db(url),
                None => "a temporary database (pass --db to keep it)".into(),
            },
        );
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(EXIT_OK)
}

fn tempdir_for_simulation() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rollcall-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// SIGTERM or SIGINT. The handlers are installed before this returns, so a
/// signal that arrives while the daemon starts up still stops it cleanly.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
