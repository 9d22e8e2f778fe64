//! Host keys checked against an OpenSSH known_hosts file (plain or hashed host names,
//! `[host]:port` for ports other than 22).
//!
//! Keys are compared by their key data only: `ssh_key::PublicKey` equality includes the
//! comment, so a key read from a `.pub` file with a comment would never equal the server's.
//! Trust on first use records an unknown host's key, and only when the caller asked for it;
//! a host whose recorded key differs is refused either way.

use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{HashAlg, PublicKey};
use std::path::{Path, PathBuf};

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trusted {
    /// The key is in the file.
    Known,
    /// The host was not in the file; its key was recorded (trust on first use).
    Learned,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyError {
    #[error(
        "the SSH host key of {host} ({fingerprint}) does not match the key recorded for it in {file} line {line}: \
         the host was reinstalled or something is intercepting the connection; if the change is expected, \
         remove the old key (`ssh-keygen -R '{host}' -f {file}`) and add the host again"
    )]
    Changed {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error(
        "the SSH host key of {host} ({fingerprint}) is not in {file}: add it (`ssh-keyscan -p PORT HOST >> {file}`) \
         or add the machine with --trust-on-first-use to record it"
    )]
    Unknown {
        host: String,
        fingerprint: String,
        file: String,
    },
    #[error("reading or writing the known_hosts file {file}: {why}")]
    File { file: String, why: String },
}

/// `host` or `[host]:port`, as known_hosts writes it.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

pub fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

/// Checks `key` for `host:port` against `file`; with `tofu`, an unknown host's key is
/// appended to the file (created with its directory when missing).
pub fn check(
    host: &str,
    port: u16,
    key: &PublicKey,
    file: &Path,
    tofu: bool,
) -> Result<Trusted, HostKeyError> {
    let name = host_pattern(host, port);
    let file_s = file.display().to_string();
    let io = |why: String| HostKeyError::File {
        file: file_s.clone(),
        why,
    };
    let recorded = known_host_keys_path(host, port, file).map_err(|e| io(e.to_string()))?;
    let mut changed = None;
    for (line, k) in &recorded {
        if k.key_data() == key.key_data() {
            return Ok(Trusted::Known);
        }
        // Another key of the same algorithm: the host's key changed. A different algorithm
        // is not a contradiction (hosts have several keys), but it does not vouch either.
        if k.algorithm() == key.algorithm() && changed.is_none() {
            changed = Some(*line);
        }
    }
    if let Some(line) = changed {
        return Err(HostKeyError::Changed {
            host: name,
            fingerprint: fingerprint(key),
            file: file_s,
            line,
        });
    }
    if !tofu || !recorded.is_empty() {
        return Err(HostKeyError::Unknown {
            host: name,
            fingerprint: fingerprint(key),
            file: file_s,
        });
    }
    learn(&name, key, file).map_err(|e| io(e.to_string()))?;
    tracing::warn!(host = %name, key = %fingerprint(key), file = %file.display(), "recorded an unknown SSH host key (trust on first use)");
    Ok(Trusted::Learned)
}

/// Appends `name key` as one line (russh's own helper starts a new file with a blank line).
fn learn(name: &str, key: &PublicKey, file: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let before = std::fs::read(file).unwrap_or_default();
    let mut line = String::new();
    if before.last().is_some_and(|b| *b != b'\n') {
        line.push('\n');
    }
    let openssh = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    line.push_str(&format!("{name} {}\n", openssh.trim()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// The default known_hosts file of a server: DATA/ssh/known_hosts.
pub fn default_file(data: &Path) -> PathBuf {
    data.join("ssh").join("known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHgQDB7X6HLijk1Gx19yvXA3IYai/a9XBHb1UwvGLuC5";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIC04wfDCCjcxKu1lonV7L31t9T3UTd/dMgpoxsAwZCAn";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    #[test]
    fn known_unknown_changed_and_tofu() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        let (a, b) = (key(A), key(B));
        let e = check("127.0.0.1", 2222, &a, &file, false).unwrap_err();
        assert!(matches!(e, HostKeyError::Unknown { .. }), "{e}");
        assert!(e.to_string().contains("--trust-on-first-use"), "{e}");
        assert!(!file.exists(), "nothing recorded without TOFU");
        assert_eq!(
            check("127.0.0.1", 2222, &a, &file, true).unwrap(),
            Trusted::Learned
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("[127.0.0.1]:2222 ssh-ed25519 "), "{text}");
        assert_eq!(
            check("127.0.0.1", 2222, &a, &file, false).unwrap(),
            Trusted::Known
        );
        // Same host, another key: refused even with TOFU, and the file is untouched.
        let e = check("127.0.0.1", 2222, &b, &file, true).unwrap_err();
        assert!(matches!(e, HostKeyError::Changed { line: 1, .. }), "{e}");
        assert!(
            e.to_string().contains("ssh-keygen -R '[127.0.0.1]:2222'"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        // Another port is another host.
        assert!(check("127.0.0.1", 2223, &b, &file, false).is_err());
    }

    #[test]
    fn a_comment_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let a = key(A);
        let mut with_comment = a.clone();
        with_comment.set_comment("root@somewhere");
        std::fs::write(&file, format!("h {}\n", with_comment.to_openssh().unwrap())).unwrap();
        assert_eq!(check("h", 22, &a, &file, false).unwrap(), Trusted::Known);
    }
}
