//! The content store: signed archives on disk, named by their SHA-256 under `DATA/content`.
//!
//! An upload streams into `content/tmp/`, hashing as it goes; it is fsynced and renamed to
//! `content/<sha256>` only after the archive verified against the trusted publisher keys, so
//! the store never serves a file that is incomplete or unsigned. Disk space is checked before
//! (with the announced length) and after the upload against the reserve (E17).

use anyhow::{Context, Result};
use patchcast_core::model::types::Sha256;
use sha2::Digest;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

pub struct Store {
    dir: PathBuf,
}

/// An upload written to a temporary file, not yet in the store.
pub struct Staged {
    pub path: PathBuf,
    pub sha256: Sha256,
    pub size: u64,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        // Uploads interrupted by a crash are never referenced; clear them.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path_of(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(sha.hex())
    }

    /// Free bytes on the file system holding the store.
    pub fn free_bytes(&self) -> Result<u64> {
        free_bytes(&self.dir)
    }

    /// Streams `body` into a temporary file, hashing it; at most `limit` bytes are accepted.
    pub async fn stage<S, E>(&self, mut body: S, limit: u64) -> Result<Staged, StageError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let mut name = [0u8; 12];
        getrandom::fill(&mut name).map_err(|e| StageError::Io(anyhow::anyhow!("{e}")))?;
        let path = self.dir.join("tmp").join(hex::encode(name));
        let mut file = tokio::fs::File::create(&path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let result: Result<(), StageError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StageError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StageError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.context("writing the upload")?;
            }
            file.sync_all().await.context("syncing the upload")?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(Staged {
            path,
            sha256: Sha256(hasher.finalize().into()),
            size,
        })
    }

    /// Moves a verified upload into place (atomic rename, then the directory is synced).
    pub fn commit(&self, staged: &Staged) -> Result<PathBuf> {
        let dest = self.path_of(&staged.sha256);
        std::fs::rename(&staged.path, &dest)
            .with_context(|| format!("storing {}", dest.display()))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("the upload is larger than the {limit} bytes the server's disk reserve allows")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// Free bytes available to this process on the file system holding `path`.
#[cfg(not(unix))]
pub fn free_bytes(path: &Path) -> Result<u64> {
    Ok(patchcast_proto::host::disk_of(path).1)
}

/// Free bytes available to this process on the file system holding `path`.
#[cfg(unix)]
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading free space of {}", path.display()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// `manifest.json` and `manifest.sig` exactly as stored at the head of an archive.
pub fn read_head(path: &Path) -> Result<(String, String)> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    let mut out = Vec::new();
    for e in ar.entries()?.take(2) {
        let mut e = e?;
        let mut s = String::new();
        e.read_to_string(&mut s)?;
        out.push(s);
    }
    anyhow::ensure!(out.len() == 2, "{} has no manifest", path.display());
    let sig = out.pop().unwrap_or_default();
    let manifest = out.pop().unwrap_or_default();
    Ok((manifest, sig))
}
