//! Twilio's `X-Twilio-Signature` on the webhooks it posts (delivery receipts,
//! inbound SMS): `base64(HMAC-SHA1(auth token, url + name + value …))`, where
//! `url` is the full URL Twilio requested (scheme, host, port if any, path and
//! raw query string) and the form parameters follow sorted by name, each
//! distinct value of a repeated name in sorted order, with no separators.
//!
//! Twilio's own validator (twilio-python `RequestValidator`) is the oracle:
//! the published test vector is a unit test here, and the integration tests
//! have the Python library sign callbacks that rollcall must accept.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use hmac::{KeyInit, Mac};

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// The request header Twilio puts the signature in.
pub const HEADER: &str = "x-twilio-signature";

/// The signature Twilio sends with a form POST of `params` to `url`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `signature` is Twilio's for a form POST of `params` to `url` under
/// any of `auth_tokens` (the current token and, during a rotation, the
/// previous one). Like Twilio's validator it accepts the URL signed with or
/// without its port, because Twilio's own signing is inconsistent about
/// default ports. The comparison is in constant time.
pub fn verify(
    auth_tokens: &[&str],
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let urls = url_variants(url);
    // Every candidate is checked, so the time taken does not say which one
    // came close.
    let mut valid = false;
    for token in auth_tokens {
        for candidate in &urls {
            valid |= mac(token, candidate, params).verify_slice(&claimed).is_ok();
        }
    }
    valid
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha1 as KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(url.as_bytes());
    let mut sorted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        sorted.entry(name).or_default().insert(value);
    }
    // Byte order of UTF-8 is code-point order, which is how Python sorts.
    for (name, values) in sorted {
        for value in values {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
    }
    mac
}

/// `url` as given, without its port if it has one, and with the scheme's
/// default port if it has none: the forms Twilio's validator accepts.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    let port_at = host_port
        .rfind(':')
        .filter(|&i| !host_port[i..].contains(']'))
        .filter(|&i| {
            let digits = &host_port[i + 1..];
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        });
    match port_at {
        Some(i) => {
            let without = &authority[..host_start + i];
            out.push(format!("{scheme}://{without}{tail}"));
        }
        None => {
            let port = if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            out.push(format!("{scheme}://{authority}:{port}{tail}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn published_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ])
    }

    const PUBLISHED_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn the_signature_matches_twilios_published_test_vector() {
        // Twilio's documented example (reference/ecosystem.md §5), which
        // twilio-python 9.13.0 `RequestValidator.compute_signature` also gives.
        assert_eq!(
            sign("12345", PUBLISHED_URL, &published_params()),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        // The order parameters arrive in does not matter.
        let mut shuffled = published_params();
        shuffled.reverse();
        assert_eq!(
            sign("12345", PUBLISHED_URL, &shuffled),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn the_published_vector_verifies_with_either_token_of_a_rotation() {
        let p = published_params();
        let sig = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(verify(&["12345"], PUBLISHED_URL, &p, sig));
        assert!(verify(&["new-token", "12345"], PUBLISHED_URL, &p, sig));
        assert!(!verify(&["new-token"], PUBLISHED_URL, &p, sig));
        assert!(!verify(&[], PUBLISHED_URL, &p, sig));
    }

    #[test]
    fn a_changed_url_parameter_or_signature_fails() {
        let p = published_params();
        let sig = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(!verify(
            &["12345"],
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &p,
            sig
        ));
        let mut tampered = p.clone();
        tampered[2].1 = "1235".into();
        assert!(!verify(&["12345"], PUBLISHED_URL, &tampered, sig));
        let mut extra = p.clone();
        extra.push(("Extra".into(), String::new()));
        assert!(!verify(&["12345"], PUBLISHED_URL, &extra, sig));
        assert!(!verify(
            &["12345"],
            PUBLISHED_URL,
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ"
        ));
        assert!(!verify(&["12345"], PUBLISHED_URL, &p, "not base64!"));
        assert!(!verify(&["12345"], PUBLISHED_URL, &p, ""));
    }

    #[test]
    fn a_url_signed_with_or_without_its_default_port_verifies() {
        let p = published_params();
        let with_port = sign(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &p,
        );
        assert!(verify(&["12345"], PUBLISHED_URL, &p, &with_port));
        let without = sign("12345", PUBLISHED_URL, &p);
        assert!(verify(
            &["12345"],
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &p,
            &without
        ));
        assert_eq!(
            url_variants("http://127.0.0.1:8080/hooks/sms/p/status"),
            vec![
                "http://127.0.0.1:8080/hooks/sms/p/status".to_owned(),
                "http://127.0.0.1/hooks/sms/p/status".to_owned()
            ]
        );
        assert_eq!(
            url_variants("http://[::1]/x?y=1"),
            vec![
                "http://[::1]/x?y=1".to_owned(),
                "http://[::1]:80/x?y=1".to_owned()
            ]
        );
        assert_eq!(
            url_variants("https://u:p@h.example:8443"),
            vec![
                "https://u:p@h.example:8443".to_owned(),
                "https://u:p@h.example".to_owned()
            ]
        );
    }

    #[test]
    fn repeated_names_sign_each_distinct_value_in_sorted_order() {
        // twilio-python: `for value in sorted(set(values)): s += name + value`.
        let p = params(&[("b", "2"), ("a", "z"), ("a", "y"), ("a", "z")]);
        let expected = {
            let mut mac = <HmacSha1 as KeyInit>::new_from_slice(b"t").unwrap();
            mac.update(b"https://x.example/ayazb2");
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        };
        assert_eq!(sign("t", "https://x.example/", &p), expected);
    }
}
