//! The end-to-end harness: starts the real `parley` binary on loopback with
//! its own data directory, and registers phones through the real HTTPS API,
//! reading PINs from the development SMS outbox like a person reads SMS.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parley_client::{Credential, Registration, Session};
use parley_proto::v1::{ServerFrame, server_frame::Frame};

/// How long a test waits for something the server should do at once.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A running `parley` server process, killed when dropped.
pub struct TestServer {
    child: Child,
    pub gateway: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: tempfile::TempDir,
    pub tls: Arc<rustls::ClientConfig>,
    next_phone: std::sync::atomic::AtomicU32,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts `parley` on ephemeral loopback ports with extra flags, and
    /// waits for its ready line.
    pub fn start_with(args: &[&str]) -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("temp data dir"), args)
    }

    /// Starts `parley` on a data directory prepared by the test.
    pub fn start_in(data_dir: tempfile::TempDir, args: &[&str]) -> TestServer {
        let log = std::fs::File::create(data_dir.path().join("server.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .args(["--data-dir"])
            .arg(data_dir.path())
            .args([
                "--gateway-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("RUST_LOG", "info,parley_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("parley starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("parley ready") => break line,
                Some(Ok(_)) => continue,
                _ => {
                    let log = std::fs::read_to_string(data_dir.path().join("server.log"))
                        .unwrap_or_default();
                    panic!("parley exited before it was ready:\n{log}");
                }
            }
        };
        let field = |name: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {ready:?}"))
        };
        let (gateway, http, admin) = (field("gateway"), field("http"), field("admin"));
        let tls = parley_client::tls_config_from_file(&data_dir.path().join("tls/cert.pem"))
            .expect("trust the server's certificate");
        TestServer {
            child,
            gateway,
            http,
            admin,
            data_dir,
            tls,
            next_phone: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("wss://localhost:{}/v1/ws", self.gateway.port())
    }

    pub fn http_url(&self) -> String {
        format!("https://localhost:{}", self.http.port())
    }

    pub fn registration(&self) -> Registration {
        Registration::new(&self.http_url(), self.tls.clone()).expect("registration client")
    }

    /// A phone number no other phone in this server has used.
    pub fn phone(&self) -> String {
        let n = self
            .next_phone
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("+1555{:07}", 1_000_000 + n)
    }

    /// The newest code the development outbox holds for `phone`.
    pub fn code_for(&self, phone: &str) -> String {
        let outbox = std::fs::read_to_string(self.outbox()).expect("outbox exists");
        outbox
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["kind"] == "sms" && v["to"] == phone)
            .find_map(|v| {
                let body = v["body"].as_str()?;
                let digits: String = body.chars().filter(char::is_ascii_digit).collect();
                (digits.len() == 6).then_some(digits)
            })
            .unwrap_or_else(|| panic!("no code for {phone} in the outbox"))
    }

    pub fn outbox(&self) -> PathBuf {
        self.data_dir.path().join("outbox.jsonl")
    }

    /// Registers `phone` (requests a code, reads it from the outbox, verifies).
    pub async fn register_phone(&self, phone: &str) -> Credential {
        let registration = self.registration();
        registration
            .request_code(phone)
            .await
            .expect("code requested");
        let code = self.code_for(phone);
        registration
            .verify(phone, &code)
            .await
            .expect("code verified")
    }

    /// Registers a fresh phone.
    pub async fn register(&self) -> Credential {
        let phone = self.phone();
        self.register_phone(&phone).await
    }

    pub async fn connect(&self, credential: &Credential) -> Session {
        Session::connect(&self.ws_url(), self.tls.clone(), &credential.token)
            .await
            .expect("session connects")
    }

    /// A plain-HTTP GET on the admin listener: (status line, body).
    pub async fn admin_get(&self, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin listener");
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "parley did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next frame, which must arrive promptly.
pub async fn next(session: &mut Session) -> Frame {
    let frame: ServerFrame = session
        .next_frame_timeout(PROMPTLY)
        .await
        .expect("a frame arrives");
    frame.frame.expect("frame set")
}

/// Frames until (and without) the first one that matches `stop`.
pub async fn until(session: &mut Session, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
    let mut seen = Vec::new();
    loop {
        let frame = next(session).await;
        if stop(&frame) {
            return seen;
        }
        seen.push(frame);
    }
}

/// Asserts nothing arrives for a short while.
pub async fn quiet(session: &mut Session) {
    if let Ok(frame) = session.next_frame_timeout(Duration::from_millis(300)).await {
        panic!("expected silence, got {frame:?}");
    }
}
