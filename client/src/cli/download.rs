//! `listen --download DIR`: each attachment of an arriving message
//! downloaded into DIR, streamed to a file, and kept only when its size and
//! SHA-256 are what the message says.
//!
//! A download goes to a hidden `.part` file first; it gets its name (the
//! sender's file name, made safe, never replacing an existing file) only
//! once verified, and is deleted when it fails, so DIR never holds a file
//! that is not exactly what was sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::interval;

use super::output::printable;
use super::{CliError, Loaded};
use crate::media::{DownloadError, Media, hex, media_path};
use crate::proto::v1::{Attachment, Encryption, attachment};
use crate::{ClientError, Session};

/// How often a keepalive ping goes out while a download holds up the
/// session (the server wants one at least once a minute).
const PING_EVERY: Duration = Duration::from_secs(20);
/// The longest file name kept, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// Downloads attachments into one folder.
pub(crate) struct Downloader {
    media: Media,
    dir: PathBuf,
}

impl Downloader {
    /// A downloader into `dir` (made if missing) from the profile's server.
    pub fn new(loaded: &Loaded, dir: &Path) -> Result<Self, CliError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::new(format!(
                "cannot make the download folder {}: {}",
                dir.display(),
                crate::error::io_reason(&e)
            ))
        })?;
        let explain = &loaded.explain;
        let tls = loaded.endpoints.tls().map_err(|e| explain.client(e))?;
        let media = Media::new(&loaded.endpoints.http, tls, &loaded.profile.token)
            .map_err(|e| explain.client(e))?;
        Ok(Self {
            media,
            dir: dir.to_path_buf(),
        })
    }

    /// Downloads attachment `index` of message `message_id` and returns
    /// where it is; or why not, worded for the user. Keeps `session` alive
    /// meanwhile.
    pub async fn fetch(
        &self,
        session: &mut Session,
        message_id: u64,
        index: usize,
        attachment: &Attachment,
    ) -> Result<PathBuf, String> {
        let path = self.source(attachment)?;
        if attachment.sha256.len() != 32 {
            return Err("the message gives no SHA-256 to check it against; not downloaded".into());
        }
        let part = self.dir.join(format!(".parley-{message_id}-{index}.part"));
        let result = self.download_to(session, &path, attachment, &part).await;
        let kept = match result {
            Ok(()) => keep(&part, &self.dir, &file_name(attachment)),
            Err(e) => Err(e),
        };
        if kept.is_err() {
            // Nothing of a refused or broken download stays behind.
            let _ = std::fs::remove_file(&part);
        }
        kept
    }

    async fn download_to(
        &self,
        session: &mut Session,
        path: &str,
        attachment: &Attachment,
        part: &Path,
    ) -> Result<(), String> {
        let mut file = tokio::fs::File::create(part).await.map_err(|e| {
            format!(
                "cannot write {}: {}",
                part.display(),
                crate::error::io_reason(&e)
            )
        })?;
        let result = {
            let download =
                self.media
                    .download(path, attachment.size, &attachment.sha256, &mut file);
            tokio::pin!(download);
            let mut ping = interval(PING_EVERY);
            // The first tick is at once; the session was just used.
            ping.tick().await;
            loop {
                tokio::select! {
                    result = &mut download => break result,
                    _ = ping.tick() => {
                        session.ping().await.map_err(|e| format!("the session failed: {e}"))?;
                    }
                }
            }
        };
        file.sync_all().await.map_err(|e| {
            format!(
                "cannot write {}: {}",
                part.display(),
                crate::error::io_reason(&e)
            )
        })?;
        result.map(drop).map_err(|e| match e {
            DownloadError::Mismatch { expected, got } => format!(
                "refused: its SHA-256 is {got}, the message says {expected} (not the file that was sent); deleted"
            ),
            DownloadError::Client(ClientError::Api { status: 404, .. }) => {
                "the server no longer has it (expired or deleted)".into()
            }
            other => format!("{other}; deleted"),
        })
    }

    /// The path on this server to download from. A URL elsewhere is not
    /// followed: this device's token goes to its own server only, and
    /// nothing else is trusted by this CLI's TLS setup.
    fn source(&self, attachment: &Attachment) -> Result<String, String> {
        match &attachment.location {
            Some(attachment::Location::MediaId(id)) => {
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(media_path(id))
                } else {
                    Err(format!(
                        "{:?} is not a media id; not downloaded",
                        printable(id.as_bytes())
                    ))
                }
            }
            Some(attachment::Location::Url(url)) if url.starts_with("/v1/media/") => {
                Ok(url.clone())
            }
            Some(attachment::Location::Url(url)) => {
                let same = reqwest::Url::parse(url)
                    .ok()
                    .zip(reqwest::Url::parse(self.media.base()).ok())
                    .filter(|(u, b)| u.origin() == b.origin());
                match same {
                    Some((u, _)) => Ok(u.path().to_string()),
                    None => Err(format!(
                        "it is on another server ({}); parley-cli downloads from its own server only",
                        printable(url.as_bytes())
                    )),
                }
            }
            None => Err("the message does not say where it is".into()),
        }
    }
}

/// The name to save an attachment under: the sender's file name reduced
/// to one safe path component, or its media id; `.encrypted` added when
/// the stored bytes are ciphertext (parley-cli keeps them as they are).
fn file_name(attachment: &Attachment) -> String {
    let mut name = safe_name(&attachment.file_name);
    if name.is_empty() {
        name = match &attachment.location {
            Some(attachment::Location::MediaId(id)) => safe_name(id),
            _ => String::new(),
        };
    }
    if name.is_empty() {
        name = format!(
            "attachment-{}",
            hex(&attachment.sha256[..8.min(attachment.sha256.len())])
        );
    }
    if attachment.encryption() != Encryption::None {
        name.push_str(".encrypted");
    }
    name
}

/// The last path component of `name`, without control characters or
/// leading dots (no hidden files, no `..`), at most [`MAX_NAME_BYTES`].
pub(crate) fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// Gives the verified `part` its name in `dir`: `name`, else `stem-1.ext`,
/// `stem-2.ext`, ...: never replacing a file (a hard link fails rather than
/// overwrite, atomically, where a rename would not).
fn keep(part: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    for n in 0..1000u32 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem}-{n}{ext}"))
        };
        match std::fs::hard_link(part, &candidate) {
            Ok(()) => {
                let _ = std::fs::remove_file(part);
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(format!(
                    "cannot save it as {}: {}",
                    candidate.display(),
                    crate::error::io_reason(&e)
                ));
            }
        }
    }
    Err(format!(
        "{} and 999 variants of its name exist already",
        dir.join(name).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_names_cannot_leave_the_folder() {
        assert_eq!(safe_name("IMG_0042.jpg"), "IMG_0042.jpg");
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name(".."), "");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\nb\u{1b}[31m.txt"), "ab[31m.txt");
        assert_eq!(safe_name("/"), "");
        assert!(safe_name(&"é".repeat(300)).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn names_fall_back_and_say_encrypted() {
        let mut a = Attachment {
            location: Some(attachment::Location::MediaId("ab".repeat(16))),
            sha256: vec![1; 32],
            ..Attachment::default()
        };
        assert_eq!(file_name(&a), "ab".repeat(16));
        a.file_name = "voice.ogg".into();
        a.set_encryption(Encryption::Aes256CbcHmacSha256);
        assert_eq!(file_name(&a), "voice.ogg.encrypted");
    }

    #[test]
    fn a_kept_file_never_replaces_another() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::write(dir.join("photo.jpg"), b"older").expect("write");
        for (i, content) in [b"one", b"two"].iter().enumerate() {
            let part = dir.join(format!(".p{i}.part"));
            std::fs::write(&part, content).expect("write");
            let kept = keep(&part, dir, "photo.jpg").expect("kept");
            assert_eq!(kept, dir.join(format!("photo-{}.jpg", i + 1)));
            assert_eq!(std::fs::read(&kept).expect("read"), *content);
            assert!(!part.exists());
        }
        assert_eq!(
            std::fs::read(dir.join("photo.jpg")).expect("read"),
            b"older"
        );
        let part = dir.join(".q.part");
        std::fs::write(&part, b"x").expect("write");
        assert_eq!(
            keep(&part, dir, "README").expect("kept"),
            dir.join("README")
        );
    }
}
