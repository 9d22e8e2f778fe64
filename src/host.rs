//! What the agent and the server both read of the machine they run on.

use std::path::Path;

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
