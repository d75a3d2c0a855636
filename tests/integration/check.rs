//! `rollcall check`: the shipped samples pass, every problem in a broken
//! contacts directory and schedule is reported at its own line, and bad
//! input (binary files, huge files, alias bombs, deep nesting) is refused
//! with exit code 3 and a message naming the file, never a panic.

use std::path::Path;

use crate::support;

const EXIT_INVALID: i32 = 3;

const BROKEN_CONTACTS: &str = "tests/fixtures/broken-contacts";
const BROKEN_SCHEDULES: &str = "tests/fixtures/broken-schedules";

/// Every problem planted in the fixtures: (file, line, part of the message).
/// Nothing else in the fixtures is wrong, so `check` must report exactly
/// these errors.
const EXPECTED: &[(&str, u64, &str)] = &[
    (
        "tests/fixtures/broken-contacts/bad-email.yaml",
        10,
        "`sm.chan@@bem.example` is not an email address",
    ),
    (
        "tests/fixtures/broken-contacts/bad-lang.yaml",
        11,
        "language `fr` must be `en` or `zh`",
    ),
    (
        "tests/fixtures/broken-contacts/bad-phone.yaml",
        9,
        "`+852 1234` is not a valid phone number",
    ),
    (
        "tests/fixtures/broken-contacts/bad-role.yaml",
        14,
        "role `chief` must be one of primary, alternate, duty, observer",
    ),
    (
        "tests/fixtures/broken-contacts/dup-contact-b.yaml",
        12,
        "contact id `shared-duty-officer` is already used in tests/fixtures/broken-contacts/dup-contact-a.yaml:6",
    ),
    (
        "tests/fixtures/broken-contacts/dup-dept-b.yaml",
        3,
        "department code `DUP` is already used in tests/fixtures/broken-contacts/dup-dept-a.yaml:3",
    ),
    (
        "tests/fixtures/broken-contacts/fixed-line.yaml",
        9,
        "is a fixed-line number; `sms` needs a mobile number",
    ),
    (
        "tests/fixtures/broken-contacts/malformed.yaml",
        4,
        "invalid YAML",
    ),
    (
        "tests/fixtures/broken-contacts/no-channel.yaml",
        12,
        "contact has no channel",
    ),
    // A department's own problems are reported where its mapping starts,
    // the `code:` line under `department:`.
    (
        "tests/fixtures/broken-contacts/no-primary.yaml",
        3,
        "department NPR has no reachable `primary` contact",
    ),
    (
        "tests/fixtures/broken-contacts/single-contact.yaml",
        3,
        "department ONE needs a second reachable contact",
    ),
    (
        "tests/fixtures/broken-contacts/unknown-key.yaml",
        9,
        "unknown key `phnoe` in a contact",
    ),
    // A missing key is reported where the `exercise` mapping starts.
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        4,
        "`exercise` is missing `marker`",
    ),
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        11,
        "control names unknown contact `nobody-at-all`",
    ),
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        14,
        "targets name unknown department `NOPE`",
    ),
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        17,
        "cron `61 21 * * SAT` is invalid",
    ),
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        18,
        "round at 2027-04-01T02:15 is outside the exercise window",
    ),
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        20,
        "`30 minutes` is not a duration",
    ),
];

/// Whether a printed problem line (`path:line:col: message`) is a warning.
fn is_warning(line: &str) -> bool {
    line.contains(": warning: ")
}

/// The error lines `check` printed: every `path:line:col: message` line
/// that is not a warning.
fn error_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("ok: ") && !l.trim().is_empty() && !is_warning(l))
        .collect()
}

fn run_check_on_fixtures(extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "check",
        "--contacts",
        BROKEN_CONTACTS,
        "--schedules",
        BROKEN_SCHEDULES,
    ];
    args.extend_from_slice(extra);
    support::rollcall(&args)
}

#[test]
fn samples_pass_check() {
    let departments = std::fs::read_dir(support::root().join("contacts"))
        .expect("read contacts/")
        .filter_map(Result::ok)
        .filter(|e| {
            matches!(
                e.path().extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml")
            )
        })
        .count();
    assert!(departments > 0, "contacts/ has no department files");

    let out = support::rollcall(&[
        "check",
        "--contacts",
        "contacts",
        "--schedules",
        "schedules",
    ]);
    let stdout = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check on the samples failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        error_lines(&stdout).is_empty(),
        "the samples have errors:\n{stdout}"
    );
    let prefix = format!("ok: {departments} departments");
    assert!(
        stdout.lines().any(|l| l.starts_with(&prefix)),
        "no line starting with `{prefix}`:\n{stdout}"
    );
}

#[test]
fn every_problem_in_the_broken_directory_is_reported_at_its_line() {
    let out = run_check_on_fixtures(&[]);
    let stdout = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_INVALID),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "check panicked:\n{stderr}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("ok: ")),
        "check said ok despite errors:\n{stdout}"
    );

    let errors = error_lines(&stdout);
    let mut missing = Vec::new();
    for (file, line, needle) in EXPECTED {
        let at = format!("{file}:{line}:");
        if !errors
            .iter()
            .any(|l| l.starts_with(&at) && l.contains(needle))
        {
            missing.push(format!("{at} … {needle}"));
        }
    }
    assert!(
        missing.is_empty(),
        "expected problems not reported:\n  {}\nstdout:\n{stdout}",
        missing.join("\n  ")
    );

    let unexpected: Vec<&&str> = errors
        .iter()
        .filter(|l| {
            !EXPECTED.iter().any(|(file, line, needle)| {
                l.starts_with(&format!("{file}:{line}:")) && l.contains(needle)
            })
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected errors reported:\n{unexpected:#?}\nstdout:\n{stdout}"
    );
    assert_eq!(
        errors.len(),
        EXPECTED.len(),
        "error count differs from the table\nstdout:\n{stdout}"
    );
    assert!(
        stderr.contains(&format!("{} errors", EXPECTED.len())),
        "stderr does not state the error count:\n{stderr}"
    );
}

#[test]
fn json_output_lists_the_same_problems() {
    let out = run_check_on_fixtures(&["--json"]);
    let stdout = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_INVALID),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"));
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["ok"], false, "{doc:#}");
    assert_eq!(doc["errors"], EXPECTED.len(), "{doc:#}");
    assert!(doc["summary"].is_string(), "{doc:#}");

    let problems = doc["problems"].as_array().expect("`problems` is a list");
    let errors: Vec<&serde_json::Value> = problems
        .iter()
        .filter(|p| p["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), EXPECTED.len(), "{doc:#}");
    for (file, line, needle) in EXPECTED {
        assert!(
            errors.iter().any(|p| {
                p["path"] == *file
                    && p["line"] == *line
                    && p["column"].as_u64().is_some_and(|c| c >= 1)
                    && p["message"].as_str().is_some_and(|m| m.contains(needle))
            }),
            "JSON lacks {file}:{line}: {needle}\n{doc:#}"
        );
    }
}

/// Runs `check` on a contacts directory with an empty schedules directory,
/// so only the contacts are judged.
fn check_contacts(contacts: &Path) -> std::process::Output {
    let schedules = tempfile::tempdir().expect("temporary schedules directory");
    support::rollcall(&[
        "check",
        "--contacts",
        contacts.to_str().expect("UTF-8 temporary path"),
        "--schedules",
        schedules.path().to_str().expect("UTF-8 temporary path"),
    ])
}

/// Runs `check` on a contacts directory holding one bad file (or none) and
/// asserts what the operator sees: exit code 3, no panic, no `ok:` line, and
/// a problem at `path:line:col` naming the bad file (or the directory) with
/// `message` in it. Returns that problem line.
fn assert_refused(contacts: &Path, named: &Path, message: &str) -> String {
    let out = check_contacts(contacts);
    let stdout = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert!(
        !stderr.contains("panicked"),
        "check panicked on {}:\n{stderr}",
        named.display()
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_INVALID),
        "check on {} did not exit 3\nstdout:\n{stdout}\nstderr:\n{stderr}",
        named.display()
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("ok: ")),
        "check said ok:\n{stdout}"
    );
    let at = format!("{}:", named.display());
    let Some(line) = stdout.lines().find(|l| l.starts_with(&at)) else {
        panic!("no problem names {}\nstdout:\n{stdout}", named.display());
    };
    // `path:line:col: message`, both numbers from 1.
    let mut parts = line[at.len()..].splitn(3, ':');
    let (l, c) = (parts.next(), parts.next());
    assert!(
        l.and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l >= 1)
            && c.and_then(|c| c.parse::<u64>().ok())
                .is_some_and(|c| c >= 1),
        "problem line has no line:col position: {line}"
    );
    assert!(
        line.contains(message),
        "problem for {} does not say `{message}`: {line}",
        named.display()
    );
    line.to_owned()
}

/// A contacts directory with one file `name` holding `bytes`.
fn contacts_with(name: &str, bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary contacts directory");
    std::fs::write(dir.path().join(name), bytes).expect("write contacts file");
    dir
}

#[test]
fn malformed_yaml_is_reported_at_its_line_without_a_panic() {
    let dir = contacts_with(
        "broken.yaml",
        b"department:\n  code: MAL\n  name: Malformed: Department\ncontacts: []\n",
    );
    let file = dir.path().join("broken.yaml");
    let line = assert_refused(dir.path(), &file, "invalid YAML");
    assert!(
        line.starts_with(&format!("{}:3:", file.display())),
        "the syntax error is not reported at line 3: {line}"
    );
}

#[test]
fn binary_garbage_is_refused_without_a_panic() {
    // Deterministic noise: every byte value, NUL and invalid UTF-8 included.
    let mut bytes = b"department:\n  code: ".to_vec();
    let mut x: u32 = 0x2545_f491;
    for i in 0..8192u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(if i % 256 == 0 { 0 } else { (x >> 24) as u8 });
    }
    bytes.extend_from_slice(&[0x00, 0xff, 0xfe, 0xc3, 0x28]);
    let dir = contacts_with("garbage.yaml", &bytes);
    assert_refused(dir.path(), &dir.path().join("garbage.yaml"), "not UTF-8");
}

#[test]
fn non_utf8_text_is_reported_at_the_first_bad_byte() {
    let dir = contacts_with("latin1.yaml", b"department:\n  code: CAF\xe9\n");
    let file = dir.path().join("latin1.yaml");
    let line = assert_refused(dir.path(), &file, "not UTF-8");
    assert!(
        line.starts_with(&format!("{}:2:12:", file.display())),
        "the bad byte is not reported at 2:12: {line}"
    );
}

#[test]
fn a_text_file_with_nul_bytes_is_refused_without_a_panic() {
    let dir = contacts_with("nul.yaml", b"department:\n  code: N\0L\ncontacts: []\n");
    assert_refused(dir.path(), &dir.path().join("nul.yaml"), "NUL");
}

#[test]
fn an_empty_contacts_directory_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().expect("temporary contacts directory");
    assert_refused(dir.path(), dir.path(), "no .yaml files");
}

#[test]
fn a_ten_megabyte_file_is_refused_without_a_panic() {
    let line = "# fictitious padding for a file far bigger than any contacts file\n";
    let size = 10 * 1024 * 1024;
    let text = line.repeat(size / line.len() + 1);
    assert!(text.len() >= size);
    let dir = contacts_with("huge.yaml", text.as_bytes());
    assert_refused(dir.path(), &dir.path().join("huge.yaml"), "limit");
}

#[test]
fn an_alias_bomb_is_refused_without_a_panic() {
    // Billion laughs: nine levels of nine aliases each, 9^9 nodes if expanded.
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let dir = contacts_with("bomb.yaml", text.as_bytes());
    assert_refused(dir.path(), &dir.path().join("bomb.yaml"), "invalid YAML");
}

#[test]
fn a_file_whose_top_level_is_a_list_is_refused_without_a_panic() {
    let dir = contacts_with(
        "list.yaml",
        b"- department: { code: LST, name: Listed }\n- contacts: []\n",
    );
    assert_refused(
        dir.path(),
        &dir.path().join("list.yaml"),
        "must be a mapping, found a list",
    );
}

#[test]
fn deeply_nested_flow_sequences_are_refused_without_a_panic() {
    let depth = 10_000;
    let text = format!("{}{}\n", "[".repeat(depth), "]".repeat(depth));
    let dir = contacts_with("deep.yaml", text.as_bytes());
    assert_refused(dir.path(), &dir.path().join("deep.yaml"), "invalid YAML");
}
