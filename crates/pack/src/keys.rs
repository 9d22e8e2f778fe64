//! Ed25519 signing keys for packages.
//!
//! Files are one line of text: `patchcast-ed25519-secret HEX` (mode 0600) and
//! `patchcast-ed25519-public HEX`. A key id is the first 16 hex digits of the SHA-256 of the
//! public key, so signatures name the key that made them without revealing anything.

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::{Path, PathBuf};

const SECRET_TAG: &str = "patchcast-ed25519-secret";
const PUBLIC_TAG: &str = "patchcast-ed25519-public";

pub fn key_id(key: &VerifyingKey) -> String {
    super::hash::sha256_bytes(key.as_bytes()).hex()[..16].to_string()
}

pub fn generate() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates `path` (and its parent) readable by its owner only, refusing to replace an existing
/// file, and writes `bytes` durably: for secrets (signing keys, TLS keys, agent credentials).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `BASE.key` (secret, 0600, never overwritten) and `BASE.pub`; returns both paths.
pub fn write_pair(base: &Path, key: &SigningKey) -> anyhow::Result<(PathBuf, PathBuf)> {
    let secret = base.with_extension("key");
    let public = base.with_extension("pub");
    if secret.exists() {
        bail!(
            "{} already exists; refusing to overwrite a signing key (move it away first)",
            secret.display()
        );
    }
    write_private(
        &secret,
        format!("{SECRET_TAG} {}\n", hex::encode(key.to_bytes())).as_bytes(),
    )?;
    std::fs::write(
        &public,
        format!(
            "{PUBLIC_TAG} {}\n",
            hex::encode(key.verifying_key().as_bytes())
        ),
    )
    .with_context(|| format!("writing {}", public.display()))?;
    Ok((secret, public))
}

fn read_tagged(path: &Path, tag: &str) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let hexpart = text
        .trim()
        .strip_prefix(tag)
        .map(str::trim)
        .with_context(|| {
            format!(
                "{} is not a {tag} file (it should start with `{tag} `)",
                path.display()
            )
        })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out)
        .with_context(|| format!("{}: the key is not 64 hex digits", path.display()))?;
    Ok(out)
}

pub fn read_secret(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_tagged(path, SECRET_TAG)?))
}

pub fn read_public(path: &Path) -> anyhow::Result<VerifyingKey> {
    let bytes = read_tagged(path, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("{}: not a valid Ed25519 public key", path.display()))
}

/// `n` random bytes as hex (tokens, identifiers, session ids).
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(b))
}
