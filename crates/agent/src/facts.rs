//! Gathering the facts `core::identify` asks for, on the machine the agent runs on.
//!
//! Only what the queries name is read: a file's hash is computed only when a rule compares
//! it, probes run only when a rule names them. Probes run through `sh -c` with a timeout;
//! one that cannot run or is killed is reported as unknown, not as a failure.

#[cfg(not(windows))]
use patchcast_core::facts::{arch_name, language_tag, os_id, parse_dpkg, parse_rpm};
use patchcast_core::identify::{Facts, FileFact, Query};
use patchcast_pack::{hash, pe};
use std::path::Path;
#[cfg(not(windows))]
use std::path::PathBuf;
#[cfg(not(windows))]
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A directory standing in for `/` (`agent run --install-root`, Linux): file rules are read
/// under it and commands get it as `DESTDIR`, so an agent that is not root installs into its
/// own tree, and its rules follow the files there (the demo run by an ordinary user).
#[cfg(not(windows))]
static INSTALL_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

#[cfg(not(windows))]
pub fn set_install_root(root: PathBuf) {
    let _ = INSTALL_ROOT.set(root);
}

#[cfg(not(windows))]
pub fn install_root() -> Option<&'static Path> {
    INSTALL_ROOT.get().map(PathBuf::as_path)
}

/// Where a rule's file is on this machine: `/usr/local/bin/x` is `ROOT/usr/local/bin/x`
/// under an install root.
#[cfg(not(windows))]
fn on_disk(path: &str) -> PathBuf {
    match install_root() {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

/// OS id, architecture, language and service pack of this machine, in the catalog's terms.
#[cfg(windows)]
pub fn machine() -> Facts {
    super::windows::system::machine()
}

/// OS id, architecture and language of this machine, in the catalog's terms.
#[cfg(not(windows))]
pub fn machine() -> Facts {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let lang = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default();
    Facts {
        os: os_id(&os_release),
        arch: arch_name(std::env::consts::ARCH),
        language: language_tag(&lang),
        ..Facts::default()
    }
}

/// The volume `path` is on, its free bytes and its size.
pub fn disk_of(path: &Path) -> (String, u64, u64) {
    #[cfg(windows)]
    return super::windows::system::disk_of(path);
    #[cfg(not(windows))]
    patchcast_proto::host::disk_of(path)
}

/// Reads one file's facts: existence, and version / hash when asked.
pub fn file(path: &Path, version: bool, sha256: bool) -> FileFact {
    let Ok(meta) = std::fs::metadata(path) else {
        return FileFact::ABSENT;
    };
    if !meta.is_file() {
        return FileFact::ABSENT;
    }
    let version = if version {
        match pe::file_version_resource(path) {
            Ok(pe::VersionResource::Version(v)) => Some(v),
            _ => None,
        }
    } else {
        None
    };
    let sha256 = if sha256 {
        hash::sha256_file(path).ok().map(|(h, _)| h)
    } else {
        None
    };
    FileFact {
        exists: true,
        version,
        sha256,
    }
}

/// Installed version of a package: dpkg's or rpm's on Linux (`None`: not installed; `None`
/// outside: neither tool answered).
#[cfg(not(windows))]
fn package_version(name: &str) -> Option<Option<String>> {
    dpkg_version(name).or_else(|| rpm_version(name))
}

/// Installed version of a program as Programs and Features lists it, by display name or
/// product code.
#[cfg(windows)]
fn package_version(name: &str) -> Option<Option<String>> {
    Some(super::windows::system::program_version(name))
}

/// Installed version of a package per dpkg (`None`: not installed).
#[cfg(not(windows))]
fn dpkg_version(name: &str) -> Option<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(parse_dpkg(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(not(windows))]
fn rpm_version(name: &str) -> Option<Option<String>> {
    let out = Command::new("rpm")
        .args(["-q", "--qf", "%{EPOCH}:%{VERSION}-%{RELEASE}", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(None);
    }
    Some(Some(parse_rpm(&String::from_utf8_lossy(&out.stdout))))
}

/// Runs a probe with a time limit; `None` when it could not run or was killed.
pub fn probe(command: &str, limit: Duration) -> Option<i32> {
    let mut child = super::exec::shell(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Fills `facts` with what `queries` ask for, read from this machine.
pub fn gather(facts: &mut Facts, queries: &[Query]) {
    for q in queries {
        match q {
            Query::File {
                path,
                version,
                sha256,
            } => {
                // `%SystemRoot%\System32\x.dll` names a file through the environment.
                #[cfg(windows)]
                let on_disk = super::windows::system::expand(path);
                #[cfg(not(windows))]
                let on_disk = on_disk(path);
                facts
                    .files
                    .insert(path.clone(), file(Path::new(&on_disk), *version, *sha256));
            }
            Query::Package { name } => {
                if let Some(v) = package_version(name) {
                    facts.packages.insert(name.clone(), v);
                }
            }
            Query::Probe { command } => {
                facts
                    .probes
                    .insert(command.clone(), probe(command, Duration::from_secs(60)));
            }
            #[cfg(windows)]
            Query::InstalledUpdates => {
                facts.installed_updates = super::windows::system::installed_updates()
            }
            #[cfg(windows)]
            Query::ServicePack => facts.service_pack = Some(super::windows::system::service_pack()),
            #[cfg(windows)]
            Query::Registry { key } => {
                facts
                    .registry
                    .insert(key.clone(), super::windows::registry::value_text(key));
            }
            // Windows-only facts: not available on this platform, so they stay unknown.
            #[cfg(not(windows))]
            Query::InstalledUpdates | Query::ServicePack | Query::Registry { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_probes_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"").unwrap();
        let f = file(&p, true, true);
        assert!(f.exists);
        assert_eq!(f.version, None, "a text file has no version resource");
        assert_eq!(
            f.sha256.unwrap().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            file(&dir.path().join("missing"), false, false),
            FileFact::ABSENT
        );
        assert_eq!(probe("exit 3", Duration::from_secs(5)), Some(3));
        assert_eq!(probe("sleep 5", Duration::from_millis(100)), None);
    }

    #[test]
    fn this_machine_has_a_catalog_shape() {
        let m = machine();
        assert!(m.os.contains('-'), "{}", m.os);
        assert!(!m.arch.is_empty() && !m.language.is_empty());
    }
}
