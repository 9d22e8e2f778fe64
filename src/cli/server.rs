//! `patchcast server`: starts the management server in the foreground until Ctrl-C / SIGTERM;
//! `server backup` and `server restore` copy everything a server is into one file and back.

use crate::model::types::{Rate, Size, parse_duration};
use crate::server::{Config, start};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `patchcast server [FLAGS]` runs the server; `patchcast server backup|restore` do not.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ServerCmd {
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    #[command(flatten)]
    pub run: ServerArgs,
}

#[derive(Subcommand)]
pub enum ServerAction {
    /// Back up a server, running or not: database, content store, TLS key and certificate,
    /// admin token, trusted publisher keys, into one file (mode 0600: it holds secrets).
    Backup(BackupArgs),
    /// Restore a backup into a new, empty data directory (and, for PostgreSQL, an empty
    /// database); every member is checked against the manifest before anything is written.
    Restore(RestoreArgs),
    /// Make DATA a second server of the same installation: copies the TLS identity (so agents'
    /// pin matches every server) and the admin token from the first server's data directory
    /// (files 0600). Then start it with the same --database and --content as the first.
    Join(JoinArgs),
    /// Prepare a new server certificate: agents are handed a re-pin statement signed by the
    /// current certificate at their polls; `--switch` makes the next start present it.
    RenewCert(super::keys::RenewArgs),
}

#[derive(Args)]
pub struct BackupArgs {
    /// The server's data directory.
    #[arg(long, env = "PATCHCAST_DATA")]
    pub data: PathBuf,
    /// The backup file to write (replaced once the new backup is complete).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The publisher keys the server trusts (as given to `patchcast server --trust-key`).
    #[arg(long = "trust-key", env = "PATCHCAST_TRUST_KEY", value_delimiter = ',')]
    pub trust_keys: Vec<PathBuf>,
}

#[derive(Args)]
pub struct JoinArgs {
    /// The data directory of a server of this installation (read only).
    #[arg(long)]
    pub from: PathBuf,
    /// The new server's data directory: created, and must not hold an identity yet.
    #[arg(long, env = "PATCHCAST_DATA")]
    pub data: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// The new data directory: must not exist yet or be empty.
    #[arg(long)]
    pub data: PathBuf,
    /// For a PostgreSQL backup: a file holding the URL of the new, empty database to restore
    /// into. Never read from the environment, which may name the running server's database.
    #[arg(long)]
    pub database_file: Option<PathBuf>,
}

/// Where a PostgreSQL database is (none: SQLite in the data directory).
#[derive(Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (`postgres://user:pass@host/db`); default: SQLite in DATA/patchcast.db.
    /// Prefer PATCHCAST_DATABASE or --database-file when the URL holds a password: a value
    /// given here shows in the process list.
    #[arg(long, env = "PATCHCAST_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// A file holding the PostgreSQL URL.
    #[arg(long, env = "PATCHCAST_DATABASE_FILE", conflicts_with = "database")]
    pub database_file: Option<PathBuf>,
}

impl DatabaseArgs {
    fn url(&self) -> anyhow::Result<Option<String>> {
        Ok(match (&self.database, &self.database_file) {
            (None, Some(f)) => Some(crate::host::secret_file(f)?),
            (d, _) => d.clone(),
        })
    }
}

#[derive(Args)]
pub struct ServerArgs {
    /// A YAML configuration file with any of these settings (schemas/server-config.schema.json;
    /// `patchcast schema server-config`); flags and environment variables override it, and
    /// relative paths in it are relative to the file.
    #[arg(long, env = "PATCHCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: database (SQLite), content store, TLS identity, admin.token, server.json.
    #[arg(long, env = "PATCHCAST_DATA", required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8443; `127.0.0.1:0` picks a free port and prints it).
    #[arg(long, env = "PATCHCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Content store directory (signed archives; default DATA/content). Servers sharing one
    /// PostgreSQL database must share it too (a network share every server mounts).
    #[arg(long, env = "PATCHCAST_CONTENT")]
    pub content: Option<PathBuf>,
    /// Publisher public key (`.pub`) whose packages this server accepts; repeatable.
    #[arg(long = "trust-key", env = "PATCHCAST_TRUST_KEY", value_delimiter = ',')]
    pub trust_keys: Vec<PathBuf>,
    /// Free disk space the server keeps (default 1GiB; `500MB`, `2GiB` or bytes); a publish
    /// that would go below it is refused (E17).
    #[arg(long, env = "PATCHCAST_RESERVE", value_name = "SIZE", value_parser = super::size_arg)]
    pub reserve: Option<u64>,
    /// Extra DNS name or address for the certificate (repeatable).
    #[arg(long = "name", env = "PATCHCAST_NAMES", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Grace after a package's install timeout before an unheard delivery gets E13 (default 2m).
    #[arg(long, env = "PATCHCAST_NO_REPLY_MARGIN", value_name = "DURATION", value_parser = super::duration_arg)]
    pub no_reply_margin: Option<Duration>,
    /// Long-poll length agents are told to use (default 30s).
    #[arg(long, env = "PATCHCAST_POLL", value_name = "DURATION", value_parser = super::duration_arg)]
    pub poll: Option<Duration>,
    /// Tests only: lets an admin set and advance this server's clock.
    #[arg(long, hide = true)]
    pub test_clock: bool,
    /// Deliveries transferring at once on this server (default: no limit).
    #[arg(long, env = "PATCHCAST_MAX_TRANSFERS")]
    pub max_transfers: Option<u32>,
    /// Deliveries transferring at once per subnet (/24 IPv4, /64 IPv6; default: no limit).
    #[arg(long, env = "PATCHCAST_MAX_TRANSFERS_PER_SUBNET")]
    pub max_transfers_per_subnet: Option<u32>,
    /// Subnet size for --max-transfers-per-subnet, IPv4 prefix length (default 24).
    #[arg(long, env = "PATCHCAST_SUBNET_PREFIX")]
    pub subnet_prefix: Option<u8>,
    /// Bandwidth of one content download, e.g. `10MB/s` or `512KiB/s` (default: no limit).
    #[arg(long, env = "PATCHCAST_TRANSFER_RATE", value_name = "RATE", value_parser = super::rate_arg)]
    pub transfer_rate: Option<u64>,
    /// Also serve /metrics at ADDR, over plain HTTP and without the admin token (bind it to
    /// loopback or a management network). On the main listener /metrics needs the token.
    #[arg(long, env = "PATCHCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr as text (default) or JSON, one object a line; PATCHCAST_LOG filters.
    #[arg(long, env = "PATCHCAST_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Prune delivery history older than this (`90d`, `12h`): each finished delivery keeps
    /// its result and its latest transition; deliveries under way keep all. Default: keep all.
    #[arg(long, env = "PATCHCAST_HISTORY_RETENTION", value_name = "DURATION", value_parser = super::duration_arg)]
    pub history_retention: Option<Duration>,
}

/// How log lines are written.
#[derive(
    Clone, Copy, Debug, PartialEq, clap::ValueEnum, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `patchcast server --config FILE`: the server's flags as a YAML document. Every key is
/// optional; a flag or environment variable given as well wins.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
#[schemars(title = "patchcast server configuration")]
pub struct ServerFile {
    /// Data directory: database (SQLite), content store, TLS identity, admin.token, server.json.
    pub data: Option<PathBuf>,
    /// Address to listen on, `HOST:PORT` (default 127.0.0.1:8443).
    #[schemars(with = "Option<String>")]
    pub listen: Option<SocketAddr>,
    /// PostgreSQL URL; default: SQLite in DATA/patchcast.db. Prefer `database_file` when the
    /// URL holds a password.
    pub database: Option<String>,
    /// A file holding the PostgreSQL URL.
    pub database_file: Option<PathBuf>,
    /// Publisher public keys (`.pub`) whose packages this server accepts.
    #[serde(default)]
    pub trust_keys: Vec<PathBuf>,
    /// Free disk space the server keeps: bytes, or a size with a unit (default `1GiB`).
    pub reserve: Option<Size>,
    /// Extra DNS names or addresses for the certificate.
    #[serde(default)]
    pub names: Vec<String>,
    /// Grace after a package's install timeout before an unheard delivery gets E13 (default 2m).
    pub no_reply_margin: Option<String>,
    /// Long-poll length agents are told to use (default 30s).
    pub poll: Option<String>,
    /// Deliveries transferring at once on this server.
    pub max_transfers: Option<u32>,
    /// Deliveries transferring at once per subnet.
    pub max_transfers_per_subnet: Option<u32>,
    /// Subnet size for max_transfers_per_subnet, IPv4 prefix length (default 24).
    pub subnet_prefix: Option<u8>,
    /// Bandwidth of one content download: bytes per second, or with a unit (`10MB/s`).
    pub transfer_rate: Option<Rate>,
    /// Also serve /metrics here over plain HTTP without the admin token.
    #[schemars(with = "Option<String>")]
    pub metrics_listen: Option<SocketAddr>,
    /// `text` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// Content store directory (default DATA/content); shared by servers on one database.
    pub content: Option<PathBuf>,
    /// Prune delivery history older than this (`90d`): each finished delivery keeps its
    /// result and latest transition; deliveries under way keep all (default: keep all).
    pub history_retention: Option<String>,
}

impl ServerFile {
    /// Reads FILE; an error names `FILE:LINE:COLUMN`. Relative paths become relative to
    /// the file's directory, where its author meant them.
    pub fn load(path: &std::path::Path) -> anyhow::Result<ServerFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let (mut f, _): (ServerFile, _) = crate::model::yaml::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: {}",
                path.display(),
                e.position.line,
                e.position.column,
                e.message
            )
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        f.data
            .iter_mut()
            .chain(f.database_file.iter_mut())
            .chain(f.content.iter_mut())
            .chain(f.trust_keys.iter_mut())
            .for_each(rel);
        Ok(f)
    }
}

/// Installs the process's log subscriber: stderr as text or JSON, filtered by PATCHCAST_LOG
/// (default `warn`), and the database-time layer behind the server's metrics.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATCHCAST_LOG")
        .unwrap_or_else(|_| "warn".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(crate::server::ops::db_time_layer())
        .try_init()
        .ok();
}

pub fn run(cmd: ServerCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd.action {
        None => serve(cmd.run, json),
        Some(ServerAction::Backup(a)) => backup(a, json),
        Some(ServerAction::Restore(a)) => restore(a, json),
        Some(ServerAction::RenewCert(a)) => super::keys::renew_cert(a, json),
        Some(ServerAction::Join(a)) => join(a, json),
    }
}

fn join(a: JoinArgs, json: bool) -> anyhow::Result<ExitCode> {
    let copied = crate::server::backup::join(&a.from, &a.data)?;
    if json {
        println!("{}", serde_json::json!({"data": a.data, "copied": copied}));
    } else {
        println!(
            "{} now holds the identity of {} ({} files); start it with the same --database and --content as that server",
            a.data.display(),
            a.from.display(),
            copied
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn backup(a: BackupArgs, json: bool) -> anyhow::Result<ExitCode> {
    let src = crate::server::backup::Source {
        data: a.data,
        database: a.database.url()?,
        trust_keys: a.trust_keys,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let s = rt.block_on(crate::server::backup::backup(&src, &a.out))?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "backup written to {} ({} members, {} bytes, database {:?}); it holds the server's private key and admin token: keep it like them",
            s.out.display(),
            s.members,
            s.bytes,
            s.database
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(a: RestoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let database = a
        .database_file
        .as_deref()
        .map(crate::host::secret_file)
        .transpose()?;
    let target = crate::server::backup::Target {
        data: a.data,
        database,
    };
    let r = crate::server::backup::restore(&a.input, &target)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "restored {} members into {} (database {:?})",
            r.members,
            r.data.display(),
            r.database
        );
        let mut start = format!("patchcast server --data {}", r.data.display());
        for k in &r.trust_keys {
            start.push_str(&format!(" --trust-key {}", k.display()));
        }
        if let Some(f) = &a.database_file {
            start.push_str(&format!(" --database-file {}", f.display()));
        }
        println!("start it with: {start}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A list flag given replaces the file's list.
fn either<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

fn serve(a: ServerArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = match &a.config {
        Some(p) => ServerFile::load(p)?,
        None => ServerFile::default(),
    };
    // Flags (and environment variables) win over the file, the file over the defaults.
    init_logging(a.log_format.or(file.log_format).unwrap_or(LogFormat::Text));
    let data = a.data.or(file.data).ok_or_else(|| {
        anyhow::anyhow!("give --data DIR (or PATCHCAST_DATA, or `data:` in the configuration file)")
    })?;
    // The file's durations are read here, named by their key; flags were checked by clap.
    let duration = |key: &str, s: Option<String>| -> anyhow::Result<Option<Duration>> {
        s.map(|s| {
            parse_duration(&s)
                .map_err(|e| anyhow::anyhow!("`{key}` in the configuration file: {}", e.0))
        })
        .transpose()
    };
    let database = match a.database.url()? {
        Some(u) => Some(u),
        None => match (file.database, &file.database_file) {
            (None, Some(f)) => Some(crate::host::secret_file(f)?),
            (d, _) => d,
        },
    };
    let no_reply_margin = a
        .no_reply_margin
        .or(duration("no_reply_margin", file.no_reply_margin)?);
    let poll = a.poll.or(duration("poll", file.poll)?);
    let history_retention = a
        .history_retention
        .or(duration("history_retention", file.history_retention)?);
    let cfg = Config {
        listen: a
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8443".parse().expect("a valid address")),
        database,
        trust_keys: either(a.trust_keys, file.trust_keys),
        reserve: a.reserve.or(file.reserve.map(|s| s.0)).unwrap_or(1 << 30),
        names: either(a.names, file.names),
        no_reply_margin: no_reply_margin.unwrap_or(Duration::from_secs(120)),
        poll_ms: poll.unwrap_or(Duration::from_secs(30)).as_millis() as u64,
        test_clock: a.test_clock,
        caps: crate::server::caps::Caps {
            max_transfers: a.max_transfers.or(file.max_transfers),
            max_transfers_per_subnet: a.max_transfers_per_subnet.or(file.max_transfers_per_subnet),
            subnet_prefix_v4: a.subnet_prefix.or(file.subnet_prefix).unwrap_or(24),
            transfer_rate: a.transfer_rate.or(file.transfer_rate.map(|r| r.0)),
            ..Default::default()
        },
        metrics_listen: a.metrics_listen.or(file.metrics_listen),
        history_retention,
        content: a.content.or(file.content),
        ..Config::new(&data)
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = start(cfg.clone()).await?;
        if json {
            println!(
                "{}",
                serde_json::json!({"url": running.info.url, "fingerprint": running.info.fingerprint, "recovered_in_flight": running.recovered, "metrics_url": running.metrics_addr.map(|m| format!("http://{m}/metrics"))})
            );
        } else {
            println!("patchcast server listening on {}", running.info.url);
            println!("certificate fingerprint {}", running.info.fingerprint);
            println!(
                "database: {}; {} in-flight deliveries recovered",
                cfg.database.as_deref().map(crate::server::db::redact).unwrap_or_else(|| "SQLite".into()),
                running.recovered
            );
            println!(
                "admin commands on this host: --data {} (reads server.json and admin.token)",
                cfg.data.display()
            );
            if let Some(m) = running.metrics_addr {
                println!("metrics without a token on http://{m}/metrics");
            }
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        let term = async {
            #[cfg(unix)]
            if let Ok(mut t) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                t.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = running.task => { r??; }
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        running.handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        running.server.db.close().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
