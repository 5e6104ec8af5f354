//! End to end through the real `parley-cli` binary against a real `parley`
//! process: what a newcomer following the README sees, for every mistake
//! of the first ten minutes (issue 8): a wrong or abandoned PIN, a phone
//! number where a user id belongs, numbers written the human way, the wrong
//! certificate, a server that is not running, a revoked device, profiles,
//! `send --wait` running out of time, and read receipts forged by someone
//! who is not the recipient.
//!
//! Every run of the CLI gets a `HOME` and `XDG_CONFIG_HOME` of its own (so
//! no test touches the real home) and `RUST_BACKTRACE=1` (so a panic would
//! show), and every error is checked to be one line on stderr with exit
//! code 1.

#[path = "common/cli.rs"]
mod cli_run;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{PROMPTLY, TestServer};
use parley_client::profile::{PROFILE_FILE, ProfileDir};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

use cli_run::*;

/// Someone at a terminal: a home folder of their own, a working folder
/// (where an old parley-cli would have made `./NAME/`), and a profile name.
struct Person {
    home: tempfile::TempDir,
    profile: &'static str,
}

impl Person {
    fn new(profile: &'static str) -> Person {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join("work")).expect("work folder");
        Person { home, profile }
    }

    fn config_home(&self) -> PathBuf {
        self.home.path().join("config")
    }

    fn work(&self) -> PathBuf {
        self.home.path().join("work")
    }

    /// Where the profile must end up.
    fn profile_dir(&self) -> PathBuf {
        self.config_home()
            .join("parley/profiles")
            .join(self.profile)
    }

    /// `parley-cli --profile NAME` in this person's environment, nothing
    /// else set: endpoints come from flags or the profile.
    fn cli(&self) -> Command {
        let mut command = self.bare_cli();
        command.args(["--profile", self.profile]);
        command
    }

    /// `parley-cli` in this person's environment, without a profile flag.
    fn bare_cli(&self) -> Command {
        cli_in(self.home.path())
    }

    /// `parley-cli --profile NAME register PHONE` pointed at `server`.
    fn register_command(&self, server: &TestServer, phone: &str) -> Command {
        let mut command = self.cli();
        command.args(server_flags(server)).args(["register", phone]);
        command
    }

    /// Registers `phone` through the prompt, as the README does; returns
    /// the user id.
    async fn register(&self, server: &TestServer, phone: &str) -> u64 {
        let mut command = self.register_command(server, phone);
        let mut child = command.stdin(Stdio::piped()).spawn().expect("cli starts");
        let mut stderr = Reader::new(child.stderr.take().expect("stderr"));
        stderr.until("code: ").await;
        let code = server.code_for(phone);
        type_line(&mut child, &code).await;
        let out = finish(child, stderr).await;
        registered(&out)
    }
}

fn registered(out: &Output) -> u64 {
    let text = success(out);
    text.trim()
        .strip_prefix("registered ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `registered <id>`, got {text:?}"))
}

/// Stops a running `listen` with SIGTERM, as Ctrl-C would, and checks it
/// exited cleanly.
async fn stop(child: &mut Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = timeout(RUN_LIMIT, child.wait())
        .await
        .expect("listen stops")
        .expect("wait");
    assert!(status.success(), "listen on SIGTERM: {status}");
}

/// A six-digit code that is not `code`.
fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| match c {
            '9' => '0',
            c => char::from(c as u8 + 1),
        })
        .collect()
}

/// The number of SMS the development outbox holds for `phone`.
fn codes_sent(server: &TestServer, phone: &str) -> usize {
    std::fs::read_to_string(server.outbox())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&format!("\"to\":\"{phone}\"")))
        .count()
}

/// A loopback port nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
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

/// Issue 8, point 7 and 14: a wrong code prompts again; the profile lands in
/// the configuration folder, private, and nothing is made in the working
/// folder.
#[tokio::test]
async fn a_wrong_code_prompts_again_and_the_profile_lands_in_the_config_dir() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    let phone = server.phone();

    let mut command = alice.register_command(&server, &phone);
    let mut child = command.stdin(Stdio::piped()).spawn().expect("cli starts");
    let mut err = Reader::new(child.stderr.take().expect("stderr"));
    let first = err.until("code: ").await;
    assert!(first.contains("a code is on its way by SMS"), "{first}");
    let code = server.code_for(&phone);
    type_line(&mut child, &wrong(&code)).await;
    let again = err.until("code: ").await;
    assert!(again.contains("wrong code (4 attempts left)"), "{again}");
    type_line(&mut child, &code).await;
    let out = finish(child, err).await;
    let user_id = registered(&out);
    assert_eq!(
        codes_sent(&server, &phone),
        1,
        "one code for the whole prompt"
    );

    let dir = alice.profile_dir();
    assert!(
        dir.join(PROFILE_FILE).is_file(),
        "no profile in {}",
        dir.display()
    );
    let profile = ProfileDir::new(&dir).load().expect("profile loads");
    assert_eq!(profile.user_id, user_id);
    assert_eq!(profile.phone, phone);
    assert_eq!(
        std::fs::read_dir(alice.work()).expect("work").count(),
        0,
        "nothing is created in the working folder"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(PROFILE_FILE)), 0o600);
    }
    let mut command = alice.cli();
    command.arg("whoami");
    let whoami = success(&run(command).await);
    assert!(
        whoami.starts_with(&format!("user_id {user_id}\n")),
        "{whoami}"
    );
    assert!(
        whoami.contains(&format!("profile {}\n", dir.display())),
        "{whoami}"
    );
}

/// Point 7: an abandoned prompt (end of input) says how to finish with
/// `--code`, and finishing that way needs no new code.
#[tokio::test]
async fn an_abandoned_prompt_says_how_to_finish_without_a_new_code() {
    let server = TestServer::start();
    let bob = Person::new("bob");
    let phone = server.phone();

    let out = run(bob.register_command(&server, &phone)).await;
    let error = error_line(&out);
    let finish = format!("`parley-cli --profile bob register {phone} --code <code>`");
    assert!(error.contains("no code entered"), "{error}");
    assert!(error.contains(&finish), "{error}");

    let code = server.code_for(&phone);
    let mut finish = bob.cli();
    finish.args(["register", &phone, "--code", &code]);
    // The endpoints of the abandoned run were not saved (no profile yet).
    finish.args(server_flags(&server));
    registered(&run(finish).await);
    assert_eq!(codes_sent(&server, &phone), 1, "no new code was requested");
}

/// Point 7: wrong guesses with `--code` say how many are left and how to
/// retry; the last one says the code is dead and how to get a new one, and
/// a dead code says so.
#[tokio::test]
async fn wrong_and_dead_codes_say_what_to_do() {
    let server = TestServer::start();
    let carol = Person::new("carol");
    let phone = server.phone();
    error_line(&run(carol.register_command(&server, &phone)).await);
    let code = server.code_for(&phone);

    let verify = |guess: &str| {
        let mut command = carol.cli();
        command
            .args(server_flags(&server))
            .args(["register", &phone, "--code", guess]);
        command
    };
    for left in (1..=4).rev() {
        let error = error_line(&run(verify(&wrong(&code))).await);
        let plural = if left == 1 { "attempt" } else { "attempts" };
        assert!(
            error.contains(&format!("wrong code ({left} {plural} left)")),
            "{error}"
        );
        assert!(
            error.contains(&format!("register {phone} --code <code>`")),
            "{error}"
        );
    }
    let request = format!("`parley-cli --profile carol register {phone}`");
    let last = error_line(&run(verify(&wrong(&code))).await);
    assert!(
        last.contains("no longer works") && last.contains(&request),
        "{last}"
    );
    let dead = error_line(&run(verify(&code)).await);
    assert!(
        dead.contains("no code is pending") && dead.contains(&request),
        "{dead}"
    );

    // Asking again within the minute is refused, with the way out.
    let limited = error_line(&run(carol.register_command(&server, &phone)).await);
    assert!(limited.contains("another code yet"), "{limited}");
    assert!(limited.contains("--code <code>`"), "{limited}");
}

/// Point 8: a phone number where a user id belongs is caught before
/// anything is sent, with the exact `lookup`; an unknown id points to
/// `lookup` too.
#[tokio::test]
async fn send_needs_a_user_id_and_says_how_to_find_one() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    alice.register(&server, &server.phone()).await;
    let bob_phone = server.phone();

    let mut command = alice.cli();
    command.args(["send", &bob_phone, "hello?"]);
    let error = error_line(&run(command).await);
    assert!(
        error.contains(&format!("`parley-cli --profile alice lookup {bob_phone}`")),
        "{error}"
    );

    let spaced = format!("{} {}", &bob_phone[..2], &bob_phone[2..]);
    let mut command = alice.cli();
    command.args(["send", &spaced, "hello?"]);
    let error = error_line(&run(command).await);
    assert!(error.contains(&format!("lookup {bob_phone}`")), "{error}");

    // Without the `+`, the number parses as an id nobody has.
    let digits = bob_phone.trim_start_matches('+');
    let mut command = alice.cli();
    command.args(["send", digits, "hello?"]);
    let error = error_line(&run(command).await);
    assert!(error.contains("UNKNOWN_RECIPIENT"), "{error}");
    assert!(
        error.contains(&format!("`parley-cli --profile alice lookup {bob_phone}`")),
        "{error}"
    );
}

/// Point 9: human spellings are normalised, every skipped number is named
/// with the fix, and an empty answer always says why.
#[tokio::test]
async fn lookup_accepts_human_spellings_and_is_never_silent() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    alice.register(&server, &server.phone()).await;
    let bob = Person::new("bob");
    let bob_phone = server.phone(); // +1555xxxxxxx
    let bob_id = bob.register(&server, &bob_phone).await;
    let nobody = server.phone();

    // "+1 555-xxx-xxxx" and "(+1) 555.xxx.xxxx"
    let digits = &bob_phone[2..];
    let dashed = format!("+1 {}-{}-{}", &digits[..3], &digits[3..6], &digits[6..]);
    let dotted = format!("(+1) {}.{}.{}", &digits[..3], &digits[3..6], &digits[6..]);
    for spelled in [&dashed, &dotted] {
        let mut command = alice.cli();
        command.args(["lookup", spelled]);
        assert_eq!(
            success(&run(command).await),
            format!("{bob_phone} {bob_id}\n")
        );
    }

    // Without `+`: a warning with the fix, and nothing left to look up.
    let mut command = alice.cli();
    command.args(["lookup", bob_phone.trim_start_matches('+')]);
    let out = run(command).await;
    let error = error_line(&out);
    assert!(error.contains("no phone number to look up"), "{error}");
    assert!(
        stderr(&out).contains(&format!("write it as {bob_phone}")),
        "{}",
        stderr(&out)
    );

    // One good, one malformed, one unregistered: the good one is printed,
    // the others are named on stderr.
    let mut command = alice.cli();
    command.args(["lookup", &dashed, "12345", &nobody]);
    let out = run(command).await;
    assert_eq!(success(&out), format!("{bob_phone} {bob_id}\n"));
    let err = stderr(&out);
    assert!(err.contains("warning: skipping \"12345\""), "{err}");
    assert!(
        err.contains(&format!("note: not registered: {nobody}")),
        "{err}"
    );

    // Nothing registered: exit 0, empty stdout, and a note.
    let mut command = alice.cli();
    command.args(["lookup", &nobody]);
    let out = run(command).await;
    assert_eq!(success(&out), "");
    assert!(
        stderr(&out).contains(&format!("note: {nobody} is not registered")),
        "{}",
        stderr(&out)
    );
}

/// Point 10: a missing CA file and another server's certificate each say
/// what to do, and `profile set --ca` changes a profile's CA (and
/// `--http`/`--ws` its endpoints) without registering again.
#[tokio::test]
async fn trust_errors_say_what_to_do_and_profile_set_fixes_them() {
    let mut server = TestServer::start();
    let other = TestServer::start();
    let alice = Person::new("alice");
    alice.register(&server, &server.phone()).await;
    let nobody = server.phone();
    let lookup = || {
        let mut command = alice.cli();
        command.args(["lookup", &nobody]);
        command
    };

    let mut missing = lookup();
    missing.args(["--ca", "/nonexistent/tls/cert.pem"]);
    let error = error_line(&run(missing).await);
    assert!(
        error.contains("/nonexistent/tls/cert.pem (no such file)"),
        "{error}"
    );
    assert!(error.contains("--ca <data-dir>/tls/cert.pem"), "{error}");

    // The other server's certificate has the same name and another key.
    let other_ca = ca_of(&other);
    let mut untrusted = lookup();
    untrusted.arg("--ca").arg(&other_ca);
    let error = error_line(&run(untrusted).await);
    assert!(error.contains("is not trusted"), "{error}");
    assert!(
        error.contains("--ca <its data-dir>/tls/cert.pem"),
        "{error}"
    );
    assert!(
        error.contains("`parley-cli --profile alice profile set --ca PATH`"),
        "{error}"
    );
    // The gateway says the same about the same certificate.
    let mut command = alice.cli();
    command.arg("--ca").arg(&other_ca).args(["send", "1", "hi"]);
    let ws_error = error_line(&run(command).await);
    assert!(
        ws_error.contains(&format!("the server at {} is not trusted", server.ws_url())),
        "{ws_error}"
    );

    // Saved into the profile, the wrong CA is used from then on...
    let mut set = alice.cli();
    set.args(["profile", "set", "--ca"]).arg(&other_ca);
    assert_eq!(
        success(&run(set).await),
        format!("ca {}\n", other_ca.display())
    );
    assert!(error_line(&run(lookup()).await).contains("is not trusted"));
    // ...and the right one fixes it.
    let mut set = alice.cli();
    set.args(["profile", "set", "--ca"]).arg(ca_of(&server));
    success(&run(set).await);
    success(&run(lookup()).await);

    // The server comes back on other ports: the endpoints change, the
    // credential stays.
    server.stop_gracefully();
    server.restart();
    let mut set = alice.cli();
    set.args([
        "profile",
        "set",
        "--http",
        &server.http_url(),
        "--ws",
        &server.ws_url(),
    ]);
    assert_eq!(
        success(&run(set).await),
        format!("http {}\nws {}\n", server.http_url(), server.ws_url())
    );
    success(&run(lookup()).await);
    let mut listen = alice.cli();
    listen.args(["listen", "--exit-on-empty"]);
    success(&run(listen).await);
}

/// Point 11: a server that is not running is said in words, for the HTTPS
/// API and for the gateway, with no backtrace although RUST_BACKTRACE=1.
#[tokio::test]
async fn an_unreachable_server_is_said_in_words() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    alice.register(&server, &server.phone()).await;

    let port = closed_port();
    let http = format!("https://127.0.0.1:{port}");
    let bob = Person::new("bob");
    let mut command = bob.cli();
    command
        .args(["--http", &http, "--ca"])
        .arg(ca_of(&server))
        .args(["register", "+15550009999"]);
    let error = error_line(&run(command).await);
    assert!(
        error.contains(&format!(
            "cannot reach the Parley server at {http} (connection refused): is parley running there?"
        )),
        "{error}"
    );

    let ws = format!("wss://127.0.0.1:{port}/v1/ws");
    let mut command = alice.cli();
    command.args(["--ws", &ws, "send", "1", "hi"]);
    let error = error_line(&run(command).await);
    assert!(
        error.contains(&format!(
            "cannot reach the Parley server at {ws} (connection refused): is parley running there?"
        )),
        "{error}"
    );
    assert!(error.contains("profile set --ws URL"), "{error}");
}

/// Point 12: a revoked device reads one message, naming the reason and the
/// exact command with `--profile`, whether its live session is closed
/// (4002), the gateway refuses it (401) or the HTTPS API does (401).
#[tokio::test]
async fn revocation_reads_the_same_everywhere() {
    // One code a second per number, so the number can be registered again.
    let server = TestServer::start_with(&["--code-interval", "1"]);
    let alice = Person::new("alice");
    let phone = server.phone();
    let alice_id = alice.register(&server, &phone).await;

    // Alice listens; a message from Bob proves her session is live.
    let mut listen = alice.cli();
    listen.arg("listen");
    let mut listening = listen.spawn().expect("listen starts");
    let mut lines = Reader::new(listening.stdout.take().expect("stdout"));
    let bob = server.register().await;
    let mut b = server.connect(&bob).await;
    b.send(1, alice_id, "are you there?").await.expect("send");
    lines.until("are you there?\n").await;

    // Her number is registered again (a new phone).
    register_again(&server, &phone).await;
    let status = timeout(RUN_LIMIT, listening.wait())
        .await
        .expect("listen ends")
        .expect("wait");
    let mut err = String::new();
    listening
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .await
        .expect("stderr");
    let live = error_line(&Output {
        status,
        stdout: Vec::new(),
        stderr: err.into_bytes(),
    });

    let mut listen = alice.cli();
    listen.arg("listen");
    let upgrade = error_line(&run(listen).await);
    let mut lookup = alice.cli();
    lookup.args(["lookup", &phone]);
    let api = error_line(&run(lookup).await);

    assert_eq!(live, upgrade);
    assert_eq!(upgrade, api);
    assert!(live.contains("revoked"), "{live}");
    assert!(live.contains("registered again"), "{live}");
    assert!(
        live.contains(&format!("`parley-cli --profile alice register {phone}`")),
        "{live}"
    );
}

/// Registers `phone` again through the library, as a new phone would,
/// waiting out the one-code-a-second limit (bounded).
async fn register_again(server: &TestServer, phone: &str) {
    let registration = server.registration();
    let deadline = Instant::now() + PROMPTLY * 4;
    loop {
        match registration.request_code(phone).await {
            Ok(_) => break,
            Err(parley_client::ClientError::Api { code, .. })
                if code == "RATE_LIMITED" && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot request a second code: {e}"),
        }
    }
    let code = server.code_for(phone);
    registration.verify(phone, &code).await.expect("verified");
}

/// Point 14: where profiles live, how they are named, and what is refused.
#[tokio::test]
async fn profiles_are_named_and_live_in_the_config_dir() {
    let someone = Person::new("x");
    let whoami = |command: &mut Command| {
        command.arg("whoami");
    };

    // --profile NAME: $XDG_CONFIG_HOME/parley/profiles/NAME
    let mut command = someone.bare_cli();
    command.args(["--profile", "work"]);
    whoami(&mut command);
    let error = error_line(&run(command).await);
    let work = someone.config_home().join("parley/profiles/work");
    assert!(
        error.contains(&format!("no profile in {}", work.display())),
        "{error}"
    );
    assert!(
        error.contains("`parley-cli --profile work register <phone>`"),
        "{error}"
    );

    // No flag: the profile named `default`, and the command needs no flag.
    let mut command = someone.bare_cli();
    whoami(&mut command);
    let error = error_line(&run(command).await);
    let default = someone.config_home().join("parley/profiles/default");
    assert!(error.contains(&default.display().to_string()), "{error}");
    assert!(error.contains("`parley-cli register <phone>`"), "{error}");

    // Without XDG_CONFIG_HOME: ~/.config.
    let mut command = someone.bare_cli();
    command.env_remove("XDG_CONFIG_HOME");
    whoami(&mut command);
    let error = error_line(&run(command).await);
    let dotconfig = someone.home.path().join(".config/parley/profiles/default");
    assert!(error.contains(&dotconfig.display().to_string()), "{error}");

    // PARLEY_PROFILE names one; PARLEY_PROFILE_DIR and --profile-dir give a folder.
    let mut command = someone.bare_cli();
    command.env("PARLEY_PROFILE", "carol");
    whoami(&mut command);
    assert!(error_line(&run(command).await).contains("parley/profiles/carol"));
    let folder = someone.home.path().join("elsewhere");
    for via_env in [false, true] {
        let mut command = someone.bare_cli();
        if via_env {
            command.env("PARLEY_PROFILE_DIR", &folder);
        } else {
            command.arg("--profile-dir").arg(&folder);
        }
        whoami(&mut command);
        let error = error_line(&run(command).await);
        assert!(
            error.contains(&format!("no profile in {}", folder.display())),
            "{error}"
        );
        assert!(error.contains("--profile-dir"), "{error}");
    }

    // Names that are paths are refused.
    for bad in ["../evil", "a/b", "", ".."] {
        let mut command = someone.bare_cli();
        command.args(["--profile", bad]);
        whoami(&mut command);
        let error = error_line(&run(command).await);
        assert!(error.contains("invalid profile name"), "{bad:?}: {error}");
    }
    assert_eq!(
        std::fs::read_dir(someone.work()).expect("work").count(),
        0,
        "nothing is created in the working folder"
    );
}

/// Point 17: `send --wait read` running out of time says the message was
/// sent and where its receipts will arrive (exit 1); they do arrive there.
#[tokio::test]
async fn a_send_wait_timeout_says_where_the_receipts_go() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    alice.register(&server, &server.phone()).await;
    let bob = Person::new("bob");
    let bob_id = bob.register(&server, &server.phone()).await;

    // Bob is offline: the read receipt cannot come within the timeout,
    // however fast or slow the machine is.
    let mut send = alice.cli();
    send.args([
        "send",
        &bob_id.to_string(),
        "lunch?",
        "--wait",
        "read",
        "--timeout",
        "2",
    ]);
    let out = run(send).await;
    let message_id: u64 = stdout(&out)
        .trim()
        .strip_prefix("✓ sent ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `✓ sent <id>`: {:?}", stdout(&out)));
    let error = {
        let err = stderr(&out);
        assert_no_panic(&err);
        assert_eq!(out.status.code(), Some(1), "{err}");
        err
    };
    assert!(
        error.contains("timed out after 2 s waiting for the read receipt"),
        "{error}"
    );
    assert!(
        error.contains(&format!("message {message_id} was sent")),
        "{error}"
    );
    assert!(
        error.contains("`parley-cli --profile alice listen`"),
        "{error}"
    );

    let mut listen = bob.cli();
    listen.args(["listen", "--read", "--exit-on-empty"]);
    let shown = success(&run(listen).await);
    assert!(shown.contains(&format!("{message_id} lunch?")), "{shown}");
    // Receipts name the device of the recipient that made them.
    let bob_device = ProfileDir::new(bob.profile_dir())
        .load()
        .expect("Bob's profile")
        .device_id;

    let mut listen = alice.cli();
    listen.arg("listen");
    let mut listening = listen.spawn().expect("listen starts");
    let mut lines = Reader::new(listening.stdout.take().expect("stdout"));
    lines
        .until(&format!(
            "✓✓ delivered {message_id} by {bob_id}/{bob_device}\n"
        ))
        .await;
    lines
        .until(&format!("✓✓ read {message_id} by {bob_id}/{bob_device}\n"))
        .await;
}

/// The receipt rule: a READ receipt is shown only from the user the message
/// went to. One forged by another user (the server does not check
/// `MarkRead`) is ignored with a warning, and acknowledged so it does not
/// come back; one for an id this profile has no record of is shown.
#[tokio::test]
async fn receipts_only_count_from_the_recipient() {
    let server = TestServer::start();
    let alice = Person::new("alice");
    let alice_id = alice.register(&server, &server.phone()).await;
    let bob = Person::new("bob");
    let bob_id = bob.register(&server, &server.phone()).await;

    let mut send = alice.cli();
    send.args(["send", &bob_id.to_string(), "for Bob's eyes"]);
    let sent = success(&run(send).await);
    let message_id: u64 = sent
        .trim()
        .strip_prefix("✓ sent ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `✓ sent <id>`: {sent:?}"));

    // Mallory claims to have read it, and an id Alice never sent.
    let mallory = server.register().await;
    let mut m = server.connect(&mallory).await;
    common::until(&mut m, common::is_empty_marker).await;
    let unknown_id = 12345;
    m.mark_read(alice_id, vec![message_id])
        .await
        .expect("forge");
    m.mark_read(alice_id, vec![unknown_id])
        .await
        .expect("forge");
    // A send answered after them: both MarkReads were handled before it.
    m.send(1, alice_id, "marker").await.expect("send");
    match common::next(&mut m).await {
        parley_proto::v1::server_frame::Frame::Ack(_) => {}
        other => panic!("expected an ack, got {other:?}"),
    }

    // Bob really reads it.
    let bob_device = ProfileDir::new(bob.profile_dir())
        .load()
        .expect("Bob's profile")
        .device_id;
    let mut listen = bob.cli();
    listen.args(["listen", "--read", "--exit-on-empty"]);
    success(&run(listen).await);

    let mut listen = alice.cli();
    listen.arg("listen");
    let mut listening = listen.spawn().expect("listen starts");
    let mut lines = Reader::new(listening.stdout.take().expect("stdout"));
    let before = lines
        .until(&format!("✓✓ read {message_id} by {bob_id}/{bob_device}\n"))
        .await;
    assert!(
        !before.contains(&format!("✓✓ read {message_id} by {}", mallory.user_id)),
        "the forged receipt was shown:\n{before}"
    );
    assert!(
        before.contains(&format!("✓✓ read {unknown_id} by {}", mallory.user_id)),
        "receipts for ids without a record are shown as before:\n{before}"
    );
    assert!(
        before.lines().any(|line| {
            line.starts_with(&format!("{}/{} ", mallory.user_id, mallory.device_id))
                && line.ends_with(" marker")
        }),
        "the marker arrived:\n{before}"
    );
    // SIGTERM: `listen` closes cleanly, so every ack it sent is in.
    stop(&mut listening).await;
    let mut err = String::new();
    listening
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .await
        .expect("stderr");
    assert!(
        err.contains("ignoring a read receipt") && err.contains(&mallory.user_id.to_string()),
        "the forged receipt is warned about:\n{err}"
    );

    // Everything was acknowledged: a new session finds nothing queued.
    let mut listen = alice.cli();
    listen.args(["listen", "--exit-on-empty"]);
    let again = run(listen).await;
    assert_eq!(success(&again), "");
    assert!(!stderr(&again).contains("ignoring"), "{}", stderr(&again));
}
