//! E.164 phone numbers, the only form the API accepts.
//!
//! Numbers are compared as exact strings everywhere (store keys, contact
//! lookup), so there is deliberately no normalisation here: formatting a
//! number the user typed into E.164 is the phone app's job, and accepting
//! several spellings of one number would split one person into two accounts.

/// Whether `phone` is E.164: `+`, then 8 to 15 ASCII digits, the first not `0`.
///
/// 8 is shorter than the ITU's real minimum for most countries but keeps
/// small-country numbers valid; 15 is the E.164 maximum.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::is_e164;

    #[test]
    fn accepts_e164() {
        for ok in [
            "+15551234567",
            "+12345678",
            "+123456789012345",
            "+447700900123",
        ] {
            assert!(is_e164(ok), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "+",
            "15551234567",
            "+1234567",
            "+1234567890123456",
            "+05551234567",
            "+1555 123 4567",
            "+1-555-123-4567",
            "++15551234567",
            "+1555123456a",
            "+١٢٣٤٥٦٧٨٩",
            " +15551234567",
            "+15551234567\n",
        ] {
            assert!(!is_e164(bad), "{bad:?} should be invalid");
        }
    }
}
