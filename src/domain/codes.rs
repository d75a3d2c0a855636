//! Ack codes (read out over the phone, typed into an SMS reply) and link
//! tokens (carried in email links and webhooks).

use std::fmt;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Letters and digits that cannot be mistaken for each other when read at
/// 3 a.m.: no 0/O and no 1/I/L.
pub const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
pub const CODE_LEN: usize = 5;

/// A 5-character ack code, e.g. `7KQ4M`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AckCode(String);

impl AckCode {
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let code = (0..CODE_LEN)
            .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
            .collect();
        AckCode(code)
    }

    /// Reads a code as a person might type it: case and surrounding space do
    /// not matter.
    pub fn parse(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        if up.len() == CODE_LEN && up.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
            Ok(AckCode(up))
        } else {
            Err(format!(
                "`{s}` is not an ack code: codes are {CODE_LEN} characters of {}",
                String::from_utf8_lossy(CODE_ALPHABET)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AckCode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        AckCode::parse(&s)
    }
}

impl From<AckCode> for String {
    fn from(c: AckCode) -> String {
        c.0
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 128-bit random link token, hex-encoded. Only its SHA-256 is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(String);

impl LinkToken {
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes);
        LinkToken(hex::encode(bytes))
    }

    /// Accepts only the exact shape we issue, so a junk path segment never
    /// reaches the store.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| LinkToken(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token in a confirm link (`…/a/<token>`) inside a message text.
    pub fn find_in(text: &str) -> Option<Self> {
        let start = text.find("/a/")? + 3;
        let candidate: String = text[start..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        Self::parse(&candidate)
    }

    /// What the store keeps: a leaked database does not leak live links.
    pub fn digest(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }
}

impl fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkToken({}…)", &self.0[..4])
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn codes_avoid_look_alike_characters() {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2_000 {
            let c = AckCode::generate(&mut rng);
            assert_eq!(c.as_str().len(), 5);
            assert!(!c.as_str().contains(['0', 'O', '1', 'I', 'L']), "{c}");
            assert_eq!(AckCode::parse(&c.as_str().to_lowercase()).unwrap(), c);
        }
        assert!(AckCode::parse("AB0CD").is_err());
    }

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(7);
        let t = LinkToken::generate(&mut rng);
        assert_eq!(LinkToken::parse(t.as_str()), Some(t.clone()));
        assert_eq!(t.digest().len(), 64);
        assert!(LinkToken::parse("../../etc/passwd").is_none());
        let body = format!("open http://x/a/{} and press Confirm", t.as_str());
        assert_eq!(LinkToken::find_in(&body), Some(t.clone()));
        assert!(LinkToken::find_in("no link here").is_none());
        assert!(LinkToken::parse(&"A".repeat(32)).is_none());
    }
}
