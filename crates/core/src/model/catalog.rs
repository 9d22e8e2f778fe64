//! The OS and language catalog: which target names a package may use.
//!
//! OS ids are stable, lowercase, and name an edition; each belongs to a product line
//! (`windows-server-2003-standard` → `windows-server-2003`) so a target can name either.
//! The list covers every OS of the DeploymentManager FAQ's auto-update support list plus
//! current Windows and Linux releases.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Windows,
    Linux,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageManager {
    Dpkg,
    Rpm,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OsInfo {
    pub id: &'static str,
    pub line: &'static str,
    pub name: &'static str,
    pub family: Family,
    pub archs: &'static [&'static str],
    /// Native package manager (Linux only).
    pub manager: Option<PackageManager>,
}

const X86: &[&str] = &["x86"];
const X64: &[&str] = &["x64"];
const X86_X64: &[&str] = &["x86", "x64"];
const X64_ARM: &[&str] = &["x64", "arm64"];

const fn win(
    id: &'static str,
    line: &'static str,
    name: &'static str,
    archs: &'static [&'static str],
) -> OsInfo {
    OsInfo {
        id,
        line,
        name,
        family: Family::Windows,
        archs,
        manager: None,
    }
}

const fn linux(
    id: &'static str,
    line: &'static str,
    name: &'static str,
    m: PackageManager,
) -> OsInfo {
    OsInfo {
        id,
        line,
        name,
        family: Family::Linux,
        archs: X64_ARM,
        manager: Some(m),
    }
}

use PackageManager::{Dpkg, Rpm};

pub const OPERATING_SYSTEMS: &[OsInfo] = &[
    win(
        "windows-2000-server",
        "windows-2000",
        "Windows 2000 Server",
        X86,
    ),
    win(
        "windows-2000-advanced-server",
        "windows-2000",
        "Windows 2000 Advanced Server",
        X86,
    ),
    win(
        "windows-server-2003-standard",
        "windows-server-2003",
        "Windows Server 2003 Standard Edition",
        X86_X64,
    ),
    win(
        "windows-server-2003-enterprise",
        "windows-server-2003",
        "Windows Server 2003 Enterprise Edition",
        X86_X64,
    ),
    win(
        "windows-server-2008-standard",
        "windows-server-2008",
        "Windows Server 2008 Standard",
        X86_X64,
    ),
    win(
        "windows-server-2008-enterprise",
        "windows-server-2008",
        "Windows Server 2008 Enterprise",
        X86_X64,
    ),
    win(
        "windows-server-2008-r2",
        "windows-server-2008-r2",
        "Windows Server 2008 R2",
        X64,
    ),
    win("windows-7", "windows-7", "Windows 7", X86_X64),
    win(
        "windows-server-2012",
        "windows-server-2012",
        "Windows Server 2012",
        X64,
    ),
    win(
        "windows-server-2012-r2",
        "windows-server-2012",
        "Windows Server 2012 R2",
        X64,
    ),
    win(
        "windows-server-2016",
        "windows-server-2016",
        "Windows Server 2016",
        X64,
    ),
    win(
        "windows-server-2019",
        "windows-server-2019",
        "Windows Server 2019",
        X64,
    ),
    win(
        "windows-server-2022",
        "windows-server-2022",
        "Windows Server 2022",
        X64,
    ),
    win(
        "windows-server-2025",
        "windows-server-2025",
        "Windows Server 2025",
        X64_ARM,
    ),
    win(
        "windows-10",
        "windows-10",
        "Windows 10",
        &["x86", "x64", "arm64"],
    ),
    win("windows-11", "windows-11", "Windows 11", X64_ARM),
    linux("debian-11", "debian", "Debian 11 (bullseye)", Dpkg),
    linux("debian-12", "debian", "Debian 12 (bookworm)", Dpkg),
    linux("debian-13", "debian", "Debian 13 (trixie)", Dpkg),
    linux("ubuntu-20.04", "ubuntu", "Ubuntu 20.04 LTS", Dpkg),
    linux("ubuntu-22.04", "ubuntu", "Ubuntu 22.04 LTS", Dpkg),
    linux("ubuntu-24.04", "ubuntu", "Ubuntu 24.04 LTS", Dpkg),
    linux("rhel-8", "rhel", "Red Hat Enterprise Linux 8", Rpm),
    linux("rhel-9", "rhel", "Red Hat Enterprise Linux 9", Rpm),
    linux("rocky-8", "rocky", "Rocky Linux 8", Rpm),
    linux("rocky-9", "rocky", "Rocky Linux 9", Rpm),
];

pub const ARCHITECTURES: &[&str] = &["x86", "x64", "arm64"];

/// Languages a target may name: those Windows ships language packs for (primary subtags,
/// plus the Chinese and Portuguese variants that differ by region or script).
pub const LANGUAGES: &[(&str, &str)] = &[
    ("ar", "Arabic"),
    ("bg", "Bulgarian"),
    ("cs", "Czech"),
    ("da", "Danish"),
    ("de", "German"),
    ("el", "Greek"),
    ("en", "English"),
    ("es", "Spanish"),
    ("et", "Estonian"),
    ("fi", "Finnish"),
    ("fr", "French"),
    ("he", "Hebrew"),
    ("hr", "Croatian"),
    ("hu", "Hungarian"),
    ("it", "Italian"),
    ("ja", "Japanese"),
    ("ko", "Korean"),
    ("lt", "Lithuanian"),
    ("lv", "Latvian"),
    ("nb", "Norwegian Bokmål"),
    ("nl", "Dutch"),
    ("pl", "Polish"),
    ("pt", "Portuguese"),
    ("pt-br", "Portuguese (Brazil)"),
    ("pt-pt", "Portuguese (Portugal)"),
    ("ro", "Romanian"),
    ("ru", "Russian"),
    ("sk", "Slovak"),
    ("sl", "Slovenian"),
    ("sr", "Serbian"),
    ("sv", "Swedish"),
    ("th", "Thai"),
    ("tr", "Turkish"),
    ("uk", "Ukrainian"),
    ("zh", "Chinese"),
    ("zh-cn", "Chinese (Simplified)"),
    ("zh-hans", "Chinese (Simplified)"),
    ("zh-tw", "Chinese (Traditional)"),
    ("zh-hant", "Chinese (Traditional)"),
];

pub fn os(id: &str) -> Option<&'static OsInfo> {
    OPERATING_SYSTEMS.iter().find(|o| o.id == id)
}

/// The editions a target's `os` names: itself, or every edition of a product line.
pub fn os_matching(target: &str) -> Vec<&'static OsInfo> {
    OPERATING_SYSTEMS
        .iter()
        .filter(|o| o.id == target || o.line == target)
        .collect()
}

/// Canonical form of a BCP-47 tag we know (`ja-JP` → `ja-jp` accepted via its primary
/// subtag `ja`), or `None` for a language outside the catalog.
pub fn language(tag: &str) -> Option<String> {
    let lower = tag.trim().to_ascii_lowercase().replace('_', "-");
    let known = |t: &str| LANGUAGES.iter().any(|(code, _)| *code == t);
    if known(&lower) {
        return Some(lower);
    }
    let primary = lower.split('-').next().unwrap_or("");
    let well_formed_rest = lower
        .split('-')
        .skip(1)
        .all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_alphanumeric()));
    (known(primary) && well_formed_rest).then_some(lower)
}

/// Whether a machine language (`ja-JP`) satisfies a target language (`ja`): equal, or the
/// target is a prefix at a subtag boundary.
pub fn language_matches(target: &str, machine: &str) -> bool {
    let t = target.to_ascii_lowercase().replace('_', "-");
    let m = machine.to_ascii_lowercase().replace('_', "-");
    m == t || m.strip_prefix(&t).is_some_and(|rest| rest.starts_with('-'))
}

/// Closest known name, for "did you mean" hints: the same words in another order
/// (`windows-2003-server` → `windows-server-2003`), else a small edit distance.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let words = |s: &str| {
        let mut w: Vec<String> = s
            .to_ascii_lowercase()
            .split(['-', '_', ' ', '.'])
            .map(str::to_string)
            .collect();
        w.sort();
        w
    };
    let mine = words(word);
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(c) = candidates.iter().find(|c| words(c) == mine) {
        return Some(c);
    }
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 4).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faq_support_list_is_covered() {
        for id in [
            "windows-2000-server",
            "windows-2000-advanced-server",
            "windows-server-2003-standard",
            "windows-server-2003-enterprise",
            "windows-server-2008-standard",
            "windows-server-2008-enterprise",
        ] {
            assert!(os(id).is_some(), "{id}");
        }
        assert!(
            os("windows-server-2003-enterprise")
                .unwrap()
                .archs
                .contains(&"x64")
        );
        assert_eq!(os_matching("windows-server-2008").len(), 2);
        for id in [
            "debian-13",
            "ubuntu-24.04",
            "rocky-9",
            "windows-server-2025",
            "windows-11",
        ] {
            assert!(os(id).is_some(), "{id}");
        }
    }

    #[test]
    fn languages() {
        assert_eq!(language("ja").as_deref(), Some("ja"));
        assert_eq!(language("ja-JP").as_deref(), Some("ja-jp"));
        assert_eq!(language("zh-TW").as_deref(), Some("zh-tw"));
        assert_eq!(language("jp"), None);
        assert_eq!(language("xx-YY"), None);
        assert!(language_matches("ja", "ja-JP"));
        assert!(language_matches("en", "en"));
        assert!(!language_matches("en", "ja"));
        assert!(!language_matches("zh-tw", "zh-CN"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest(
                "windows-server-2003",
                OPERATING_SYSTEMS.iter().map(|o| o.line)
            ),
            Some("windows-server-2003")
        );
        assert_eq!(
            suggest("debian-14", OPERATING_SYSTEMS.iter().map(|o| o.id)),
            Some("debian-11")
        );
        assert_eq!(suggest("jp", LANGUAGES.iter().map(|l| l.0)), Some("ja"));
        assert_eq!(
            suggest(
                "windows-2003-server",
                OPERATING_SYSTEMS.iter().flat_map(|o| [o.id, o.line])
            ),
            Some("windows-server-2003")
        );
        assert_eq!(suggest("日本語", LANGUAGES.iter().map(|l| l.0)), None);
    }
}
