//! The package archive: a deterministic tar of a signed manifest followed by the payload.
//!
//! Layout, in this order and nothing else:
//! - `manifest.json`: the package definition, every payload file with size and SHA-256, the total size;
//! - `manifest.sig`: an Ed25519 signature over the manifest's SHA-256 (the manifest digest);
//! - `payload/<path>` for each file, in manifest order.
//!
//! The manifest comes first so that a reader verifies the signature before it reads a single
//! payload byte, and then checks each file against the signed hash as it streams past. Entries
//! are regular files only: no directories, links or devices, and every path is checked, so an
//! archive cannot write outside the directory it is extracted into. Headers carry no time,
//! owner or host detail, so the same inputs give a byte-identical archive.

use super::hash::{sha256_bytes, sha256_file, sha256_reader};
use super::keys::key_id;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use patchcast_core::model::package::{Package, check_relative_path, resolve};
use patchcast_core::model::raw::RawPackage;
use patchcast_core::model::types::Sha256;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";
/// Domain separation: a patchcast signature can never be replayed as a signature of anything else.
const SIGNING_CONTEXT: &[u8] = b"patchcast manifest v1\n";
/// Manifests and signatures are small; a huge one is an attack or a mistake.
const MAX_META: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
    /// Whether the file is executable on Unix.
    #[serde(default)]
    pub executable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub package: RawPackage,
    pub files: Vec<FileEntry>,
    pub total_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignatureFile {
    pub algorithm: String,
    pub key_id: String,
    pub manifest_sha256: Sha256,
    pub signature: String,
}

/// Why an archive was refused. Each names what was wrong; none is retried.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the archive failed: {0}")]
    Io(#[from] io::Error),
    #[error("the archive is not a patchcast package: {0}")]
    Structure(String),
    #[error("unsafe entry `{}`: {why}", .path.escape_debug())]
    UnsafeEntry { path: String, why: String },
    #[error("the signature is invalid: {0}")]
    BadSignature(String),
    #[error("signed by key {0}, which is not among the trusted keys")]
    UntrustedKey(String),
    #[error("`{path}` does not match the signed manifest: {why}")]
    Tampered { path: String, why: String },
    #[error("the archive ends early: {0}")]
    Truncated(String),
}

/// What a successful verification proves.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub package: Package,
    pub manifest_sha256: Sha256,
    pub key_id: String,
}

pub struct BuildOutput {
    pub manifest: Manifest,
    pub manifest_sha256: Sha256,
    pub key_id: String,
    pub archive_sha256: Sha256,
    pub archive_size: u64,
}

fn signed_message(digest: &Sha256) -> Vec<u8> {
    [SIGNING_CONTEXT, &digest.0].concat()
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Builds the manifest of a package directory (hashing every payload file once).
fn manifest(
    dir: &Path,
    raw: &RawPackage,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Manifest> {
    use anyhow::Context;
    let mut files = Vec::new();
    for p in &raw.payload {
        let (f, meta) = super::payload::open(dir, p)
            .with_context(|| format!("payload of {}", dir.display()))?;
        let (sha256, size) =
            sha256_reader(f, &mut progress).with_context(|| format!("reading payload `{p}`"))?;
        files.push(FileEntry {
            path: p.clone(),
            size,
            sha256,
            executable: is_executable(&meta),
        });
    }
    let total_size = files.iter().map(|f| f.size).sum();
    Ok(Manifest {
        format: FORMAT,
        package: raw.clone(),
        files,
        total_size,
    })
}

/// Reports the bytes read through it (progress of the archiving pass).
struct Reporting<R, F> {
    inner: R,
    report: F,
}

impl<R: Read, F: FnMut(u64)> Read for Reporting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

/// Writes the signed archive for an already linted package directory to `out`
/// (through a temporary file renamed into place, so `out` is never half written).
pub fn build(
    dir: &Path,
    raw: &RawPackage,
    key: &SigningKey,
    out: &Path,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<BuildOutput> {
    use anyhow::Context;
    let manifest = manifest(dir, raw, &mut progress)?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    let digest = sha256_bytes(&manifest_bytes);
    let sig = SignatureFile {
        algorithm: "ed25519".into(),
        key_id: key_id(&key.verifying_key()),
        manifest_sha256: digest,
        signature: hex::encode(key.sign(&signed_message(&digest)).to_bytes()),
    };
    let sig_bytes = serde_json::to_vec_pretty(&sig)?;

    let tmp = out.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    tar.append_data(
        &mut header(manifest_bytes.len() as u64, 0o644),
        MANIFEST,
        &manifest_bytes[..],
    )?;
    tar.append_data(
        &mut header(sig_bytes.len() as u64, 0o644),
        SIGNATURE,
        &sig_bytes[..],
    )?;
    for entry in &manifest.files {
        let path = dir.join(&entry.path);
        let (f, _) = super::payload::open(dir, &entry.path)?;
        // A file that grew since it was hashed is cut at the signed size; any other change
        // is caught by the verification of the written archive below.
        let mut limited = Reporting {
            inner: f.take(entry.size),
            report: &mut progress,
        };
        let mode = if entry.executable { 0o755 } else { 0o644 };
        tar.append_data(
            &mut header(entry.size, mode),
            format!("payload/{}", entry.path),
            &mut limited,
        )
        .with_context(|| format!("archiving {}", path.display()))?;
    }
    let mut w = tar.into_inner()?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    // Read back what was written: a payload that changed while it was archived, or a short
    // write, must never leave a signed archive that does not verify.
    if let Err(e) = verify(&tmp, &[key.verifying_key()]) {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!(
            "the archive written for {} does not verify ({e}); was a payload file changed during the build?",
            dir.display()
        );
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    let (archive_sha256, archive_size) = sha256_file(out)?;
    Ok(BuildOutput {
        manifest,
        manifest_sha256: digest,
        key_id: sig.key_id,
        archive_sha256,
        archive_size,
    })
}

/// Largest GNU long-name entry accepted (a path, NUL-terminated).
const MAX_LONG_NAME: u64 = 4096;
/// Largest run of zero bytes accepted after the end marker (tar writers pad to 10 KiB records).
const MAX_END_PADDING: u64 = 10240;

/// The next member in the one header form the builder writes: a GNU header for a regular
/// file with mode 0644 or 0755, preceded by a GNU long-name entry when its path is long.
/// PAX and every other extension are refused: they are outside the signature, and readers
/// disagree about them (which name wins, sparse maps, set-id bits).
fn next_member<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
    what: &str,
) -> Result<(String, tar::Entry<'a, R>), VerifyError> {
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut e = match entries.next() {
            Some(e) => e.map_err(|e| {
                VerifyError::Structure(format!("unreadable entry where {what} was expected: {e}"))
            })?,
            None => return Err(VerifyError::Truncated(format!("{what} is missing"))),
        };
        let kind = e.header().entry_type();

        if kind == tar::EntryType::GNULongName
            && long_name.is_none()
            && e.header().as_gnu().is_some()
        {
            if e.size() > MAX_LONG_NAME {
                return Err(VerifyError::Structure(format!(
                    "a long name of {} bytes",
                    e.size()
                )));
            }
            let mut name = Vec::new();
            e.read_to_end(&mut name)?;
            while name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        let raw = long_name
            .take()
            .unwrap_or_else(|| e.path_bytes().into_owned());
        let path = String::from_utf8(raw).map_err(|e| VerifyError::UnsafeEntry {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            why: "the name is not UTF-8".into(),
        })?;
        if kind != tar::EntryType::Regular {
            let what = match kind {
                tar::EntryType::Symlink => "a symbolic link",
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char | tar::EntryType::Block => "a device file",
                tar::EntryType::Fifo => "a FIFO",
                tar::EntryType::Directory => "a directory entry",
                tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => "a PAX extension header",
                tar::EntryType::GNUSparse => "a sparse file",
                tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                    "a second long-name entry"
                }
                _ => "not a regular file",
            };
            return Err(VerifyError::UnsafeEntry {
                path,
                why: format!("{what}; package archives hold regular files only"),
            });
        }
        let mode = e
            .header()
            .mode()
            .map_err(|e| VerifyError::Structure(e.to_string()))?;
        if mode != 0o644 && mode != 0o755 {
            return Err(VerifyError::UnsafeEntry {
                path,
                why: format!("mode {mode:o}; package archives hold files of mode 644 or 755 only"),
            });
        }
        check_relative_path(&path).map_err(|why| VerifyError::UnsafeEntry {
            path: path.clone(),
            why: why.to_string(),
        })?;
        if e.header().as_gnu().is_none() {
            return Err(VerifyError::Structure(format!(
                "the entry where {what} was expected is not in the GNU header form patchcast writes"
            )));
        }
        return Ok((path, e));
    }
}

fn read_meta(entry: &mut tar::Entry<impl Read>, name: &str) -> Result<Vec<u8>, VerifyError> {
    if entry.size() > MAX_META {
        return Err(VerifyError::Structure(format!(
            "{name} is {} bytes, more than allowed",
            entry.size()
        )));
    }
    let mut buf = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut buf)?;
    if buf.len() as u64 != entry.size() {
        return Err(VerifyError::Truncated(format!("{name} is cut short")));
    }
    Ok(buf)
}

/// Where verified payload goes: nowhere (`verify`), or a directory (`extract`).
pub trait Sink {
    fn file(&mut self, entry: &FileEntry) -> io::Result<Box<dyn Write + '_>>;
    /// Called once every file has been written and verified.
    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Discard;

impl Sink for Discard {
    fn file(&mut self, _: &FileEntry) -> io::Result<Box<dyn Write + '_>> {
        Ok(Box::new(io::sink()))
    }
}

/// Verifies an archive stream: structure, signature by a trusted key, and every file's size and hash.
pub fn verify_reader(r: impl Read, trusted: &[VerifyingKey]) -> Result<Verified, VerifyError> {
    read_archive(r, trusted, &mut Discard)
}

pub fn verify(path: &Path, trusted: &[VerifyingKey]) -> Result<Verified, VerifyError> {
    verify_reader(
        io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
        trusted,
    )
}

/// Extracts a verified archive's payload into `dest`, which must not exist yet. Files are
/// written under a temporary name and the directory is renamed into place only after every
/// hash matched, so `dest` never holds unverified content.
pub fn extract(
    r: impl Read,
    trusted: &[VerifyingKey],
    dest: &Path,
) -> Result<Verified, VerifyError> {
    let staging = dest.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let mut sink = DirSink {
        root: staging.clone(),
        dest: dest.to_path_buf(),
    };
    let result = read_archive(r, trusted, &mut sink);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

struct DirSink {
    root: PathBuf,
    dest: PathBuf,
}

impl Sink for DirSink {
    fn file(&mut self, entry: &FileEntry) -> io::Result<Box<dyn Write + '_>> {
        // The path was checked (relative, no `..`) and the staging tree holds only directories
        // we created, so joining cannot leave `root`.
        let path = self.root.join(&entry.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(
            &mut opts,
            if entry.executable { 0o755 } else { 0o644 },
        );
        Ok(Box::new(io::BufWriter::with_capacity(
            1 << 20,
            opts.open(path)?,
        )))
    }

    fn commit(&mut self) -> io::Result<()> {
        std::fs::rename(&self.root, &self.dest)
    }
}

/// Hashes what passes through while forwarding it to the sink.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Verifies a manifest and its signature as they appear in an archive (`manifest.json`,
/// `manifest.sig`): what an agent checks on a work item before it runs a single probe.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    trusted: &[VerifyingKey],
) -> Result<Verified, VerifyError> {
    let (manifest, package, manifest_sha256, key_id) =
        check_signed(manifest_bytes, sig_bytes, trusted)?;
    Ok(Verified {
        manifest,
        package,
        manifest_sha256,
        key_id,
    })
}

fn check_signed(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    trusted: &[VerifyingKey],
) -> Result<(Manifest, Package, Sha256, String), VerifyError> {
    // Signature first: nothing in an unsigned manifest is trusted, not even its structure.
    let digest = sha256_bytes(manifest_bytes);
    let sig: SignatureFile = serde_json::from_slice(sig_bytes)
        .map_err(|e| VerifyError::BadSignature(format!("{SIGNATURE} is malformed: {e}")))?;
    if sig.algorithm != "ed25519" {
        return Err(VerifyError::BadSignature(format!(
            "unsupported algorithm `{}`",
            sig.algorithm
        )));
    }
    if sig.manifest_sha256 != digest {
        return Err(VerifyError::BadSignature(
            "the manifest's SHA-256 differs from the signed one (the manifest was changed)".into(),
        ));
    }
    let key = trusted
        .iter()
        .find(|k| key_id(k) == sig.key_id)
        .ok_or_else(|| VerifyError::UntrustedKey(sig.key_id.clone()))?;
    let mut sig_raw = [0u8; 64];
    hex::decode_to_slice(&sig.signature, &mut sig_raw)
        .map_err(|_| VerifyError::BadSignature("the signature is not 128 hex digits".into()))?;
    key.verify_strict(&signed_message(&digest), &Signature::from_bytes(&sig_raw))
        .map_err(|_| {
            VerifyError::BadSignature(format!("it does not verify with key {}", sig.key_id))
        })?;

    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| VerifyError::Structure(format!("{MANIFEST} is malformed: {e}")))?;
    if manifest.format != FORMAT {
        return Err(VerifyError::Structure(format!(
            "archive format {} is not supported (this patchcast reads format {FORMAT})",
            manifest.format
        )));
    }
    let (package, problems) = resolve(&manifest.package);
    let package = package.ok_or_else(|| {
        let first = problems
            .iter()
            .find(|p| p.severity == patchcast_core::model::problem::Severity::Error);
        VerifyError::Structure(format!(
            "the signed package definition is invalid: {}",
            first.map(|p| p.message.as_str()).unwrap_or("unknown")
        ))
    })?;
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    if listed
        != package
            .payload
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        return Err(VerifyError::Structure(
            "the manifest's files differ from the package's payload list".into(),
        ));
    }
    if manifest.files.iter().map(|f| f.size).sum::<u64>() != manifest.total_size {
        return Err(VerifyError::Structure(
            "total_size is not the sum of the file sizes".into(),
        ));
    }

    Ok((manifest, package, digest, sig.key_id))
}

fn read_archive(
    r: impl Read,
    trusted: &[VerifyingKey],
    sink: &mut dyn Sink,
) -> Result<Verified, VerifyError> {
    let mut archive = tar::Archive::new(r);
    let signed = read_members(&mut archive, trusted, sink)?;
    // The end marker's first block ended the entries; what follows may only be its zeros.
    let mut rest = archive.into_inner().take(MAX_END_PADDING + 1);
    let mut tail = Vec::new();
    rest.read_to_end(&mut tail)?;
    if tail.len() as u64 > MAX_END_PADDING || tail.iter().any(|b| *b != 0) {
        return Err(VerifyError::Structure(
            "data after the archive's end marker".into(),
        ));
    }
    let (manifest, package, digest, key_id) = signed;
    sink.commit()?;
    Ok(Verified {
        manifest,
        package,
        manifest_sha256: digest,
        key_id,
    })
}

/// Reads the manifest, signature and payload members, each in the builder's header form.
fn read_members<R: Read>(
    archive: &mut tar::Archive<R>,
    trusted: &[VerifyingKey],
    sink: &mut dyn Sink,
) -> Result<(Manifest, Package, Sha256, String), VerifyError> {
    let mut entries = archive.entries()?.raw(true);
    let (name, mut m) = next_member(&mut entries, MANIFEST)?;
    if name != MANIFEST {
        return Err(VerifyError::Structure(format!(
            "the first entry is `{}`, expected {MANIFEST}",
            name.escape_debug()
        )));
    }
    let manifest_bytes = read_meta(&mut m, MANIFEST)?;
    drop(m);
    let (name, mut s) = next_member(&mut entries, SIGNATURE)?;
    if name != SIGNATURE {
        return Err(VerifyError::Structure(format!(
            "the second entry is `{}`, expected {SIGNATURE}",
            name.escape_debug()
        )));
    }
    let sig_bytes = read_meta(&mut s, SIGNATURE)?;
    drop(s);

    let signed = check_signed(&manifest_bytes, &sig_bytes, trusted)?;
    for fe in &signed.0.files {
        let expected = format!("payload/{}", fe.path);
        let (name, mut e) = next_member(&mut entries, &expected)?;
        if name != expected {
            return Err(VerifyError::Structure(format!(
                "entry `{}` found where `{expected}` was expected",
                name.escape_debug()
            )));
        }
        if (e.header().mode().ok() == Some(0o755)) != fe.executable {
            return Err(VerifyError::Tampered {
                path: fe.path.clone(),
                why: "its mode differs from the signed executable bit".into(),
            });
        }
        if e.size() != fe.size {
            return Err(VerifyError::Tampered {
                path: fe.path.clone(),
                why: format!("size {} differs from the signed {}", e.size(), fe.size),
            });
        }
        let mut w = HashingWriter {
            inner: sink.file(fe)?,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            written: 0,
        };
        io::copy(&mut e, &mut w).map_err(|err| match err.kind() {
            io::ErrorKind::UnexpectedEof => {
                VerifyError::Truncated(format!("payload/{} is cut short", fe.path))
            }
            _ => VerifyError::Io(err),
        })?;
        w.flush()?;
        if w.written != fe.size {
            return Err(VerifyError::Truncated(format!(
                "payload/{} has {} of {} bytes",
                fe.path, w.written, fe.size
            )));
        }
        let got = Sha256(sha2::Digest::finalize(w.hasher).into());
        if got != fe.sha256 {
            return Err(VerifyError::Tampered {
                path: fe.path.clone(),
                why: format!("sha256 {got} differs from the signed {}", fe.sha256),
            });
        }
    }
    if let Some(extra) = entries.next() {
        let what = extra
            .ok()
            .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
            .unwrap_or_else(|| "an unreadable entry".into());
        return Err(VerifyError::Structure(format!(
            "unexpected entry `{}` after the payload",
            what.escape_debug()
        )));
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed archive of two payload files, one with a path longer than a tar header holds.
    fn signed() -> (Vec<u8>, SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/b.sh", "d".repeat(120));
        std::fs::write(dir.path().join("a.sh"), b"echo a\n").unwrap();
        std::fs::create_dir_all(dir.path().join("d".repeat(120))).unwrap();
        std::fs::write(dir.path().join(&long), b"echo b\n").unwrap();
        let yaml = format!(
            "id: t\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\nidentification: [{{ probe: 'true' }}]\npayload: [a.sh, '{long}']\ninstall: {{ command: 'sh {{{{payload.0}}}}' }}\n"
        );
        let raw: RawPackage = serde_saphyr::from_str(&yaml).unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let out = dir.path().join("out.pcpkg");
        build(dir.path(), &raw, &key, &out, |_| {}).unwrap();
        (std::fs::read(out).unwrap(), key)
    }

    fn check(bytes: &[u8], key: &SigningKey) -> Result<Verified, VerifyError> {
        verify_reader(bytes, &[key.verifying_key()])
    }

    /// Rewrites the archive member by member (raw headers, long-name entries included),
    /// letting `edit` change each header or add members before it.
    fn reheader(
        bytes: &[u8],
        mut edit: impl FnMut(&mut tar::Header, &mut tar::Builder<Vec<u8>>),
    ) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(bytes);
        for e in a.entries().unwrap().raw(true) {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            edit(&mut h, &mut out);
            h.set_cksum();
            out.append(&h, &data[..]).unwrap();
        }
        out.into_inner().unwrap()
    }

    #[test]
    fn the_builders_own_form_verifies_long_names_included() {
        let (bytes, key) = signed();
        let v = check(&bytes, &key).unwrap();
        assert_eq!(v.manifest.files[1].path.len(), 125);
        // A faithful member-by-member copy is still the same archive.
        assert!(check(&reheader(&bytes, |_, _| {}), &key).is_ok());
    }

    #[test]
    fn regression_tar_metadata_outside_the_signature_is_refused() {
        let (bytes, key) = signed();
        // A PAX path header in front of a payload member (GNU tar and the tar crate
        // disagree about which name wins).
        let mut first = true;
        let pax = reheader(&bytes, |h, out| {
            if h.path_bytes().starts_with(b"payload/a.sh") && std::mem::take(&mut first) {
                out.append_pax_extensions([("path", b"payload/evil".as_slice())])
                    .unwrap();
            }
        });
        let e = check(&pax, &key).unwrap_err();
        assert!(e.to_string().contains("PAX"), "{e}");
        // Set-id and sticky bits on a payload file.
        let setuid = reheader(&bytes, |h, _| {
            if h.path_bytes().starts_with(b"payload/a.sh") {
                h.set_mode(0o7777);
            }
        });
        let e = check(&setuid, &key).unwrap_err();
        assert!(e.to_string().contains("mode 7777"), "{e}");
        // The executable bit must be the signed one.
        let exec = reheader(&bytes, |h, _| {
            if h.path_bytes().starts_with(b"payload/a.sh") {
                h.set_mode(0o755);
            }
        });
        assert!(matches!(
            check(&exec, &key),
            Err(VerifyError::Tampered { .. })
        ));
        // A sparse member.
        let sparse = reheader(&bytes, |h, _| {
            if h.path_bytes().starts_with(b"payload/a.sh") {
                h.set_entry_type(tar::EntryType::GNUSparse);
            }
        });
        assert!(
            check(&sparse, &key)
                .unwrap_err()
                .to_string()
                .contains("sparse")
        );
        // Plain ustar headers instead of GNU ones.
        let ustar = reheader(&bytes, |h, _| {
            if h.path_bytes().starts_with(b"payload/a.sh") {
                let mut u = tar::Header::new_ustar();
                u.set_path("payload/a.sh").unwrap();
                u.set_size(h.size().unwrap());
                u.set_mode(0o644);
                u.set_entry_type(tar::EntryType::Regular);
                *h = u;
            }
        });
        assert!(
            check(&ustar, &key)
                .unwrap_err()
                .to_string()
                .contains("GNU header form")
        );
        // Anything after the end marker.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"more");
        assert!(
            check(&trailing, &key)
                .unwrap_err()
                .to_string()
                .contains("end marker")
        );
        // Names from the archive reach terminals escaped (no control characters of their own).
        let named = reheader(&bytes, |h, _| {
            if h.path_bytes().starts_with(b"payload/a.sh") {
                h.as_old_mut().name[..13].copy_from_slice(b"pay\nload/a.sh");
                h.as_old_mut().name[13] = 0;
            }
        });
        let e = check(&named, &key).unwrap_err().to_string();
        assert!(
            !e.contains('\n') && !e.contains('\0') && e.contains("pay\\nload"),
            "{e}"
        );
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 4096]);
        assert!(
            check(&padded, &key).is_ok(),
            "zero padding is part of the end marker"
        );
    }
}
