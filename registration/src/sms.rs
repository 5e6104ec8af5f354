//! How codes leave the server: the [`SmsSender`] trait, and [`OutboxSms`], the
//! development sink that writes messages to a file instead of a phone network.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// Why a message was not sent. The handler turns every variant into
/// `502 SMS_FAILED` and does not count the code as sent.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("writing the SMS outbox: {0}")]
    Io(#[from] std::io::Error),
    /// Sending took longer than the configured SMS timeout.
    #[error("SMS not sent within {0:?}")]
    Timeout(std::time::Duration),
    /// The provider (or a test double) refused or failed the message.
    #[error("SMS provider: {0}")]
    Provider(String),
}

/// SMS leaves through this trait: production through AWS SNS (`parley-sns`), the
/// development sink [`OutboxSms`] is the default.
///
/// `to` is E.164. Implementations must not log `to` or `body` above debug
/// level: they are a phone number and a secret code.
pub trait SmsSender: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>>;
}

/// Development sink: appends one JSON line
/// `{"kind":"sms","to":"+1555...","body":"Your Parley code is 123456"}` per
/// message to a file (e.g. `<data-dir>/outbox.jsonl`), creating the file and
/// its directory if missing. End-to-end tests and developers read codes from it.
#[derive(Debug)]
pub struct OutboxSms {
    path: PathBuf,
    /// Serialises appends within the process. Held by the blocking writer
    /// thread, not by the async caller, so a caller that gives up (timeout)
    /// cannot release it while a write is still in progress. Across processes,
    /// each line goes out in one `O_APPEND` write, which Linux does not
    /// interleave for lines this short.
    lock: Arc<Mutex<()>>,
}

impl OutboxSms {
    /// An outbox at `path`; the file is created at the first message.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// An outbox at `path`, creating the file (and its directory) now if it
    /// is missing, so that someone can watch it before the first message.
    /// Existing messages are kept.
    pub fn create(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let outbox = Self::new(path);
        if let Some(parent) = outbox.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&outbox.path)?;
        Ok(outbox)
    }
}

#[derive(Serialize)]
struct OutboxLine<'a> {
    kind: &'static str,
    to: &'a str,
    body: &'a str,
}

impl SmsSender for OutboxSms {
    fn send<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        Box::pin(async move {
            let mut line = serde_json::to_vec(&OutboxLine {
                kind: "sms",
                to,
                body,
            })
            .map_err(std::io::Error::from)?;
            line.push(b'\n');
            let path = self.path.clone();
            let lock = Arc::clone(&self.lock);
            // File I/O blocks; keep it off the async worker threads.
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                // A panic while appending leaves nothing half-guarded: the
                // file is reopened on every message.
                let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
                file.write_all(&line)
            })
            .await
            .map_err(|join| SmsError::Io(std::io::Error::other(join)))??;
            tracing::info!("wrote an SMS to the development outbox");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_stay_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("outbox.jsonl");
        let outbox = Arc::new(OutboxSms::new(&path));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let outbox = Arc::clone(&outbox);
            tasks.push(tokio::spawn(async move {
                let to = format!("+1555000{i:04}");
                let body = format!("Your Parley code is {i:06}{}", "x".repeat(200));
                outbox.send(&to, &body).await
            }));
        }
        for task in tasks {
            task.await.expect("join").expect("send");
        }
        let text = std::fs::read_to_string(&path).expect("read outbox");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 64);
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
            assert_eq!(v["kind"], "sms");
            assert!(v["to"].as_str().is_some_and(|to| to.starts_with("+1555")));
        }
    }
}
