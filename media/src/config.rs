//! The media service's limits and times.

use std::time::Duration;

/// Bytes per part of a stored upload: an upload's bytes go to the storage
/// in parts of this size (the last one shorter), S3 multipart parts in
/// production. S3 wants at least 5 MiB per part but the last; an upload
/// holds at most one part in memory while it is received.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// How long a `PATCH` body may send nothing before the server keeps what
/// arrived and ends the request (the client resumes with `HEAD`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Largest file, in bytes.
    pub max_size: u64,
    /// How long a completed media object is kept.
    pub media_ttl: Duration,
    /// How long an upload may take from its creation to its last byte.
    pub upload_ttl: Duration,
    /// Uploads a user may start per hour (a token bucket: this many at
    /// once, refilled over the hour).
    pub uploads_per_hour: u32,
    /// Bytes a user may upload per day (a token bucket likewise).
    pub bytes_per_day: u64,
    /// Uploads receiving bytes at once, per user.
    pub concurrent_per_user: usize,
    /// Uploads receiving bytes at once, in all.
    pub concurrent: usize,
    /// How often expired media and uploads are removed from the storage.
    pub sweep_every: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_size: 100 * 1024 * 1024,
            media_ttl: Duration::from_secs(30 * 24 * 3600),
            upload_ttl: Duration::from_secs(24 * 3600),
            uploads_per_hour: 100,
            bytes_per_day: 2 * 1024 * 1024 * 1024,
            concurrent_per_user: 4,
            concurrent: 64,
            sweep_every: Duration::from_secs(3600),
        }
    }
}
