//! Helpers for agent integration tests: signed test packages, work items, and the real
//! `patchcast-agent` binary started, signalled and killed as a child process.

use ed25519_dalek::SigningKey;
use patchcast::core::delivery::{Event, Policy};
use patchcast::pack::archive;
use patchcast::transport::protocol::{Report, Work};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wine_env::Wine;

/// The publisher key the test server hands out at enrollment.
pub fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub fn publisher_hex() -> String {
    hex::encode(publisher().verifying_key().to_bytes())
}

pub struct Built {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub manifest: String,
    pub signature: String,
    pub package_id: String,
}

/// The manifest and signature texts exactly as stored in an archive.
pub fn meta_of(bytes: &[u8]) -> (String, String) {
    let mut a = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut it = a.entries().unwrap();
    let mut text = || {
        let mut e = it.next().unwrap().unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        s
    };
    let m = text();
    let s = text();
    (m, s)
}

/// Builds and signs the package in `dir` (package.yaml and its payload) with the publisher key.
pub fn build_dir(dir: &Path, out_dir: &Path) -> Built {
    let loaded = patchcast::pack::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let out = out_dir.join(format!("{}.pcpkg", loaded.raw.id));
    archive::build(dir, &loaded.raw, &publisher(), &out, |_| {}).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    from_bytes(bytes, &loaded.raw.id)
}

pub fn from_bytes(bytes: Vec<u8>, package_id: &str) -> Built {
    let (manifest, signature) = meta_of(&bytes);
    Built {
        sha256: patchcast::pack::hash::sha256_bytes(&bytes).hex(),
        bytes,
        manifest,
        signature,
        package_id: package_id.into(),
    }
}

/// Writes a package directory (package.yaml + files) and builds it.
pub fn build_package(dir: &Path, yaml: &str, files: &[(&str, &[u8])]) -> Built {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("package.yaml"), yaml).unwrap();
    for (name, data) in files {
        std::fs::write(src.join(name), data).unwrap();
    }
    build_dir(&src, dir)
}

pub fn work(delivery_id: &str, attempt: u32, b: &Built) -> Work {
    Work {
        delivery_id: delivery_id.into(),
        attempt,
        package_id: b.package_id.clone(),
        archive_sha256: b.sha256.parse().unwrap(),
        archive_size: b.bytes.len() as u64,
        manifest: b.manifest.clone(),
        signature: b.signature.clone(),
        policy: Policy::default(),
        action: Default::default(),
        when: None,
        timeout_secs: None,
        sources: None,
    }
}

/// Event names of reports, for readable assertions.
pub fn events(reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .map(|r| match &r.event {
            Event::Probed { verdict } => format!("probed:{}", verdict_name(verdict)),
            Event::Refused { code } => format!("refused:{code:?}"),
            Event::Transferred => "transferred".into(),
            Event::Executed { execution } => format!("executed:{}", execution_name(execution)),
            Event::Verified { verdict, .. } => format!("verified:{}", verdict_name(verdict)),
            other => format!("{other:?}"),
        })
        .collect()
}

fn verdict_name(v: &patchcast::core::identify::Verdict) -> &'static str {
    use patchcast::core::identify::Verdict::*;
    match v {
        Applied => "applied",
        NotApplied => "not_applied",
        NotApplicable(_) => "not_applicable",
        Indeterminate(_) => "indeterminate",
    }
}

fn execution_name(e: &patchcast::core::delivery::Execution) -> &'static str {
    use patchcast::core::delivery::Execution::*;
    match e {
        Succeeded { .. } => "succeeded",
        RebootRequired { .. } => "reboot_required",
        Failed { .. } => "failed",
        TimedOut => "timed_out",
    }
}

/// Waits for `cond`, polling; panics naming `what` after a generous guard (a hang, not a timing check).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but not running as root: this test installs software on the machine"
    );
    eprintln!("SKIPPED: this test installs software on the machine and needs root");
    false
}

pub const BIN: &str = env!("CARGO_BIN_EXE_patchcast-agent");

pub struct AgentProc {
    pub root: PathBuf,
    pub child: Option<Child>,
    pub runs: u32,
    /// The Windows build under Wine instead of the native binary.
    pub wine: Option<Wine>,
    /// The network namespace the agent runs in (`common::netns`), when not this machine's.
    pub netns: Option<String>,
    /// Another agent binary than the built one (a stamped copy an upgrade may replace).
    pub bin: Option<PathBuf>,
}

impl AgentProc {
    pub fn new(root: &Path) -> AgentProc {
        std::fs::create_dir_all(root).unwrap();
        AgentProc {
            root: root.to_path_buf(),
            child: None,
            runs: 0,
            wine: None,
            netns: None,
            bin: None,
        }
    }

    /// The Windows agent under Wine, its root a directory of the prefix (`root` as this host
    /// sees it; the agent is given its Windows path).
    pub fn wine(root: &Path, wine: &Wine) -> AgentProc {
        let mut agent = AgentProc::new(root);
        agent.wine = Some(wine.clone());
        agent
    }

    /// The agent program with `ARGS --root ROOT` ready for the subcommand's own flags.
    fn command(&self, subcommand: &str) -> Command {
        let (mut cmd, root) = match (&self.wine, &self.netns) {
            (None, None) => (
                Command::new(self.bin.as_deref().unwrap_or(Path::new(BIN))),
                self.root.as_os_str().to_owned(),
            ),
            (None, Some(ns)) => {
                // `ip netns exec` execs the agent: the child's pid is the agent's own.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c.arg(self.bin.as_deref().unwrap_or(Path::new(BIN)));
                (c, self.root.as_os_str().to_owned())
            }
            (Some(w), _) => (w.command(&w.agent), w.windows_path(&self.root).into()),
        };
        cmd.args([subcommand, "--root"]).arg(root);
        cmd
    }

    /// Runs `enroll` to completion: (success, stdout + stderr).
    pub async fn enroll(&self, url: &str, token: &str, fingerprint: &str) -> (bool, String) {
        let mut cmd = tokio::process::Command::from(self.command("enroll"));
        cmd.args([
            "--server",
            url,
            "--token",
            token,
            "--fingerprint",
            fingerprint,
        ]);
        let o = cmd.output().await.unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join(format!("agent-run{}.log", self.runs))
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the agent with extra environment variables.
    pub fn start_with(&mut self, env: &[(&str, &Path)]) {
        self.runs += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .command("run")
            .envs(env.iter().copied())
            .env("PATCHCAST_AGENT_BACKOFF_MAX", "1s")
            .env("PATCHCAST_AGENT_HEARTBEAT", "200ms")
            .env("PATCHCAST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM once the agent has said it is running (its handler is in place by then), then
    /// wait for the exit status.
    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        wait_for("the agent's start", || self.log().contains("agent running")).await;
        let mut c = self.child.take().expect("agent running");
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A package `id` at `version` whose install runs `before` (shell lines), then writes
/// "ID VERSION" to `tool`, identified by that content's hash (so another version of it is not
/// applied); `extra` YAML appended (an `uninstall:`, a `when:`, `requires:`…).
pub fn tool_package(dir: &Path, id: &str, version: &str, tool: &Path, before: &str, extra: &str) {
    use sha2::Digest;
    std::fs::create_dir_all(dir).unwrap();
    let body = format!("{id} {version}\n");
    let sha = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    std::fs::write(
        dir.join("install.sh"),
        format!(
            "{before}\nprintf '%s\\n' '{id} {version}' > '{}'\n",
            tool.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("package.yaml"),
        format!(
            "id: {id}\nkind: application\ntitle: {id}\nversion: '{version}'\ntargets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\n\
             identification:\n  - file: {}\n    change: new\n    sha256: {sha}\n\
             payload: [install.sh]\ninstall:\n  command: 'sh \"{{{{payload.0}}}}\"'\n  timeout: 1m\n{extra}",
            tool.display()
        ),
    )
    .unwrap();
}

/// Runs scenario `s` until every delivery has ended (within `guard`; past it the test fails
/// with the agent's log) and returns its id and its rows with their history.
pub async fn run_to_end(
    admin: &patchcast::transport::admin_api::Admin,
    s: &patchcast::model::scenario::Scenario,
    agent: &AgentProc,
    guard: std::time::Duration,
) -> (String, Vec<patchcast::transport::admin_api::DeliveryRow>) {
    let id = admin.run_scenario(s).await.unwrap().id;
    let rows = wait_to_end(admin, &id, agent, guard).await;
    (id, rows)
}

/// Waits until every delivery of scenario `id` has ended (within `guard`; past it the test
/// fails with the agent's log) and returns its rows with their history.
pub async fn wait_to_end(
    admin: &patchcast::transport::admin_api::Admin,
    id: &str,
    agent: &AgentProc,
    guard: std::time::Duration,
) -> Vec<patchcast::transport::admin_api::DeliveryRow> {
    let deadline = std::time::Instant::now() + guard;
    loop {
        if let Ok(st) = admin.status(id, "en").await
            && st.done
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scenario {id} did not finish; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    rows_with_history(admin, id).await
}

/// The deliveries of scenario `id`, with their history.
pub async fn rows_with_history(
    admin: &patchcast::transport::admin_api::Admin,
    id: &str,
) -> Vec<patchcast::transport::admin_api::DeliveryRow> {
    admin
        .results(&patchcast::transport::admin_api::ResultsQuery {
            scenario: Some(id.to_string()),
            history: true,
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .deliveries
}
