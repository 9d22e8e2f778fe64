//! `patchcast server backup` and `restore`: everything a server is, in one tar file.
//!
//! A backup holds the database (a `VACUUM INTO` copy of SQLite, or `pg_dump` of PostgreSQL),
//! the TLS key and certificate agents pin, the admin token, the trusted publisher keys, the SSH
//! known_hosts and the content store, with a manifest of each member's size and SHA-256
//! (`manifest`). It is taken while the server runs: the database copy is one point in time,
//! taken first, and content files never change once stored, so every archive the copy names
//! is in the store when the store is read. Restore reads the whole archive and checks it
//! against the manifest before it writes anything, into an empty directory only.
//!
//! The manifest detects a damaged or edited archive; it is not a signature. The file holds the
//! server's private key and admin token, so it is written 0600 and must be kept like them.

pub mod manifest;
pub mod postgres;

use anyhow::{Context, Result, bail};
use manifest::{Database, MANIFEST, Manifest, Member};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The server a backup is taken of (the same settings `patchcast server` is started with).
pub struct Source {
    pub data: PathBuf,
    /// `postgres://…`; None: SQLite at DATA/patchcast.db.
    pub database: Option<String>,
    pub trust_keys: Vec<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub out: PathBuf,
    pub database: Database,
    pub members: usize,
    pub bytes: u64,
}

/// Where a restore goes.
pub struct Target {
    /// A directory that does not exist yet or is empty.
    pub data: PathBuf,
    /// The (empty) PostgreSQL database a PostgreSQL backup is restored into.
    pub database: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Restored {
    pub data: PathBuf,
    pub database: Database,
    pub members: usize,
    /// The restored publisher keys, to give to `patchcast server --trust-key`.
    pub trust_keys: Vec<PathBuf>,
}

/// A file removed when dropped (the database copy, an unfinished archive).
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut n = name.to_os_string();
    n.push(format!(".{}.{suffix}", crate::random_hex(6)?));
    Ok(path.with_file_name(n))
}

fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: sha2::Sha256::new(),
            len: 0,
        }
    }

    fn hex(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }
}

/// Fixed header fields: the archive says nothing about the backup host's users or clocks.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    file: &Path,
    members: &mut Vec<Member>,
) -> Result<u64> {
    let f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let size = f.metadata()?.len();
    let mut r = Hashing::new(f.take(size));
    let mut h = header(size);
    tar.append_data(&mut h, name, &mut r)
        .with_context(|| format!("writing {} into the backup", file.display()))?;
    if r.len != size {
        bail!(
            "{} changed size while it was read ({size} then {} bytes)",
            file.display(),
            r.len
        );
    }
    members.push(Member {
        path: name.into(),
        size,
        sha256: r.hex(),
    });
    Ok(size)
}

/// The store's archives (`content/<sha256>`), sorted; its `tmp/` holds unfinished uploads.
fn content_files(data: &Path) -> Result<Vec<(String, PathBuf)>> {
    let dir = data.join("content");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let member = format!("content/{name}");
        if e.file_type()?.is_file() && manifest::target(&member).is_some() {
            out.push((member, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Takes a backup of `src` into `out` (replaced only once the new one is complete).
pub async fn backup(src: &Source, out: &Path) -> Result<Summary> {
    for need in manifest::REQUIRED {
        let p = src.data.join(need);
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: is {} a patchcast server's data directory?",
            p.display(),
            src.data.display()
        );
    }
    // The database first: content stored later is in the store too, never the reverse.
    let db_copy = Temp(sibling(out, "db")?);
    let database = match &src.database {
        None => {
            let db = src.data.join("patchcast.db");
            anyhow::ensure!(db.is_file(), "{} is missing", db.display());
            crate::db::sqlite_snapshot(&db, &db_copy.0).await?;
            Database::Sqlite
        }
        Some(url) => {
            let (url, path) = (url.clone(), db_copy.0.clone());
            tokio::task::spawn_blocking(move || postgres::dump(&url, &path)).await??;
            Database::Postgres
        }
    };
    let (data, trust_keys, out_path) = (src.data.clone(), src.trust_keys.clone(), out.to_owned());
    let db_path = db_copy.0.clone();
    let summary = tokio::task::spawn_blocking(move || {
        write_archive(&data, database, &db_path, &trust_keys, &out_path)
    })
    .await??;
    drop(db_copy);
    Ok(summary)
}

fn write_archive(
    data: &Path,
    database: Database,
    db_copy: &Path,
    trust_keys: &[PathBuf],
    out: &Path,
) -> Result<Summary> {
    let partial = Temp(sibling(out, "partial")?);
    let file = create_private(&partial.0)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut members = Vec::new();
    let mut bytes = append_file(&mut tar, database.member(), db_copy, &mut members)?;
    for name in manifest::REQUIRED {
        bytes += append_file(&mut tar, name, &data.join(name), &mut members)?;
    }
    for (i, key) in trust_keys.iter().enumerate() {
        // Numbered: two keys named alike in different directories stay two members.
        let base: String = key
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("trust/{i}-{base}.pub");
        bytes += append_file(&mut tar, &name, key, &mut members)?;
    }
    // A certificate renewal in progress (`server renew-cert`): its next identity and the
    // re-pin statement agents may already hold, so a restored server can finish it.
    for name in manifest::RENEWAL {
        let path = data.join(name);
        if path.is_file() {
            bytes += append_file(&mut tar, name, &path, &mut members)?;
        }
    }
    let known_hosts = data.join("ssh/known_hosts");
    if known_hosts.is_file() {
        bytes += append_file(&mut tar, "ssh/known_hosts", &known_hosts, &mut members)?;
    }
    for (name, path) in content_files(data)? {
        bytes += append_file(&mut tar, &name, &path, &mut members)?;
    }
    let m = Manifest {
        format: manifest::FORMAT.into(),
        created_ms: crate::db::now_ms(),
        database,
        members,
    };
    let text = serde_json::to_vec_pretty(&m)?;
    let mut h = header(text.len() as u64);
    tar.append_data(&mut h, MANIFEST, text.as_slice())?;
    let file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("writing {}", partial.0.display()))?;
    std::fs::rename(&partial.0, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(Summary {
        out: out.to_owned(),
        database,
        members: m.members.len(),
        bytes,
    })
}

/// Reads every member, hashing it, and checks the whole archive against its manifest.
fn verify(archive: &Path) -> Result<Manifest> {
    let f =
        std::fs::File::open(archive).with_context(|| format!("reading {}", archive.display()))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    let mut seen = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut problems = Vec::new();
    for entry in a
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if manifest.is_some() {
            problems.push(format!("{path} follows the manifest"));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            problems.push(format!("{path} is not a regular file"));
            continue;
        }
        let mut r = Hashing::new(entry);
        if path == MANIFEST {
            let mut text = Vec::new();
            r.by_ref().take(64 << 20).read_to_end(&mut text)?;
            manifest =
                Some(serde_json::from_slice(&text).with_context(|| {
                    format!("{}: the manifest is not readable", archive.display())
                })?);
            continue;
        }
        std::io::copy(&mut r, &mut std::io::sink())
            .with_context(|| format!("reading {path} in {}", archive.display()))?;
        seen.push(Member {
            sha256: r.hex(),
            size: r.len,
            path,
        });
    }
    let Some(m) = manifest else {
        bail!(
            "{} has no manifest.json: not a complete patchcast backup; nothing was restored",
            archive.display()
        );
    };
    problems.extend(manifest::problems(&m, &seen));
    if !problems.is_empty() {
        bail!(
            "{} does not match its manifest; nothing was restored:\n  {}",
            archive.display(),
            problems.join("\n  ")
        );
    }
    Ok(m)
}

fn empty_or_absent(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            anyhow::ensure!(
                entries.next().is_none(),
                "{} is not empty: restore only into a new or empty directory",
                dir.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Restores `archive` into `target` after checking all of it against its manifest.
pub fn restore(archive: &Path, target: &Target) -> Result<Restored> {
    empty_or_absent(&target.data)?;
    let m = verify(archive)?;
    match (m.database, &target.database) {
        (Database::Sqlite, Some(_)) => bail!(
            "this backup holds a SQLite database, which is restored into the data directory; leave out --database-file"
        ),
        (Database::Postgres, None) => bail!(
            "this backup holds a PostgreSQL database: give --database-file FILE naming the empty database to restore it into"
        ),
        _ => {}
    }
    let expected: std::collections::HashMap<&str, &Member> =
        m.members.iter().map(|x| (x.path.as_str(), x)).collect();
    std::fs::create_dir_all(&target.data)
        .with_context(|| format!("creating {}", target.data.display()))?;
    let f = std::fs::File::open(archive)?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    let mut trust_keys = Vec::new();
    let mut count = 0;
    for entry in a.entries()? {
        let entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if path == MANIFEST {
            continue;
        }
        let want = expected
            .get(path.as_str())
            .with_context(|| format!("{path} changed in the archive while it was restored"))?;
        let mut r = Hashing::new(entry);
        if path == manifest::POSTGRES {
            let url = target.database.as_deref().expect("checked above");
            postgres::restore(url, &mut r)?;
        } else {
            let (rel, secret) = manifest::target(&path).expect("verified names");
            let dest = target.data.join(&rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let mut out = if secret {
                create_private(&dest)?
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?
            };
            std::io::copy(&mut r, &mut out)
                .and_then(|_| out.sync_all())
                .with_context(|| format!("writing {}", dest.display()))?;
            if rel.starts_with("trust/") {
                trust_keys.push(dest);
            }
        }
        // The file was read twice; a change in between is caught here.
        if r.hex() != want.sha256 || r.len != want.size {
            bail!(
                "{path} changed in {} while it was restored; the restore in {} is incomplete",
                archive.display(),
                target.data.display()
            );
        }
        count += 1;
    }
    Ok(Restored {
        data: target.data.clone(),
        database: m.database,
        members: count,
        trust_keys,
    })
}

/// `patchcast server join`: gives the data directory `data` the identity of the server whose
/// data directory is `from` (TLS key and certificate, admin token; `manifest::REQUIRED`), so
/// several servers on one database present the certificate agents pinned. Secrets are
/// written 0600; an existing identity in `data` is never overwritten. Returns the files copied.
pub fn join(from: &Path, data: &Path) -> Result<usize> {
    for rel in manifest::REQUIRED {
        let src = from.join(rel);
        if !src.is_file() {
            bail!(
                "{} is missing: --from must be the data directory of a server that has started once",
                src.display()
            );
        }
        if data.join(rel).exists() {
            bail!(
                "{} exists: {} already has an identity; join into a new, empty data directory",
                data.join(rel).display(),
                data.display()
            );
        }
    }
    for rel in manifest::REQUIRED {
        let (src, dst) = (from.join(rel), data.join(rel));
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        patchcast_pack::keys::write_private(&dst, &bytes)?;
    }
    Ok(manifest::REQUIRED.len())
}
