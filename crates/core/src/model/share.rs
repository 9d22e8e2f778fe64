//! SMB share URLs (`smb://host[:port]/share[/dir…]`): parsed here, where sources are
//! checked, and used by the SMB client to connect.

use std::fmt;

/// Why a text is not an SMB share URL, with the form to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadShareUrl(pub String);

/// `smb://host[:port]/share[/dir…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareUrl {
    pub host: String,
    pub port: u16,
    pub share: String,
    /// Directory inside the share, `/`-separated, no leading or trailing `/`.
    pub dir: String,
}

impl ShareUrl {
    pub fn parse(url: &str) -> Result<ShareUrl, BadShareUrl> {
        let bad = |why: &str| {
            BadShareUrl(format!(
                "`{url}` is not an SMB share URL ({why}); write smb://HOST[:PORT]/SHARE[/DIR]"
            ))
        };
        let rest = url.strip_prefix("smb://").ok_or_else(|| bad("no smb://"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no share"))?;
        if authority.contains('@') {
            return Err(bad(
                "credentials do not go in the URL; use PATCHCAST_SMB_USER/PATCHCAST_SMB_PASSWORD or --credentials FILE",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, 445),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let share = parts.next().ok_or_else(|| bad("no share"))?.to_string();
        let dir: Vec<&str> = parts.collect();
        if dir
            .iter()
            .any(|p| *p == ".." || *p == "." || p.contains('\\'))
        {
            return Err(bad("`.`, `..` and backslashes are not allowed in the path"));
        }
        Ok(ShareUrl {
            host: host.to_string(),
            port,
            share,
            dir: dir.join("/"),
        })
    }

    /// Where content `name` lives inside the share, `\`-separated as SMB wants.
    pub fn file_path(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_string()
        } else {
            format!("{}\\{name}", self.dir.replace('/', "\\"))
        }
    }
}

impl fmt::Display for ShareUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "smb://{}:{}/{}", self.host, self.port, self.share)?;
        if !self.dir.is_empty() {
            write!(f, "/{}", self.dir)?;
        }
        Ok(())
    }
}
