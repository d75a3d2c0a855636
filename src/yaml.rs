//! A located YAML tree and the problem list every loader reports into.
//!
//! Loaders do not deserialize straight into their types with serde: a derived
//! `Deserialize` stops at the first unknown key or bad value, and `check` must
//! report every problem at once, each at its own `path:line:col`. Instead the
//! file is parsed (by `serde-saphyr`, safe Rust with input budgets) into a
//! [`Node`] tree that keeps every node's position, and each loader walks the
//! tree, collecting problems as it goes.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use serde_saphyr::budget::BudgetBreach;

/// Files bigger than this are refused before parsing: no sane contacts or
/// schedule file comes near it, and it bounds the parser's work.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// How serious a problem is: errors fail `check` (exit 3), warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in an input file, at its position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {level}{}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Collects problems for one run of a loader.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, path: &Path, at: Pos, message: impl Into<String>) {
        self.push(path, at, Severity::Error, message.into());
    }

    pub fn warning(&mut self, path: &Path, at: Pos, message: impl Into<String>) {
        self.push(path, at, Severity::Warning, message.into());
    }

    fn push(&mut self, path: &Path, at: Pos, severity: Severity, message: String) {
        self.list.push(Problem {
            path: path.to_path_buf(),
            line: at.line,
            column: at.column,
            severity,
            message,
        });
    }

    pub fn extend(&mut self, other: Problems) {
        self.list.extend(other.list);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.list
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.list.len() - self.error_count()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Problems in file order, then by position.
    pub fn into_sorted(mut self) -> Vec<Problem> {
        self.list.sort_by(|a, b| {
            (&a.path, a.line, a.column, a.severity).cmp(&(&b.path, b.line, b.column, b.severity))
        });
        self.list
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter()
    }
}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// Byte range of the node in the source, where the parser knows it.
    span: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Any scalar that is not null or a boolean, as written (numbers too:
    /// `20270227` and `"20270227"` are the same to a loader).
    Str(String),
    /// A plain scalar the parser read as a number; replaced by its source
    /// text after parsing, so `+85291234567` keeps its plus sign.
    Num(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Str(_) | Value::Num(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Node {
        Node {
            pos,
            value,
            span: None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        let span = spanned.referenced.span();
        let span = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o)
                .ok()
                .zip(usize::try_from(l).ok())
                .map(|(o, l)| (o, o.saturating_add(l))),
            _ => None,
        };
        Ok(Node {
            pos: Pos {
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
            value: spanned.value,
            span,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Num(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Num(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Num(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Num(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Num(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not allowed here"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// Why a file could not be turned into a tree at all.
#[derive(Debug, Clone)]
pub struct ParseFailure {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML text into a located tree. Never panics; aliases, nesting and
/// size are bounded by the parser's budget.
pub fn parse(text: &str) -> Result<Node, ParseFailure> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos::START,
            value: Value::Null,
            span: None,
        });
    }
    let budget = serde_saphyr::Budget::default();
    let options = serde_saphyr::options! {
        budget: Some(budget.clone()),
        strict_booleans: true,
    };
    let mut root = serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line().max(1),
                column: l.column().max(1),
            })
            .unwrap_or(Pos::START);
        let message = match budget_breach(&e) {
            Some(breach) => refusal(breach, &budget),
            None => first_line_of(&e.to_string()),
        };
        ParseFailure { pos, message }
    })?;
    restore_numbers(&mut root, text);
    Ok(root)
}

fn restore_numbers(node: &mut Node, text: &str) {
    match &mut node.value {
        Value::Num(n) => {
            let raw = node
                .span
                .and_then(|(a, b)| text.get(a..b))
                .map(str::trim)
                .filter(|r| !r.is_empty());
            node.value = Value::Str(raw.map_or_else(|| n.clone(), str::to_owned));
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| restore_numbers(n, text)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            restore_numbers(k, text);
            restore_numbers(v, text);
        }),
        _ => {}
    }
}

/// The budget limit that stopped the parser, under any alias or snippet
/// wrapping, if that is why it stopped.
fn budget_breach(mut e: &serde_saphyr::Error) -> Option<&BudgetBreach> {
    loop {
        match e {
            serde_saphyr::Error::WithSnippet { error, .. }
            | serde_saphyr::Error::AliasError { error, .. } => e = error,
            serde_saphyr::Error::Budget { breach, .. } => return Some(breach),
            _ => return None,
        }
    }
}

/// Says in the operator's words why a file tripped the parser's budget (the
/// parser's own message is the budget's Rust name, e.g. `Nodes { .. }`). The
/// document may be valid YAML, so this is not called a syntax error.
fn refusal(breach: &BudgetBreach, budget: &serde_saphyr::Budget) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!(
            "document nested too deeply (limit {} levels)",
            budget.max_depth
        ),
        BudgetBreach::Nodes { .. } => format!(
            "document too large or too many aliases (limit {} values once aliases are expanded)",
            budget.max_nodes
        ),
        BudgetBreach::Events { .. } => format!(
            "document too large or too many aliases (limit {} parser events)",
            budget.max_events
        ),
        BudgetBreach::Aliases { .. } => {
            format!("too many aliases (limit {})", budget.max_aliases)
        }
        BudgetBreach::Anchors { .. } => {
            format!("too many anchors (limit {})", budget.max_anchors)
        }
        BudgetBreach::AliasAnchorRatio { .. } => format!(
            "too many aliases for its anchors (limit {} uses per anchor)",
            budget.alias_anchor_ratio_multiplier
        ),
        BudgetBreach::Documents { .. } => {
            format!("too many YAML documents (limit {})", budget.max_documents)
        }
        BudgetBreach::MergeKeys { .. } => {
            format!("too many merge keys `<<` (limit {})", budget.max_merge_keys)
        }
        BudgetBreach::ScalarBytes { .. } => format!(
            "document too large (limit {} bytes of text)",
            budget.max_total_scalar_bytes
        ),
        _ => "document too large or too many aliases".to_owned(),
    }
}

/// The parser renders a snippet under its message; keep the message only.
fn first_line_of(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or("invalid YAML").trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // "line 5 column 5: unknown ..." → "unknown ..." (the position is printed separately).
    let line = match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => line,
    };
    format!("invalid YAML: {line}")
}

/// Reads a file for a loader: size-checked, UTF-8 (a BOM is dropped), parsed.
pub fn read_file(path: &Path, problems: &mut Problems) -> Option<Node> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            problems.error(path, Pos::START, format!("cannot read file: {e}"));
            return None;
        }
    };
    if meta.len() > MAX_FILE_BYTES {
        problems.error(
            path,
            Pos::START,
            format!(
                "file is {} bytes; the limit is {} bytes",
                meta.len(),
                MAX_FILE_BYTES
            ),
        );
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            problems.error(path, Pos::START, format!("cannot read file: {e}"));
            return None;
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = line_col_of_byte(&bytes, e.valid_up_to());
            problems.error(
                path,
                Pos { line, column },
                "file is not UTF-8 text (is it a binary file?)",
            );
            return None;
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.contains('\0') {
        problems.error(path, Pos::START, "file contains NUL bytes: not a text file");
        return None;
    }
    match parse(text) {
        Ok(node) => Some(node),
        Err(f) => {
            problems.error(path, f.pos, f.message);
            None
        }
    }
}

fn line_col_of_byte(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let col_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    (line, (offset - col_start) as u64 + 1)
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted by name.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A view of a mapping node that records which keys were read, so the ones
/// nobody asked for are reported as unknown.
pub struct MapView<'a> {
    entries: &'a [(Node, Node)],
    path: &'a Path,
    allowed: &'static [&'static str],
    /// Where problems about the mapping as a whole (a missing key) are
    /// reported: the key that owns it when known, else its first key.
    owner: Pos,
}

impl<'a> MapView<'a> {
    /// Opens `node` as a mapping with the given keys. A non-mapping node is
    /// reported and gives `None`; unknown and repeated keys are reported here.
    pub fn open(
        node: &'a Node,
        path: &'a Path,
        what: &str,
        allowed: &'static [&'static str],
        problems: &mut Problems,
    ) -> Option<Self> {
        let Some(entries) = node.as_map() else {
            problems.error(
                path,
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in entries {
            match k.as_str() {
                Some(key) if allowed.contains(&key) => {
                    if seen.contains(&key) {
                        problems.error(path, k.pos, format!("key `{key}` is given twice"));
                    }
                    seen.push(key);
                }
                Some(key) => problems.error(
                    path,
                    k.pos,
                    format!(
                        "unknown key `{key}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                ),
                None => problems.error(path, k.pos, format!("keys in {what} must be text")),
            }
        }
        Some(MapView {
            entries,
            path,
            allowed,
            owner: node.pos,
        })
    }

    /// Opens the value of `key` as a mapping, like [`MapView::open`]; its
    /// missing keys are then reported at `key`'s own line (a block's first
    /// key may be lines below it, or be the wrong key to point at). `None`,
    /// silently, when the key is absent or empty.
    pub fn child(
        &self,
        key: &str,
        what: &str,
        allowed: &'static [&'static str],
        problems: &mut Problems,
    ) -> Option<MapView<'a>> {
        let (k, v) = self.entry(key)?;
        let mut view = MapView::open(v, self.path, what, allowed, problems)?;
        view.owner = k.pos;
        Some(view)
    }

    /// Where problems about this mapping as a whole belong: the key that owns
    /// it when it was opened with [`MapView::child`], else its first key.
    pub fn pos(&self) -> Pos {
        self.owner
    }

    /// The position of `key` itself (not of its value), when present.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entry(key).map(|(k, _)| k.pos)
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key and value nodes of `key`, if given and not empty.
    fn entry(&self, key: &str) -> Option<(&'a Node, &'a Node)> {
        debug_assert!(self.allowed.contains(&key), "key {key} not declared");
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
            .filter(|(_, v)| v.value != Value::Null)
    }

    /// A key that must be present.
    pub fn require(&self, key: &str, what: &str, problems: &mut Problems) -> Option<&'a Node> {
        let found = self.get(key);
        if found.is_none() {
            problems.error(self.path, self.owner, format!("{what} is missing `{key}`"));
        }
        found
    }

    /// A text value; other kinds are reported.
    pub fn str(&self, key: &str, problems: &mut Problems) -> Option<(&'a str, Pos)> {
        let node = self.get(key)?;
        scalar(node, self.path, key, problems).map(|s| (s, node.pos))
    }

    pub fn require_str(
        &self,
        key: &str,
        what: &str,
        problems: &mut Problems,
    ) -> Option<(&'a str, Pos)> {
        let node = self.require(key, what, problems)?;
        scalar(node, self.path, key, problems).map(|s| (s, node.pos))
    }
}

/// The text of a scalar node, or a reported problem.
pub fn scalar<'a>(
    node: &'a Node,
    path: &Path,
    what: &str,
    problems: &mut Problems,
) -> Option<&'a str> {
    match &node.value {
        Value::Str(s) => Some(s),
        other => {
            problems.error(
                path,
                node.pos,
                format!("`{what}` must be text, found {}", other.kind()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_positions() {
        let n = parse("a: 1\nb:\n  - x\n  - +85291234567\n").unwrap();
        let m = n.as_map().unwrap();
        assert_eq!(m[0].0.as_str(), Some("a"));
        assert_eq!(m[0].1.as_str(), Some("1"));
        assert_eq!(m[1].0.pos, Pos { line: 2, column: 1 });
        let seq = m[1].1.as_seq().unwrap();
        assert_eq!(seq[1].pos, Pos { line: 4, column: 5 });
        assert_eq!(seq[1].as_str(), Some("+85291234567"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1);
        assert!(e.message.starts_with("invalid YAML"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(
            e.message
                .starts_with("document too large or too many aliases (limit "),
            "{}",
            e.message
        );
        assert!(e.pos.line > 1, "not located: {:?}", e.pos);
    }

    #[test]
    fn a_missing_key_of_a_child_block_is_reported_at_its_key() {
        let root = parse("outer:\n  # a comment\n  a: 1\n").unwrap();
        let path = Path::new("t.yaml");
        let mut problems = Problems::default();
        let top = MapView::open(&root, path, "the file", &["outer"], &mut problems).unwrap();
        let outer = top
            .child("outer", "`outer`", &["a", "b"], &mut problems)
            .unwrap();
        assert!(outer.require("b", "`outer`", &mut problems).is_none());
        let list = problems.into_sorted();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!((list[0].line, list[0].column), (1, 1));
        assert_eq!(list[0].message, "`outer` is missing `b`");
    }
}
