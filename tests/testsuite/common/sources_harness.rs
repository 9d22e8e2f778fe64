//! Shared pieces of the update source, relay and SMB tests: a real server with emulated
//! Windows agents (real `patchcast-agent` processes), small packages, the private Samba
//! server from `scripts/samba.sh`, and waiting on results.

use super::agent_harness::AgentProc;
use super::server_harness::{Backend, TestServer};
use patchcast::transport::admin_api::{DeliveryRow, ResultsQuery};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const GROUP: &str = "site";

/// The private Samba server scripts/test.sh starts (`scripts/samba.sh`).
#[cfg(feature = "smb")]
pub struct SmbEnv {
    pub url: String,
    pub user: String,
    pub password: String,
    /// The share's directory on this machine.
    pub dir: PathBuf,
}

/// The test Samba server, or None (skipped) outside CI when it is not configured.
#[cfg(feature = "smb")]
pub fn smb_env() -> Option<SmbEnv> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("PATCHCAST_TEST_SMB"),
        get("PATCHCAST_TEST_SMB_USER"),
        get("PATCHCAST_TEST_SMB_PASSWORD"),
        get("PATCHCAST_TEST_SMB_DIR"),
    ) {
        (Some(url), Some(user), Some(password), Some(dir)) => Some(SmbEnv {
            url,
            user,
            password,
            dir: dir.into(),
        }),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI=true but PATCHCAST_TEST_SMB is unset: run the tests through scripts/test.sh, which starts Samba (scripts/samba.sh)"
                );
            }
            eprintln!(
                "SKIPPED: needs Samba: `eval \"$(scripts/samba.sh start /tmp/pc-smb)\"` sets PATCHCAST_TEST_SMB*"
            );
            None
        }
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn profile(hostname: &str) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: en\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 21474836480\n"
    )
}

/// A HotFix ("programs and hot fixes") identified by its KB number.
pub fn hotfix(dir: &Path, id: &str, kb: &str) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("fix.txt"), format!("payload of {id}\n")).unwrap();
    // What the emulated installer does (src/agent/emulated.rs): registers the KB.
    std::fs::write(
        d.join("emulated-installer.yaml"),
        format!("updates: [{kb}]\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("package.yaml"),
        format!(
            "id: {id}\nkind: hotfix\ntitle: test hotfix {id}\nversion: \"1.0\"\nkb: {kb}\ntargets:\n  - {{ os: windows-server-2008, arch: x86 }}\npayload: [fix.txt, emulated-installer.yaml]\ninstall:\n  command: 'install {{{{payload.0}}}}'\n  timeout: 5m\n"
        ),
    )
    .unwrap();
    d
}

/// An application ("components"), applied when the emulated installer puts its DLL in place.
pub fn application(dir: &Path, id: &str) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    let dll = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packages/kb981550-ws2008-fileversion/pcsample.dll");
    std::fs::copy(dll, d.join("pcsample.dll")).unwrap();
    // What the emulated installer does (src/agent/emulated.rs): puts the DLL in place.
    std::fs::write(
        d.join("emulated-installer.yaml"),
        "files:\n  pcsample.dll: '%SystemRoot%\\System32\\pcsample.dll'\n",
    )
    .unwrap();
    std::fs::write(
        d.join("package.yaml"),
        format!(
            "id: {id}\nkind: application\ntitle: test application {id}\nversion: \"1.0\"\ntargets:\n  - {{ os: windows-server-2008, arch: x86 }}\nidentification:\n  - file: '%SystemRoot%\\System32\\pcsample.dll'\n    change: version_up\n    version: 6.0.6002.18287\npayload: [pcsample.dll, emulated-installer.yaml]\ninstall:\n  command: 'copy {{{{payload.0}}}}'\n  timeout: 5m\n"
        ),
    )
    .unwrap();
    d
}

/// Publishes a package directory with the CLI; returns the archive's SHA-256.
pub fn publish(server: &TestServer, dir: &Path, extra: &[&str]) -> String {
    let key = server.key.to_str().unwrap().to_string();
    let mut args = vec![
        "--json",
        "package",
        "publish",
        dir.to_str().unwrap(),
        "--key",
        &key,
    ];
    args.extend_from_slice(extra);
    let o = server.cli(&args);
    assert!(
        o.status.success(),
        "publish {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["archive_sha256"].as_str().unwrap().to_string()
}

/// Writes `yaml` to a file and runs `patchcast sources set` on it: (success, stderr).
pub fn set_sources(server: &TestServer, yaml: &str) -> (bool, String) {
    let f = server.path().join(format!(
        "sources-{}.yaml",
        patchcast::server::random_hex(4).unwrap()
    ));
    std::fs::write(&f, yaml).unwrap();
    let o = server.cli(&["sources", "set", f.to_str().unwrap()]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub struct Site {
    pub server: TestServer,
    pub agents: Vec<AgentProc>,
    pub names: Vec<String>,
}

impl Site {
    /// A server and enrolled (not yet started) emulated agents named `names`.
    pub async fn new(backend: Backend, names: &[&str]) -> Option<Site> {
        let server = TestServer::start(backend, &["--poll", "1s"]).await?;
        let token = server.group_token(GROUP).await;
        let mut agents = Vec::new();
        for name in names {
            let a = AgentProc::new(&server.path().join("agents").join(name));
            std::fs::write(a.root.join("endpoint.yaml"), profile(name)).unwrap();
            let (ok, out) = a.enroll(&server.url, &token, &server.fingerprint).await;
            assert!(ok, "enroll {name}: {out}");
            agents.push(a);
        }
        Some(Site {
            server,
            agents,
            names: names.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn agent(&mut self, name: &str) -> &mut AgentProc {
        let i = self.names.iter().position(|n| n == name).unwrap();
        &mut self.agents[i]
    }

    /// Runs a scenario of `packages` on the named machines; returns its id.
    pub async fn run(&self, machines: &[&str], packages: &[&str], max_attempts: u32) -> String {
        let s = patchcast::model::scenario::Scenario {
            name: format!("sources-{}", patchcast::server::random_hex(3).unwrap()),
            action: patchcast::core::pipeline::Action::Install,
            packages: packages.iter().map(|p| p.parse().unwrap()).collect(),
            machines: machines.iter().map(|m| m.to_string()).collect(),
            groups: vec![],
            max_concurrent: None,
            max_unverified_runs: 3,
            max_attempts,
            retry_delay_ms: 0,
            allow_reboot: false,
            timeout_secs: None,
            when: None,
            versions: Default::default(),
            rollback: false,
        };
        self.server.admin().run_scenario(&s).await.unwrap().id
    }

    pub async fn rows(&self, scenario: &str) -> Vec<DeliveryRow> {
        self.server
            .admin()
            .results(&ResultsQuery {
                machine: None,
                package: None,
                scenario: Some(scenario.into()),
                history: true,
                lang: "en".into(),
            })
            .await
            .unwrap()
            .deliveries
    }

    /// Waits (guarded against hangs, not timed) until every delivery of the scenario is final.
    pub async fn settle(&self, scenario: &str) -> Vec<DeliveryRow> {
        let start = Instant::now();
        loop {
            let rows = self.rows(scenario).await;
            if !rows.is_empty() && rows.iter().all(|r| r.state.is_terminal()) {
                return rows;
            }
            if start.elapsed() > Duration::from_secs(150) {
                let logs: Vec<String> = self.agents.iter().map(|a| a.log()).collect();
                panic!(
                    "scenario {scenario} did not finish: {rows:#?}\nagent logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn row<'a>(rows: &'a [DeliveryRow], machine: &str, package: &str) -> &'a DeliveryRow {
    rows.iter()
        .find(|r| r.hostname == machine && r.package_id == package)
        .unwrap_or_else(|| panic!("no delivery of {package} to {machine}: {rows:#?}"))
}
