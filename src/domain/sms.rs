//! SMS length in segments (PRODUCT.md §4): GSM-7 with the GSM 03.38
//! extension table (each extension character costs two septets), else
//! UCS-2. Providers bill and rate-limit by segment.

use serde::Serialize;

/// GSM 03.38 basic character set.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters reached through the escape: two septets each.
const GSM_EXTENSION: &str = "\u{c}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// How a text travels as SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub count: usize,
}

/// Counts the segments of `text`: GSM-7 fits 160 septets in one segment and
/// 153 per segment when concatenated; UCS-2 fits 70 and 67 UTF-16 units.
pub fn segments(text: &str) -> Segments {
    let mut septets = 0;
    let mut gsm = true;
    for c in text.chars() {
        if GSM_BASIC.contains(c) && c != '\u{1b}' {
            septets += 1;
        } else if GSM_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, multi) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    let count = match units {
        0 => 1,
        n if n <= single => 1,
        n => n.div_ceil(multi),
    };
    Segments {
        encoding,
        units,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_limits_of_one_segment() {
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        assert_eq!(segments(&"演".repeat(70)).count, 1);
        assert_eq!(segments(&"演".repeat(71)).count, 2);
        assert_eq!(segments(&"演".repeat(134)).count, 2);
        assert_eq!(segments(&"演".repeat(135)).count, 3);
        assert_eq!(segments("").count, 1);
    }

    #[test]
    fn brackets_cost_two_septets_and_chinese_forces_ucs2() {
        // The English marker's brackets are extension characters.
        let s = segments("[EXERCISE]");
        assert_eq!((s.encoding, s.units), (Encoding::Gsm7, 12));
        assert_eq!(segments(&format!("[{}]", "a".repeat(157))).count, 2);
        assert_eq!(segments(&format!("[{}]", "a".repeat(156))).count, 1);
        let z = segments("[演習] 收到");
        assert_eq!(z.encoding, Encoding::Ucs2);
        assert_eq!(z.units, 7);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("😀").units, 2);
    }

    proptest! {
        #[test]
        fn gsm_text_is_counted_by_septets(text in "[A-Za-z0-9 .,:;!?@$()\\[\\]{}~^|€]{0,500}") {
            let ext = text.chars().filter(|c| "[]{}~^|€\\".contains(*c)).count();
            let septets = text.chars().count() + ext;
            let s = segments(&text);
            prop_assert_eq!(s.encoding, Encoding::Gsm7);
            prop_assert_eq!(s.units, septets);
            let expected = if septets <= 160 { 1 } else { septets.div_ceil(153) };
            prop_assert_eq!(s.count, expected);
            // Every segment but the last is full: no fewer segments would do.
            if s.count > 1 {
                prop_assert!(septets > 153 * (s.count - 1));
            }
        }

        #[test]
        fn any_non_gsm_character_makes_the_whole_text_ucs2(
            head in "[a-z]{0,100}", tail in "[a-z]{0,100}", c in "[演習收到確認é]"
        ) {
            let text = format!("{head}{c}{tail}");
            let s = segments(&text);
            if c == "é" {
                prop_assert_eq!(s.encoding, Encoding::Gsm7);
            } else {
                prop_assert_eq!(s.encoding, Encoding::Ucs2);
                let units = text.encode_utf16().count();
                prop_assert_eq!(s.count, if units <= 70 { 1 } else { units.div_ceil(67) });
            }
        }
    }
}
