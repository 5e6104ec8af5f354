//! Phone numbers as people write them, made E.164 for the API.
//!
//! The server accepts exactly E.164 (`+`, then 8 to 15 digits, the first not
//! 0) and compares numbers as strings, on purpose: it cannot know which
//! country a number without `+` belongs to, and two spellings must not make
//! two accounts. Turning what a person typed or pasted into E.164 is the
//! phone's job, so it is done here, once, for every caller:
//! `"+1 (555) 000-2222"` becomes `"+15550002222"`.
//!
//! Only separators are removed (spaces, dashes, dots, parentheses); nothing
//! is guessed. A number without `+` is refused with a suggestion rather than
//! given a country, because a wrong guess would reach a stranger.

/// What is wrong with a phone number. The messages are written to be shown
/// to a person after the number itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("empty")]
    Empty,
    /// No leading `+`: the country is unknown. `suggestion` is how to write
    /// it, e.g. `+15550002222`, or `+<country code>7700900123` when it
    /// began with a national `0`.
    #[error("no country code: write it as {suggestion} (a + then the country code and number)")]
    NoCountryCode { suggestion: String },
    #[error(
        "{0:?} does not belong in a phone number (a + then digits; spaces, dashes, dots and parentheses are fine)"
    )]
    Unexpected(char),
    #[error("{digits} digits: an E.164 number has 8 to 15 after the +")]
    Length { digits: usize },
    #[error("no country code starts with 0")]
    LeadingZero,
}

/// Characters people put between digits, ignored.
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '.' | '(' | ')'
            // Hyphens and dashes that word processors and web pages put in
            // numbers copied from them, and the minus sign.
            | '\u{2010}'..='\u{2015}' | '\u{2212}'
        )
}

/// `input` in E.164 (`+` and digits only), or why it cannot be.
///
/// ```
/// use parley_client::phone::normalize;
/// assert_eq!(normalize("+1 (555) 000-2222").as_deref(), Ok("+15550002222"));
/// assert_eq!(normalize("+44 7700.900.123").as_deref(), Ok("+447700900123"));
/// assert!(normalize("15550002222").is_err()); // which country?
/// ```
pub fn normalize(input: &str) -> Result<String, PhoneError> {
    let mut plus = false;
    let mut digits = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '+' if !plus && digits.is_empty() => plus = true,
            '0'..='9' => digits.push(c),
            c if is_separator(c) => {}
            c => return Err(PhoneError::Unexpected(c)),
        }
    }
    if digits.is_empty() {
        return Err(PhoneError::Empty);
    }
    if !plus {
        return Err(PhoneError::NoCountryCode {
            suggestion: suggest(&digits),
        });
    }
    if digits.starts_with('0') {
        return Err(PhoneError::LeadingZero);
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(PhoneError::Length {
            digits: digits.len(),
        });
    }
    Ok(format!("+{digits}"))
}

/// How to write a number that came without `+`.
fn suggest(digits: &str) -> String {
    if let Some(international) = digits.strip_prefix("00") {
        // 00 is the international prefix in most of the world: 0044... is +44...
        format!("+{international}")
    } else if let Some(national) = digits.strip_prefix('0') {
        // A national trunk prefix: the country code replaces it.
        format!("+<country code>{}", national.trim_start_matches('0'))
    } else {
        format!("+{digits}")
    }
}

/// Whether `arg` is written like a phone number rather than a user id: it
/// starts with `+` (which `u64::from_str` would accept and drop), or
/// separates its digits the way phone numbers are written.
pub fn looks_like_phone(arg: &str) -> bool {
    let arg = arg.trim();
    if arg.starts_with('+') {
        return true;
    }
    arg.chars().any(|c| c.is_ascii_digit())
        && arg.chars().all(|c| c.is_ascii_digit() || is_separator(c))
        && arg.chars().any(is_separator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn human_spellings_become_e164() {
        for (input, want) in [
            ("+15550002222", "+15550002222"),
            ("+1 555-000-2222", "+15550002222"),
            ("+1 (555) 000-2222", "+15550002222"),
            ("+1.555.000.2222", "+15550002222"),
            (" +1 555 000 2222 ", "+15550002222"),
            ("+44\u{a0}7700\u{a0}900123", "+447700900123"),
            ("+49 89 \u{2013} 1234567", "+49891234567"),
            ("+12345678", "+12345678"),
            ("+123456789012345", "+123456789012345"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn numbers_without_a_country_get_a_suggestion() {
        let suggestion = |input: &str| match normalize(input) {
            Err(PhoneError::NoCountryCode { suggestion }) => suggestion,
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(suggestion("15550002222"), "+15550002222");
        assert_eq!(suggestion("1 555-000-2222"), "+15550002222");
        assert_eq!(suggestion("0044 7700 900123"), "+447700900123");
        assert_eq!(suggestion("07700 900123"), "+<country code>7700900123");
        let message = normalize("15550002222").expect_err("no +").to_string();
        assert!(message.contains("write it as +15550002222"), "{message}");
    }

    #[test]
    fn malformed_numbers_say_why() {
        assert_eq!(normalize(""), Err(PhoneError::Empty));
        assert_eq!(normalize(" - "), Err(PhoneError::Empty));
        assert_eq!(normalize("+"), Err(PhoneError::Empty));
        assert_eq!(normalize("+1555abc"), Err(PhoneError::Unexpected('a')));
        assert_eq!(normalize("++15550002222"), Err(PhoneError::Unexpected('+')));
        assert_eq!(normalize("+1555+0002222"), Err(PhoneError::Unexpected('+')));
        assert_eq!(normalize("+1234567"), Err(PhoneError::Length { digits: 7 }));
        assert_eq!(
            normalize("+1234567890123456"),
            Err(PhoneError::Length { digits: 16 })
        );
        assert_eq!(normalize("+05550002222"), Err(PhoneError::LeadingZero));
        assert_eq!(
            normalize("+١٢٣٤٥٦٧٨٩"),
            Err(PhoneError::Unexpected('١')),
            "only ASCII digits reach the server"
        );
    }

    #[test]
    fn phone_numbers_are_told_from_user_ids() {
        for phone in [
            "+15550002222",
            " +1",
            "1 555 000 2222",
            "555-000-2222",
            "(555) 000.2222",
        ] {
            assert!(looks_like_phone(phone), "{phone:?}");
        }
        for not_phone in [
            "3948730036402321031",
            "15550002222",
            "",
            "-",
            "alice",
            "12a 3",
        ] {
            assert!(!looks_like_phone(not_phone), "{not_phone:?}");
        }
    }

    /// A valid E.164 number's digits: 8 to 15, the first not 0.
    fn e164_digits() -> impl Strategy<Value = String> {
        ("[1-9]", "[0-9]{7,14}").prop_map(|(first, rest)| format!("{first}{rest}"))
    }

    proptest! {
        /// However the digits of a valid number are separated, the result
        /// is the number, and it is E.164.
        #[test]
        fn separators_never_change_the_number(
            digits in e164_digits(),
            seps in proptest::collection::vec(
                proptest::sample::select(vec!["", " ", "-", ".", "(", ")", "\u{a0}", "\u{2013}", "  "]),
                16,
            ),
        ) {
            let mut spelled = String::from("+");
            for (i, d) in digits.chars().enumerate() {
                spelled.push_str(seps[i]);
                spelled.push(d);
            }
            spelled.push_str(seps[15]);
            let normal = normalize(&spelled).expect("valid");
            prop_assert_eq!(&normal, &format!("+{digits}"));
            let again = normalize(&normal);
            prop_assert_eq!(again.as_deref(), Ok(normal.as_str()), "idempotent");
            prop_assert!(looks_like_phone(&spelled));
        }

        /// Whatever the input, an `Ok` is E.164 and never panics.
        #[test]
        fn anything_normalizes_to_e164_or_an_error(input in "\\PC{0,24}") {
            if let Ok(phone) = normalize(&input) {
                let digits = phone.strip_prefix('+').expect("leading +");
                prop_assert!((8..=15).contains(&digits.len()));
                prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(!digits.starts_with('0'));
            }
        }
    }
}
