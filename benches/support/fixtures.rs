//! Rosters and schedules built in code, so a bench measures planning and
//! firing rather than YAML loading.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use rollcall::domain::calendar::OfficeHours;
use rollcall::domain::contacts::{Contact, Department, Role, Roster, Webhook};
use rollcall::domain::holidays::Holidays;
use rollcall::domain::plan::{Plan, PlanInput, plan};
use rollcall::domain::schedule::{
    AckPolicy, CalendarSpec, HolidaySource, Marker, Notice, RoundSpec, Schedule, Step, Targets,
};
use rollcall::domain::{ChannelKind, ContactId, DepartmentCode, EmailAddress, Lang, PhoneE164};
use rollcall::engine::load_exercise;
use rollcall::store::Store;
use rollcall::yaml::Problems;

/// The three roles a department is reached through.
const ROLES: [Role; 3] = [Role::Primary, Role::Alternate, Role::Duty];

/// `departments` departments (`D001`, `D002`, ...) of three contacts each
/// (primary, alternate, duty), each with a mobile number and an email
/// address and no webhook. Every `own_hours_every`-th department keeps its
/// own office hours, 07:00–23:00 every day, as a 7-day service would, so
/// planning has exclusions to work out.
pub fn roster(departments: usize, own_hours_every: Option<usize>) -> Roster {
    let seven = NaiveTime::from_hms_opt(7, 0, 0).expect("valid time");
    let eleven = NaiveTime::from_hms_opt(23, 0, 0).expect("valid time");
    let seven_day = OfficeHours {
        days: std::array::from_fn(|_| vec![(seven, eleven)]),
    };
    let mut serial = 0u32;
    let departments = (1..=departments)
        .map(|n| {
            let code = DepartmentCode::parse(&format!("D{n:03}")).expect("valid code");
            let lower = code.as_str().to_lowercase();
            let contacts = ROLES
                .iter()
                .map(|&role| {
                    serial += 1;
                    // 9123 xxxx is a Hong Kong mobile range.
                    contact(
                        &code,
                        &format!("{lower}-{}", role.as_str()),
                        format!("{} {}", code, role.as_str()),
                        role,
                        &format!("+852 9123 {serial:04}"),
                    )
                })
                .collect();
            department(
                n,
                code,
                contacts,
                own_hours_every
                    .filter(|every| n % every == 0)
                    .map(|_| seven_day.clone()),
            )
        })
        .collect();
    Roster { departments }
}

/// The plan of `schedule` for `roster` with the shipped holidays, made the
/// day before its window opens, as `rollcall exercise load` would make it;
/// the bench stops if it has errors.
pub fn plan_of(schedule: &Schedule, roster: &Roster) -> Plan {
    let holidays = Holidays::hk();
    let mut problems = Problems::default();
    let plan = plan(
        &PlanInput {
            schedule,
            path: std::path::Path::new(&format!("{}.yaml", schedule.id)),
            positions: &[],
            roster: Some(roster),
            holidays: &holidays,
            now: schedule.window_start - TimeDelta::days(1),
            past_is_error: false,
        },
        &mut problems,
    );
    assert!(!problems.has_errors(), "the bench plan has no errors");
    plan
}

/// Department number `n`, named after its number, as if read from
/// `<code>.yaml`.
fn department(
    n: usize,
    code: DepartmentCode,
    contacts: Vec<Contact>,
    office_hours: Option<OfficeHours>,
) -> Department {
    Department {
        office_hours,
        file: format!("{}.yaml", code.as_str().to_lowercase()),
        name_en: format!("Department {n}"),
        name_zh: None,
        code,
        contacts,
    }
}

/// Loads `schedule` (planned as `plan`) over `roster` into `store` and
/// starts it at `at`, as `rollcall exercise load` and `exercise start` do;
/// returns the roster version it stored.
pub async fn load_and_start(
    store: &Store,
    roster: &Roster,
    schedule: &Schedule,
    plan: &Plan,
    at: DateTime<Utc>,
) -> i64 {
    let (_, roster_version) = load_exercise(store, roster, schedule, plan, at)
        .await
        .expect("the exercise loads");
    assert!(
        store
            .set_exercise_state(&schedule.id, &["loaded"], "running", at, Some("bench"))
            .await
            .expect("the exercise starts")
    );
    roster_version
}

/// A contact of `code` reachable by SMS at `mobile` and by email at
/// `<id>@<department>.example`, in English, with no webhook.
fn contact(code: &DepartmentCode, id: &str, name: String, role: Role, mobile: &str) -> Contact {
    let lower = code.as_str().to_lowercase();
    Contact {
        id: ContactId::parse(id).expect("valid id"),
        department: code.clone(),
        name,
        post: None,
        role,
        sms: Some(PhoneE164::parse(mobile).expect("valid mobile")),
        email: Some(EmailAddress::parse(&format!("{id}@{lower}.example")).expect("valid email")),
        webhook: None,
        lang: Lang::En,
        last_verified: None,
    }
}

/// Midnight Hong Kong time (UTC+8, no daylight saving) of a date, in UTC.
pub fn hk_midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(NaiveTime::MIN).and_utc() - TimeDelta::hours(8)
}

/// A Hong Kong schedule over `days` days from `start` (local midnight), with
/// the shipped holidays (years they do not cover allowed), Mon–Fri
/// 09:00–18:00 office hours, every department targeted, a 30-minute target,
/// 60-minute deadline, 1-minute settle, and two escalation steps (primary at
/// once, alternate and duty after 15 minutes) by SMS and email.
pub fn schedule(id: &str, start: NaiveDate, days: i64, rounds: Vec<RoundSpec>) -> Schedule {
    let window_start = hk_midnight(start);
    Schedule {
        id: id.to_owned(),
        title: format!("Benchmark exercise {id}"),
        scenario: None,
        objectives: Vec::new(),
        sponsor: None,
        handling: None,
        timezone: "Asia/Hong_Kong".to_owned(),
        window_start,
        window_end: window_start + TimeDelta::days(days) - TimeDelta::minutes(1),
        notice: Notice::Partial,
        marker: Marker {
            en: "[EXERCISE]".to_owned(),
            zh: "[演習]".to_owned(),
        },
        control: Vec::new(),
        targets: Targets::All,
        calendar: CalendarSpec {
            office_hours: OfficeHours::default(),
            holidays: HolidaySource::Hk,
            allow_uncovered: true,
        },
        rounds,
        ack: AckPolicy {
            target_secs: 30 * 60,
            deadline_secs: 60 * 60,
            settle_secs: 60,
        },
        escalation: vec![
            Step {
                after_secs: 0,
                notify: vec![Role::Primary],
                via: vec![ChannelKind::Sms, ChannelKind::Email],
            },
            Step {
                after_secs: 15 * 60,
                notify: vec![Role::Alternate, Role::Duty],
                via: vec![ChannelKind::Sms, ChannelKind::Email],
            },
        ],
        templates: Default::default(),
        round_pos: Vec::new(),
    }
}

/// One `random` block of `count` rounds over `buckets`, at least
/// `min_gap_secs` apart.
pub fn random_block(count: u32, buckets: &[&str], min_gap_secs: i64, seed: u64) -> RoundSpec {
    RoundSpec::Random {
        count,
        buckets: buckets.iter().map(|b| (*b).to_owned()).collect(),
        min_gap_secs,
        seed,
    }
}

/// `departments` departments (`D0001`, `D0002`, ...) of `per_department`
/// contacts each, every one reachable by SMS, email and webhook: the first
/// is the primary, the others alternate between alternate and duty, and
/// every fifth contact reads Chinese (UCS-2 SMS, a Chinese email). Webhooks
/// go to `{webhook_base}/hooks/<department>`, signed with the configured
/// default secret.
pub fn reachable_roster(departments: usize, per_department: usize, webhook_base: &str) -> Roster {
    let mut serial = 0u32;
    let departments = (1..=departments)
        .map(|n| {
            let code = DepartmentCode::parse(&format!("D{n:04}")).expect("valid code");
            let lower = code.as_str().to_lowercase();
            let contacts = (0..per_department)
                .map(|k| {
                    serial += 1;
                    let role = match k {
                        0 => Role::Primary,
                        k if k % 2 == 1 => Role::Alternate,
                        _ => Role::Duty,
                    };
                    // 912x xxxx is a Hong Kong mobile range.
                    let mut c = contact(
                        &code,
                        &format!("{lower}-c{k}"),
                        format!("{} contact {k}", code),
                        role,
                        &format!("+852 912{serial:05}"),
                    );
                    c.webhook = Some(Webhook {
                        url: format!("{webhook_base}/hooks/{lower}"),
                        secret_env: None,
                    });
                    if serial.is_multiple_of(5) {
                        c.lang = Lang::Zh;
                    }
                    c
                })
                .collect();
            department(n, code, contacts, None)
        })
        .collect();
    Roster { departments }
}
