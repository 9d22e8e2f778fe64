//! `patchcast demo`: the whole system on this machine, as an administrator would run it.
//!
//! Every step is a real process talking over real sockets: a `patchcast server` on loopback
//! with SQLite in a fresh directory, four `patchcast-agent` processes (two Linux endpoints
//! that really install the Linux samples on this machine, two emulated Windows Server 2008
//! endpoints, Japanese and English, the English one with too little disk), and the same CLI
//! commands an administrator types: `token create`, `package publish`, `scenario run`,
//! `scenario status --watch`, `results`. The agent processes are this executable's hidden
//! `agent` command, which is the `patchcast-agent` program itself, so the demo needs only
//! the binary `cargo run` built.
//!
//! Run by an ordinary user, the Linux endpoints cannot write `/usr/local` or run dpkg, so they
//! install into their own tree instead (`agent run --install-root DIR/prefix/NAME`: commands
//! get it as `DESTDIR`, file rules are read under it), and the scenario leaves out the
//! packages only root can install, saying so: every row of the table is then a true result,
//! not a `failed(E21)` of a missing permission.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for the server's data, the agents' roots and the logs (default: a new one
    /// under the system's temporary directory, kept afterwards for inspection).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop everything once the scenario is done (for scripts); otherwise keep serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Sample packages to publish.
    #[arg(long, default_value = "packages")]
    pub packages: PathBuf,
    /// The scenario to run.
    #[arg(long, default_value = "scenarios/demo.yaml")]
    pub scenario: PathBuf,
    /// Language of the final results table and its messages: en or ja.
    #[arg(long, default_value = "en", value_parser = ["en", "ja"])]
    pub lang: String,
}

/// One endpoint of the demo fleet.
struct Endpoint {
    name: &'static str,
    /// `endpoint.yaml` for an emulated Windows machine; `None` for this Linux machine itself.
    profile: Option<&'static str>,
}

const FLEET: &[Endpoint] = &[
    Endpoint {
        name: "linux-1",
        profile: None,
    },
    Endpoint {
        name: "linux-2",
        profile: None,
    },
    Endpoint {
        name: "ws2008-ja",
        profile: Some(
            "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: ws2008-ja\nservice_pack: \"1.0\"\ninstalled_updates: [KB948465]\nfree_disk_bytes: 42949672960\ntotal_disk_bytes: 85899345920\n",
        ),
    },
    Endpoint {
        name: "ws2008-en",
        // 8 KiB free: every package needs three times its size, so each one stops at E06.
        profile: Some(
            "os: windows-server-2008\narch: x86\nlanguage: en\nhostname: ws2008-en\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 8192\ntotal_disk_bytes: 85899345920\n",
        ),
    },
];

/// Sample packages only root can install (package managers write system databases), left out
/// of the scenario when the demo runs without root, with the reason printed.
const ROOT_ONLY: &[(&str, &str)] = &[("linux-hello-deb", "dpkg installs only as root")];

/// True when the Linux endpoints can install into this machine itself.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[cfg(unix)]
    return unsafe { libc::geteuid() } == 0;
    #[cfg(not(unix))]
    true
}

/// Children are stopped (SIGTERM, then kill) when the demo ends, however it ends.
struct Fleet(Vec<(String, Child)>);

impl Drop for Fleet {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (_, c) in &self.0 {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(a: DemoArgs, json: bool) -> Result<ExitCode> {
    // With --json the narration goes to stderr and stdout gets one object at the end.
    let say = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    // Checked before anything starts: outside a checkout the defaults do not exist.
    for (path, flag, default) in [
        (&a.packages, "--packages", "packages/"),
        (&a.scenario, "--scenario", "scenarios/demo.yaml"),
    ] {
        if !path.exists() {
            bail!(
                "{} not found: run the demo from a patchcast checkout, or give {flag} the checkout's {default}",
                path.display()
            );
        }
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = match a.dir {
        Some(d) => d,
        None => tempfile_dir()?,
    };
    if dir.join("server").exists() {
        bail!(
            "{} already holds a demo; give --dir a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let root = is_root();
    let prefix = dir.join("prefix");
    if root {
        say("running as root: the Linux endpoints install into this machine");
    } else {
        let left_out: Vec<String> = ROOT_ONLY
            .iter()
            .map(|(id, why)| format!("{id} is left out: {why}"))
            .collect();
        say(&format!(
            "not root: the Linux endpoints install into {}/<endpoint> ({})",
            prefix.display(),
            left_out.join("; ")
        ));
    }
    say(&format!("demo directory: {}", dir.display()));
    let scenario = if root {
        a.scenario.clone()
    } else {
        without_root_only(&a.scenario, &dir)?
    };

    // A publisher key: the server accepts only packages it signed, agents only run them.
    let key = crate::pack::keys::generate()?;
    let (secret, public) = crate::pack::keys::write_pair(&dir.join("publisher"), &key)?;

    let data = dir.join("server");
    let mut fleet = Fleet(Vec::new());
    let log = |name: &str| -> Result<Stdio> {
        Ok(std::fs::File::create(dir.join(format!("{name}.log")))?.into())
    };
    let server = Command::new(&exe)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--reserve",
            "0",
            "--poll",
            "5s",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--trust-key")
        .arg(&public)
        .stdout(log("server")?)
        .stderr(log("server.err")?)
        .spawn()
        .context("starting the server")?;
    fleet.0.push(("server".into(), server));
    let info = wait_for_file(&data.join("server.json"), &mut fleet)?;
    let info: serde_json::Value = serde_json::from_slice(&info)?;
    let url = info["url"].as_str().unwrap_or_default().to_string();
    let fingerprint = info["fingerprint"].as_str().unwrap_or_default().to_string();
    say(&format!("server {url} (certificate {fingerprint})"));

    let admin = |args: &[&str]| -> Command {
        let mut c = Command::new(&exe);
        // The demo reads its commands' text; the caller's PATCHCAST_JSON is for the demo.
        c.args(args)
            .env("PATCHCAST_DATA", &data)
            .env_remove("PATCHCAST_JSON");
        c
    };
    let token = output(admin(&["token", "create", "--group", "demo"]))?;

    for e in FLEET {
        let agent_root = dir.join("agents").join(e.name);
        std::fs::create_dir_all(&agent_root)?;
        if let Some(profile) = e.profile {
            std::fs::write(agent_root.join("endpoint.yaml"), profile)?;
        }
        let mut enroll = Command::new(&exe);
        enroll
            .args([
                "agent",
                "enroll",
                "--server",
                &url,
                "--fingerprint",
                &fingerprint,
            ])
            .arg("--root")
            .arg(&agent_root)
            .env("PATCHCAST_ENROLL_TOKEN", &token)
            .env("PATCHCAST_AGENT_HOSTNAME", e.name);
        output(enroll).with_context(|| format!("enrolling {}", e.name))?;
        let mut agent = Command::new(&exe);
        agent
            .env("PATCHCAST_AGENT_HOSTNAME", e.name)
            .args(["agent", "run", "--root"])
            .arg(&agent_root);
        if e.profile.is_none() && !root {
            let own = prefix.join(e.name);
            std::fs::create_dir_all(&own)?;
            agent.arg("--install-root").arg(own);
        }
        let agent = agent
            .stdout(log(e.name)?)
            .stderr(log(&format!("{}.err", e.name))?)
            .spawn()
            .with_context(|| format!("starting agent {}", e.name))?;
        fleet.0.push((e.name.into(), agent));
    }
    say(&format!("{} agents enrolled and running", FLEET.len()));

    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&a.packages)
        .with_context(|| format!("reading {}", a.packages.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("package.yaml").exists())
        .collect();
    dirs.sort();
    for p in &dirs {
        let mut c = admin(&["package", "publish"]);
        c.arg(p).arg("--key").arg(&secret);
        say(&output(c)?);
    }

    let mut run = admin(&["scenario", "run"]);
    run.arg(&scenario);
    let id = output(run)?;
    // Progress bars go to stderr; the final table is printed once, by `results`, below.
    let status = admin(&["scenario", "status", &id, "--watch"])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("watching scenario {id} failed");
    }
    if json {
        let results: serde_json::Value =
            serde_json::from_str(&output(admin(&["--json", "results"]))?)?;
        let summary = serde_json::json!({
            "dir": dir,
            "linux_endpoints": if root { "this machine".to_string() } else { prefix.display().to_string() },
            "server": {"url": url, "fingerprint": fingerprint, "data": data},
            "scenario": id,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!();
        admin(&["results", "--lang", &a.lang]).status()?;
    }
    if json {
        if !a.exit {
            eprintln!("serving until Ctrl-C");
            wait_for_ctrl_c(&mut fleet);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.exit {
        // The server is stopped on return: no commands to try against it.
        println!("\nlogs and agent roots: {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nserver: {url}\ncertificate: {fingerprint}\nadmin CLI: PATCHCAST_DATA={} patchcast results --machine ws2008-en\nlogs and agent roots: {}",
        data.display(),
        dir.display()
    );
    println!("serving until Ctrl-C");
    wait_for_ctrl_c(&mut fleet);
    Ok(ExitCode::SUCCESS)
}

/// The scenario without the packages only root can install, written as DIR/scenario.yaml
/// (JSON, which is YAML).
fn without_root_only(scenario: &Path, dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let mut raw: patchcast_core::model::scenario::RawScenario =
        serde_saphyr::from_str(&text).with_context(|| format!("reading {}", scenario.display()))?;
    raw.packages
        .retain(|p| !ROOT_ONLY.iter().any(|(id, _)| id == p));
    let out = dir.join("scenario.yaml");
    std::fs::write(&out, serde_json::to_string_pretty(&raw)? + "\n")?;
    Ok(out)
}

fn tempfile_dir() -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(std::env::temp_dir().join(format!("patchcast-demo-{stamp}-{}", std::process::id())))
}

/// Runs `c`, returning its trimmed stdout; its stderr is shown only when it fails.
fn output(mut c: Command) -> Result<String> {
    let out = c.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!(
            "`{:?}` failed: {}",
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_for_file(path: &Path, fleet: &mut Fleet) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(b) = std::fs::read(path) {
            return Ok(b);
        }
        for (name, c) in &mut fleet.0 {
            if let Ok(Some(s)) = c.try_wait() {
                bail!("the {name} process exited early ({s}); see its log");
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_ctrl_c(fleet: &mut Fleet) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let _ = fleet;
}
