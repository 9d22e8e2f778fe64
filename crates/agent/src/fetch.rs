//! Downloading a package archive by its SHA-256, resuming after a cut with `Range: bytes=N-`.
//!
//! Bytes go to `archive.part`, which survives a kill; the next attempt asks for the rest. The
//! finished file is hashed and becomes `archive.pcpkg` only when it matches the work item's hash.

use futures_util::StreamExt;
use patchcast_core::faults::Broken;
use patchcast_core::model::types::Sha256;
use patchcast_proto::client::{CallError, Client};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A body that sends nothing for this long has stalled (E09 once the retries are spent).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// The idle limit: `PATCHCAST_TRANSFER_IDLE_SECS` when set (tests shorten it), else 60 s.
fn idle_limit() -> Duration {
    std::env::var("PATCHCAST_TRANSFER_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(IDLE_LIMIT, Duration::from_secs)
}
/// Cuts retried at once (resuming) before the delivery waits for the next loop iteration.
const QUICK_RETRIES: u32 = 5;

#[derive(Debug)]
pub enum Fetched {
    /// `archive.pcpkg`, hash verified.
    Complete(PathBuf),
    /// The downloaded bytes do not hash to the expected value (the file was deleted).
    Mismatch { got: Sha256 },
    /// The server refused the download for good (404, 403, …).
    Refused(String),
    /// Every custom update source failed and the fallback switch says not the server (E27);
    /// one line per source tried.
    Exhausted(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Call(#[from] CallError),
    /// The body broke off: how (reset, cut, stalled) decides the code once retries are spent.
    #[error("download {}: {detail}", match how { Broken::Reset => "reset", Broken::Cut => "cut", Broken::Stalled => "stalled" })]
    Broken { how: Broken, detail: String },
    /// A source other than the server could not be connected to (an SMB server).
    #[error("{0}")]
    Unreachable(String),
    /// The staging directory could not be created.
    #[error("creating {path}: {err}")]
    Staging { path: String, err: std::io::Error },
    #[error("writing {path}: {err}")]
    Disk { path: String, err: std::io::Error },
}

impl FetchError {
    /// A transfer that ended early for a reason other than the socket's (a short or overlong
    /// body, an unexpected status or range).
    pub fn cut(detail: impl Into<String>) -> FetchError {
        FetchError::Broken {
            how: Broken::Cut,
            detail: detail.into(),
        }
    }

    /// The code this failure would be reported with on its own (named beside each source an
    /// E27 lists).
    pub fn code(&self) -> Option<patchcast_core::errors::Code> {
        match self {
            FetchError::Call(c) => c.code(),
            FetchError::Unreachable(_) => Some(patchcast_core::faults::Fault::Unreachable.code()),
            FetchError::Broken { how, .. } => Some(how.fault().code()),
            FetchError::Staging { err, .. } => {
                Some(patchcast_core::faults::staging_fault(err.kind()).code())
            }
            FetchError::Disk { err, .. } => {
                Some(patchcast_core::faults::write_fault(err.kind()).code())
            }
        }
    }

    /// A failure of this machine's disk rather than of the transfer: no other source helps.
    pub fn is_local(&self) -> bool {
        matches!(self, FetchError::Staging { .. } | FetchError::Disk { .. })
    }

    /// A body broken by `e`: the first I/O error in its chain says reset or cut.
    fn body(e: &reqwest::Error) -> FetchError {
        let mut how = if e.is_timeout() {
            Broken::Stalled
        } else {
            Broken::Cut
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                how = Broken::of_io(io.kind());
                break;
            }
            source = s.source();
        }
        FetchError::Broken {
            how,
            detail: chain(e),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn staging(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |err| FetchError::Staging {
        path: path.display().to_string(),
        err,
    }
}

pub fn archive_path(work_dir: &Path) -> PathBuf {
    work_dir.join("archive.pcpkg")
}

pub(crate) fn disk(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |err| FetchError::Disk {
        path: path.display().to_string(),
        err,
    }
}

/// The partial download; any source appends to it (content-addressed, so bytes at an offset
/// are the same whoever sends them; the final hash catches a source that lied).
pub fn part_path(work_dir: &Path) -> PathBuf {
    work_dir.join("archive.part")
}

/// Fetches the archive from the server into `work_dir`, resuming what an earlier attempt left.
pub async fn fetch(
    client: &Client,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
) -> Result<Fetched, FetchError> {
    let path = format!("{}/{}", patchcast_proto::protocol::CONTENT, sha256.hex());
    fetch_http(client, &path, sha256, size, work_dir, QUICK_RETRIES).await
}

/// Fetches `path` on `client` (the server, a relay, an HTTPS source) with range resume.
pub async fn fetch_http(
    client: &Client,
    path: &str,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
    quick_retries: u32,
) -> Result<Fetched, FetchError> {
    let done = archive_path(work_dir);
    if done.exists() {
        return Ok(Fetched::Complete(done));
    }
    let part = part_path(work_dir);
    std::fs::create_dir_all(work_dir).map_err(staging(work_dir))?;
    let mut failures = 0;
    loop {
        match attempt(client, path, size, &part).await {
            Ok(Some(refused)) => return Ok(Fetched::Refused(refused)),
            Ok(None) => break,
            Err(e) if e.is_local() => return Err(e),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "download interrupted; resuming");
                if failures >= quick_retries {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
    finish(sha256, work_dir)
}

/// Hashes the finished `archive.part`: renamed to `archive.pcpkg` when it matches, deleted
/// when it does not. Every source ends here: none bypasses the hash.
pub fn finish(sha256: &Sha256, work_dir: &Path) -> Result<Fetched, FetchError> {
    let (part, done) = (part_path(work_dir), archive_path(work_dir));
    let (got, _) = patchcast_pack::hash::sha256_file(&part).map_err(disk(&part))?;
    if &got != sha256 {
        let _ = std::fs::remove_file(&part);
        return Ok(Fetched::Mismatch { got });
    }
    std::fs::rename(&part, &done).map_err(disk(&done))?;
    Ok(Fetched::Complete(done))
}

/// One request: `Ok(None)` when the file is complete, `Ok(Some(why))` when refused for good.
async fn attempt(
    client: &Client,
    path: &str,
    size: u64,
    part: &Path,
) -> Result<Option<String>, FetchError> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    if have == size && size > 0 {
        return Ok(None);
    }
    let mut rb = client.request(reqwest::Method::GET, path);
    if have > 0 {
        rb = rb.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = rb.send().await.map_err(|e| client.unreachable(path, &e))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                return Err(FetchError::cut(format!(
                    "asked for bytes {have}- but the server sent `{range}`"
                )));
            }
            true
        }
        200 => false,
        416 => {
            // The file was complete already, or is larger than expected: start over.
            let _ = std::fs::remove_file(part);
            return Err(FetchError::cut("range not satisfiable; restarting"));
        }
        s if (400..500).contains(&s) && s != 408 && s != 429 => {
            let body = resp.text().await.unwrap_or_default();
            return Ok(Some(format!(
                "HTTP {s}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        s => return Err(FetchError::cut(format!("HTTP {s}"))),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(disk(part))?;
    let mut stream = resp.bytes_stream();
    let mut written = if append { have } else { 0 };
    let idle = idle_limit();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                f.sync_data().map_err(disk(part))?;
                return Err(FetchError::Broken {
                    how: Broken::Stalled,
                    detail: format!(
                        "no data for {} s after {written} of {size} bytes",
                        idle.as_secs()
                    ),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                f.sync_data().map_err(disk(part))?;
                return Err(FetchError::body(&e));
            }
            Ok(Some(Ok(c))) => c,
        };
        written += chunk.len() as u64;
        if written > size {
            let _ = std::fs::remove_file(part);
            return Err(FetchError::cut(format!(
                "the server sent more than the expected {size} bytes"
            )));
        }
        f.write_all(&chunk).map_err(disk(part))?;
    }
    f.sync_data().map_err(disk(part))?;
    if written < size {
        return Err(FetchError::cut(format!(
            "body ended at {written} of {size} bytes"
        )));
    }
    Ok(None)
}
