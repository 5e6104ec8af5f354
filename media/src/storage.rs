//! Where media bytes live: one [`Storage`] over `object_store`'s two
//! interfaces, with two real implementations.
//!
//! - **Local** (the default): a directory on the server's disk (`object_store`'s
//!   `LocalFileSystem`), and [`LocalParts`], this crate's multipart uploads
//!   over files, since `LocalFileSystem` has no `MultipartStore`.
//! - **S3**: `object_store`'s `AmazonS3`, which is both.
//!
//! The service above uses only [`Storage`]: objects (get, put, delete,
//! list) and multipart uploads that outlive the process (create, put part,
//! complete, abort: S3's multipart API). The same conformance tests run on
//! both (tests/conformance.rs).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartId, ObjectStore, PutPayload, PutResult, RetryConfig,
};
use tokio::io::AsyncWriteExt;

/// The S3 bucket of the media, and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Keys start with this (`media/...` and `uploads/...` below it).
    pub prefix: Option<String>,
    /// Else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
    pub region: Option<String>,
    /// An S3-compatible endpoint instead of AWS's (path-style requests).
    /// Else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
    pub endpoint_url: Option<String>,
}

/// The media storage: objects and multipart uploads, below a prefix.
#[derive(Clone)]
pub struct Storage {
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) parts: Arc<dyn MultipartStore>,
    prefix: Option<Path>,
    kind: &'static str,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the media directory {0}: {1}")]
    Directory(PathBuf, std::io::Error),
    #[error("{0}")]
    Store(#[from] object_store::Error),
}

impl Storage {
    /// Media in `dir` (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir.join(LOCAL_PARTS))
            .map_err(|e| StorageError::Directory(dir.to_owned(), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| StorageError::Directory(dir.to_owned(), e))?;
        let files = Arc::new(LocalFileSystem::new_with_prefix(&dir)?.with_automatic_cleanup(true));
        Ok(Self {
            parts: Arc::new(LocalParts {
                dir: dir.clone(),
                files: files.clone(),
            }),
            objects: files,
            prefix: None,
            kind: "local",
        })
    }

    /// Media in an S3 bucket. Credentials come from the standard AWS
    /// configuration (environment, web identity, container or instance
    /// role), as `object_store` reads it.
    pub fn s3(settings: &S3Settings) -> Result<Self, StorageError> {
        // object_store talks HTTPS through reqwest, built here without a
        // crypto provider of its own: Parley's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            // A storage that is down answers within seconds, not minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            );
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &settings.endpoint_url {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = Arc::new(builder.build()?);
        Ok(Self {
            objects: s3.clone(),
            parts: s3,
            prefix: settings
                .prefix
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.trim_matches('/').is_empty())
                .map(Path::from),
            kind: "s3",
        })
    }

    /// Every key below the prefix (relative to it), sorted: for operators'
    /// checks and the tests. On S3, the parts of multipart uploads in
    /// progress are not objects and are not listed; on the local disk they
    /// are files under `parts/`, and are.
    pub async fn keys(&self) -> Result<Vec<String>, StorageError> {
        use futures_util::TryStreamExt as _;
        let mut keys: Vec<String> = self
            .objects
            .list(self.prefix.as_ref())
            .map_ok(|meta| self.relative(&meta.location).to_owned())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// `local` or `s3`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The key of `relative` (e.g. `media/<id>`) below the prefix.
    pub(crate) fn key(&self, relative: &str) -> Path {
        match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{relative}")),
            None => Path::from(relative),
        }
    }

    /// `key` without the prefix.
    pub(crate) fn relative<'a>(&self, key: &'a Path) -> &'a str {
        let key = key.as_ref();
        match &self.prefix {
            Some(prefix) => key
                .strip_prefix(prefix.as_ref())
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(key),
            None => key,
        }
    }
}

/// Where [`LocalParts`] keeps the parts of uploads in progress, inside the
/// media directory (beside `media/` and `uploads/`, never listed by them).
const LOCAL_PARTS: &str = "parts";

/// Multipart uploads over files: each part a file of its own under
/// `<dir>/parts/<upload>/`, put in place by a rename so a part is whole
/// or absent; completing concatenates them into the object's file.
#[derive(Debug)]
pub struct LocalParts {
    dir: PathBuf,
    files: Arc<LocalFileSystem>,
}

impl LocalParts {
    fn upload_dir(&self, id: &MultipartId) -> object_store::Result<PathBuf> {
        // Ids are ours (hex), but the manifest they come from is on disk.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(object_store::Error::NotFound {
                path: id.clone(),
                source: "not a multipart upload id".into(),
            });
        }
        Ok(self.dir.join(LOCAL_PARTS).join(id))
    }
}

fn io_error(path: &FsPath, source: std::io::Error) -> object_store::Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(source),
        }
    } else {
        object_store::Error::Generic {
            store: "LocalParts",
            source: Box::new(source),
        }
    }
}

#[async_trait]
impl MultipartStore for LocalParts {
    async fn create_multipart(&self, _path: &Path) -> object_store::Result<MultipartId> {
        let id = crate::random_id();
        let dir = self.upload_dir(&id)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(&dir, e))?;
        Ok(id)
    }

    async fn put_part(
        &self,
        _path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let dir = self.upload_dir(id)?;
        let part = dir.join(format!("{part_idx:06}"));
        let staging = dir.join(format!("{part_idx:06}.tmp"));
        let mut file = tokio::fs::File::create(&staging)
            .await
            .map_err(|e| io_error(&staging, e))?;
        for chunk in &data {
            file.write_all(chunk)
                .await
                .map_err(|e| io_error(&staging, e))?;
        }
        file.sync_data().await.map_err(|e| io_error(&staging, e))?;
        drop(file);
        tokio::fs::rename(&staging, &part)
            .await
            .map_err(|e| io_error(&part, e))?;
        Ok(PartId {
            content_id: format!("{part_idx:06}"),
        })
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        let dir = self.upload_dir(id)?;
        let target = self.files.path_to_filesystem(path)?;
        let assembled = dir.join("assembled.tmp");
        let mut out = tokio::fs::File::create(&assembled)
            .await
            .map_err(|e| io_error(&assembled, e))?;
        for part in &parts {
            if !part.content_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(io_error(
                    &dir,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "not a part id"),
                ));
            }
            let file = dir.join(&part.content_id);
            let mut input = tokio::fs::File::open(&file)
                .await
                .map_err(|e| io_error(&file, e))?;
            tokio::io::copy(&mut input, &mut out)
                .await
                .map_err(|e| io_error(&assembled, e))?;
        }
        out.sync_data().await.map_err(|e| io_error(&assembled, e))?;
        drop(out);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_error(parent, e))?;
        }
        tokio::fs::rename(&assembled, &target)
            .await
            .map_err(|e| io_error(&target, e))?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| io_error(&dir, e))?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort_multipart(&self, _path: &Path, id: &MultipartId) -> object_store::Result<()> {
        let dir = self.upload_dir(id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&dir, e)),
        }
    }
}
