//! The media service without HTTP: uploads (created, appended to,
//! completed, abandoned), media (read, deleted) and their expiry.
//!
//! ## Keys
//! - `uploads/<upload id>.json`: an upload's manifest ([`Upload`]).
//! - `uploads/<upload id>/tail-<offset>`: the bytes received past the last
//!   whole part, until the next part fills (S3 parts are at least 5 MiB).
//! - `media/<media id>`: the bytes of completed media, put there by the
//!   upload's multipart upload (or one put for a single part).
//! - `media/<media id>.json`: the media's manifest ([`MediaRecord`]).
//!
//! A manifest write is the commit point of every step: a `PATCH` is kept
//! once the manifest that counts its bytes is written, and a crash before
//! that leaves the previous manifest, and an offset the client resumes
//! from. Nothing else is needed to restart: the manifests are the state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};
use parley_identity::DeviceClaims;
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::config::{IDLE_TIMEOUT, MediaConfig, PART_SIZE};
use crate::error::MediaError;
use crate::metrics::MediaMetrics;
use crate::quota::Quotas;
use crate::storage::Storage;

/// Uploads whose running SHA-256 is kept between requests, at most. Past
/// it an upload's digest is computed when it completes, by reading it back.
const MAX_RUNNING_DIGESTS: usize = 100_000;

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An upload in progress (or completed: `media` is then set).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    /// The uploading user and device.
    pub user: u64,
    pub device: u64,
    pub length: u64,
    /// The media id it becomes (known from the start: a multipart upload
    /// writes to its final key), told only once complete.
    pub media_id: String,
    pub content_type: String,
    /// `Upload-Metadata` as the client sent it (answered by `HEAD`).
    #[serde(default)]
    pub metadata: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Bytes per part; every part but the last is exactly this long.
    pub part_size: u64,
    /// The storage's multipart upload, once a first part was stored.
    #[serde(default)]
    pub multipart: Option<String>,
    /// The stored parts' ids, in order.
    #[serde(default)]
    pub parts: Vec<String>,
    /// Bytes past the last part, kept in the tail object.
    #[serde(default)]
    pub tail_len: u64,
    #[serde(default)]
    pub tail_key: Option<String>,
    /// Set once the media object and its manifest are written.
    #[serde(default)]
    pub media: Option<MediaRecord>,
}

impl Upload {
    /// Bytes received and kept.
    pub fn offset(&self) -> u64 {
        if self.media.is_some() {
            return self.length;
        }
        self.parts.len() as u64 * self.part_size + self.tail_len
    }

    fn all_received(&self) -> bool {
        self.offset() == self.length
    }
}

/// Stored media.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    pub id: String,
    /// The uploading user: the one who may delete it.
    pub user: u64,
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
    pub content_type: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// The answer of a completed upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaInfo {
    pub media_id: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl From<&MediaRecord> for MediaInfo {
    fn from(m: &MediaRecord) -> Self {
        Self {
            media_id: m.id.clone(),
            url: format!("/v1/media/{}", m.id),
            size: m.size,
            sha256: m.sha256.clone(),
            content_type: m.content_type.clone(),
            expires_at: m.expires_ms.div_euclid(1000),
        }
    }
}

/// An `Upload-Checksum`: the algorithm and the expected digest.
#[derive(Clone, Debug)]
pub struct Checksum {
    pub algorithm: &'static digest::Algorithm,
    pub expected: Vec<u8>,
}

/// What a `PATCH` says of its body.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// Where it goes (`Upload-Offset`): the upload's offset.
    pub offset: u64,
    /// Its length, if its sender said (`Content-Length`).
    pub length: Option<u64>,
    /// Its `Upload-Checksum`.
    pub checksum: Option<Checksum>,
}

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub media: usize,
    pub uploads: usize,
}

/// The media service (cheap to clone).
#[derive(Clone, Debug)]
pub struct Media {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    config: MediaConfig,
    quotas: Arc<Quotas>,
    metrics: MediaMetrics,
    /// One request at a time per upload.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Running digests of uploads, by id: the offset they have hashed to.
    digests: Mutex<HashMap<String, (u64, digest::Context)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("storage", &self.storage)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Media {
    pub fn new(storage: Storage, config: MediaConfig, metrics: MediaMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                quotas: Arc::new(Quotas::new(&config)),
                storage,
                config,
                metrics,
                locks: Mutex::default(),
                digests: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &MediaConfig {
        &self.inner.config
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub fn metrics(&self) -> &MediaMetrics {
        &self.inner.metrics
    }

    /// Uploads receiving bytes now.
    pub fn in_progress(&self) -> usize {
        self.inner.quotas.in_progress()
    }

    fn upload_key(&self, id: &str) -> Path {
        self.inner.storage.key(&format!("uploads/{id}.json"))
    }

    fn media_key(&self, id: &str) -> Path {
        self.inner.storage.key(&format!("media/{id}"))
    }

    fn media_manifest_key(&self, id: &str) -> Path {
        self.inner.storage.key(&format!("media/{id}.json"))
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &Path) -> Result<T, MediaError> {
        let bytes = self.inner.storage.objects.get(key).await?.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| MediaError::Internal(format!("manifest {key} is corrupt: {e}")))
    }

    async fn write_json<T: Serialize>(&self, key: &Path, value: &T) -> Result<(), MediaError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| MediaError::Internal(format!("manifest {key}: {e}")))?;
        self.inner
            .storage
            .objects
            .put(key, PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    async fn delete_quietly(&self, key: &Path) {
        match self.inner.storage.objects.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            // Left for the sweeper (or the S3 lifecycle rule).
            Err(error) => tracing::debug!(%key, %error, "media: cannot delete"),
        }
    }

    /// Creates an upload of `length` bytes for `owner`, counted against
    /// its quotas.
    pub async fn create(
        &self,
        owner: DeviceClaims,
        length: u64,
        content_type: String,
        metadata: Option<String>,
        now_ms: i64,
    ) -> Result<Upload, MediaError> {
        let config = &self.inner.config;
        if length > config.max_size {
            return Err(MediaError::TooLarge {
                max: config.max_size,
            });
        }
        self.inner.quotas.take(owner.user, length)?;
        let upload = Upload {
            id: crate::random_id(),
            user: owner.user,
            device: owner.device,
            length,
            media_id: crate::random_id(),
            content_type,
            metadata,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(millis(config.upload_ttl)),
            part_size: PART_SIZE as u64,
            multipart: None,
            parts: Vec::new(),
            tail_len: 0,
            tail_key: None,
            media: None,
        };
        self.write_json(&self.upload_key(&upload.id), &upload)
            .await?;
        self.inner.metrics.uploads_created.inc();
        Ok(upload)
    }

    /// `owner`'s upload `id`, if it has not expired. An upload whose bytes
    /// all arrived but whose completion was cut short (a crash) is
    /// completed now.
    pub async fn upload(
        &self,
        owner: DeviceClaims,
        id: &str,
        now_ms: i64,
    ) -> Result<Upload, MediaError> {
        let lock = self.lock(id)?;
        let _held = lock.lock().await;
        let mut upload = self.load_upload(owner, id, now_ms).await?;
        if upload.all_received() && upload.media.is_none() {
            self.complete(&mut upload, None, None, now_ms).await?;
        }
        Ok(upload)
    }

    async fn load_upload(
        &self,
        owner: DeviceClaims,
        id: &str,
        now_ms: i64,
    ) -> Result<Upload, MediaError> {
        if !is_id(id) {
            return Err(MediaError::NotFound);
        }
        let upload: Upload = self.read_json(&self.upload_key(id)).await?;
        if upload.user != owner.user || upload.expires_ms <= now_ms {
            return Err(MediaError::NotFound);
        }
        Ok(upload)
    }

    fn lock(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>, MediaError> {
        if !is_id(id) {
            return Err(MediaError::NotFound);
        }
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Locks nobody holds or waits for are dropped as the map grows.
        if locks.len() > 1024 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Ok(locks.entry(id.to_owned()).or_default().clone())
    }

    /// Appends `body` to `owner`'s upload `id` (a tus `PATCH`).
    /// Without a checksum, the bytes that arrived are kept even if the body
    /// is cut short; with one, all of it or nothing.
    pub async fn append<S, E>(
        &self,
        owner: DeviceClaims,
        id: &str,
        patch: Patch,
        body: S,
        now_ms: i64,
    ) -> Result<Upload, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let Patch {
            offset,
            length: declared,
            checksum,
        } = patch;
        let receiving = self
            .inner
            .quotas
            .receiving(owner.user, &self.inner.metrics.in_progress)?;
        let lock = self.lock(id)?;
        let _held = lock.lock().await;
        let mut upload = self.load_upload(owner, id, now_ms).await?;
        if upload.offset() != offset {
            return Err(MediaError::OffsetMismatch {
                sent: offset,
                offset: upload.offset(),
            });
        }
        // A body that says it is too long is refused before it is read.
        if declared.is_some_and(|n| offset.saturating_add(n) > upload.length) {
            return Err(MediaError::PastLength {
                length: upload.length,
            });
        }
        if upload.all_received() {
            if upload.media.is_none() {
                self.complete(&mut upload, None, None, now_ms).await?;
            }
            return Ok(upload);
        }
        let result = self.receive(&mut upload, checksum, body, now_ms).await;
        drop(receiving);
        result.map(|()| upload)
    }

    async fn receive<S, E>(
        &self,
        upload: &mut Upload,
        checksum: Option<Checksum>,
        mut body: S,
        now_ms: i64,
    ) -> Result<(), MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let storage = &self.inner.storage;
        let start = upload.offset();
        let part_size = usize::try_from(upload.part_size).unwrap_or(PART_SIZE);
        let mut buffer = BytesMut::new();
        if let Some(tail) = &upload.tail_key {
            let bytes = storage
                .objects
                .get(&storage.key(tail))
                .await?
                .bytes()
                .await?;
            if bytes.len() as u64 != upload.tail_len {
                return Err(MediaError::Internal(format!(
                    "upload {}: tail {tail} has {} bytes, not {}",
                    upload.id,
                    bytes.len(),
                    upload.tail_len
                )));
            }
            buffer.extend_from_slice(&bytes);
        }
        let mut running = self.take_digest(&upload.id, start);
        let mut check = checksum.as_ref().map(|c| digest::Context::new(c.algorithm));
        let data_key = self.media_key(&upload.media_id);
        let mut multipart = upload.multipart.clone();
        let mut new_parts: Vec<String> = Vec::new();
        let mut received = 0u64;
        let mut cut_short = false;
        loop {
            let chunk = match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    tracing::debug!(upload = %upload.id, %error, "media: upload body cut short");
                    cut_short = true;
                    break;
                }
                Err(_) => {
                    tracing::debug!(upload = %upload.id, "media: upload body idle too long");
                    cut_short = true;
                    break;
                }
            };
            if start + received + chunk.len() as u64 > upload.length {
                self.keep_multipart(upload, multipart).await?;
                return Err(MediaError::PastLength {
                    length: upload.length,
                });
            }
            if let Some(running) = &mut running {
                running.update(&chunk);
            }
            if let Some(check) = &mut check {
                check.update(&chunk);
            }
            received += chunk.len() as u64;
            self.inner.metrics.received_bytes.inc_by(chunk.len() as u64);
            // The buffer never holds more than a part: it fills to exactly
            // a part, which goes to the store, and its memory is reused for
            // the next one once the store is done with it.
            let mut rest = chunk;
            while !rest.is_empty() {
                if buffer.capacity() < part_size {
                    buffer.reserve(part_size - buffer.len());
                }
                let take = (part_size - buffer.len()).min(rest.len());
                buffer.extend_from_slice(&rest.split_to(take));
                if buffer.len() < part_size {
                    continue;
                }
                let part = buffer.split().freeze();
                let id = match &multipart {
                    Some(id) => id.clone(),
                    None => {
                        let id = storage.parts.create_multipart(&data_key).await?;
                        multipart = Some(id.clone());
                        id
                    }
                };
                let index = upload.parts.len() + new_parts.len();
                let stored = storage
                    .parts
                    .put_part(&data_key, &id, index, PutPayload::from(part))
                    .await;
                match stored {
                    Ok(part) => new_parts.push(part.content_id),
                    Err(error) => {
                        self.keep_multipart(upload, multipart).await?;
                        return Err(error.into());
                    }
                }
            }
        }
        if let (Some(checksum), Some(check)) = (&checksum, check)
            && (cut_short || check.finish().as_ref() != checksum.expected.as_slice())
        {
            self.keep_multipart(upload, multipart).await?;
            return Err(MediaError::ChecksumMismatch);
        }
        // Commit: the new parts and tail, then the manifest that counts them.
        let old_tail = upload.tail_key.take();
        upload.multipart = multipart;
        upload.parts.extend(new_parts);
        upload.tail_len = buffer.len() as u64;
        let tail = buffer.freeze();
        let whole_here = start == 0 && upload.parts.is_empty();
        if upload.all_received() && whole_here {
            // Nothing of it was stored before this request: if it fails,
            // the client starts again from 0, so no tail is needed.
            self.complete(upload, Some(tail), running, now_ms).await?;
        } else {
            if !tail.is_empty() {
                let key = format!("uploads/{}/tail-{}", upload.id, upload.offset());
                storage
                    .objects
                    .put(&storage.key(&key), PutPayload::from(tail.clone()))
                    .await?;
                upload.tail_key = Some(key);
            }
            self.write_json(&self.upload_key(&upload.id), upload)
                .await?;
            if upload.all_received() {
                self.complete(upload, Some(tail), running, now_ms).await?;
            } else if let Some(running) = running {
                self.keep_digest(&upload.id, upload.offset(), running);
            }
        }
        if let Some(old) = old_tail
            && upload.tail_key.as_ref() != Some(&old)
        {
            self.delete_quietly(&storage.key(&old)).await;
        }
        Ok(())
    }

    /// After a refused `PATCH`: a multipart upload it started is written
    /// down, so that it is completed or aborted later, never leaked.
    async fn keep_multipart(
        &self,
        upload: &mut Upload,
        multipart: Option<String>,
    ) -> Result<(), MediaError> {
        if upload.multipart.is_none() && multipart.is_some() {
            upload.multipart = multipart;
            self.write_json(&self.upload_key(&upload.id), upload)
                .await?;
        }
        Ok(())
    }

    fn take_digest(&self, id: &str, offset: u64) -> Option<digest::Context> {
        if offset == 0 {
            return Some(digest::Context::new(&digest::SHA256));
        }
        let mut digests = self
            .inner
            .digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match digests.remove(id) {
            Some((at, context)) if at == offset => Some(context),
            _ => None,
        }
    }

    fn keep_digest(&self, id: &str, offset: u64, context: digest::Context) {
        let mut digests = self
            .inner
            .digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if digests.len() < MAX_RUNNING_DIGESTS {
            digests.insert(id.to_owned(), (offset, context));
        }
    }

    /// Turns an upload whose bytes all arrived into media: the object
    /// (one put, or the multipart upload completed with its last part),
    /// its digest, its manifest, then the upload's manifest. Safe to run
    /// again after a crash at any step.
    async fn complete(
        &self,
        upload: &mut Upload,
        tail: Option<Bytes>,
        running: Option<digest::Context>,
        now_ms: i64,
    ) -> Result<(), MediaError> {
        let storage = &self.inner.storage;
        let data_key = self.media_key(&upload.media_id);
        let tail = match (tail, &upload.tail_key) {
            (Some(tail), _) => tail,
            (None, Some(key)) => {
                storage
                    .objects
                    .get(&storage.key(key))
                    .await?
                    .bytes()
                    .await?
            }
            (None, None) => Bytes::new(),
        };
        match &upload.multipart {
            None => {
                storage
                    .objects
                    .put(&data_key, PutPayload::from(tail))
                    .await?;
            }
            Some(id) => {
                let mut parts: Vec<PartId> = upload
                    .parts
                    .iter()
                    .map(|content_id| PartId {
                        content_id: content_id.clone(),
                    })
                    .collect();
                let finished = async {
                    if !tail.is_empty() {
                        parts.push(
                            storage
                                .parts
                                .put_part(&data_key, id, parts.len(), PutPayload::from(tail))
                                .await?,
                        );
                    }
                    storage.parts.complete_multipart(&data_key, id, parts).await
                }
                .await;
                if let Err(error) = finished {
                    // Completed already, by a run cut short after it?
                    match storage.objects.head(&data_key).await {
                        Ok(meta) if meta.size == upload.length => {}
                        _ => return Err(error.into()),
                    }
                }
            }
        }
        let sha256 = match running {
            Some(running) => hex(running.finish().as_ref()),
            None => self.digest_of(&data_key).await?,
        };
        let media = MediaRecord {
            id: upload.media_id.clone(),
            user: upload.user,
            size: upload.length,
            sha256,
            content_type: upload.content_type.clone(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(millis(self.inner.config.media_ttl)),
        };
        self.write_json(&self.media_manifest_key(&media.id), &media)
            .await?;
        let old_tail = upload.tail_key.take();
        upload.tail_len = 0;
        upload.parts.clear();
        upload.multipart = None;
        upload.media = Some(media);
        self.write_json(&self.upload_key(&upload.id), upload)
            .await?;
        if let Some(old) = old_tail {
            self.delete_quietly(&storage.key(&old)).await;
        }
        self.inner.metrics.uploads_completed.inc();
        Ok(())
    }

    /// SHA-256 of a stored object, read back (an upload resumed on a
    /// process that did not see its beginning).
    async fn digest_of(&self, key: &Path) -> Result<String, MediaError> {
        let mut stream = self.inner.storage.objects.get(key).await?.into_stream();
        let mut context = digest::Context::new(&digest::SHA256);
        while let Some(chunk) = stream.next().await {
            context.update(&chunk?);
        }
        Ok(hex(context.finish().as_ref()))
    }

    /// Abandons `owner`'s upload `id` (tus termination).
    pub async fn terminate(
        &self,
        owner: DeviceClaims,
        id: &str,
        now_ms: i64,
    ) -> Result<(), MediaError> {
        let lock = self.lock(id)?;
        let _held = lock.lock().await;
        let upload = self.load_upload(owner, id, now_ms).await?;
        self.remove_upload(&upload).await
    }

    async fn remove_upload(&self, upload: &Upload) -> Result<(), MediaError> {
        let storage = &self.inner.storage;
        if let Some(id) = &upload.multipart
            && upload.media.is_none()
        {
            match storage
                .parts
                .abort_multipart(&self.media_key(&upload.media_id), id)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(tail) = &upload.tail_key {
            self.delete_quietly(&storage.key(tail)).await;
        }
        self.delete_quietly(&self.upload_key(&upload.id)).await;
        self.inner
            .digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&upload.id);
        Ok(())
    }

    /// Stores `body` as media in one request: an upload of `length` bytes
    /// created and appended to at once.
    pub async fn put<S, E>(
        &self,
        owner: DeviceClaims,
        length: u64,
        content_type: String,
        body: S,
        now_ms: i64,
    ) -> Result<MediaRecord, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let upload = self
            .create(owner, length, content_type, None, now_ms)
            .await?;
        let result = self
            .append(
                owner,
                &upload.id,
                Patch {
                    offset: 0,
                    length: Some(length),
                    checksum: None,
                },
                body,
                now_ms,
            )
            .await;
        let done = match result {
            Ok(upload) => {
                let offset = upload.offset();
                upload.media.ok_or_else(|| {
                    MediaError::InvalidUpload(format!(
                        "the body ended at byte {offset} of its Content-Length {length}"
                    ))
                })
            }
            Err(error) => Err(error),
        };
        match done {
            Ok(media) => {
                // Nobody resumes a one-request upload.
                self.delete_quietly(&self.upload_key(&upload.id)).await;
                Ok(media)
            }
            Err(error) => {
                // One request, one chance: nothing is left behind.
                // As stored: a refused PATCH may have started a multipart upload.
                let current = self
                    .read_json::<Upload>(&self.upload_key(&upload.id))
                    .await
                    .unwrap_or(upload);
                if let Err(error) = self.remove_upload(&current).await {
                    tracing::debug!(%error, "media: a failed upload is left for the sweeper");
                }
                Err(error)
            }
        }
    }

    /// The manifest of media `id`, unless unknown or expired.
    pub async fn media(&self, id: &str, now_ms: i64) -> Result<MediaRecord, MediaError> {
        if !is_id(id) {
            return Err(MediaError::NotFound);
        }
        let media: MediaRecord = self.read_json(&self.media_manifest_key(id)).await?;
        if media.expires_ms <= now_ms {
            return Err(MediaError::NotFound);
        }
        Ok(media)
    }

    /// The bytes of `media` in `range` (end exclusive), streamed.
    pub async fn read(
        &self,
        media: &MediaRecord,
        range: std::ops::Range<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, object_store::Error>> + Send + use<>, MediaError>
    {
        let options = GetOptions {
            range: (range != (0..media.size) && !range.is_empty())
                .then_some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let result = self
            .inner
            .storage
            .objects
            .get_opts(&self.media_key(&media.id), options)
            .await?;
        let sent = self.inner.metrics.sent_bytes.clone();
        Ok(result.into_stream().inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                sent.inc_by(chunk.len() as u64);
            }
        }))
    }

    /// Deletes media `id`, if `owner`'s user uploaded it.
    pub async fn delete(
        &self,
        owner: DeviceClaims,
        id: &str,
        now_ms: i64,
    ) -> Result<(), MediaError> {
        let media = self.media(id, now_ms).await?;
        if media.user != owner.user {
            return Err(MediaError::NotFound);
        }
        self.remove_media(&media.id).await
    }

    async fn remove_media(&self, id: &str) -> Result<(), MediaError> {
        // The manifest first: without it the media is gone for readers.
        match self
            .inner
            .storage
            .objects
            .delete(&self.media_manifest_key(id))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.delete_quietly(&self.media_key(id)).await;
        self.inner.metrics.deleted.inc();
        Ok(())
    }

    /// Removes the media and uploads that expired before `now_ms`.
    pub async fn sweep(&self, now_ms: i64) -> Result<Swept, MediaError> {
        let storage = &self.inner.storage;
        let mut swept = Swept::default();
        let mut manifests = storage.objects.list(Some(&storage.key("media")));
        let mut expired = Vec::new();
        while let Some(meta) = manifests.next().await {
            let meta = meta?;
            let relative = storage.relative(&meta.location);
            let Some(id) = relative
                .strip_prefix("media/")
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            match self.read_json::<MediaRecord>(&meta.location).await {
                Ok(media) if media.expires_ms <= now_ms => expired.push(id.to_owned()),
                Ok(_) => {}
                Err(MediaError::NotFound) => {}
                Err(error) => tracing::warn!(%error, "media sweep: unreadable manifest"),
            }
        }
        for id in expired {
            self.remove_media(&id).await?;
            swept.media += 1;
        }
        let mut uploads = storage.objects.list(Some(&storage.key("uploads")));
        let mut expired = Vec::new();
        while let Some(meta) = uploads.next().await {
            let meta = meta?;
            let relative = storage.relative(&meta.location);
            let Some(name) = relative.strip_prefix("uploads/") else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".json") {
                match self.read_json::<Upload>(&meta.location).await {
                    Ok(upload) if upload.expires_ms <= now_ms => expired.push(upload),
                    Ok(_) => {}
                    Err(MediaError::NotFound) => {}
                    Err(error) => {
                        tracing::warn!(upload = id, %error, "media sweep: unreadable manifest");
                    }
                }
            }
        }
        for upload in expired {
            let lock = self.lock(&upload.id)?;
            let _held = lock.lock().await;
            self.remove_upload(&upload).await?;
            // Tails a crash left behind.
            let mut left = storage
                .objects
                .list(Some(&storage.key(&format!("uploads/{}", upload.id))));
            while let Some(meta) = left.next().await {
                self.delete_quietly(&meta?.location).await;
            }
            swept.uploads += 1;
        }
        self.inner.metrics.swept_media.inc_by(swept.media as u64);
        self.inner
            .metrics
            .swept_uploads
            .inc_by(swept.uploads as u64);
        Ok(swept)
    }
}
