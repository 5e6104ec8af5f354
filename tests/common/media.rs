//! The media service's conformance cases, run against the local store
//! (tests/media.rs) and against S3 on moto (tests/media_s3.rs): the same
//! cases, through the real server over HTTPS, with a small tus client of
//! their own. Included by those tests (`#[path = "common/media.rs"]`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use crate::common::{TestServer, eventually};

pub const MIB: usize = 1024 * 1024;

/// Where the server under test keeps media, and a view of it.
pub enum Backend {
    Local,
    /// An S3 bucket on moto at `url`.
    S3 {
        url: String,
        bucket: String,
    },
}

impl Backend {
    /// The server's flags for this store.
    pub fn args(&self) -> Vec<String> {
        match self {
            Backend::Local => Vec::new(),
            Backend::S3 { url, bucket } => vec![
                "--media-store".into(),
                "s3".into(),
                "--media-s3-bucket".into(),
                bucket.clone(),
                "--media-s3-prefix".into(),
                "parley/".into(),
                "--media-s3-endpoint-url".into(),
                url.clone(),
            ],
        }
    }

    /// A server on this store with `extra` flags.
    pub fn start(&self, extra: &[&str]) -> TestServer {
        let mut args = self.args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_with(&args)
    }

    /// Every key the store holds for `server` (below the prefix), sorted.
    pub async fn keys(&self, server: &TestServer) -> Vec<String> {
        match self {
            Backend::Local => parley_media::Storage::local(&server.data_dir.path().join("media"))
                .expect("a view of the media directory")
                .keys()
                .await
                .expect("the media directory's files"),
            // S3's own ListObjectsV2 (the test process has no AWS
            // configuration of its own; moto checks no signature).
            Backend::S3 { url, bucket } => {
                let listing = crate::moto::plain_http()
                    .get(format!("{url}/{bucket}?list-type=2&prefix=parley/"))
                    .header(
                        "authorization",
                        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                         SignedHeaders=host, Signature=0",
                    )
                    .send()
                    .await
                    .expect("moto answers")
                    .text()
                    .await
                    .expect("a listing");
                let mut keys: Vec<String> = listing
                    .split("<Key>")
                    .skip(1)
                    .filter_map(|rest| rest.split_once("</Key>"))
                    .map(|(key, _)| key.trim_start_matches("parley/").to_owned())
                    .collect();
                keys.sort();
                keys
            }
        }
    }
}

/// A device's HTTP client for the media routes.
pub struct Client {
    http: reqwest::Client,
    base: String,
    pub token: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn offset(&self) -> u64 {
        self.header("upload-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Upload-Offset in {:?}", self.headers))
    }
}

impl Client {
    pub fn new(server: &TestServer, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(Arc::unwrap_or_clone(server.tls.clone()))
                .build()
                .expect("client"),
            base: server.http_url(),
            token: token.to_owned(),
        }
    }

    pub async fn of_new_user(server: &TestServer) -> Client {
        let credential = server.register().await;
        Client::new(server, &credential.token)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("an answer");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("a body"),
        }
    }

    /// tus creation: the upload's path.
    pub async fn create(&self, length: usize, content_type: &str) -> String {
        let answer = self.try_create(length, content_type).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
        answer.header("location").expect("a Location").to_owned()
    }

    pub async fn try_create(&self, length: usize, content_type: &str) -> Answer {
        use base64::Engine as _;
        let metadata = format!(
            "content_type {},filename {}",
            base64::engine::general_purpose::STANDARD.encode(content_type),
            base64::engine::general_purpose::STANDARD.encode("test.bin"),
        );
        Client::send(
            self.request(Method::POST, "/v1/media/uploads")
                .header("tus-resumable", "1.0.0")
                .header("upload-length", length.to_string())
                .header("upload-metadata", metadata),
        )
        .await
    }

    /// A tus PATCH at `offset`, its body (and any other header) to add.
    pub fn patch_request(&self, upload: &str, offset: usize) -> reqwest::RequestBuilder {
        self.request(Method::PATCH, upload)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset.to_string())
    }

    pub async fn patch(
        &self,
        upload: &str,
        offset: usize,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        Client::send(self.patch_request(upload, offset).body(body)).await
    }

    pub async fn head(&self, upload: &str) -> Answer {
        Client::send(
            self.request(Method::HEAD, upload)
                .header("tus-resumable", "1.0.0"),
        )
        .await
    }

    /// Uploads `data` with tus in `chunk`-byte PATCHes; the media JSON.
    pub async fn upload(&self, data: &[u8], chunk: usize, content_type: &str) -> serde_json::Value {
        let upload = self.create(data.len(), content_type).await;
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + chunk).min(data.len());
            let answer = self
                .patch(&upload, offset, data[offset..end].to_vec())
                .await;
            assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
            assert_eq!(answer.offset(), end as u64);
            offset = end;
        }
        self.finished(&upload).await
    }

    /// The media JSON of a completed upload.
    pub async fn finished(&self, upload: &str) -> serde_json::Value {
        let answer = Client::send(self.request(Method::GET, upload)).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
        answer.json()
    }

    pub async fn get(&self, url: &str, range: Option<&str>) -> Answer {
        let mut request = self.request(Method::GET, url);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        Client::send(request).await
    }
}

/// A request body that sends `start` and then nothing, until the request
/// is dropped.
pub fn stalled_body(start: &'static [u8]) -> reqwest::Body {
    let start =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(Bytes::from_static(start)) },
        );
    reqwest::Body::wrap_stream(start.chain(futures_util::stream::pending()))
}

/// `n` bytes that differ from offset to offset (a mistake in ordering
/// shows), the same for the same `seed`.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------- cases

/// A tus upload over several parts lands byte-identical, with its digest,
/// and downloads whole and in ranges (across a part boundary too).
pub async fn tus_upload_and_ranged_download(backend: &Backend) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let bob = Client::of_new_user(&server).await;
    // Two full 8 MiB parts and a tail, in chunks that do not align to parts.
    let file = data(17 * MIB + 12_345, 1);
    let upload = alice.create(file.len(), "video/mp4").await;
    let mut offset = 0;
    for chunk in file.chunks(3 * MIB + 7) {
        let answer = alice.patch(&upload, offset, chunk.to_vec()).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
        offset += chunk.len();
        assert_eq!(answer.offset(), offset as u64);
    }
    let media = alice.finished(&upload).await;
    // A HEAD of the complete upload (an app whose last answer was lost)
    // tells the media id, and a PATCH of nothing at its end is answered
    // the same (tus: nothing more to take).
    let head = alice.head(&upload).await;
    assert_eq!(head.offset(), file.len() as u64);
    assert_eq!(head.header("parley-media-id"), media["media_id"].as_str());
    let again = alice.patch(&upload, file.len(), Vec::new()).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    assert_eq!(again.header("parley-media-id"), media["media_id"].as_str());
    assert_eq!(media["size"], file.len() as u64);
    assert_eq!(media["sha256"], sha256_hex(&file));
    assert_eq!(media["content_type"], "video/mp4");
    let url = media["url"].as_str().expect("a url").to_owned();
    assert_eq!(
        url,
        format!(
            "/v1/media/{}",
            media["media_id"].as_str().expect("a string in the JSON")
        )
    );

    // Anyone authenticated may download by id.
    let whole = bob.get(&url, None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    assert_eq!(
        whole.header("content-length"),
        Some(file.len().to_string().as_str())
    );
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.header("etag").expect("an ETag").to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&file)));
    assert!(whole.body == file, "the download differs from the upload");

    let boundary = 8 * MIB;
    for (range, want) in [
        ("bytes=0-99".to_owned(), 0..100),
        (
            format!("bytes={}-{}", boundary - 10, boundary + 9),
            boundary - 10..boundary + 10,
        ),
        ("bytes=-100".to_owned(), file.len() - 100..file.len()),
        (
            format!("bytes={}-", file.len() - 5),
            file.len() - 5..file.len(),
        ),
    ] {
        let part = bob.get(&url, Some(&range)).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {}-{}/{}", want.start, want.end - 1, file.len()).as_str())
        );
        assert!(part.body == file[want.clone()], "{range}: wrong bytes");
    }
    let past = bob.get(&url, Some(&format!("bytes={}-", file.len()))).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.code(), "RANGE_NOT_SATISFIABLE");
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{}", file.len()).as_str())
    );

    let cached = Client::send(
        bob.request(Method::GET, &url)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.body.is_empty());

    // The store holds the media, its manifest, and the completed upload's
    // manifest (which answers GET on the upload until it expires).
    let id = media["media_id"].as_str().expect("a string in the JSON");
    let keys = backend.keys(&server).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(
        keys[..2],
        [format!("media/{id}"), format!("media/{id}.json")]
    );
    assert!(
        keys[2].starts_with("uploads/") && keys[2].ends_with(".json"),
        "{keys:?}"
    );
}

/// A small file in one request; an empty file too.
pub async fn one_request_upload(backend: &Backend) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let file = data(150_000, 2);
    let answer = Client::send(
        alice
            .request(Method::POST, "/v1/media")
            .header("content-type", "image/jpeg")
            .body(file.clone()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    let media = answer.json();
    assert_eq!(media["sha256"], sha256_hex(&file));
    assert_eq!(answer.header("location"), media["url"].as_str());
    let got = alice
        .get(media["url"].as_str().expect("a string in the JSON"), None)
        .await;
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert!(got.body == file);

    let empty = Client::send(alice.request(Method::POST, "/v1/media").body(Vec::new())).await;
    assert_eq!(empty.status, StatusCode::CREATED, "{:?}", empty.json());
    assert_eq!(empty.json()["size"], 0);
    assert_eq!(empty.json()["content_type"], "application/octet-stream");
    assert_eq!(empty.json()["sha256"], sha256_hex(b""));
    let got = alice
        .get(
            empty.json()["url"].as_str().expect("a string in the JSON"),
            None,
        )
        .await;
    assert_eq!((got.status, got.body.len()), (StatusCode::OK, 0));
    // Two media, two manifests: no upload left behind.
    assert_eq!(backend.keys(&server).await.len(), 4);
}

/// Over the limit: 413 at creation, in one request, and past
/// Upload-Length; nothing is left in the store.
pub async fn over_the_limit_is_refused_and_leaves_nothing(backend: &Backend) {
    let server = backend.start(&["--media-max-mib", "9"]);
    let alice = Client::of_new_user(&server).await;
    let answer = alice.try_create(9 * MIB + 1, "video/mp4").await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "MEDIA_TOO_LARGE");
    let options = Client::send(alice.request(Method::OPTIONS, "/v1/media/uploads")).await;
    assert_eq!(
        options.header("tus-max-size"),
        Some((9 * MIB).to_string().as_str())
    );

    // Refused from its Content-Length, before its body is read: the body
    // here sends a little and then waits, as a phone on a slow network.
    let answer = Client::send(
        alice
            .request(Method::POST, "/v1/media")
            .header("content-length", (9 * MIB + 1).to_string())
            .body(stalled_body(b"the start of a large video")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let upload = alice.create(8 * MIB + 10, "video/mp4").await;
    let answer = Client::send(
        alice
            .patch_request(&upload, 0)
            .header("content-length", (8 * MIB + 11).to_string())
            .body(stalled_body(b"more than was said")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A body of no declared length that goes past Upload-Length, after a
    // whole part: refused, and the part it stored goes with the upload.
    let body = data(8 * MIB + 20, 3);
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let answer = Client::send(
        alice
            .patch_request(&upload, 0)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "MEDIA_TOO_LARGE");
    assert_eq!(alice.head(&upload).await.offset(), 0);
    let gone = Client::send(
        alice
            .request(Method::DELETE, &upload)
            .header("tus-resumable", "1.0.0"),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(alice.head(&upload).await.status, StatusCode::NOT_FOUND);
    assert_eq!(backend.keys(&server).await, Vec::<String>::new());
}

/// No credential or a bad one: 401 for every media route.
pub async fn unauthenticated_requests_are_refused(backend: &Backend) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let media = alice.upload(b"hello", 100, "text/plain").await;
    let url = media["url"].as_str().expect("a string in the JSON");
    for token in ["", "not-a-token"] {
        let stranger = Client::new(&server, token);
        let upload = stranger.try_create(10, "text/plain").await;
        assert_eq!(upload.status, StatusCode::UNAUTHORIZED, "token {token:?}");
        let one = Client::send(stranger.request(Method::POST, "/v1/media").body("x")).await;
        assert_eq!(one.status, StatusCode::UNAUTHORIZED);
        let get = stranger.get(url, None).await;
        assert_eq!(get.status, StatusCode::UNAUTHORIZED);
        assert!(get.body.len() < 1000, "no media bytes to a stranger");
        assert_eq!(
            get.code(),
            if token.is_empty() {
                "UNAUTHORIZED"
            } else {
                "TOKEN_INVALID"
            }
        );
        let delete = Client::send(stranger.request(Method::DELETE, url)).await;
        assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    }
}

/// Deleted media are 404; only the uploader may delete; another user's
/// upload is 404 to everyone else.
pub async fn deleted_media_and_strangers_uploads_are_not_found(backend: &Backend) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let bob = Client::of_new_user(&server).await;
    let media = alice.upload(b"a voice note", 100, "audio/ogg").await;
    let url = media["url"].as_str().expect("a string in the JSON");
    let by_bob = Client::send(bob.request(Method::DELETE, url)).await;
    assert_eq!(by_bob.status, StatusCode::NOT_FOUND);
    assert_eq!(bob.get(url, None).await.status, StatusCode::OK);
    let by_alice = Client::send(alice.request(Method::DELETE, url)).await;
    assert_eq!(by_alice.status, StatusCode::NO_CONTENT);
    let after = bob.get(url, None).await;
    assert_eq!(
        (after.status, after.code().as_str()),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
    assert_eq!(
        bob.get("/v1/media/00000000000000000000000000000000", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.get("/v1/media/not-an-id", None).await.status,
        StatusCode::NOT_FOUND
    );

    let upload = alice.create(100, "text/plain").await;
    assert_eq!(bob.head(&upload).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        bob.patch(&upload, 0, vec![0u8; 10]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(alice.head(&upload).await.offset(), 0);
}

/// Uploads per hour and bytes per day: 429 MEDIA_QUOTA with Retry-After.
pub async fn quotas_answer_429(backend: &Backend) {
    let server = backend.start(&["--media-uploads-per-hour", "2", "--media-mib-per-day", "3"]);
    let alice = Client::of_new_user(&server).await;
    alice.create(MIB, "image/jpeg").await;
    // Past what is left by more than a day's refill over the test's time.
    let too_much = alice.try_create(2 * MIB + 100_000, "image/jpeg").await;
    assert_eq!(too_much.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(too_much.code(), "MEDIA_QUOTA");
    let retry: u64 = too_much
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("as the test set it up");
    assert!(retry >= 1);
    alice.create(MIB, "image/jpeg").await;
    let third = alice.try_create(1, "image/jpeg").await;
    assert_eq!(
        (third.status, third.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "MEDIA_QUOTA")
    );
    let one = Client::send(alice.request(Method::POST, "/v1/media").body("x")).await;
    assert_eq!(one.status, StatusCode::TOO_MANY_REQUESTS);
    // Bob's quota is his own.
    let bob = Client::of_new_user(&server).await;
    bob.create(MIB, "image/jpeg").await;
}

/// tus's refusals: a wrong offset (409, with the right one), a wrong
/// content type (415), no Tus-Resumable (412), a checksum that does not
/// match (460, nothing kept) and one that does.
pub async fn tus_refusals_keep_the_upload_intact(backend: &Backend) {
    use base64::Engine as _;
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let file = data(1000, 4);
    let upload = alice.create(file.len(), "application/pdf").await;
    assert_eq!(
        alice.patch(&upload, 0, file[..400].to_vec()).await.offset(),
        400
    );

    let wrong = alice.patch(&upload, 100, file[100..].to_vec()).await;
    assert_eq!(
        (wrong.status, wrong.code().as_str()),
        (StatusCode::CONFLICT, "OFFSET_MISMATCH")
    );
    assert_eq!(wrong.offset(), 400);

    let untyped = Client::send(
        alice
            .request(Method::PATCH, &upload)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "400")
            .body(file[400..].to_vec()),
    )
    .await;
    assert_eq!(untyped.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let unversioned = Client::send(
        alice
            .request(Method::PATCH, &upload)
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", "400")
            .body(file[400..].to_vec()),
    )
    .await;
    assert_eq!(unversioned.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(unversioned.header("tus-version"), Some("1.0.0"));

    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let sha1 =
        |d: &[u8]| b64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, d).as_ref());
    let patch_with = |checksum: String, body: Vec<u8>| {
        Client::send(
            alice
                .patch_request(&upload, 400)
                .header("upload-checksum", checksum)
                .body(body),
        )
    };
    let bad = patch_with(
        format!("sha1 {}", sha1(b"something else")),
        file[400..].to_vec(),
    )
    .await;
    assert_eq!(bad.status.as_u16(), 460);
    assert_eq!(bad.code(), "CHECKSUM_MISMATCH");
    assert_eq!(alice.head(&upload).await.offset(), 400);
    let unknown = patch_with(format!("md5 {}", b64(&[0; 16])), file[400..].to_vec()).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let good = patch_with(format!("sha1 {}", sha1(&file[400..])), file[400..].to_vec()).await;
    assert_eq!(good.status, StatusCode::NO_CONTENT, "{:?}", good.json());
    assert!(good.header("parley-media-id").is_some());
    assert_eq!(alice.finished(&upload).await["sha256"], sha256_hex(&file));
}

/// An upload stopped halfway goes on after the server restarts: HEAD
/// tells the offset, the rest completes it, the digest is the whole
/// file's (computed by reading it back: the new process never saw the
/// first half).
pub async fn upload_resumes_after_a_restart(backend: &Backend) {
    let mut server = backend.start(&[]);
    let alice_token = server.register().await.token;
    let alice = Client::new(&server, &alice_token);
    let file = data(10 * MIB + 3, 5);
    let upload = alice.create(file.len(), "video/mp4").await;
    let half = 9 * MIB;
    assert_eq!(
        alice
            .patch(&upload, 0, file[..half].to_vec())
            .await
            .offset(),
        half as u64
    );
    server.stop_gracefully();
    server.restart();
    let alice = Client::new(&server, &alice_token);
    let head = alice.head(&upload).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.offset(), half as u64);
    assert_eq!(
        head.header("upload-length"),
        Some(file.len().to_string().as_str())
    );
    assert!(head.header("upload-expires").is_some());
    let answer = alice.patch(&upload, half, file[half..].to_vec()).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let media = alice.finished(&upload).await;
    assert_eq!(media["sha256"], sha256_hex(&file));
    let got = alice
        .get(media["url"].as_str().expect("a string in the JSON"), None)
        .await;
    assert!(got.body == file);
}

/// A body cut off mid-way keeps what arrived: the client resumes from
/// the offset HEAD tells.
pub async fn a_cut_off_body_keeps_what_arrived(backend: &Backend) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let file = data(6 * MIB, 6);
    let upload = alice.create(file.len(), "video/mp4").await;
    let sent = 4 * MIB;
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let first: Vec<Result<Bytes, std::io::Error>> = file[..sent]
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = futures_util::stream::iter(first).chain(futures_util::stream::once(async move {
        let _ = cut_rx.await;
        Err(std::io::Error::other("the phone lost its network"))
    }));
    let patch = tokio::spawn({
        let request = alice
            .patch_request(&upload, 0)
            .body(reqwest::Body::wrap_stream(body));
        async move { request.send().await }
    });
    // Cut only once the server has the bytes (its own count says so).
    eventually(
        "the server received the first 4 MiB",
        Duration::from_secs(60),
        || async {
            let received = server.metric("parley_media_received_bytes_total").await;
            if received >= sent as f64 {
                Ok(())
            } else {
                Err(format!("{received} bytes"))
            }
        },
    )
    .await;
    let _ = cut_tx.send(());
    assert!(
        patch.await.expect("the PATCH task").is_err(),
        "the cut PATCH fails"
    );
    let offset = eventually(
        "HEAD tells the kept offset",
        Duration::from_secs(60),
        || async {
            let head = alice.head(&upload).await;
            match head.offset() {
                0 => Err("offset 0".to_owned()),
                n => Ok(n as usize),
            }
        },
    )
    .await;
    assert_eq!(offset, sent);
    let answer = alice.patch(&upload, offset, file[offset..].to_vec()).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(alice.finished(&upload).await["sha256"], sha256_hex(&file));
}

/// Media expire (GET 404 at once, from the manifest), and the sweeper
/// removes expired media and unfinished uploads from the store.
pub async fn expired_media_and_uploads_are_swept(backend: &Backend) {
    let server = backend.start(&[
        "--media-ttl",
        "1",
        "--media-upload-ttl",
        "1",
        "--media-sweep-every",
        "1",
    ]);
    let alice = Client::of_new_user(&server).await;
    let media = alice.upload(&data(1000, 7), 300, "image/png").await;
    let unfinished = alice.create(10 * MIB, "video/mp4").await;
    assert_eq!(
        alice.patch(&unfinished, 0, data(9 * MIB, 8)).await.status,
        StatusCode::NO_CONTENT
    );
    let url = media["url"].as_str().expect("a string in the JSON");
    eventually("the media expire", Duration::from_secs(60), || async {
        match alice.get(url, None).await.status {
            StatusCode::NOT_FOUND => Ok(()),
            status => Err(format!("{status}")),
        }
    })
    .await;
    eventually(
        "the unfinished upload expires",
        Duration::from_secs(60),
        || async {
            match alice.head(&unfinished).await.status {
                StatusCode::NOT_FOUND => Ok(()),
                status => Err(format!("{status}")),
            }
        },
    )
    .await;
    eventually(
        "the sweeper empties the store",
        Duration::from_secs(60),
        || async {
            match backend.keys(&server).await {
                keys if keys.is_empty() => Ok(()),
                keys => Err(format!("{keys:?}")),
            }
        },
    )
    .await;
    // Counted once removed (the store may be empty a moment before): the
    // media, and two uploads (the finished one's manifest too).
    server
        .wait_for_metrics(
            &[
                ("parley_media_swept_media_total", 1.0),
                ("parley_media_swept_uploads_total", 2.0),
            ],
            Duration::from_secs(60),
        )
        .await;
}

/// One user may send to at most N uploads at once: the next is 429.
pub async fn concurrent_uploads_are_bounded(backend: &Backend) {
    let server = backend.start(&["--media-uploads-per-user", "1"]);
    let alice = Client::of_new_user(&server).await;
    let first = alice.create(1000, "video/mp4").await;
    let second = alice.create(1000, "video/mp4").await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let body =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 500])) })
            .chain(futures_util::stream::once(async move {
                let _ = done_rx.await;
                Ok(Bytes::from(vec![2u8; 500]))
            }));
    let slow = tokio::spawn({
        let request = alice
            .patch_request(&first, 0)
            .body(reqwest::Body::wrap_stream(body));
        async move { request.send().await.map(|r| r.status()) }
    });
    eventually(
        "the first upload is receiving",
        Duration::from_secs(60),
        || async {
            match server.metric("parley_media_uploads_in_progress").await {
                1.0 => Ok(()),
                n => Err(format!("{n} in progress")),
            }
        },
    )
    .await;
    let refused = alice.patch(&second, 0, vec![0u8; 1000]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code(), "TOO_MANY_UPLOADS");
    assert!(refused.header("retry-after").is_some());
    let _ = done_tx.send(());
    assert_eq!(
        slow.await.expect("the slow PATCH task").expect("an answer"),
        StatusCode::NO_CONTENT
    );
    // Its slot is free again.
    assert_eq!(
        alice.patch(&second, 0, vec![0u8; 1000]).await.status,
        StatusCode::NO_CONTENT
    );
}

/// S3 goes away: the media routes answer 503 UNAVAILABLE with Retry-After
/// (not 500, not a hang), the rest of the server goes on, and an upload's
/// state as last acknowledged is what the store keeps.
pub async fn a_store_that_goes_away_answers_503(backend: &Backend, stop_store: impl FnOnce()) {
    let server = backend.start(&[]);
    let alice = Client::of_new_user(&server).await;
    let media = alice.upload(b"a photo", 100, "image/jpeg").await;
    let upload = alice.create(1000, "video/mp4").await;
    assert_eq!(alice.patch(&upload, 0, data(400, 10)).await.offset(), 400);
    stop_store();
    for answer in [
        alice.get(media["url"].as_str().expect("a url"), None).await,
        alice.head(&upload).await,
        alice.patch(&upload, 400, data(600, 11)).await,
        alice.try_create(10, "image/jpeg").await,
    ] {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.header("retry-after").is_some());
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }
    // The messenger is not the media store: registration still answers.
    Client::of_new_user(&server).await;
}
