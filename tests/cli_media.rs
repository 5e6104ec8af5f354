//! Media end to end (issue 11, "The message that carries media" and
//! "Client"): the real `parley-cli` uploads files to the real server's
//! media service with tus and sends a Content that refers to them; the
//! recipient's `parley-cli listen --download` fetches them, checks their
//! SHA-256 and prints where they are. Interrupted uploads (a connection cut
//! mid-`PATCH`, a server killed and restarted) resume from the server's
//! offset on the next run of the same command; an upload the server no
//! longer has starts over; a download whose digest does not match is
//! refused and leaves nothing behind.
//!
//! Connections are cut by a loopback relay between the CLI and the server
//! that forwards a fixed number of bytes and then drops the connection:
//! what was sent is decided by bytes, never by timing.

#[path = "common/cli.rs"]
mod cli_run;
mod common;

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{PROMPTLY, TestServer, eventually};
use parley_client::media::{Media, hex};
use parley_client::profile::ProfileDir;
use parley_proto::content::{self, Body, MAX_THUMBNAIL_BYTES};
use parley_proto::v1::server_frame::Frame;
use parley_proto::v1::{Attachment, Content, attachment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use cli_run::*;

/// One home folder holding the profiles `alice` and `bob`.
struct People {
    home: tempfile::TempDir,
}

impl People {
    fn new() -> People {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join("work")).expect("work folder");
        People { home }
    }

    fn work(&self) -> PathBuf {
        self.home.path().join("work")
    }

    fn profile(&self, name: &str) -> ProfileDir {
        ProfileDir::new(self.home.path().join("config/parley/profiles").join(name))
    }

    fn cli(&self, profile: &str) -> Command {
        let mut command = cli_in(self.home.path());
        command.args(["--profile", profile]);
        command
    }

    async fn run(&self, profile: &str, args: &[&str]) -> Output {
        let mut command = self.cli(profile);
        command.args(args);
        run(command).await
    }

    /// Registers a fresh number as `profile` through the prompt; the user id.
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
        type_line(&mut child, &server.code_for(&phone)).await;
        let out = finish(child, stderr).await;
        let text = success(&out);
        text.trim()
            .strip_prefix("registered ")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("expected `registered <id>`, got {text:?}"))
    }

    /// `listen --download DIR --exit-on-empty` as `profile` on `server`
    /// (its current ports): its stdout and stderr.
    async fn download_all(
        &self,
        server: &TestServer,
        profile: &str,
        dir: &Path,
    ) -> (String, String) {
        let mut command = self.cli(profile);
        command.args(server_flags(server)).args([
            "listen",
            "--exit-on-empty",
            "--download",
            &dir.display().to_string(),
        ]);
        let out = run(command).await;
        (success(&out), stderr(&out))
    }

    /// `send --file video.mp4` as Alice to `bob`, the upload going through
    /// `relay` to `server`.
    async fn send_video(&self, server: &TestServer, relay: &Relay, bob: &str) -> Output {
        let mut command = self.cli("alice");
        command
            .args(["--http", &relay.url(), "--ws", &server.ws_url(), "--ca"])
            .arg(ca_of(server))
            .args(["send", bob, "--file", "video.mp4"]);
        run(command).await
    }

    /// The media client of `profile`'s credential, talking to `server`.
    fn media(&self, server: &TestServer, profile: &str) -> Media {
        let token = self.profile(profile).load().expect("profile").token;
        Media::new(&server.http_url(), server.tls.clone(), &token).expect("media client")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("32 bytes")
}

/// Bytes that do not compress and differ per `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A noisy PNG photo (the worst case for the thumbnail's size).
fn photo(width: u32, height: u32) -> Vec<u8> {
    let pixels = noise((width * height * 3) as usize, 7);
    let image = image::RgbImage::from_raw(width, height, pixels).expect("pixels");
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

/// The `uploaded <media_id> <size> bytes sha256 <hex>` line: (id, size, hex).
fn uploaded(stdout: &str) -> (String, u64, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("uploaded "))
        .unwrap_or_else(|| panic!("no `uploaded` line in {stdout:?}"));
    let words: Vec<&str> = line.split(' ').collect();
    assert!(
        words.len() == 6 && words[3] == "bytes" && words[4] == "sha256",
        "{line}"
    );
    (
        words[1].to_owned(),
        words[2].parse().expect("size"),
        words[5].to_owned(),
    )
}

/// The message id of the `✓ sent <id>` line.
fn sent(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("✓ sent "))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `✓ sent` line in {stdout:?}"))
}

/// The path of `downloaded <message_id>/<n> <path>`.
fn downloaded(stdout: &str, message_id: u64, n: usize) -> PathBuf {
    let prefix = format!("downloaded {message_id}/{n} ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no `{prefix}<path>` in {stdout:?}"))
}

/// The files in `dir`, hidden ones included, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A photo with a caption and a file without one go from Alice's
/// `send --file` to Bob's `listen --download` byte for byte; the photo's
/// Content carries its size, digest, type, pixels and a JPEG thumbnail of at
/// most 16 KiB, as a phone app receiving it would read it.
#[tokio::test]
async fn a_photo_and_a_file_arrive_byte_identical_and_the_photo_has_a_thumbnail() {
    let server = TestServer::start();
    let people = People::new();
    let _alice = people.register(&server, "alice").await;
    let bob = people.register(&server, "bob").await;
    let bob_id = bob.to_string();

    let photo_bytes = photo(1000, 700);
    let photo_path = people.work().join("beach day.png");
    std::fs::write(&photo_path, &photo_bytes).expect("write photo");
    let notes = noise(300_000, 3);
    let notes_path = people.work().join("notes.bin");
    std::fs::write(&notes_path, &notes).expect("write notes");

    let out = people
        .run(
            "alice",
            &["send", &bob_id, "the beach", "--file", "beach day.png"],
        )
        .await;
    let text = success(&out);
    let (photo_id, size, digest) = uploaded(&text);
    assert_eq!(size, photo_bytes.len() as u64);
    assert_eq!(digest, hex(&sha256(&photo_bytes)), "the server's digest");
    assert_eq!(photo_id.len(), 32, "{photo_id}");
    let photo_message = sent(&text);
    assert!(
        stderr(&out).is_empty(),
        "nothing but the lines on a non-terminal (no progress bar): {:?}",
        stderr(&out)
    );

    let out = people
        .run("alice", &["send", &bob_id, "--file", "notes.bin"])
        .await;
    let text = success(&out);
    assert_eq!(uploaded(&text).2, hex(&sha256(&notes)));
    let notes_message = sent(&text);

    let inbox = people.work().join("inbox");
    let (shown, err) = people.download_all(&server, "bob", &inbox).await;
    assert!(!err.contains("warning"), "{err}");
    assert!(
        shown
            .lines()
            .any(|l| l.ends_with(&format!(" {photo_message} the beach"))),
        "the caption is the message's text: {shown}"
    );
    assert!(
        shown.contains(&format!(
            "attachment {photo_message}/1 image/png {} bytes beach day.png",
            photo_bytes.len()
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "attachment {notes_message}/1 application/octet-stream {} bytes notes.bin",
            notes.len()
        )),
        "{shown}"
    );
    let photo_copy = downloaded(&shown, photo_message, 1);
    let notes_copy = downloaded(&shown, notes_message, 1);
    assert_eq!(photo_copy, inbox.join("beach day.png"));
    assert_eq!(
        std::fs::read(&photo_copy).expect("photo"),
        photo_bytes,
        "byte-identical"
    );
    assert_eq!(std::fs::read(&notes_copy).expect("notes"), notes);
    assert_eq!(
        files_in(&inbox),
        ["beach day.png", "notes.bin"],
        "no partial files left"
    );

    // The Content itself, as another app receives it: Alice sends the photo
    // to a phone this test drives through the client library.
    let (carol, mut carol_session) = common::fresh_session(&server).await;
    let out = people
        .run(
            "alice",
            &[
                "send",
                &carol.user_id.to_string(),
                "--file",
                "beach day.png",
            ],
        )
        .await;
    let media_id = uploaded(&success(&out)).0;
    let deliver = match common::next(&mut carol_session).await {
        Frame::Deliver(d) => d,
        other => panic!("expected the message, got {other:?}"),
    };
    let Body::Content(content) = content::decode(&deliver.body) else {
        panic!("the body is not a Content: {:?}", deliver.body);
    };
    assert_eq!(content.text, "", "no caption");
    let [attachment] = &content.attachments[..] else {
        panic!("one attachment: {content:?}");
    };
    assert_eq!(
        attachment.location,
        Some(attachment::Location::MediaId(media_id))
    );
    assert_eq!(attachment.size, photo_bytes.len() as u64);
    assert_eq!(attachment.sha256, sha256(&photo_bytes));
    assert_eq!(attachment.content_type, "image/png");
    assert_eq!(attachment.file_name, "beach day.png");
    assert_eq!((attachment.width, attachment.height), (1000, 700));
    let thumbnail = attachment.thumbnail.as_ref().expect("a thumbnail");
    assert_eq!(thumbnail.content_type, "image/jpeg");
    assert!(
        !thumbnail.data.is_empty() && thumbnail.data.len() <= MAX_THUMBNAIL_BYTES,
        "{} bytes",
        thumbnail.data.len()
    );
    assert_eq!(
        image::guess_format(&thumbnail.data).expect("a known format"),
        image::ImageFormat::Jpeg
    );
    let decoded = image::load_from_memory_with_format(&thumbnail.data, image::ImageFormat::Jpeg)
        .expect("the thumbnail decodes as JPEG");
    assert_eq!(
        (decoded.width(), decoded.height()),
        (thumbnail.width, thumbnail.height)
    );
    assert!(decoded.width() <= 320 && decoded.height() <= 320);
    carol_session
        .ack_delivery(vec![deliver.message_id])
        .await
        .expect("ack");
    // The plain-text messages of before are unchanged: a text is shown as
    // text, with no attachment line.
    let out = people.run("alice", &["send", &bob_id, "just text"]).await;
    let text_message = sent(&success(&out));
    let (shown, _) = people.download_all(&server, "bob", &inbox).await;
    assert!(
        shown
            .lines()
            .any(|l| l.ends_with(&format!(" {text_message} just text"))),
        "{shown}"
    );
    assert!(!shown.contains("attachment"), "{shown}");
}

/// A Content whose digest is not the file's (a broken or malicious sender)
/// is shown, but its attachment is refused with the reason, and nothing of
/// it stays in the download folder.
#[tokio::test]
async fn a_download_whose_digest_does_not_match_is_refused_and_deleted() {
    let server = TestServer::start();
    let people = People::new();
    let bob = people.register(&server, "bob").await;
    let (mallory, mut session) = common::fresh_session(&server).await;

    let file = noise(200_000, 11);
    let media =
        Media::new(&server.http_url(), server.tls.clone(), &mallory.token).expect("media client");
    let upload = media
        .create(file.len() as u64, &[("filename", "x.bin")])
        .await
        .expect("created");
    let body =
        parley_client::media::file_body(Cursor::new(file.clone()), file.len() as u64, |_| {});
    let appended = media
        .append(&upload, 0, file.len() as u64, body)
        .await
        .expect("appended");
    let media_id = appended.media_id.expect("complete");
    let mut wrong = sha256(&file);
    wrong[0] ^= 1;
    let content = Content {
        text: "trust me".into(),
        attachments: vec![Attachment {
            location: Some(attachment::Location::MediaId(media_id)),
            size: file.len() as u64,
            sha256: wrong.to_vec(),
            file_name: "invoice.pdf".into(),
            ..Attachment::default()
        }],
    };
    session
        .send(1, bob, content::encode(&content))
        .await
        .expect("send");
    match common::next(&mut session).await {
        Frame::Ack(_) => {}
        other => panic!("expected the ack, got {other:?}"),
    }

    let inbox = people.work().join("inbox");
    let (shown, err) = people.download_all(&server, "bob", &inbox).await;
    assert!(shown.contains(" trust me"), "{shown}");
    assert!(!shown.contains("downloaded"), "{shown}");
    assert!(
        err.contains("not downloaded: refused: its SHA-256 is")
            && err.contains(&hex(&sha256(&file)))
            && err.contains(&hex(&wrong)),
        "{err}"
    );
    assert_eq!(files_in(&inbox), Vec::<String>::new(), "nothing kept");
}

/// A loopback relay to the server's HTTPS listener that forwards at most
/// `budget` bytes from clients (over all connections), then cuts every
/// connection that tries to send more. Raising the budget lets later
/// connections through; the upstream address can be changed (a restarted
/// server listens on a new port).
struct Relay {
    addr: SocketAddr,
    budget: Arc<AtomicU64>,
    upstream: Arc<Mutex<SocketAddr>>,
}

/// What the relay does to a connection that wants to send past the budget.
#[derive(Clone, Copy)]
enum Past {
    /// Drops it (a lost connection).
    Cut,
    /// Holds it open and forwards nothing more, until the client goes (a
    /// stuck upload, for a person to press Ctrl-C on).
    Stall,
}

impl Relay {
    async fn start(upstream: SocketAddr, budget: u64) -> Relay {
        Relay::start_with(upstream, budget, Past::Cut).await
    }

    async fn start_with(upstream: SocketAddr, budget: u64, past: Past) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let budget = Arc::new(AtomicU64::new(budget));
        let upstream = Arc::new(Mutex::new(upstream));
        let (b, u) = (budget.clone(), upstream.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = *u.lock().expect("upstream");
                tokio::spawn(relay(client, to, b.clone(), past));
            }
        });
        Relay {
            addr,
            budget,
            upstream,
        }
    }

    /// Whether the budget is used up (a stalled upload is stuck now).
    fn spent(&self) -> bool {
        self.budget.load(Ordering::SeqCst) == 0
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn unlimited(&self) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, to: SocketAddr, budget: Arc<AtomicU64>, past: Past) {
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Take what the budget allows of this read; the rest is cut.
            let allowed = budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    Some(left.saturating_sub(n as u64))
                })
                .unwrap_or(0)
                .min(n as u64) as usize;
            if server_write.write_all(&buf[..allowed]).await.is_err() {
                return;
            }
            if allowed < n {
                if let Past::Stall = past {
                    // Swallow the rest until the client gives up.
                    while let Ok(1..) = client_read.read(&mut buf).await {}
                }
                return;
            }
        }
    };
    let down = tokio::io::copy(&mut server_read, &mut client_write);
    // Either direction ending ends both: the connection is dropped.
    tokio::select! {
        () = up => {}
        _ = down => {}
    }
}

/// The one unfinished upload in `profile`'s `uploads.json`.
fn pending_upload(people: &People, profile: &str) -> String {
    let pending = people
        .profile(profile)
        .load_uploads()
        .expect("uploads.json");
    let uploads: Vec<_> = pending.iter().collect();
    assert_eq!(uploads.len(), 1, "one unfinished upload: {uploads:?}");
    uploads[0].upload.clone()
}

/// A 6 MiB file whose first run of `send --file` is cut after about
/// 2.5 MiB: returns the people, the file, Bob's id, the relay, and the
/// offset the server then reports (more than 0, less than the file).
async fn interrupted_upload(server: &TestServer) -> (People, Vec<u8>, String, Relay, String, u64) {
    let people = People::new();
    people.register(server, "alice").await;
    let bob = people.register(server, "bob").await.to_string();
    let file = noise(6 * 1024 * 1024, 5);
    std::fs::write(people.work().join("video.mp4"), &file).expect("write");

    let relay = Relay::start(server.http, 5 * 1024 * 1024 / 2).await;
    let out = people.send_video(server, &relay, &bob).await;
    let error = error_line(&out);
    assert!(
        error.contains("interrupted") && error.contains("run the same command again to resume"),
        "{error}"
    );
    assert!(!stdout(&out).contains("✓ sent"), "{}", stdout(&out));

    let upload = pending_upload(&people, "alice");
    let media = people.media(server, "alice");
    let offset = eventually("the server keeps the bytes that arrived", PROMPTLY, || {
        let (media, upload) = (media.clone(), upload.clone());
        async move {
            match media.status(&upload).await {
                Ok(Some(status)) if status.offset > 0 => Ok(status.offset),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(offset < file.len() as u64, "{offset}");
    (people, file, bob, relay, upload, offset)
}

/// The resumed run: its note names an offset at least what the server had
/// after the cut (never 0), and the message goes; Bob downloads the very
/// bytes.
async fn resume_and_check(
    server: &TestServer,
    people: &People,
    relay: &Relay,
    file: &[u8],
    bob: &str,
    offset_after_cut: u64,
) {
    let out = people.send_video(server, relay, bob).await;
    let text = success(&out);
    let err = stderr(&out);
    let resumed_at: u64 = err
        .split("resuming the upload of ")
        .nth(1)
        .and_then(|rest| rest.split(" at byte ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `resuming ... at byte N` note: {err}"));
    assert!(
        resumed_at >= offset_after_cut && resumed_at > 0,
        "resumed at {resumed_at}, the server had {offset_after_cut}"
    );
    assert!(err.contains(&format!("of {}", file.len())), "{err}");
    assert_eq!(uploaded(&text).2, hex(&sha256(file)));
    let message = sent(&text);
    assert!(
        people
            .profile("alice")
            .load_uploads()
            .expect("uploads")
            .is_empty(),
        "a finished upload is forgotten"
    );
    let inbox = people.work().join("inbox");
    let (shown, _) = people.download_all(server, "bob", &inbox).await;
    let copy = downloaded(&shown, message, 1);
    assert!(std::fs::read(copy).expect("read") == file, "byte-identical");
}

/// Issue 11: a dropped connection mid-upload; the same command again goes
/// on from the server's offset, not from 0.
#[tokio::test]
async fn an_upload_cut_mid_patch_resumes_from_the_servers_offset() {
    let server = TestServer::start();
    let (people, file, bob, relay, _upload, offset) = interrupted_upload(&server).await;
    relay.unlimited();
    resume_and_check(&server, &people, &relay, &file, &bob, offset).await;
    // The server's own count: a second run that started again from 0 would
    // have sent the whole file again on top of what the first run left.
    let size = file.len() as f64;
    let received = server.metric("parley_media_received_bytes_total").await;
    assert!(
        received >= size && received < size + offset as f64,
        "the server received {received} upload bytes for a {size}-byte file it had {offset} of"
    );
}

/// Issue 11: the server killed (kill -9) and restarted after the cut: the
/// unfinished upload is still there, and the next run resumes it.
#[tokio::test]
async fn an_upload_resumes_after_the_server_restarts() {
    let mut server = TestServer::start();
    let (people, file, bob, relay, upload, offset) = interrupted_upload(&server).await;
    server.kill_hard();
    server.restart();
    *relay.upstream.lock().expect("upstream") = server.http;
    let status = people
        .media(&server, "alice")
        .status(&upload)
        .await
        .expect("HEAD")
        .expect("the upload survived the restart");
    assert!(status.offset >= offset, "{status:?} (had {offset})");
    relay.unlimited();
    resume_and_check(&server, &people, &relay, &file, &bob, status.offset).await;
}

/// Issue 11: Ctrl-C during a stuck upload; the same command again resumes
/// from what the server has. The relay forwards 1.5 MiB and then nothing,
/// so the upload is stuck mid-`PATCH` when the interrupt comes.
#[tokio::test]
async fn an_upload_stopped_with_ctrl_c_resumes() {
    let server = TestServer::start();
    let people = People::new();
    people.register(&server, "alice").await;
    let bob = people.register(&server, "bob").await.to_string();
    let file = noise(5 * 1024 * 1024, 9);
    std::fs::write(people.work().join("video.mp4"), &file).expect("write");
    let relay = Relay::start_with(server.http, 3 * 1024 * 1024 / 2, Past::Stall).await;

    let mut command = people.cli("alice");
    command
        .args(["--http", &relay.url(), "--ws", &server.ws_url(), "--ca"])
        .arg(ca_of(&server))
        .args(["send", &bob, "--file", "video.mp4"]);
    let mut child = command.spawn().expect("cli starts");
    eventually("the upload is stuck at the relay", PROMPTLY, || async {
        if relay.spent() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes to go",
                relay.budget.load(Ordering::SeqCst)
            ))
        }
    })
    .await;
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .expect("the CLI stops on Ctrl-C")
        .expect("wait");
    assert!(!status.success(), "{status}");

    let upload = pending_upload(&people, "alice");
    let media = people.media(&server, "alice");
    let offset = eventually("the server keeps the bytes that arrived", PROMPTLY, || {
        let (media, upload) = (media.clone(), upload.clone());
        async move {
            match media.status(&upload).await {
                Ok(Some(status)) if status.offset > 0 => Ok(status.offset),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    relay.unlimited();
    resume_and_check(&server, &people, &relay, &file, &bob, offset).await;
}

/// An unfinished upload the server no longer has (terminated here; expired
/// or lost in life) starts over, and still arrives whole.
#[tokio::test]
async fn an_upload_the_server_forgot_starts_over() {
    let server = TestServer::start();
    let (people, file, bob, relay, upload, _) = interrupted_upload(&server).await;
    people
        .media(&server, "alice")
        .delete(&upload)
        .await
        .expect("terminated");
    relay.unlimited();
    let out = people.send_video(&server, &relay, &bob).await;
    let text = success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("is gone from the server; starting over") && !err.contains("resuming"),
        "{err}"
    );
    assert_eq!(uploaded(&text).2, hex(&sha256(&file)));
    let inbox = people.work().join("inbox");
    let (shown, _) = people.download_all(&server, "bob", &inbox).await;
    let copy = downloaded(&shown, sent(&text), 1);
    assert!(std::fs::read(copy).expect("read") == file, "byte-identical");
}
