//! Payload files on disk: a listed path is archived only when it is a regular file reached
//! through real directories of the package, so a link (`sub -> /etc`, payload `sub/passwd`)
//! can never sign a file from outside the package into an archive.

use std::fs::{File, Metadata};
use std::path::Path;

/// Why a listed payload path cannot be archived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("`{0}` is not in the package directory")]
    Missing(String),
    #[error("`{path}` goes through the symbolic link `{link}`")]
    Link { path: String, link: String },
    #[error("`{0}` is not a regular file")]
    NotRegular(String),
}

/// Checks `rel` (a `/`-separated path already checked to be relative) below `dir` without
/// following any link.
pub fn check(dir: &Path, rel: &str) -> Result<Metadata, Refusal> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let shown = parts[..=i].join("/");
        let meta = std::fs::symlink_metadata(&path).map_err(|_| Refusal::Missing(rel.into()))?;
        if meta.file_type().is_symlink() {
            return Err(Refusal::Link {
                path: rel.into(),
                link: shown,
            });
        }
        let last = i + 1 == parts.len();
        if last && meta.is_file() {
            return Ok(meta);
        }
        if last || !meta.is_dir() {
            return Err(Refusal::NotRegular(shown));
        }
    }
    Err(Refusal::Missing(rel.into()))
}

/// Opens a payload file that `check` accepts, refusing one swapped for another file or a
/// link between the check and the open.
pub fn open(dir: &Path, rel: &str) -> anyhow::Result<(File, Metadata)> {
    let checked = check(dir, rel)?;
    let path = dir.join(rel);
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let file = options
        .open(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let opened = file.metadata()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        anyhow::ensure!(
            (opened.dev(), opened.ino()) == (checked.dev(), checked.ino()),
            "payload `{rel}` changed while it was being opened"
        );
    }
    anyhow::ensure!(opened.is_file(), Refusal::NotRegular(rel.into()));
    Ok((file, checked))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn regression_build_follows_links_out_of_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path();
        std::os::unix::fs::symlink("/etc", pkg.join("sub")).unwrap();
        std::fs::create_dir(pkg.join("real")).unwrap();
        std::fs::write(pkg.join("real/file"), b"x").unwrap();
        std::os::unix::fs::symlink("real/file", pkg.join("alias")).unwrap();
        assert_eq!(
            check(pkg, "sub/passwd").unwrap_err(),
            Refusal::Link {
                path: "sub/passwd".into(),
                link: "sub".into()
            }
        );
        assert!(matches!(check(pkg, "alias"), Err(Refusal::Link { .. })));
        assert_eq!(
            check(pkg, "real").unwrap_err(),
            Refusal::NotRegular("real".into())
        );
        assert_eq!(
            check(pkg, "real/file/x").unwrap_err(),
            Refusal::NotRegular("real/file".into())
        );
        assert!(open(pkg, "sub/passwd").is_err());
        assert_eq!(open(pkg, "real/file").unwrap().1.len(), 1);
    }
}
