//! `send --file`: the file uploaded resumably, and the attachment that
//! refers to it.
//!
//! The upload is tus: create it (`POST`), append in chunks of
//! [`CHUNK_BYTES`] (`PATCH` with `Upload-Offset`), and when a run is
//! interrupted (Ctrl-C, a dropped connection, a server restart) the next
//! run of the same command finds the upload in `uploads.json`, asks the
//! server how much it has (`HEAD`) and goes on from there. An upload the
//! server no longer knows (expired, or another server) starts over.
//!
//! The file's SHA-256 is computed before the upload and checked against the
//! digest the server answers when it completes: a resumed upload of a file
//! that changed, or bytes damaged on the way, are caught there, not by the
//! recipient.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::warn;

use super::output::{note, say};
use super::{CliError, Loaded};
use crate::ClientError;
use crate::media::{Media, MediaInfo, file_body, hex};
use crate::profile::{PendingUpload, ProfileDir, UploadKey};
use crate::proto::v1::{Attachment, Thumbnail, attachment};
use crate::thumbnail::{self, Picture};

/// One `PATCH` carries at most this much: a checkpoint a phone on a poor
/// link reaches often, and a request size proxies and load balancers let
/// through. The server keeps what arrived of an interrupted `PATCH`, so a
/// cut costs nothing already sent.
pub(crate) const CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// How many times a run asks the server for its offset after a
/// `409 OFFSET_MISMATCH` (another run of the same upload appended meanwhile)
/// before giving up.
const MAX_OFFSET_FIXES: u32 = 3;

/// A file, uploaded: what its attachment needs.
pub(crate) struct Uploaded {
    pub info: MediaInfo,
    pub attachment: Attachment,
}

/// Uploads `path` (resuming an earlier run's upload of it) and builds its
/// attachment, with a thumbnail for photos.
pub(crate) async fn upload(
    loaded: &Loaded,
    dir: &ProfileDir,
    path: &Path,
) -> Result<Uploaded, CliError> {
    let local = Local::inspect(path).await?;
    let explain = &loaded.explain;
    let tls = loaded.endpoints.tls().map_err(|e| explain.client(e))?;
    let media = Media::new(&loaded.endpoints.http, tls, &loaded.profile.token)
        .map_err(|e| explain.client(e))?;
    let info = upload_resumably(&media, dir, &local)
        .await
        .map_err(|e| match e {
            Failed::Cli(e) => e,
            Failed::Client(e) => upload_failed(e, &local.path, explain),
        })?;
    say(&format!(
        "uploaded {} {} bytes sha256 {}",
        info.media_id, info.size, info.sha256
    ))?;
    let attachment = Attachment {
        location: Some(attachment::Location::MediaId(info.media_id.clone())),
        size: info.size,
        sha256: local.sha256.to_vec(),
        content_type: local.content_type.to_string(),
        file_name: local.file_name.clone(),
        width: local.picture.as_ref().map_or(0, |p| p.width),
        height: local.picture.as_ref().map_or(0, |p| p.height),
        thumbnail: local.picture.as_ref().map(|p| Thumbnail {
            data: p.thumbnail.jpeg.clone(),
            content_type: "image/jpeg".into(),
            width: p.thumbnail.width,
            height: p.thumbnail.height,
        }),
        ..Attachment::default()
    };
    Ok(Uploaded { info, attachment })
}

/// The file as found on disk before the upload.
struct Local {
    path: PathBuf,
    key: UploadKey,
    sha256: [u8; 32],
    content_type: &'static str,
    file_name: String,
    picture: Option<Picture>,
}

impl Local {
    /// Reads the file once for its digest and type, and decodes it for a
    /// thumbnail if it is a photo: on a blocking thread, as it is disk and
    /// CPU work.
    async fn inspect(path: &Path) -> Result<Local, CliError> {
        let path = path.to_path_buf();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || Local::inspect_blocking(path))
            .await
            .map_err(|e| CliError::new(format!("cannot read {shown}: {e}")))?
    }

    fn inspect_blocking(path: PathBuf) -> Result<Local, CliError> {
        use std::io::Read;
        let cannot = |e: std::io::Error| {
            CliError::new(format!(
                "cannot read {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            ))
        };
        let canonical = std::fs::canonicalize(&path).map_err(cannot)?;
        let mut file = std::fs::File::open(&canonical).map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        if !meta.is_file() {
            return Err(CliError::new(format!(
                "{} is not a file: --file takes one file",
                path.display()
            )));
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut first = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(cannot)?;
            if n == 0 {
                break;
            }
            if first.len() < 64 {
                first.extend_from_slice(&buf[..n.min(64 - first.len())]);
            }
            context.update(&buf[..n]);
            size += n as u64;
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(context.finish().as_ref());
        let content_type = thumbnail::content_type(&canonical, &first);
        let picture = if thumbnail::is_photo(content_type) {
            match thumbnail::picture(&canonical) {
                Ok(picture) => Some(picture),
                Err(e) => {
                    // A photo that does not decode still goes, as a file.
                    warn!(error = %e, "no thumbnail for {}", path.display());
                    None
                }
            }
        } else {
            None
        };
        let file_name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Local {
            key: UploadKey {
                path: canonical,
                size,
                mtime_ns,
                sha256: hex(&sha256),
            },
            path,
            sha256,
            content_type,
            file_name,
            picture,
        })
    }
}

/// An upload's failure: already worded, or the client's error to explain.
enum Failed {
    Cli(CliError),
    Client(ClientError),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        Failed::Client(e)
    }
}

impl From<CliError> for Failed {
    fn from(e: CliError) -> Self {
        Failed::Cli(e)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn upload_resumably(
    media: &Media,
    dir: &ProfileDir,
    local: &Local,
) -> Result<MediaInfo, Failed> {
    let size = local.key.size;
    let server = media.base().to_string();
    let pending = dir.load_uploads().map_err(CliError::from)?;
    let earlier = pending.find(&local.key, &server, now()).cloned();
    let mut resumed = None;
    if let Some(earlier) = earlier {
        match media.status(&earlier.upload).await? {
            Some(status) if status.length == size => {
                resumed = Some((earlier.upload, status.offset));
            }
            other => {
                note(&format!(
                    "the unfinished upload of {} is gone from the server{}; starting over",
                    local.path.display(),
                    if other.is_some() {
                        " (its length differs)"
                    } else {
                        ""
                    },
                ));
                dir.update_uploads(|p| p.remove(&server, &earlier.upload, now()))
                    .map_err(CliError::from)?;
            }
        }
    }
    let (upload, mut offset) = match resumed {
        Some((upload, offset)) => {
            note(&format!(
                "resuming the upload of {} at byte {offset} of {size}",
                local.path.display()
            ));
            (upload, offset)
        }
        None => {
            let metadata = [
                ("filename", local.file_name.as_str()),
                ("content_type", local.content_type),
            ];
            let upload = media.create(size, &metadata).await?;
            // Saved before the first byte goes: a run killed from here on
            // is resumed by the next.
            dir.update_uploads(|p| {
                p.insert(
                    PendingUpload {
                        key: local.key.clone(),
                        http: server.clone(),
                        upload: upload.clone(),
                        created_at: now(),
                    },
                    now(),
                )
            })
            .map_err(CliError::from)?;
            (upload, 0)
        }
    };

    let bar = progress_bar(size, offset);
    let mut fixes = 0;
    while offset < size {
        let len = (size - offset).min(CHUNK_BYTES);
        let mut file = tokio::fs::File::open(&local.key.path)
            .await
            .map_err(ClientError::Io)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(ClientError::Io)?;
        let counter = bar.clone();
        let body = file_body(file.take(len), len, move |n| counter.inc(n));
        match media.append(&upload, offset, len, body).await {
            Ok(appended) => offset = appended.offset,
            Err(ClientError::Api {
                status: 409, code, ..
            }) if code == "OFFSET_MISMATCH" && fixes < MAX_OFFSET_FIXES => {
                fixes += 1;
                match media.status(&upload).await? {
                    Some(status) => offset = status.offset,
                    None => {
                        return Err(CliError::new(
                            "the upload vanished from the server while it was sent: run the same command again",
                        )
                        .into());
                    }
                }
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
        bar.set_position(offset);
    }
    bar.finish_and_clear();
    let info = media.finished(&upload).await?;
    dir.update_uploads(|p| p.remove(&server, &upload, now()))
        .map_err(CliError::from)?;
    if info.sha256 != local.key.sha256 || info.size != size {
        // Not what this file is: the file changed between runs, or bytes
        // were damaged. Nobody must download it.
        if let Err(e) = media.delete(&info.url).await {
            warn!(error = %e, "cannot delete the damaged upload");
        }
        return Err(CliError::new(format!(
            "the server's copy of {} is not the file (its SHA-256 is {}, the file's {}): \
             it was deleted; run the same command again",
            local.path.display(),
            info.sha256,
            local.key.sha256
        ))
        .into());
    }
    Ok(info)
}

/// A bar on stderr when a person watches (stdout and stderr are a
/// terminal); nothing otherwise, so scripts and tests see only the lines.
fn progress_bar(size: u64, offset: u64) -> ProgressBar {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(offset);
    bar.reset_eta();
    bar
}

/// A failed upload, worded with what to do: an interrupted one resumes.
fn upload_failed(e: ClientError, path: &Path, explain: &super::Explain) -> CliError {
    let again = "run the same command again to resume";
    let interrupted = |e: &ClientError| {
        CliError::new(format!(
            "the upload of {} was interrupted ({}): {again}",
            path.display(),
            explain.text(e)
        ))
    };
    match &e {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => match code.as_str() {
            "MEDIA_TOO_LARGE" => CliError::new(format!(
                "{} is too large for this server (MEDIA_TOO_LARGE: {message})",
                path.display()
            )),
            "MEDIA_QUOTA" | "TOO_MANY_UPLOADS" => CliError::new(format!(
                "the server refused the upload for now ({e}); {again} later"
            )),
            // The server failed or is overloaded: what it has, it keeps.
            _ if *status >= 500 => interrupted(&e),
            _ => explain.client(e),
        },
        ClientError::Http(_)
        | ClientError::Timeout
        | ClientError::Unreachable { .. }
        | ClientError::Io(_) => interrupted(&e),
        _ => explain.client(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            attempts_left: None,
            retry_after: Some(30),
        }
    }

    #[test]
    fn failures_say_whether_running_again_resumes() {
        let explain = crate::cli::explain::for_tests();
        let path = Path::new("/home/a/video.mp4");
        let text = |e| upload_failed(e, path, &explain).to_string();
        for resumable in [
            api(503, "UNAVAILABLE"),
            api(500, "INTERNAL"),
            ClientError::Timeout,
            ClientError::Unreachable {
                url: "https://127.0.0.1:8443".into(),
                reason: "connection refused".into(),
            },
        ] {
            let said = text(resumable);
            assert!(
                said.contains("the upload of /home/a/video.mp4 was interrupted")
                    && said.ends_with("run the same command again to resume"),
                "{said}"
            );
        }
        let later = text(api(429, "MEDIA_QUOTA"));
        assert!(
            later.contains("retry after 30 s") && later.ends_with("resume later"),
            "{later}"
        );
        let large = text(api(413, "MEDIA_TOO_LARGE"));
        assert!(
            large.contains("too large") && !large.contains("resume"),
            "{large}"
        );
        // A refused credential reads as everywhere else.
        assert_eq!(
            text(api(401, "TOKEN_REVOKED")),
            explain.text(&api(401, "TOKEN_REVOKED"))
        );
    }
}
