//! The facts `core::identify` asks for, gathered on an SSH host by one shell script.
//!
//! The script prints one tagged line per answer (`@@pc N …` for query N), so a single round
//! trip answers every query and nothing printed by a probe can be mistaken for an answer
//! (probes' output goes to /dev/null). Parsing reuses the agent's rules (`agent::facts`:
//! os-release → catalog id, dpkg/rpm output), so both paths judge a machine the same way.

use super::shell_quote;
use patchcast_core::facts::{arch_name, language_tag, os_id, parse_dpkg, parse_rpm};
use patchcast_core::identify::{Facts, FileFact, Query};
use patchcast_core::model::types::Sha256;

/// Longest a probe may run on the host, as on the agent.
pub const PROBE_LIMIT_SECS: u64 = 60;

/// What the host is: the machine part of `Facts` plus what the inventory shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Host {
    pub facts: Facts,
    pub hostname: String,
    pub os_version: String,
    pub boot_id: String,
    pub memory_total: u64,
}

/// The part of the script that describes the machine.
const MACHINE: &str = r#"sed 's/^/@@os /' /etc/os-release 2>/dev/null
echo "@@arch $(uname -m)"
echo "@@host $(uname -n)"
l=${LC_ALL:-${LC_MESSAGES:-${LANG:-}}}
[ -n "$l" ] || l=$(sed -n 's/^LANG=//p' /etc/default/locale /etc/locale.conf 2>/dev/null | head -n1 | tr -d '"')
echo "@@lang $l"
echo "@@boot $(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
echo "@@mem $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo 2>/dev/null)"
"#;

/// The script answering `queries` (and describing the machine).
pub fn script(queries: &[Query]) -> String {
    let mut s = String::from(MACHINE);
    for (i, q) in queries.iter().enumerate() {
        match q {
            Query::File { path, sha256, .. } => {
                let p = shell_quote(path);
                let hash = if *sha256 {
                    "$(sha256sum < \"$p\" | cut -d' ' -f1)"
                } else {
                    ""
                };
                s.push_str(&format!(
                    "p={p}; if [ -f \"$p\" ]; then echo \"@@pc {i} file 1 {hash}\"; else echo \"@@pc {i} file 0\"; fi\n"
                ));
            }
            Query::Package { name } => {
                let n = shell_quote(name);
                s.push_str(&format!(
                    "if command -v dpkg-query >/dev/null 2>&1; then printf '@@pc {i} dpkg %s\\n' \"$(dpkg-query -W -f='${{Status}}\\t${{Version}}' {n} 2>/dev/null)\"; \
                     elif command -v rpm >/dev/null 2>&1; then if v=$(rpm -q --qf '%{{EPOCH}}:%{{VERSION}}-%{{RELEASE}}' {n} 2>/dev/null); then printf '@@pc {i} rpm %s\\n' \"$v\"; else echo '@@pc {i} rpm-none'; fi; \
                     else echo '@@pc {i} none'; fi\n"
                ));
            }
            Query::Probe { command } => {
                let c = shell_quote(command);
                s.push_str(&format!(
                    "if command -v timeout >/dev/null 2>&1; then timeout -s KILL {PROBE_LIMIT_SECS} sh -c {c} </dev/null >/dev/null 2>&1; else sh -c {c} </dev/null >/dev/null 2>&1; fi; echo \"@@pc {i} probe $?\"\n"
                ));
            }
            // Windows facts: an SSH host has none, so they stay unknown.
            Query::InstalledUpdates | Query::ServicePack | Query::Registry { .. } => {}
        }
    }
    s
}

/// Reads the script's output into facts. A query with no answer line stays unknown.
pub fn parse(queries: &[Query], out: &str) -> Host {
    let mut os_release = String::new();
    let mut host = Host::default();
    let mut lang = String::new();
    for line in out.lines() {
        if let Some(l) = line.strip_prefix("@@os ") {
            os_release.push_str(l);
            os_release.push('\n');
        } else if let Some(a) = line.strip_prefix("@@arch ") {
            host.facts.arch = arch_name(a.trim());
        } else if let Some(h) = line.strip_prefix("@@host ") {
            host.hostname = h.trim().to_string();
        } else if let Some(l) = line.strip_prefix("@@lang ") {
            lang = l.trim().to_string();
        } else if let Some(b) = line.strip_prefix("@@boot ") {
            host.boot_id = b.trim().to_string();
        } else if let Some(m) = line.strip_prefix("@@mem ") {
            host.memory_total = m.trim().parse::<u64>().unwrap_or(0) * 1024;
        } else if let Some(rest) = line.strip_prefix("@@pc ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(Ok(i)), Some(kind)) = (parts.next().map(str::parse::<usize>), parts.next())
            else {
                continue;
            };
            let value = parts.next().unwrap_or("");
            let Some(q) = queries.get(i) else { continue };
            answer(&mut host.facts, q, kind, value);
        }
    }
    host.facts.os = os_id(&os_release);
    host.facts.language = language_tag(&lang);
    host.os_version = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    host
}

fn answer(facts: &mut Facts, q: &Query, kind: &str, value: &str) {
    match (q, kind) {
        (Query::File { path, sha256, .. }, "file") => {
            let mut it = value.split_whitespace();
            let fact = match it.next() {
                Some("1") => FileFact {
                    exists: true,
                    // No PE version resources are read over SSH (Unix hosts have none).
                    version: None,
                    sha256: if *sha256 {
                        it.next().and_then(|h| h.parse::<Sha256>().ok())
                    } else {
                        None
                    },
                },
                _ => FileFact::ABSENT,
            };
            facts.files.insert(path.clone(), fact);
        }
        (Query::Package { name }, "dpkg") => {
            facts.packages.insert(name.clone(), parse_dpkg(value));
        }
        (Query::Package { name }, "rpm") => {
            facts.packages.insert(name.clone(), Some(parse_rpm(value)));
        }
        (Query::Package { name }, "rpm-none") => {
            facts.packages.insert(name.clone(), None);
        }
        (Query::Probe { command }, "probe") => {
            // 137: killed by the time limit (SIGKILL), as the agent's "could not finish".
            let code = value.trim().parse::<i32>().ok().filter(|c| *c != 137);
            facts.probes.insert(command.clone(), code);
        }
        _ => {}
    }
}

/// Free space where `dir` lives: prints one `@@df` line (POSIX `df -P`, 1 KiB blocks).
pub fn disk_script(dir: &str) -> String {
    format!(
        "df -Pk {} | tail -n 1 | sed 's/^/@@df /'\n",
        shell_quote(dir)
    )
}

/// The file system under a directory, from `disk_script`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub free: u64,
    pub total: u64,
    pub mount: String,
}

pub fn parse_disk(out: &str) -> Option<Disk> {
    let line = out.lines().find_map(|l| l.strip_prefix("@@df "))?;
    // Filesystem 1024-blocks Used Available Capacity Mounted-on (the name may hold spaces,
    // so count from the end).
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 {
        return None;
    }
    let n = f.len();
    Some(Disk {
        total: f[n - 5].parse::<u64>().ok()? * 1024,
        free: f[n - 3].parse::<u64>().ok()? * 1024,
        mount: f[n - 1].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_runs_here_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("it's here.txt");
        std::fs::write(&f, b"").unwrap();
        let queries = vec![
            Query::File {
                path: f.display().to_string(),
                version: false,
                sha256: true,
            },
            Query::File {
                path: dir.path().join("missing").display().to_string(),
                version: false,
                sha256: false,
            },
            Query::Probe {
                command: "echo noise; exit 3".into(),
            },
            Query::Package {
                name: "patchcast-no-such-package".into(),
            },
        ];
        let out = std::process::Command::new("sh")
            .args(["-c", &script(&queries)])
            .output()
            .unwrap();
        let host = parse(&queries, &String::from_utf8_lossy(&out.stdout));
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap();
        assert_eq!(host.facts.os, patchcast_core::facts::os_id(&os_release));
        assert_eq!(
            host.facts.arch,
            patchcast_core::facts::arch_name(std::env::consts::ARCH)
        );
        let ff = &host.facts.files[&f.display().to_string()];
        assert!(ff.exists);
        assert_eq!(
            ff.sha256.as_ref().unwrap().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(!host.facts.files[&dir.path().join("missing").display().to_string()].exists);
        assert_eq!(host.facts.probes["echo noise; exit 3"], Some(3));
        assert_eq!(
            host.facts.packages.get("patchcast-no-such-package"),
            Some(&None)
        );
        assert!(!host.hostname.is_empty());
    }

    #[test]
    fn disk_here() {
        let out = std::process::Command::new("sh")
            .args(["-c", &disk_script("/tmp")])
            .output()
            .unwrap();
        let d = parse_disk(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(d.total > 0 && d.free <= d.total, "{d:?}");
        assert_eq!(
            parse_disk("@@df tmpfs 1024 0 1000 0% /tmp/x\n"),
            Some(Disk {
                free: 1000 * 1024,
                total: 1024 * 1024,
                mount: "/tmp/x".into()
            })
        );
        assert_eq!(parse_disk("df: /nope: No such file or directory\n"), None);
    }

    #[test]
    fn unanswered_queries_stay_unknown() {
        let q = vec![Query::Probe {
            command: "true".into(),
        }];
        let host = parse(&q, "@@pc 7 probe 0\n@@pc x probe 0\n");
        assert!(host.facts.probes.is_empty());
    }
}
