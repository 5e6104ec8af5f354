//! Whether the account store's tests also run against PostgreSQL.
//!
//! With `PARLEY_TEST_POSTGRES_URL` set when the tests are built, the
//! `cfg(parley_postgres)` flag is on and the PostgreSQL variant of every
//! store and API test runs against that server. Without it, those tests are
//! marked `#[ignore]`, so that `cargo test` reports them as ignored instead
//! of counting a test that did nothing as passed (libtest cannot ignore a
//! test at run time). Cargo runs this again whenever the variable changes,
//! which rebuilds this crate and what depends on it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(parley_postgres)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PARLEY_TEST_POSTGRES_URL");
    if std::env::var_os("PARLEY_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=parley_postgres");
    }
}
