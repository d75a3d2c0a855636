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
/// these errors. In particular `names-broken-files.yaml` is a valid schedule
/// naming a department and contacts from files that fail to load: only those
/// files' own errors are reported, not the names as unknown.
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
    // A department's cover is a property of its contacts list, reported at
    // the `contacts:` key.
    (
        "tests/fixtures/broken-contacts/no-primary.yaml",
        5,
        "department NPR has no reachable `primary` contact",
    ),
    (
        "tests/fixtures/broken-contacts/single-contact.yaml",
        5,
        "department ONE needs a second reachable contact",
    ),
    (
        "tests/fixtures/broken-contacts/unknown-key.yaml",
        9,
        "unknown key `phnoe` in a contact",
    ),
    // A missing key is reported at the key of the block that lacks it, the
    // `exercise:` line.
    (
        "tests/fixtures/broken-schedules/broken.yaml",
        3,
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
    let line = assert_refused(
        dir.path(),
        &dir.path().join("bomb.yaml"),
        "document too large or too many aliases (limit ",
    );
    // The operator sees a plain reason, not the parser's budget names.
    assert!(
        !line.contains("budget") && !line.contains("Nodes"),
        "the refusal names parser internals: {line}"
    );
}

#[test]
fn deeply_nested_blocks_are_refused_with_a_plain_message() {
    // Block sequences, each inside the last, well past the nesting budget.
    let mut text = String::from("department:\n");
    for depth in 1..=100 {
        text.push_str(&format!("{}-\n", "  ".repeat(depth)));
    }
    let dir = contacts_with("deep-blocks.yaml", text.as_bytes());
    let line = assert_refused(
        dir.path(),
        &dir.path().join("deep-blocks.yaml"),
        "document nested too deeply (limit ",
    );
    assert!(
        !line.contains("budget") && !line.contains("Depth"),
        "the refusal names parser internals: {line}"
    );
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

/// Writes `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write test file");
}

/// Runs `check` on the given directories and returns its error lines, after
/// asserting exit code 3 and no panic.
fn check_errors(contacts: &Path, schedules: &Path) -> Vec<String> {
    let out = support::rollcall(&[
        "check",
        "--contacts",
        contacts.to_str().expect("UTF-8 temporary path"),
        "--schedules",
        schedules.to_str().expect("UTF-8 temporary path"),
    ]);
    let stdout = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert!(!stderr.contains("panicked"), "check panicked:\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(EXIT_INVALID),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    error_lines(&stdout)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Asserts that `errors` are exactly the `expected` (file, line, part of the
/// message), in any order.
fn assert_exactly(errors: &[String], expected: &[(&Path, u64, &str)]) {
    let found = |(file, line, needle): &(&Path, u64, &str)| {
        let at = format!("{}:{line}:", file.display());
        errors
            .iter()
            .filter(|l| l.starts_with(&at) && l.contains(needle))
            .count()
    };
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| found(e) == 0)
        .map(|(f, l, n)| format!("{}:{l}: … {n}", f.display()))
        .collect();
    assert!(
        missing.is_empty() && errors.len() == expected.len(),
        "expected exactly these errors:\n  {}\nmissing:\n  {}\nreported:\n  {}",
        expected
            .iter()
            .map(|(f, l, n)| format!("{}:{l}: … {n}", f.display()))
            .collect::<Vec<_>>()
            .join("\n  "),
        missing.join("\n  "),
        errors.join("\n  ")
    );
}

/// A valid department `code` whose two reachable contacts are
/// `{prefix}-primary` and `{prefix}-duty`.
fn department(code: &str, prefix: &str) -> String {
    format!(
        "department:\n  code: {code}\n  name: {{ en: Department {code} }}\ncontacts:\n  \
         - {{ id: {prefix}-primary, name: {code} Primary, role: primary, email: primary@{prefix}.example }}\n  \
         - {{ id: {prefix}-duty, name: {code} Duty, role: duty, email: duty@{prefix}.example }}\n"
    )
}

/// A valid schedule naming `control` contacts and `targets` departments.
fn schedule(control: &[&str], targets: &[&str]) -> String {
    format!(
        "exercise:
  id: names
  title: Names a schedule refers to
  timezone: Asia/Hong_Kong
  window: {{ start: 2027-02-27T18:00, end: 2027-03-07T23:59 }}
  marker: {{ en: \"[EXERCISE]\", zh: \"[演習]\" }}
  control: [{}]
  targets: [{}]
  rounds:
    - at: 2027-03-02T02:15
  ack: {{ target: 30m, deadline: 60m }}
  escalation:
    - {{ after: 0m, notify: [primary], via: [email] }}
",
        control.join(", "),
        targets.join(", ")
    )
}

#[test]
fn a_syntax_error_in_a_contacts_file_is_not_repeated_as_unknown_names() {
    let contacts = tempfile::tempdir().expect("temporary contacts directory");
    let schedules = tempfile::tempdir().expect("temporary schedules directory");
    write(contacts.path(), "good.yaml", &department("GDD", "gdd"));
    // Line 3 is not valid YAML (a plain value holding `: `); the department
    // and its contacts are still named in the file.
    let broken = department("BRK", "brk")
        .replace("name: { en: Department BRK }", "name: Broken: Department");
    write(contacts.path(), "broken.yaml", &broken);
    write(
        schedules.path(),
        "drill.yaml",
        &schedule(
            &["gdd-primary", "brk-primary", "brk-duty", "nobody-at-all"],
            &["GDD", "BRK", "NOPE"],
        ),
    );

    let errors = check_errors(contacts.path(), schedules.path());
    // The syntax error, and the names that are unknown whatever the broken
    // file holds; not `BRK`, `brk-primary` or `brk-duty`.
    let drill = schedules.path().join("drill.yaml");
    assert_exactly(
        &errors,
        &[
            (&contacts.path().join("broken.yaml"), 3, "invalid YAML"),
            (&drill, 7, "control names unknown contact `nobody-at-all`"),
            (&drill, 8, "targets name unknown department `NOPE`"),
        ],
    );
}

#[test]
fn no_name_is_called_unknown_when_a_contacts_file_cannot_be_read_at_all() {
    let contacts = tempfile::tempdir().expect("temporary contacts directory");
    let schedules = tempfile::tempdir().expect("temporary schedules directory");
    write(contacts.path(), "good.yaml", &department("GDD", "gdd"));
    // Not text at all: which department it was meant to hold is unknown, so
    // any name a schedule uses may be in it.
    std::fs::write(
        contacts.path().join("garbage.yaml"),
        [0xff, 0xfe, 0x00, 0x80],
    )
    .expect("write garbage file");
    write(
        schedules.path(),
        "drill.yaml",
        &schedule(&["gdd-primary", "xyz-primary"], &["GDD", "XYZ"]),
    );

    let errors = check_errors(contacts.path(), schedules.path());
    assert_exactly(
        &errors,
        &[(&contacts.path().join("garbage.yaml"), 1, "not UTF-8")],
    );
}

#[test]
fn a_missing_contacts_directory_is_reported_once() {
    let contacts = tempfile::tempdir().expect("temporary directory");
    let schedules = tempfile::tempdir().expect("temporary schedules directory");
    let missing = contacts.path().join("no-such-directory");
    write(
        schedules.path(),
        "drill.yaml",
        &schedule(&["gdd-primary"], &["GDD"]),
    );

    let errors = check_errors(&missing, schedules.path());
    assert_exactly(&errors, &[(&missing, 1, "cannot read contacts directory")]);
}

#[test]
fn a_missing_key_is_reported_at_the_key_of_the_block_that_lacks_it() {
    let contacts = tempfile::tempdir().expect("temporary contacts directory");
    let schedules = tempfile::tempdir().expect("temporary schedules directory");
    // An observer is not a second reachable contact: the cover problem
    // belongs to the `contacts:` list (line 4), not to `code:` (line 2).
    write(
        contacts.path(),
        "pos.yaml",
        "department:
  code: POS
  name: { en: Positions Department }
contacts:
  - id: pos-primary
    name: POS Primary
    role: primary
    email: primary@pos.example
  - id: pos-observer
    name: POS Observer
    role: observer
    email: observer@pos.example
",
    );
    // `name` lacks `en` (reported at `name:`, line 3, not at `zh:`) and the
    // department has no primary (reported at `contacts:`, line 5).
    write(
        contacts.path(),
        "nop.yaml",
        "department:
  code: NOP
  name:
    zh: 無主要聯絡人部
contacts:
  - id: nop-duty
    name: NOP Duty
    role: duty
    email: duty@nop.example
  - id: nop-alternate
    name: NOP Alternate
    role: alternate
    email: alternate@nop.example
",
    );
    // `exercise` lacks `marker`, `window` lacks `end` and `ack` lacks
    // `deadline`; each is reported at that block's key (lines 2, 6 and 12),
    // not at the first key inside it (lines 4, 7 and 13).
    write(
        schedules.path(),
        "drill.yaml",
        "# A schedule whose blocks each lack a key.
exercise:
  # The exercise's own keys start below this comment.
  id: owner-lines
  title: Missing keys are reported at their block's key
  window:
    start: 2027-02-27T18:00
  control: [pos-primary]
  targets: [POS]
  rounds:
    - at: 2027-03-02T02:15
  ack:
    target: 30m
  escalation:
    - { after: 0m, notify: [primary], via: [email] }
",
    );

    let errors = check_errors(contacts.path(), schedules.path());
    let drill = schedules.path().join("drill.yaml");
    let pos = contacts.path().join("pos.yaml");
    let nop = contacts.path().join("nop.yaml");
    assert_exactly(
        &errors,
        &[
            (&pos, 4, "department POS needs a second reachable contact"),
            (&nop, 3, "`name` is missing `en`"),
            (&nop, 5, "department NOP has no reachable `primary` contact"),
            (&drill, 2, "`exercise` is missing `marker`"),
            (&drill, 6, "`window` is missing `end`"),
            (&drill, 12, "`ack` is missing `deadline`"),
        ],
    );
}

/// Every command the README's usage block lists exists in the binary, so the
/// README cannot drift from `--help`.
#[test]
fn every_command_in_the_readme_usage_exists() {
    let readme = std::fs::read_to_string(support::root().join("README.md")).unwrap();
    let usage = readme
        .split("## Usage")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README has a Usage code block");
    let mut commands: Vec<Vec<String>> = Vec::new();
    for line in usage.lines().filter(|l| l.starts_with("  ")) {
        // The command, before the description (set off by two spaces).
        let command = line.trim_start().split("  ").next().unwrap_or_default();
        let words: Vec<&str> = command
            .split_whitespace()
            .take_while(|w| !w.starts_with(['<', '[']))
            .collect();
        let Some((top, rest)) = words.split_first() else {
            continue;
        };
        // `exercise pause|resume|endex`, `exercise list | show`.
        let subs: Vec<&str> = rest
            .iter()
            .flat_map(|w| w.split('|'))
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        if subs.is_empty() {
            commands.push(vec![(*top).to_owned()]);
        } else {
            for s in subs {
                commands.push(vec![(*top).to_owned(), s.to_owned()]);
            }
        }
    }
    assert!(commands.len() >= 15, "parsed {commands:?}");
    for cmd in &commands {
        let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        args.push("--help");
        let out = support::rollcall(&args);
        assert!(
            out.status.success(),
            "README lists `rollcall {}` but the binary does not know it:\n{}",
            cmd.join(" "),
            support::stderr(&out)
        );
    }
}

/// `check` with `config` as the configuration file, on the shipped samples.
fn check_with_config(config: &str) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = config.replace("$DIR", dir.path().to_str().expect("UTF-8 temporary path"));
    let file = dir.path().join("rollcall.yaml");
    std::fs::write(&file, config).expect("write the configuration");
    let out = support::rollcall(&["--config", file.to_str().expect("UTF-8 path"), "check"]);
    (dir, out)
}

#[test]
fn smtp_settings_the_daemon_would_refuse_at_start_are_errors_at_check() {
    let email = |smtp: &str| {
        format!(
            "email:\n  from: \"Exercise Control <drill@cstcb.example>\"\n  smtp: {{ {smtp} }}\n"
        )
    };
    let cases = [
        (
            email("host: smtp.example, port: 587, tls: starttls, ca_file: $DIR/missing-ca.pem"),
            "email.smtp.ca_file",
            "missing-ca.pem",
        ),
        (
            email("host: smtp.example, port: 587, tls: implicit, ca_file: $DIR/rollcall.yaml"),
            "email.smtp.ca_file",
            "holds no PEM certificate",
        ),
        (
            email(
                "host: smtp.example, port: 25, tls: none, username: drill, password_env: SMTP_PASSWORD",
            ),
            "refusing to send the password to smtp.example in clear text",
            "starttls",
        ),
    ];
    for (config, first, second) in cases {
        let (_dir, out) = check_with_config(&config);
        let stdout = support::stdout(&out);
        assert_eq!(out.status.code(), Some(EXIT_INVALID), "{config}\n{stdout}");
        let errors = error_lines(&stdout);
        assert!(
            errors
                .iter()
                .any(|l| l.contains("rollcall.yaml") && l.contains(first) && l.contains(second)),
            "{config}\nerrors: {errors:#?}"
        );
        assert!(!stdout.contains("ok: "), "{stdout}");
    }
    // The same relay over STARTTLS with the platform's trust store is fine.
    let (_dir, out) = check_with_config(&email("host: smtp.example, port: 587, tls: starttls"));
    assert_eq!(out.status.code(), Some(0), "{}", support::stdout(&out));
}
