//! `patchcast package lint`: every problem of a package directory, placed at its line and column.
//!
//! Structure and value problems come from `resolve`. This module adds what needs the files:
//! payload present and regular, files in the directory that the payload list forgets, and the
//! FAQ's Q2 mistakes about version resources, judged by reading the payload itself (the real
//! PE VERSIONINFO of .exe/.dll files; text and scripts have none).

use super::payload::Refusal;
use super::pe::{
    UNVERSIONED_EXTENSIONS, VERSIONED_EXTENSIONS, VersionResource, file_version_resource,
};
use super::{Loaded, PACKAGE_FILE, load};
use patchcast_core::lifecycle::reference_problems;
use patchcast_core::model::package::{Package, resolve};
use patchcast_core::model::problem::{Located, Problem};
use patchcast_core::model::raw::{RawChange, RawPackage};
use patchcast_core::model::types::FileVersion;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct Report {
    pub dir: String,
    pub problems: Vec<Located>,
    #[serde(skip)]
    pub package: Option<Package>,
    #[serde(skip)]
    pub raw: Option<RawPackage>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        patchcast_core::model::problem::has_errors(&self.problems)
    }
}

pub fn lint_dir(dir: &Path) -> Report {
    let loaded = match load(dir) {
        Ok(l) => l,
        Err(p) => {
            return Report {
                dir: dir.display().to_string(),
                problems: vec![*p],
                package: None,
                raw: None,
            };
        }
    };
    let (package, mut problems) = resolve(&loaded.raw);
    problems.extend(payload_problems(dir, &loaded.raw));
    problems.extend(version_resource_problems(dir, &loaded.raw));
    let mut located: Vec<Located> = problems.into_iter().map(|p| loaded.locate(p)).collect();
    located.sort_by(|a, b| {
        (a.line, a.column, a.problem.code).cmp(&(b.line, b.column, b.problem.code))
    });
    let Loaded { raw, .. } = loaded;
    let errors = patchcast_core::model::problem::has_errors(&located);
    Report {
        dir: dir.display().to_string(),
        problems: located,
        package: package.filter(|_| !errors),
        raw: Some(raw),
    }
}

/// Lints several packages together: each on its own (`lint_dir`), then their references to
/// one another (`requires:`/`supersedes:` cycles; with `complete`, because they are the whole
/// repository, ids that name none of them), each placed at its entry.
pub fn lint_set(dirs: &[PathBuf], complete: bool) -> Vec<Report> {
    let mut reports: Vec<Report> = dirs.iter().map(|d| lint_dir(d)).collect();
    let loaded: Vec<(usize, Loaded)> = dirs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| load(d).ok().map(|l| (i, l)))
        .collect();
    let raws: Vec<&RawPackage> = loaded.iter().map(|(_, l)| &l.raw).collect();
    for (k, problem) in reference_problems(&raws, complete) {
        let (i, l) = &loaded[k];
        let report = &mut reports[*i];
        report.problems.push(l.locate(problem));
        report.problems.sort_by(|a, b| {
            (a.line, a.column, a.problem.code).cmp(&(b.line, b.column, b.problem.code))
        });
        if report.has_errors() {
            report.package = None;
        }
    }
    reports
}

/// The package directories of a repository: every directory directly under `root` that
/// holds a `package.yaml`, sorted.
pub fn repository(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(PACKAGE_FILE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn payload_problems(dir: &Path, raw: &RawPackage) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, p) in raw.payload.iter().enumerate() {
        if patchcast_core::model::package::check_relative_path(p).is_err() {
            continue; // resolve reported it
        }
        let Err(why) = super::payload::check(dir, p) else {
            continue;
        };
        let (code, help) = match why {
            Refusal::Missing(_) => (
                "payload-missing",
                "copy the file into the package directory, or remove it from `payload`",
            ),
            Refusal::Link { .. } => (
                "payload-not-regular",
                "replace the link with the file itself; archives hold regular files of the package directory only",
            ),
            Refusal::NotRegular(_) => (
                "payload-not-regular",
                "list files, not directories; each file of a directory is listed on its own",
            ),
        };
        out.push(Problem::error(
            code,
            format!("payload[{i}]"),
            format!("payload {why}"),
            help,
        ));
    }
    let listed: BTreeSet<&str> = raw.payload.iter().map(String::as_str).collect();
    let mut stray = Vec::new();
    walk(dir, "", &mut stray);
    for f in stray.into_iter().filter(|f| !listed.contains(f.as_str())) {
        out.push(Problem::warning(
            "payload-unreferenced",
            "payload",
            format!("`{f}` is in the package directory but not listed in `payload`, so it will not be shipped"),
            format!("add `{f}` to `payload`, or delete it from the package directory"),
        ));
    }
    out
}

/// Files below `dir` (relative, `/`-separated), skipping package.yaml and hidden entries.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || (prefix.is_empty() && name == PACKAGE_FILE) {
            continue;
        }
        let rel = format!("{prefix}{name}");
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), &format!("{rel}/"), out),
            Ok(_) => out.push(rel),
            Err(_) => {}
        }
    }
}

/// What can be known about the version resource of the file a rule names.
enum Resource {
    /// It has one; the version is known when the file ships in the payload.
    Versioned(Option<FileVersion>),
    /// It has none, and why we know.
    None(String),
    Unknown,
}

fn resource_of(dir: &Path, raw: &RawPackage, target_path: &str) -> Resource {
    let base = target_path
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(target_path);
    let in_payload = raw.payload.iter().find(|p| {
        p.rsplit('/')
            .next()
            .is_some_and(|b| b.eq_ignore_ascii_case(base))
    });
    if let Some((p, found)) =
        in_payload.and_then(|p| file_version_resource(&dir.join(p)).ok().map(|r| (p, r)))
    {
        return match found {
            VersionResource::Version(v) => Resource::Versioned(Some(v)),
            VersionResource::PeWithout => Resource::None(format!(
                "payload `{p}` is a PE file without a VERSIONINFO resource"
            )),
            VersionResource::NotPe => Resource::None(format!(
                "payload `{p}` is not a PE file (text, script or data), so it has no version resource"
            )),
        };
    }
    let ext = base
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if VERSIONED_EXTENSIONS.contains(&ext.as_str()) {
        Resource::Versioned(None)
    } else if UNVERSIONED_EXTENSIONS.contains(&ext.as_str()) {
        Resource::None(format!(
            "`{base}` is a text or script file, which has no version resource"
        ))
    } else if target_path.starts_with('/') {
        Resource::None("files on Linux have no Windows version resource".to_string())
    } else {
        Resource::Unknown
    }
}

fn version_resource_problems(dir: &Path, raw: &RawPackage) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, r) in raw.identification.iter().enumerate() {
        let (Some(file), Some(version)) = (&r.file, &r.version) else {
            continue;
        };
        if r.change == Some(RawChange::Delete) {
            continue; // resolve reports delete-with-version
        }
        let path = format!("identification[{i}]");
        match resource_of(dir, raw, file) {
            Resource::None(why) if matches!(r.change, Some(RawChange::Rewrite | RawChange::VersionUp)) => out.push(Problem::error(
                "change-needs-version-resource",
                format!("{path}.change"),
                format!(
                    "change: {} compares file versions, but {why}; the package could never be seen as applied and would be re-delivered at every auto-update",
                    if r.change == Some(RawChange::Rewrite) { "rewrite" } else { "version_up" }
                ),
                "for a text or script file use change: new (optionally with sha256 for the exact content) or change: delete, and remove `version`",
            )),
            Resource::None(why) => out.push(Problem::error(
                "version-without-resource",
                format!("{path}.version"),
                format!("version {version} is set on `{file}`, but {why}; its version can never be compared, so the package would be re-delivered at every auto-update"),
                "remove `version` (use sha256 to pin the exact content)",
            )),
            // A shipped file older than the rule demands cannot satisfy it after installing.
            Resource::Versioned(Some(have)) => {
                let Ok(want) = version.parse::<FileVersion>() else { continue };
                let never = match r.change {
                    Some(RawChange::VersionUp | RawChange::New) => have < want,
                    Some(RawChange::Rewrite) => have != want,
                    _ => false,
                };
                if never {
                    out.push(Problem::warning(
                        "payload-version-mismatch",
                        format!("{path}.version"),
                        format!("the rule expects version {want}, but the shipped `{}` is {have}; after installing, the rule cannot pass", file.rsplit(['\\', '/']).next().unwrap_or(file)),
                        format!("set version: {have}, or ship the file with version {want}"),
                    ));
                }
            }
            Resource::Versioned(None) | Resource::Unknown => {}
        }
    }
    out
}
