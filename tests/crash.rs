//! The crash test: a message acknowledged to its sender survives `kill -9`
//! of the server, and is shown to its recipient exactly once, in order.
//!
//! Twelve users, eight of them with a second, linked device: twenty
//! devices ("phones"), each one real client session over TLS, send to each
//! other under a steady load (a device of user `u` to users `u + 1` and
//! `u + 6` of the ring, alternately; `client_msg_id` is a per-device
//! sequence number and the body says which device sent which number).
//! Every message goes to every device of its recipient and, as a copy, to
//! the sender's other device. Each phone keeps a few sends pipelined, and
//! stores and acknowledges what it receives, de-duplicating by message id
//! exactly as the protocol tells a phone app to. Now and then a phone goes
//! offline for a moment, so that messages wait for it in the server's queue
//! (the state a crash can lose). Meanwhile the server is
//! killed with SIGKILL at random moments, at least five times, and restarted
//! at once on the same data directory (new ports: the phones reconnect to the
//! new address with backoff, then first resend, in order and with the same
//! `client_msg_id`, every send that had no server ack).
//!
//! Then sends stop, the phones drain, and the test checks what the protocol
//! promises (docs/protocol.md), whatever the moments of the kills:
//! 1. every message acked to its sender was delivered to every device of
//!    its recipient and to the sender's other device;
//! 2. none was shown twice: no (sender, sequence number) under two message
//!    ids on any device, and the id delivered is the id acked;
//! 3. per sending device, first deliveries come to each device in the order
//!    of the sequence numbers.
//!
//! It prints the seed of its kill schedule and the counts it checked. Run it
//! with `cargo test --test crash -- --nocapture` to see them when it passes;
//! set `PARLEY_CRASH_SEED` to replay a schedule (the timing of the load is not
//! reproducible, so a replay is similar, not identical). Extra server flags
//! go in `PARLEY_CRASH_EXTRA_ARGS` (split on whitespace):
//! `PARLEY_CRASH_EXTRA_ARGS="--durability memory"` shows the test failing
//! against a server that keeps its queues only in memory.

mod common;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestServer;
use parley_client::{ClientError, ConnectOptions, Session};
use parley_proto::v1::ServerFrame;
use parley_proto::v1::server_frame::Frame;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout_at};

/// Users in the test.
const USERS: usize = 12;
/// Users 0..LINKED have a second, linked device.
const LINKED: usize = 8;
/// Devices ("phones") in the test, each with one session that both sends
/// and receives: devices 0..USERS are the users' primaries, devices
/// USERS.. the linked ones of users 0..LINKED.
const PHONES: usize = USERS + LINKED;

/// The user a device belongs to.
fn user_of(device: usize) -> usize {
    if device < USERS {
        device
    } else {
        device - USERS
    }
}

/// The devices of a user.
fn devices_of(user: usize) -> Vec<usize> {
    let mut devices = vec![user];
    if user < LINKED {
        devices.push(USERS + user);
    }
    devices
}
/// Sends a phone keeps without a server ack at once (pipelined). Well under
/// the server's de-duplication horizon (128), so every resend is recognised.
const WINDOW: usize = 4;
/// A phone sends a new message at most this often: 50 a second each, 1,000 a
/// second in all, a steady load that a debug build on two shared cores keeps
/// up with (the point is crashes under load, not throughput).
const SEND_EVERY: Duration = Duration::from_millis(20);
/// How many times the server is killed.
const KILLS: usize = 6;
/// Time from one restart to the next kill, drawn at random in this range
/// (milliseconds), so kills land at arbitrary points of the message flow.
const KILL_GAP_MS: (u64, u64) = (1_000, 3_000);
/// While the load runs, each phone is online for a random time in this
/// range (milliseconds), then offline (its connection dropped, as when a
/// phone loses coverage) for a random time in the next one. Messages for an
/// offline phone wait in the server's queue: that is what a crash can lose.
/// With every phone always online, a message is delivered within about a
/// millisecond of its ack, and a kill almost never finds one queued.
const ONLINE_MS: (u64, u64) = (1_000, 4_000);
const OFFLINE_MS: (u64, u64) = (300, 2_000);
/// Load after the last restart, before sends stop.
const LOAD_AFTER_LAST_KILL: Duration = Duration::from_secs(2);
/// The longest the test waits, once sends stop, for every acked message to
/// be delivered. A passing run ends its drain as soon as nothing is missing
/// (a few seconds); these bounds only decide how long a failing one takes
/// to say so, and are generous so that a loaded machine is never mistaken
/// for a lost message.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// The drain ends sooner if nothing was acked or delivered for this long:
/// what is still missing then is not on its way.
const DRAIN_STALL: Duration = Duration::from_secs(30);
/// A phone gives up after this long without a session: longer than a
/// restart may take (the harness allows 60 s; it is well under a second on
/// a quiet machine).
const RECONNECT_LIMIT: Duration = Duration::from_secs(90);
/// First and largest pause between reconnection attempts.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a phone waits for a frame before it looks at its sends and the
/// test's phase again.
const POLL: Duration = Duration::from_millis(100);
/// How long the phones get to close their sessions at the end (each close
/// takes a round trip; a phone in a reconnect backoff notices within one).
const WIND_DOWN: Duration = Duration::from_secs(60);
/// Problems kept word for word (the rest are only counted).
const MAX_NOTES: usize = 50;
/// Sender-recipient pairs listed in the failure message for lost messages.
const MAX_LISTED_PAIRS: usize = 20;

/// The server's limits beyond [`common::SEND_LIMITS_OFF`], raised so that
/// the load is never rate limited: a refused send is not what this test is
/// about. The phones all register from one address, and twenty codes is the
/// whole default per-address burst, so that limit is raised.
const SERVER_FLAGS: &[&str] = &[
    "--codes-per-ip-burst",
    "100",
    "--codes-per-ip-per-minute",
    "100",
];

/// What the phones do; the controller moves it forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Send new messages, receive, go offline now and then, reconnect
    /// after crashes.
    Load,
    /// No new messages and no more offline periods; finish (and resend)
    /// the sends in flight, receive.
    Drain,
    /// Close the session and stop.
    Done,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_under_load() {
    let seed = seed();
    println!("crash test: seed {seed} (PARLEY_CRASH_SEED={seed} replays the kill schedule)");
    let mut rng = SplitMix64(seed);

    let extra = std::env::var("PARLEY_CRASH_EXTRA_ARGS").unwrap_or_default();
    let flags: Vec<&str> = common::SEND_LIMITS_OFF
        .iter()
        .chain(SERVER_FLAGS)
        .copied()
        .chain(extra.split_whitespace())
        .collect();
    if !extra.is_empty() {
        println!("crash test: extra server flags {extra:?}");
    }
    let mut server = TestServer::start_with(&flags);
    let mut credentials = Vec::with_capacity(PHONES);
    for _ in 0..USERS {
        credentials.push(server.register().await);
    }
    let registration = server.registration();
    for user in 0..LINKED {
        let code = registration
            .create_link_code(&credentials[user].token)
            .await
            .expect("a link code");
        let linked = registration
            .link(&code.code, "laptop")
            .await
            .expect("linked");
        assert_eq!(linked.user_id, credentials[user].user_id);
        credentials.push(linked);
    }
    let device_ids: Vec<u64> = credentials.iter().map(|c| c.device_id).collect();
    let identity = Identity::read(server.data_dir.path());

    let (gateway_tx, gateway_rx) = watch::channel(server.ws_url());
    let (phase_tx, phase_rx) = watch::channel(Phase::Load);
    let users: Vec<u64> = credentials[..USERS].iter().map(|c| c.user_id).collect();
    let world = Arc::new(World {
        ledger: Mutex::new(Ledger::new()),
        users,
        device_ids,
        // The phones trust the certificate of the first start, as a phone
        // trusts the one it was given: a restart must not change it.
        tls: server.tls.clone(),
        gateway: gateway_rx,
        phase: phase_rx,
        epoch: Instant::now(),
    });
    let phones: Vec<_> = credentials
        .into_iter()
        .enumerate()
        .map(|(me, credential)| tokio::spawn(phone(world.clone(), me, credential.token, seed)))
        .collect();

    let load_started = world.epoch;
    let mut kills_at = Vec::with_capacity(KILLS);
    for kill in 1..=KILLS {
        sleep(Duration::from_millis(
            rng.between(KILL_GAP_MS.0, KILL_GAP_MS.1),
        ))
        .await;
        let acked_so_far = world.ledger().progress().acked;
        // Killing and starting a process blocks (it waits for the ready
        // line): not on the runtime's threads, which the phones need.
        let (restarted, killed_at, restarted_in) = tokio::task::spawn_blocking(move || {
            server.kill_hard();
            let killed = Instant::now();
            server.restart();
            (server, killed, killed.elapsed())
        })
        .await
        .expect("kill -9 and restart");
        server = restarted;
        let at = killed_at - load_started;
        kills_at.push(at);
        gateway_tx.send_replace(server.ws_url());
        identity.assert_unchanged(server.data_dir.path(), kill);
        println!(
            "kill {kill}/{KILLS} at {:.1} s, about {acked_so_far} messages acked before; restarted in {} ms",
            at.as_secs_f64(),
            restarted_in.as_millis()
        );
    }
    sleep(LOAD_AFTER_LAST_KILL).await;
    phase_tx.send_replace(Phase::Drain);
    let load_time = load_started.elapsed();

    // The drain: every acked message on its way to its recipient.
    let drain_started = Instant::now();
    let mut last = world.ledger().progress();
    let mut last_change = Instant::now();
    let drained = loop {
        let now = world.ledger().progress();
        if now.missing == 0 && now.pending == 0 {
            break true;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if drain_started.elapsed() > DRAIN_LIMIT || last_change.elapsed() > DRAIN_STALL {
            break false;
        }
        sleep(POLL).await;
    };
    let drain_time = drain_started.elapsed();
    phase_tx.send_replace(Phase::Done);
    let deadline = Instant::now() + WIND_DOWN;
    for phone in phones {
        timeout_at(deadline, phone)
            .await
            .expect("the phones close their sessions in time")
            .expect("a phone task does not panic");
    }

    let ledger = world.ledger();
    let outcome = check(&ledger, &kills_at);
    // Straight to the process's stderr, not through the test harness's
    // capture: the counts belong in every CI log, passing or not.
    let report = format!(
        "crash test: {USERS} users on {PHONES} devices, {KILLS} kills (kill -9) in {:.1} s of load, seed {seed}; \
         drain {} in {:.1} s\n{}\n",
        load_time.as_secs_f64(),
        if drained { "complete" } else { "gave up" },
        drain_time.as_secs_f64(),
        outcome.counts
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    if !outcome.failures.is_empty() {
        // The data directory goes with the server; its log is worth keeping.
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{seed}.log"));
        let log = match std::fs::copy(server.data_dir.path().join("server.log"), &kept) {
            Ok(_) => format!("the server's log (every start) is in {}", kept.display()),
            Err(e) => format!("the server's log could not be kept: {e}"),
        };
        panic!(
            "the server broke its guarantees across {KILLS} kills (seed {seed}):\n{}\n\n{}\n{log}",
            outcome.failures.join("\n"),
            outcome.counts
        );
    }
    assert!(
        outcome.acked > 0 && outcome.delivered > 0,
        "the test did not exercise anything: {}",
        outcome.counts
    );
}

/// What the phones share with each other and the controller.
#[derive(Debug)]
struct World {
    ledger: Mutex<Ledger>,
    /// Each user's id, by user index.
    users: Vec<u64>,
    /// Each device's id, by device ("phone") index.
    device_ids: Vec<u64>,
    tls: Arc<rustls::ClientConfig>,
    /// The server's current WebSocket URL: its port changes at every start.
    gateway: watch::Receiver<String>,
    phase: watch::Receiver<Phase>,
    /// The start of the load, the origin of the times in the ledger.
    epoch: Instant,
}

impl World {
    /// The ledger, locked briefly: never held across an `.await`.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .expect("ledger lock (poisoned only if a phone panicked)")
    }
}

/// Everything the phones saw, as each phone would store it, plus what the
/// checks need.
#[derive(Debug)]
struct Ledger {
    phones: Vec<PhoneLog>,
    /// Problems seen as they happened, word for word (the first few).
    notes: Vec<String>,
    /// All the problems seen as they happened.
    problems: usize,
    /// `Closing` frames by reason (sessions the server ended on purpose;
    /// `kill -9` ends them without one).
    closings: BTreeMap<String, u64>,
}

/// One phone's view, as a sender and as a recipient.
#[derive(Debug, Default)]
struct PhoneLog {
    /// Sequence numbers (`client_msg_id`s) 1..=sent were handed out.
    sent: u64,
    /// Sequence number → its server ack.
    acked: BTreeMap<u64, Acked>,
    /// Sends without a server ack yet.
    pending: usize,
    /// Sends sent again on a new session because they had no ack.
    resends: u64,
    /// Resends the server answered with the original ack: it had accepted
    /// the message before the crash, and the phone had not heard.
    original_acks: u64,
    /// Sessions the server ended (killed) under the phone.
    sessions_lost: u64,
    /// Times the phone went offline on its own.
    offline_periods: u64,
    /// Message ids received: the phone's de-duplication memory.
    seen_ids: HashSet<u64>,
    /// (sender, sequence number) → message id of its first delivery.
    delivered: HashMap<(usize, u64), u64>,
    /// Sender → sequence numbers in the order of their first delivery.
    order: HashMap<usize, Vec<u64>>,
    /// Deliveries of a message id already received (dropped by the phone).
    redeliveries: u64,
    /// Messages shown a second time under a new message id (which a phone
    /// cannot tell from a new message): (sender, seq, first id, second id).
    shown_twice: Vec<(usize, u64, u64, u64)>,
    /// Distinct receipt ids received.
    receipts: HashSet<u64>,
}

/// A server ack, as the sender stored it.
#[derive(Clone, Copy, Debug)]
struct Acked {
    message_id: u64,
    /// When it arrived, from the start of the load.
    at: Duration,
}

/// What the drain watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    acked: usize,
    delivered: usize,
    /// Device copies of acked messages not delivered (yet).
    missing: usize,
    /// Sent but not acked (yet).
    pending: usize,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            phones: (0..PHONES).map(|_| PhoneLog::default()).collect(),
            notes: Vec::new(),
            problems: 0,
            closings: BTreeMap::new(),
        }
    }

    fn problem(&mut self, what: String) {
        self.problems += 1;
        if self.notes.len() < MAX_NOTES {
            self.notes.push(what);
        }
    }

    fn progress(&self) -> Progress {
        let mut progress = Progress {
            acked: 0,
            delivered: 0,
            missing: 0,
            pending: 0,
        };
        for (sender, log) in self.phones.iter().enumerate() {
            progress.acked += log.acked.len();
            progress.delivered += log.delivered.len();
            progress.pending += log.pending;
            for &seq in log.acked.keys() {
                progress.missing += targets(sender, seq)
                    .into_iter()
                    .filter(|&to| !self.phones[to].delivered.contains_key(&(sender, seq)))
                    .count();
            }
        }
        progress
    }
}

/// Which user message `seq` of device `sender` goes to: alternately the
/// next user of the ring and the one opposite, so every device hears from
/// several senders and per-sender order is checked within an interleaved
/// mailbox.
fn recipient_of(sender: usize, seq: u64) -> usize {
    let user = user_of(sender);
    if seq.is_multiple_of(2) {
        (user + 1) % USERS
    } else {
        (user + USERS / 2) % USERS
    }
}

/// The devices message `seq` of device `sender` goes to: every device of
/// its recipient, and a copy to the sender's other device.
fn targets(sender: usize, seq: u64) -> Vec<usize> {
    let mut targets = devices_of(recipient_of(sender, seq));
    targets.extend(
        devices_of(user_of(sender))
            .into_iter()
            .filter(|&device| device != sender),
    );
    targets
}

fn body(sender: usize, seq: u64) -> String {
    format!("crash test: from {sender} seq {seq}")
}

fn parse_body(body: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (sender, seq) = text
        .strip_prefix("crash test: from ")?
        .split_once(" seq ")?;
    Some((sender.parse().ok()?, seq.parse().ok()?))
}

/// How a phone reconnects: short timeouts, since the server is local and
/// a dead one should be noticed quickly. A timeout here is never a failure:
/// the phone drops the session and reconnects, as after a kill.
const CONNECT: ConnectOptions = ConnectOptions {
    connect_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
    keepalive: Some(Duration::from_secs(20)),
};

/// A send without a server ack, as the phone keeps it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    seq: u64,
    /// When it was last resent (ms since the Unix epoch, the clock of the
    /// server's `timestamp_ms`: the same machine's), if it was.
    resent_at_ms: Option<u64>,
}

/// Why a session ended on the phone's side.
#[derive(Debug)]
enum Ended {
    /// The test is done.
    Done,
    /// The phone's online period is over.
    Offline,
}

/// One phone: connects, resends what has no ack, sends and receives, goes
/// offline now and then, and starts over whenever its session ends, until
/// the test is done.
async fn phone(world: Arc<World>, me: usize, token: String, seed: u64) {
    let mut rng = SplitMix64(seed ^ (me as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    // The phone's own storage: sends without a server ack, in send order,
    // and the next sequence number. Both outlive sessions.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_seq: u64 = 1;
    // The phone's own schedule: a kill does not change when it goes offline.
    let mut online_until =
        Instant::now() + Duration::from_millis(rng.between(ONLINE_MS.0, ONLINE_MS.1));
    while *world.phase.borrow() != Phase::Done {
        let Some(mut session) = connect(&world, me, &token, &mut rng).await else {
            return;
        };
        match drive(
            &world,
            me,
            &mut session,
            &mut pending,
            &mut next_seq,
            online_until,
        )
        .await
        {
            Ok(Ended::Done) => {
                // A clean close; what it answers no longer matters.
                let _ = session.close().await;
                return;
            }
            Ok(Ended::Offline) => {
                // Coverage lost, or the app closed: both must lose nothing.
                if rng.between(0, 1) == 0 {
                    session.drop_abruptly();
                } else {
                    let _ = session.close().await;
                }
                world.ledger().phones[me].offline_periods += 1;
                let back =
                    Instant::now() + Duration::from_millis(rng.between(OFFLINE_MS.0, OFFLINE_MS.1));
                while *world.phase.borrow() == Phase::Load {
                    let now = Instant::now();
                    if now >= back {
                        break;
                    }
                    sleep((back - now).min(POLL)).await;
                }
                online_until =
                    Instant::now() + Duration::from_millis(rng.between(ONLINE_MS.0, ONLINE_MS.1));
            }
            // The session ended (the server was killed): reconnect.
            Err(ClientError::Closed { .. } | ClientError::Io(_) | ClientError::Timeout) => {
                world.ledger().phones[me].sessions_lost += 1;
            }
            Err(other) => {
                let mut ledger = world.ledger();
                ledger.phones[me].sessions_lost += 1;
                ledger.problem(format!("phone {me}: session failed: {other}"));
            }
        }
    }
}

/// A new session on the server's current address, with backoff. `None` when
/// the test is done, or after [`RECONNECT_LIMIT`] (noted as a problem).
async fn connect(world: &World, me: usize, token: &str, rng: &mut SplitMix64) -> Option<Session> {
    let started = Instant::now();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if *world.phase.borrow() == Phase::Done {
            return None;
        }
        let url = world.gateway.borrow().clone();
        let error = match Session::connect_with(&url, world.tls.clone(), token, CONNECT).await {
            Ok(session) => return Some(session),
            Err(ClientError::Rejected { status: 401, .. }) => {
                world.ledger().problem(format!(
                    "phone {me}: the gateway refused its credential (HTTP 401); \
                     credentials issued before a crash must work after it"
                ));
                return None;
            }
            Err(error) => error,
        };
        if started.elapsed() > RECONNECT_LIMIT {
            world.ledger().problem(format!(
                "phone {me}: no session for {RECONNECT_LIMIT:?}; last error: {error}"
            ));
            return None;
        }
        // Jitter, so twenty phones do not knock in step.
        let jitter = Duration::from_millis(rng.between(0, backoff.as_millis() as u64 / 2));
        sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One session: resend what has no ack, then send new messages (while the
/// phase is `Load`) and handle what arrives, until the test is done or (in
/// `Load`) `online_until`. `Err` when the session ends under the phone.
async fn drive(
    world: &World,
    me: usize,
    session: &mut Session,
    pending: &mut VecDeque<Pending>,
    next_seq: &mut u64,
    online_until: Instant,
) -> Result<Ended, ClientError> {
    // First the sends the last session left without an ack, in their order
    // and with their client_msg_id: the server answers the ones it had
    // accepted with their original ack.
    for resend in pending.iter_mut() {
        let seq = resend.seq;
        resend.resent_at_ms = Some(now_ms());
        let to = recipient_of(me, seq);
        session.send(seq, world.users[to], body(me, seq)).await?;
        world.ledger().phones[me].resends += 1;
    }
    let mut next_send = Instant::now();
    loop {
        let phase = *world.phase.borrow();
        let now = Instant::now();
        if phase == Phase::Done {
            return Ok(Ended::Done);
        }
        if phase == Phase::Load && now >= online_until {
            return Ok(Ended::Offline);
        }
        let may_send = phase == Phase::Load && pending.len() < WINDOW;
        if may_send && now >= next_send {
            let seq = *next_seq;
            *next_seq += 1;
            // Stored before it is sent, as a phone must: if the session
            // dies during the send, it is resent on the next one.
            pending.push_back(Pending {
                seq,
                resent_at_ms: None,
            });
            {
                let mut ledger = world.ledger();
                ledger.phones[me].sent = seq;
                ledger.phones[me].pending = pending.len();
            }
            next_send = now + SEND_EVERY;
            let to = recipient_of(me, seq);
            session.send(seq, world.users[to], body(me, seq)).await?;
            continue;
        }
        let wait = if may_send {
            next_send.saturating_duration_since(now).min(POLL)
        } else {
            POLL
        };
        match session
            .next_frame_timeout(wait.max(Duration::from_millis(1)))
            .await
        {
            Ok(frame) => on_frame(world, me, session, pending, frame).await?,
            Err(ClientError::Timeout) => {}
            Err(error) => return Err(error),
        }
    }
}

/// Handles one frame as a phone does: acks settle sends, deliveries are
/// stored (de-duplicated by message id) and then acknowledged, receipts are
/// acknowledged.
async fn on_frame(
    world: &World,
    me: usize,
    session: &mut Session,
    pending: &mut VecDeque<Pending>,
    frame: ServerFrame,
) -> Result<(), ClientError> {
    let Some(frame) = frame.frame else {
        world
            .ledger()
            .problem(format!("phone {me}: a ServerFrame with no frame set"));
        return Ok(());
    };
    match frame {
        Frame::Ack(ack) => {
            let seq = ack.client_msg_id;
            let mut ledger = world.ledger();
            match pending.iter().position(|p| p.seq == seq) {
                Some(at) => {
                    if at != 0 {
                        let first = pending[0].seq;
                        ledger.problem(format!(
                            "phone {me}: the ack for seq {seq} came before the ack for seq {first}; \
                             answers must come in send order"
                        ));
                    }
                    let settled = pending.remove(at);
                    let log = &mut ledger.phones[me];
                    log.pending = pending.len();
                    // Accepted before it was resent: the original ack.
                    if settled
                        .and_then(|p| p.resent_at_ms)
                        .is_some_and(|resent| ack.timestamp_ms < resent)
                    {
                        log.original_acks += 1;
                    }
                    log.acked.insert(
                        seq,
                        Acked {
                            message_id: ack.message_id,
                            at: world.epoch.elapsed(),
                        },
                    );
                }
                // Every send is answered once, and a phone resends only
                // what has no ack.
                None => match ledger.phones[me].acked.get(&seq).map(|a| a.message_id) {
                    Some(id) => ledger.problem(format!(
                        "phone {me}: seq {seq} was acked (as message {id}) a second time (as {})",
                        ack.message_id
                    )),
                    None => ledger.problem(format!(
                        "phone {me}: an ack for seq {seq}, which it has no send pending for"
                    )),
                },
            }
        }
        Frame::SendError(error) => {
            let seq = error.client_msg_id;
            pending.retain(|p| p.seq != seq);
            let mut ledger = world.ledger();
            ledger.phones[me].pending = pending.len();
            ledger.problem(format!(
                "phone {me}: seq {seq} refused with {:?} ({}); the test's limits should let every send through",
                error.code(),
                error.reason
            ));
        }
        Frame::Deliver(deliver) => {
            {
                let mut ledger = world.ledger();
                match parse_body(&deliver.body) {
                    Some((sender, seq)) if sender < PHONES => {
                        let from = (world.users[user_of(sender)], world.device_ids[sender]);
                        if (deliver.from_user, deliver.from_device) != from {
                            ledger.problem(format!(
                                "phone {me}: message {sender}/{seq} claims to be from {}/{}, not {}/{}",
                                deliver.from_user, deliver.from_device, from.0, from.1
                            ));
                        }
                        if deliver.to_user != world.users[recipient_of(sender, seq)] {
                            ledger.problem(format!(
                                "phone {me}: message {sender}/{seq} names {} as its recipient",
                                deliver.to_user
                            ));
                        }
                        if !targets(sender, seq).contains(&me) {
                            ledger.problem(format!(
                                "phone {me}: got message {sender}/{seq}, which went to user {}",
                                recipient_of(sender, seq)
                            ));
                        }
                        let log = &mut ledger.phones[me];
                        if !log.seen_ids.insert(deliver.message_id) {
                            log.redeliveries += 1;
                        } else {
                            match log.delivered.entry((sender, seq)) {
                                Entry::Vacant(entry) => {
                                    entry.insert(deliver.message_id);
                                    log.order.entry(sender).or_default().push(seq);
                                }
                                Entry::Occupied(entry) => {
                                    let first = *entry.get();
                                    log.shown_twice
                                        .push((sender, seq, first, deliver.message_id));
                                }
                            }
                        }
                    }
                    _ => ledger.problem(format!(
                        "phone {me}: a delivery whose body is not the test's: {:?}",
                        String::from_utf8_lossy(&deliver.body)
                    )),
                }
            }
            // Acknowledged once stored (above), as a phone must.
            session.ack_delivery(vec![deliver.message_id]).await?;
        }
        Frame::Receipt(receipt) => {
            world.ledger().phones[me]
                .receipts
                .insert(receipt.receipt_id);
            session.ack_receipts(vec![receipt.receipt_id]).await?;
        }
        Frame::QueueEmpty(_) | Frame::ReadSync(_) | Frame::PushTokenResult(_) => {}
        Frame::Error(error) => world.ledger().problem(format!(
            "phone {me}: Error frame {:?}: {}",
            error.code(),
            error.reason
        )),
        Frame::Closing(closing) => {
            *world
                .ledger()
                .closings
                .entry(format!("{:?}", closing.reason()))
                .or_default() += 1;
        }
    }
    Ok(())
}

/// The verdict on a finished run.
struct Outcome {
    /// One line per kind of broken guarantee (empty: all kept).
    failures: Vec<String>,
    /// The counts, for people.
    counts: String,
    acked: usize,
    delivered: usize,
}

/// Checks the guarantees on everything the phones saw.
/// `kills_at`: when each kill happened, from the start of the load.
fn check(ledger: &Ledger, kills_at: &[Duration]) -> Outcome {
    let mut failures = Vec::new();

    // 1. Acked ⊆ delivered: what is missing, by sender and recipient.
    let mut lost: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
    // Lost messages by the kill that followed their ack (index KILLS: none did).
    let mut lost_by_kill = vec![0usize; kills_at.len() + 1];
    // 2b. Delivered under an id other than the one acked.
    let mut wrong_id = Vec::new();
    let mut delivered_acked = 0usize;
    for (sender, log) in ledger.phones.iter().enumerate() {
        for (
            &seq,
            &Acked {
                message_id: acked_id,
                at,
                ..
            },
        ) in &log.acked
        {
            for device in targets(sender, seq) {
                match ledger.phones[device].delivered.get(&(sender, seq)) {
                    None => {
                        lost.entry((sender, device)).or_default().push(seq);
                        lost_by_kill[kills_at.partition_point(|&kill| kill < at)] += 1;
                    }
                    Some(&id) if id != acked_id => wrong_id.push(format!(
                        "message {sender}/{seq} was acked as id {acked_id} but delivered to phone {device} as id {id}"
                    )),
                    Some(_) => delivered_acked += 1,
                }
            }
        }
    }
    let lost_count: usize = lost.values().map(Vec::len).sum();
    if lost_count > 0 {
        let by_kill: Vec<String> = lost_by_kill
            .iter()
            .enumerate()
            .filter(|(_, lost)| **lost > 0)
            .map(|(kill, lost)| match kills_at.get(kill) {
                Some(at) => format!("{lost} at kill {} ({:.1} s)", kill + 1, at.as_secs_f64()),
                // An ack read just after a kill counts for the next one: the
                // phone may read it from its socket after the server died.
                None => format!("{lost} acked after the last kill (or read just after it)"),
            })
            .collect();
        let mut text = format!(
            "LOST: {lost_count} device copies of messages acked to their sender were never \
             delivered; by the kill that followed their ack: {}.\n\
             Sending device → receiving device: sequence numbers (a device sends its even \
             numbers to the next user and its odd ones to the user opposite, so 8..=14 is \
             8, 10, 12, 14):",
            by_kill.join(", ")
        );
        for ((sender, to), seqs) in lost.iter().take(MAX_LISTED_PAIRS) {
            text.push_str(&format!(
                "\n  {sender:>2} → {to:>2}: {} ({} lost)",
                ranges(seqs, 2),
                seqs.len()
            ));
        }
        if lost.len() > MAX_LISTED_PAIRS {
            text.push_str(&format!(
                "\n  ... and {} more sender-recipient pairs",
                lost.len() - MAX_LISTED_PAIRS
            ));
        }
        failures.push(text);
    }
    if !wrong_id.is_empty() {
        failures.push(format!(
            "WRONG ID: {} messages were delivered under an id other than their ack's:\n  {}",
            wrong_id.len(),
            wrong_id
                .iter()
                .take(MAX_NOTES)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }

    // 2a. Shown twice: one (sender, seq) under two message ids.
    let twice: Vec<String> = ledger
        .phones
        .iter()
        .enumerate()
        .flat_map(|(to, log)| {
            log.shown_twice.iter().map(move |(sender, seq, first, second)| {
                format!("phone {to} was shown message {sender}/{seq} as id {first} and again as id {second}")
            })
        })
        .collect();
    if !twice.is_empty() {
        failures.push(format!(
            "SHOWN TWICE: {} messages reached their recipient under two message ids \
             (a resend was not recognised):\n  {}",
            twice.len(),
            twice
                .iter()
                .take(MAX_NOTES)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }

    // 3. Per-sender order of first deliveries; and no message never sent.
    let mut disorder = Vec::new();
    let mut phantoms = Vec::new();
    for (to, log) in ledger.phones.iter().enumerate() {
        for (&sender, seqs) in &log.order {
            if let Some(pair) = seqs.windows(2).find(|pair| pair[1] <= pair[0]) {
                disorder.push(format!(
                    "phone {to} got seq {} from phone {sender} after seq {}",
                    pair[1], pair[0]
                ));
            }
            let sent = ledger.phones[sender].sent;
            if let Some(seq) = seqs.iter().find(|&&seq| seq > sent) {
                phantoms.push(format!(
                    "phone {to} got seq {seq} from phone {sender}, which sent only {sent}"
                ));
            }
        }
    }
    if !disorder.is_empty() {
        failures.push(format!(
            "OUT OF ORDER: {} sender-recipient pairs:\n  {}",
            disorder.len(),
            disorder.join("\n  ")
        ));
    }
    if !phantoms.is_empty() {
        failures.push(format!(
            "NEVER SENT: {} deliveries of messages never sent:\n  {}",
            phantoms.len(),
            phantoms.join("\n  ")
        ));
    }

    // The rest, noted while they happened: acks out of order, refused sends,
    // error frames, phones that could not reconnect.
    if ledger.problems > 0 {
        failures.push(format!(
            "DURING THE RUN: {} problems{}:\n  {}",
            ledger.problems,
            if ledger.problems > ledger.notes.len() {
                format!(" (the first {} listed)", ledger.notes.len())
            } else {
                String::new()
            },
            ledger.notes.join("\n  ")
        ));
    }

    let sum = |f: fn(&PhoneLog) -> u64| ledger.phones.iter().map(f).sum::<u64>();
    let sent = sum(|log| log.sent);
    let acked = ledger
        .phones
        .iter()
        .map(|log| log.acked.len())
        .sum::<usize>();
    let delivered = ledger
        .phones
        .iter()
        .map(|log| log.delivered.len())
        .sum::<usize>();
    let counts = format!(
        "counts checked:\n  \
         messages sent (client_msg_ids used):      {sent}\n  \
         resent after a reconnect:                 {}\n  \
         sessions lost to a kill:                  {}\n  \
         offline periods (phone dropped its link): {}\n  \
         acked to their sender (one checkmark):    {acked}\n  \
         device copies delivered, unique:          {delivered}\n  \
         device copies delivered with the acked id: {delivered_acked}\n  \
         redeliveries de-duplicated by the client: {}\n  \
         resends answered with the original ack:   {}\n  \
         receipts received:                        {}\n  \
         Closing frames:                           {:?}\n  \
         LOST (acked, never delivered):            {lost_count}\n  \
         shown twice under two ids:                {}\n  \
         delivered with another id than acked:     {}\n  \
         pairs out of per-sender order:            {}",
        sum(|log| log.resends),
        sum(|log| log.sessions_lost),
        sum(|log| log.offline_periods),
        sum(|log| log.redeliveries),
        sum(|log| log.original_acks),
        sum(|log| log.receipts.len() as u64),
        ledger.closings,
        twice.len(),
        wrong_id.len(),
        disorder.len(),
    );
    Outcome {
        failures,
        counts,
        acked,
        delivered,
    }
}

/// `1..=3, 7, 9..=12` for sorted numbers, where a run is numbers `step`
/// apart.
fn ranges(seqs: &[u64], step: u64) -> String {
    let mut parts = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &seq in seqs {
        run = match run {
            Some((first, last)) if seq == last + step => Some((first, seq)),
            Some(done) => {
                parts.push(done);
                Some((seq, seq))
            }
            None => Some((seq, seq)),
        };
    }
    parts.extend(run);
    parts
        .iter()
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..={last}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's identity on disk: the self-signed TLS certificate and key,
/// and the JWT signing key. A restart must reuse them, or phones would stop
/// trusting the server and every credential would stop working.
struct Identity(BTreeMap<PathBuf, Vec<u8>>);

impl Identity {
    const DIRS: [&str; 2] = ["tls", "keys"];

    fn read(data_dir: &Path) -> Identity {
        let mut files = BTreeMap::new();
        for dir in Identity::DIRS {
            let entries = std::fs::read_dir(data_dir.join(dir))
                .unwrap_or_else(|e| panic!("{dir}/ in the data directory: {e}"));
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let hidden = path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'));
                if path.is_file() && !hidden {
                    let bytes = std::fs::read(&path).expect("read an identity file");
                    let relative = path
                        .strip_prefix(data_dir)
                        .expect("inside the data directory")
                        .to_owned();
                    files.insert(relative, bytes);
                }
            }
        }
        assert!(
            !files.is_empty(),
            "no certificate or key files in the data directory"
        );
        Identity(files)
    }

    /// Panics naming the files that differ (never their contents: keys).
    fn assert_unchanged(&self, data_dir: &Path, kill: usize) {
        let now = Identity::read(data_dir);
        let changed: Vec<_> = self
            .0
            .keys()
            .chain(now.0.keys())
            .filter(|path| self.0.get(*path) != now.0.get(*path))
            .map(|path| path.display().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(
            changed.is_empty(),
            "restart {kill} changed the server's identity files {changed:?}: the certificate \
             and the keys must persist in the data directory across a crash"
        );
    }
}

/// Milliseconds since the Unix epoch, as the server's `timestamp_ms`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The seed of the kill schedule: `PARLEY_CRASH_SEED`, or the clock.
fn seed() -> u64 {
    match std::env::var("PARLEY_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("PARLEY_CRASH_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// SplitMix64: a tiny seeded generator, so a schedule can be replayed
/// without a dependency for it.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

#[test]
fn ranges_are_compact() {
    assert_eq!(ranges(&[1, 2, 3, 7, 9, 10, 11, 12], 1), "1..=3, 7, 9..=12");
    assert_eq!(ranges(&[2, 4, 6, 9, 11], 2), "2..=6, 9..=11");
    assert_eq!(ranges(&[5], 2), "5");
    assert_eq!(ranges(&[], 1), "");
}

#[test]
fn bodies_round_trip() {
    assert_eq!(parse_body(body(17, 4242).as_bytes()), Some((17, 4242)));
    assert_eq!(parse_body(b"hello"), None);
}
