//! What this Windows machine is and has, read from the registry, WMI and kernel32. Each reader
//! returns the raw values; `core::facts::windows` says what they mean.

use super::registry::{dword, open, open_all, string, subkeys};
use patchcast_core::facts::windows::{self as rules, WindowsVersion};
use patchcast_core::identify::Facts;
use patchcast_core::model::package::SpLevel;
use patchcast_core::model::types::UpdateId;
use patchcast_proto::protocol::Interface;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const CURRENT_VERSION: &str = "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion";

/// The version numbers, product type and edition the registry reports.
pub fn version() -> WindowsVersion {
    let cv = open(CURRENT_VERSION);
    let (major, minor) = match cv.as_ref().map(|k| {
        (
            dword(k, "CurrentMajorVersionNumber"),
            dword(k, "CurrentMinorVersionNumber"),
        )
    }) {
        Some((Some(major), Some(minor))) => (major, minor),
        _ => rules::version_numbers(
            &cv.as_ref()
                .map(|k| string(k, "CurrentVersion"))
                .unwrap_or_default(),
        ),
    };
    let build = cv
        .as_ref()
        .map(|k| string(k, "CurrentBuild"))
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or(0);
    let product_type = open("HKLM\\SYSTEM\\CurrentControlSet\\Control\\ProductOptions")
        .map(|k| string(&k, "ProductType"))
        .unwrap_or_default();
    let edition = cv
        .as_ref()
        .map(|k| {
            let id = string(k, "EditionID");
            if id.is_empty() {
                string(k, "ProductName")
            } else {
                id
            }
        })
        .unwrap_or_default();
    WindowsVersion {
        major,
        minor,
        build,
        server: !product_type.eq_ignore_ascii_case("WinNT") && !product_type.is_empty(),
        edition,
    }
}

/// `Microsoft Windows 10 Pro 10.0.18362 Service Pack 1`, as an administrator reads it.
pub fn os_version_text() -> String {
    let v = version();
    let cv = open(CURRENT_VERSION);
    let product = cv
        .as_ref()
        .map(|k| string(k, "ProductName"))
        .unwrap_or_default();
    let csd = cv
        .as_ref()
        .map(|k| string(k, "CSDVersion"))
        .unwrap_or_default();
    format!("{product} {}.{}.{} {csd}", v.major, v.minor, v.build)
        .trim()
        .to_string()
}

/// The system UI language (what language-specific updates are built for).
pub fn language() -> String {
    // SAFETY: no arguments, no memory; answers the LANGID of the system UI language.
    let langid = unsafe { windows_sys::Win32::Globalization::GetSystemDefaultUILanguage() };
    rules::language(langid)
}

/// OS (catalog id), architecture, language and service pack of this machine.
pub fn machine() -> Facts {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        _ => "x86",
    };
    Facts {
        os: rules::os_id(&version()),
        arch: arch.into(),
        language: language(),
        service_pack: Some(service_pack()),
        ..Facts::default()
    }
}

pub fn service_pack() -> SpLevel {
    let number = open("HKLM\\SYSTEM\\CurrentControlSet\\Control\\Windows")
        .and_then(|k| dword(&k, "CSDVersion"));
    let text = open(CURRENT_VERSION)
        .map(|k| string(&k, "CSDVersion"))
        .unwrap_or_default();
    rules::service_pack(number, &text)
}

/// Installed updates from every interface that lists them: WMI's
/// `Win32_QuickFixEngineering`, the component-servicing packages (Vista and later), and the
/// hotfix keys Windows 2000, XP and Server 2003 keep. `None` when no interface answered.
pub fn installed_updates() -> Option<BTreeSet<UpdateId>> {
    let wmi = quick_fix_engineering();
    let mut found = BTreeSet::new();
    let mut answered = wmi.is_some();
    found.extend(wmi.into_iter().flatten());
    let servicing =
        "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\Packages";
    if let Some(packages) = open(servicing) {
        answered = true;
        for name in subkeys(&packages) {
            let installed = packages
                .open_subkey(&name)
                .ok()
                .and_then(|k| dword(&k, "CurrentState"))
                .is_some_and(rules::servicing_installed);
            if installed && let Some(u) = rules::update_of(&name) {
                found.insert(u);
            }
        }
    }
    // Hotfix\KB958644 and Updates\<product>\<SP>\KB958644 (the key names are the updates).
    if let Some(hotfix) = open(&format!("{CURRENT_VERSION}\\Hotfix")) {
        answered = true;
        found.extend(subkeys(&hotfix).iter().filter_map(|n| rules::update_of(n)));
    }
    for updates in open_all("HKLM\\SOFTWARE\\Microsoft\\Updates") {
        answered = true;
        for product in subkeys(&updates) {
            let Ok(p) = updates.open_subkey(&product) else {
                continue;
            };
            for level in subkeys(&p) {
                if let Ok(l) = p.open_subkey(&level) {
                    found.extend(subkeys(&l).iter().filter_map(|n| rules::update_of(n)));
                }
            }
        }
    }
    answered.then_some(found)
}

#[derive(serde::Deserialize)]
#[serde(rename = "Win32_QuickFixEngineering")]
#[serde(rename_all = "PascalCase")]
struct QuickFix {
    #[serde(rename = "HotFixID")]
    hot_fix_id: Option<String>,
}

/// `SELECT HotFixID FROM Win32_QuickFixEngineering` over COM (what `wmic qfe` used to print).
fn quick_fix_engineering() -> Option<Vec<UpdateId>> {
    let run = || -> Result<Vec<QuickFix>, wmi::WMIError> {
        let con = wmi::WMIConnection::new()?;
        con.raw_query("SELECT HotFixID FROM Win32_QuickFixEngineering")
    };
    match run() {
        Ok(rows) => Some(
            rows.into_iter()
                .filter_map(|r| rules::update_of(r.hot_fix_id.as_deref()?))
                .collect(),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "WMI did not list the installed updates");
            None
        }
    }
}

const UNINSTALL: &str = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall";

/// Installed programs as Programs and Features lists them, from both registry views: each
/// under its display name and its key (an MSI product code), with its display version.
pub fn installed_programs() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for uninstall in open_all(UNINSTALL) {
        for key_name in subkeys(&uninstall) {
            let Ok(k) = uninstall.open_subkey(&key_name) else {
                continue;
            };
            let version = string(&k, "DisplayVersion");
            let name = string(&k, "DisplayName");
            if !name.is_empty() {
                out.insert(name, version.clone());
            }
            out.insert(key_name, version);
        }
    }
    out
}

/// The installed version of a program named by display name or product code (case-insensitive,
/// as Windows compares them); `None` when it is not installed.
pub fn program_version(name: &str) -> Option<String> {
    installed_programs()
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Whether Windows itself waits for a restart: component servicing, Windows Update, or
/// file renames queued for the next boot.
pub fn reboot_pending() -> bool {
    open("HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending").is_some()
        || open("HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired").is_some()
        || open("HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager")
            .is_some_and(|k| k.get_raw_value("PendingFileRenameOperations").is_ok())
}

/// `%SystemRoot%\System32\x.dll` → `C:\Windows\System32\x.dll`, from this process's environment.
pub fn expand(path: &str) -> String {
    rules::expand_vars(path, |name| std::env::var(name).ok())
}

fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    s.encode_wide().chain(Some(0)).collect()
}

/// The volume of `path` (`C:`), its free bytes (as this process may use them) and its size.
pub fn disk_of(path: &Path) -> (String, u64, u64) {
    use windows_sys::Win32::Storage::FileSystem::{GetDiskFreeSpaceExW, GetVolumePathNameW};
    let p = wide(path.as_os_str());
    let mut volume = [0u16; 261];
    // SAFETY: `p` is NUL-terminated; `volume` is writable for the length given.
    let ok = unsafe { GetVolumePathNameW(p.as_ptr(), volume.as_mut_ptr(), volume.len() as u32) };
    let volume = if ok != 0 {
        let end = volume.iter().position(|c| *c == 0).unwrap_or(volume.len());
        String::from_utf16_lossy(&volume[..end])
    } else {
        std::env::var("SystemDrive").unwrap_or_else(|_| "C:".into()) + "\\"
    };
    let v = wide(std::ffi::OsStr::new(&volume));
    let (mut free, mut total, mut total_free) = (0u64, 0u64, 0u64);
    // SAFETY: `v` is NUL-terminated; the three out-pointers are valid u64s.
    let ok = unsafe { GetDiskFreeSpaceExW(v.as_ptr(), &mut free, &mut total, &mut total_free) };
    if ok == 0 {
        return (volume.trim_end_matches('\\').to_string(), 0, 0);
    }
    (volume.trim_end_matches('\\').to_string(), free, total)
}

/// Every network adapter with its MAC and addresses, from `GetAdaptersAddresses` (what
/// `ipconfig /all` lists; Wine answers it too, where sysinfo's interface list stays empty).
pub fn interfaces() -> Vec<Interface> {
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST,
        GetAdaptersAddresses, IP_ADAPTER_ADDRESSES_LH,
    };
    use windows_sys::Win32::Networking::WinSock::{
        AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_IN, SOCKADDR_IN6,
    };
    const ERROR_BUFFER_OVERFLOW: u32 = 111;
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    // u64 words keep the list's structures aligned.
    let mut buf: Vec<u64> = vec![0; 2048];
    let mut size = (buf.len() * 8) as u32;
    let mut tries = 0;
    loop {
        // SAFETY: `buf` is writable for `size` bytes; the call fills it or says how many it needs.
        let rc = unsafe {
            GetAdaptersAddresses(
                AF_UNSPEC as u32,
                flags,
                std::ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut size,
            )
        };
        match rc {
            0 => break,
            ERROR_BUFFER_OVERFLOW if tries < 3 => {
                buf = vec![0; (size as usize).div_ceil(8)];
                tries += 1;
            }
            _ => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    let mut adapter = buf.as_ptr() as *const IP_ADAPTER_ADDRESSES_LH;
    // SAFETY: the list and everything it points to live in `buf`, as the call filled it.
    unsafe {
        while let Some(a) = adapter.as_ref() {
            let name = wide_to_string(a.FriendlyName);
            let len = (a.PhysicalAddressLength as usize).min(a.PhysicalAddress.len());
            let mac = a.PhysicalAddress[..len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            let mut addresses = Vec::new();
            let mut unicast = a.FirstUnicastAddress;
            while let Some(u) = unicast.as_ref() {
                let sa = u.Address.lpSockaddr;
                if let Some(family) = sa.as_ref().map(|s| s.sa_family) {
                    if family == AF_INET {
                        let v4 = &*(sa as *const SOCKADDR_IN);
                        let octets = v4.sin_addr.S_un.S_addr.to_ne_bytes();
                        addresses.push(std::net::IpAddr::from(octets));
                    } else if family == AF_INET6 {
                        let v6 = &*(sa as *const SOCKADDR_IN6);
                        addresses.push(std::net::IpAddr::from(v6.sin6_addr.u.Byte));
                    }
                }
                unicast = u.Next;
            }
            addresses.sort();
            out.push(Interface {
                name,
                mac,
                addresses,
            });
            adapter = a.Next;
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A NUL-terminated UTF-16 string from the system.
///
/// # Safety
/// `p` is null or points to a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller promises a terminator.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}
