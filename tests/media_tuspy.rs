//! A real third-party tus client against the media uploads: tuspy (PyPI
//! `tuspy`, the tus project's Python client) uploads a file in chunks with
//! a checksum on each, is stopped after two (as an app killed mid-upload),
//! and a second run resumes from the offset the server tells; the
//! download is byte-identical.
//!
//! Ignored (and reported so) unless `PARLEY_TEST_TUSPY` (a Python with
//! tuspy) was set when the tests were built; `.ci/run` installs tuspy and
//! sets it, and under `CI=true` `tuspy_configured_in_ci` fails without it.

mod common;
#[path = "common/media.rs"]
mod media;
#[path = "common/moto.rs"]
mod moto;

use std::process::Command;

use common::TestServer;
use media::{Client, MIB, data, sha256_hex};

#[test]
fn tuspy_configured_in_ci() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let tuspy = std::env::var("PARLEY_TEST_TUSPY").is_ok_and(|c| !c.is_empty());
    assert!(
        !ci || (cfg!(parley_tuspy) && tuspy),
        "CI is set but PARLEY_TEST_TUSPY is not, so the tuspy test was ignored: .ci/run installs \
         tuspy (pip install tuspy) and sets it to python3"
    );
}

/// Runs the tuspy script; its stdout, which must say `key=...`.
fn tuspy(server: &TestServer, args: &[&str]) -> String {
    let python = std::env::var("PARLEY_TEST_TUSPY").expect("PARLEY_TEST_TUSPY names a Python");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tuspy_upload.py"
    );
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .env(
            "REQUESTS_CA_BUNDLE",
            server.data_dir.path().join("tls/cert.pem"),
        )
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "tuspy {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {output:?}"))
}

#[tokio::test]
#[cfg_attr(
    not(parley_tuspy),
    ignore = "set PARLEY_TEST_TUSPY (a python3 with tuspy) to run tuspy"
)]
async fn tuspy_uploads_in_chunks_is_interrupted_and_resumes() {
    let server = TestServer::start();
    let token = server.register().await.token;
    let file = data(5 * MIB + 321, 9);
    let path = server.data_dir.path().join("video.bin");
    std::fs::write(&path, &file).expect("the file");
    let base = format!("https://localhost:{}", server.http.port());
    let (path, chunk) = (path.to_str().expect("a UTF-8 path"), MIB.to_string());

    let started = tuspy(&server, &["start", &base, &token, path, &chunk, "2"]);
    let url = value(&started, "url").to_owned();
    let resumed = tuspy(&server, &["resume", &base, &token, path, &chunk, &url]);
    assert_eq!(value(&resumed, "resumed_at"), (2 * MIB).to_string());
    assert_eq!(value(&resumed, "offset"), file.len().to_string());

    let alice = Client::new(&server, &token);
    let upload = url.trim_start_matches(&base);
    let media = alice.finished(upload).await;
    assert_eq!(media["sha256"], sha256_hex(&file));
    let got = alice.get(media["url"].as_str().expect("a url"), None).await;
    assert!(
        got.body == file,
        "the download differs from what tuspy sent"
    );
}
