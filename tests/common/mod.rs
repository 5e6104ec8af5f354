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

/// How long a test waits for something the server should do at once (a
/// frame, a close, an answer, a metric that follows an event). Generous on
/// purpose: on a loaded machine (two cores shared with the rest of the
/// suite, a build, other engineers) "at once" can take seconds. A test waits
/// for the behaviour, never for a time, and this only bounds the wait so
/// that a broken server fails the test instead of hanging it. See
/// docs/decisions.md, "Tests assert behaviour, never timing".
pub const PROMPTLY: Duration = Duration::from_secs(30);

/// A server timeout (in seconds, as the flags take it) far longer than
/// [`PROMPTLY`], for tests that must tell "at once" from "when a timeout
/// fires": with it, a connection the server should drop or answer at once
/// cannot pass by being cut later by the timeout.
pub const LONGER_THAN_ANY_TEST: &str = "600";

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

/// The per-session message and frame limits raised out of reach, for tests
/// whose senders send as fast as acks come back: how fast that is depends on
/// the machine, and a refusal is not what they test.
pub const SEND_LIMITS_OFF: &[&str] = &[
    "--messages-per-second",
    "100000",
    "--messages-burst",
    "100000",
    "--frames-per-second",
    "100000",
    "--frames-burst",
    "100000",
];

/// How long a start (or restart) may take before the test gives up on it
/// (usually well under a second; a restart replays the journal).
const STARTUP: Duration = Duration::from_secs(60);

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
            // For `--sms sns` against a local SNS-compatible server: a
            // region and static credentials, nothing of the machine's own
            // AWS configuration, and no instance-metadata lookups.
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "parley-test")
            .env("AWS_SECRET_ACCESS_KEY", "parley-test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_SNS")
            .env_remove("AWS_ENDPOINT_URL_S3")
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

    /// A session for `credential`, with connect and write timeouts as
    /// patient as the tests ([`PROMPTLY`]) rather than a phone's defaults,
    /// which a loaded machine can exceed.
    pub async fn connect(&self, credential: &Credential) -> Session {
        Session::connect_with(
            &self.ws_url(),
            self.tls.clone(),
            &credential.token,
            patient(),
        )
        .await
        .expect("session connects")
    }

    /// A plain-HTTP GET on the admin listener: (status line, body).
    pub async fn admin_get(&self, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut tcp = tokio::net::TcpStream::connect(self.admin)
                .await
                .expect("admin listener");
            let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            tcp.read_to_string(&mut response).await.expect("read");
            response
        };
        let response = tokio::time::timeout(PROMPTLY, exchange)
            .await
            .unwrap_or_else(|_| panic!("the admin listener did not answer GET {path}"));
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    }

    /// Scrapes `/metrics` until every `(sample, value)` in `want` holds in
    /// one scrape, for at most `within`. Metrics follow events (a session's
    /// end, the once-a-second census) a little later: a test waits for them
    /// to agree instead of sleeping and hoping they have.
    pub async fn wait_for_metrics(&self, want: &[(&str, f64)], within: Duration) {
        eventually(&format!("the metrics {want:?}"), within, || async move {
            let (_, body) = self.admin_get("/metrics").await;
            let wrong: Vec<String> = want
                .iter()
                .filter(|(key, value)| sample(&body, key) != Some(*value))
                .map(|(key, value)| format!("{key} = {:?} (want {value})", sample(&body, key)))
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join(", "))
            }
        })
        .await;
    }

    /// One sample of `/metrics` (`name{labels}`), which must be there.
    pub async fn metric(&self, key: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        sample(&body, key).unwrap_or_else(|| panic!("no {key} in the metrics"))
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
        let deadline = std::time::Instant::now() + STARTUP;
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

/// Connect options for tests: the client's defaults, with connect and write
/// timeouts of [`PROMPTLY`].
pub fn patient() -> parley_client::ConnectOptions {
    parley_client::ConnectOptions {
        connect_timeout: PROMPTLY,
        write_timeout: PROMPTLY,
        ..parley_client::ConnectOptions::default()
    }
}

/// Closes `session` with code 1000 and checks that the server answers with
/// its own close (1000), as patiently as the tests wait for anything.
/// (`Session::close` is a phone's close: it gives up after 5 s, and takes
/// any end of the connection for the answer.)
pub async fn close_cleanly(mut session: Session) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    session
        .send_raw(Message::Close(Some(close)))
        .await
        .map_err(|e| format!("the close could not be sent: {e}"))?;
    match session.next_frame_timeout(PROMPTLY).await {
        Err(ClientError::Closed { code: 1000, .. }) => Ok(()),
        other => Err(format!("expected the server's close 1000, got {other:?}")),
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
///
/// A weak check: it cannot fail on a slow machine, but it can pass on one (a
/// frame that should not come may come later). Where it matters, a test
/// proves absence with a barrier instead: something the server must answer
/// after whatever should not have come (a later message of the same sender,
/// the answer to a later frame), and checks that the barrier came first.
pub async fn quiet(session: &mut Session) {
    if let Ok(frame) = session.next_frame_timeout(Duration::from_millis(300)).await {
        panic!("expected silence, got {frame:?}");
    }
}

/// The value of one sample line (`name{labels} value`) in a scrape, if
/// the line is there.
pub fn sample(body: &str, key: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

/// Calls `check` every 50 ms until it returns `Ok`, for at most `within`,
/// and returns its value. Panics naming `what` and the last `Err` (the
/// state that was wrong) when the time is up: the bound is there so that a
/// broken server fails the test, not to measure anything.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) => assert!(
                Instant::now() < deadline,
                "{what}: still not so after {within:?}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bystander round trip slower than this is counted as slow in the
/// figures [`Bystanders::finish`] prints. It is not asserted: how fast a
/// loaded machine answers is not the server's behaviour (see
/// docs/decisions.md); the benchmarks measure latency.
pub const BYSTANDER_LATENCY: Duration = Duration::from_secs(5);

pub fn is_empty_marker(frame: &Frame) -> bool {
    matches!(frame, Frame::QueueEmpty(_))
}

/// A conversation that must not notice anything: Alice sends to Bob every
/// 60 ms, Bob acks, Alice checks every ack and acks every receipt.
///
/// What it asserts is behaviour, not speed: every message is acked and
/// delivered, in order, with nothing lost, extra or out of place (each
/// round waits for exactly the next ack and the next delivery); the
/// conversation goes on after whatever the test did ([`Bystanders::finish`]);
/// and, where the test holds its hostile traffic in place, it makes rounds
/// meanwhile ([`Bystanders::wait_for_rounds`]). Each frame is waited for up
/// to [`PROMPTLY`]. The round-trip times are recorded and printed, never
/// asserted.
pub struct Bystanders {
    stop: Arc<AtomicBool>,
    /// Round trips completed (send, ack, delivery, delivery ack).
    rounds: Arc<AtomicU64>,
    /// The time of every round so far, in microseconds: a few thousand at
    /// most (15 rounds a second for the length of a test).
    took_us: Arc<std::sync::Mutex<Vec<u64>>>,
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
        let took_us = Arc::new(std::sync::Mutex::new(Vec::new()));
        let times = took_us.clone();
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
                            assert_eq!(ack.client_msg_id, sent, "bystander acks in order");
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
                        assert_eq!(
                            d.body,
                            format!("still here {sent}").into_bytes(),
                            "bystander deliveries in order, none lost or repeated"
                        );
                        b.ack_delivery(vec![d.message_id]).await.expect("ack");
                        received += 1;
                    }
                    other => panic!("bystander Bob got {other:?}"),
                }
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                times.lock().expect("bystander times").push(took);
                progress.fetch_add(1, Ordering::Relaxed);
                // About 15 messages a second: under the default per-session
                // message rate (20/s), as a lively conversation would be.
                // A pause, not a deadline: a slow machine only makes the
                // conversation slower.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            (sent, received)
        });
        Bystanders {
            stop,
            rounds,
            took_us,
            task,
        }
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Waits until `more` rounds beyond the current count have completed.
    /// Call it while the hostile traffic is held in place to show that the
    /// conversation goes on *during* it, whatever the machine's speed: the
    /// test waits for the rounds instead of hoping they fit in a window.
    /// Panics if the conversation failed, or made no such progress within
    /// [`PROMPTLY`] per round.
    pub async fn wait_for_rounds(&self, more: u64) {
        let target = self.rounds() + more;
        let within = PROMPTLY * u32::try_from(more.max(1)).unwrap_or(u32::MAX);
        let deadline = Instant::now() + within;
        while self.rounds() < target {
            assert!(
                !self.task.is_finished(),
                "the bystanders' conversation failed (its panic is reported when the test finishes it)"
            );
            assert!(
                Instant::now() < deadline,
                "the bystanders stopped talking: {} of {more} more rounds in {within:?}",
                more - (target - self.rounds())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks the conversation still makes progress after whatever the test
    /// did (three more rounds), then stops it, checks every message sent was
    /// delivered, and prints the round-trip figures.
    pub async fn finish(self) {
        let target = self.rounds() + 3;
        let deadline = Instant::now() + PROMPTLY * 3;
        while self.rounds() < target && !self.task.is_finished() {
            assert!(Instant::now() < deadline, "the bystanders stopped talking");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (sent, received) = match self.task.await {
            Ok(counts) => counts,
            // The conversation's own assertion, as it was made.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the bystanders' task failed: {e}"),
        };
        assert_eq!(sent, received, "every bystander message was delivered");
        let mut took = std::mem::take(&mut *self.took_us.lock().expect("bystander times"));
        took.sort_unstable();
        let at = |q: f64| {
            let i = ((took.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_micros(took.get(i).copied().unwrap_or(0))
        };
        let slow = took
            .iter()
            .filter(|&&us| Duration::from_micros(us) > BYSTANDER_LATENCY)
            .count();
        eprintln!(
            "bystanders: {received} round trips, all delivered in order; \
             round trip p50 {:?}, p99 {:?}, max {:?}; {slow} over {BYSTANDER_LATENCY:?} \
             (printed, not asserted)",
            at(0.5),
            at(0.99),
            at(1.0),
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

/// Sends `count` texts (`secret text <id>`) from `session` to `to`, with
/// `client_msg_id`s from `first_id`, and waits for every ack.
pub async fn send_acked(session: &mut Session, to: u64, first_id: u64, count: u64) {
    for id in first_id..first_id + count {
        session
            .send(id, to, format!("secret text {id}"))
            .await
            .expect("send");
    }
    let mut acked = 0;
    while acked < count {
        match next(session).await {
            Frame::Ack(_) => acked += 1,
            Frame::SendError(e) => panic!("refused: {e:?}"),
            _ => {}
        }
    }
}

/// Starts `parley` with `args` (on ephemeral loopback ports and a data
/// directory of its own) and expects it to refuse its configuration: exit
/// status 2. What it said on stderr.
pub fn refused_at_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .args([
            "--gateway-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("parley runs");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{said}");
    said
}
