//! The FAQ's Q2 pitfalls that a well-formed package can still carry, each of which ends in a
//! package that is re-delivered forever or "applied" where it never ran: the skeleton's
//! placeholders left in, a Service Pack at level 0.0, payload files whose names mark another
//! language, architecture or OS than the targets, and a HotFix whose MS and KB numbers appear
//! in none of its payload names (a sign the numbers or the file are the wrong ones).

use super::catalog::language_matches;
use super::problem::Problem;
use super::raw::{RawKind, RawPackage};
use super::types::{KbNumber, MsNumber};

/// What `package new` writes for the author to replace.
const PLACEHOLDER_MS: &str = "MS00-000";
const PLACEHOLDER_KB: &str = "KB000000";
const PLACEHOLDER_WORD: &str = "TODO";

/// Language markers in Microsoft's file names → the language tag they mean.
const LANGUAGES: &[(&str, &str)] = &[
    ("jpn", "ja"),
    ("ja-jp", "ja"),
    ("enu", "en"),
    ("en-us", "en"),
    ("deu", "de"),
    ("de-de", "de"),
    ("fra", "fr"),
    ("fr-fr", "fr"),
    ("kor", "ko"),
    ("ko-kr", "ko"),
    ("chs", "zh-cn"),
    ("zh-cn", "zh-cn"),
    ("cht", "zh-tw"),
    ("zh-tw", "zh-tw"),
    ("ita", "it"),
    ("esn", "es"),
    ("ptb", "pt-br"),
    ("rus", "ru"),
];
/// Architecture markers → catalog architectures.
const ARCHS: &[(&str, &str)] = &[
    ("x64", "x64"),
    ("amd64", "x64"),
    ("x86", "x86"),
    ("i386", "x86"),
    ("arm64", "arm64"),
];
/// OS markers (in a lowercased name) → the catalog OS ids (prefixes) they mean.
const SYSTEMS: &[(&str, &[&str])] = &[
    ("windowsserver2003", &["windows-server-2003"]),
    ("windowsserver2008r2", &["windows-server-2008-r2"]),
    ("windowsserver2008", &["windows-server-2008"]),
    ("windowsxp", &["windows-xp"]),
    ("windows6.0", &["windows-vista", "windows-server-2008"]),
    ("windows6.1", &["windows-7", "windows-server-2008-r2"]),
];

/// The pitfalls of `raw`; payload names are compared with the targets only when the targets
/// themselves are valid (`targets_ok`), so a bad target is reported once, as itself.
pub fn check(raw: &RawPackage, targets_ok: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    placeholders(raw, &mut out);
    if raw.kind == RawKind::ServicePack
        && let Some(sp) = raw.service_pack
        && sp.major == 0
        && sp.minor == 0
    {
        out.push(Problem::error(
            "service-pack-level-zero",
            "service_pack",
            "the Service Pack level is 0.0, which every machine already has: the package would be \"applied\" everywhere without running",
            "give the level this package brings machines to, e.g. `service_pack: { major: 2, minor: 0 }` for SP2",
        ));
    }
    for (i, p) in raw.payload.iter().enumerate().filter(|_| targets_ok) {
        if let Some(why) = marks_other_target(raw, p) {
            out.push(Problem::warning(
                "payload-name-mismatch",
                format!("payload[{i}]"),
                format!("`{p}` is named for {why}"),
                "check that this is the right file for the targets (Microsoft names files by OS, architecture and language), or correct the targets",
            ));
        }
    }
    numbers_in_payload(raw, &mut out);
    out
}

fn placeholders(raw: &RawPackage, out: &mut Vec<Problem>) {
    let mut found = |path: String, what: &str| {
        out.push(Problem::error(
            "placeholder",
            path,
            format!("{what} is still the placeholder `package new` wrote"),
            "replace it with the real value (the bulletin, the KB article, the file you ship)",
        ))
    };
    if raw
        .ms_number
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case(PLACEHOLDER_MS))
    {
        found("ms_number".into(), "the MS number");
    }
    if raw
        .kb
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case(PLACEHOLDER_KB))
    {
        found("kb".into(), "the KB number");
    }
    if raw.title.contains(PLACEHOLDER_WORD) {
        found("title".into(), "the title");
    }
    for (i, p) in raw.payload.iter().enumerate() {
        if p.contains(PLACEHOLDER_WORD) {
            found(format!("payload[{i}]"), "the file name");
        }
    }
}

/// The language, architecture or OS a payload file name marks that no target has.
fn marks_other_target(raw: &RawPackage, path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let words: Vec<&str> = name.split(['-', '_', '.', ' ']).collect();
    let pairs = words.windows(2).map(|w| format!("{}-{}", w[0], w[1]));
    let marked = |table: &'static [(&'static str, &'static str)]| {
        words
            .iter()
            .map(|w| w.to_string())
            .chain(pairs.clone())
            .find_map(|w| table.iter().find(|(k, _)| *k == w).map(|(_, v)| *v))
    };
    let targets = &raw.targets;
    if let Some(lang) = marked(LANGUAGES)
        && targets.iter().all(|t| {
            t.language
                .as_deref()
                .is_some_and(|l| !language_matches(l, lang) && !language_matches(lang, l))
        })
    {
        return Some(format!("the language `{lang}`, which no target has"));
    }
    if let Some(arch) = marked(ARCHS)
        && targets
            .iter()
            .all(|t| t.arch.as_deref().is_some_and(|a| a != arch))
    {
        return Some(format!("the architecture `{arch}`, which no target has"));
    }
    let squashed = name.replace(['-', '_', ' '], "");
    if let Some((_, oses)) = SYSTEMS.iter().find(|(k, _)| squashed.contains(k))
        && !targets.is_empty()
        && targets.iter().all(|t| {
            !oses
                .iter()
                .any(|o| t.os.starts_with(o) || o.starts_with(&t.os))
        })
    {
        return Some(format!("{}, which no target is", oses.join(" or ")));
    }
    None
}

/// A HotFix's files carry its KB number (`WindowsServer2003-KB958644-x86-JPN.exe`); when the
/// KB number (or, without one, the MS number) appears in no payload name, the number or the
/// file is likely the wrong one (the FAQ's looping package). A placeholder or a malformed
/// number is reported as such instead.
fn numbers_in_payload(raw: &RawPackage, out: &mut Vec<Problem>) {
    if raw.kind != RawKind::Hotfix || raw.payload.is_empty() {
        return;
    }
    let (path, number, marker) = match (&raw.kb, &raw.ms_number) {
        (Some(kb), _) => {
            if kb.eq_ignore_ascii_case(PLACEHOLDER_KB) || kb.parse::<KbNumber>().is_err() {
                return;
            }
            ("kb", kb, kb[2..].to_string())
        }
        (None, Some(ms)) => {
            if ms.eq_ignore_ascii_case(PLACEHOLDER_MS) || ms.parse::<MsNumber>().is_err() {
                return;
            }
            ("ms_number", ms, ms.to_ascii_lowercase())
        }
        (None, None) => return,
    };
    if !raw
        .payload
        .iter()
        .any(|p| p.to_ascii_lowercase().contains(&marker))
    {
        out.push(Problem::warning(
            "payload-name-no-number",
            path,
            format!("{number} appears in none of the payload file names"),
            "check the number against the bulletin and the file (a wrong MS/KB number never verifies and is re-delivered until the loop breaker stops it)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(targets: &str, payload: &str) -> RawPackage {
        serde_saphyr::from_str(&format!(
            "id: k\nkind: hotfix\ntitle: t\nkb: KB958644\ntargets: [{targets}]\npayload: [{payload}]\ninstall: {{ command: x }}\n"
        ))
        .unwrap()
    }

    fn mismatch(targets: &str, payload: &str) -> Option<String> {
        marks_other_target(&raw(targets, payload), payload)
    }

    #[test]
    fn payload_names_against_targets() {
        let ja_x86_2003 = "{ os: windows-server-2003, arch: x86, language: ja }";
        assert_eq!(
            mismatch(ja_x86_2003, "WindowsServer2003-KB958644-x86-JPN.exe"),
            None
        );
        assert!(
            mismatch(ja_x86_2003, "WindowsServer2003-KB958644-x64-JPN.exe")
                .unwrap()
                .contains("x64")
        );
        assert!(
            mismatch(ja_x86_2003, "windows6.0-kb958644-x86-ja-jp.msu")
                .unwrap()
                .contains("windows-server-2008")
        );
        assert!(
            mismatch(ja_x86_2003, "WindowsServer2003-KB958644-x86-ENU.exe")
                .unwrap()
                .contains("`en`")
        );
        // A target without an architecture or language takes any.
        assert_eq!(
            mismatch(
                "{ os: windows-server-2003 }",
                "WindowsServer2003-KB958644-x64-DEU.exe"
            ),
            None
        );
        // Names that mark nothing say nothing.
        assert_eq!(mismatch(ja_x86_2003, "setup.exe"), None);
    }
}
