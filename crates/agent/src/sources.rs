//! Fetching a work item's archive from its custom update sources, in order, then (when the
//! category's switch allows) from the server; `core::sources::after_failure` decides.
//!
//! Every source writes into the same `archive.part` and every download ends in
//! `fetch::finish`, which hashes the file against the work item's SHA-256: a relay, a share or
//! a mirror can make a fetch fail, never make the agent accept other bytes. (The archive's
//! signature and every entry are checked again at extraction, as for the server.) The source
//! that completed the download is written next to the archive, so the `Transferred` report
//! names it even after a restart.

use super::fetch::{self, FetchError, Fetched};
use patchcast_core::model::types::Sha256;
use patchcast_core::sources::{Next, after_failure};
use patchcast_proto::client::Client;
use patchcast_proto::protocol::CONTENT;
use patchcast_proto::sources::{SourceTarget, WorkSources};
use patchcast_smb::{Credentials, Share, ShareUrl, content_name};
use std::path::{Path, PathBuf};

/// Quick resumes per custom source before moving to the next one.
const SOURCE_RETRIES: u32 = 2;

pub fn source_path(work_dir: &Path) -> PathBuf {
    work_dir.join("archive.source")
}

/// Where the agent finds SMB credentials: ROOT/smb-credentials, else the environment.
pub fn smb_credentials(root: &Path) -> Result<Credentials, patchcast_smb::SmbError> {
    let file = root.join("smb-credentials");
    Credentials::load(file.exists().then_some(file.as_path()))
}

/// Fetches by the plan; `Ok(Complete)` leaves the label of the source used in `archive.source`.
pub async fn fetch(
    server: &Client,
    root: &Path,
    plan: Option<&WorkSources>,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
) -> Result<Fetched, FetchError> {
    let Some(plan) = plan else {
        return server_fetch(server, sha256, size, work_dir).await;
    };
    if fetch::archive_path(work_dir).exists() {
        return Ok(Fetched::Complete(fetch::archive_path(work_dir)));
    }
    let mut tried = Vec::new();
    let mut failed = None;
    loop {
        match after_failure(plan.sources.len(), plan.fallback_to_server, failed) {
            Next::Source(i) => {
                let target = &plan.sources[i];
                let label = target.label(server.base());
                match one(server, root, target, sha256, size, work_dir).await {
                    Ok(Fetched::Complete(p)) => {
                        record(work_dir, &label)?;
                        tracing::info!(source = %label, "archive fetched");
                        return Ok(Fetched::Complete(p));
                    }
                    Ok(Fetched::Mismatch { got }) => tried.push(format!(
                        "{label}: sent content hashing to {got}, not {sha256} (discarded)"
                    )),
                    // A refusal (no such content, no credentials) is no transport fault:
                    // listed as the source said it.
                    Ok(Fetched::Refused(why)) => tried.push(format!("{label}: {why}")),
                    Ok(Fetched::Exhausted(t)) => tried.extend(t),
                    Err(e) if e.is_local() => return Err(e),
                    Err(e) => tried.push(match e.code() {
                        Some(code) => format!("{label}: {code}: {e}"),
                        None => format!("{label}: {e}"),
                    }),
                }
                tracing::warn!(source = %label, failure = %tried.last().map(String::as_str).unwrap_or(""), "update source failed; trying the next");
                failed = Some(i);
            }
            Next::Server => {
                tracing::warn!(
                    "every custom update source failed; fetching from the server as the fallback switch allows"
                );
                let r = server_fetch(server, sha256, size, work_dir).await;
                if matches!(r, Ok(Fetched::Mismatch { .. })) && !tried.is_empty() {
                    // A failed source may have left bad bytes that the server's resumed; the
                    // part is gone now, so one clean download from the server decides.
                    return server_fetch(server, sha256, size, work_dir).await;
                }
                return r;
            }
            Next::GiveUp => return Ok(Fetched::Exhausted(tried)),
        }
    }
}

async fn server_fetch(
    server: &Client,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
) -> Result<Fetched, FetchError> {
    let r = fetch::fetch(server, sha256, size, work_dir).await;
    if matches!(r, Ok(Fetched::Complete(_))) {
        record(work_dir, &SourceTarget::Server.label(server.base()))?;
    }
    r
}

fn record(work_dir: &Path, label: &str) -> Result<(), FetchError> {
    let p = source_path(work_dir);
    std::fs::write(&p, label).map_err(fetch::disk(&p))
}

async fn one(
    server: &Client,
    root: &Path,
    target: &SourceTarget,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
) -> Result<Fetched, FetchError> {
    match target {
        SourceTarget::Server => {
            fetch::fetch_http(
                server,
                &format!("{CONTENT}/{}", sha256.hex()),
                sha256,
                size,
                work_dir,
                SOURCE_RETRIES,
            )
            .await
        }
        SourceTarget::Relay {
            url: Some(url),
            fingerprint: Some(fp),
            token,
            ..
        } => {
            let c = Client::new(url, fp, Some(token.clone()))
                .map_err(|e| FetchError::cut(format!("{e:#}")))?;
            let path = format!("{CONTENT}/{}", sha256.hex());
            fetch::fetch_http(&c, &path, sha256, size, work_dir, SOURCE_RETRIES).await
        }
        SourceTarget::Relay { .. } => Ok(Fetched::Refused(
            "the relay has not reported its address to the server yet".into(),
        )),
        SourceTarget::Https { url, fingerprint } => {
            let c = match fingerprint {
                Some(fp) => Client::new(url, fp, None),
                None => patchcast_proto::proxy::apply(reqwest::Client::builder()).and_then(|b| {
                    b.connect_timeout(std::time::Duration::from_secs(10))
                        .build()
                        .map(|h| Client::with_http(url, h, None))
                        .map_err(anyhow::Error::from)
                }),
            }
            .map_err(|e| FetchError::cut(format!("{e:#}")))?;
            let path = format!("/{}", content_name(sha256));
            fetch::fetch_http(&c, &path, sha256, size, work_dir, SOURCE_RETRIES).await
        }
        SourceTarget::Smb { url } => smb_fetch(root, url, sha256, size, work_dir).await,
    }
}

/// Reads `<sha256>.pcpkg` from the share, resuming after what `archive.part` holds.
pub async fn smb_fetch(
    root: &Path,
    url: &str,
    sha256: &Sha256,
    size: u64,
    work_dir: &Path,
) -> Result<Fetched, FetchError> {
    let share = ShareUrl::parse(url).map_err(|e| FetchError::cut(e.to_string()))?;
    let creds = match smb_credentials(root) {
        Ok(c) => c,
        Err(e) => return Ok(Fetched::Refused(e.to_string())),
    };
    std::fs::create_dir_all(work_dir).map_err(fetch::staging(work_dir))?;
    let part = fetch::part_path(work_dir);
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(have > 0)
        .write(true)
        .truncate(have == 0)
        .open(&part)
        .map_err(fetch::disk(&part))?;
    let conn = Share::connect(&share, &creds).await.map_err(|e| match e {
        patchcast_smb::SmbError::Unreachable { .. } => FetchError::Unreachable(e.to_string()),
        e => FetchError::cut(e.to_string()),
    })?;
    let got = conn
        .download(&content_name(sha256), have, size, &mut out, &part)
        .await;
    conn.close().await;
    match got {
        Ok(n) if n == size => {}
        Ok(n) => {
            let _ = std::fs::remove_file(&part);
            return Ok(Fetched::Refused(format!(
                "{share}: {} is {n} bytes, not the expected {size}",
                content_name(sha256)
            )));
        }
        Err(patchcast_smb::SmbError::NotFound { share, name }) => {
            return Ok(Fetched::Refused(format!("{share}: no {name} on the share")));
        }
        Err(patchcast_smb::SmbError::Local { path, err }) => {
            return Err(FetchError::Disk { path, err });
        }
        Err(e) => return Err(FetchError::cut(e.to_string())),
    }
    out.sync_data().map_err(fetch::disk(&part))?;
    fetch::finish(sha256, work_dir)
}
