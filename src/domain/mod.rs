//! Pure domain types: no I/O, no clock, no async. Every type here is parsed
//! from operator input once and cannot hold an invalid value afterwards.

pub mod calendar;
pub mod codes;
pub mod contacts;
pub mod holidays;
pub mod plan;
pub mod render;
pub mod schedule;
pub mod sms;
pub mod status;

use std::fmt;
use std::str::FromStr;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

/// A department's short upper-case code, e.g. `DPO`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DepartmentCode(String);

impl DepartmentCode {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (2..=12).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(DepartmentCode(s.to_owned()))
        } else {
            Err(format!(
                "department code `{s}` must be 2 to 12 upper-case letters or digits, starting with a letter"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DepartmentCode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DepartmentCode::parse(&s)
    }
}

impl From<DepartmentCode> for String {
    fn from(c: DepartmentCode) -> String {
        c.0
    }
}

impl fmt::Display for DepartmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A contact's id, unique across the whole contacts directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContactId(String);

impl ContactId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
            });
        if ok {
            Ok(ContactId(s.to_owned()))
        } else {
            Err(format!(
                "contact id `{s}` must be 1 to 64 characters of a-z, 0-9, `-`, `_` or `.`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContactId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ContactId::parse(&s)
    }
}

impl From<ContactId> for String {
    fn from(c: ContactId) -> String {
        c.0
    }
}

impl fmt::Display for ContactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hong Kong's numbering metadata alone, written by `build.rs` from the
/// `phonenumber` crate's database: ready in well under a millisecond, where
/// the full database takes some 150 ms to build on first use.
static HK_NUMBERS: std::sync::LazyLock<phonenumber::metadata::Database> =
    std::sync::LazyLock::new(|| {
        let regions: Vec<phonenumber::metadata::loader::Metadata> = serde_json::from_slice(
            include_bytes!(concat!(env!("OUT_DIR"), "/phone_regions.json")),
        )
        .expect("build.rs writes valid metadata");
        phonenumber::metadata::Database::from(regions).expect("the crate's own patterns compile")
    });

/// The database a spelling is read with: numbers written without a country
/// code, or with Hong Kong's, need only Hong Kong's metadata.
pub fn phone_database(normalised: &str) -> &'static phonenumber::metadata::Database {
    match normalised.strip_prefix('+') {
        Some(rest) if !rest.trim_start().starts_with("852") => &phonenumber::metadata::DATABASE,
        _ => &HK_NUMBERS,
    }
}

/// A mobile number in E.164 form, e.g. `+85291234567`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Accepts the common spellings (`+852 9123 4567`, `9123 4567`,
    /// `(852) 9123-4567`); numbers without a country code are read as Hong
    /// Kong numbers. Fixed lines are refused: an SMS to one fails at 3 a.m.
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        let normalised: String = if let Some(rest) = trimmed.strip_prefix("(852)") {
            format!("+852{rest}")
        } else if let Some(rest) = trimmed.strip_prefix("00") {
            format!("+{rest}")
        } else {
            trimmed.to_owned()
        };
        let db = phone_database(&normalised);
        let number = phonenumber::parse_with(db, Some(phonenumber::country::Id::HK), &normalised)
            .map_err(|e| format!("`{input}` is not a phone number: {e}"))?;
        if !number.is_valid_with(db) {
            return Err(format!("`{input}` is not a valid phone number"));
        }
        // E.164 is the country code and the national number, nothing more;
        // the crate's formatter would first pick a national layout by
        // compiling the region's formatting patterns (some 80 ms).
        let e164 = format!("+{}{}", number.code().value(), number.national());
        match number.number_type(db) {
            phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile => Ok(PhoneE164(e164)),
            phonenumber::Type::FixedLine => Err(format!(
                "`{input}` ({e164}) is a fixed-line number; `sms` needs a mobile number"
            )),
            other => Err(format!(
                "`{input}` ({e164}) is not a mobile number ({other:?}); `sms` needs a mobile number"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `+852 ****4567`: enough to tell numbers apart in a report or a log.
    pub fn masked(&self) -> String {
        let digits = &self.0;
        let tail = &digits[digits.len().saturating_sub(4)..];
        let country = if digits.starts_with("+852") {
            "+852"
        } else {
            "+"
        };
        format!("{country} ****{tail}")
    }
}

impl TryFrom<String> for PhoneE164 {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // Stored values are already E.164; parsing again keeps the invariant.
        PhoneE164::parse(&s)
    }
}

impl From<PhoneE164> for String {
    fn from(p: PhoneE164) -> String {
        p.0
    }
}

/// A bare email address, `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        lettre::Address::from_str(trimmed)
            .map(|_| EmailAddress(trimmed.to_owned()))
            .map_err(|e| format!("`{input}` is not an email address: {e}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `t***@dpo.example`.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        }
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        EmailAddress::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

/// Parses `30s`, `15m`, `12h`, `2d` (also combined: `1h30m`).
pub fn parse_duration(input: &str) -> Result<TimeDelta, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = TimeDelta::zero();
    let mut digits = String::new();
    let mut saw_unit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("`{input}` is not a duration; write e.g. 30s, 15m, 12h or 2d"))?;
        let part = match c {
            's' => TimeDelta::try_seconds(n),
            'm' => TimeDelta::try_minutes(n),
            'h' => TimeDelta::try_hours(n),
            'd' => TimeDelta::try_days(n),
            _ => None,
        }
        .ok_or_else(|| format!("`{input}` is not a duration; write e.g. 30s, 15m, 12h or 2d"))?;
        total = total
            .checked_add(&part)
            .ok_or_else(|| format!("`{input}` is too long"))?;
        digits.clear();
        saw_unit = true;
    }
    if !digits.is_empty() || !saw_unit {
        return Err(format!(
            "`{input}` needs a unit; write e.g. 30s, 15m, 12h or 2d"
        ));
    }
    Ok(total)
}

/// Renders a duration the way operators write them: `1h30m`, `45s`, `0s`.
pub fn format_duration(d: TimeDelta) -> String {
    let mut secs = d.num_seconds();
    let sign = if secs < 0 { "-" } else { "" };
    secs = secs.abs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::from(sign);
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// The language of messages to a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "en" => Ok(Lang::En),
            "zh" => Ok(Lang::Zh),
            _ => Err(format!("language `{s}` must be `en` or `zh`")),
        }
    }
}

/// A channel a message goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Sms,
    Email,
    Webhook,
}

impl ChannelKind {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "sms" => Ok(ChannelKind::Sms),
            "email" => Ok(ChannelKind::Email),
            "webhook" => Ok(ChannelKind::Webhook),
            _ => Err(format!("channel `{s}` must be sms, email or webhook")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hong_kong_mobiles_in_common_spellings_become_e164() {
        for s in [
            "+852 9123 4567",
            "+85291234567",
            "9123 4567",
            "(852) 9123 4567",
            "+852-9123-4567",
        ] {
            assert_eq!(PhoneE164::parse(s).unwrap().as_str(), "+85291234567", "{s}");
        }
    }

    /// The verdict of the `phonenumber` crate used as its documentation
    /// shows, with its full database and its own E.164 formatter.
    fn full_database_verdict(input: &str) -> Option<String> {
        let trimmed = input.trim();
        let normalised = match trimmed.strip_prefix("00") {
            Some(rest) => format!("+{rest}"),
            None => trimmed.replace("(852)", "+852"),
        };
        let n = phonenumber::parse(Some(phonenumber::country::Id::HK), &normalised).ok()?;
        let mobile = matches!(
            n.number_type(&phonenumber::metadata::DATABASE),
            phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile
        );
        (n.is_valid() && mobile).then(|| n.format().mode(phonenumber::Mode::E164).to_string())
    }

    #[test]
    fn the_small_hong_kong_database_agrees_with_the_full_one() {
        // Every 4-digit block of the 8-digit plan, in the spellings operators
        // use, plus numbers of other regions (which take the full database).
        let mut inputs = Vec::new();
        for block in 0..10_000u32 {
            let tail = (block * 7919) % 10_000;
            inputs.push(format!("{block:04}{tail:04}"));
            if block % 7 == 0 {
                inputs.push(format!("+852 {block:04} {tail:04}"));
                inputs.push(format!("(852) {block:04}-{tail:04}"));
                inputs.push(format!("00852{block:04}{tail:04}"));
                inputs.push(format!("852{block:04}{tail:04}"));
            }
        }
        for other in [
            "+44 7911 123456",
            "+853 6612 3456",
            "+86 139 1234 5678",
            "0044 7911 123456",
            "+1 415 555 2671",
            "+852 999",
            "999",
            "+852 9123 45678",
            "9123 456",
            "",
            "+",
            "not a number",
        ] {
            inputs.push(other.to_owned());
        }
        let mut mobiles = 0;
        for input in &inputs {
            let ours = PhoneE164::parse(input).ok().map(|p| p.0);
            assert_eq!(ours, full_database_verdict(input), "`{input}`");
            mobiles += usize::from(ours.is_some());
        }
        // The comparison covered both answers, not only refusals.
        assert!(
            mobiles > 1_000,
            "{mobiles} of {} inputs were mobiles",
            inputs.len()
        );
    }

    #[test]
    fn fixed_lines_are_refused_with_a_reason() {
        let e = PhoneE164::parse("+852 2123 4567").unwrap_err();
        assert!(e.contains("fixed-line"), "{e}");
        assert!(PhoneE164::parse("12345").is_err());
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), TimeDelta::seconds(30));
        assert_eq!(parse_duration("15m").unwrap(), TimeDelta::minutes(15));
        assert_eq!(parse_duration("1h30m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(parse_duration("2d").unwrap(), TimeDelta::days(2));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(TimeDelta::minutes(90)), "1h30m");
    }

    #[test]
    fn addresses_are_masked_for_reports() {
        assert_eq!(
            PhoneE164::parse("91234567").unwrap().masked(),
            "+852 ****4567"
        );
        assert_eq!(
            EmailAddress::parse("tm.chan@dpo.example").unwrap().masked(),
            "t***@dpo.example"
        );
    }
}
