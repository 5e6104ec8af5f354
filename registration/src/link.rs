//! Link codes: how a new device joins an account without an SMS.
//!
//! The primary device asks for a code and shows it (as text, or as a QR
//! code of the same text); the new device sends it back with its name and
//! gets a credential of its own. A code is 24 characters of Crockford's
//! base32 (`0-9`, `A-Z` without `I`, `L`, `O`, `U`), shown in six groups of
//! four: `K3F9-Q2ZD-7HXM-4RTA-PW8N-C6JB`. The first two groups are the
//! code's **id** (40 bits, random), the other four its **secret** (80 bits
//! from the OS CSPRNG).
//!
//! The id is what lets a few wrong attempts kill a code: the store finds
//! the code by its id and counts a wrong secret against that code. Without
//! an id part, a guess would name no code in particular and could only be
//! limited per client address. Only a hash of the secret is stored, bound
//! to the id; 80 bits are far beyond guessing even from a stolen database.
//!
//! Parsing is lenient about what people type: case, spaces and dashes are
//! ignored, and `I`/`L` read as `1`, `O` as `0` (Crockford's rule). Every
//! character of both alphabets is allowed in a QR code's alphanumeric mode.

use std::fmt;

use rand::Rng;
use rand::rngs::OsRng;
use ring::digest;

/// Crockford's base32 alphabet: no `I`, `L`, `O`, `U`, so that a code read
/// aloud or copied by hand is not misread.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of the id part: 40 bits, so that ids of live codes (one per
/// account at most, for ten minutes) practically never collide; one that
/// does is drawn again.
pub const ID_CHARS: usize = 8;

/// Characters of the secret part: 80 bits.
pub const SECRET_CHARS: usize = 16;

/// Characters per group in the displayed form.
const GROUP: usize = 4;

/// Input longer than this is not a code (the displayed form is 29 bytes;
/// this leaves room for spaces), refused before any other work.
const MAX_INPUT: usize = 64;

/// A link code, parsed or freshly made. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    id: String,
    secret: String,
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl LinkCode {
    /// A new random code.
    pub fn generate() -> Self {
        let draw = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
                .collect()
        };
        Self {
            id: draw(ID_CHARS),
            secret: draw(SECRET_CHARS),
        }
    }

    /// The code in `text` as a person may have typed it; `None` if it
    /// cannot be a code (wrong length or characters).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_INPUT {
            return None;
        }
        let mut chars = String::with_capacity(ID_CHARS + SECRET_CHARS);
        for c in text.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'I' | 'L' => '1',
                'O' => '0',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => return None,
            };
            chars.push(c);
        }
        if chars.len() != ID_CHARS + SECRET_CHARS {
            return None;
        }
        let secret = chars.split_off(ID_CHARS);
        Some(Self { id: chars, secret })
    }

    /// The id part, under which the store keeps the code.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the store keeps instead of the secret: SHA-256 over a label,
    /// the id and the secret, so that a hash is only good for its own id.
    pub fn secret_hash(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"parley-link-code:");
        ctx.update(self.id.as_bytes());
        ctx.update(b":");
        ctx.update(self.secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The form shown to people and put in QR codes: groups of four, joined
    /// by dashes.
    pub fn display(&self) -> String {
        let all = format!("{}{}", self.id, self.secret);
        all.as_bytes()
            .chunks(GROUP)
            .map(|group| std::str::from_utf8(group).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// Longest device name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// A device name is 1 to 64 bytes of printable text: no control
/// characters (they would garble the app's device list, or a log), and not
/// only spaces.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && !name.chars().any(char::is_control)
        && !name.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_displayed_form() {
        for _ in 0..100 {
            let code = LinkCode::generate();
            let shown = code.display();
            assert_eq!(shown.len(), 29, "{shown}");
            assert_eq!(shown.split('-').count(), 6);
            assert_eq!(LinkCode::parse(&shown), Some(code.clone()));
            // As typed by a person: lower case, spaces instead of dashes.
            let typed = shown.to_lowercase().replace('-', " ");
            assert_eq!(LinkCode::parse(&typed), Some(code));
        }
    }

    #[test]
    fn lookalikes_are_read_as_digits() {
        let code = LinkCode::parse("0000-1111-0000-0000-0000-0000").expect("code");
        assert_eq!(LinkCode::parse("oooo-ilIL-OOOO-0000-0000-0000"), Some(code));
    }

    #[test]
    fn what_cannot_be_a_code_is_refused() {
        for text in [
            "",
            "0000-0000-0000-0000-0000-000",
            "0000-0000-0000-0000-0000-00000",
            "0000-0000-0000-0000-0000-000U",
            "0000-0000-0000-0000-0000-000!",
            "0000-0000-0000-0000-0000-000é",
            &"0".repeat(100),
        ] {
            assert_eq!(LinkCode::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn codes_vary_and_hashes_bind_the_id() {
        let codes: std::collections::HashSet<String> =
            (0..100).map(|_| LinkCode::generate().display()).collect();
        assert_eq!(codes.len(), 100);
        let a = LinkCode::parse("AAAA-AAAA-BBBB-BBBB-BBBB-BBBB").expect("code");
        let b = LinkCode::parse("AAAA-AAAB-BBBB-BBBB-BBBB-BBBB").expect("code");
        assert_ne!(a.secret_hash(), b.secret_hash());
        assert_eq!(
            a.secret_hash(),
            LinkCode::parse("aaaaaaaabbbbbbbbbbbbbbbb")
                .expect("code")
                .secret_hash()
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let code = LinkCode::parse("AAAA-AAAA-BBBB-BBBB-BBBB-BBBB").expect("code");
        let debug = format!("{code:?}");
        assert!(
            debug.contains("AAAAAAAA") && !debug.contains("BBBB"),
            "{debug}"
        );
    }

    #[test]
    fn names() {
        for good in ["Laptop", "Anna's iPad", "ноутбук", &"x".repeat(64)] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "tab\there",
            "new\nline",
            "\u{7f}",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        // 64 bytes, not characters.
        assert!(!valid_name(&"é".repeat(33)));
    }
}
