//! The end-to-end harness: starts the real `parley` binary on loopback with
//! its own data directory, and registers phones through the real HTTPS API,
//! reading PINs from the development SMS outbox like a person reads SMS.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parley_client::{ClientError, Credential, Registration, Session};
use parley_proto::v1::{ErrorCode, ServerFrame, server_frame::Frame};
use tokio::time::Instant;

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
    /// The extra flags it was started with, for [`TestServer::restart`].
    args: Vec<String>,
    next_phone: std::sync::atomic::AtomicU32,
}

/// How long a start (or restart) may take before the test gives up on it.
const STARTUP: Duration = Duration::from_secs(30);

/// One `parley` process that has printed its ready line.
struct Process {
    child: Child,
    gateway: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Process {
    /// Spawns `parley` on `data_dir` and ephemeral loopback ports, and waits
    /// (at most [`STARTUP`]) for its ready line. Its stderr is appended to
    /// `<data_dir>/server.log`, so the log of every start of one data
    /// directory is in one file.
    fn spawn(data_dir: &Path, args: &[String]) -> Process {
        let log_path = data_dir.join("server.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        writeln!(log, "---- test harness: starting parley ----").expect("log marker");
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .args(["--data-dir"])
            .arg(data_dir)
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
        // A thread reads stdout so that the wait for the ready line can be
        // bounded. It then drains stdout until parley exits, so that nothing
        // parley prints later meets a closed pipe.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(ready) = lines.by_ref().find(|line| line.starts_with("parley ready")) {
                let _ = ready_tx.send(ready);
            }
            lines.for_each(drop);
        });
        let ready = match ready_rx.recv_timeout(STARTUP) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("parley exited before it was ready:\n{log}");
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("parley was not ready within {STARTUP:?}:\n{log}");
            }
        };
        let field = |name: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {ready:?}"))
        };
        Process {
            gateway: field("gateway"),
            http: field("http"),
            admin: field("admin"),
            child,
        }
    }
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
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let process = Process::spawn(data_dir.path(), &args);
        let tls = parley_client::tls_config_from_file(&data_dir.path().join("tls/cert.pem"))
            .expect("trust the server's certificate");
        TestServer {
            child: process.child,
            gateway: process.gateway,
            http: process.http,
            admin: process.admin,
            data_dir,
            tls,
            args,
            next_phone: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Kills the server with SIGKILL (`kill -9`: no shutdown, no flush, no
    /// drain) and reaps it. The data directory stays, for [`TestServer::restart`].
    ///
    /// Panics if the server had already exited on its own: a crash the test
    /// did not cause must not pass for one it did.
    pub fn kill_hard(&mut self) -> std::process::ExitStatus {
        self.child.kill().expect("SIGKILL parley");
        let status = self.child.wait().expect("reap parley");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "parley had exited on its own ({status}) before it was killed:\n{}",
                self.log()
            );
        }
        status
    }

    /// Starts the server again on the same data directory with the same
    /// flags, after [`TestServer::kill_hard`] or
    /// [`TestServer::stop_gracefully`]. The listeners get new
    /// ephemeral ports, so clients must pick up the new `gateway` (and
    /// `http`) address. The server's log goes on in the same file, after a
    /// marker line.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().expect("parley's status").is_some(),
            "restart needs the previous parley process to have exited"
        );
        let process = Process::spawn(self.data_dir.path(), &self.args);
        self.child = process.child;
        self.gateway = process.gateway;
        self.http = process.http;
        self.admin = process.admin;
        self.tls = parley_client::tls_config_from_file(&self.data_dir.path().join("tls/cert.pem"))
            .expect("trust the server's certificate");
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
        self.stop_gracefully()
    }

    /// Sends SIGTERM and waits for the exit; the data directory stays, for
    /// [`TestServer::restart`].
    pub fn stop_gracefully(&mut self) -> std::process::ExitStatus {
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

/// The longest a bystander's message may take from send to delivery while
/// hostile traffic runs. The worst seen is under 1.5 s (the upgrade flood,
/// on a debug build, two cores shared with another test binary); the rest
/// is room for a machine busy with builds, so that the outcome does not
/// depend on the machine.
pub const BYSTANDER_LATENCY: Duration = Duration::from_secs(5);

pub fn is_empty_marker(frame: &Frame) -> bool {
    matches!(frame, Frame::QueueEmpty(_))
}

/// A conversation that must not notice anything: Alice sends to Bob every
/// 60 ms, Bob acks, Alice checks every ack and acks every receipt. Records
/// the slowest round trip (send to delivery).
pub struct Bystanders {
    stop: Arc<AtomicBool>,
    /// Round trips completed (send, ack, delivery, delivery ack).
    rounds: Arc<AtomicU64>,
    /// The slowest round so far, in microseconds.
    slowest_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Bystanders {
    pub async fn start(server: &TestServer) -> Bystanders {
        let alice = server.register().await;
        let bob = server.register().await;
        let mut a = server.connect(&alice).await;
        let mut b = server.connect(&bob).await;
        until(&mut a, is_empty_marker).await;
        until(&mut b, is_empty_marker).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let rounds = Arc::new(AtomicU64::new(0));
        let progress = rounds.clone();
        let slowest_us = Arc::new(AtomicU64::new(0));
        let slowest = slowest_us.clone();
        let task = tokio::spawn(async move {
            let (mut sent, mut received) = (0u64, 0u64);
            while !stopping.load(Ordering::Relaxed) {
                sent += 1;
                let started = Instant::now();
                a.send(sent, bob.user_id, format!("still here {sent}"))
                    .await
                    .expect("bystander send");
                loop {
                    match next(&mut a).await {
                        Frame::Ack(ack) => {
                            assert_eq!(ack.client_msg_id, sent);
                            break;
                        }
                        Frame::Receipt(r) => a
                            .ack_receipts(vec![r.receipt_id])
                            .await
                            .expect("ack receipt"),
                        other => panic!("bystander Alice got {other:?}"),
                    }
                }
                match next(&mut b).await {
                    Frame::Deliver(d) => {
                        assert_eq!(d.body, format!("still here {sent}").into_bytes());
                        b.ack_delivery(vec![d.message_id]).await.expect("ack");
                        received += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("bystander Bob got {other:?}"),
                }
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                slowest.fetch_max(took, Ordering::Relaxed);
                // About 15 messages a second: under the default per-session
                // message rate (20/s), as a lively conversation would be.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            (sent, received)
        });
        Bystanders {
            stop,
            rounds,
            slowest_us,
            task,
        }
    }

    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Checks the conversation still makes progress after whatever the test
    /// did, then stops it and checks it never missed a beat and no round
    /// took longer than [`BYSTANDER_LATENCY`].
    pub async fn finish(self) {
        let target = self.rounds() + 3;
        let deadline = Instant::now() + PROMPTLY;
        while self.rounds() < target {
            assert!(Instant::now() < deadline, "the bystanders stopped talking");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (sent, received) = self.task.await.expect("bystanders kept talking");
        assert_eq!(sent, received);
        let slowest = Duration::from_micros(self.slowest_us.load(Ordering::Relaxed));
        eprintln!("bystanders: {received} round trips, slowest {slowest:?}");
        assert!(
            slowest <= BYSTANDER_LATENCY,
            "a bystander round trip took {slowest:?}"
        );
    }
}

/// The claims of a real token, to forge variants of it.
pub fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

pub fn jwt(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{head}.{body}");
    let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// Expects an `Error` frame with `code`, then the close code `close_code`.
pub async fn expect_error_then_close(session: &mut Session, code: ErrorCode, close_code: u16) {
    match next(session).await {
        Frame::Error(e) => assert_eq!(e.code(), code, "{e:?}"),
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
    match session.next_frame_timeout(PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close_code),
        other => panic!("expected close {close_code}, got {other:?}"),
    }
}

pub async fn fresh_session(server: &TestServer) -> (Credential, Session) {
    let credential = server.register().await;
    let mut session = server.connect(&credential).await;
    until(&mut session, is_empty_marker).await;
    (credential, session)
}

/// Seconds since the Unix epoch (token claims).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
