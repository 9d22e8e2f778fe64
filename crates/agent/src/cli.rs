//! `patchcast-agent`'s command line: enroll, run (the service), identify.

use clap::{Args, Parser, Subcommand};
use patchcast_core::identify::{identify, queries};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "patchcast-agent",
    version,
    about = "patchcast endpoint agent",
    after_help = "To install it on another host over SSH, use the admin CLI: patchcast agent install --ssh USER@HOST …"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The agent's command line, for `patchcast man` and completions.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// How this agent reaches its server (and HTTPS sources) through an HTTP CONNECT proxy.
#[derive(Args)]
struct ProxyArgs {
    /// HTTP CONNECT proxy, `http://HOST:PORT` (default: HTTPS_PROXY; NO_PROXY lists hosts
    /// reached directly). The proxy only tunnels: the pinned certificate is still checked.
    #[arg(long, env = "PATCHCAST_PROXY")]
    proxy: Option<String>,
    /// A file holding the proxy's `USER:PASSWORD` (never on the command line).
    #[arg(long, env = "PATCHCAST_PROXY_CREDENTIALS_FILE")]
    proxy_credentials_file: Option<PathBuf>,
}

impl ProxyArgs {
    /// The flags, or else what `enroll` saved under `enrolled` (a root), or else the
    /// environment (HTTPS_PROXY, NO_PROXY) decide this process's proxy.
    fn configure(&self, enrolled: Option<&std::path::Path>) -> anyhow::Result<()> {
        let saved = enrolled
            .and_then(|r| crate::config::AgentConfig::load(&crate::config::Root(r.into())).ok())
            .map(|c| c.proxy)
            .unwrap_or_default();
        let given = self.saved();
        let chosen = if given.is_none() { saved } else { given };
        patchcast_proto::proxy::configure_from(
            chosen.url.as_deref(),
            chosen.credentials_file.as_deref(),
        )?;
        Ok(())
    }

    fn saved(&self) -> crate::config::SavedProxy {
        crate::config::SavedProxy {
            url: self.proxy.clone(),
            credentials_file: self
                .proxy_credentials_file
                .as_ref()
                .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe this machine: is the package in DIR (a package directory) applied here?
    /// Prints the verdict and every rule's outcome as JSON; reads only, changes nothing.
    Identify { dir: PathBuf },
    /// Enroll this machine with a patchcast server (once): stores the credential and pins the
    /// server's certificate fingerprint under --root.
    Enroll {
        /// The agent's directory: its enrollment, credential, journal and work files.
        #[arg(long, env = "PATCHCAST_AGENT_ROOT", default_value = crate::config::DEFAULT_ROOT)]
        root: PathBuf,
        /// https://HOST:PORT of the management server. Several servers sharing one database:
        /// repeat the flag (or separate with commas); the agent fails over between them.
        #[arg(long, env = "PATCHCAST_SERVER", value_delimiter = ',', required = true)]
        server: Vec<String>,
        /// The enrollment token the administrator created. Prefer PATCHCAST_ENROLL_TOKEN or
        /// --token-file: a value given here shows in the process list.
        #[arg(
            long,
            env = "PATCHCAST_ENROLL_TOKEN",
            hide_env_values = true,
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// A file holding the enrollment token.
        #[arg(long, env = "PATCHCAST_ENROLL_TOKEN_FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The server certificate's fingerprint as the server prints it (`sha256:HEX`).
        #[arg(long, env = "PATCHCAST_SERVER_FINGERPRINT")]
        fingerprint: String,
        /// A proxy given here is remembered in ROOT/agent.json for `run` and `doctor`.
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Print the enrollment as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check this machine's way to its server: name resolution, TCP, the pinned certificate,
    /// the credential. Each failure names its code and remedy; exits 1 if any check fails.
    Doctor {
        /// The agent's directory: its enrollment, credential, journal and work files.
        #[arg(long, env = "PATCHCAST_AGENT_ROOT", default_value = crate::config::DEFAULT_ROOT)]
        root: PathBuf,
        /// Language of the remedies: en or ja.
        #[arg(long, default_value = "en", value_parser = ["en", "ja"])]
        lang: String,
        /// One JSON array of checks instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Run the agent in the foreground: long-poll the server and carry out deliveries.
    /// SIGTERM or Ctrl-C stops it cleanly; an interrupted delivery resumes at the next start.
    Run {
        /// The agent's directory: its enrollment, credential, journal and work files.
        #[arg(long, env = "PATCHCAST_AGENT_ROOT", default_value = crate::config::DEFAULT_ROOT)]
        root: PathBuf,
        /// Really restart the machine when a delivery needs it and the server allows it
        /// (otherwise the restart is recorded in ROOT/reboots.log).
        #[arg(long, env = "PATCHCAST_ALLOW_REBOOT_FOR_REAL")]
        allow_reboot_for_real: bool,
        /// Longest wait between reconnects (tests shorten it).
        #[arg(
            long,
            env = "PATCHCAST_AGENT_BACKOFF_MAX",
            default_value = "60s",
            value_parser = duration_arg,
            hide = true
        )]
        backoff_max: std::time::Duration,
        /// How often a running install is announced to the server.
        #[arg(
            long,
            env = "PATCHCAST_AGENT_HEARTBEAT",
            default_value = "30s",
            value_parser = duration_arg,
            hide = true
        )]
        heartbeat: std::time::Duration,
        /// Log lines as text (default) or JSON, one object a line; on stderr, or in
        /// ROOT/agent.log (rotated at 10 MiB, three kept) when running as a Windows service.
        #[arg(long, env = "PATCHCAST_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Linux, without root: install under DIR instead of `/`. Commands get it as
        /// `DESTDIR` and file rules are read under it (`/usr/local/bin/x` is
        /// DIR/usr/local/bin/x); packages installed by dpkg or rpm still need root.
        #[arg(long, env = "PATCHCAST_AGENT_INSTALL_ROOT", value_name = "DIR")]
        install_root: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Write a copy of this binary carrying the build stamp STAMP (it then reports its
    /// version as VERSION+STAMP): how two builds of one source are told apart, e.g. for a
    /// `kind: agent` package.
    Stamp {
        /// 1 to 44 characters of [A-Za-z0-9.~], e.g. `b2`.
        stamp: String,
        /// Where to write the stamped copy.
        #[arg(long)]
        out: PathBuf,
    },
    /// Started by the agent itself while it upgrades: restores the previous binary unless
    /// the new agent checks in by the deadline (see `agent::upgrade`).
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        delivery: String,
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        deadline_ms: i64,
        /// The Windows service the agent runs as: the watchdog starts it through the SCM.
        #[arg(long)]
        service: Option<String>,
        /// The agent's own arguments, to start the restored agent with.
        #[arg(last = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Rolls back an agent upgrade whose watchdog is gone (systemd stopped it with the
    /// unit): run from `EXE.previous` before the agent starts (`ExecStartPre=`).
    #[command(hide = true)]
    Recover {
        #[arg(long, env = "PATCHCAST_AGENT_ROOT", default_value = crate::config::DEFAULT_ROOT)]
        root: PathBuf,
        /// The agent binary (default: this one's path without `.previous`).
        #[arg(long)]
        exe: Option<PathBuf>,
    },
}

fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    patchcast_core::model::types::parse_duration(s).map_err(|e| e.0)
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread: the agent does one thing at a time and must stay small when idle.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime")
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("PATCHCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format `run` was given, for the service's log file set up later (`windows::service`).
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn init_logging() {
    let json = LOG_FORMAT.get() == Some(&LogFormat::Json);
    let b = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    if json {
        b.json().try_init().ok();
    } else {
        b.try_init().ok();
    }
}

/// Logging for a process without a console (the Windows service): appended to `path` and
/// rotated by size as it runs (`logfile`), in the format `run` was given.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn init_logging_to_file(path: &std::path::Path) {
    let Ok(file) = crate::logfile::RotatingFile::open(path, crate::logfile::ROTATE_AT) else {
        return init_logging();
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(false)
        .with_writer(file);
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        b.json().try_init().ok();
    } else {
        b.try_init().ok();
    }
}

/// Registers for SIGTERM at once (a signal that arrives before the first poll still stops
/// the agent cleanly); the future resolves on SIGTERM or SIGINT.
// Not an `async fn`: on Unix the handler must be registered before the first await.
#[cfg_attr(not(unix), allow(clippy::manual_async_fn))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The agent program: `patchcast-agent ARGS`, or `patchcast agent ARGS` (the demo starts
/// agents that way, so it needs only the one binary `cargo run` builds).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    // The version with this binary's build stamp (`agent::stamp`).
    let parsed = Cli::command()
        .version(crate::stamp::version_static())
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Cmd::Enroll {
            root,
            server,
            token,
            token_file,
            fingerprint,
            proxy,
            json,
        } => {
            init_logging();
            // Enrollment decides from the flags and the environment, not an older agent.json.
            if let Err(e) = proxy.configure(None) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            let token = match (token, token_file) {
                (Some(t), _) => Ok(t),
                (None, Some(f)) => patchcast_proto::host::secret_file(&f),
                (None, None) => Err(anyhow::anyhow!(
                    "give --token-file FILE or PATCHCAST_ENROLL_TOKEN"
                )),
            };
            let r = match token {
                Ok(token) => runtime().block_on(crate::service::enroll(
                    root.clone(),
                    &server,
                    &token,
                    &fingerprint,
                    proxy.saved(),
                )),
                Err(e) => Err(e),
            };
            match r {
                Ok(cfg) if json => {
                    println!(
                        "{}",
                        serde_json::json!({"machine_id": cfg.machine_id, "server": cfg.server, "servers": cfg.servers, "fingerprint": cfg.fingerprint, "root": root, "proxy": cfg.proxy.url})
                    );
                    ExitCode::SUCCESS
                }
                Ok(cfg) => {
                    println!(
                        "enrolled as machine {} with {} (certificate {} pinned); start the agent with `patchcast-agent run --root {}`",
                        cfg.machine_id,
                        cfg.server,
                        cfg.fingerprint,
                        root.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            root,
            allow_reboot_for_real,
            backoff_max,
            heartbeat,
            log_format,
            install_root,
            proxy,
        } => {
            let _ = LOG_FORMAT.set(log_format);
            if let Some(dir) = install_root {
                #[cfg(not(windows))]
                // Absolute: commands run in their payload directory.
                crate::facts::set_install_root(std::path::absolute(&dir).unwrap_or(dir));
                #[cfg(windows)]
                {
                    eprintln!(
                        "error: --install-root is for Linux agents ({})",
                        dir.display()
                    );
                    return ExitCode::from(2);
                }
            }
            if let Err(e) = proxy.configure(Some(&root)) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            let opts = crate::service::Options {
                root,
                allow_real_reboot: allow_reboot_for_real,
                backoff_max,
                heartbeat: heartbeat.max(std::time::Duration::from_millis(100)),
            };
            // As a service, it logs to a file (windows::service); from a console, to stderr.
            #[cfg(windows)]
            if let Some(code) = crate::windows::service::try_run_as_service(&opts) {
                return code;
            }
            init_logging();
            let r = runtime().block_on(async {
                let stop = shutdown_signal();
                tracing::info!(root = %opts.root.display(), version = %crate::stamp::version(), "agent running");
                // Which process runs the agent on this root: after an upgrade rolled back,
                // the restored agent is another process than the one first started.
                let pid_file = opts.root.join("agent.pid");
                if let Err(e) = std::fs::write(&pid_file, std::process::id().to_string()) {
                    tracing::warn!(file = %pid_file.display(), error = %e, "could not write the pid file");
                }
                // The proxy's address only: its credentials never reach a log.
                if let Ok(Some(p)) = patchcast_proto::proxy::current() {
                    tracing::info!(proxy = %p.url, no_proxy = ?p.no_proxy, "reaching the server through a proxy");
                }
                tokio::select! {
                    r = crate::service::run(opts) => r,
                    _ = stop => {
                        // Journal writes are synchronous, so stopping at this await point
                        // never leaves one half done.
                        tracing::info!("stopping on signal");
                        Ok(())
                    }
                }
            });
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Stamp { stamp, out } => {
            let r = (|| -> anyhow::Result<String> {
                use anyhow::Context;
                let exe = std::env::current_exe().context("finding this binary")?;
                let mut bytes =
                    std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
                crate::stamp::write(&mut bytes, &stamp)?;
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("writing {}", out.display()))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("making {} executable", out.display()))?;
                }
                Ok(format!("{}+{stamp}", env!("CARGO_PKG_VERSION")))
            })();
            match r {
                Ok(version) => {
                    println!("{version}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Watchdog {
            root,
            delivery,
            pid,
            deadline_ms,
            service,
            args,
        } => {
            let root = crate::config::Root(root);
            if service.is_some() {
                // A service's watchdog has no console to log to.
                init_logging_to_file(&root.0.join("watchdog.log"));
            } else {
                init_logging();
            }
            match crate::upgrade::watchdog(
                root,
                &delivery,
                pid,
                deadline_ms,
                service.as_deref(),
                &args,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "upgrade watchdog failed");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Recover { root, exe } => {
            init_logging();
            let r = exe
                .map(Ok)
                .unwrap_or_else(|| {
                    let me = std::env::current_exe()?;
                    Ok(crate::upgrade::of_previous(&me).unwrap_or(me))
                })
                .and_then(|exe| crate::upgrade::recover(&crate::config::Root(root), &exe));
            match r {
                Ok(restored) => {
                    tracing::info!(restored, "agent upgrade recovery done");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "agent upgrade recovery failed");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Doctor {
            root,
            lang,
            json,
            proxy,
        } => {
            if let Err(e) = proxy.configure(Some(&root)) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            let lang = patchcast_core::errors::Lang::from_tag(&lang);
            let checks = runtime().block_on(crate::doctor::run(&crate::config::Root(root), lang));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks).unwrap_or_default()
                );
            } else {
                for c in &checks {
                    println!(
                        "{:<5} {}: {}",
                        if c.ok { "ok" } else { "FAIL" },
                        c.check,
                        c.detail
                    );
                    if let (Some(code), Some(remedy)) = (c.code, &c.remedy) {
                        println!("      {code}: {remedy}");
                    }
                }
            }
            if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Identify { dir } => {
            let report = patchcast_pack::lint::lint_dir(&dir);
            let Some(pkg) = report.package else {
                for p in &report.problems {
                    eprintln!("{p}");
                }
                eprintln!("error: {} is not a valid package", dir.display());
                return ExitCode::FAILURE;
            };
            let mut facts = crate::facts::machine();
            crate::facts::gather(&mut facts, &queries(&pkg));
            let id = identify(&pkg, &facts);
            println!(
                "{}",
                serde_json::json!({"machine": {"os": facts.os, "arch": facts.arch, "language": facts.language}, "identification": id})
            );
            ExitCode::SUCCESS
        }
    }
}
