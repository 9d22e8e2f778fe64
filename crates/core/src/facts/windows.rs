//! What a Windows machine's registry and APIs say, in the catalog's terms. The agent reads the
//! raw values (`agent::windows`); these functions decide what they mean, so they are tested on
//! any host and an emulated endpoint can use the same rules.

use crate::model::package::SpLevel;
use crate::model::types::{KbNumber, UpdateId};

/// The version numbers and product type Windows reports (`CurrentMajorVersionNumber`,
/// `CurrentMinorVersionNumber` or `CurrentVersion`, `CurrentBuild`, `ProductOptions\ProductType`,
/// `EditionID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowsVersion {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    /// `ServerNT` or `LanmanNT` (a domain controller); `WinNT` is a workstation.
    pub server: bool,
    /// `EditionID` (`ServerEnterprise`), else the product name.
    pub edition: String,
}

/// The catalog OS id. Decided from the version numbers and product type, never from the product
/// name alone: Windows 11 still says "Windows 10" there, and Wine says "Microsoft Windows 10".
pub fn os_id(v: &WindowsVersion) -> String {
    let enterprise = v.edition.to_ascii_lowercase().contains("enterprise");
    let edition = if enterprise { "enterprise" } else { "standard" };
    match (v.major, v.minor, v.server) {
        (5, 0, true) if v.edition.to_ascii_lowercase().contains("advanced") => {
            "windows-2000-advanced-server".into()
        }
        (5, 0, true) => "windows-2000-server".into(),
        (5, 0, false) => "windows-2000-professional".into(),
        (5, 1, _) | (5, 2, false) => "windows-xp".into(),
        (5, 2, true) => format!("windows-server-2003-{edition}"),
        (6, 0, true) => format!("windows-server-2008-{edition}"),
        (6, 0, false) => "windows-vista".into(),
        (6, 1, true) => "windows-server-2008-r2".into(),
        (6, 1, false) => "windows-7".into(),
        (6, 2, true) => "windows-server-2012".into(),
        (6, 2, false) => "windows-8".into(),
        (6, 3, true) => "windows-server-2012-r2".into(),
        (6, 3, false) => "windows-8.1".into(),
        (10, 0, true) => match v.build {
            26100.. => "windows-server-2025",
            20348.. => "windows-server-2022",
            17763.. => "windows-server-2019",
            _ => "windows-server-2016",
        }
        .into(),
        (10, 0, false) if v.build >= 22000 => "windows-11".into(),
        (10, 0, false) => "windows-10".into(),
        (major, minor, _) => format!("windows-{major}.{minor}"),
    }
}

/// `CurrentVersion` text (`6.1`) → (major, minor), for releases without the number values.
pub fn version_numbers(current_version: &str) -> (u32, u32) {
    let mut parts = current_version.trim().split('.');
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The catalog language of a Windows LANGID (`GetSystemDefaultUILanguage`: 0x0411 → `ja`).
/// Regions are kept only where the catalog tells them apart (Chinese, Portuguese).
pub fn language(langid: u16) -> String {
    let tag = match (langid & 0x3ff, langid >> 10) {
        (0x04, 0x02 | 0x04) => "zh-cn",
        (0x04, _) => "zh-tw",
        (0x16, 0x01) => "pt-br",
        (0x16, _) => "pt-pt",
        (0x1a, 0x01) => "hr",
        (0x1a, _) => "sr",
        (primary, _) => PRIMARY
            .iter()
            .find(|(id, _)| *id == primary)
            .map(|(_, t)| *t)
            .unwrap_or("en"),
    };
    tag.into()
}

/// Primary language ids (winnt.h `LANG_*`) of the catalog's languages.
const PRIMARY: &[(u16, &str)] = &[
    (0x01, "ar"),
    (0x02, "bg"),
    (0x05, "cs"),
    (0x06, "da"),
    (0x07, "de"),
    (0x08, "el"),
    (0x09, "en"),
    (0x0a, "es"),
    (0x0b, "fi"),
    (0x0c, "fr"),
    (0x0d, "he"),
    (0x0e, "hu"),
    (0x10, "it"),
    (0x11, "ja"),
    (0x12, "ko"),
    (0x13, "nl"),
    (0x14, "nb"),
    (0x15, "pl"),
    (0x18, "ro"),
    (0x19, "ru"),
    (0x1b, "sk"),
    (0x1d, "sv"),
    (0x1e, "th"),
    (0x1f, "tr"),
    (0x22, "uk"),
    (0x24, "sl"),
    (0x25, "et"),
    (0x26, "lv"),
    (0x27, "lt"),
];

/// The service-pack level: `HKLM\SYSTEM\CurrentControlSet\Control\Windows\CSDVersion` (a DWORD,
/// major in the high byte: 0x200 = SP2) when present, else the `CSDVersion` text
/// (`Service Pack 2`); neither means no service pack (0.0, as on every release since 2012).
pub fn service_pack(csd_number: Option<u32>, csd_text: &str) -> SpLevel {
    if let Some(n) = csd_number.filter(|n| *n > 0) {
        return SpLevel {
            major: (n >> 8) & 0xff,
            minor: n & 0xff,
        };
    }
    let major = csd_text
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    SpLevel { major, minor: 0 }
}

/// The update a registry or WMI name stands for: `KB958644`, a legacy `Q246009` (the same
/// article under its old name), or a component-servicing package name
/// (`Package_for_KB5005565~31bf3856ad364e35~amd64~~19041.1237.1.8`).
pub fn update_of(name: &str) -> Option<UpdateId> {
    let identity = name.split('~').next().unwrap_or(name);
    let upper = identity.to_ascii_uppercase();
    if let Some(rest) = upper.strip_prefix('Q')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("KB{rest}").parse().ok();
    }
    // The KB number is the longest run of digits after a "KB" in the identity.
    upper.match_indices("KB").find_map(|(i, _)| {
        let digits: String = upper[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        format!("KB{digits}")
            .parse::<KbNumber>()
            .ok()
            .map(UpdateId::Kb)
    })
}

/// Whether a component-servicing package's `CurrentState` counts as installed: installed
/// (0x70), permanent (0x80) or superseded by a later installed update (0x50). Install pending
/// (0x60) waits for a restart and is not applied yet.
pub fn servicing_installed(current_state: u32) -> bool {
    matches!(current_state, 0x50 | 0x70 | 0x80)
}

/// `%SystemRoot%\System32\x.dll` with each `%NAME%` that `lookup` knows replaced (names are
/// case-insensitive on Windows); unknown names are kept as written.
pub fn expand_vars(path: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end) if end > 0 => match lookup(&after[..end].to_ascii_lowercase()) {
                Some(value) => {
                    out.push_str(&value);
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..start + end + 2]);
                    rest = &after[end + 1..];
                }
            },
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, build: u32, server: bool, edition: &str) -> WindowsVersion {
        WindowsVersion {
            major,
            minor,
            build,
            server,
            edition: edition.into(),
        }
    }

    #[test]
    fn os_ids_come_from_version_numbers_and_product_type() {
        for (ver, id) in [
            (
                v(5, 2, 3790, true, "Enterprise"),
                "windows-server-2003-enterprise",
            ),
            (v(5, 2, 3790, true, ""), "windows-server-2003-standard"),
            (
                v(6, 0, 6002, true, "ServerEnterprise"),
                "windows-server-2008-enterprise",
            ),
            (v(6, 1, 7601, false, "Microsoft Windows 7"), "windows-7"),
            (
                v(6, 1, 7601, true, "ServerStandard"),
                "windows-server-2008-r2",
            ),
            (v(10, 0, 18362, false, "Microsoft Windows 10"), "windows-10"),
            // Windows 11 keeps "Windows 10" in its product name: the build tells.
            (v(10, 0, 22631, false, "Windows 10 Pro"), "windows-11"),
            (
                v(10, 0, 17763, true, "ServerDatacenter"),
                "windows-server-2019",
            ),
            (v(10, 0, 20348, true, ""), "windows-server-2022"),
            (v(10, 0, 26100, true, ""), "windows-server-2025"),
            (v(10, 0, 14393, true, ""), "windows-server-2016"),
        ] {
            assert_eq!(os_id(&ver), id, "{ver:?}");
        }
        assert_eq!(version_numbers("6.1"), (6, 1));
        assert_eq!(version_numbers(""), (0, 0));
    }

    #[test]
    fn languages_from_langids() {
        assert_eq!(language(0x0411), "ja");
        assert_eq!(language(0x0409), "en");
        assert_eq!(language(0x0809), "en");
        assert_eq!(language(0x0804), "zh-cn");
        assert_eq!(language(0x0404), "zh-tw");
        assert_eq!(language(0x0416), "pt-br");
        assert_eq!(language(0x0407), "de");
        for (_, tag) in PRIMARY {
            assert!(crate::model::catalog::language(tag).is_some(), "{tag}");
        }
    }

    #[test]
    fn service_pack_levels() {
        assert_eq!(
            service_pack(Some(0x200), "Service Pack 2"),
            SpLevel { major: 2, minor: 0 }
        );
        assert_eq!(
            service_pack(Some(0x201), ""),
            SpLevel { major: 2, minor: 1 }
        );
        assert_eq!(
            service_pack(None, "Service Pack 1"),
            SpLevel { major: 1, minor: 0 }
        );
        assert_eq!(service_pack(Some(0), ""), SpLevel { major: 0, minor: 0 });
    }

    #[test]
    fn update_names_from_every_source() {
        let kb = |s: &str| update_of(s).map(|u| u.to_string());
        assert_eq!(kb("KB958644").as_deref(), Some("KB958644"));
        assert_eq!(kb("Q246009").as_deref(), Some("KB246009"));
        assert_eq!(
            kb("Package_for_KB5005565~31bf3856ad364e35~amd64~~19041.1237.1.8").as_deref(),
            Some("KB5005565")
        );
        assert_eq!(
            kb("Package_1_for_KB4577586~31bf3856ad364e35~amd64~~10.0.1.0").as_deref(),
            Some("KB4577586")
        );
        assert_eq!(
            kb("Package_for_RollupFix~31bf3856ad364e35~amd64~~19041.1237.1.8"),
            None
        );
        assert_eq!(kb("File 1"), None);
        assert!(servicing_installed(0x70) && servicing_installed(0x50));
        assert!(!servicing_installed(0x60) && !servicing_installed(0));
    }

    #[test]
    fn variables_expand_case_insensitively() {
        let look = |n: &str| (n == "systemroot").then(|| "C:\\Windows".to_string());
        assert_eq!(
            expand_vars("%SystemRoot%\\System32\\x.dll", look),
            "C:\\Windows\\System32\\x.dll"
        );
        assert_eq!(expand_vars("%UNKNOWN%\\a", look), "%UNKNOWN%\\a");
        assert_eq!(expand_vars("100%", look), "100%");
        assert_eq!(expand_vars("a%%b", look), "a%%b");
    }
}
