//! Package lifecycle decisions: which published version may become current (publish order,
//! explicit rollback), whether a delivery is superseded on a machine, and whether the
//! packages it requires let it start. Pure: the server reads the rows and carries out what
//! these return.

use crate::delivery::State;
use crate::model::package::{Op, Package, PackageRef};
use crate::model::problem::Problem;
use crate::model::raw::{RawPackage, RawPackageRef};
use crate::versions::{dpkg_cmp, publish_order};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// How a package about to be published stands against the current version under its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Newer, equal or not comparable: it becomes current.
    Accept,
    /// Older, and the publish said `rollback`: it becomes current again.
    Rollback,
    /// Older, without `rollback`: a replay of an older signed version is refused.
    RefuseOlder { current: String, offered: String },
}

/// Decides a publish of `new` over `current` (None: the first publish of the id).
pub fn publish(current: Option<&Package>, new: &Package, rollback: bool) -> Publish {
    let Some(current) = current else {
        return Publish::Accept;
    };
    match (publish_order(current, new), rollback) {
        (Some(Ordering::Less), true) => Publish::Rollback,
        (Some(Ordering::Less), false) => Publish::RefuseOlder {
            current: shown_version(current),
            offered: shown_version(new),
        },
        _ => Publish::Accept,
    }
}

/// A package's version as people name it: `version`, else its service-pack level.
pub fn shown_version(p: &Package) -> String {
    match (&p.version, &p.kind) {
        (Some(v), _) => v.clone(),
        (None, crate::model::package::Kind::ServicePack { level }) => format!("SP {level}"),
        _ => "unversioned".into(),
    }
}

/// Whether the `supersedes:` entry `s` names `p` (its id, and its version when the entry
/// has a constraint; a constraint never matches a package without a version).
pub fn names(s: &PackageRef, p: &Package) -> bool {
    names_version(s, p.id.as_str(), p.version.as_deref())
}

/// Whether `r` names the package `id` at `version`.
fn names_version(r: &PackageRef, id: &str, version: Option<&str>) -> bool {
    if r.id.as_str() != id {
        return false;
    }
    let Some(c) = &r.versions else {
        return true;
    };
    let Some(v) = version else {
        return false;
    };
    let o = dpkg_cmp(v, &c.version);
    match c.op {
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Eq => o == Ordering::Equal,
        Op::Ge => o != Ordering::Less,
        Op::Gt => o == Ordering::Greater,
    }
}

/// One delivery to the machine of another published package.
#[derive(Debug, Clone, Copy)]
pub struct Other<'a> {
    pub package: &'a Package,
    pub state: &'a State,
    /// An install (not an uninstall, whose `applied` means removed).
    pub install: bool,
}

/// The package that supersedes `package` on a machine, if any: one whose `supersedes:`
/// names it and which is applied there, or on its way (busy on the machine: transferring,
/// executing, verifying, awaiting the restart it asked for or staged for the next start).
/// A successor that is merely pending, failed or not applicable supersedes nothing: the
/// machine would otherwise end with neither package.
pub fn superseded_by(package: &Package, others: &[Other]) -> Option<String> {
    others
        .iter()
        .filter(|o| o.install && o.package.id != package.id)
        .filter(|o| *o.state == State::Applied || o.state.is_busy())
        .find(|o| o.package.supersedes.iter().any(|s| names(s, package)))
        .map(|o| o.package.id.to_string())
}

/// One delivery to the machine of a package, as `requirements` weighs it: the package id,
/// the version of the archive delivered, and its state.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    pub id: &'a str,
    pub version: Option<&'a str>,
    pub state: &'a State,
    /// An install (not an uninstall, whose `applied` means removed).
    pub install: bool,
}

/// Whether a delivery may be handed out, given the packages its package `requires:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirements {
    /// Every requirement is applied on the machine (or the package requires nothing).
    Start,
    /// A requirement is still on its way (pending, waiting for a retry, busy on the
    /// machine): the delivery stays pending. `requirement` is the first such id.
    Wait { requirement: String },
    /// A requirement will not be applied by itself: the delivery fails with E29 naming it.
    Failed { requirement: String, detail: String },
}

/// Decides whether `package` may be delivered to a machine, from every delivery there of the
/// packages it requires (`delivered`, oldest first). A requirement is met by an install of
/// a matching version that is applied (or superseded, which counts as applied). One still
/// waiting or busy holds the delivery; one with no delivery on the machine, or whose
/// deliveries all ended otherwise (failed, not applicable, loop stopped, cancelled, or an
/// applied version outside the constraint), fails it: nothing would ever satisfy it.
pub fn requirements(package: &Package, delivered: &[Delivered]) -> Requirements {
    let mut wait = None;
    for r in &package.requires {
        let of: Vec<&Delivered> = delivered
            .iter()
            .filter(|d| d.install && d.id == r.id.as_str())
            .collect();
        let applied =
            |d: &&&Delivered| matches!(d.state, State::Applied | State::Superseded { .. });
        if of
            .iter()
            .filter(applied)
            .any(|d| names_version(r, d.id, d.version))
        {
            continue;
        }
        if of.iter().any(|d| !d.state.is_terminal()) {
            wait.get_or_insert_with(|| r.id.to_string());
            continue;
        }
        let detail = match (of.last(), of.iter().rev().find(applied)) {
            (None, _) => "never delivered to this machine".to_string(),
            (_, Some(d)) => format!(
                "version {} is applied, the package requires {}",
                d.version.unwrap_or("(none)"),
                r.versions
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            ),
            (Some(d), None) => format!("its delivery ended {}", d.state.name()),
        };
        return Requirements::Failed {
            requirement: r.id.to_string(),
            detail,
        };
    }
    match wait {
        Some(requirement) => Requirements::Wait { requirement },
        None => Requirements::Start,
    }
}

/// The problems of a set of packages' references to one another (`package lint` of several
/// packages, or of a repository): a `requires:` or `supersedes:` cycle (A → B → A: each
/// package waits for, or replaces, the other, so neither is ever delivered), reported once at
/// the entry of the cycle's first id; and, when `complete` (the set is the whole
/// repository), an id that names no package of it. Returns (index of the package, problem).
pub fn reference_problems(packages: &[&RawPackage], complete: bool) -> Vec<(usize, Problem)> {
    let mut out = Vec::new();
    let known: BTreeSet<&str> = packages.iter().map(|p| p.id.as_str()).collect();
    for (key, list) in [
        (
            "requires",
            (|p: &RawPackage| p.requires.clone()) as fn(&RawPackage) -> Vec<RawPackageRef>,
        ),
        ("supersedes", |p: &RawPackage| p.supersedes.clone()),
    ] {
        // Edges by package id: (its index, entry index, the id named).
        let mut edges: BTreeMap<&str, Vec<(usize, usize, String)>> = BTreeMap::new();
        for (i, p) in packages.iter().enumerate() {
            for (j, r) in list(p).iter().enumerate() {
                if r.id() == p.id {
                    continue; // `requires-itself` / `supersedes-itself`, reported by resolve
                }
                if complete && !known.contains(r.id()) {
                    out.push((
                        i,
                        Problem::error(
                            "unknown-package",
                            format!("{key}[{j}]"),
                            format!(
                                "`{key}` names `{}`, which is no package of this repository",
                                r.id()
                            ),
                            "correct the id, or add that package to the repository",
                        ),
                    ));
                }
                edges
                    .entry(p.id.as_str())
                    .or_default()
                    .push((i, j, r.id().to_string()));
            }
        }
        let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
        for (from, list) in &edges {
            for (i, j, to) in list {
                // A path back from `to` to `from` closes a cycle through this entry.
                let Some(back) = path(&edges, to, from) else {
                    continue;
                };
                let mut cycle: Vec<String> = std::iter::once(from.to_string())
                    .chain(back.into_iter().take_while(|id| id != from))
                    .collect();
                // Reported once, from its smallest id.
                let first = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap_or(0);
                cycle.rotate_left(first);
                if cycle[0] != *from || !seen.insert(cycle.clone()) {
                    continue;
                }
                let shown = cycle
                    .iter()
                    .chain(std::iter::once(&cycle[0]))
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" → ");
                let (code, why) = if key == "requires" {
                    (
                        "requires-cycle",
                        "each package waits for the one it requires, so none of them is ever delivered",
                    )
                } else {
                    (
                        "supersedes-cycle",
                        "each package replaces the next, so a machine with one of them never receives the others, whichever came first",
                    )
                };
                out.push((
                    *i,
                    Problem::error(
                        code,
                        format!("{key}[{j}]"),
                        format!("`{key}` cycle {shown}: {why}"),
                        format!("remove one of the `{key}` entries that close the cycle"),
                    ),
                ));
            }
        }
    }
    out
}

/// The ids on a shortest path from `from` to `to` (starting with `from`), by breadth first.
fn path(
    edges: &BTreeMap<&str, Vec<(usize, usize, String)>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from.to_string()]);
    let mut visited = BTreeSet::from([from.to_string()]);
    while let Some(at) = queue.pop_front() {
        if at == to {
            let mut p = vec![at.clone()];
            let mut cur = at;
            while let Some(prev) = parent.get(&cur) {
                p.push(prev.clone());
                cur = prev.clone();
            }
            p.reverse();
            return Some(p);
        }
        for (_, _, next) in edges.get(at.as_str()).into_iter().flatten() {
            if visited.insert(next.clone()) {
                parent.insert(next.clone(), at.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::every_state;
    use crate::errors::Code;

    fn pkg(id: &str, version: &str, supersedes: &str) -> Package {
        let yaml = format!(
            "id: {id}\nkind: application\ntitle: t\nversion: '{version}'\ntargets: [{{ os: debian }}]\n\
             identification: [{{ probe: 'true' }}]\npayload: [a.sh]\ninstall: {{ command: 'sh a.sh' }}\n{supersedes}"
        );
        let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
        let (p, problems) = crate::model::package::resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:?}"))
    }

    #[test]
    fn a_successor_applied_or_on_its_way_supersedes() {
        let old = pkg("app", "1.0", "");
        let new = pkg("app-fix", "2.0", "supersedes: [app]\n");
        let other = pkg("tool", "1.0", "");
        for s in every_state() {
            let want = (s == State::Applied || s.is_busy()).then(|| "app-fix".to_string());
            let o = Other {
                package: &new,
                state: &s,
                install: true,
            };
            assert_eq!(superseded_by(&old, &[o]), want, "{s:?}");
            // An uninstall of the successor supersedes nothing, whatever its state.
            let removed = Other {
                install: false,
                ..o
            };
            assert_eq!(superseded_by(&old, &[removed]), None, "{s:?}");
        }
        // A package that does not name it, or the package itself, supersedes nothing.
        let applied = State::Applied;
        let unrelated = Other {
            package: &other,
            state: &applied,
            install: true,
        };
        assert_eq!(superseded_by(&old, &[unrelated]), None);
        assert_eq!(
            superseded_by(
                &new,
                &[Other {
                    package: &new,
                    ..unrelated
                }]
            ),
            None
        );
        let failed = State::Failed { code: Code::E21 };
        let both = [
            Other {
                package: &new,
                state: &failed,
                install: true,
            },
            Other {
                package: &new,
                state: &applied,
                install: true,
            },
        ];
        assert_eq!(superseded_by(&old, &both), Some("app-fix".into()));
    }

    #[test]
    fn a_version_constraint_names_only_those_versions() {
        let fix = pkg(
            "app-fix",
            "2.0",
            "supersedes:\n  - { id: app, version: '< 2.0' }\n",
        );
        let applied = State::Applied;
        let o = [Other {
            package: &fix,
            state: &applied,
            install: true,
        }];
        assert_eq!(
            superseded_by(&pkg("app", "1.9", ""), &o),
            Some("app-fix".into())
        );
        assert_eq!(
            superseded_by(&pkg("app", "1.10", ""), &o),
            Some("app-fix".into())
        );
        assert_eq!(superseded_by(&pkg("app", "2.0", ""), &o), None);
        assert_eq!(superseded_by(&pkg("app", "2.0.1", ""), &o), None);
        for (c, v, want) in [
            ("<= 2.0", "2.0", true),
            ("= 2.0", "2.0", true),
            ("= 2.0", "2.1", false),
            (">= 2.0", "1.0", false),
            ("> 2.0", "2.0~rc1", false),
            ("> 2.0", "2.0.1", true),
        ] {
            let fix = pkg(
                "app-fix",
                "3.0",
                &format!("supersedes:\n  - {{ id: app, version: '{c}' }}\n"),
            );
            let s = &fix.supersedes[0];
            assert_eq!(names(s, &pkg("app", v, "")), want, "{c} vs {v}");
        }
    }

    /// Lints a small package with `links` (YAML lines) added: refused, with exactly `want`
    /// (code, path).
    fn assert_lint(links: &str, want: &[(&str, &str)]) {
        let yaml = format!(
            "id: app\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\n\
             identification: [{{ probe: 'true' }}]\npayload: [a.sh]\ninstall: {{ command: 'sh a.sh' }}\n{links}"
        );
        let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
        let (p, problems) = crate::model::package::resolve(&raw);
        assert!(p.is_none());
        let codes: Vec<(&str, &str)> = problems.iter().map(|p| (p.code, p.path.as_str())).collect();
        assert_eq!(codes, want);
    }

    #[test]
    fn lint_refuses_a_package_that_supersedes_itself() {
        assert_lint(
            "supersedes: [old, { id: app, version: '< 2' }, { id: x, version: '~~' }]\n",
            &[
                ("supersedes-itself", "supersedes[1]"),
                ("package-version-format", "supersedes[2].version"),
            ],
        );
    }

    #[test]
    fn supersedes_entries_read_as_ids_or_mappings() {
        let entries = |list: &str| {
            let yaml = format!(
                "id: app\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\n\
                 install: {{ command: 'true' }}\nsupersedes: {list}\n"
            );
            serde_saphyr::from_str::<crate::model::raw::RawPackage>(&yaml)
                .map(|r| r.supersedes)
                .map_err(|e| e.to_string())
        };
        let read = entries("[old, 2024, { id: x, version: '< 2' }, { id: y }]").unwrap();
        let ids: Vec<&str> = read.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["old", "2024", "x", "y"]);
        // A typo inside a mapping is the unknown key it is.
        let err = entries("[{ id: x, versoin: '< 2' }]").unwrap_err();
        assert!(err.contains("unknown field `versoin`"), "{err}");
    }

    #[test]
    fn rollback_is_explicit() {
        let (v1, v2) = (pkg("app", "1.0", ""), pkg("app", "2.0", ""));
        assert_eq!(publish(None, &v1, false), Publish::Accept);
        assert_eq!(publish(Some(&v1), &v2, false), Publish::Accept);
        assert_eq!(publish(Some(&v2), &v2, false), Publish::Accept);
        assert_eq!(
            publish(Some(&v2), &v1, false),
            Publish::RefuseOlder {
                current: "2.0".into(),
                offered: "1.0".into()
            }
        );
        assert_eq!(publish(Some(&v2), &v1, true), Publish::Rollback);
        // Rollback to a newer version is just a publish.
        assert_eq!(publish(Some(&v1), &v2, true), Publish::Accept);
    }

    fn needs(requires: &str) -> Package {
        pkg("app", "1.0", &format!("requires: {requires}\n"))
    }

    fn install<'a>(id: &'a str, version: &'a str, state: &'a State) -> Delivered<'a> {
        Delivered {
            id,
            version: Some(version),
            state,
            install: true,
        }
    }

    #[test]
    fn a_requirement_applied_lets_the_delivery_start() {
        let a = needs("[lib]");
        assert_eq!(
            requirements(&pkg("app", "1.0", ""), &[]),
            Requirements::Start
        );
        for s in every_state() {
            let d = [install("lib", "1.0", &s)];
            let got = requirements(&a, &d);
            let want = match &s {
                State::Applied | State::Superseded { .. } => Requirements::Start,
                s if !s.is_terminal() => Requirements::Wait {
                    requirement: "lib".into(),
                },
                s => Requirements::Failed {
                    requirement: "lib".into(),
                    detail: format!("its delivery ended {}", s.name()),
                },
            };
            assert_eq!(got, want, "{s:?}");
            // An uninstall of the requirement, or another package, never counts.
            let removed = [Delivered {
                install: false,
                ..d[0]
            }];
            let other = [install("tool", "1.0", &s)];
            for d in [&removed[..], &other[..]] {
                assert_eq!(
                    requirements(&a, d),
                    Requirements::Failed {
                        requirement: "lib".into(),
                        detail: "never delivered to this machine".into()
                    },
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn any_applied_delivery_counts_and_a_failure_outweighs_a_wait() {
        let (applied, failed, pending) = (
            State::Applied,
            State::Failed { code: Code::E12 },
            State::Pending,
        );
        let a = needs("[lib, tool]");
        // An older scenario applied it; a newer one failed: it is on the machine.
        let d = [
            install("lib", "1.0", &applied),
            install("lib", "1.0", &failed),
            install("tool", "1.0", &pending),
        ];
        assert_eq!(
            requirements(&a, &d),
            Requirements::Wait {
                requirement: "tool".into()
            }
        );
        // A requirement that failed fails the delivery even while another still waits.
        let d = [
            install("lib", "1.0", &pending),
            install("tool", "1.0", &failed),
        ];
        assert_eq!(
            requirements(&a, &d),
            Requirements::Failed {
                requirement: "tool".into(),
                detail: "its delivery ended failed".into()
            }
        );
        // A failed delivery retried in a newer scenario waits for that one.
        let d = [
            install("lib", "1.0", &failed),
            install("lib", "1.0", &pending),
            install("tool", "1.0", &applied),
        ];
        assert_eq!(
            requirements(&a, &d),
            Requirements::Wait {
                requirement: "lib".into()
            }
        );
    }

    #[test]
    fn a_version_constraint_needs_a_matching_version_applied() {
        let a = needs("[{ id: lib, version: '>= 2.0' }]");
        let applied = State::Applied;
        assert_eq!(
            requirements(&a, &[install("lib", "2.0.1", &applied)]),
            Requirements::Start
        );
        assert_eq!(
            requirements(&a, &[install("lib", "1.9", &applied)]),
            Requirements::Failed {
                requirement: "lib".into(),
                detail: "version 1.9 is applied, the package requires >= 2.0".into()
            }
        );
        let unversioned = Delivered {
            version: None,
            ..install("lib", "", &applied)
        };
        assert!(matches!(
            requirements(&a, &[unversioned]),
            Requirements::Failed { .. }
        ));
    }

    #[test]
    fn lint_refuses_a_package_that_requires_itself() {
        assert_lint(
            "requires: [lib, { id: app }, { id: x, version: '~~' }]\n",
            &[
                ("requires-itself", "requires[1]"),
                ("package-version-format", "requires[2].version"),
            ],
        );
    }

    fn raw(id: &str, extra: &str) -> crate::model::raw::RawPackage {
        serde_saphyr::from_str(&format!(
            "id: {id}\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\n\
             identification: [{{ probe: 'true' }}]\ninstall: {{ command: x }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn reference_cycles_and_unknown_ids_are_found_once_and_placed() {
        let a = raw("a", "requires: [b]\nsupersedes: [c]\n");
        let b = raw("b", "requires: [{ id: c }, a]\n");
        let c = raw("c", "requires: [b]\nsupersedes: [a, nowhere]\n");
        let got = |complete| {
            reference_problems(&[&a, &b, &c], complete)
                .into_iter()
                .map(|(i, p)| format!("{i} {} {} {}", p.code, p.path, p.message))
                .collect::<Vec<_>>()
        };
        let all = got(true);
        assert!(
            all.iter()
                .any(|l| l.starts_with("2 unknown-package supersedes[1] ")),
            "{all:#?}"
        );
        // a → b → a and b → c → b: each once, at its smallest id's entry.
        assert!(
            all.iter()
                .any(|l| l.starts_with("0 requires-cycle requires[0] `requires` cycle a → b → a")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|l| l.starts_with("1 requires-cycle requires[0] `requires` cycle b → c → b")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|l| l
                    .starts_with("0 supersedes-cycle supersedes[0] `supersedes` cycle a → c → a")),
            "{all:#?}"
        );
        assert_eq!(all.len(), 4, "{all:#?}");
        // Not the whole repository: an id elsewhere may exist.
        assert_eq!(got(false).len(), 3);
        let lone = raw("lone", "requires: [elsewhere]\n");
        assert!(reference_problems(&[&lone], false).is_empty());
    }
}
