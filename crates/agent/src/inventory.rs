//! The machine inventory the agent reports: at start, and whenever its content changes.
//!
//! Cheap parts (host name, interfaces, disk, pending reboot) are read on every loop iteration;
//! the installed package list (dpkg/rpm, a process spawn; on Windows the programs and the
//! installed updates, a WMI query) is refreshed only every few minutes.
//! Changes are detected by a hash of the content with free disk space rounded, so a log file
//! growing does not resend the inventory on every poll.

use super::emulated::Endpoint;
use patchcast_proto::protocol::{Interface, Inventory};
use std::collections::BTreeMap;
use std::path::Path;
#[cfg(not(windows))]
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the installed package list is read again.
const PACKAGES_EVERY: Duration = Duration::from_secs(300);

/// Keeps the expensive parts between iterations.
#[derive(Default)]
pub struct Collector {
    packages: BTreeMap<String, String>,
    updates: Vec<String>,
    packages_read: Option<Instant>,
}

#[cfg(windows)]
fn interfaces() -> Vec<Interface> {
    crate::windows::system::interfaces()
}

/// Every network interface with its MAC and all of its addresses (machines with several NICs
/// are reported as they are; no "primary address" guess).
#[cfg(not(windows))]
fn interfaces() -> Vec<Interface> {
    let Ok(nets) = sysinfo::Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut list: Vec<Interface> = nets
        .iter()
        .map(|(name, data)| Interface {
            name: name.to_string_lossy().into_owned(),
            mac: data.mac_address().to_string(),
            addresses: data.ip_networks().iter().map(|n| n.addr).collect(),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    for i in &mut list {
        i.addresses.sort();
    }
    list
}

#[cfg(windows)]
fn installed_packages() -> BTreeMap<String, String> {
    crate::windows::system::installed_programs()
}

#[cfg(windows)]
fn installed_updates() -> Vec<String> {
    crate::windows::system::installed_updates()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Windows only: Linux has no update list besides its packages.
#[cfg(not(windows))]
fn installed_updates() -> Vec<String> {
    Vec::new()
}

#[cfg(not(windows))]
fn installed_packages() -> BTreeMap<String, String> {
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = dpkg
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (name, version, status) = (f.next()?, f.next()?, f.next()?);
                status
                    .starts_with("ii")
                    .then(|| (name.to_string(), version.to_string()))
            })
            .collect();
    }
    let rpm = Command::new("rpm")
        .args(["-qa", "--qf", "%{NAME}\t%{EPOCH}:%{VERSION}-%{RELEASE}\n"])
        .stderr(Stdio::null())
        .output();
    match rpm {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once('\t')?;
                Some((n.to_string(), v.replace("(none):", "")))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(windows)]
fn os_pretty_name() -> String {
    crate::windows::system::os_version_text()
}

#[cfg(not(windows))]
fn os_pretty_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .or_else(|| sysinfo::System::long_os_version().ok())
        .unwrap_or_default()
}

fn memory_total() -> u64 {
    let Ok(mut sys) = sysinfo::System::new() else {
        return 0;
    };
    sys.refresh_memory();
    sys.total_memory()
}

/// Whether the OS itself says a restart is pending (Debian's flag file).
#[cfg(not(windows))]
fn os_reboot_flag() -> bool {
    Path::new("/var/run/reboot-required").exists()
}

/// Whether Windows itself says a restart is pending (servicing, Windows Update, file renames).
#[cfg(windows)]
fn os_reboot_flag() -> bool {
    crate::windows::system::reboot_pending()
}

impl Collector {
    /// The inventory now. `root` is the agent's root (its disk is the system drive);
    /// `reboot_pending` comes from the journal (a delivery waiting for a restart).
    pub fn collect(
        &mut self,
        root: &Path,
        endpoint: Option<&Endpoint>,
        reboot_pending: bool,
    ) -> Inventory {
        let agent_version = super::stamp::version();
        let boot_time = sysinfo::System::boot_time().unwrap_or(0);
        if let Some(e) = endpoint {
            let p = &e.profile;
            return Inventory {
                hostname: p.hostname.clone(),
                os: p.os.clone(),
                os_version: format!("{} (emulated)", p.os),
                arch: p.arch.clone(),
                language: p.language.clone(),
                service_pack: p.service_pack.clone(),
                system_drive: "C:".into(),
                disk_free: p.free_disk_bytes,
                disk_total: p.total_disk_bytes.unwrap_or(p.free_disk_bytes),
                memory_total: memory_total(),
                interfaces: interfaces(),
                agent_version,
                boot_time,
                pending_reboot: reboot_pending,
                packages: BTreeMap::new(),
                installed_updates: p.installed_updates.clone(),
                emulated: true,
            };
        }
        if self
            .packages_read
            .is_none_or(|t| t.elapsed() >= PACKAGES_EVERY)
        {
            self.packages = installed_packages();
            self.updates = installed_updates();
            self.packages_read = Some(Instant::now());
        }
        let machine = super::facts::machine();
        let (system_drive, disk_free, disk_total) = super::facts::disk_of(root);
        Inventory {
            // Several agents on one host (containers, the demo) tell themselves apart by name.
            hostname: std::env::var("PATCHCAST_AGENT_HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| sysinfo::System::host_name().ok())
                .unwrap_or_default(),
            os: machine.os,
            os_version: os_pretty_name(),
            arch: machine.arch,
            language: machine.language,
            service_pack: machine.service_pack.map(|sp| sp.to_string()),
            system_drive,
            disk_free,
            disk_total,
            memory_total: memory_total(),
            interfaces: interfaces(),
            agent_version,
            boot_time,
            pending_reboot: reboot_pending || os_reboot_flag(),
            packages: self.packages.clone(),
            installed_updates: self.updates.clone(),
            emulated: false,
        }
    }

    /// Forces the package list to be read again at the next `collect` (after an install).
    pub fn invalidate_packages(&mut self) {
        self.packages_read = None;
    }
}

/// A hash of what matters in the inventory: free space is rounded to 1/100 of the disk (at
/// least 64 MiB) so ordinary churn does not count as a change.
pub fn content_hash(inv: &Inventory) -> String {
    let mut inv = inv.clone();
    let step = (inv.disk_total / 100).max(64 << 20);
    inv.disk_free = inv.disk_free / step * step;
    let bytes = serde_json::to_vec(&inv).unwrap_or_default();
    patchcast_pack::hash::sha256_bytes(&bytes).hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_inventory_is_truthful() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Collector::default().collect(dir.path(), None, false);
        assert!(!inv.os.is_empty() && !inv.arch.is_empty());
        assert!(inv.disk_total > 0 && inv.disk_free <= inv.disk_total);
        assert!(inv.interfaces.iter().any(|i| i.name == "lo"));
        assert!(inv.boot_time > 0);
        if Path::new("/var/lib/dpkg/status").exists() {
            assert!(inv.packages.contains_key("dpkg"), "dpkg lists itself");
        }
    }

    #[test]
    fn small_free_space_changes_do_not_change_the_hash() {
        let inv = Inventory {
            disk_total: 100 << 30,
            disk_free: 50 << 30,
            ..Inventory::default()
        };
        let mut a = inv.clone();
        a.disk_free += 4096;
        assert_eq!(content_hash(&inv), content_hash(&a));
        a.disk_free += 10 << 30;
        assert_ne!(content_hash(&inv), content_hash(&a));
        let mut b = inv.clone();
        b.pending_reboot = true;
        assert_ne!(content_hash(&inv), content_hash(&b));
    }
}
