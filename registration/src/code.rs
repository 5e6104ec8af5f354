//! The six-digit SMS codes: generated from the OS CSPRNG, stored only as a
//! hash, compared in constant time.

use rand::Rng;
use rand::rngs::OsRng;
use ring::digest;

/// Length of a SHA-256 code hash, as stored in `pending_codes.code_hash`.
pub const CODE_HASH_LEN: usize = 32;

/// A fresh code, uniform over `000000..=999999`, zero-padded to six digits.
///
/// `OsRng` rather than a userspace generator: the code is the only secret
/// standing between an attacker and someone else's account.
pub fn generate() -> String {
    format!("{:06}", OsRng.gen_range(0..1_000_000u32))
}

/// What the store keeps instead of the code: SHA-256 over the phone number, a
/// separator and the code.
///
/// This keeps codes out of plain sight in database dumps, backups and query
/// logs. It is not a defence against someone holding the database: a million
/// candidates are quickly tried, which is why codes also expire in minutes.
/// Binding the phone number in makes equal codes of two numbers hash apart.
pub fn hash(phone: &str, code: &str) -> [u8; CODE_HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(phone.as_bytes());
    // The separator cannot occur in an E.164 number, so (phone, code) pairs
    // cannot collide by shifting digits between the two.
    ctx.update(b":");
    ctx.update(code.as_bytes());
    let mut out = [0u8; CODE_HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Constant-time equality of two code hashes, so response timing does not
/// tell a guesser how many leading bytes were right.
///
/// Written out rather than `ring::constant_time::verify_slices_are_equal`,
/// which ring 0.17 deprecates as "not intended for external use". Every byte
/// is visited whatever the differences, and `black_box` keeps the compiler
/// from turning the accumulation into an early-exit comparison. Lengths are
/// not secret (always 32), so comparing them first leaks nothing.
pub fn hashes_match(stored: &[u8], candidate: &[u8]) -> bool {
    if stored.len() != candidate.len() {
        return false;
    }
    let diff = stored
        .iter()
        .zip(candidate)
        .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let code = generate();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn codes_vary() {
        let codes: std::collections::HashSet<String> = (0..50).map(|_| generate()).collect();
        // 50 draws from a million collide rarely; all-equal would mean a broken RNG.
        assert!(codes.len() > 40);
    }

    #[test]
    fn hash_binds_phone_and_code() {
        let a = hash("+15551234567", "123456");
        assert!(hashes_match(&a, &hash("+15551234567", "123456")));
        assert!(!hashes_match(&a, &hash("+15551234567", "123457")));
        assert!(!hashes_match(&a, &hash("+15551234568", "123456")));
        assert!(!hashes_match(&a, &a[..31]));
    }
}
