//! An emulated Windows endpoint: a machine described by a profile under the agent's root, so
//! many "Windows" machines run as agents on one Linux host with the same decision code.
//!
//! The agent is emulated when `DIR/endpoint.yaml` exists:
//!
//! ```yaml
//! os: windows-server-2008        # catalog id
//! arch: x86
//! language: ja
//! hostname: ws2008-ja-01
//! service_pack: "1.0"            # major.minor, optional
//! installed_updates: [KB958644, MS08-067]
//! free_disk_bytes: 2000000000
//! total_disk_bytes: 40000000000  # optional
//! registry: { 'HKLM\SOFTWARE\Vendor\Version': '2.1' }   # `key\value` → data, optional
//! exit_codes: { ws2008-sp2: 3010 }                       # forced exit code per package id
//! ```
//!
//! Files live under `DIR/fs/`, Windows paths mapped drive first: `%SystemRoot%\System32\x.dll`
//! → `C:\Windows\System32\x.dll` → `DIR/fs/C/Windows/System32/x.dll`, each component matched
//! case-insensitively against what exists (Windows paths are case-insensitive). File facts
//! (existence, PE version via `pack::pe`, SHA-256) are read from those real files.
//!
//! Installing a package on an emulated endpoint does not run the `.exe`: the install applies
//! its effects inside DIR instead. A HotFix adds its MS and KB numbers to `installed_updates`;
//! a service pack sets `service_pack` to its level; every payload file that is a PE image
//! replaces the file of the same name that one of the package's file rules points at. The exit
//! code is 0 unless `exit_codes` forces another one for the package id (3010 emulates "reboot
//! required"); effects are applied only when that code is in the success or reboot list. The
//! profile is rewritten (atomically) with the new updates and service pack level.

use super::config::write_atomic;
use crate::core::identify::{Facts, Query};
use crate::model::package::{Kind, Package, Rule, SpLevel};
use crate::model::types::UpdateId;
use crate::pack::pe;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub os: String,
    pub arch: String,
    pub language: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<String>,
    #[serde(default)]
    pub installed_updates: Vec<String>,
    pub free_disk_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exit_codes: BTreeMap<String, i32>,
}

/// An emulated endpoint rooted at the agent's directory.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub root: PathBuf,
    pub profile: Profile,
}

fn parse_sp(s: &str) -> Option<SpLevel> {
    let (a, b) = s.trim().split_once('.').unwrap_or((s.trim(), "0"));
    Some(SpLevel {
        major: a.parse().ok()?,
        minor: b.parse().ok()?,
    })
}

impl Endpoint {
    /// The emulated endpoint of `root`, or `None` when `root/endpoint.yaml` does not exist.
    pub fn load(root: &Path) -> Result<Option<Endpoint>> {
        let path = root.join("endpoint.yaml");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let profile: Profile = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} is not a valid endpoint profile", path.display()))?;
        for u in &profile.installed_updates {
            u.parse::<UpdateId>()
                .with_context(|| format!("{}: installed_updates", path.display()))?;
        }
        if let Some(sp) = &profile.service_pack
            && parse_sp(sp).is_none()
        {
            bail!(
                "{}: service_pack `{sp}` is not a level like `2.0`",
                path.display()
            );
        }
        Ok(Some(Endpoint {
            root: root.to_path_buf(),
            profile,
        }))
    }

    fn save(&self) -> Result<()> {
        let text = serde_saphyr::to_string(&self.profile).context("serializing the profile")?;
        write_atomic(&self.root.join("endpoint.yaml"), text.as_bytes())
    }

    pub fn fs_root(&self) -> PathBuf {
        self.root.join("fs")
    }

    /// Where a Windows path lives under `DIR/fs`; `None` for a path that is not absolute with a
    /// drive letter or that tries to leave the tree (`..`).
    pub fn map_path(&self, windows_path: &str) -> Option<PathBuf> {
        let expanded = expand_env(windows_path);
        let mut parts = expanded.split(['\\', '/']).filter(|p| !p.is_empty());
        let drive = parts.next()?;
        let letter = drive.strip_suffix(':')?;
        if letter.len() != 1 || !letter.chars().all(|c| c.is_ascii_alphabetic()) {
            return None;
        }
        let mut path = self.fs_root().join(letter.to_ascii_uppercase());
        for part in parts {
            if part == "." || part == ".." || part.contains(':') {
                return None;
            }
            path = match find_case_insensitive(&path, part) {
                Some(existing) => existing,
                None => path.join(part),
            };
        }
        Some(path)
    }

    /// The machine part of the facts: OS, language, service pack, installed updates.
    pub fn machine(&self) -> Facts {
        let p = &self.profile;
        Facts {
            os: p.os.clone(),
            arch: p.arch.clone(),
            language: p.language.clone(),
            service_pack: p.service_pack.as_deref().and_then(parse_sp),
            ..Facts::default()
        }
    }

    /// Fills `facts` from the profile and the files under `DIR/fs`.
    pub fn gather(&self, facts: &mut Facts, queries: &[Query]) {
        for q in queries {
            match q {
                Query::InstalledUpdates => {
                    let set: BTreeSet<UpdateId> = self
                        .profile
                        .installed_updates
                        .iter()
                        .filter_map(|u| u.parse().ok())
                        .collect();
                    facts.installed_updates = Some(set);
                }
                Query::ServicePack => {
                    // No service pack installed is level 0.0, which is a known fact.
                    facts.service_pack = Some(
                        self.profile
                            .service_pack
                            .as_deref()
                            .and_then(parse_sp)
                            .unwrap_or(SpLevel { major: 0, minor: 0 }),
                    );
                }
                Query::File {
                    path,
                    version,
                    sha256,
                } => {
                    // A path that cannot be mapped stays unknown (indeterminate), never guessed.
                    if let Some(local) = self.map_path(path) {
                        facts
                            .files
                            .insert(path.clone(), super::facts::file(&local, *version, *sha256));
                    }
                }
                Query::Registry { key } => {
                    let found = self
                        .profile
                        .registry
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.clone());
                    facts.registry.insert(key.clone(), found);
                }
                // An emulated Windows machine has no dpkg/rpm, and probes cannot run on it.
                Query::Package { name } => {
                    facts.packages.insert(name.clone(), None);
                }
                Query::Probe { command } => {
                    facts.probes.insert(command.clone(), None);
                }
            }
        }
    }

    /// Applies a package's install inside DIR (see the module doc). Returns the exit code and
    /// a transcript standing in for the installer's output.
    pub fn install(&mut self, pkg: &Package, payload_dir: &Path) -> Result<(i32, String)> {
        let code = self
            .profile
            .exit_codes
            .get(pkg.id.as_str())
            .copied()
            .unwrap_or(0);
        let mut out = format!(
            "emulated install of {} (exit code {code})\n",
            pkg.id.as_str()
        );
        let ok = pkg.install.success_exit_codes.contains(&code)
            || pkg.install.reboot_exit_codes.contains(&code);
        if !ok {
            out.push_str("exit code means failure: nothing applied\n");
            return Ok((code, out));
        }
        match &pkg.kind {
            Kind::Hotfix { ms_number, kb } => {
                let ids = [
                    ms_number.as_ref().map(|m| m.as_str().to_string()),
                    kb.as_ref().map(|k| k.as_str().to_string()),
                ];
                for id in ids.into_iter().flatten() {
                    let have = self
                        .profile
                        .installed_updates
                        .iter()
                        .any(|u| u.eq_ignore_ascii_case(&id));
                    if !have {
                        out.push_str(&format!("registered {id} as installed\n"));
                        self.profile.installed_updates.push(id);
                    }
                }
            }
            Kind::ServicePack { level } => {
                out.push_str(&format!("service pack level set to {level}\n"));
                self.profile.service_pack = Some(level.to_string());
            }
            Kind::Application => {}
        }
        for rel in &pkg.payload {
            let src = payload_dir.join(rel);
            if matches!(
                pe::file_version_resource(&src),
                Ok(pe::VersionResource::NotPe) | Err(_)
            ) {
                continue;
            }
            let name = Path::new(rel).file_name().and_then(|n| n.to_str());
            let Some(name) = name else { continue };
            for rule in &pkg.rules {
                let Rule::File { path, .. } = rule else {
                    continue;
                };
                let target_name = path.rsplit(['\\', '/']).next().unwrap_or("");
                if !target_name.eq_ignore_ascii_case(name) {
                    continue;
                }
                let dest = self
                    .map_path(path)
                    .with_context(|| format!("file rule path `{path}` cannot be mapped"))?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::copy(&src, &dest)
                    .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
                out.push_str(&format!("replaced {path}\n"));
            }
        }
        self.save()?;
        Ok((code, out))
    }
}

/// Expands the environment variables Windows file rules use, as on a default installation.
fn expand_env(path: &str) -> String {
    const VARS: &[(&str, &str)] = &[
        ("%systemroot%", "C:\\Windows"),
        ("%windir%", "C:\\Windows"),
        ("%systemdrive%", "C:"),
        ("%programfiles(x86)%", "C:\\Program Files (x86)"),
        ("%programfiles%", "C:\\Program Files"),
        ("%commonprogramfiles%", "C:\\Program Files\\Common Files"),
        ("%programdata%", "C:\\ProgramData"),
    ];
    let mut out = path.to_string();
    for (var, value) in VARS {
        while let Some(i) = out.to_ascii_lowercase().find(var) {
            out.replace_range(i..i + var.len(), value);
        }
    }
    out
}

fn find_case_insensitive(dir: &Path, name: &str) -> Option<PathBuf> {
    let exact = dir.join(name);
    if exact.exists() {
        return Some(exact);
    }
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        e.file_name()
            .to_str()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .map(|_| e.path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(dir: &Path) -> Endpoint {
        Endpoint {
            root: dir.to_path_buf(),
            profile: Profile {
                os: "windows-server-2008".into(),
                arch: "x86".into(),
                language: "ja".into(),
                hostname: "h".into(),
                service_pack: None,
                installed_updates: vec![],
                free_disk_bytes: 1,
                total_disk_bytes: None,
                registry: BTreeMap::new(),
                exit_codes: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn windows_paths_map_under_fs_case_insensitively_and_never_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("fs/C/WINDOWS/system32")).unwrap();
        let e = endpoint(dir.path());
        assert_eq!(
            e.map_path("%SystemRoot%\\System32\\x.dll").unwrap(),
            dir.path().join("fs/C/WINDOWS/system32/x.dll")
        );
        assert_eq!(
            e.map_path("d:\\data\\a.txt").unwrap(),
            dir.path().join("fs/D/data/a.txt")
        );
        assert_eq!(e.map_path("C:\\Windows\\..\\..\\..\\etc\\passwd"), None);
        assert_eq!(e.map_path("relative\\path"), None);
    }

    #[test]
    fn service_pack_levels_parse() {
        assert_eq!(parse_sp("2.0"), Some(SpLevel { major: 2, minor: 0 }));
        assert_eq!(parse_sp("1"), Some(SpLevel { major: 1, minor: 0 }));
        assert_eq!(parse_sp("x"), None);
    }
}
