//! Admin commands that talk to a server: token, machine, group, package publish, scenario,
//! results, loadtest.
//!
//! Where the server is: `--server URL --fingerprint sha256:… --token T` (or PATCHCAST_SERVER,
//! PATCHCAST_SERVER_FINGERPRINT, PATCHCAST_TOKEN), or on the server host simply `--data DIR`
//! (PATCHCAST_DATA), which reads DIR/server.json and DIR/admin.token.

use crate::core::errors::Lang;
use crate::transport::admin_api::{
    Admin, DeliveryRow, Group, GroupFilter, Labels, Results, ResultsQuery, ScenarioStatus,
    TokenRequest,
};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Clone, Default)]
pub struct Connect {
    /// Server URL (https://host:port).
    #[arg(long, env = "PATCHCAST_SERVER")]
    pub server: Option<String>,
    /// The server certificate's fingerprint (`sha256:…`, printed at server start).
    #[arg(long, env = "PATCHCAST_SERVER_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Admin token (the server's DATA/admin.token). Prefer PATCHCAST_TOKEN or --token-file:
    /// a value given here shows in the process list.
    #[arg(long, env = "PATCHCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "PATCHCAST_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// On the server host: its data directory (reads server.json and admin.token).
    #[arg(long, env = "PATCHCAST_DATA")]
    pub data: Option<PathBuf>,
}

impl Connect {
    pub fn admin(&self) -> Result<Admin> {
        let (url, fp, token) = self.parts()?;
        Admin::new(&url, &fp, &token)
    }

    /// URL, fingerprint and admin token, from flags/env or DATA/server.json and DATA/admin.token.
    pub fn parts(&self) -> Result<(String, String, String)> {
        let (mut url, mut fp, mut token) = (
            self.server.clone(),
            self.fingerprint.clone(),
            self.token.clone(),
        );
        if token.is_none()
            && let Some(f) = &self.token_file
        {
            token = Some(crate::host::secret_file(f)?);
        }
        if let Some(d) = &self.data {
            let path = d.join("server.json");
            let info: crate::server::ServerInfo =
                serde_json::from_slice(&std::fs::read(&path).with_context(|| {
                    format!(
                        "reading {} (is a server started with --data {}?)",
                        path.display(),
                        d.display()
                    )
                })?)
                .with_context(|| format!("reading {}", path.display()))?;
            url.get_or_insert(info.url);
            fp.get_or_insert(info.fingerprint);
            if token.is_none() {
                let t = d.join("admin.token");
                token = Some(
                    std::fs::read_to_string(&t)
                        .with_context(|| format!("reading {}", t.display()))?
                        .trim()
                        .to_string(),
                );
            }
        }
        match (url, fp, token) {
            (Some(u), Some(f), Some(t)) => Ok((u, f, t)),
            _ => bail!(
                "which server? give --data DIR on the server host, or --server URL --fingerprint sha256:… --token TOKEN (or PATCHCAST_SERVER / PATCHCAST_SERVER_FINGERPRINT / PATCHCAST_TOKEN)"
            ),
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an enrollment token (shown once; the server keeps only its hash).
    Create {
        /// Group the machines enrolled with this token join.
        #[arg(long)]
        group: Option<String>,
        /// Number of enrollments allowed (default: unlimited until it expires).
        #[arg(long)]
        uses: Option<u64>,
        /// Lifetime (e.g. `24h`, `7d`).
        #[arg(long, default_value = "24h")]
        expires: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// List enrollment tokens (their ids, never the tokens themselves).
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Revoke an enrollment token: it enrolls no machine from then on.
    Revoke {
        /// The token's id, as `token list` and `token create --json` show it.
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
pub enum MachineCmd {
    /// List enrolled machines with OS, addresses (seen and reported), last seen.
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Give (--enable) or take (--disable) the relay (update agent) role: the agent caches
    /// content by SHA-256 and serves its neighbours over HTTPS.
    Relay {
        machine: String,
        /// Make the machine a relay.
        #[arg(long)]
        enable: bool,
        /// Take the relay role away (its neighbours fall back to their other sources).
        #[arg(long)]
        disable: bool,
        /// ADDRESS:PORT the relay listens on (default 0.0.0.0:8444).
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Register an agentless Unix host the server delivers to over SSH.
    AddSsh(super::ssh::AddSshArgs),
    /// Remove a machine (id or hostname): its credential, deliveries and history go, and its
    /// agent is refused from then on (it can enroll again with a new token).
    Remove {
        machine: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Add (or with --remove, remove) labels on a machine (id or hostname).
    Label {
        machine: String,
        labels: Vec<String>,
        /// Remove the labels instead of adding them.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create or replace a group: static members and/or a filter (all given criteria must match).
    Create {
        name: String,
        /// Machine id or hostname (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
        /// An OS id or product line (`patchcast catalog os`), e.g. windows-server-2008.
        #[arg(long)]
        os: Option<String>,
        /// A language tag (`patchcast catalog languages`); `ja` matches ja-JP machines.
        #[arg(long)]
        language: Option<String>,
        /// CIDR, e.g. 10.1.0.0/16 (matches the address the server sees or any reported one).
        #[arg(long)]
        ip_range: Option<String>,
        /// A label given with `patchcast machine label`.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// List groups with the machines they resolve to.
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Delete a group (refused while a window policy or automatic update uses it).
    Delete {
        name: String,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
pub enum DeliveryCmd {
    /// Start a failed or loop-detected delivery again once its cause is fixed (a corrected
    /// package republished, disk freed): back to pending with a fresh loop count.
    Retry {
        /// The delivery id (`patchcast results --json` shows them).
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Withdraw a delivery that waits (pending or awaiting retry): it is never handed out
    /// again and shows as cancelled. One already on its machine is refused (it finishes there).
    Cancel {
        /// The delivery id (`patchcast results --json` shows them).
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
}

/// Prints what an action did: the `ActionDone` with --json, else one line.
pub(super) fn print_done(d: &crate::transport::admin_api::ActionDone, json: bool) -> Result<()> {
    if json {
        print_json(d)
    } else {
        println!("{} {}: {} (now {})", d.action, d.target, d.detail, d.state);
        Ok(())
    }
}

#[derive(Args)]
pub struct AuditArgs {
    /// How many entries, the newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub connect: Connect,
}

/// `patchcast audit`: who did what, when (console and admin token alike).
pub fn audit(a: AuditArgs, json: bool) -> Result<ExitCode> {
    let list = rt()?.block_on(a.connect.admin()?.audit(a.limit))?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no administrator actions recorded yet");
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["#", "WHEN (UTC)", "WHO", "ACTION", "TARGET", "DETAIL"];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.n.to_string(),
                chrono::DateTime::from_timestamp_millis(e.at_ms)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    let t = super::table::Table::new(&header, &rows, &[true, false, false, false, false, false]);
    println!("{}", t.line(&header));
    for r in &rows {
        println!("{}", t.line(r));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a revoke, remove or delete did: `{"removed": ID}` with --json, else a sentence.
fn done(json: bool, verb: &str, what: &str, id: &str) -> Result<()> {
    if json {
        print_json(&serde_json::json!({ verb: id }))
    } else {
        println!("{what} {id} {verb}");
        Ok(())
    }
}

pub fn packages(connect: &Connect, json: bool) -> Result<ExitCode> {
    let ps = rt()?.block_on(connect.admin()?.packages())?;
    if json {
        print_json(&ps)?;
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["ID", "VERSION", "SIZE", "SHA-256", "TITLE"];
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.version.clone().unwrap_or_else(|| "-".into()),
                crate::core::errors::human_bytes(p.archive_size),
                p.archive_sha256.chars().take(12).collect(),
                p.title.clone(),
            ]
        })
        .collect();
    let t = super::table::Table::new(&header, &rows, &[false, false, true, false, false]);
    println!("{}", t.line(&header));
    for r in &rows {
        println!("{}", t.line(r));
    }
    Ok(ExitCode::SUCCESS)
}

/// `package versions ID`: every signed version published under the id, the most recently
/// published first, the current one marked `*`.
pub fn package_versions(id: &str, connect: &Connect, json: bool) -> Result<ExitCode> {
    let vs = rt()?.block_on(connect.admin()?.package_versions(id))?;
    if json {
        print_json(&vs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["", "VERSION", "SIZE", "SHA-256", "PUBLISHED", "NOTE"];
    let rows: Vec<Vec<String>> = vs
        .iter()
        .map(|v| {
            let note = match (v.current, v.rollback) {
                (true, true) => "current (rollback)",
                (true, false) => "current",
                (false, true) => "rollback",
                (false, false) => "",
            };
            vec![
                if v.current { "*" } else { "" }.into(),
                v.version.clone().unwrap_or_else(|| "-".into()),
                crate::core::errors::human_bytes(v.archive_size),
                v.archive_sha256.chars().take(12).collect(),
                chrono::DateTime::from_timestamp_millis(v.published_at_ms)
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
                note.into(),
            ]
        })
        .collect();
    let t = super::table::Table::new(&header, &rows, &[false, false, true, false, false, false]);
    println!("{}", t.line(&header));
    for r in &rows {
        println!("{}", t.line(r));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn remove_package(id: &str, connect: &Connect, json: bool) -> Result<ExitCode> {
    rt()?.block_on(connect.admin()?.remove_package(id))?;
    done(json, "removed", "package", id)?;
    Ok(ExitCode::SUCCESS)
}

pub fn delivery(cmd: DeliveryCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        DeliveryCmd::Retry { id, connect } => {
            let v = rt()?.block_on(connect.admin()?.retry_delivery(&id))?;
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "delivery {id} is pending again; it is delivered at its machine's next check-in"
                );
            }
        }
        DeliveryCmd::Cancel { id, connect } => {
            let d = rt()?.block_on(connect.admin()?.cancel_delivery(&id))?;
            print_done(&d, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct PublishArgs {
    /// A package directory (built and signed with --key first) or a built .pcpkg archive.
    pub path: PathBuf,
    /// Secret signing key, when PATH is a directory.
    #[arg(long, env = "PATCHCAST_SIGNING_KEY")]
    pub key: Option<PathBuf>,
    /// Also copy the archive to an SMB share (`smb://HOST[:PORT]/SHARE/DIR`) as
    /// `<sha256>.pcpkg`, for machines whose update source is that share.
    #[arg(long)]
    pub to: Option<String>,
    /// SMB credentials file (`user=` and `password=` lines); default: PATCHCAST_SMB_USER and
    /// PATCHCAST_SMB_PASSWORD.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// With --to: copy to the share only, do not publish to the server.
    #[arg(long)]
    pub share_only: bool,
    /// Roll back: accept a version older than the one published (normal publishes refuse
    /// it) and make it current; it is delivered as an ordinary update.
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub connect: Connect,
}

#[derive(Subcommand)]
pub enum ScenarioCmd {
    /// Check a scenario file and start it on the server; prints the scenario id.
    Run {
        file: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// List scenarios, the newest first, with their deliveries counted by state.
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Cancel a scenario's waiting deliveries (pending, awaiting retry); those already on
    /// their machines finish there.
    Cancel {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show a scenario's deliveries by state; --watch follows it with progress bars until done.
    Status {
        id: String,
        /// Follow the scenario with progress bars until every delivery has ended.
        #[arg(long)]
        watch: bool,
        /// At most this many deliveries (one page, at most 10,000); the counts cover every
        /// delivery. Default: the server's page of 1,000.
        #[arg(long, conflicts_with = "all")]
        limit: Option<u64>,
        /// Every delivery, read page by page and printed as the pages arrive.
        #[arg(long)]
        all: bool,
        /// With --all: deliveries asked for a page (tests walk many pages with few rows).
        #[arg(long, default_value_t = 5000, hide = true)]
        page_size: u64,
        /// `en` or `ja` (default: from LANG).
        #[arg(long, env = "PATCHCAST_LANG")]
        lang: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Args)]
pub struct ResultsArgs {
    /// Machine id or hostname.
    #[arg(long)]
    pub machine: Option<String>,
    /// Only this package's deliveries (its id).
    #[arg(long)]
    pub package: Option<String>,
    /// Only this scenario's deliveries (its id).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Comma-separated values instead of a table (not with --json).
    #[arg(long)]
    pub csv: bool,
    /// Include every recorded transition of each delivery.
    #[arg(long)]
    pub history: bool,
    /// `en` or `ja` (default: from LANG).
    #[arg(long, env = "PATCHCAST_LANG")]
    pub lang: Option<String>,
    /// At most this many deliveries (one page, read by the server with LIMIT/OFFSET); the
    /// package counts still cover every delivery selected. Default: all of them.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Which page of --limit deliveries, from 1.
    #[arg(long, default_value_t = 1, requires = "limit")]
    pub page: u64,
    #[command(flatten)]
    pub connect: Connect,
}

#[derive(Args)]
pub struct LoadtestArgs {
    /// Simulated agents, each enrolled as its own machine.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Enrollment requests in flight at once (enrollment is closed loop).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// How often each agent checks in (open loop, each agent at its own phase).
    #[arg(long, default_value = "60s", value_parser = super::duration_arg)]
    pub check_in_interval: std::time::Duration,
    /// How long the steady check-ins run.
    #[arg(long, default_value = "60s", value_parser = super::duration_arg)]
    pub duration: std::time::Duration,
    /// Then roll one package out to every agent (they learn of it at their next check-in).
    #[arg(long)]
    pub rollout: bool,
    /// Then hold this many long polls open at once, to measure their memory.
    #[arg(long, default_value_t = 0)]
    pub long_polls: usize,
    /// Requests in flight at most (one proxy's bounded pool): check-ins, and each request of
    /// a delivery, held while in flight only; later arrivals queue and their wait counts in
    /// their latency.
    #[arg(long, default_value_t = 2048)]
    pub connections: usize,
    /// Signing key the target server trusts (needed with --server; otherwise one is made).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A running server to load (with --fingerprint/--token or --data); default: one started
    /// in-process on a temporary directory with SQLite.
    #[command(flatten)]
    pub connect: Connect,
    /// A file holding the PostgreSQL URL for the server it starts (default: SQLite).
    #[arg(long)]
    pub database_file: Option<PathBuf>,
    /// The pid of the server given with --server/--data, to read its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// With --rollout: start the scenario but let no agent carry it out (deliveries stay
    /// pending), so reports can be timed on a large fleet without the rollout's minutes.
    #[arg(long, requires = "rollout")]
    pub rollout_start_only: bool,
    /// At the end, time each report (dashboard, compliance, machines page and CSV; with
    /// --rollout the scenario page and its CSV and JSON exports; results, all and one page)
    /// this many times and print the fastest, the median and the server's peak memory.
    #[arg(long, default_value_t = 0)]
    pub reports: usize,
    /// The `patchcast` binary to start as the server (default: this one), e.g. an older
    /// release to compare with.
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
}

/// `90s`, `5m`, `1h30m` (humantime), for clap.
fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

fn lang(l: Option<String>) -> Lang {
    Lang::from_tag(&l.or_else(|| std::env::var("LANG").ok()).unwrap_or_default())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn token(cmd: TokenCmd, json: bool) -> Result<ExitCode> {
    let (group, uses, expires, connect) = match cmd {
        TokenCmd::Create {
            group,
            uses,
            expires,
            connect,
        } => (group, uses, expires, connect),
        TokenCmd::List { connect } => {
            let list = rt()?.block_on(connect.admin()?.tokens())?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<16}  {:<12}  {:>9}  EXPIRES", "ID", "GROUP", "USES");
                for t in &list {
                    let uses = match t.max_uses {
                        Some(m) => format!("{}/{m}", t.uses),
                        None => t.uses.to_string(),
                    };
                    let expires = chrono::DateTime::from_timestamp_millis(t.expires_at_ms)
                        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_default();
                    println!(
                        "{:<16}  {:<12}  {:>9}  {expires}",
                        t.id,
                        t.group.as_deref().unwrap_or("-"),
                        uses
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        TokenCmd::Revoke { id, connect } => {
            rt()?.block_on(connect.admin()?.revoke_token(&id))?;
            done(json, "revoked", "enrollment token", &id)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let secs = crate::model::types::parse_duration(&expires)
        .map_err(|e| anyhow::anyhow!("--expires: {}", e.0))?
        .as_secs();
    let t = rt()?.block_on(connect.admin()?.create_token(&TokenRequest {
        group,
        uses,
        expires_secs: secs,
    }))?;
    if json {
        print_json(&t)?;
    } else {
        println!("{}", t.token);
        eprintln!(
            "enrollment token (shown once) on stdout: give it to agents in a file (`patchcast-agent enroll --server URL --fingerprint FP --token-file FILE`) or in PATCHCAST_ENROLL_TOKEN, not as --token, which the process list shows"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn machine(cmd: MachineCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        MachineCmd::AddSsh(a) => return super::ssh::add(a, json),
        MachineCmd::List { connect } => {
            let ms = rt()?.block_on(connect.admin()?.machines())?;
            if json {
                return print_json(&ms).map(|_| ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<18} {:<14} {:<6} {:<16} {:<30} {:<10} LAST SEEN",
                "ID", "HOSTNAME", "OS", "LANG", "SEEN FROM", "REPORTED ADDRESSES", "STATE"
            );
            let now = crate::server::db::now_ms();
            for m in ms {
                let addrs: Vec<String> = m
                    .inventory
                    .interfaces
                    .iter()
                    .flat_map(|i| i.addresses.iter().map(|a| a.to_string()))
                    .collect();
                println!(
                    "{:<20} {:<18} {:<14} {:<6} {:<16} {:<30} {:<10} {}s ago",
                    m.id,
                    m.hostname,
                    m.inventory.os,
                    m.inventory.language,
                    m.peer_address,
                    addrs.join(","),
                    m.agent_state,
                    (now - m.last_seen_ms) / 1000
                );
            }
        }
        MachineCmd::Relay {
            machine,
            enable,
            disable,
            listen,
            connect,
        } => return super::sources::relay(&machine, enable, disable, listen, &connect, json),
        MachineCmd::Remove { machine, connect } => {
            rt()?.block_on(connect.admin()?.remove_machine(&machine))?;
            done(json, "removed", "machine", &machine)?;
        }
        MachineCmd::Label {
            machine,
            labels,
            remove,
            connect,
        } => {
            let l = if remove {
                Labels {
                    add: vec![],
                    remove: labels,
                }
            } else {
                Labels {
                    add: labels,
                    remove: vec![],
                }
            };
            let m = rt()?.block_on(connect.admin()?.label(&machine, &l))?;
            if json {
                print_json(&m)?;
            } else {
                println!("{} ({}): labels {}", m.id, m.hostname, m.labels.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn group(cmd: GroupCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        GroupCmd::Create {
            name,
            members,
            os,
            language,
            ip_range,
            label,
            connect,
        } => {
            let g = Group {
                name,
                members,
                filter: GroupFilter {
                    os,
                    language,
                    ip_range,
                    label,
                },
            };
            let v = rt()?.block_on(connect.admin()?.put_group(&g))?;
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "group {}: {} machine(s) now",
                    v.group.name,
                    v.resolved.len()
                );
            }
        }
        GroupCmd::Delete { name, connect } => {
            rt()?.block_on(connect.admin()?.delete_group(&name))?;
            done(json, "deleted", "group", &name)?;
        }
        GroupCmd::List { connect } => {
            let gs = rt()?.block_on(connect.admin()?.groups())?;
            if json {
                print_json(&gs)?;
            } else {
                for g in gs {
                    println!(
                        "{:<20} {} machine(s): {}",
                        g.group.name,
                        g.resolved.len(),
                        g.resolved.join(", ")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn publish(a: PublishArgs, json: bool) -> Result<ExitCode> {
    let tmp;
    let archive: PathBuf = if a.path.is_dir() {
        let Some(key) = &a.key else {
            bail!(
                "{} is a package directory: give --key SECRET.key to build and sign it first (or publish a built .pcpkg)",
                a.path.display()
            );
        };
        let report = crate::pack::lint::lint_dir(&a.path);
        if report.has_errors() {
            for p in &report.problems {
                eprintln!("{p}");
            }
            bail!(
                "{}: not published: fix the lint errors above",
                a.path.display()
            );
        }
        let raw = report.raw.context("package loaded")?;
        tmp = tempfile_dir()?;
        let out = tmp.join(format!("{}.pcpkg", raw.id));
        crate::pack::archive::build(
            &a.path,
            &raw,
            &crate::pack::keys::read_secret(key)?,
            &out,
            |_| {},
        )?;
        out
    } else {
        a.path.clone()
    };
    if let Some(to) = &a.to {
        let r = super::sources::publish_to_share(&archive, to, a.credentials.as_deref());
        if let Some(d) = archive.parent().filter(|_| a.path.is_dir() && a.share_only) {
            let _ = std::fs::remove_dir_all(d);
        }
        let at = r?;
        if json && a.share_only {
            print_json(&serde_json::json!({ "copied_to": at }))?;
        } else {
            eprintln!("copied to {at}");
        }
        if a.share_only {
            return Ok(ExitCode::SUCCESS);
        }
    } else if a.share_only {
        bail!("--share-only goes with --to smb://HOST/SHARE/DIR");
    }
    let r = rt()?.block_on(async { a.connect.admin()?.publish_with(&archive, a.rollback).await });
    if let Some(d) = archive.parent().filter(|_| a.path.is_dir()) {
        let _ = std::fs::remove_dir_all(d);
    }
    let v = r??;
    if json {
        print_json(&v)?;
    } else {
        println!(
            "{} {} {} ({} bytes, sha256 {}, signed by {})",
            if a.rollback {
                "rolled back to"
            } else {
                "published"
            },
            v.id,
            v.version.as_deref().unwrap_or(""),
            v.archive_size,
            v.archive_sha256,
            v.key_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "patchcast-publish-{}",
        crate::server::random_hex(6)?
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

pub fn scenario(cmd: ScenarioCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        ScenarioCmd::List { connect } => {
            let list = rt()?.block_on(connect.admin()?.scenarios())?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let header = ["ID", "NAME", "DELIVERIES", "DONE", "STATES"];
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let states: Vec<String> =
                        s.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    vec![
                        s.id.clone(),
                        s.name.clone(),
                        s.total.to_string(),
                        if s.done { "yes" } else { "no" }.to_string(),
                        states.join(", "),
                    ]
                })
                .collect();
            let t = super::table::Table::new(&header, &rows, &[false, false, true, false, false]);
            println!("{}", t.line(&header));
            for r in &rows {
                println!("{}", t.line(r));
            }
        }
        ScenarioCmd::Cancel { id, connect } => {
            let d = rt()?.block_on(connect.admin()?.cancel_scenario(&id))?;
            print_done(&d, json)?;
        }
        ScenarioCmd::Run { file, connect } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let s = match crate::model::scenario::load(&file.display().to_string(), &text) {
                Ok(s) => s,
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            let c = rt()?.block_on(connect.admin()?.run_scenario(&s))?;
            if json {
                print_json(&c)?;
            } else {
                println!("{}", c.id);
                eprintln!(
                    "scenario {} started: {} deliveries on {} machine(s); follow it with `patchcast scenario status {} --watch`",
                    s.name,
                    c.deliveries,
                    c.machines.len(),
                    c.id
                );
            }
        }
        ScenarioCmd::Status {
            id,
            watch,
            limit,
            all,
            page_size,
            lang: l,
            connect,
        } => {
            let admin = connect.admin()?;
            let l = lang(l);
            let rt = rt()?;
            if watch {
                rt.block_on(watch_status(&admin, &id, l, json))?;
            }
            if all {
                print_status_pages(&rt, &admin, &id, l, json, page_size)?;
            } else {
                let st = rt.block_on(admin.status_page(&id, l.as_str(), limit, None))?;
                if json {
                    print_json(&st)?;
                } else {
                    print_status(&st, l);
                    print_rows(&st.deliveries, l, false);
                    print_more(&st, l);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `scenario status --all`: every delivery, a page at a time, printed as the pages arrive
/// (the counts are the first page's, read before its rows). The output is what one answer
/// holding every delivery would print.
fn print_status_pages(
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    id: &str,
    l: Lang,
    json: bool,
    page_size: u64,
) -> Result<()> {
    let page = |after: Option<String>| {
        rt.block_on(admin.status_page(id, l.as_str(), Some(page_size.max(1)), after.as_deref()))
    };
    let mut st = page(None)?;
    let head = if json {
        let mut v = serde_json::to_value(&st)?;
        let members = v.as_object_mut().expect("a status is an object");
        members.remove("deliveries");
        members.remove("next");
        let pretty = serde_json::to_string_pretty(&v)?;
        let inner = pretty
            .strip_prefix("{\n")
            .and_then(|p| p.strip_suffix("\n}"))
            .expect("an object with members");
        format!("{inner},\n")
    } else {
        print_status(&st, l);
        String::new()
    };
    let mut out = RowsOut::start(if json { Format::Json } else { Format::Table }, l, &head)?;
    loop {
        for d in &st.deliveries {
            out.row(d)?;
        }
        let Some(next) = st.next.take() else { break };
        st = page(Some(next))?;
    }
    out.end("", false)
}

/// Under a page of a scenario's rows: how to see the rest, when there is more.
fn print_more(st: &ScenarioStatus, l: Lang) {
    if st.next.is_none() {
        return;
    }
    let shown = st.deliveries.len();
    match l {
        Lang::En => println!(
            "(first {shown} of {}; `patchcast scenario status {} --all` shows every delivery)",
            st.total, st.id
        ),
        Lang::Ja => println!(
            "(全 {} 件のうち最初の {shown} 件。すべては `patchcast scenario status {} --all`)",
            st.total, st.id
        ),
    }
}

/// Follows a scenario's counts (no rows) with progress bars until every delivery has ended.
async fn watch_status(admin: &Admin, id: &str, l: Lang, json: bool) -> Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let mp = MultiProgress::with_draw_target(if json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>15} [{bar:40}] {pos}/{len}")
        .expect("a valid template")
        .progress_chars("#>-");
    let states = crate::core::delivery::state_names();
    let bars: Vec<ProgressBar> = states
        .iter()
        .map(|s| {
            let b = mp.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(s.to_string());
            b
        })
        .collect();
    loop {
        let st = admin.status_page(id, l.as_str(), Some(0), None).await?;
        for (b, s) in bars.iter().zip(&states) {
            b.set_length(st.total);
            b.set_position(st.counts.get(*s).copied().unwrap_or(0));
        }
        if st.done {
            for b in &bars {
                b.finish();
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A scenario's header line and its counts by state.
fn print_status(st: &ScenarioStatus, l: Lang) {
    let done = match (st.done, l) {
        (false, _) => "",
        (true, Lang::En) => ", done",
        (true, Lang::Ja) => "、完了",
    };
    match l {
        Lang::En => println!(
            "scenario {} ({}): {} deliveries{done}",
            st.id, st.name, st.total
        ),
        Lang::Ja => println!(
            "シナリオ {} ({}): 配信 {} 件{done}",
            st.id, st.name, st.total
        ),
    }
    let counts: Vec<Vec<String>> = crate::core::delivery::state_names()
        .into_iter()
        .filter_map(|s| {
            let n = st.counts.get(s)?;
            Some(vec![state_word(s, l).to_string(), n.to_string()])
        })
        .collect();
    let t = super::table::Table::new(&["", ""], &counts, &[false, true]);
    for c in &counts {
        println!("  {}", t.line(c));
    }
}

/// A state's name in a table: the name itself in English (what `--json` and scripts see),
/// the label in Japanese.
fn state_word(name: &str, l: Lang) -> &str {
    match l {
        Lang::En => name,
        Lang::Ja => crate::core::delivery::state_label(name, l),
    }
}

fn state_text(d: &DeliveryRow, l: Lang) -> String {
    use crate::core::delivery::State;
    let word = state_word(d.state_name(), l);
    match &d.state {
        State::Failed { code } => format!("{word}({code})"),
        State::LoopDetected { rule } => format!("{word}({rule})"),
        State::Superseded { by } => match l {
            Lang::En => format!("{word} by {by}"),
            Lang::Ja => format!("{word}({by})"),
        },
        _ => word.to_string(),
    }
}

/// The columns of a delivery table.
fn rows_header(l: Lang) -> [&'static str; 6] {
    match l {
        Lang::En => ["MACHINE", "PACKAGE", "STATE", "ATTEMPTS", "CODE", "EXIT"],
        Lang::Ja => [
            "マシン",
            "パッケージ",
            "状態",
            "試行",
            "コード",
            "終了コード",
        ],
    }
}

/// A delivery's cells in a table.
fn row_cells(d: &DeliveryRow, l: Lang) -> Vec<String> {
    vec![
        match &d.mac {
            Some(mac) => format!("{} ({mac})", d.hostname),
            None => d.hostname.clone(),
        },
        d.package_id.clone(),
        state_text(d, l),
        d.attempts.to_string(),
        d.last_code.map(|c| c.to_string()).unwrap_or_default(),
        d.detail
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_default(),
    ]
}

fn rows_table(l: Lang) -> super::table::Table {
    super::table::Table::new(
        &rows_header(l),
        &[],
        &[false, false, false, true, false, true],
    )
}

/// A delivery's line in the table, then what explains it (code, source, checks, output).
fn print_row(t: &super::table::Table, d: &DeliveryRow, row: &[String], l: Lang, history: bool) {
    let (remedy, source, not_applicable) = match l {
        Lang::En => ("remedy", "source", "not applicable"),
        Lang::Ja => ("対処", "取得元", "対象外"),
    };
    println!("{}", t.line(row));
    if let Some(r) = &d.rendered {
        println!("    {}: {}\n    {remedy}: {}", r.code, r.message, r.remedy);
    }
    if let Some(s) = &d.detail.source {
        println!("    {source}: {s}");
    }
    if let crate::core::delivery::State::NotApplicable { reason } = &d.state {
        // The reason once: the explanation holds only the same target check.
        println!("    {not_applicable}: {reason}");
    } else {
        for c in &d.detail.explanation {
            println!("    {:?} {}: {}", c.outcome, c.check, c.detail);
        }
    }
    if let Some(t) = &d.detail.output_tail {
        let tail: Vec<&str> = t.lines().rev().take(3).collect();
        for line in tail.into_iter().rev() {
            println!("    | {line}");
        }
    }
    if history {
        for h in &d.history {
            println!(
                "    #{:<3} attempt {} seq {} {} -> {}{}",
                h.n,
                h.attempt,
                h.seq,
                h.name(),
                state_word(&h.state, l),
                h.code.map(|c| format!(" [{c}]")).unwrap_or_default()
            );
        }
    }
}

fn print_rows(rows: &[DeliveryRow], l: Lang, history: bool) {
    let mut t = rows_table(l);
    let cells: Vec<Vec<String>> = rows.iter().map(|d| row_cells(d, l)).collect();
    for c in &cells {
        t.widen(c);
    }
    println!("{}", t.line(&rows_header(l)));
    for (d, row) in rows.iter().zip(&cells) {
        print_row(&t, d, row, l, history);
    }
}

/// The columns of `patchcast results --csv`.
const CSV_HEADER: [&str; 10] = [
    "machine_id",
    "hostname",
    "package_id",
    "state",
    "detail",
    "attempts",
    "last_code",
    "exit_code",
    "message",
    "remedy",
];

/// A delivery's row in `patchcast results --csv`.
fn csv_cells(d: &DeliveryRow) -> Vec<String> {
    let detail = match &d.state {
        crate::core::delivery::State::Failed { code } => code.to_string(),
        crate::core::delivery::State::LoopDetected { rule } => rule.clone(),
        crate::core::delivery::State::NotApplicable { reason } => reason.clone(),
        crate::core::delivery::State::Superseded { by } => format!("superseded by {by}"),
        _ => String::new(),
    };
    let rendered = |f: fn(&crate::core::errors::Rendered) -> &String| {
        d.rendered
            .as_ref()
            .map(|r| f(r).clone())
            .unwrap_or_default()
    };
    vec![
        d.machine_id.clone(),
        d.hostname.clone(),
        d.package_id.clone(),
        d.state_name().to_string(),
        detail,
        d.attempts.to_string(),
        d.last_code.map(|c| c.to_string()).unwrap_or_default(),
        d.detail
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_default(),
        rendered(|r| &r.message),
        rendered(|r| &r.remedy),
    ]
}

/// Results as CSV, written as the console's export writes it.
pub fn csv(r: &Results) -> String {
    let rows: Vec<Vec<String>> = r.deliveries.iter().map(csv_cells).collect();
    crate::transport::csv::document(&CSV_HEADER, &rows)
}

/// The body of an answer still arriving, read as a blocking `Read` on `rt`.
struct Arriving<'a> {
    rt: &'a tokio::runtime::Runtime,
    resp: reqwest::Response,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for Arriving<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self
                .rt
                .block_on(self.resp.chunk())
                .map_err(std::io::Error::other)?
            {
                Some(c) => (self.chunk, self.at) = (c.to_vec(), 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// How `patchcast results` prints.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Table,
    Json,
    Csv,
}

/// `pretty` (a value serde_json wrote with indents) as a member `depth` levels down: each
/// line after the first indented by two spaces a level.
fn nested(pretty: &str, depth: usize) -> String {
    pretty.replace('\n', &format!("\n{}", "  ".repeat(depth)))
}

/// Delivery rows printed as they arrive (the output is what all of them at once would
/// print): JSON and CSV rows go out one by one; the table's columns fit its widest cell, so
/// its rows wait in a temporary file (not in memory) until the last one is known.
struct RowsOut {
    fmt: Format,
    l: Lang,
    out: std::io::BufWriter<super::Quiet<std::io::StdoutLock<'static>>>,
    n: u64,
    table: super::table::Table,
    spool: Option<std::io::BufWriter<std::fs::File>>,
}

impl RowsOut {
    /// Starts the rows: the JSON array's opening (as the member `"deliveries"` of an object
    /// whose earlier members were written already, `head` before it) or the CSV header.
    fn start(fmt: Format, l: Lang, head: &str) -> Result<Self> {
        use std::io::Write;
        let spool = match fmt {
            Format::Table => Some(std::io::BufWriter::new(
                tempfile::tempfile().context("a temporary file for the table's rows")?,
            )),
            _ => None,
        };
        let mut out = std::io::BufWriter::new(super::Quiet(std::io::stdout().lock()));
        match fmt {
            Format::Json => write!(out, "{{\n{head}  \"deliveries\": [")?,
            Format::Csv => write!(out, "{}", crate::transport::csv::line(&CSV_HEADER))?,
            Format::Table => {}
        }
        Ok(RowsOut {
            fmt,
            l,
            out,
            n: 0,
            table: rows_table(l),
            spool,
        })
    }

    fn row(&mut self, d: &DeliveryRow) -> std::io::Result<()> {
        use std::io::Write;
        match self.fmt {
            Format::Json => {
                let sep = if self.n == 0 { "\n    " } else { ",\n    " };
                write!(
                    self.out,
                    "{sep}{}",
                    nested(&serde_json::to_string_pretty(d)?, 2)
                )?;
            }
            Format::Csv => write!(self.out, "{}", crate::transport::csv::line(&csv_cells(d)))?,
            Format::Table => {
                self.table.widen(&row_cells(d, self.l));
                let spool = self.spool.as_mut().expect("a spool for a table");
                serde_json::to_writer(&mut *spool, d)?;
                spool.write_all(b"\n")?;
            }
        }
        self.n += 1;
        Ok(())
    }

    /// Ends the rows: closes the JSON array, writing `tail` (the object's later members) and
    /// the object's end after it, or prints the table.
    fn end(mut self, tail: &str, history: bool) -> Result<()> {
        use std::io::{BufRead, Seek, Write};
        if self.fmt == Format::Json {
            write!(self.out, "{}", if self.n == 0 { "]" } else { "\n  ]" })?;
            writeln!(self.out, "{tail}\n}}")?;
        }
        self.out.flush()?;
        drop(self.out);
        if let Some(spool) = self.spool {
            let mut file = spool.into_inner().map_err(|e| e.into_error())?;
            file.rewind()?;
            println!("{}", self.table.line(&rows_header(self.l)));
            for line in std::io::BufReader::new(file).lines() {
                let line = line?;
                let d: DeliveryRow = serde_json::from_str(&line)?;
                print_row(&self.table, &d, &row_cells(&d, self.l), self.l, history);
            }
        }
        Ok(())
    }
}

/// Every result, printed as it arrives ([`RowsOut`]). Returns the answer without its rows,
/// for the summary.
fn print_streamed(admin: &Admin, q: &ResultsQuery, fmt: Format, l: Lang) -> Result<Results> {
    let rt = rt()?;
    let resp = rt.block_on(admin.results_response(q))?;
    let body = std::io::BufReader::with_capacity(
        64 << 10,
        Arriving {
            rt: &rt,
            resp,
            chunk: Vec::new(),
            at: 0,
        },
    );
    let mut out = RowsOut::start(fmt, l, "")?;
    let r = crate::transport::admin_api::read_results(body, |d| out.row(&d))
        .context("reading the results as they arrived")?;
    let mut tail = format!(
        ",\n  \"packages\": {},\n  \"settings\": {}",
        nested(&serde_json::to_string_pretty(&r.packages)?, 1),
        nested(&serde_json::to_string_pretty(&r.settings)?, 1)
    );
    if let Some(total) = r.total {
        tail.push_str(&format!(",\n  \"total\": {total}"));
    }
    out.end(&tail, q.history)?;
    Ok(r)
}

pub fn results(a: ResultsArgs, json: bool) -> Result<ExitCode> {
    if json && a.csv {
        super::usage_error("--csv and --json are two output formats: give one");
    }
    let l = lang(a.lang);
    let q = ResultsQuery {
        machine: a.machine,
        package: a.package,
        scenario: a.scenario,
        history: a.history,
        lang: l.as_str().to_string(),
    };
    let fmt = match (json, a.csv) {
        (true, _) => Format::Json,
        (false, true) => Format::Csv,
        (false, false) => Format::Table,
    };
    let admin = a.connect.admin()?;
    let r = match a.limit {
        // Every delivery: printed as it arrives, so a fleet's results need not fit in memory.
        None => print_streamed(&admin, &q, fmt, l)?,
        Some(limit) => {
            let r =
                rt()?.block_on(admin.results_page(&q, Some((limit, a.page.saturating_sub(1)))))?;
            match fmt {
                Format::Json => print_json(&r)?,
                Format::Csv => print!("{}", csv(&r)),
                Format::Table => print_rows(&r.deliveries, l, a.history),
            }
            r
        }
    };
    if fmt == Format::Table {
        print_summary(&r, l, a.limit.map(|limit| (limit, a.page)));
    }
    Ok(ExitCode::SUCCESS)
}

/// The per-package counts and time settings below the results table (with the page line
/// when paged: `(limit, page)`).
fn print_summary(r: &Results, l: Lang, page: Option<(u64, u64)>) {
    let header = match l {
        Lang::En => [
            "PACKAGE",
            "APPLIED",
            "NOT APPLIED",
            "NOT APPLICABLE",
            "FAILED",
            "IN PROGRESS",
        ],
        Lang::Ja => [
            "パッケージ",
            "適用済み",
            "未適用",
            "対象外",
            "失敗",
            "処理中",
        ],
    };
    if let (Some(total), Some((limit, page))) = (r.total, page) {
        let pages = total.div_ceil(limit.max(1)).max(1);
        match l {
            Lang::En => println!(
                "page {} of {pages} ({total} deliveries, {} a page)",
                page,
                limit.max(1)
            ),
            Lang::Ja => println!(
                "{pages} ページ中 {} ページ目(全 {total} 件、1ページ {} 件)",
                page,
                limit.max(1)
            ),
        }
    }
    let rows: Vec<Vec<String>> = r.packages.iter().map(|p| p.cells()).collect();
    let t = super::table::Table::new(&header, &rows, &[false, true, true, true, true, true]);
    println!("\n{}", t.line(&header));
    for row in &rows {
        println!("{}", t.line(row));
    }
    if !r.settings.is_empty() {
        println!(
            "\n{:<24} {:>7} {:>7}  TIME SETTING",
            "MACHINE", "WANTED", "HAS"
        );
        for m in &r.settings {
            let note = match (&m.rendered, m.applied == m.wanted) {
                (_, true) => "up to date".to_string(),
                (Some(r), false) => format!("{} {}", r.code, r.message),
                (None, false) => "sent at its next poll".to_string(),
            };
            println!(
                "{:<24} {:>7} {:>7}  {note}",
                m.hostname, m.wanted, m.applied
            );
        }
    }
}

pub fn loadtest(a: LoadtestArgs, json: bool) -> Result<ExitCode> {
    let work = tempfile_dir()?;
    let plan = crate::loadgen::Plan {
        agents: a.agents,
        concurrency: a.concurrency.max(1),
        check_in_interval: a
            .check_in_interval
            .max(std::time::Duration::from_millis(10)),
        duration: a.duration,
        rollout: a.rollout,
        long_polls: a.long_polls,
        connections: a.connections,
        rollout_start_only: a.rollout_start_only,
        report_runs: a.reports,
    };
    let mut server = None;
    let result = (|| -> Result<crate::loadgen::LoadReport> {
        let target = if a.connect.server.is_some() || a.connect.data.is_some() {
            let Some(key) = &a.key else {
                bail!(
                    "--key SECRET.key (a publisher key the server trusts) is needed with --server/--data"
                )
            };
            let (url, fingerprint, admin_token) = a.connect.parts()?;
            crate::loadgen::Target {
                url,
                fingerprint,
                admin_token,
                signing_key: crate::pack::keys::read_secret(key)?,
                server_pid: a.server_pid,
                database: None,
            }
        } else {
            // The server as its own process, as in production: its memory is its own.
            let key = crate::pack::keys::generate()?;
            crate::pack::keys::write_pair(&work.join("publisher"), &key)?;
            let data = work.join("server");
            let exe = match &a.server_binary {
                Some(b) => b.clone(),
                None => std::env::current_exe()?,
            };
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("server")
                .arg("--data")
                .arg(&data)
                .args(["--listen", "127.0.0.1:0", "--reserve", "0", "--trust-key"])
                .arg(work.join("publisher.pub"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(f) = &a.database_file {
                cmd.arg("--database-file").arg(f);
            }
            let child = server.insert(cmd.spawn().context("starting patchcast server")?);
            let pid = child.id();
            let info = data.join("server.json");
            let t0 = std::time::Instant::now();
            while !info.exists() {
                if let Some(status) = child.try_wait()? {
                    bail!("the server exited at start ({status})");
                }
                if t0.elapsed() > std::time::Duration::from_secs(60) {
                    bail!("the server did not start within 60 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let database = match &a.database_file {
                Some(f) => crate::host::secret_file(f)?,
                None => format!("sqlite://{}", data.join("patchcast.db").display()),
            };
            let connect = Connect {
                data: Some(data),
                ..Connect::default()
            };
            let (url, fingerprint, admin_token) = connect.parts()?;
            eprintln!("server process {pid} on {url}");
            crate::loadgen::Target {
                url,
                fingerprint,
                admin_token,
                signing_key: key,
                server_pid: Some(pid),
                database: Some(database),
            }
        };
        rt()?.block_on(crate::loadgen::run(&target, &plan, &work))
    })();
    if let Some(mut child) = server {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&work);
    let r = result?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} simulated agents over one connection pool, each checking in every {:.0} s (open loop); {} errors in the steady phase, {} in the rollout",
        r.agents, r.check_in_interval_s, r.errors, r.rollout_errors
    );
    for e in &r.error_samples {
        println!("  e.g. {e}");
    }
    let phases = [
        ("enrollment", Some(&r.enrollment)),
        ("check-in", Some(&r.check_in)),
        ("rollout check-in", r.rollout_check_in.as_ref()),
        ("delivery", r.delivery.as_ref()),
    ];
    for (name, s) in phases {
        let Some(s) = s else { continue };
        println!(
            "{name:<17} {:>8} in {:>7.2}s = {:>8.1}/s   p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            s.count, s.seconds, s.per_second, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    if r.rollout_check_in.is_some() {
        match r.rollout_seconds {
            Some(s) => println!(
                "rollout: {} applied in {s:.1} s from its start",
                r.rollout_applied
            ),
            None => println!(
                "rollout: only {} of {} applied before the guard",
                r.rollout_applied, r.agents
            ),
        }
    }
    let mib = |b: f64| b / (1 << 20) as f64;
    if let (Some(per), Some(peak)) = (r.server_bytes_per_machine, r.server_peak_rss) {
        println!(
            "server memory: {:.1} KiB per enrolled machine, peak {:.0} MiB",
            per / 1024.0,
            mib(peak as f64)
        );
    }
    let day = |g: &crate::loadgen::Growth, v: i64| v as f64 * 86_400.0 / g.seconds.max(1e-9);
    match &r.check_in_growth {
        // Check-ins write no history, only update rows in place: a few pages allocated in a
        // short run say nothing of a day.
        Some(g) if g.history_rows == 0 => println!(
            "database during the steady check-ins: no history rows in {:.0} s ({:+} bytes of pages; rows updated in place, so not extrapolated)",
            g.seconds, g.bytes
        ),
        Some(g) => println!(
            "database during the steady check-ins: {:+} bytes, {:+} history rows in {:.0} s = {:.0} bytes/day, {:.0} rows/day (extrapolated)",
            g.bytes,
            g.history_rows,
            g.seconds,
            day(g, g.bytes),
            day(g, g.history_rows)
        ),
        None => {}
    }
    if let Some(g) = &r.rollout_growth {
        let per = |v: i64| v as f64 / (r.agents.max(1)) as f64;
        println!(
            "database during the rollout: {:+} bytes, {:+} history rows in {:.0} s = {:.0} bytes and {:.1} rows per machine",
            g.bytes,
            g.history_rows,
            g.seconds,
            per(g.bytes),
            per(g.history_rows)
        );
    }
    for t in &r.reports {
        println!(
            "report {:<24} {:>12} bytes  fastest {:>9.1} ms  median {:>9.1} ms  ({} runs){}",
            t.report,
            t.bytes,
            t.min_ms,
            t.median_ms,
            t.runs,
            match (t.server_rss_before, t.server_peak_rss) {
                (Some(b), Some(p)) => format!(
                    "  server RSS {:.1} MiB, peak {:.1} MiB",
                    b as f64 / 1048576.0,
                    p as f64 / 1048576.0
                ),
                _ => String::new(),
            }
        );
    }
    if let Some(per) = r.server_bytes_per_long_poll {
        println!(
            "server memory: {:.1} KiB per open long poll ({} open)",
            per / 1024.0,
            r.long_polls
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::admin_api::DeliveryRow;

    #[test]
    fn regression_results_csv_neutralises_formulas_from_endpoints() {
        // A hostname is whatever the endpoint reported; a spreadsheet must not run it.
        let row = DeliveryRow {
            delivery_id: "d".into(),
            scenario_id: "s".into(),
            machine_id: "m-1".into(),
            hostname: "=HYPERLINK(\"http://x\")".into(),
            mac: None,
            package_id: "p".into(),
            action: Default::default(),
            state: crate::core::delivery::State::Applied,
            attempts: 1,
            unverified_runs: 0,
            last_code: None,
            rendered: None,
            detail: Default::default(),
            updated_at_ms: 0,
            history: Vec::new(),
        };
        let r = Results {
            deliveries: vec![row],
            packages: Vec::new(),
            settings: Vec::new(),
            total: None,
        };
        let text = csv(&r);
        let line = text.split("\r\n").nth(1).unwrap();
        assert!(
            line.starts_with("m-1,\"'=HYPERLINK(\"\"http://x\"\")\",p,applied,"),
            "{line}"
        );
    }
}
