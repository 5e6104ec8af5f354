//! Running the real `parley-cli` binary from a test: building it, running
//! it to the end or reading its output while it runs, and checking how it
//! ended. Shared by `tests/cli.rs`, `tests/cli_devices.rs` and
//! `tests/cli_media.rs` (included with `#[path]`, so the other test
//! binaries do not compile it).

#![allow(dead_code)] // each including test uses a part

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::process::{Child, ChildStderr, Command};
use tokio::time::{Instant, timeout};

use crate::common::TestServer;

/// How long one CLI run may take before the test gives up on it: far more
/// than any run needs, so a busy machine does not change the outcome.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `parley-cli` as run by someone whose home folder is `home`: its
/// configuration in `home/config`, run from `home/work`, no `PARLEY_*`
/// endpoint or profile from the test's own environment, output piped, no
/// input; killed if the test drops it. Nothing else set.
pub fn cli_in(home: &Path) -> Command {
    let mut command = Command::new(cli_binary());
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("PARLEY_HTTP")
        .env_remove("PARLEY_WS")
        .env_remove("PARLEY_CA")
        .env_remove("PARLEY_PROFILE")
        .env_remove("PARLEY_PROFILE_DIR")
        .current_dir(home.join("work"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The `parley-cli` binary of this build profile, next to this test's
/// executable (`target/<profile>/parley-cli`). It belongs to another
/// package, so `cargo test -p parley` does not build it: it is built here,
/// once per test process, with the same profile. An up-to-date binary makes
/// that a no-op; a stale one is rebuilt, so the tests never run old code.
pub fn cli_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut build = std::process::Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "parley-cli",
                "--bin",
                "parley-cli",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(other) => {
                build.args(["--profile", other]);
            }
            None => panic!("unexpected target layout: {}", exe.display()),
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building parley-cli failed: {status}");
        let binary = profile_dir.join(format!("parley-cli{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.is_file(), "no {}", binary.display());
        binary
    })
}

/// `--http`, `--ws` and `--ca` of a test server.
pub fn server_flags(server: &TestServer) -> Vec<String> {
    vec![
        "--http".into(),
        server.http_url(),
        "--ws".into(),
        server.ws_url(),
        "--ca".into(),
        ca_of(server).display().to_string(),
    ]
}

pub fn ca_of(server: &TestServer) -> PathBuf {
    server.data_dir.path().join("tls/cert.pem")
}

/// Runs a command to the end (bounded), with what it printed.
pub async fn run(mut command: Command) -> Output {
    let child = command.spawn().expect("cli starts");
    timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("parley-cli finished in time")
        .expect("parley-cli ran")
}

/// Incremental reads of a child's stdout or stderr, to wait for a prompt
/// or a line while the child runs.
pub struct Reader<R> {
    pipe: R,
    seen: String,
}

impl<R: tokio::io::AsyncRead + Unpin> Reader<R> {
    pub fn new(pipe: R) -> Self {
        Reader {
            pipe,
            seen: String::new(),
        }
    }

    /// Reads until `pattern` appears after what earlier calls consumed;
    /// returns the text up to and including it.
    pub async fn until(&mut self, pattern: &str) -> String {
        let deadline = Instant::now() + RUN_LIMIT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(at) = self.seen.find(pattern) {
                let rest = self.seen.split_off(at + pattern.len());
                return std::mem::replace(&mut self.seen, rest);
            }
            let n = tokio::time::timeout_at(deadline, self.pipe.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {pattern:?} in time; got {:?}", self.seen))
                .expect("read pipe");
            assert!(n > 0, "pipe closed before {pattern:?}; got {:?}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Reads until every one of `patterns` has appeared (in any order)
    /// after what earlier calls consumed; returns all the text read.
    pub async fn until_all(&mut self, patterns: &[String]) -> String {
        let deadline = Instant::now() + RUN_LIMIT;
        let mut buf = [0u8; 4096];
        loop {
            if patterns.iter().all(|p| self.seen.contains(p.as_str())) {
                return std::mem::take(&mut self.seen);
            }
            let n = tokio::time::timeout_at(deadline, self.pipe.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("not all of {patterns:?} in time; got {:?}", self.seen))
                .expect("read pipe");
            assert!(
                n > 0,
                "pipe closed before {patterns:?}; got {:?}",
                self.seen
            );
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The rest, to the end of the pipe.
    pub async fn rest(mut self) -> String {
        let mut rest = Vec::new();
        timeout(RUN_LIMIT, self.pipe.read_to_end(&mut rest))
            .await
            .expect("pipe ends in time")
            .expect("read pipe");
        self.seen.push_str(&String::from_utf8_lossy(&rest));
        self.seen
    }
}

pub async fn type_line(child: &mut Child, line: &str) {
    let stdin = child.stdin.as_mut().expect("stdin piped");
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("type");
    stdin.flush().await.expect("flush");
}

/// Waits for a child whose stderr is being read by `stderr`.
pub async fn finish(mut child: Child, stderr: Reader<ChildStderr>) -> Output {
    let mut stdout = child.stdout.take().expect("stdout");
    let (status, out, err) = timeout(RUN_LIMIT, async {
        let mut out = Vec::new();
        let (read, err) = tokio::join!(stdout.read_to_end(&mut out), stderr.rest());
        read.expect("read stdout");
        (child.wait().await.expect("wait"), out, err)
    })
    .await
    .expect("parley-cli finished in time");
    Output {
        status,
        stdout: out,
        stderr: err.into_bytes(),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No panic message or backtrace in what a run printed on stderr.
pub fn assert_no_panic(err: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("RUST_BACKTRACE"),
        "a user error must never panic:\n{err}"
    );
}

/// The run failed the documented way: exit code 1, and its error as the
/// one `error: ` line, last on stderr (after any warnings). Returns it
/// without the prefix.
pub fn error_line(out: &Output) -> String {
    let err = stderr(out);
    assert_no_panic(&err);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "the error comes last:\n{err}");
    last.trim_start_matches("error: ").to_owned()
}

/// A successful run's stdout.
pub fn success(out: &Output) -> String {
    let err = stderr(out);
    assert_no_panic(&err);
    assert!(out.status.success(), "stderr:\n{err}");
    stdout(out)
}
