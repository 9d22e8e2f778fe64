//! SMB shares as an update source and a publish target, over the `smb` crate (pure Rust,
//! SMB 3.1.1 with signing and encryption, NTLM).
//!
//! A share directory holds archives named `<sha256>.pcpkg`, the same content addressing as
//! the server's store, so any reader verifies what it got by the name it asked for. Every SMB
//! call runs under a time limit (a silent server must not hang an agent), requests stay at
//! 1 MiB or less, and reads keep several requests in flight: the crate's transport does not
//! set TCP_NODELAY, so one read at a time would wait for delayed ACKs (see TESTBED.md).
//!
//! Credentials come from `PATCHCAST_SMB_USER` / `PATCHCAST_SMB_PASSWORD` or a file of
//! `user=` and `password=` lines; the password is never printed, logged or put in an error.

use std::fmt;

pub use patchcast_core::model::share::ShareUrl;
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "smb")]
mod client;
#[cfg(feature = "smb")]
pub use client::Share;

/// Without the `smb` feature every share operation fails with `NotBuiltIn`.
#[cfg(not(feature = "smb"))]
pub struct Share;

#[cfg(not(feature = "smb"))]
impl Share {
    pub async fn connect(_: &ShareUrl, _: &Credentials) -> Result<Share, SmbError> {
        Err(SmbError::NotBuiltIn)
    }
    pub async fn download(
        &self,
        _: &str,
        _: u64,
        _: u64,
        _: &mut std::fs::File,
        _: &Path,
    ) -> Result<u64, SmbError> {
        Err(SmbError::NotBuiltIn)
    }
    pub async fn upload(&self, _: &Path, _: &str) -> Result<u64, SmbError> {
        Err(SmbError::NotBuiltIn)
    }
    pub async fn close(self) {}
}

/// Longest a single SMB call may take.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A user name and a password that never shows up in Debug or Display.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    #[cfg_attr(not(feature = "smb"), allow(dead_code))]
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: *** }}", self.user)
    }
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// From `file` when given, else from PATCHCAST_SMB_USER and PATCHCAST_SMB_PASSWORD.
    pub fn load(file: Option<&Path>) -> Result<Credentials, SmbError> {
        if let Some(f) = file {
            return Self::from_file(f);
        }
        match (
            std::env::var("PATCHCAST_SMB_USER"),
            std::env::var("PATCHCAST_SMB_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) if !u.is_empty() => Ok(Credentials::new(&u, &p)),
            _ => Err(SmbError::NoCredentials(
                "no SMB credentials: set PATCHCAST_SMB_USER and PATCHCAST_SMB_PASSWORD, or give a file of `user=` and `password=` lines".into(),
            )),
        }
    }

    pub fn from_file(path: &Path) -> Result<Credentials, SmbError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SmbError::NoCredentials(format!("reading SMB credentials {}: {e}", path.display()))
        })?;
        let (mut user, mut password) = (None, None);
        for line in text.lines().map(str::trim) {
            if let Some(v) = line
                .strip_prefix("user=")
                .or(line.strip_prefix("username="))
            {
                user = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("password=") {
                password = Some(v.to_string());
            }
        }
        match (user, password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Credentials::new(&u, &p)),
            _ => Err(SmbError::NoCredentials(format!(
                "{} needs a `user=NAME` line and a `password=SECRET` line",
                path.display()
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmbError {
    #[error("{0}")]
    Url(String),
    #[error("{0}")]
    NoCredentials(String),
    #[error("this patchcast was built without SMB support (cargo feature `smb`)")]
    NotBuiltIn,
    #[error("cannot reach the SMB server {share}: {detail}")]
    Unreachable { share: String, detail: String },
    #[error(
        "the SMB server {share} refused the user name or password for `{user}` (logon failure); check the credentials (the password is not shown)"
    )]
    LogonFailure { share: String, user: String },
    #[error("{share}: no file {name} on the share")]
    NotFound { share: String, name: String },
    #[error("{share}: {what} took longer than {secs} s", secs = CALL_LIMIT.as_secs())]
    Timeout { share: String, what: String },
    #[error("{share}: {detail}")]
    Failed { share: String, detail: String },
    #[error("writing {path}: {err}")]
    Local { path: String, err: std::io::Error },
}

/// The name content with this hash has on a share (and under an HTTPS source).
pub fn content_name(sha256: &patchcast_core::model::types::Sha256) -> String {
    format!("{}.pcpkg", sha256.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ShareUrl::parse("smb://127.0.0.1:4450/patches/a/b/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.share.as_str(), u.dir.as_str()),
            ("127.0.0.1", 4450, "patches", "a/b")
        );
        assert_eq!(u.file_path("x.pcpkg"), "a\\b\\x.pcpkg");
        assert_eq!(u.to_string(), "smb://127.0.0.1:4450/patches/a/b");
        let u = ShareUrl::parse("smb://files/share").unwrap();
        assert_eq!((u.port, u.dir.as_str()), (445, ""));
        for (bad, why) in [
            ("//files/share", "no smb://"),
            ("smb://files", "no share"),
            ("smb://u:pw@files/share", "credentials do not go in the URL"),
            ("smb://files:x/share", "bad port"),
            ("smb://files/share/../x", "`..`"),
        ] {
            let e = ShareUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::new("alice", "s3cret-pw");
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let e = SmbError::LogonFailure {
            share: "smb://h:1/s".into(),
            user: c.user.clone(),
        };
        assert!(!e.to_string().contains("s3cret-pw"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, "user=alice\npassword= spaced pw\n").unwrap();
        let c = Credentials::from_file(&f).unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("alice", " spaced pw")
        );
        std::fs::write(&f, "user=alice\n").unwrap();
        assert!(
            Credentials::from_file(&f)
                .unwrap_err()
                .to_string()
                .contains("password=")
        );
    }
}
