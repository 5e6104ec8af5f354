//! `parley-bench media`: one large file up through tus (one PATCH, or
//! chunks of a given size) and down again, over TLS on loopback: MB/s
//! each way, the server's CPU per MiB, and its peak resident memory
//! during the upload (VmHWM, reset before each upload). The floor is a
//! bare copy of the same file on the same disk, timed the same way.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::{Common, check};
use crate::procfs;
use crate::report::{Figure, RunResult};

#[derive(Args, Clone, Debug, Serialize)]
pub struct MediaArgs {
    #[command(flatten)]
    pub common: Common,
    /// The HTTPS API; loopback only.
    #[arg(long, default_value = parley_client::DEFAULT_HTTP)]
    pub http: String,
    /// The file's size, MiB (the server's --media-max-mib must allow it).
    #[arg(long, default_value_t = 200)]
    pub size_mib: u64,
    /// Bytes per PATCH, MiB; 0 sends the whole file in one PATCH.
    #[arg(long, default_value_t = 0)]
    pub chunk_mib: u64,
    /// Uploads and downloads measured (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

const MIB: u64 = 1024 * 1024;
/// Bytes per read of the file while it is sent.
const READ: usize = 256 * 1024;

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A file of `size` bytes of no pattern (so that nothing on the way can
/// compress it), removed when the run ends.
fn ensure_file(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..size.div_ceil(MIB) {
        for byte in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            byte.copy_from_slice(&x.to_le_bytes()[..byte.len()]);
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    drop(out);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)?;
    Ok(())
}

/// `len` bytes of `path` from `offset`, as a request body read as sent.
async fn file_body(path: &Path, offset: u64, len: u64) -> anyhow::Result<reqwest::Body> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let stream = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; READ.min(usize::try_from(left).unwrap_or(READ))];
        match file.read_exact(&mut buf).await {
            Ok(_) => Some((
                Ok::<_, std::io::Error>(buf),
                (file, left - READ.min(left as usize) as u64),
            )),
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

struct Run {
    upload_secs: f64,
    download_secs: f64,
    peak_rss: Option<u64>,
    rss_before: Option<u64>,
    upload_cpu: Option<f64>,
}

pub async fn media(a: MediaArgs) -> anyhow::Result<RunResult> {
    let mut p = Vec::new();
    if !(1..=1024).contains(&a.size_mib) {
        p.push("--size-mib must be 1..=1024".into());
    }
    if a.chunk_mib > a.size_mib {
        p.push("--chunk-mib must be at most --size-mib (0: one PATCH)".into());
    }
    if !(1..=20).contains(&a.repeats) {
        p.push("--repeats must be 1..=20".into());
    }
    match reqwest::Url::parse(&a.http) {
        Ok(url) if matches!(url.host_str(), Some("localhost" | "127.0.0.1")) => {}
        _ => p.push("--http must be https://localhost:PORT or https://127.0.0.1:PORT".into()),
    }
    check(&a.common, p)?;
    let c = &a.common;
    let creds = c.creds(1)?;
    let tokens = creds.tokens.clone().context("a credentials file")?;
    let token = crate::users::load(&tokens, 0..1)?
        .pop()
        .context("no user in the credentials file")?
        .token;
    let tls = parley_client::tls_config_from_file(&creds.ca)?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(std::sync::Arc::unwrap_or_clone(tls))
        .build()?;
    let base = a.http.trim_end_matches('/').to_owned();
    std::fs::create_dir_all(&c.out)?;
    let size = a.size_mib * MIB;
    let file = c.out.join(format!("media-{}mib.bin", a.size_mib));
    ensure_file(&file, size)?;

    // The floor: the same bytes copied on the same disk.
    let copy: PathBuf = c.out.join("media-copy.bin");
    let mut floor = Vec::new();
    for _ in 0..a.repeats {
        let started = Instant::now();
        std::fs::copy(&file, &copy)?;
        std::fs::File::open(&copy)?.sync_all()?;
        floor.push(mb_per_s(size, started.elapsed().as_secs_f64()));
        std::fs::remove_file(&copy)?;
    }

    let mut runs = Vec::new();
    for _ in 0..a.repeats {
        runs.push(one_run(&a, &http, &base, &token, &file, size).await?);
    }
    std::fs::remove_file(&file)?;
    let upload: Vec<f64> = runs.iter().map(|r| mb_per_s(size, r.upload_secs)).collect();
    let download: Vec<f64> = runs
        .iter()
        .map(|r| mb_per_s(size, r.download_secs))
        .collect();
    let mut figures = vec![
        Figure::new("upload_mb_s", median(upload.clone()), "MB/s"),
        Figure::new("download_mb_s", median(download.clone()), "MB/s"),
        Figure::new("floor_copy_mb_s", median(floor.clone()), "MB/s"),
    ];
    let peaks: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.peak_rss.map(|b| b as f64 / MIB as f64))
        .collect();
    if !peaks.is_empty() {
        let growth: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some((r.peak_rss? as f64 - r.rss_before? as f64) / MIB as f64))
            .collect();
        figures.push(Figure::new(
            "upload_peak_rss_mib",
            peaks.iter().copied().fold(0.0, f64::max),
            "MiB",
        ));
        figures.push(Figure::new(
            "upload_rss_growth_mib",
            growth.iter().copied().fold(0.0, f64::max),
            "MiB",
        ));
    }
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.upload_cpu.map(|s| s * 1000.0 / a.size_mib as f64))
        .collect();
    if !cpu.is_empty() {
        figures.push(Figure::new("upload_cpu_ms_per_mib", median(cpu), "ms"));
    }
    let mut result = RunResult::new("media", &a.http, serde_json::to_value(&a)?);
    result.figures = figures;
    result.extra = serde_json::json!({
        "upload_mb_s": upload,
        "download_mb_s": download,
        "floor_copy_mb_s": floor,
        "upload_peak_rss_mib": peaks,
    });
    c.finish(result)
}

async fn one_run(
    a: &MediaArgs,
    http: &reqwest::Client,
    base: &str,
    token: &str,
    file: &Path,
    size: u64,
) -> anyhow::Result<Run> {
    let pid = a.common.server_pid;
    let rss_before = a.common.rss();
    if let Some(pid) = pid
        && let Err(e) = procfs::reset_peak_rss(pid)
    {
        eprintln!("cannot reset the server's peak memory ({e:#}); the peak is since its start");
    }
    let cpu_before = a.common.cpu_secs();
    let started = Instant::now();
    let created = http
        .post(format!("{base}/v1/media/uploads"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", size.to_string())
        .send()
        .await?;
    if created.status() != reqwest::StatusCode::CREATED {
        bail!(
            "creating the upload: {} {}",
            created.status(),
            created.text().await.unwrap_or_default()
        );
    }
    let location = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no Location")?
        .to_owned();
    let chunk = if a.chunk_mib == 0 {
        size
    } else {
        a.chunk_mib * MIB
    };
    let mut offset = 0;
    while offset < size {
        let len = chunk.min(size - offset);
        let answer = http
            .patch(format!("{base}{location}"))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset.to_string())
            .header("content-length", len.to_string())
            .body(file_body(file, offset, len).await?)
            .send()
            .await?;
        if answer.status() != reqwest::StatusCode::NO_CONTENT {
            bail!(
                "PATCH at {offset}: {} {}",
                answer.status(),
                answer.text().await.unwrap_or_default()
            );
        }
        offset += len;
    }
    let media: serde_json::Value = http
        .get(format!("{base}{location}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let upload_secs = started.elapsed().as_secs_f64();
    let upload_cpu = match (cpu_before, a.common.cpu_secs()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let peak_rss = pid.and_then(|pid| procfs::peak_rss_bytes(pid).ok());
    let url = media["url"]
        .as_str()
        .context("no url in the upload's answer")?;

    let started = Instant::now();
    let response = http
        .get(format!("{base}{url}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        got += chunk?.len() as u64;
    }
    let download_secs = started.elapsed().as_secs_f64();
    if got != size {
        bail!("downloaded {got} bytes of {size}");
    }
    // Not kept: the next run's upload starts from the same store.
    http.delete(format!("{base}{url}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    Ok(Run {
        upload_secs,
        download_secs,
        peak_rss,
        rss_before,
        upload_cpu,
    })
}
