//! What the agent and the server both read of the machine they run on.

use std::path::Path;

/// A secret kept in a file (a token, a database URL with its password): read and trimmed.
/// Secrets come from files or the environment, never from argv, which every user of the
/// machine can read in the process list.
pub fn secret_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the secret in {}: {e}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret.to_string())
}

/// The mount point containing `path`, its free and total bytes.
pub fn disk_of(path: &Path) -> (String, u64, u64) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let disks = sysinfo::Disks::new_with_refreshed_list().ok();
    let best = disks.as_ref().and_then(|d| {
        d.iter()
            .filter(|d| path.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
    });
    match best {
        Some(d) => (
            d.mount_point().display().to_string(),
            d.available_space(),
            d.total_space(),
        ),
        None => (String::from("/"), 0, 0),
    }
}
