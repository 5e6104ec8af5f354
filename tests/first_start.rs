//! A newcomer's first start, and an operator's first mistakes, against the
//! real binary: what the server creates, what it says, and that it says it
//! in words.
//!
//! - the ready line carries the pid, and `<data-dir>/parley.pid` holds it;
//! - the SMS outbox exists before the first SMS (the README tells people to
//!   watch it);
//! - the data directory is 0700 and every file in it 0600, after traffic
//!   has created the database, the journal and the outbox;
//! - a second server on the same data directory, a port in use, and bad
//!   configuration (environment, file, TLS files) each get one message
//!   that names the problem, exit 1 or 2, and never a backtrace, even with
//!   `RUST_BACKTRACE=1`;
//! - every labelled metric series is in the first scrape, at 0.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{TestServer, is_empty_marker, next, until};
use parley_proto::v1::server_frame::Frame;

/// Runs `parley` to completion with `args` and `env` (and
/// `RUST_BACKTRACE=1`, which many Rust users set), on ephemeral ports.
fn parley(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("parley runs");
    // A server that unexpectedly starts would wait forever: bound it.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(output) => output.expect("parley's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("parley {args:?} did not exit: it should have refused to start");
        }
    }
}

/// stderr of a refused start, checked to be words, not a backtrace.
fn refusal(output: &Output, status: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(status), "stderr: {stderr}");
    for sign in [
        "panicked",
        "backtrace",
        "Stack backtrace",
        "RUST_BACKTRACE",
        "src/",
    ] {
        assert!(
            !stderr.contains(sign),
            "a backtrace-like {sign:?} in: {stderr}"
        );
    }
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn the_first_start_announces_its_pid_makes_the_outbox_and_keeps_everything_private() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    // Spawned here rather than by the harness, to read the ready line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--gateway-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("parley starts");
    let stdout = child.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("parley ready"))
    })
    .await
    .expect("reader")
    .expect("a ready line");
    let pid = child.id();
    assert!(
        ready.starts_with(&format!("parley ready pid={pid} gateway=")),
        "{ready}"
    );
    let pid_file = std::fs::read_to_string(data_dir.join("parley.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), pid.to_string());
    // The outbox exists before anyone asked for a code.
    let outbox = std::fs::metadata(data_dir.join("outbox.jsonl")).expect("the outbox exists");
    assert_eq!(outbox.len(), 0);

    // A second server on the same data directory is refused, by name.
    let second = parley(&data_dir, &["--gateway-addr", "127.0.0.1:0"], &[]);
    let said = refusal(&second, 1);
    assert!(
        said.contains(&format!(
            "another parley (pid {pid}) is using the data directory"
        )),
        "{said}"
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiter")
        .expect("exit");
    assert!(status.success(), "{status}");
    assert!(
        !data_dir.join("parley.pid").exists(),
        "a clean stop removes the pid file"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn after_traffic_every_file_in_the_data_directory_is_private() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(1, bob.user_id, "a body that is in the journal now")
        .await
        .expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));

    let root = server.data_dir.path();
    assert_eq!(mode(root), 0o700, "the data directory");
    let entries = walk(root);
    for expected in [
        "parley.db",
        "journal.redb",
        "outbox.jsonl",
        "keys",
        "tls",
        "parley.pid",
    ] {
        assert!(
            entries
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == expected)),
            "{expected} in {entries:?}"
        );
    }
    for path in entries {
        // The harness's own log file is created by the test, not the server.
        if path.file_name().is_some_and(|n| n == "server.log") {
            continue;
        }
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}

#[test]
fn a_port_in_use_is_said_in_words_without_a_backtrace() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = parley(dir.path(), &["--gateway-addr", &addr], &[]);
    let said = refusal(&output, 1);
    assert!(
        said.contains(&format!("cannot listen for phones on {addr}"))
            && said.contains("already in use")
            && said.contains("--gateway-addr"),
        "{said}"
    );
}

#[test]
fn every_configuration_problem_is_reported_at_once_naming_where_it_was_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A real certificate, to give where the key belongs.
    let certs = tempfile::tempdir().expect("certs");
    let cert_pem = certs.path().join("cert.pem");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    std::fs::write(&cert_pem, generated.cert.pem()).expect("write cert");
    let cert = cert_pem.to_string_lossy().into_owned();
    let file = dir.path().join("parley.toml");
    std::fs::write(
        &file,
        "idle_timeout = 2\ngateway_adr = \"0.0.0.0:5443\"\ndelivery_window = \"many\"\n",
    )
    .expect("write config");
    let file_arg = file.to_string_lossy().into_owned();

    let output = parley(
        &dir.path().join("data"),
        &[
            "--config",
            &file_arg,
            "--gateway-addr",
            "localhost:0",
            "--tls-cert",
            &cert,
            // The certificate again where the key belongs.
            "--tls-key",
            &cert,
        ],
        &[
            ("PARLEY_WRITE_TIMEOUT", "soon"),
            ("PARLEY_MESSAGE_TTL_DAYS", "0"),
        ],
    );
    let said = refusal(&output, 2);
    let problems: Vec<&str> = said.lines().filter(|l| l.starts_with("  - ")).collect();
    let expect = [
        "PARLEY_WRITE_TIMEOUT=\"soon\": invalid digit found in string (expected SECS)".to_owned(),
        format!("{file_arg}: unknown setting `gateway_adr` (did you mean `gateway_addr`?)"),
        format!("delivery_window in {file_arg}: "),
        format!("--tls-key: {cert} holds a certificate, not a private key"),
        format!("idle_timeout in {file_arg}: must be at least 5 seconds, not 2"),
        "PARLEY_MESSAGE_TTL_DAYS: must be at least 1".to_owned(),
    ];
    assert_eq!(problems.len(), expect.len(), "{said}");
    for expected in expect {
        assert!(
            problems.iter().any(|p| p.contains(&expected)),
            "missing {expected:?} in:\n{said}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the configuration is valid"
    );
}

/// Every label value the documentation lists, for each labelled family.
const LABELLED: &[(&str, &str, &[&str])] = &[
    (
        "parley_gateway_login_failures_total",
        "reason",
        &[
            "tls",
            "timeout",
            "io",
            "BAD_UPGRADE",
            "HEAD_TOO_LARGE",
            "METHOD_NOT_ALLOWED",
            "NOT_FOUND",
            "UNSUPPORTED_VERSION",
            "UNAUTHORIZED",
            "TOKEN_INVALID",
            "TOKEN_EXPIRED",
            "TOKEN_REVOKED",
            "UNAVAILABLE",
        ],
    ),
    (
        "parley_gateway_send_errors_total",
        "code",
        &[
            "UNKNOWN_RECIPIENT",
            "INVALID_MESSAGE",
            "MAILBOX_FULL",
            "RATE_LIMITED",
            "INTERNAL",
        ],
    ),
    (
        "parley_gateway_rate_limited_total",
        "limiter",
        &["frames", "messages", "inbound_bytes"],
    ),
    (
        "parley_gateway_sessions_closed_total",
        "reason",
        &[
            "client_closed",
            "gone",
            "displaced",
            "revoked",
            "idle_timeout",
            "slow_consumer",
            "shutdown",
            "malformed_frame",
            "frame_too_large",
            "unsupported_data",
            "rate_limited",
            "protocol_error",
            "internal",
        ],
    ),
    (
        "parley_router_receipts_queued_total",
        "kind",
        &["delivered", "read"],
    ),
    (
        "parley_registration_codes_verified_total",
        "outcome",
        &["new_account", "reregistered"],
    ),
    (
        "parley_registration_verify_failures_total",
        "code",
        &["WRONG_CODE", "CODE_EXPIRED", "NO_PENDING_CODE"],
    ),
    (
        "parley_registration_rate_limited_total",
        "limiter",
        &["codes_per_ip", "verifies_per_ip", "links_per_ip"],
    ),
    (
        "parley_registration_link_failures_total",
        "code",
        &["LINK_CODE_INVALID", "DEVICE_LIMIT", "INVALID_REQUEST"],
    ),
    (
        "parley_registration_devices_unlinked_total",
        "reason",
        &["user", "inactive"],
    ),
];

#[tokio::test]
async fn every_labelled_series_is_in_the_first_scrape_at_zero() {
    let server = TestServer::start();
    let (status, body) = server.admin_get("/metrics").await;
    assert!(status.contains("200"), "{status}");
    let zero = |series: String| {
        assert!(
            body.lines().any(|line| line == format!("{series} 0")),
            "{series} 0 is not in the first scrape"
        );
    };
    for (family, label, values) in LABELLED {
        for value in *values {
            zero(format!("{family}{{{label}=\"{value}\"}}"));
        }
    }
    for (route, statuses) in [
        ("/v1/registration/code", &[202, 429, 502, 503][..]),
        ("/v1/registration/verify", &[200, 401, 404, 410]),
        ("/v1/contacts/lookup", &[200, 401, 429]),
        ("/v1/devices/link-code", &[201, 403, 409]),
        ("/v1/devices/link", &[200, 404, 409, 429]),
        ("/v1/devices", &[200, 401]),
        ("/v1/devices/{device_id}", &[204, 403, 404, 409]),
        ("/v1/users/{user_id}/devices", &[200, 404]),
    ] {
        for status in statuses {
            zero(format!(
                "parley_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
            ));
        }
    }
    for counter in ["logins", "messages_accepted", "codes_sent"] {
        for window in ["1s", "10s", "100s"] {
            let series =
                format!("parley_rate_per_second{{counter=\"{counter}\",window=\"{window}\"}}");
            assert!(
                body.lines()
                    .any(|line| line.starts_with(&format!("{series} "))),
                "{series} is not in the first scrape"
            );
        }
    }
}
