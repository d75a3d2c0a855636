//! General holidays: the shipped Hong Kong list, or a file in one of the
//! 1823 feed's formats (`.ics`, or `.json` with its UTF-8 BOM).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::yaml::{Pos, Problems};

/// One general holiday.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holiday {
    pub date: NaiveDate,
    pub name: String,
    /// Not yet checked against an official list (PRODUCT.md: mark unverified
    /// dates provisional in the data and in `plan`).
    pub provisional: bool,
}

/// The holidays of a calendar and the years it speaks for: a date in a
/// year outside `years` is "uncovered" (its holidays are unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holidays {
    pub days: BTreeMap<NaiveDate, Holiday>,
    pub years: BTreeSet<i32>,
    /// Where they came from, for `plan` and reports.
    pub source: String,
}

const HK: &str = include_str!("hk-holidays.yaml");

impl Holidays {
    /// The shipped Hong Kong general holidays.
    pub fn hk() -> Holidays {
        parse_shipped(HK)
    }

    pub fn get(&self, date: NaiveDate) -> Option<&Holiday> {
        self.days.get(&date)
    }

    pub fn covers(&self, date: NaiveDate) -> bool {
        self.years.contains(&date.year())
    }

    /// Reads a holiday file: `.ics` (iCalendar VEVENTs with all-day
    /// `DTSTART`/`DTEND`, `DTEND` exclusive) or `.json` (the 1823 feed's
    /// jCal-like shape, with or without a UTF-8 BOM). Every problem is
    /// reported at its line.
    pub fn load_file(path: &Path, problems: &mut Problems) -> Option<Holidays> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                problems.error(path, Pos::START, format!("cannot read holiday file: {e}"));
                return None;
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            problems.error(path, Pos::START, "holiday file is not UTF-8");
            return None;
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let before = problems.error_count();
        let events = match ext.as_deref() {
            Some("ics") => parse_ics(text, path, problems),
            Some("json") => parse_1823_json(text, path, problems),
            _ => {
                problems.error(
                    path,
                    Pos::START,
                    "a holiday file must end in .ics or .json (the 1823 feed's formats)",
                );
                return None;
            }
        };
        if problems.error_count() > before {
            return None;
        }
        if events.is_empty() {
            problems.error(path, Pos::START, "the holiday file lists no holidays");
            return None;
        }
        Some(from_events(events, path.display().to_string()))
    }
}

/// An all-day event: `[start, end)` in local dates.
struct Event {
    start: NaiveDate,
    end: NaiveDate,
    name: String,
}

fn from_events(events: Vec<Event>, source: String) -> Holidays {
    let mut h = Holidays {
        source,
        ..Holidays::default()
    };
    for e in events {
        let mut d = e.start;
        while d < e.end {
            h.years.insert(d.year());
            h.days.entry(d).or_insert_with(|| Holiday {
                date: d,
                name: e.name.clone(),
                provisional: false,
            });
            d = d.succ_opt().unwrap_or(e.end);
        }
    }
    // A feed covers whole years: every year from its first holiday to its last.
    if let (Some(&first), Some(&last)) = (h.years.first(), h.years.last()) {
        h.years = (first..=last).collect();
    }
    h
}

fn ical_date(value: &str) -> Option<NaiveDate> {
    // All-day values are YYYYMMDD; a date-time keeps its date part.
    let digits = value.get(..8)?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

fn parse_ics(text: &str, path: &Path, problems: &mut Problems) -> Vec<Event> {
    // Unfold continuation lines (RFC 5545 §3.1), remembering where each began.
    let mut lines: Vec<(u64, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim_end_matches('\r');
        match (raw.strip_prefix([' ', '\t']), lines.last_mut()) {
            (Some(cont), Some((_, last))) => last.push_str(cont),
            _ => lines.push((i as u64 + 1, raw.to_owned())),
        }
    }
    let at = |line: u64| Pos { line, column: 1 };
    let mut events = Vec::new();
    let mut current: Option<(u64, Option<NaiveDate>, Option<NaiveDate>, String)> = None;
    for (line, content) in lines {
        let Some((head, value)) = content.split_once(':') else {
            continue;
        };
        let name = head
            .split(';')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match (name.as_str(), current.as_mut()) {
            ("BEGIN", _) if value.eq_ignore_ascii_case("VEVENT") => {
                current = Some((line, None, None, String::new()));
            }
            ("END", Some(_)) if value.eq_ignore_ascii_case("VEVENT") => {
                let Some((begin, start, end, summary)) = current.take() else {
                    continue;
                };
                let Some(start) = start else {
                    problems.error(path, at(begin), "VEVENT without a DTSTART date");
                    continue;
                };
                let end = end.unwrap_or_else(|| start.succ_opt().unwrap_or(start));
                if end <= start {
                    problems.error(
                        path,
                        at(begin),
                        format!("VEVENT `{summary}` ends ({end}) before it starts ({start}); DTEND is exclusive"),
                    );
                    continue;
                }
                events.push(Event {
                    start,
                    end,
                    name: unescape_ics(&summary),
                });
            }
            ("DTSTART" | "DTEND", Some(ev)) => match ical_date(value.trim()) {
                Some(d) if name == "DTSTART" => ev.1 = Some(d),
                Some(d) => ev.2 = Some(d),
                None => problems.error(
                    path,
                    at(line),
                    format!("{name} `{value}` is not a date (YYYYMMDD)"),
                ),
            },
            ("SUMMARY", Some(ev)) => ev.3 = value.trim().to_owned(),
            _ => {}
        }
    }
    if let Some((begin, ..)) = current {
        problems.error(path, at(begin), "VEVENT is never closed by END:VEVENT");
    }
    events
}

fn unescape_ics(s: &str) -> String {
    s.replace("\\,", ",")
        .replace("\\;", ";")
        .replace("\\n", " ")
        .replace("\\N", " ")
        .replace("\\\\", "\\")
}

fn parse_1823_json(text: &str, path: &Path, problems: &mut Problems) -> Vec<Event> {
    let doc: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            problems.error(
                path,
                Pos {
                    line: e.line() as u64,
                    column: e.column() as u64,
                },
                format!("invalid JSON: {e}"),
            );
            return Vec::new();
        }
    };
    let Some(vevents) = doc
        .get("vcalendar")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
        .and_then(|c| c.get("vevent"))
        .and_then(|v| v.as_array())
    else {
        problems.error(
            path,
            Pos::START,
            "not the 1823 holiday feed's shape: expected {\"vcalendar\": [{\"vevent\": [...]}]}",
        );
        return Vec::new();
    };
    let mut events = Vec::new();
    for (i, ev) in vevents.iter().enumerate() {
        // serde_json keeps no positions; name the event so it can be found.
        let summary = ev
            .get("summary")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned();
        let label = format!("vevent[{i}] `{summary}`");
        let date = |key: &str| -> Result<Option<NaiveDate>, String> {
            let Some(v) = ev.get(key) else {
                return Ok(None);
            };
            // ["20250101", {"value": "DATE"}] or a bare "20250101".
            let s = v
                .as_array()
                .and_then(|a| a.first())
                .unwrap_or(v)
                .as_str()
                .ok_or_else(|| format!("{label}: {key} is not a date string"))?;
            ical_date(s)
                .map(Some)
                .ok_or_else(|| format!("{label}: {key} `{s}` is not a date (YYYYMMDD)"))
        };
        match (date("dtstart"), date("dtend")) {
            (Ok(Some(start)), Ok(end)) => {
                let end = end.unwrap_or_else(|| start.succ_opt().unwrap_or(start));
                if end <= start {
                    problems.error(
                        path,
                        Pos::START,
                        format!(
                            "{label}: dtend {end} is not after dtstart {start} (dtend is exclusive)"
                        ),
                    );
                } else {
                    events.push(Event {
                        start,
                        end,
                        name: summary,
                    });
                }
            }
            (Ok(None), _) => {
                problems.error(path, Pos::START, format!("{label}: no dtstart"));
            }
            (Err(e), _) | (_, Err(e)) => problems.error(path, Pos::START, e),
        }
    }
    events
}

/// The shipped list is part of the program: a mistake in it is a bug that
/// the tests below catch, so it is read without a problem list.
fn parse_shipped(text: &str) -> Holidays {
    let mut h = Holidays {
        source: "Hong Kong general holidays shipped with rollcall".into(),
        ..Holidays::default()
    };
    let mut provisional_years = BTreeSet::new();
    let mut section = "";
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_suffix(':') {
            section = if s == "years" || s == "holidays" {
                s
            } else {
                ""
            };
            continue;
        }
        match section {
            "years" => {
                if let Some((year, status)) = line.split_once(':')
                    && let Ok(year) = year.trim().parse::<i32>()
                {
                    h.years.insert(year);
                    if status.trim() == "provisional" {
                        provisional_years.insert(year);
                    }
                }
            }
            "holidays" => {
                let field = |key: &str| {
                    line.split(&format!("{key}: "))
                        .nth(1)
                        .map(|rest| rest.split([',', '}']).next().unwrap_or_default().trim())
                };
                if let (Some(date), Some(en)) = (field("date"), field("en"))
                    && let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d")
                {
                    h.days.insert(
                        date,
                        Holiday {
                            date,
                            name: en.to_owned(),
                            provisional: provisional_years.contains(&date.year()),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_shipped_list_has_seventeen_general_holidays_a_year() {
        let hk = Holidays::hk();
        for year in [2026, 2027] {
            let n = hk.days.keys().filter(|k| k.year() == year).count();
            assert_eq!(n, 17, "{year}");
            assert!(hk.covers(d(&format!("{year}-06-30"))));
        }
        assert!(!hk.covers(d("2028-01-03")));
        let shipped_lines = HK
            .lines()
            .filter(|l| l.trim_start().starts_with("- { date:"))
            .count();
        assert_eq!(hk.days.len(), shipped_lines, "every line is read");
    }

    #[test]
    fn twenty_twenty_seven_is_provisional_and_twenty_twenty_six_is_not() {
        let hk = Holidays::hk();
        let easter = hk.get(d("2027-03-29")).unwrap();
        assert_eq!(easter.name, "Easter Monday");
        assert!(easter.provisional);
        let lny = hk.get(d("2026-02-17")).unwrap();
        assert_eq!(lny.name, "Lunar New Year's Day");
        assert!(!lny.provisional);
        assert!(hk.get(d("2027-03-01")).is_none());
    }

    fn all(p: &Problems) -> String {
        p.iter().map(|x| format!("{x}\n")).collect()
    }

    fn load(name: &str, body: &[u8]) -> (Option<Holidays>, Problems) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let mut p = Problems::default();
        (Holidays::load_file(&path, &mut p), p)
    }

    #[test]
    fn the_1823_json_shape_with_its_bom_is_read_and_dtend_is_exclusive() {
        let json = "\u{feff}{\"vcalendar\":[{\"prodid\":\"-//1823 Call Centre, HKSAR Government//Hong Kong Public Holidays//EN\",\"version\":\"2.0\",\"calscale\":\"GREGORIAN\",\"x-wr-timezone\":\"Asia/Hong_Kong\",\"vevent\":[\
            {\"dtstart\":[\"20250101\",{\"value\":\"DATE\"}],\"dtend\":[\"20250102\",{\"value\":\"DATE\"}],\"transp\":\"TRANSPARENT\",\"uid\":\"20250101\",\"summary\":\"The first day of January\"},\
            {\"dtstart\":[\"20250129\",{\"value\":\"DATE\"}],\"dtend\":[\"20250201\",{\"value\":\"DATE\"}],\"uid\":\"20250129\",\"summary\":\"Lunar New Year\"}]}]}";
        let (h, p) = load("en.json", json.as_bytes());
        assert_eq!(p.error_count(), 0, "{p:?}");
        let h = h.unwrap();
        assert_eq!(
            h.get(d("2025-01-01")).unwrap().name,
            "The first day of January"
        );
        assert!(h.get(d("2025-01-02")).is_none(), "DTEND is exclusive");
        assert!(h.get(d("2025-01-31")).is_some());
        assert!(h.get(d("2025-02-01")).is_none());
        assert!(h.covers(d("2025-12-31")));
        assert!(!h.covers(d("2026-01-01")));
    }

    #[test]
    fn an_ics_feed_is_read_with_folded_lines() {
        let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270326\r\nDTEND;VALUE=DATE:20270328\r\nSUMMARY:Good Friday and\r\n  the day following\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let (h, p) = load("en.ics", ics.as_bytes());
        assert_eq!(p.error_count(), 0, "{p:?}");
        let h = h.unwrap();
        assert_eq!(
            h.get(d("2027-03-27")).unwrap().name,
            "Good Friday and the day following"
        );
        assert!(h.get(d("2027-03-28")).is_none());
    }

    #[test]
    fn bad_holiday_files_are_reported_where_they_are_wrong() {
        let ics = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;VALUE=DATE:2027-03-26\nSUMMARY:x\nEND:VEVENT\nBEGIN:VEVENT\nDTSTART;VALUE=DATE:20270326\n";
        let (h, p) = load("bad.ics", ics.as_bytes());
        assert!(h.is_none());
        let text = all(&p);
        assert!(
            text.contains("bad.ics:3:1: DTSTART `2027-03-26` is not a date"),
            "{text}"
        );
        assert!(
            text.contains("bad.ics:6:1: VEVENT is never closed"),
            "{text}"
        );

        let (h, p) = load("bad.json", b"{\"vcalendar\": [}");
        assert!(h.is_none());
        assert!(all(&p).contains("bad.json:1:"), "{}", all(&p));
        let (h, p) = load("h.txt", b"whatever");
        assert!(h.is_none());
        assert!(all(&p).contains(".ics or .json"));
        let (h, p) = load("garbage.json", &[0xff, 0xfe, 0x00]);
        assert!(h.is_none());
        assert!(all(&p).contains("not UTF-8"));
    }
}
