//! Several devices per user (issue 9), end to end through the real
//! `parley-cli` binary against a real `parley` process: linking a laptop
//! and a tablet with a code from the primary, a message reaching every
//! device of the recipient and a copy reaching the sender's others, each
//! device acknowledging on its own, receipts naming the device, read-syncs,
//! `send --per-device` and its stale device lists, `devices`, `unlink` (and
//! what the unlinked device is told), and linking again.
//!
//! These need the server's devices API (`/v1/devices/...`,
//! `/v1/users/{id}/devices`, docs/cli.md "Devices"). Every run of the CLI
//! gets a `HOME` and `XDG_CONFIG_HOME` of its own and `RUST_BACKTRACE=1`,
//! and every wait is bounded and waits for behaviour, never for time.

#[path = "common/cli.rs"]
mod cli_run;
mod common;

use std::process::{Output, Stdio};

use common::TestServer;
use parley_proto::v1::server_frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

use cli_run::*;

/// Someone with a home folder of their own, holding the profiles of their
/// devices (`alice`, `alice-laptop`, ...).
struct Person {
    home: tempfile::TempDir,
}

impl Person {
    fn new() -> Person {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join("work")).expect("work folder");
        Person { home }
    }

    /// `parley-cli --profile PROFILE` in this person's environment.
    fn cli(&self, profile: &str) -> Command {
        let mut command = self.bare_cli();
        command.args(["--profile", profile]);
        command
    }

    /// `parley-cli` in this person's environment, nothing else set.
    fn bare_cli(&self) -> Command {
        cli_in(self.home.path())
    }

    /// Runs `parley-cli --profile PROFILE ARGS...` to the end.
    async fn run(&self, profile: &str, args: &[&str]) -> Output {
        let mut command = self.cli(profile);
        command.args(args);
        run(command).await
    }

    /// Registers a fresh number as the primary device `profile`, through
    /// the prompt as the README does; returns the user id.
    async fn register(&self, server: &TestServer, profile: &str) -> u64 {
        let phone = server.phone();
        let mut command = self.cli(profile);
        command
            .args(server_flags(server))
            .args(["register", &phone])
            .stdin(Stdio::piped());
        let mut child = command.spawn().expect("cli starts");
        let mut stderr = Reader::new(child.stderr.take().expect("stderr"));
        stderr.until("code: ").await;
        let code = server.code_for(&phone);
        let stdin = child.stdin.as_mut().expect("stdin piped");
        stdin
            .write_all(format!("{code}\n").as_bytes())
            .await
            .expect("type");
        stdin.flush().await.expect("flush");
        let out = finish(child, stderr).await;
        let text = success(&out);
        text.trim()
            .strip_prefix("registered ")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("expected `registered <id>`, got {text:?}"))
    }

    /// `link` on `primary`: the code.
    async fn link_code(&self, primary: &str) -> String {
        let out = self.run(primary, &["link"]).await;
        let text = success(&out);
        let first = text.lines().next().unwrap_or_default();
        let rest = first.strip_prefix("link code ").unwrap_or_else(|| {
            panic!(
                "expected `link code <code> expires in <secs> s` (is the server's devices API there?), got {text:?}"
            )
        });
        let (code, expiry) = rest.split_once(' ').expect("code and expiry");
        assert!(
            expiry.starts_with("expires in ") && expiry.ends_with(" s"),
            "{first}"
        );
        code.to_owned()
    }

    /// Links `profile` (a new one) to `primary`'s account; returns
    /// `(user_id, device_id)` from `linked <user_id> device <device_id>`.
    async fn link(&self, server: &TestServer, primary: &str, profile: &str) -> (u64, u64) {
        let code = self.link_code(primary).await;
        let mut command = self.cli(profile);
        command
            .args(server_flags(server))
            .args(["link-accept", &code, "--name", profile]);
        linked(&success(&run(command).await))
    }

    /// Starts `listen` (and its arguments) on `profile`, its stdout read
    /// line by line.
    fn listen(&self, profile: &str, args: &[&str]) -> Listening {
        let mut command = self.cli(profile);
        command.arg("listen").args(args);
        let mut child = command.spawn().expect("listen starts");
        let lines = Reader::new(child.stdout.take().expect("stdout"));
        Listening { child, lines }
    }
}

/// A running `listen`.
struct Listening {
    child: Child,
    lines: Reader<ChildStdout>,
}

impl Listening {
    /// Waits (bounded) for `line` to be printed, as a whole line.
    async fn until(&mut self, line: &str) -> String {
        self.lines.until(&format!("{line}\n")).await
    }

    /// Stops it with SIGTERM, as Ctrl-C would; it must exit cleanly.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let status = timeout(RUN_LIMIT, self.child.wait())
            .await
            .expect("listen stops")
            .expect("wait");
        assert!(status.success(), "listen on SIGTERM: {status}");
        self.lines.rest().await
    }

    /// Waits for it to end on its own: its exit status and stderr.
    async fn ended(mut self) -> Output {
        let status = timeout(RUN_LIMIT, self.child.wait())
            .await
            .expect("listen ends")
            .expect("wait");
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .await
            .expect("stderr");
        Output {
            status,
            stdout: self.lines.rest().await.into_bytes(),
            stderr: err.into_bytes(),
        }
    }
}

/// `(user_id, device_id)` of `linked <user_id> device <device_id>`.
fn linked(text: &str) -> (u64, u64) {
    let parsed = text
        .trim()
        .strip_prefix("linked ")
        .and_then(|rest| rest.split_once(" device "))
        .and_then(|(user, device)| Some((user.parse().ok()?, device.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("expected `linked <user_id> device <device_id>`, got {text:?}"))
}

/// The message id of `✓ sent <id>`, the first line of `text`.
fn sent(text: &str) -> u64 {
    text.lines()
        .next()
        .and_then(|line| line.strip_prefix("✓ sent "))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `✓ sent <id>`, got {text:?}"))
}

/// `device_id` of `whoami`.
async fn device_of(person: &Person, profile: &str) -> u64 {
    let text = success(&person.run(profile, &["whoami"]).await);
    text.lines()
        .find_map(|line| line.strip_prefix("device_id "))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no device_id in {text:?}"))
}

/// A message to Bob reaches each of his devices, online ones at once and
/// the offline one when it connects; each acknowledges on its own, so
/// Alice's devices get a DELIVERED receipt naming each; her laptop, linked
/// with the exact command `link` printed, shows the message as a copy of
/// her own.
#[tokio::test]
async fn a_message_reaches_every_device_and_each_acks_on_its_own() {
    let server = TestServer::start();
    let alice = Person::new();
    let alice_id = alice.register(&server, "alice").await;
    let bob = Person::new();
    let bob_id = bob.register(&server, "bob").await;

    // Alice's laptop: the command `link` printed, as printed.
    let out = alice.run("alice", &["link"]).await;
    let text = success(&out);
    let command = text
        .lines()
        .find_map(|line| line.strip_prefix("on the new device: "))
        .unwrap_or_else(|| panic!("no command in {text:?}"));
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(
        words[..3],
        ["parley-cli", "--profile", "alice-2"],
        "{command}"
    );
    assert!(
        command.contains(&format!("--http {}", server.http_url())),
        "{command}"
    );
    let mut accept = alice.bare_cli();
    accept.args(&words[1..]);
    let (user, alice_laptop) = linked(&success(&run(accept).await));
    assert_eq!(user, alice_id);
    let (user, bob_laptop) = bob.link(&server, "bob", "bob-laptop").await;
    assert_eq!(user, bob_id);
    let (_, bob_tablet) = bob.link(&server, "bob", "bob-tablet").await;
    let alice_phone = device_of(&alice, "alice").await;
    let bob_phone = device_of(&bob, "bob").await;
    assert_eq!(
        [alice_phone, alice_laptop, bob_phone, bob_laptop, bob_tablet]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        5,
        "five devices, five ids"
    );

    // Bob's phone and laptop and Alice's laptop are online; the tablet is
    // not.
    let mut phone = bob.listen("bob", &[]);
    let mut laptop = bob.listen("bob-laptop", &[]);
    let mut alices_laptop = alice.listen("alice-2", &[]);
    // Proof that each is connected: a message Bob's tablet sends to Alice
    // (which also reaches Bob's phone and laptop, as copies).
    let hello = success(
        &bob.run("bob-tablet", &["send", &alice_id.to_string(), "ready"])
            .await,
    );
    let ready = sent(&hello);
    let copy_of_ready = format!("{bob_id}/{bob_tablet} → {alice_id} {ready} ready");
    phone.until(&copy_of_ready).await;
    laptop.until(&copy_of_ready).await;
    alices_laptop
        .until(&format!("{bob_id}/{bob_tablet} {ready} ready"))
        .await;

    let out = alice
        .run(
            "alice",
            &[
                "send",
                &bob_id.to_string(),
                "hello all of you",
                "--wait",
                "delivered",
            ],
        )
        .await;
    let text = success(&out);
    let message = sent(&text);
    let receipt = text.lines().nth(1).unwrap_or_default();
    assert!(
        receipt == format!("✓✓ delivered {message} by {bob_id}/{bob_phone}")
            || receipt == format!("✓✓ delivered {message} by {bob_id}/{bob_laptop}"),
        "the first of Bob's online devices to ack ends the wait: {text:?}"
    );
    let line = format!("{alice_id}/{alice_phone} {message} hello all of you");
    phone.until(&line).await;
    laptop.until(&line).await;
    // Alice's laptop: the copy, then a receipt from each of Bob's devices
    // as each stores the message (the tablet when it comes online).
    let copy = format!("{alice_id}/{alice_phone} → {bob_id} {message} hello all of you");
    alices_laptop.until(&copy).await;
    let tablet = success(&bob.run("bob-tablet", &["listen", "--exit-on-empty"]).await);
    assert!(tablet.contains(&format!("{line}\n")), "{tablet}");
    let receipts: Vec<String> = [bob_phone, bob_laptop, bob_tablet]
        .iter()
        .map(|device| format!("✓✓ delivered {message} by {bob_id}/{device}\n"))
        .collect();
    let shown = alices_laptop.lines.until_all(&receipts).await;

    let phone_rest = phone.stop().await;
    let laptop_rest = laptop.stop().await;
    let all = format!("{shown}{}", alices_laptop.stop().await);
    for receipt in &receipts {
        assert_eq!(
            all.matches(receipt.as_str()).count(),
            1,
            "{receipt:?} once: {all}"
        );
    }
    assert!(
        !phone_rest.contains("hello all of you"),
        "shown once: {phone_rest}"
    );
    assert!(
        !laptop_rest.contains("hello all of you"),
        "shown once: {laptop_rest}"
    );
}

/// Bob reads on his phone: Alice's devices get a READ receipt naming the
/// phone; Bob's laptop gets a read-sync naming it.
#[tokio::test]
async fn read_receipts_name_the_reader_and_read_syncs_reach_the_other_devices() {
    let server = TestServer::start();
    let alice = Person::new();
    let alice_id = alice.register(&server, "alice").await;
    let bob = Person::new();
    let bob_id = bob.register(&server, "bob").await;
    let (_, bob_laptop) = bob.link(&server, "bob", "bob-laptop").await;
    let bob_phone = device_of(&bob, "bob").await;

    let message = sent(&success(
        &alice
            .run("alice", &["send", &bob_id.to_string(), "read me"])
            .await,
    ));
    // The laptop stores it without reading it; the phone reads it.
    let laptop = success(&bob.run("bob-laptop", &["listen", "--exit-on-empty"]).await);
    assert!(laptop.contains(&format!("{message} read me\n")), "{laptop}");
    let phone = success(
        &bob.run("bob", &["listen", "--read", "--exit-on-empty"])
            .await,
    );
    assert!(phone.contains(&format!("{message} read me\n")), "{phone}");

    let mut laptop = bob.listen("bob-laptop", &[]);
    laptop
        .until(&format!(
            "read-sync {message} from {alice_id} on {bob_id}/{bob_phone}"
        ))
        .await;
    let mut receipts = alice.listen("alice", &[]);
    let wanted = [
        format!("✓✓ delivered {message} by {bob_id}/{bob_laptop}\n"),
        format!("✓✓ delivered {message} by {bob_id}/{bob_phone}\n"),
        format!("✓✓ read {message} by {bob_id}/{bob_phone}\n"),
    ];
    let shown = receipts.lines.until_all(&wanted).await;
    let all = format!("{shown}{}", receipts.stop().await);
    let _ = laptop.stop().await;
    assert!(
        !all.contains(&format!("✓✓ read {message} by {bob_id}/{bob_laptop}")),
        "the laptop did not read it: {all}"
    );

    // Everything was acknowledged: nothing comes again.
    let again = success(&bob.run("bob-laptop", &["listen", "--exit-on-empty"]).await);
    assert_eq!(again, "");
}

/// `send --per-device`: one envelope per device, from lists the profile
/// keeps; a device linked (missing) or unlinked (extra) since is fixed from
/// the server's `DEVICES_CHANGED`, and the message still reaches exactly
/// the devices it should.
#[tokio::test]
async fn per_device_sends_survive_a_stale_list() {
    let server = TestServer::start();
    let alice = Person::new();
    alice.register(&server, "alice").await;
    let (alice_id, _) = alice.link(&server, "alice", "alice-laptop").await;
    let bob = Person::new();
    let bob_id = bob.register(&server, "bob").await;
    let (_, bob_laptop) = bob.link(&server, "bob", "bob-laptop").await;
    let alice_phone = device_of(&alice, "alice").await;
    let to_bob = bob_id.to_string();

    let one = success(
        &alice
            .run("alice", &["send", &to_bob, "one", "--per-device"])
            .await,
    );
    let one = sent(&one);
    for profile in ["bob", "bob-laptop"] {
        let got = success(&bob.run(profile, &["listen", "--exit-on-empty"]).await);
        assert!(
            got.contains(&format!("{alice_id}/{alice_phone} {one} one\n")),
            "{profile}: {got}"
        );
    }
    let copy = success(
        &alice
            .run("alice-laptop", &["listen", "--exit-on-empty"])
            .await,
    );
    assert!(
        copy.contains(&format!("{alice_id}/{alice_phone} → {bob_id} {one} one\n")),
        "{copy}"
    );

    // Bob links a tablet: Alice's list of his devices is stale (missing).
    let (_, bob_tablet) = bob.link(&server, "bob", "bob-tablet").await;
    let out = alice
        .run("alice", &["send", &to_bob, "two", "--per-device"])
        .await;
    let two = sent(&success(&out));
    let note = stderr(&out);
    assert!(
        note.contains(&format!("missing {bob_id}/{bob_tablet}")) && note.contains("sending again"),
        "{note}"
    );
    let tablet = success(&bob.run("bob-tablet", &["listen", "--exit-on-empty"]).await);
    assert!(tablet.contains(&format!("{two} two\n")), "{tablet}");
    assert!(!tablet.contains(" one\n"), "linked after `one`: {tablet}");

    // Bob unlinks his laptop: the list names a device too many (extra).
    success(&bob.run("bob", &["unlink", &bob_laptop.to_string()]).await);
    let out = alice
        .run("alice", &["send", &to_bob, "three", "--per-device"])
        .await;
    let three = sent(&success(&out));
    let note = stderr(&out);
    assert!(
        note.contains(&format!("extra {bob_id}/{bob_laptop}")) && note.contains("sending again"),
        "{note}"
    );
    for profile in ["bob", "bob-tablet"] {
        let got = success(&bob.run(profile, &["listen", "--exit-on-empty"]).await);
        assert!(
            got.contains(&format!("{three} three\n")),
            "{profile}: {got}"
        );
    }
    // The fixed lists were kept: the next send is right the first time.
    let out = alice
        .run("alice", &["send", &to_bob, "four", "--per-device"])
        .await;
    sent(&success(&out));
    assert!(!stderr(&out).contains("sending again"), "{}", stderr(&out));
    // Alice's laptop got every copy.
    let copies = success(
        &alice
            .run("alice-laptop", &["listen", "--exit-on-empty"])
            .await,
    );
    for (id, text) in [(two, "two"), (three, "three")] {
        assert!(
            copies.contains(&format!(
                "{alice_id}/{alice_phone} → {bob_id} {id} {text}\n"
            )),
            "{copies}"
        );
    }
}

/// `devices` lists the account's devices; `link` and `unlink` refuse what
/// they must, with the fix; an unlinked device's `listen` ends with the
/// explanation and the exact commands, which every later command repeats;
/// linking it again in place works, a working profile is never
/// overwritten, and a linked device may unlink itself.
#[tokio::test]
async fn devices_unlink_and_link_again() {
    let server = TestServer::start();
    let alice = Person::new();
    let alice_id = alice.register(&server, "alice").await;
    let (_, laptop) = alice.link(&server, "alice", "alice-laptop").await;
    let phone = device_of(&alice, "alice").await;

    let listed = success(&alice.run("alice", &["devices"]).await);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let line_of = |lines: &[&str], device: u64| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{device} ")))
            .map(|l| l.to_string())
            .unwrap_or_else(|| panic!("no device {device} in {lines:?}"))
    };
    assert!(
        line_of(&lines, phone).starts_with(&format!("{phone} primary this ")),
        "{listed}"
    );
    let laptop_line = line_of(&lines, laptop);
    assert!(
        laptop_line.starts_with(&format!("{laptop} linked other "))
            && laptop_line.ends_with(" alice-laptop"),
        "{listed}"
    );
    let from_laptop = success(&alice.run("alice-laptop", &["devices"]).await);
    let lines: Vec<&str> = from_laptop.lines().collect();
    assert!(
        line_of(&lines, laptop).starts_with(&format!("{laptop} linked this ")),
        "{from_laptop}"
    );

    // What is refused, and the fix.
    let error = error_line(&alice.run("alice-laptop", &["link"]).await);
    assert!(error.contains("primary's profile"), "{error}");
    let error = error_line(&alice.run("alice", &["unlink", &phone.to_string()]).await);
    assert!(error.contains("cannot be unlinked"), "{error}");
    let error = error_line(&alice.run("alice", &["unlink", "12345"]).await);
    assert!(
        error.contains("no device 12345") && error.contains("`parley-cli --profile alice devices`"),
        "{error}"
    );
    let code = alice.link_code("alice").await;
    let error = error_line(&alice.run("alice-laptop", &["link-accept", &code]).await);
    assert!(
        error.contains("already holds a working device")
            && error.contains("`parley-cli --profile alice-laptop-2 link-accept "),
        "{error}"
    );

    // The laptop listens; a message to Alice proves its session is live.
    let mut listening = alice.listen("alice-laptop", &[]);
    let bob = server.register().await;
    let mut b = server.connect(&bob).await;
    b.send(1, alice_id, "are you there?").await.expect("send");
    listening.lines.until(" are you there?\n").await;

    let out = alice.run("alice", &["unlink", &laptop.to_string()]).await;
    assert_eq!(success(&out), format!("unlinked {laptop}\n"));
    let live = error_line(&listening.ended().await);
    assert!(live.contains("removed from its account"), "{live}");
    assert!(
        live.contains("`parley-cli --profile alice-laptop link-accept <code>`"),
        "{live}"
    );
    // Later, the refused credential reads the same.
    let upgrade = error_line(&alice.run("alice-laptop", &["listen"]).await);
    assert_eq!(live, upgrade);
    let listed = success(&alice.run("alice", &["devices"]).await);
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // Linked again, in place: the code made above still works (it was not
    // redeemed), and the laptop is a new device that gets new messages.
    let out = alice.run("alice-laptop", &["link-accept", &code]).await;
    let (user, again) = linked(&success(&out));
    assert_eq!(user, alice_id);
    assert_ne!(again, laptop, "a new device");
    assert!(
        stderr(&out).contains("linking replaces it"),
        "{}",
        stderr(&out)
    );
    // A new session (the first one may have gone idle meanwhile); the
    // ack says the message is queued before the laptop looks.
    let mut b = server.connect(&bob).await;
    b.send(2, alice_id, "welcome back").await.expect("send");
    common::until(&mut b, |frame| matches!(frame, Frame::Ack(_))).await;
    let got = success(
        &alice
            .run("alice-laptop", &["listen", "--exit-on-empty"])
            .await,
    );
    assert!(got.contains(" welcome back\n"), "{got}");
    assert!(!got.contains("are you there?"), "{got}");

    // A linked device may unlink itself, and is told how to come back.
    let out = alice
        .run("alice-laptop", &["unlink", &again.to_string()])
        .await;
    assert_eq!(success(&out), format!("unlinked {again}\n"));
    assert!(
        stderr(&out).contains("that was this device"),
        "{}",
        stderr(&out)
    );
    let error = error_line(&alice.run("alice-laptop", &["devices"]).await);
    assert!(error.contains("removed from its account"), "{error}");
}
