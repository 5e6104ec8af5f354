//! The development push sink: one JSON line per push,
//! `{"kind":"push","user":"<user id>","device":"<device id>","platform":"fcm"}`
//! (ids as decimal strings, like the HTTP API's), appended
//! to the same outbox file as the development SMS, so that a developer
//! (and the README's tour) sees a phone being woken.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::{BoxFuture, Device, Platform, PushError, PushService, Target};

/// The endpoint the outbox gives every token: the outbox has no endpoints
/// of its own, and the device is named in each line.
pub const OUTBOX_ENDPOINT: &str = "outbox";

#[derive(Debug)]
pub struct OutboxPush {
    path: PathBuf,
    /// Serialises this process's appends (see `OutboxSms`, which shares the
    /// file: each line is one `O_APPEND` write, which Linux does not
    /// interleave for lines this short).
    lock: Arc<Mutex<()>>,
}

impl OutboxPush {
    /// A sink appending to `path` (created at the first push if missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Arc::default(),
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    kind: &'static str,
    user: String,
    device: String,
    platform: &'a str,
}

impl PushService for OutboxPush {
    fn supports(&self, _platform: Platform) -> bool {
        true
    }

    fn register<'a>(
        &'a self,
        _platform: Platform,
        _token: &'a str,
        _known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, PushError>> {
        Box::pin(async { Ok(OUTBOX_ENDPOINT.to_owned()) })
    }

    fn publish<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            let line = Line {
                kind: "push",
                user: device.user.to_string(),
                device: device.device.to_string(),
                platform: target.platform.as_str(),
            };
            let mut line = serde_json::to_vec(&line).map_err(|e| io_failed(e.into()))?;
            line.push(b'\n');
            let (path, lock) = (self.path.clone(), Arc::clone(&self.lock));
            // File I/O blocks; keep it off the async workers.
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
                file.write_all(&line)
            })
            .await
            .map_err(|join| io_failed(std::io::Error::other(join)))?
            .map_err(io_failed)
        })
    }
}

fn io_failed(error: std::io::Error) -> PushError {
    PushError::Failed {
        reason: "service",
        detail: format!("writing the push outbox: {error}"),
    }
}
