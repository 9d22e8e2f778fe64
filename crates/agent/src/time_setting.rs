//! The auto-update time setting this agent holds (`ROOT/time-setting.json`).
//!
//! The server enforces windows and holds itself, so an agent with an old setting (or none)
//! still gets no work outside its window. The agent keeps the setting the server sent and
//! reports its version on each poll, which is how `patchcast results` shows the setting each
//! machine actually has (and the FAQ's W15/W16 when it could not be given one). The session is
//! random per process start, so the server can tell a restart from a long poll.

use super::config::write_atomic;
use anyhow::{Context, Result};
use patchcast_proto::protocol::TimeSetting;
use std::path::{Path, PathBuf};

pub struct Held {
    path: PathBuf,
    pub version: u64,
    pub session: String,
}

impl Held {
    pub fn load(root: &Path) -> Result<Held> {
        let path = root.join("time-setting.json");
        let version = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<TimeSetting>(&b)
                    .with_context(|| format!("reading {}", path.display()))?
                    .version
            }
            Err(_) => 0,
        };
        Ok(Held {
            path,
            version,
            session: patchcast_pack::keys::random_hex(8)?,
        })
    }

    /// Keeps a setting the server sent; later polls report its version.
    pub fn keep(&mut self, s: &TimeSetting) -> Result<()> {
        write_atomic(&self.path, &serde_json::to_vec_pretty(s)?)?;
        self.version = s.version;
        let windows: Vec<String> = s
            .policies
            .iter()
            .flat_map(|p| {
                p.windows.iter().map(move |w| {
                    format!(
                        "{}: {} for {}s {}",
                        p.group, w.start, w.duration_secs, w.time_zone
                    )
                })
            })
            .collect();
        tracing::info!(
            version = s.version,
            ?windows,
            "auto-update time setting applied"
        );
        Ok(())
    }
}
