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
            "target OS, architecture and language",
            Outcome::Pass,
            format!("machine is {machine}; package targets {targets}"),
        )),
        None => Err(format!(
            "machine is {machine}; the package targets only {targets}"
        )),
    }
}

/// Decides whether `pkg` is applied on the machine described by `facts`.
pub fn identify(pkg: &Package, facts: &Facts) -> Identification {
    let mut explanation = Vec::new();
    match applicability(pkg, facts) {
        Ok(c) => explanation.push(c),
        Err(reason) => {
            explanation.push(check(
                "target OS, architecture and language",
                Outcome::Fail,
                reason.clone(),
            ));
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
