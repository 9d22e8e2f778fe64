//! Gathering the facts `core::identify` asks for, on the machine the agent runs on.
//!
//! Only what the queries name is read: a file's hash is computed only when a rule compares
//! it, probes run only when a rule names them. Probes run through `sh -c` with a timeout;
//! one that cannot run or is killed is reported as unknown, not as a failure.

use crate::core::identify::{Facts, FileFact, Query};
use crate::pack::{hash, pe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// OS id, architecture and language of this machine, in the catalog's terms.
#[cfg(windows)]
pub fn machine() -> Facts {
    super::windows::machine()
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

/// The catalog OS id (`debian-12`, `rocky-9`, `ubuntu-22.04`) from /etc/os-release's text.
/// Pure, so the SSH worker reads a remote host's file with the same rules.
pub fn os_id(os_release: &str) -> String {
    let field = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let id = field("ID");
    let version = field("VERSION_ID");
    // Catalog ids use the major version for RHEL-like systems (rocky-9), the full one for Ubuntu.
    let version = match id.as_str() {
        "rhel" | "rocky" | "debian" => version.split('.').next().unwrap_or("").to_string(),
        _ => version,
    };
    format!("{id}-{version}")
}

/// The catalog architecture for a Rust `ARCH` or `uname -m` name.
pub fn arch_name(raw: &str) -> String {
    match raw {
        "x86_64" | "amd64" => "x64",
        "x86" | "i386" | "i486" | "i586" | "i686" => "x86",
        "aarch64" | "arm64" => "arm64",
        other => other,
    }
    .to_string()
}

/// `ja_JP.UTF-8` → `ja-JP`; the C/POSIX locale (or none) is English.
pub fn language_tag(raw: &str) -> String {
    let tag = raw.split(['.', '@']).next().unwrap_or("").replace('_', "-");
    if tag.is_empty() || tag == "C" || tag == "POSIX" {
        "en".into()
    } else {
        tag
    }
}

/// `dpkg-query -W -f='${Status}\t${Version}'` output → installed version, or None.
pub fn parse_dpkg(out: &str) -> Option<String> {
    match out.split_once('\t') {
        Some((status, v)) if status.ends_with(" installed") => Some(v.trim_end().to_string()),
        _ => None,
    }
}

/// `rpm -q --qf '%{EPOCH}:%{VERSION}-%{RELEASE}'` output of an installed package → version.
pub fn parse_rpm(out: &str) -> String {
    out.trim_end().replace("(none):", "")
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

/// Installed version of a package per dpkg (`None`: not installed).
fn dpkg_version(name: &str) -> Option<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(parse_dpkg(&String::from_utf8_lossy(&out.stdout)))
}

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
    let mut child = Command::new("sh")
        .args(["-c", command])
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
                facts
                    .files
                    .insert(path.clone(), file(Path::new(path), *version, *sha256));
            }
            Query::Package { name } => {
                if let Some(v) = dpkg_version(name).or_else(|| rpm_version(name)) {
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
                facts.installed_updates = super::windows::installed_updates()
            }
            #[cfg(windows)]
            Query::ServicePack => facts.service_pack = super::windows::service_pack(),
            #[cfg(windows)]
            Query::Registry { key } => {
                facts
                    .registry
                    .insert(key.clone(), super::windows::registry(key));
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
    fn parsers() {
        let rel = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(os_id(rel), "debian-12");
        assert_eq!(os_id("ID=rocky\nVERSION_ID=\"9.3\"\n"), "rocky-9");
        assert_eq!(os_id("ID=ubuntu\nVERSION_ID=\"22.04\"\n"), "ubuntu-22.04");
        assert_eq!(arch_name("x86_64"), "x64");
        assert_eq!(arch_name("aarch64"), "arm64");
        assert_eq!(language_tag("ja_JP.UTF-8"), "ja-JP");
        assert_eq!(language_tag(""), "en");
        assert_eq!(language_tag("C.UTF-8"), "en");
        assert_eq!(
            parse_dpkg("install ok installed\t1.2.0-1"),
            Some("1.2.0-1".to_string())
        );
        assert_eq!(parse_dpkg("deinstall ok config-files\t1.0"), None);
        assert_eq!(parse_dpkg(""), None);
        assert_eq!(parse_rpm("(none):1.0-1.el9"), "1.0-1.el9");
    }

    #[test]
    fn this_machine_has_a_catalog_shape() {
        let m = machine();
        assert!(m.os.contains('-'), "{}", m.os);
        assert!(!m.arch.is_empty() && !m.language.is_empty());
    }
}
