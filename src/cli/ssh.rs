//! SSH commands: `patchcast machine add-ssh` (register an agentless host with the server)
//! and `patchcast agent install --ssh` (put the agent on a host, enroll and start it).

use super::admin::Connect;
use crate::ssh::session::{Access, Session};
use crate::ssh::{Target, shell_quote};
use crate::transport::ssh_api::SshMachineRequest;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct AddSshArgs {
    /// Name the machine is listed and grouped under.
    pub name: String,
    /// user@host[:port]
    pub target: String,
    /// Private key (OpenSSH format, no passphrase) ON THE SERVER HOST; never sent or stored.
    #[arg(long)]
    pub key: PathBuf,
    /// known_hosts file on the server host (default: the server's DATA/ssh/known_hosts).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Record the host key when the host is not in known_hosts yet (a changed key is still refused).
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// Directory on the host under which deliveries work (default /tmp); its file system is
    /// the one checked for 3 × the package size.
    #[arg(long)]
    pub work_dir: Option<String>,
    #[command(flatten)]
    pub connect: Connect,
}

fn absolute(p: &Path) -> Result<String> {
    Ok(std::path::absolute(p)
        .with_context(|| format!("resolving {}", p.display()))?
        .display()
        .to_string())
}

pub fn add(a: AddSshArgs, json: bool) -> Result<ExitCode> {
    let req = SshMachineRequest {
        name: a.name,
        target: a.target,
        key: absolute(&a.key)?,
        known_hosts: a.known_hosts.as_deref().map(absolute).transpose()?,
        trust_on_first_use: a.trust_on_first_use,
        work_dir: a.work_dir,
    };
    let admin = a.connect.admin()?;
    let rt = tokio::runtime::Runtime::new()?;
    let added = rt.block_on(admin.add_ssh_machine(&req))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&added)?);
    } else {
        let m = &added.machine;
        println!(
            "added SSH machine {} ({}) as {}: {} {} {}",
            m.hostname, req.target, m.id, m.inventory.os, m.inventory.arch, m.inventory.os_version
        );
        println!(
            "host key {}{}",
            added.host_key,
            if added.host_key_learned {
                " (recorded now: trust on first use)"
            } else {
                " (matches known_hosts)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// user@host[:port] to install the agent on.
    #[arg(long)]
    pub ssh: String,
    /// Private key for the SSH login (default ~/.ssh/id_ed25519).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// known_hosts file checked for the host's key (default ~/.ssh/known_hosts).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Record the host key when the host is not in known_hosts yet.
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// https://HOST:PORT of the management server, as the host will reach it.
    #[arg(long, env = "PATCHCAST_SERVER")]
    pub server: String,
    /// The server certificate's fingerprint (`sha256:…`).
    #[arg(long, env = "PATCHCAST_SERVER_FINGERPRINT")]
    pub fingerprint: String,
    /// Enrollment token (sent on the remote command's stdin, never in its arguments).
    #[arg(long, env = "PATCHCAST_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Directory on the host (default /opt/patchcast as root, ~/.patchcast otherwise).
    #[arg(long)]
    pub remote_dir: Option<String>,
    /// The agent binary to upload (default: the patchcast-agent beside this program).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

/// The agent program to upload.
fn agent_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("finding this program")?;
    let sibling = me.with_file_name(format!("patchcast-agent{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no patchcast-agent beside {}: give the binary to upload with --agent-binary",
        me.display()
    )
}

fn home_file(rel: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: give the path explicitly")?;
    Ok(PathBuf::from(home).join(rel))
}

/// What `install` did, for printing.
#[derive(Debug, serde::Serialize)]
pub struct Installed {
    pub target: String,
    pub remote_dir: String,
    pub machine_id: String,
    /// `systemd` or `nohup`.
    pub started_with: String,
    pub host_key: String,
    pub host_key_learned: bool,
}

pub async fn install_agent(a: InstallArgs) -> Result<Installed> {
    let target: Target = a.ssh.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let binary = agent_binary(a.agent_binary)?;
    if !binary.is_file() {
        bail!("the agent binary {} does not exist", binary.display());
    }
    let access = Access {
        target: target.clone(),
        key: match a.key {
            Some(k) => k,
            None => home_file(".ssh/id_ed25519")?,
        },
        known_hosts: match a.known_hosts {
            Some(k) => k,
            None => home_file(".ssh/known_hosts")?,
        },
        trust_on_first_use: a.trust_on_first_use,
        connect_timeout: Duration::from_secs(20),
    };
    let s = Session::connect(&access).await?;
    let who = s
        .run("finding the remote user", "id -u; printf '%s\\n' \"$HOME\"")
        .await?
        .stdout_text();
    let mut lines = who.lines();
    let root = lines.next().map(str::trim) == Some("0");
    let home = lines.next().unwrap_or("").trim().to_string();
    let dir = match a.remote_dir {
        Some(d) => d,
        None if root => "/opt/patchcast".into(),
        None if home.starts_with('/') => format!("{home}/.patchcast"),
        None => bail!("{target} has no usable home directory: give --remote-dir"),
    };
    if !dir.starts_with('/') {
        bail!("--remote-dir {dir} must be an absolute path");
    }
    let d = |p: &str| shell_quote(&format!("{dir}/{p}"));
    s.run(
        "creating the agent directory",
        &format!(
            "mkdir -p {dir_q} {bin} {root_q} && chmod 700 {dir_q}",
            dir_q = shell_quote(&dir),
            bin = d("bin"),
            root_q = d("root")
        ),
    )
    .await?;
    // Upload beside, then rename: a running agent's binary is never half written.
    let agent = format!("{dir}/bin/patchcast-agent");
    let size = std::fs::metadata(&binary)?.len();
    let bar = super::progress::bytes(size, "uploading patchcast-agent", a.json);
    s.upload(
        &[],
        &[(binary.clone(), format!("{agent}.new"), 0o600)],
        |n| bar.set_position(n),
    )
    .await?;
    bar.finish_and_clear();
    s.run(
        "installing the agent binary",
        &format!(
            "chmod 755 {new} && mv -f {new} {bin}",
            new = shell_quote(&format!("{agent}.new")),
            bin = shell_quote(&agent)
        ),
    )
    .await?;
    // Enroll: the token goes on stdin.
    let enroll = s
        .exec_with_input(
            &format!(
                "IFS= read -r PATCHCAST_ENROLL_TOKEN && export PATCHCAST_ENROLL_TOKEN && exec {bin} enroll --root {root_q} --server {srv} --fingerprint {fp} 2>&1",
                bin = shell_quote(&agent),
                root_q = d("root"),
                srv = shell_quote(&a.server),
                fp = shell_quote(&a.fingerprint),
            ),
            format!("{}\n", a.token).as_bytes(),
        )
        .await?;
    let said = enroll.stdout_text();
    if !enroll.success() {
        bail!("enrolling the agent on {target} failed: {}", said.trim());
    }
    let machine_id = said
        .split_whitespace()
        .skip_while(|w| *w != "machine")
        .nth(1)
        .unwrap_or("")
        .to_string();
    // Start: a systemd unit when systemd runs there and we are root, else in the background.
    let systemd = root
        && s.exec("test -d /run/systemd/system && command -v systemctl >/dev/null")
            .await?
            .success();
    let started_with = if systemd {
        let unit = format!(
            "[Unit]\nDescription=patchcast agent\nAfter=network-online.target\n\n[Service]\nExecStart={agent} run --root {dir}/root\nRestart=always\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n"
        );
        let done = s
            .exec_with_input(
                "cat > /etc/systemd/system/patchcast-agent.service && systemctl daemon-reload && systemctl enable --now patchcast-agent",
                unit.as_bytes(),
            )
            .await?;
        if !done.success() {
            bail!(
                "installing the systemd unit on {target} failed: {}",
                done.stderr_text()
            );
        }
        "systemd".to_string()
    } else {
        s.run(
            "starting the agent",
            &format!(
                "if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then kill \"$(cat {pid})\"; fi; \
                 cd {dir_q} && setsid nohup {bin} run --root {root_q} >> {log} 2>&1 < /dev/null & echo $! > {pid}",
                pid = d("agent.pid"),
                dir_q = shell_quote(&dir),
                bin = shell_quote(&agent),
                root_q = d("root"),
                log = d("agent.log"),
            ),
        )
        .await?;
        "nohup".to_string()
    };
    let out = Installed {
        target: target.to_string(),
        remote_dir: dir,
        machine_id,
        started_with,
        host_key: s.host_key.clone(),
        host_key_learned: s.learned_host_key,
    };
    s.close().await;
    Ok(out)
}

// `patchcast agent install ARGS` is an administrator's command, so it lives in `patchcast`,
// not in the endpoint's `patchcast-agent` (which then carries no SSH client).
#[derive(clap::Parser)]
#[command(
    name = "patchcast agent install",
    bin_name = "patchcast agent install",
    about = "Install patchcast-agent on another host over SSH, enroll it there and start it"
)]
struct InstallCli {
    #[command(flatten)]
    args: InstallArgs,
}

/// Parses `argv0 ARGS` (ARGS after `agent install`) and runs [`install`].
pub fn install_main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    match InstallCli::try_parse_from(args) {
        Ok(c) => install(c.args),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 2 } else { 0 })
        }
    }
}

fn install(a: InstallArgs) -> ExitCode {
    let json = a.json;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(install_agent(a)) {
        Ok(i) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
            } else {
                println!(
                    "installed patchcast-agent on {} in {} and enrolled it as machine {}; started with {}",
                    i.target, i.remote_dir, i.machine_id, i.started_with
                );
                println!(
                    "host key {}{}",
                    i.host_key,
                    if i.host_key_learned {
                        " (recorded now: trust on first use)"
                    } else {
                        ""
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
