//! Whether the SNS tests run against a local SNS-compatible server.
//!
//! With `PARLEY_TEST_MOTO` set when the tests are built (the command that
//! starts moto's server, e.g. `moto_server`; `.ci/run` installs it and sets
//! it), the `cfg(parley_moto)` flag is on and the tests that need it run.
//! Without it they are marked `#[ignore]`, so that `cargo test` reports
//! them as ignored instead of counting a test that did nothing as passed.
//! Cargo runs this again whenever the variable changes.
//!
//! Likewise `PARLEY_TEST_TUSPY`, a Python with the tus client `tuspy`
//! installed (`cfg(parley_tuspy)`), for tests/media_tuspy.rs.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(parley_moto)");
    println!("cargo::rustc-check-cfg=cfg(parley_tuspy)");
    println!("cargo::rerun-if-env-changed=PARLEY_TEST_TUSPY");
    if std::env::var_os("PARLEY_TEST_TUSPY").is_some_and(|command| !command.is_empty()) {
        println!("cargo::rustc-cfg=parley_tuspy");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PARLEY_TEST_MOTO");
    if std::env::var_os("PARLEY_TEST_MOTO").is_some_and(|command| !command.is_empty()) {
        println!("cargo::rustc-cfg=parley_moto");
    }
}
