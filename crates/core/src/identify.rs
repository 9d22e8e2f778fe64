//! The identification engine: (package, facts about one machine) → verdict, with an
//! explanation naming every rule and its outcome.
//!
//! Pure. The caller asks `queries` which facts a package needs, gathers them (the agent reads
//! files, the registry, dpkg/rpm, runs probes; an emulated endpoint reads its profile), and
//! passes them to `identify`. A fact that was not gathered makes the verdict indeterminate;
//! it is never guessed.

use crate::model::catalog::{self, Family, PackageManager};
use crate::model::package::{FileCheck, Kind, Op, Package, Rule, SpLevel, VersionConstraint};
use crate::model::raw::RawManager;
use crate::model::types::{FileVersion, Sha256, UpdateId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// What is known about one file on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFact {
    pub exists: bool,
    /// `None` when the file has no version resource (text, script, ELF, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<FileVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
}

impl FileFact {
    pub const ABSENT: FileFact = FileFact {
        exists: false,
        version: None,
        sha256: None,
    };
}

/// Facts about one machine. Maps hold only what was gathered; a missing key means "unknown".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub os: String,
    pub arch: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<SpLevel>,
    /// The installed-update list (Windows), when gathered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_updates: Option<BTreeSet<UpdateId>>,
    #[serde(default)]
    pub files: BTreeMap<String, FileFact>,
    /// `key\value` → data (`None`: the value does not exist).
    #[serde(default)]
    pub registry: BTreeMap<String, Option<String>>,
    /// Package name → installed version (`None`: not installed).
    #[serde(default)]
    pub packages: BTreeMap<String, Option<String>>,
    /// Probe command → exit code (`None`: could not run, e.g. killed or not found).
    #[serde(default)]
    pub probes: BTreeMap<String, Option<i32>>,
    /// The version of the patchcast agent gathering these facts (with its build stamp,
    /// `0.1.0+b2`), when an agent runs on the machine: what identifies a `kind: agent` package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// A fact the caller must gather before identification.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Query {
    InstalledUpdates,
    ServicePack,
    File {
        path: String,
        version: bool,
        sha256: bool,
    },
    Registry {
        key: String,
    },
    Package {
        name: String,
    },
    Probe {
        command: String,
    },
}

/// The registry map key for a rule's key and value name.
pub fn registry_key(key: &str, value: Option<&str>) -> String {
    format!("{key}\\{}", value.unwrap_or("(Default)"))
}

/// The facts `identify` will look at for this package.
pub fn queries(pkg: &Package) -> Vec<Query> {
    let mut q = BTreeSet::new();
    match &pkg.kind {
        Kind::ServicePack { .. } => {
            q.insert(Query::ServicePack);
            return q.into_iter().collect();
        }
        Kind::Hotfix { ms_number, kb } if ms_number.is_some() || kb.is_some() => {
            q.insert(Query::InstalledUpdates);
        }
        _ => {}
    }
    for rule in &pkg.rules {
        q.insert(match rule {
            Rule::File { path, check } => Query::File {
                path: path.clone(),
                version: check.version().is_some(),
                sha256: matches!(
                    check,
                    FileCheck::New {
                        sha256: Some(_),
                        ..
                    } | FileCheck::Rewrite {
                        sha256: Some(_),
                        ..
                    }
                ),
            },
            Rule::InstalledUpdate { .. } => Query::InstalledUpdates,
            Rule::ServicePack { .. } => Query::ServicePack,
            Rule::Registry { key, value, .. } => Query::Registry {
                key: registry_key(key, value.as_deref()),
            },
            Rule::Package { name, .. } => Query::Package { name: name.clone() },
            Rule::Probe { command, .. } => Query::Probe {
                command: command.clone(),
            },
        });
    }
    q.into_iter().collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Applied,
    NotApplied,
    NotApplicable(String),
    Indeterminate(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Unknown,
}

/// One line of the explanation: what was checked, its outcome, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identification {
    pub verdict: Verdict,
    pub explanation: Vec<Check>,
}

impl Identification {
    /// The first rule that did not pass, e.g. to name in a re-delivery loop diagnosis.
    pub fn failing_check(&self) -> Option<&Check> {
        self.explanation.iter().find(|c| c.outcome != Outcome::Pass)
    }
}

fn check(check: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        outcome,
        detail: detail.into(),
    }
}

/// Whether the package is meant for this machine at all.
pub fn applicability(pkg: &Package, facts: &Facts) -> Result<Check, String> {
    let machine = format!("{} {} {}", facts.os, facts.arch, facts.language);
    let os = catalog::os(&facts.os);
    let hit = pkg.targets.iter().find(|t| {
        let os_ok = t.os == facts.os || os.is_some_and(|o| o.line == t.os);
        let arch_ok = t.arch.as_deref().is_none_or(|a| a == facts.arch);
        let lang_ok = t
            .language
            .as_deref()
            .is_none_or(|l| catalog::language_matches(l, &facts.language));
        os_ok && arch_ok && lang_ok
    });
    let targets = pkg
        .targets
        .iter()
        .map(|t| {
            format!(
                "{} {} {}",
                t.os,
                t.arch.as_deref().unwrap_or("any-arch"),
                t.language.as_deref().unwrap_or("any-language")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    match hit {
        Some(_) => Ok(check(
            TARGET_CHECK,
            Outcome::Pass,
            format!("machine is {machine}; package targets {targets}"),
        )),
        None => Err(format!(
            "machine is {machine}; the package targets only {targets}"
        )),
    }
}

/// The name of the first check of every identification: whether the package targets the
/// machine at all (the rules follow it).
pub const TARGET_CHECK: &str = "target OS, architecture and language";

/// Decides whether `pkg` is applied on the machine described by `facts`.
pub fn identify(pkg: &Package, facts: &Facts) -> Identification {
    let mut explanation = Vec::new();
    match applicability(pkg, facts) {
        Ok(c) => explanation.push(c),
        Err(reason) => {
            explanation.push(check(TARGET_CHECK, Outcome::Fail, reason.clone()));
            return Identification {
                verdict: Verdict::NotApplicable(reason),
                explanation,
            };
        }
    }
    let verdict = match &pkg.kind {
        Kind::ServicePack { level } => {
            let c = service_pack(*level, facts);
            let v = verdict_of(std::slice::from_ref(&c));
            explanation.push(c);
            if !pkg.rules.is_empty() {
                explanation.push(check(
                    "identification rules",
                    Outcome::Pass,
                    "ignored: a Service Pack is identified by its major and minor version alone",
                ));
            }
            v
        }
        Kind::Hotfix { ms_number, kb } => {
            let numbers: Vec<UpdateId> = kb
                .iter()
                .cloned()
                .map(UpdateId::Kb)
                .chain(ms_number.iter().cloned().map(UpdateId::Ms))
                .collect();
            let listed: Vec<Check> = numbers.iter().map(|n| installed_update(n, facts)).collect();
            let found = listed.iter().any(|c| c.outcome == Outcome::Pass);
            explanation.extend(listed.iter().cloned());
            if found {
                Verdict::Applied
            } else if !pkg.rules.is_empty() {
                let rules: Vec<Check> = pkg.rules.iter().map(|r| rule(r, facts)).collect();
                explanation.extend(rules.iter().cloned());
                verdict_of(&rules)
            } else {
                verdict_of(&listed)
            }
        }
        Kind::Agent => {
            let c = agent_version(pkg.version.as_deref().unwrap_or_default(), facts);
            let v = verdict_of(std::slice::from_ref(&c));
            explanation.push(c);
            v
        }
        Kind::Application => {
            if pkg.rules.is_empty() {
                Verdict::Indeterminate("the package has no identification rules".into())
            } else {
                let rules: Vec<Check> = pkg.rules.iter().map(|r| rule(r, facts)).collect();
                explanation.extend(rules.iter().cloned());
                verdict_of(&rules)
            }
        }
    };
    Identification {
        verdict,
        explanation,
    }
}

/// All pass → applied; any definite failure → not applied; otherwise indeterminate.
fn verdict_of(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.outcome == Outcome::Fail) {
        return Verdict::NotApplied;
    }
    match checks.iter().find(|c| c.outcome == Outcome::Unknown) {
        Some(c) => Verdict::Indeterminate(format!("{}: {}", c.check, c.detail)),
        None => Verdict::Applied,
    }
}

/// A `kind: agent` package is applied when the agent on the machine reports its version or
/// a later one (dpkg ordering, so `0.1.0+b2` is after `0.1.0+b1` and `0.1.0`).
fn agent_version(wanted: &str, facts: &Facts) -> Check {
    let what = format!("patchcast agent version >= {wanted}");
    match &facts.agent_version {
        None => check(
            what,
            Outcome::Unknown,
            "no patchcast agent reported its version on this machine",
        ),
        Some(have) if crate::versions::dpkg_cmp(have, wanted) != Ordering::Less => {
            check(what, Outcome::Pass, format!("the agent is {have}"))
        }
        Some(have) => check(what, Outcome::Fail, format!("the agent is {have}")),
    }
}

fn service_pack(level: SpLevel, facts: &Facts) -> Check {
    let what = format!("service pack level >= {level}");
    match facts.service_pack {
        None => check(
            what,
            Outcome::Unknown,
            "the machine's service pack level was not reported",
        ),
        Some(have) if have >= level => check(what, Outcome::Pass, format!("machine is at {have}")),
        Some(have) => check(what, Outcome::Fail, format!("machine is at {have}")),
    }
}

fn installed_update(id: &UpdateId, facts: &Facts) -> Check {
    let what = format!("{id} in the installed-update list");
    match &facts.installed_updates {
        None => check(
            what,
            Outcome::Unknown,
            "the installed-update list was not reported",
        ),
        Some(list) if list.contains(id) => check(what, Outcome::Pass, "listed"),
        Some(list) => check(
            what,
            Outcome::Fail,
            format!("not listed ({} updates installed)", list.len()),
        ),
    }
}

fn rule(r: &Rule, facts: &Facts) -> Check {
    match r {
        Rule::InstalledUpdate { update } => installed_update(update, facts),
        Rule::ServicePack { level } => service_pack(*level, facts),
        Rule::File { path, check: c } => file(path, c, facts),
        Rule::Registry { key, value, data } => {
            let k = registry_key(key, value.as_deref());
            let what = match data {
                Some(d) => format!("registry {k} = {d:?}"),
                None => format!("registry {k} exists"),
            };
            match (facts.registry.get(&k), data) {
                (None, _) => check(what, Outcome::Unknown, "the registry value was not read"),
                (Some(None), _) => check(what, Outcome::Fail, "the value does not exist"),
                (Some(Some(_)), None) => check(what, Outcome::Pass, "exists"),
                (Some(Some(have)), Some(want)) if have == want => {
                    check(what, Outcome::Pass, format!("data is {have:?}"))
                }
                (Some(Some(have)), Some(_)) => {
                    check(what, Outcome::Fail, format!("data is {have:?}"))
                }
            }
        }
        Rule::Package {
            name,
            manager,
            constraint,
        } => package(name, *manager, constraint.as_ref(), facts),
        Rule::Probe { command, exit_code } => {
            let what = format!("probe `{command}` exits {exit_code}");
            match facts.probes.get(command) {
                None => check(what, Outcome::Unknown, "the probe was not run"),
                Some(None) => check(
                    what,
                    Outcome::Unknown,
                    "the probe could not run or was killed",
                ),
                Some(Some(code)) if code == exit_code => {
                    check(what, Outcome::Pass, format!("exited {code}"))
                }
                Some(Some(code)) => check(what, Outcome::Fail, format!("exited {code}")),
            }
        }
    }
}

fn file(path: &str, c: &FileCheck, facts: &Facts) -> Check {
    let (what, want_version, want_hash, at_least) = match c {
        FileCheck::New { version, sha256 } => {
            (format!("file {path} exists"), *version, *sha256, true)
        }
        FileCheck::Rewrite { version, sha256 } => {
            (format!("file {path} rewritten"), *version, *sha256, false)
        }
        FileCheck::VersionUp { version } => (
            format!("file {path} version >= {version}"),
            Some(*version),
            None,
            true,
        ),
        FileCheck::Delete => (format!("file {path} deleted"), None, None, false),
    };
    let Some(fact) = facts.files.get(path) else {
        return check(what, Outcome::Unknown, "the file was not inspected");
    };
    if matches!(c, FileCheck::Delete) {
        return if fact.exists {
            check(what, Outcome::Fail, "the file still exists")
        } else {
            check(what, Outcome::Pass, "absent")
        };
    }
    if !fact.exists {
        return check(what, Outcome::Fail, "the file does not exist");
    }
    if let Some(want) = want_version {
        match fact.version {
            // The FAQ's Q2: a version on a file without one can never be judged.
            None => {
                return check(
                    what,
                    Outcome::Unknown,
                    format!(
                        "the file has no version resource, so version {want} cannot be compared; identify text and script files with change: new or delete (or sha256)"
                    ),
                );
            }
            Some(have) if at_least && have < want => {
                return check(
                    what,
                    Outcome::Fail,
                    format!("version is {have}, older than {want}"),
                );
            }
            Some(have) if !at_least && have != want => {
                return check(
                    what,
                    Outcome::Fail,
                    format!("version is {have}, not {want}"),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(want) = want_hash {
        match fact.sha256 {
            None => return check(what, Outcome::Unknown, "the file's sha256 was not computed"),
            Some(have) if have != want => {
                return check(
                    what,
                    Outcome::Fail,
                    format!("sha256 is {have}, expected {want}"),
                );
            }
            Some(_) => {}
        }
    }
    let seen = match (fact.version, fact.sha256) {
        (Some(v), _) => format!("exists, version {v}"),
        (None, Some(h)) if want_hash.is_some() => format!("exists, sha256 {}", &h.hex()[..16]),
        _ => "exists".to_string(),
    };
    check(what, Outcome::Pass, seen)
}

fn package(
    name: &str,
    manager: Option<RawManager>,
    constraint: Option<&VersionConstraint>,
    facts: &Facts,
) -> Check {
    let what = match constraint {
        Some(c) => format!("package {name} {c}"),
        None => format!("package {name} installed"),
    };
    let manager = manager.map(|m| match m {
        RawManager::Dpkg => PackageManager::Dpkg,
        RawManager::Rpm => PackageManager::Rpm,
    });
    let os = catalog::os(&facts.os);
    let Some(manager) = manager.or_else(|| os.and_then(|o| o.manager)) else {
        let fam = if os.is_some_and(|o| o.family == Family::Windows) {
            "a Windows machine"
        } else {
            "this OS"
        };
        return check(
            what,
            Outcome::Unknown,
            format!("{fam} has no dpkg or rpm; set `manager:` or target a Linux OS"),
        );
    };
    match facts.packages.get(name) {
        None => check(
            what,
            Outcome::Unknown,
            "the package database was not queried",
        ),
        Some(None) => check(what, Outcome::Fail, "not installed"),
        Some(Some(have)) => {
            let Some(c) = constraint else {
                return check(what, Outcome::Pass, format!("version {have} installed"));
            };
            let ord = match manager {
                PackageManager::Dpkg => super::versions::dpkg_cmp(have, &c.version),
                PackageManager::Rpm => super::versions::rpm_cmp(have, &c.version),
            };
            let ok = match c.op {
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Eq => ord == Ordering::Equal,
                Op::Ge => ord != Ordering::Less,
                Op::Gt => ord == Ordering::Greater,
            };
            check(
                what,
                if ok { Outcome::Pass } else { Outcome::Fail },
                format!("version {have} installed"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::package::resolve;
    use crate::model::raw::RawPackage;

    fn pkg(yaml: &str) -> Package {
        let raw: RawPackage = serde_saphyr::from_str(yaml).unwrap();
        let (p, problems) = resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:#?}"))
    }

    const INSTALL: &str = "install: { command: 'x' }\n";

    fn hotfix(extra: &str) -> Package {
        pkg(&format!(
            "id: h\nkind: hotfix\ntitle: t\nms_number: MS08-067\nkb: KB958644\ntargets: [{{ os: windows-server-2003, arch: x86, language: ja }}]\n{extra}{INSTALL}"
        ))
    }

    fn ws2003_ja() -> Facts {
        Facts {
            os: "windows-server-2003-standard".into(),
            arch: "x86".into(),
            language: "ja-JP".into(),
            installed_updates: Some(BTreeSet::new()),
            ..Facts::default()
        }
    }

    fn updates(list: &[&str]) -> Option<BTreeSet<UpdateId>> {
        Some(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn file(exists: bool, version: Option<&str>, sha: Option<&str>) -> FileFact {
        FileFact {
            exists,
            version: version.map(|v| v.parse().unwrap()),
            sha256: sha.map(|s| s.parse().unwrap()),
        }
    }

    fn verdict_name(v: &Verdict) -> &'static str {
        match v {
            Verdict::Applied => "applied",
            Verdict::NotApplied => "not_applied",
            Verdict::NotApplicable(_) => "not_applicable",
            Verdict::Indeterminate(_) => "indeterminate",
        }
    }

    #[test]
    fn applicability_by_os_arch_language() {
        let p = hotfix("");
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "windows-server-2003-standard",
                "x86",
                "ja-JP",
                "not_applied",
            ),
            ("windows-server-2003-enterprise", "x86", "ja", "not_applied"),
            (
                "windows-server-2003-standard",
                "x64",
                "ja",
                "not_applicable",
            ),
            (
                "windows-server-2003-standard",
                "x86",
                "en-US",
                "not_applicable",
            ),
            (
                "windows-server-2008-standard",
                "x86",
                "ja",
                "not_applicable",
            ),
            ("debian-12", "x64", "ja", "not_applicable"),
        ];
        for (os, arch, lang, want) in cases {
            let facts = Facts {
                os: (*os).into(),
                arch: (*arch).into(),
                language: (*lang).into(),
                ..ws2003_ja()
            };
            let id = identify(&p, &facts);
            assert_eq!(
                verdict_name(&id.verdict),
                *want,
                "{os} {arch} {lang}: {id:?}"
            );
            if *want == "not_applicable" {
                // Never a failure: the reason names the machine and the targets.
                let Verdict::NotApplicable(r) = &id.verdict else {
                    unreachable!()
                };
                assert!(r.contains(os) && r.contains("windows-server-2003"), "{r}");
            }
        }
    }

    #[test]
    fn hotfix_by_number_then_rules() {
        let rules = "identification:\n  - file: 'C:\\Windows\\system32\\netapi32.dll'\n    change: version_up\n    version: 5.2.3790.4392\n";
        let with_rules = hotfix(rules);
        let plain = hotfix("");
        let path = "C:\\Windows\\system32\\netapi32.dll";
        type Case<'a> = (
            &'a Package,
            Option<BTreeSet<UpdateId>>,
            Option<FileFact>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (&plain, updates(&["KB958644"]), None, "applied"),
            (&plain, updates(&["MS08-067"]), None, "applied"),
            (&plain, updates(&["KB123456"]), None, "not_applied"),
            (&plain, None, None, "indeterminate"),
            // Number missing from the list, but the rules see the new file version.
            (
                &with_rules,
                updates(&[]),
                Some(file(true, Some("5.2.3790.4392"), None)),
                "applied",
            ),
            (
                &with_rules,
                updates(&[]),
                Some(file(true, Some("5.2.3790.3959"), None)),
                "not_applied",
            ),
            (
                &with_rules,
                updates(&[]),
                Some(file(false, None, None)),
                "not_applied",
            ),
            (&with_rules, updates(&["KB958644"]), None, "applied"),
            (&with_rules, updates(&[]), None, "indeterminate"),
        ];
        for (p, upd, f, want) in cases {
            let mut facts = ws2003_ja();
            facts.installed_updates = upd.clone();
            if let Some(f) = &f {
                facts.files.insert(path.into(), f.clone());
            }
            let id = identify(p, &facts);
            assert_eq!(verdict_name(&id.verdict), want, "{upd:?} {f:?}: {id:#?}");
            assert!(
                id.explanation.len() >= 2,
                "applicability plus at least one check: {id:#?}"
            );
        }
    }

    #[test]
    fn service_pack_by_level_alone() {
        let sp = pkg(&format!(
            "id: sp\nkind: service_pack\ntitle: t\nservice_pack: {{ major: 2, minor: 0 }}\ntargets: [{{ os: windows-server-2008 }}]\nidentification: [{{ probe: 'exit 1' }}]\n{INSTALL}"
        ));
        for (level, want) in [
            (Some((1, 0)), "not_applied"),
            (Some((2, 0)), "applied"),
            (Some((2, 1)), "applied"),
            (None, "indeterminate"),
        ] {
            let facts = Facts {
                os: "windows-server-2008-enterprise".into(),
                arch: "x64".into(),
                language: "en".into(),
                service_pack: level.map(|(major, minor)| SpLevel { major, minor }),
                ..Facts::default()
            };
            let id = identify(&sp, &facts);
            assert_eq!(verdict_name(&id.verdict), want, "{level:?}");
            assert!(
                id.explanation.iter().any(|c| c.detail.contains("ignored")),
                "rules are reported as ignored"
            );
            assert!(
                queries(&sp) == vec![Query::ServicePack],
                "the probe is never run for a service pack"
            );
        }
    }

    #[test]
    fn file_rules() {
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let other = "0000000000000000000000000000000000000000000000000000000000000000";
        let cases: &[(&str, FileFact, &str)] = &[
            ("change: new", file(true, None, None), "applied"),
            ("change: new", file(false, None, None), "not_applied"),
            (
                &format!("change: new\n    sha256: {h}"),
                file(true, None, Some(h)),
                "applied",
            ),
            (
                &format!("change: new\n    sha256: {h}"),
                file(true, None, Some(other)),
                "not_applied",
            ),
            (
                "change: rewrite\n    version: 1.2.3.4",
                file(true, Some("1.2.3.4"), None),
                "applied",
            ),
            (
                "change: rewrite\n    version: 1.2.3.4",
                file(true, Some("1.2.3.5"), None),
                "not_applied",
            ),
            (
                "change: version_up\n    version: 1.2.3.4",
                file(true, Some("1.2.10.0"), None),
                "applied",
            ),
            (
                "change: version_up\n    version: 1.2.3.4",
                file(true, Some("1.2.3.3"), None),
                "not_applied",
            ),
            // The FAQ's Q2: a version on a file without a version resource is never judged.
            (
                "change: version_up\n    version: 1.2.3.4",
                file(true, None, None),
                "indeterminate",
            ),
            ("change: delete", file(false, None, None), "applied"),
            ("change: delete", file(true, None, None), "not_applied"),
        ];
        for (rule, fact, want) in cases {
            let p = pkg(&format!(
                "id: a\nkind: application\ntitle: t\ntargets: [{{ os: windows-10 }}]\nidentification:\n  - file: 'C:\\app\\x.dll'\n    {rule}\n{INSTALL}"
            ));
            let mut facts = Facts {
                os: "windows-10".into(),
                arch: "x64".into(),
                language: "fr".into(),
                ..Facts::default()
            };
            facts.files.insert("C:\\app\\x.dll".into(), fact.clone());
            let id = identify(&p, &facts);
            assert_eq!(verdict_name(&id.verdict), *want, "{rule} {fact:?}: {id:#?}");
            if *want == "indeterminate" {
                assert!(
                    id.failing_check()
                        .unwrap()
                        .detail
                        .contains("no version resource")
                );
            }
        }
    }

    #[test]
    fn registry_package_probe_and_update_rules() {
        let linux = |rule: &str| {
            pkg(&format!(
                "id: a\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\nidentification:\n  - {rule}\n{INSTALL}"
            ))
        };
        let deb = Facts {
            os: "debian-12".into(),
            arch: "x64".into(),
            language: "en".into(),
            ..Facts::default()
        };
        let with = |f: &dyn Fn(&mut Facts)| {
            let mut x = deb.clone();
            f(&mut x);
            x
        };
        let cases: Vec<(Package, Facts, &str)> = vec![
            (
                linux("{ package: hello, version: '>= 1.2.0-1' }"),
                with(&|f| {
                    f.packages.insert("hello".into(), Some("1.10.0-1".into()));
                }),
                "applied",
            ),
            (
                linux("{ package: hello, version: '>= 1.2.0-1' }"),
                with(&|f| {
                    f.packages
                        .insert("hello".into(), Some("1.2.0~rc1-1".into()));
                }),
                "not_applied",
            ),
            (
                linux("{ package: hello }"),
                with(&|f| {
                    f.packages.insert("hello".into(), None);
                }),
                "not_applied",
            ),
            (linux("{ package: hello }"), deb.clone(), "indeterminate"),
            (
                linux("{ package: hello, manager: rpm, version: '< 2' }"),
                with(&|f| {
                    f.packages.insert("hello".into(), Some("1.9-3.el9".into()));
                }),
                "applied",
            ),
            (
                linux("{ probe: 'test -f /x', exit_code: 0 }"),
                with(&|f| {
                    f.probes.insert("test -f /x".into(), Some(0));
                }),
                "applied",
            ),
            (
                linux("{ probe: 'test -f /x', exit_code: 0 }"),
                with(&|f| {
                    f.probes.insert("test -f /x".into(), Some(1));
                }),
                "not_applied",
            ),
            (
                linux("{ probe: 'test -f /x' }"),
                with(&|f| {
                    f.probes.insert("test -f /x".into(), None);
                }),
                "indeterminate",
            ),
            (
                linux("{ registry: 'HKLM\\SOFTWARE\\V', value: Ver, data: '2' }"),
                with(&|f| {
                    f.registry
                        .insert("HKLM\\SOFTWARE\\V\\Ver".into(), Some("2".into()));
                }),
                "applied",
            ),
            (
                linux("{ registry: 'HKLM\\SOFTWARE\\V', value: Ver, data: '2' }"),
                with(&|f| {
                    f.registry
                        .insert("HKLM\\SOFTWARE\\V\\Ver".into(), Some("1".into()));
                }),
                "not_applied",
            ),
            (
                linux("{ registry: 'HKLM\\SOFTWARE\\V' }"),
                with(&|f| {
                    f.registry
                        .insert("HKLM\\SOFTWARE\\V\\(Default)".into(), None);
                }),
                "not_applied",
            ),
            (
                linux("{ installed_update: KB5034441 }"),
                with(&|f| f.installed_updates = updates(&["KB5034441"])),
                "applied",
            ),
            (
                linux("{ installed_update: KB5034441 }"),
                with(&|f| f.installed_updates = updates(&[])),
                "not_applied",
            ),
            (
                linux("{ service_pack: { major: 1, minor: 0 } }"),
                with(&|f| f.service_pack = Some(SpLevel { major: 0, minor: 0 })),
                "not_applied",
            ),
        ];
        for (p, facts, want) in cases {
            let id = identify(&p, &facts);
            assert_eq!(verdict_name(&id.verdict), want, "{:?}: {id:#?}", p.rules);
        }
    }

    #[test]
    fn one_failure_outweighs_unknowns() {
        let p = pkg(&format!(
            "id: a\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\nidentification:\n  - {{ probe: a }}\n  - {{ probe: b }}\n{INSTALL}"
        ));
        let mut facts = Facts {
            os: "debian-12".into(),
            arch: "x64".into(),
            language: "en".into(),
            ..Facts::default()
        };
        facts.probes.insert("b".into(), Some(1));
        assert_eq!(identify(&p, &facts).verdict, Verdict::NotApplied);
        facts.probes.insert("b".into(), Some(0));
        assert!(
            matches!(identify(&p, &facts).verdict, Verdict::Indeterminate(r) if r.contains("probe `a`"))
        );
        facts.probes.insert("a".into(), Some(0));
        assert_eq!(identify(&p, &facts).verdict, Verdict::Applied);
    }

    #[test]
    fn queries_list_what_rules_read() {
        let p = hotfix(
            "identification:\n  - { file: 'C:\\x.dll', change: version_up, version: '1.0' }\n  - { probe: 'p' }\n",
        );
        let q = queries(&p);
        assert!(q.contains(&Query::InstalledUpdates));
        assert!(q.contains(&Query::File {
            path: "C:\\x.dll".into(),
            version: true,
            sha256: false
        }));
        assert!(q.contains(&Query::Probe {
            command: "p".into()
        }));
    }
}
