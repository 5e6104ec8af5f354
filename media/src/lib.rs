//! Parley's media service: photos, voice notes and video go up to it over
//! HTTPS, and a message carries only their id (and a thumbnail).
//!
//! - [`routes`]: the HTTP API: tus 1.0 resumable uploads (core, creation,
//!   expiration, checksum, termination) at `/v1/media/uploads`, one-request
//!   uploads at `POST /v1/media`, ranged downloads and deletion at
//!   `/v1/media/{id}`; authenticated by the identity crate's
//!   [`BearerDevice`](parley_identity::BearerDevice), as registration is.
//! - [`service`]: the same without HTTP: uploads, their completion into
//!   media, expiry.
//! - [`storage`]: the local data directory or S3, through `object_store`.
//! - [`quota`], [`config`], [`metrics`], [`error`].
//!
//! No upload or download is held whole in memory: bytes go to the storage
//! in parts of [`config::PART_SIZE`] as they arrive, and downloads stream
//! from it.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod metrics;
pub mod quota;
pub mod routes;
pub mod service;
pub mod storage;

use std::future::Future;

pub use config::MediaConfig;
pub use error::MediaError;
pub use metrics::MediaMetrics;
pub use routes::{MediaState, router};
pub use service::{Media, MediaInfo, MediaRecord, Patch, Swept, Upload};
pub use storage::{S3Settings, Storage, StorageError};

/// The tus protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";

/// The operations of this crate, `(method, path, statuses)`, and every
/// status each can answer, as registration's `ROUTES` (tests/openapi.rs
/// checks docs/openapi.json against both; the metrics make their series).
pub const ROUTES: [(&str, &str, &[u16]); 10] = [
    ("OPTIONS", "/v1/media/uploads", &[204]),
    (
        "POST",
        "/v1/media/uploads",
        &[201, 400, 401, 412, 413, 429, 500, 503],
    ),
    (
        "HEAD",
        "/v1/media/uploads/{upload_id}",
        &[200, 401, 404, 412, 500, 503],
    ),
    (
        "PATCH",
        "/v1/media/uploads/{upload_id}",
        &[204, 400, 401, 404, 409, 412, 413, 415, 429, 460, 500, 503],
    ),
    (
        "GET",
        "/v1/media/uploads/{upload_id}",
        &[200, 401, 404, 409, 500, 503],
    ),
    (
        "DELETE",
        "/v1/media/uploads/{upload_id}",
        &[204, 401, 404, 412, 500, 503],
    ),
    (
        "POST",
        "/v1/media",
        &[201, 400, 401, 411, 413, 429, 500, 503],
    ),
    (
        "GET",
        "/v1/media/{media_id}",
        &[200, 206, 304, 401, 404, 416, 500, 503],
    ),
    (
        "HEAD",
        "/v1/media/{media_id}",
        &[200, 206, 304, 401, 404, 416, 500, 503],
    ),
    ("DELETE", "/v1/media/{media_id}", &[204, 401, 404, 500, 503]),
];

/// A random 128-bit id, as 32 lowercase hex characters.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Every `config.sweep_every` (the first right away), removes expired
/// media and uploads from the storage, until `stop`.
pub async fn sweep(media: Media, stop: impl Future<Output = ()>) {
    let mut every = tokio::time::interval(media.config().sweep_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = every.tick() => {}
        }
        match media.sweep(service::now_millis()).await {
            Ok(Swept {
                media: 0,
                uploads: 0,
            }) => {}
            Ok(swept) => tracing::info!(
                media = swept.media,
                uploads = swept.uploads,
                "expired media and uploads removed"
            ),
            Err(error) => tracing::warn!(%error, "the media sweep failed; it runs again later"),
        }
    }
}
