//! The contacts directory: one YAML file per department (PRODUCT.md §2.1).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::calendar::OfficeHours;
use super::{ContactId, DepartmentCode, EmailAddress, Lang, PhoneE164};
use crate::yaml::{self, MapView, Pos, Problems};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Alternate,
    Duty,
    Observer,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(Role::Primary),
            "alternate" => Ok(Role::Alternate),
            "duty" => Ok(Role::Duty),
            "observer" => Ok(Role::Observer),
            _ => Err(format!(
                "role `{s}` must be one of primary, alternate, duty, observer"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Alternate => "alternate",
            Role::Duty => "duty",
            Role::Observer => "observer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// The environment variable holding this contact's signing secret; the
    /// configuration's `webhook.secret_env` applies when it is absent.
    pub secret_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub department: DepartmentCode,
    pub name: String,
    pub post: Option<String>,
    pub role: Role,
    pub sms: Option<PhoneE164>,
    pub email: Option<EmailAddress>,
    pub webhook: Option<Webhook>,
    pub lang: Lang,
    pub last_verified: Option<NaiveDate>,
}

impl Contact {
    pub fn is_reachable(&self) -> bool {
        self.sms.is_some() || self.email.is_some() || self.webhook.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    pub code: DepartmentCode,
    pub name_en: String,
    pub name_zh: Option<String>,
    pub office_hours: Option<OfficeHours>,
    pub contacts: Vec<Contact>,
    /// Where it was loaded from, relative to the contacts directory.
    pub file: String,
}

/// Every department and contact, as loaded; stored as a roster version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    pub departments: Vec<Department>,
}

impl Roster {
    pub fn department(&self, code: &str) -> Option<&Department> {
        self.departments.iter().find(|d| d.code.as_str() == code)
    }

    pub fn contact(&self, id: &str) -> Option<&Contact> {
        self.contacts().find(|c| c.id.as_str() == id)
    }

    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.departments.iter().flat_map(|d| d.contacts.iter())
    }

    /// Secret variables the roster's webhooks name.
    pub fn secret_envs(&self) -> impl Iterator<Item = (&Contact, &str)> {
        self.contacts().filter_map(|c| {
            c.webhook
                .as_ref()
                .and_then(|w| w.secret_env.as_deref())
                .map(|e| (c, e))
        })
    }
}

/// Where each loaded id was defined, so cross-references can be reported at
/// the line that uses them and duplicates at the line that repeats them.
///
/// It also remembers what could not be checked. A contacts file with a YAML
/// syntax error still names its department and contacts; a schedule naming
/// them must not be told they are unknown, or one typo in one file becomes an
/// error on every schedule. The file's own error is the one to fix, and
/// `check` fails on it anyway.
#[derive(Debug, Default)]
pub struct RosterIndex {
    pub contact_at: HashMap<String, (PathBuf, Pos)>,
    pub department_at: HashMap<String, (PathBuf, Pos)>,
    /// Department codes and contact ids read from the text of contacts
    /// files that could not be loaded.
    unchecked_departments: HashSet<String>,
    unchecked_contacts: HashSet<String>,
    /// Some contacts file (or the directory) could not be read far enough to
    /// say which department it holds, so no name can be called unknown.
    incomplete: bool,
}

impl RosterIndex {
    /// Whether `code` is, or may be, a department of the contacts directory;
    /// only a `false` lets a schedule's reference be called unknown.
    pub fn may_have_department(&self, code: &str) -> bool {
        self.incomplete
            || self.department_at.contains_key(code)
            || self.unchecked_departments.contains(code)
    }

    /// Whether `id` is, or may be, a contact of the contacts directory. A
    /// contact with its own errors counts: it is there, just not valid yet.
    pub fn may_have_contact(&self, id: &str) -> bool {
        self.incomplete || self.contact_at.contains_key(id) || self.unchecked_contacts.contains(id)
    }

    /// Records the names a contacts file that could not be loaded appears to
    /// hold; without a department code the file could hold any department.
    fn note_unloaded(&mut self, file: &Path) {
        let (codes, ids) = read_lossy(file)
            .map(|text| names_in_text(&text))
            .unwrap_or_default();
        if codes.is_empty() {
            self.incomplete = true;
        }
        self.unchecked_departments.extend(codes);
        self.unchecked_contacts.extend(ids);
    }
}

/// A contacts file's text for [`names_in_text`], undecodable bytes replaced;
/// nothing for a file too big to be a contacts file or unreadable.
fn read_lossy(file: &Path) -> Option<String> {
    let len = std::fs::metadata(file).ok()?.len();
    if len > yaml::MAX_FILE_BYTES {
        return None;
    }
    let bytes = std::fs::read(file).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The department codes and contact ids a contacts file names, found without
/// a YAML parser (which refused the file): the value after each `code:` and
/// `id:` key, in block or flow style, kept only if it is a valid code or id.
fn names_in_text(text: &str) -> (Vec<String>, Vec<String>) {
    let mut codes = Vec::new();
    let mut ids = Vec::new();
    for line in text.lines() {
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        for piece in line.split(['{', '}', ',', '[', ']']) {
            let piece = piece.trim_start().trim_start_matches("- ").trim_start();
            let Some((key, value)) = piece.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches(['"', '\'']);
            let value = value.trim().trim_matches(['"', '\'']);
            match key {
                "code" if DepartmentCode::parse(value).is_ok() => codes.push(value.to_owned()),
                "id" if ContactId::parse(value).is_ok() => ids.push(value.to_owned()),
                _ => {}
            }
        }
    }
    (codes, ids)
}

/// Loads every `*.yaml` / `*.yml` file in `dir`. Problems are collected, not
/// returned early: a broken file does not hide the others' problems.
pub fn load_dir(dir: &Path, problems: &mut Problems) -> (Roster, RosterIndex) {
    let mut roster = Roster::default();
    let mut index = RosterIndex::default();
    let files = match yaml::yaml_files(dir) {
        Ok(f) => f,
        Err(e) => {
            problems.error(
                dir,
                Pos::START,
                format!("cannot read contacts directory: {e}"),
            );
            // That one error says it all; every department a schedule names
            // would otherwise be reported as unknown too.
            index.incomplete = true;
            return (roster, index);
        }
    };
    if files.is_empty() {
        problems.error(dir, Pos::START, "contacts directory has no .yaml files");
        index.incomplete = true;
    }
    for file in &files {
        let Some(node) = yaml::read_file(file, problems) else {
            index.note_unloaded(file);
            continue;
        };
        let rel = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match load_department(&node, file, &rel, problems, &mut index) {
            Some(dept) => roster.departments.push(dept),
            // The file's department code is missing or invalid (reported):
            // its contacts are indexed, but which department it is is not.
            None => index.note_unloaded(file),
        }
    }
    roster.departments.sort_by(|a, b| a.code.cmp(&b.code));
    (roster, index)
}

fn load_department(
    root: &yaml::Node,
    path: &Path,
    rel: &str,
    problems: &mut Problems,
    index: &mut RosterIndex,
) -> Option<Department> {
    let top = MapView::open(
        root,
        path,
        "a contacts file",
        &["department", "contacts"],
        problems,
    )?;
    let dept_node = top.require("department", "a contacts file", problems);
    let contacts_node = top.require("contacts", "a contacts file", problems);

    let mut code = None;
    let mut name_en = None;
    let mut name_zh = None;
    let mut office_hours = None;
    if dept_node.is_some()
        && let Some(d) = top.child(
            "department",
            "`department`",
            &["code", "name", "office_hours"],
            problems,
        )
    {
        if let Some((c, pos)) = d.require_str("code", "`department`", problems) {
            match DepartmentCode::parse(c) {
                Ok(c) => {
                    if let Some((first, at)) = index.department_at.get(c.as_str()) {
                        problems.error(
                            path,
                            pos,
                            format!(
                                "department code `{c}` is already used in {}:{}",
                                first.display(),
                                at.line
                            ),
                        );
                    } else {
                        index
                            .department_at
                            .insert(c.as_str().to_owned(), (path.to_path_buf(), pos));
                    }
                    code = Some(c);
                }
                Err(e) => problems.error(path, pos, e),
            }
        }
        if let Some(n) = d.require("name", "`department`", problems) {
            match n.as_str() {
                Some(s) => name_en = Some(s.to_owned()),
                None => {
                    if let Some(names) = d.child("name", "`name`", &["en", "zh"], problems) {
                        name_en = names
                            .require_str("en", "`name`", problems)
                            .map(|(s, _)| s.to_owned());
                        name_zh = names.str("zh", problems).map(|(s, _)| s.to_owned());
                    }
                }
            }
        }
        if let Some(oh) = d.get("office_hours") {
            office_hours = OfficeHours::from_node(oh, path, problems);
        }
    }

    let mut contacts = Vec::new();
    // A missing or broken `contacts` list, or a contact with its own errors,
    // is already reported; judging the department's cover without them
    // would only repeat the same problem.
    let mut judge_cover = false;
    if let Some(cn) = contacts_node {
        match cn.as_seq() {
            Some(items) => {
                judge_cover = true;
                for item in items {
                    match load_contact(item, path, code.as_ref(), problems, index) {
                        Some(c) => contacts.push(c),
                        None => judge_cover = false,
                    }
                }
            }
            None => problems.error(
                path,
                cn.pos,
                format!("`contacts` must be a list, found {}", cn.value.kind()),
            ),
        }
    }

    let code = code?;
    // The cover is a property of the `contacts` list, so it is reported at
    // that key rather than at the department's first key.
    if judge_cover && let Some(at) = top.key_pos("contacts") {
        check_department_cover(&contacts, &code, path, at, problems);
    }
    Some(Department {
        code,
        name_en: name_en.unwrap_or_default(),
        name_zh,
        office_hours,
        contacts,
        file: rel.to_owned(),
    })
}

/// A department needs a primary and a second reachable contact, or a single
/// person's phone being off at 3 a.m. loses the whole department.
fn check_department_cover(
    contacts: &[Contact],
    code: &DepartmentCode,
    path: &Path,
    pos: Pos,
    problems: &mut Problems,
) {
    let reachable: Vec<&Contact> = contacts
        .iter()
        .filter(|c| c.is_reachable() && c.role != Role::Observer)
        .collect();
    if !reachable.iter().any(|c| c.role == Role::Primary) {
        problems.error(
            path,
            pos,
            format!("department {code} has no reachable `primary` contact"),
        );
    }
    if reachable.len() < 2 {
        problems.error(
            path,
            pos,
            format!(
                "department {code} needs a second reachable contact besides the primary (alternate or duty)"
            ),
        );
    }
}

const CONTACT_KEYS: &[&str] = &[
    "id",
    "name",
    "post",
    "role",
    "sms",
    "email",
    "webhook",
    "lang",
    "last_verified",
];

fn load_contact(
    node: &yaml::Node,
    path: &Path,
    department: Option<&DepartmentCode>,
    problems: &mut Problems,
    index: &mut RosterIndex,
) -> Option<Contact> {
    let m = MapView::open(node, path, "a contact", CONTACT_KEYS, problems)?;
    let before = problems.error_count();

    let id =
        m.require_str("id", "a contact", problems)
            .and_then(|(s, pos)| match ContactId::parse(s) {
                Ok(id) => {
                    if let Some((first, at)) = index.contact_at.get(id.as_str()) {
                        problems.error(
                            path,
                            pos,
                            format!(
                                "contact id `{id}` is already used in {}:{}",
                                first.display(),
                                at.line
                            ),
                        );
                        None
                    } else {
                        index
                            .contact_at
                            .insert(id.as_str().to_owned(), (path.to_path_buf(), pos));
                        Some(id)
                    }
                }
                Err(e) => {
                    problems.error(path, pos, e);
                    None
                }
            });
    let name = m
        .require_str("name", "a contact", problems)
        .map(|(s, _)| s.to_owned());
    let post = m.str("post", problems).map(|(s, _)| s.to_owned());
    let role = m
        .require_str("role", "a contact", problems)
        .and_then(|(s, pos)| {
            Role::parse(s)
                .map_err(|e| problems.error(path, pos, e))
                .ok()
        });
    let sms = m.str("sms", problems).and_then(|(s, pos)| {
        PhoneE164::parse(s)
            .map_err(|e| problems.error(path, pos, e))
            .ok()
    });
    let email = m.str("email", problems).and_then(|(s, pos)| {
        EmailAddress::parse(s)
            .map_err(|e| problems.error(path, pos, e))
            .ok()
    });
    let lang = match m.str("lang", problems) {
        Some((s, pos)) => Lang::parse(s)
            .map_err(|e| problems.error(path, pos, e))
            .ok(),
        None => Some(Lang::En),
    };
    let last_verified = m.str("last_verified", problems).and_then(|(s, pos)| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| {
                problems.error(path, pos, format!("`{s}` is not a date; write YYYY-MM-DD"))
            })
            .ok()
    });
    let webhook = m
        .child("webhook", "`webhook`", &["url", "secret_env"], problems)
        .and_then(|w| load_webhook(&w, path, problems));
    if m.get("sms").is_none() && m.get("email").is_none() && m.get("webhook").is_none() {
        problems.error(
            path,
            m.pos(),
            "contact has no channel: give `sms`, `email` or `webhook`",
        );
    }

    if problems.error_count() > before {
        return None;
    }
    Some(Contact {
        id: id?,
        department: department?.clone(),
        name: name?,
        post,
        role: role?,
        sms,
        email,
        webhook,
        lang: lang?,
        last_verified,
    })
}

fn load_webhook(m: &MapView<'_>, path: &Path, problems: &mut Problems) -> Option<Webhook> {
    let url = m
        .require_str("url", "`webhook`", problems)
        .and_then(|(s, pos)| match reqwest::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(s.to_owned())
            }
            _ => {
                problems.error(path, pos, format!("`{s}` is not an http(s) URL"));
                None
            }
        });
    let secret_env = m.str("secret_env", problems).and_then(|(s, pos)| {
        if is_env_name(s) {
            Some(s.to_owned())
        } else {
            problems.error(
                path,
                pos,
                format!("`{s}` is not an environment variable name"),
            );
            None
        }
    });
    Some(Webhook {
        url: url?,
        secret_env,
    })
}

pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_a_file_the_parser_refused() {
        let text = "department:\n  code: MAL # the code\n  name: Malformed: Department\n\
                    contacts:\n  - id: mal-duty-desk\n    role: primary\n  \
                    - { id: 'mal-alternate', name: Alt }\n# code: NOTME\n  - id: Not An Id\n";
        let (codes, ids) = names_in_text(text);
        assert_eq!(codes, ["MAL"]);
        assert_eq!(ids, ["mal-duty-desk", "mal-alternate"]);
    }
}
