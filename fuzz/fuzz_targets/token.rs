//! The device credential, as the gateway checks it at every upgrade: any
//! string must verify or be refused, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use parley_identity::TokenKeys;

fn keys() -> &'static TokenKeys {
    static KEYS: OnceLock<(tempfile::TempDir, TokenKeys)> = OnceLock::new();
    &KEYS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let keys = TokenKeys::load_or_generate(dir.path()).expect("keys");
            (dir, keys)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = keys().verify(&token);
});
