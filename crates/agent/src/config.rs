//! What enrollment leaves under the agent's root directory, and where everything else lives.
//!
//! `agent.json` holds the server address, the pinned certificate fingerprint (and a renewed
//! one while the server's certificate is being renewed), the machine id, the publisher keys
//! packages must be signed with (with the trust statement serial and the revoked keys), the
//! poll interval and the proxy enrollment was given; `credential` holds
//! the agent's secret (mode 0600, never logged). With several servers on one database,
//! `servers` lists the others; the agent fails over between them (`service::run`).

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/var/lib/patchcast-agent";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub server: String,
    /// More servers of the same installation (sharing one database and the certificate this
    /// agent pins), tried in turn after `server` when a server cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    pub fingerprint: String,
    pub machine_id: String,
    pub publisher_keys: Vec<String>,
    pub poll_ms: u64,
    /// The serial of the last trust statement applied to `publisher_keys` (`agent::trust`).
    #[serde(default)]
    pub trust_serial: u64,
    /// Publisher keys revoked by trust statements: never trusted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<String>,
    /// The renewed server certificate's fingerprint, accepted through a re-pin statement signed
    /// by the pinned one: pinned beside `fingerprint` until the server presents it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fingerprint: Option<String>,
    /// The proxy `enroll` was given, so `run` and `doctor` (started later, by a service
    /// manager without the shell's environment) reach the server the same way.
    #[serde(default, skip_serializing_if = "SavedProxy::is_none")]
    pub proxy: SavedProxy,
}

/// A proxy as given on the command line: its URL and the path of its credentials file,
/// never the credentials themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedProxy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

impl SavedProxy {
    pub fn is_none(&self) -> bool {
        self.url.is_none() && self.credentials_file.is_none()
    }
}

/// Paths under the agent's root directory.
#[derive(Debug, Clone)]
pub struct Root(pub PathBuf);

impl Root {
    pub fn config(&self) -> PathBuf {
        self.0.join("agent.json")
    }
    pub fn credential(&self) -> PathBuf {
        self.0.join("credential")
    }
    pub fn journal(&self) -> PathBuf {
        self.0.join("journal")
    }
    pub fn work(&self, delivery_id: &str) -> PathBuf {
        self.0.join("work").join(delivery_id)
    }
    pub fn endpoint_profile(&self) -> PathBuf {
        self.0.join("endpoint.yaml")
    }
    pub fn reboots_log(&self) -> PathBuf {
        self.0.join("reboots.log")
    }
    /// Where the agent logs when it runs as a Windows service (no console to log to).
    pub fn service_log(&self) -> PathBuf {
        self.0.join("agent.log")
    }
}

impl AgentConfig {
    pub fn load(root: &Root) -> Result<AgentConfig> {
        let path = root.config();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}; enroll this agent first with `patchcast-agent enroll --root {} --server URL --token TOKEN --fingerprint sha256:HEX`",
                path.display(),
                root.0.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", path.display()))
    }

    pub fn save(&self, root: &Root) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomic(&root.config(), &bytes)
    }

    /// Every server URL, `server` first: the order failover tries them in.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.server.clone())
            .chain(self.servers.iter().cloned())
            .collect()
    }

    /// The certificate fingerprints this agent accepts from its server: the pinned one, and
    /// the renewed one while a renewal is under way.
    pub fn pins(&self) -> Vec<String> {
        std::iter::once(self.fingerprint.clone())
            .chain(self.next_fingerprint.clone())
            .collect()
    }

    /// The keys whose signatures this agent accepts; a malformed key is an error, not skipped.
    pub fn trusted_keys(&self) -> Result<Vec<VerifyingKey>> {
        self.publisher_keys
            .iter()
            .map(|k| {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(k.trim(), &mut raw)
                    .with_context(|| format!("publisher key `{k}` is not 64 hex digits"))?;
                VerifyingKey::from_bytes(&raw)
                    .with_context(|| format!("publisher key `{k}` is not an Ed25519 key"))
            })
            .collect()
    }
}

/// The bearer token for agent calls: `<machine_id>.<secret>`.
pub fn bearer(root: &Root, cfg: &AgentConfig) -> Result<String> {
    let path = root.credential();
    let secret = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the agent credential {}", path.display()))?;
    Ok(format!("{}.{}", cfg.machine_id, secret.trim()))
}

/// Writes `bytes` to `path` so that a kill at any moment leaves either the old or the new
/// content: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_order_is_server_then_servers_and_older_files_have_one() {
        let old = r#"{"server":"https://a:1","fingerprint":"sha256:00","machine_id":"m","publisher_keys":[],"poll_ms":1000}"#;
        let mut cfg: AgentConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg.urls(), ["https://a:1"]);
        assert!(!serde_json::to_string(&cfg).unwrap().contains("servers"));
        cfg.servers = vec!["https://b:1".into(), "https://c:1".into()];
        assert_eq!(cfg.urls(), ["https://a:1", "https://b:1", "https://c:1"]);
        let back: AgentConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
