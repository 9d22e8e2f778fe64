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
//! ## The emulated installer
//!
//! Installing a package on an emulated endpoint does not run the `.exe`. What the installer
//! does comes from a description shipped inside the payload, as a real installer carries its
//! own behaviour: [`INSTALLER_FILE`] (`emulated-installer.yaml`) at the top of the payload,
//! listed in the package's `payload` like any other file:
//!
//! ```yaml
//! updates: [MS10-046, KB2286198]   # registered in installed_updates (KB or MS numbers)
//! service_pack: "2.0"              # service pack level it sets, major.minor
//! files:                           # payload file → the Windows path it replaces
//!   pcsample.dll: '%SystemRoot%\System32\pcsample.dll'
//! exit_code: 0                     # 3010: applied, restart required
//! ```
//!
//! Every key is optional (an empty mapping is an installer that changes nothing and exits 0);
//! unknown keys are refused. Nothing is taken from the package definition: a package that
//! identifies itself by an MS number, KB number or rule its installer does not produce never
//! verifies, and re-delivery loops until the loop breaker stops it (E24), as on a real machine
//! (the DeploymentManager FAQ's Q2). The package id only selects the profile's `exit_codes`
//! override, which emulates the machine's conditions (a pending restart, a locked file).
//!
//! The exit code is the override when the profile has one for the package id, else the
//! description's `exit_code`. The effects are applied only when that code is one a Windows
//! installer returns after installing (0, 3010 restart required, 1641 restart initiated); any
//! other code is a failed run that changed nothing. A payload without the description is an
//! installer with no effects: it exits 0 (or the override) and its transcript says no
//! description was found, so such a package never verifies. A description that does not parse
//! or names a payload file that is missing, a bad update number, service pack level or a
//! Windows path that cannot be mapped is a broken installer: nothing is applied, the exit code
//! is 1603 (Windows Installer's fatal error) and the transcript names the file and the
//! problem, so the administrator sees it in the delivery's output. The profile is rewritten
//! (atomically) with the new updates and service pack level.

use super::config::write_atomic;
use anyhow::{Context, Result, bail};
use patchcast_core::identify::{Facts, Query};
use patchcast_core::model::package::{Package, SpLevel, check_relative_path};
use patchcast_core::model::types::UpdateId;
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

    /// Runs the emulated installer of the payload in `payload_dir` (see the module doc): its
    /// effects come from [`INSTALLER_FILE`] in the payload, never from the package
    /// definition. Returns the exit code and a transcript standing in for the installer's
    /// output.
    pub fn install(&mut self, pkg: &Package, payload_dir: &Path) -> Result<(i32, String)> {
        let forced = self.profile.exit_codes.get(pkg.id.as_str()).copied();
        let mut out = format!("emulated install of {}\n", pkg.id.as_str());
        let planned = Installer::load(payload_dir).and_then(|found| match found {
            Some(installer) => self
                .plan(&installer, payload_dir)
                .map(|effects| Some((installer.exit_code, effects)))
                .context(INSTALLER_FILE),
            None => Ok(None),
        });
        let effects = match planned {
            Ok(Some(effects)) => {
                out.push_str(&format!("installer behaviour from {INSTALLER_FILE}\n"));
                Some(effects)
            }
            Ok(None) => {
                out.push_str(&format!(
                    "no {INSTALLER_FILE} in the payload: the installer has no described effects and changes nothing\n"
                ));
                None
            }
            Err(e) => {
                out.push_str(&format!(
                    "{e:#}\nthe installer is broken: nothing applied (exit code {BROKEN_EXIT_CODE})\n"
                ));
                return Ok((BROKEN_EXIT_CODE, out));
            }
        };
        let own = effects.as_ref().map_or(0, |(code, _)| *code);
        let code = forced.unwrap_or(own);
        match forced {
            Some(c) => out.push_str(&format!("exit code {c} (forced by endpoint.yaml)\n")),
            None => out.push_str(&format!("exit code {code}\n")),
        }
        if !INSTALLED_EXIT_CODES.contains(&code) {
            out.push_str("exit code means the installer failed: nothing applied\n");
            return Ok((code, out));
        }
        let Some((_, effects)) = effects else {
            return Ok((code, out));
        };
        for id in effects.updates {
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
        if let Some(level) = effects.service_pack {
            out.push_str(&format!("service pack level set to {level}\n"));
            self.profile.service_pack = Some(level.to_string());
        }
        for (src, windows_path, dest) in effects.files {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::copy(&src, &dest).map_err(|err| Replace {
                windows_path: windows_path.clone(),
                dest: dest.display().to_string(),
                err,
            })?;
            out.push_str(&format!("replaced {windows_path}\n"));
        }
        self.save()?;
        Ok((code, out))
    }

    /// Checks a description against the payload and this machine before anything is applied,
    /// so a broken installer changes nothing.
    fn plan(&self, installer: &Installer, payload_dir: &Path) -> Result<Effects> {
        let mut updates = Vec::new();
        for u in &installer.updates {
            let id: UpdateId = u.parse().context("updates")?;
            updates.push(id.to_string());
        }
        let service_pack = match &installer.service_pack {
            Some(s) => Some(
                parse_sp(s)
                    .with_context(|| format!("service_pack `{s}` is not a level like `2.0`"))?,
            ),
            None => None,
        };
        let mut files = Vec::new();
        for (rel, windows_path) in &installer.files {
            check_relative_path(rel)
                .map_err(|why| anyhow::anyhow!("files: payload file `{rel}` {why}"))?;
            let src = payload_dir.join(rel);
            if !src.is_file() {
                bail!("files: `{rel}` is not a file of the payload");
            }
            let dest = self.map_path(windows_path).with_context(|| {
                format!(
                    "files: `{windows_path}` is not an absolute Windows path with a drive letter"
                )
            })?;
            files.push((src, windows_path.clone(), dest));
        }
        Ok(Effects {
            updates,
            service_pack,
            files,
        })
    }
}

/// The description of the emulated installer's behaviour, at the top of the payload.
pub const INSTALLER_FILE: &str = "emulated-installer.yaml";

/// Exit codes after which a Windows installer has installed: success, restart required
/// (ERROR_SUCCESS_REBOOT_REQUIRED), restart initiated (ERROR_SUCCESS_REBOOT_INITIATED).
const INSTALLED_EXIT_CODES: [i32; 3] = [0, 3010, 1641];

/// The exit code of an installer whose description is broken (ERROR_INSTALL_FAILURE).
const BROKEN_EXIT_CODE: i32 = 1603;

/// What running a package's installer does on an emulated endpoint (`emulated-installer.yaml`,
/// see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installer {
    /// KB or MS numbers added to the installed-update list.
    #[serde(default)]
    pub updates: Vec<String>,
    /// The service pack level set, `major.minor`.
    #[serde(default)]
    pub service_pack: Option<String>,
    /// Payload file (relative to the payload) → the Windows path it replaces.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The installer's own exit code (3010: applied, restart required).
    #[serde(default)]
    pub exit_code: i32,
}

impl Installer {
    /// The description in `payload_dir`, `None` when the payload has none; an error naming
    /// the file when it cannot be read or parsed.
    pub fn load(payload_dir: &Path) -> Result<Option<Installer>> {
        let path = payload_dir.join(INSTALLER_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{INSTALLER_FILE}: cannot be read"))?;
        // An empty file is an installer with no effects.
        if text.trim().is_empty() {
            return Ok(Some(Installer::default()));
        }
        let installer: Installer = serde_saphyr::from_str(&text).with_context(|| {
            format!("{INSTALLER_FILE} is not a valid emulated installer description")
        })?;
        Ok(Some(installer))
    }
}

/// A description checked against the payload and the machine, ready to apply.
struct Effects {
    updates: Vec<String>,
    service_pack: Option<SpLevel>,
    /// (payload file, the Windows path as written, where it lives under `DIR/fs`)
    files: Vec<(PathBuf, String, PathBuf)>,
}

/// Expands the environment variables Windows file rules use, as on a default installation.
fn expand_env(path: &str) -> String {
    const VARS: &[(&str, &str)] = &[
        ("systemroot", "C:\\Windows"),
        ("windir", "C:\\Windows"),
        ("systemdrive", "C:"),
        ("programfiles(x86)", "C:\\Program Files (x86)"),
        ("programfiles", "C:\\Program Files"),
        ("commonprogramfiles", "C:\\Program Files\\Common Files"),
        ("programdata", "C:\\ProgramData"),
    ];
    patchcast_core::facts::windows::expand_vars(path, |name| {
        VARS.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
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

/// Replacing a file on the emulated machine failed; typed so that the target sorts it by
/// its `io::ErrorKind` (a busy file is the Windows sharing violation, E11).
#[derive(Debug, thiserror::Error)]
#[error("replacing {windows_path} ({dest}): {err}")]
pub struct Replace {
    pub windows_path: String,
    pub dest: String,
    pub err: std::io::Error,
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

    fn package(yaml_extra: &str) -> Package {
        let yaml = format!(
            "id: p\nkind: hotfix\ntitle: t\n{yaml_extra}targets: [{{ os: windows-server-2008, arch: x86 }}]\ninstall: {{ command: 'x' }}\n"
        );
        let raw: patchcast_core::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
        let (p, problems) = patchcast_core::model::package::resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:#?}"))
    }

    /// A saved endpoint under `dir/agent` and a payload directory `dir/payload` with `files`.
    fn setup(dir: &Path, files: &[(&str, &str)]) -> (Endpoint, PathBuf) {
        let mut e = endpoint(&dir.join("agent"));
        std::fs::create_dir_all(&e.root).unwrap();
        e.profile.installed_updates = vec!["KB958644".into()];
        e.save().unwrap();
        let payload = dir.join("payload");
        std::fs::create_dir_all(&payload).unwrap();
        for (name, text) in files {
            std::fs::write(payload.join(name), text).unwrap();
        }
        (e, payload)
    }

    fn saved(e: &Endpoint) -> Profile {
        Endpoint::load(&e.root).unwrap().unwrap().profile
    }

    #[test]
    fn the_payload_description_decides_the_effects_not_the_package_definition() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, payload) = setup(
            dir.path(),
            &[(
                INSTALLER_FILE,
                "updates: [ms10-046, KB2286198, kb958644]\nservice_pack: \"2\"\nfiles:\n  lib/new.dll: '%SystemRoot%\\System32\\NEW.dll'\nexit_code: 3010\n",
            )],
        );
        std::fs::create_dir_all(payload.join("lib")).unwrap();
        std::fs::write(payload.join("lib/new.dll"), "new bytes").unwrap();
        std::fs::create_dir_all(e.root.join("fs/C/WINDOWS/system32")).unwrap();
        std::fs::write(e.root.join("fs/C/WINDOWS/system32/new.dll"), "old").unwrap();
        // The package says MS99-999: the installer does not care.
        let (code, out) = e
            .install(&package("ms_number: MS99-999\n"), &payload)
            .unwrap();
        assert_eq!(code, 3010, "{out}");
        assert!(out.contains("registered MS10-046 as installed"), "{out}");
        assert!(!out.contains("MS99-999"), "{out}");
        let p = saved(&e);
        assert_eq!(p.installed_updates, ["KB958644", "MS10-046", "KB2286198"]);
        assert_eq!(p.service_pack.as_deref(), Some("2.0"));
        assert_eq!(
            std::fs::read_to_string(e.root.join("fs/C/WINDOWS/system32/new.dll")).unwrap(),
            "new bytes"
        );
    }

    #[test]
    fn without_a_description_the_installer_changes_nothing_and_exits_0() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, payload) = setup(dir.path(), &[("setup.exe", "MZ")]);
        let (code, out) = e
            .install(&package("kb: KB2286198\nms_number: MS10-046\n"), &payload)
            .unwrap();
        assert_eq!(code, 0);
        assert!(
            out.contains("no emulated-installer.yaml in the payload"),
            "{out}"
        );
        assert_eq!(saved(&e).installed_updates, ["KB958644"]);
    }

    #[test]
    fn a_broken_description_fails_naming_the_file_and_applies_nothing() {
        for (text, says) in [
            ("updates: [KB1]\nreboot: true\n", "reboot"),
            ("updates: [KB2286198, XP-1]\n", "XP-1"),
            ("service_pack: two\n", "service_pack"),
            ("files: { missing.dll: 'C:\\x.dll' }\n", "missing.dll"),
            ("files: { ../x.dll: 'C:\\x.dll' }\n", "../x.dll"),
            (
                "updates: [KB2286198]\nfiles: { setup.exe: 'relative\\x.dll' }\n",
                "relative",
            ),
            ("updates: [KB2286198\n", "emulated-installer.yaml"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut e, payload) =
                setup(dir.path(), &[(INSTALLER_FILE, text), ("setup.exe", "MZ")]);
            let (code, out) = e.install(&package("kb: KB2286198\n"), &payload).unwrap();
            assert_eq!(code, 1603, "{text}: {out}");
            assert!(
                out.contains(INSTALLER_FILE) && out.contains(says),
                "{text}: {out}"
            );
            assert!(out.contains("nothing applied"), "{out}");
            assert_eq!(saved(&e).installed_updates, ["KB958644"], "{text}");
        }
    }

    #[test]
    fn a_forced_failure_code_applies_nothing_and_a_forced_3010_applies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, payload) = setup(dir.path(), &[(INSTALLER_FILE, "updates: [KB2286198]\n")]);
        e.profile.exit_codes.insert("p".into(), 1618);
        let (code, out) = e.install(&package("kb: KB2286198\n"), &payload).unwrap();
        assert_eq!(code, 1618);
        assert!(out.contains("forced by endpoint.yaml"), "{out}");
        assert_eq!(saved(&e).installed_updates, ["KB958644"]);
        e.profile.exit_codes.insert("p".into(), 3010);
        let (code, _) = e.install(&package("kb: KB2286198\n"), &payload).unwrap();
        assert_eq!(code, 3010);
        assert_eq!(saved(&e).installed_updates, ["KB958644", "KB2286198"]);
    }

    #[test]
    fn the_sample_descriptions_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages");
        let mut n = 0;
        for entry in std::fs::read_dir(root).unwrap() {
            let dir = entry.unwrap().path();
            if dir.join(INSTALLER_FILE).exists() {
                Installer::load(&dir)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()))
                    .unwrap();
                n += 1;
            }
        }
        assert!(n >= 6, "{n}");
    }
}
