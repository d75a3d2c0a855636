//! Office hours: which local times count as "in hours" for a department.

use chrono::{Datelike, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};

use crate::yaml::{Node, Problems, scalar};

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Office ranges per weekday (Monday first). Gaps between ranges on one day
/// still count as office time for bucketing (PRODUCT.md §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficeHours {
    pub days: [Vec<(NaiveTime, NaiveTime)>; 7],
}

impl Default for OfficeHours {
    /// Mon–Fri 09:00–18:00, the Hong Kong government working default.
    fn default() -> Self {
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default();
        let six = NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default();
        let mut days: [Vec<(NaiveTime, NaiveTime)>; 7] = Default::default();
        for d in days.iter_mut().take(5) {
            d.push((nine, six));
        }
        OfficeHours { days }
    }
}

impl OfficeHours {
    /// Reads `{ mon-fri: "09:00-13:00,14:00-18:00", sat: "09:00-12:00" }`.
    pub fn from_node(node: &Node, path: &std::path::Path, problems: &mut Problems) -> Option<Self> {
        let Some(entries) = node.as_map() else {
            problems.error(
                path,
                node.pos,
                "`office_hours` must be a mapping like { mon-fri: \"09:00-18:00\" }",
            );
            return None;
        };
        let mut days: [Vec<(NaiveTime, NaiveTime)>; 7] = Default::default();
        let mut ok = true;
        for (k, v) in entries {
            let Some(spec) = scalar(k, path, "office_hours", problems) else {
                ok = false;
                continue;
            };
            let which = match parse_days(spec) {
                Ok(w) => w,
                Err(e) => {
                    problems.error(path, k.pos, e);
                    ok = false;
                    continue;
                }
            };
            let Some(ranges_text) = scalar(v, path, spec, problems) else {
                ok = false;
                continue;
            };
            match parse_ranges(ranges_text) {
                Ok(ranges) => {
                    for d in which {
                        if !days[d].is_empty() {
                            problems.error(
                                path,
                                k.pos,
                                format!("{} is given office hours twice", DAY_NAMES[d]),
                            );
                            ok = false;
                        }
                        days[d] = ranges.clone();
                    }
                }
                Err(e) => {
                    problems.error(path, v.pos, e);
                    ok = false;
                }
            }
        }
        ok.then_some(OfficeHours { days })
    }

    /// Whether a local time falls inside office hours, counting gaps between
    /// a day's ranges as office time.
    pub fn covers(&self, local: NaiveDateTime) -> bool {
        let day = &self.days[local.weekday().num_days_from_monday() as usize];
        match (day.first(), day.last()) {
            (Some(first), Some(last)) => local.time() >= first.0 && local.time() < last.1,
            _ => false,
        }
    }
}

fn parse_days(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    let bad = || format!("`{spec}` is not a day list; write e.g. mon-fri, sat, or mon,wed,fri");
    for part in spec.split(',') {
        let part = part.trim().to_ascii_lowercase();
        let index = |name: &str| DAY_NAMES.iter().position(|d| *d == name);
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a).ok_or_else(bad)?, index(b).ok_or_else(bad)?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(index(&part).ok_or_else(bad)?),
        }
    }
    Ok(out)
}

fn parse_ranges(text: &str) -> Result<Vec<(NaiveTime, NaiveTime)>, String> {
    let bad =
        || format!("`{text}` is not a list of time ranges; write e.g. \"09:00-13:00,14:00-18:00\"");
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let (a, b) = part.trim().split_once('-').ok_or_else(bad)?;
        let a = NaiveTime::parse_from_str(a.trim(), "%H:%M").map_err(|_| bad())?;
        let b = NaiveTime::parse_from_str(b.trim(), "%H:%M").map_err(|_| bad())?;
        if a >= b {
            return Err(format!("range `{}` ends before it starts", part.trim()));
        }
        if let Some(&(_, prev_end)) = ranges.last()
            && a < prev_end
        {
            return Err(format!("ranges in `{text}` overlap or are out of order"));
        }
        ranges.push((a, b));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn split_ranges_count_the_lunch_gap_as_office() {
        let node = parse("mon-fri: \"09:00-13:00,14:00-18:00\"").unwrap();
        let mut p = Problems::default();
        let oh = OfficeHours::from_node(&node, std::path::Path::new("x"), &mut p).unwrap();
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        assert!(oh.covers(at("2027-03-01 13:30")));
        assert!(!oh.covers(at("2027-03-01 18:00")));
        assert!(!oh.covers(at("2027-02-27 10:00")), "Saturday");
    }

    #[test]
    fn bad_day_lists_and_ranges_are_reported() {
        let node = parse("mon-fry: \"09:00-18:00\"\nsat: \"18:00-09:00\"").unwrap();
        let mut p = Problems::default();
        assert!(OfficeHours::from_node(&node, std::path::Path::new("x"), &mut p).is_none());
        assert_eq!(p.error_count(), 2);
    }
}
