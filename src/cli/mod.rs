//! The `patchcast` command line: argument parsing and printing only; the work is in the library.

pub mod accounts;
pub mod admin;
mod demo;
mod keys;
mod package;
pub mod progress;
mod rollout;
mod schedule;
pub mod server;
pub mod sources;
pub mod ssh;
mod table;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "patchcast",
    version,
    about = "Remote patch distribution: author, sign and deliver packages"
)]
pub struct Cli {
    /// Machine-readable JSON output instead of text.
    #[arg(long, global = true, env = "PATCHCAST_JSON")]
    pub json: bool,
    /// HTTP CONNECT proxy to the server, `http://HOST:PORT` (default: HTTPS_PROXY; NO_PROXY
    /// lists hosts reached directly). The proxy only tunnels: the pinned certificate is
    /// still checked.
    #[arg(long, global = true, env = "PATCHCAST_PROXY")]
    pub proxy: Option<String>,
    /// A file holding the proxy's `USER:PASSWORD` (never on the command line).
    #[arg(long, global = true, env = "PATCHCAST_PROXY_CREDENTIALS_FILE")]
    pub proxy_credentials_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `patchcast server` itself (not `server backup` or `restore`).
    pub fn runs_server(&self) -> bool {
        matches!(&self.command, Command::Server(s) if s.action.is_none())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// The endpoint agent, the same program as `patchcast-agent` (enroll, run, doctor,
    /// identify); `agent install` puts it on a Unix host over SSH. `patchcast agent --help`.
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Author, check, build and verify packages.
    #[command(subcommand)]
    Package(package::PackageCmd),
    /// Manage signing keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Print the JSON Schema of a document type (the files in schemas/ are these outputs).
    Schema {
        #[arg(value_enum)]
        document: SchemaDoc,
    },
    /// List the OS ids or languages packages may target.
    Catalog {
        #[arg(value_enum)]
        list: CatalogList,
    },
    /// Show the result codes with their message and remedy (English or Japanese).
    Codes {
        /// One code (E06, W15, …); omitted: all of them.
        code: Option<crate::core::errors::Code>,
        /// `en` or `ja` (default: from LANG).
        #[arg(long, env = "PATCHCAST_LANG")]
        lang: Option<String>,
    },
    /// Run the management server (HTTPS for agents and admins) in the foreground; `server
    /// backup` and `server restore` copy a whole server into one file and back.
    Server(server::ServerCmd),
    /// Enrollment tokens for agents.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Enrolled machines.
    #[command(subcommand)]
    Machine(admin::MachineCmd),
    /// Machine groups (static members and filters by OS, language, IP range, label).
    #[command(subcommand)]
    Group(admin::GroupCmd),
    /// Delivery scenarios: run one, follow its status.
    #[command(subcommand)]
    Scenario(admin::ScenarioCmd),
    /// Single deliveries: retry one that stopped, cancel one that waits.
    #[command(subcommand)]
    Delivery(admin::DeliveryCmd),
    /// Delivery results per machine and per package (--json, --csv, --history).
    Results(admin::ResultsArgs),
    /// Administrators' actions, the newest first: who did what, when (console and CLI alike).
    Audit(admin::AuditArgs),
    /// Load a server with simulated agents speaking the real protocol; prints rates and latencies.
    Loadtest(admin::LoadtestArgs),
    /// Run the end-to-end demonstration (server, agents, scenario).
    Demo(demo::DemoArgs),
    /// Group windows: set policies (windows, blackout dates, holds), show upcoming windows.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Automatic update: packages assigned to groups, delivered in their windows.
    #[command(subcommand)]
    Autoupdate(schedule::AutoupdateCmd),
    /// Staged rollouts: a pilot group, then waves gated by its success rate.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// Web console accounts (`admin add USER` reads the password from the terminal or stdin).
    #[command(subcommand)]
    Admin(accounts::AdminCmd),
    /// Custom update sources: which relays, shares and URLs machines fetch from, by address.
    #[command(subcommand)]
    Sources(sources::SourcesCmd),
    /// Print a shell completion script (`patchcast completions bash > /etc/bash_completion.d/patchcast`).
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Write man pages (patchcast.1 and one per subcommand) into a directory.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, default_value = "man")]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an Ed25519 signing key pair: BASE.key (secret, mode 0600) and BASE.pub.
    Generate {
        /// Path without extension, e.g. keys/release.
        #[arg(long, short)]
        out: std::path::PathBuf,
    },
    /// Replace a publisher key: a trust statement signed by the old key that adds the new
    /// one and revokes the old, published to the server and applied by agents at their poll.
    Rotate(keys::RotateArgs),
    /// Trust more publisher keys (a statement signed by a key trusted now).
    Add(keys::ChangeArgs),
    /// Revoke publisher keys: packages they signed are refused (E18) from then on.
    Revoke(keys::ChangeArgs),
    /// Show the publisher keys the server trusts, and the revoked ones.
    List(keys::ConnectArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SchemaDoc {
    Package,
    Scenario,
    GroupPolicy,
    Rollout,
    Sources,
    /// `patchcast server --config FILE`.
    ServerConfig,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CatalogList {
    Os,
    Languages,
}

pub fn schema(doc: SchemaDoc) -> String {
    let schema = match doc {
        SchemaDoc::Package => schemars::schema_for!(crate::model::raw::RawPackage),
        SchemaDoc::Scenario => schemars::schema_for!(crate::model::scenario::RawScenario),
        SchemaDoc::GroupPolicy => {
            schemars::schema_for!(crate::model::group_policy::RawGroupPolicy)
        }
        SchemaDoc::Rollout => schemars::schema_for!(crate::model::rollout::RawRollout),
        SchemaDoc::Sources => schemars::schema_for!(crate::model::sources::RawSources),
        SchemaDoc::ServerConfig => schemars::schema_for!(server::ServerFile),
    };
    serde_json::to_string_pretty(&schema).expect("a schema serializes") + "\n"
}

/// A usage error found after parsing (two flags clap cannot see together, as the global
/// `--json` and a command's own format): printed as clap prints its own, exit 2.
pub fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// clap value parsers: a flag with a unit is checked where it is parsed, so a wrong one is a
/// usage error (exit 2) that names the flag.
pub fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::model::types::parse_duration(s).map_err(|e| e.0)
}

pub fn size_arg(s: &str) -> Result<u64, String> {
    crate::model::types::parse_size(s).map_err(|e| e.0)
}

pub fn rate_arg(s: &str) -> Result<u64, String> {
    crate::model::types::parse_rate(s).map_err(|e| e.0)
}

/// Ends the process as `cat` ends when its reader goes away: by SIGPIPE, quietly. (SIGPIPE
/// itself stays ignored, so a server closing a connection is an error, never a silent end.)
pub fn end_on_closed_stdout() -> ! {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition and raising it; no memory involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(1)
}

/// A writer whose reader going away ends the process quietly (stdout, written piecewise).
pub struct Quiet<W>(pub W);

impl<W: std::io::Write> std::io::Write for Quiet<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_on_closed_stdout(),
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_on_closed_stdout(),
            r => r,
        }
    }
}

/// Writes to stdout; a reader that went away ends the process quietly.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_on_closed_stdout(),
        r => Ok(r?),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The agent reads its own proxy flags.
    if !matches!(cli.command, Command::Agent { .. }) {
        crate::transport::proxy::configure_from(
            cli.proxy.as_deref(),
            cli.proxy_credentials_file.as_deref(),
        )?;
    }
    match cli.command {
        Command::Package(cmd) => package::run(cmd, cli.json),
        // Reached only when `agent` is not the first argument (`patchcast --json agent …`):
        // the binary's main hands `patchcast agent …` to the agent before parsing.
        Command::Agent { args } => Ok(crate::agent::cli::main_from(
            std::iter::once(std::ffi::OsString::from("patchcast agent")).chain(args),
        )),
        Command::Server(a) => server::run(a, cli.json),
        Command::Token(c) => admin::token(c, cli.json),
        Command::Machine(c) => admin::machine(c, cli.json),
        Command::Group(c) => admin::group(c, cli.json),
        Command::Scenario(c) => admin::scenario(c, cli.json),
        Command::Results(a) => admin::results(a, cli.json),
        Command::Delivery(c) => admin::delivery(c, cli.json),
        Command::Audit(a) => admin::audit(a, cli.json),
        Command::Loadtest(a) => admin::loadtest(a, cli.json),
        Command::Sources(c) => sources::run(c, cli.json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "patchcast", &mut script);
            write_stdout(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out)?;
            clap_mangen::generate_to(Cli::command(), &out)?;
            // The endpoint binary's own pages (enroll, run, doctor, identify), in place of
            // the page of `patchcast agent`, which only passes its arguments on.
            clap_mangen::generate_to(crate::agent::cli::command(), &out)?;
            if !cli.json {
                println!("man pages written to {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(KeyCmd::Generate { out }) => {
            let key = crate::pack::keys::generate()?;
            let (secret, public) = crate::pack::keys::write_pair(&out, &key)?;
            let id = crate::pack::keys::key_id(&key.verifying_key());
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"key_id": id, "secret": secret, "public": public})
                );
            } else {
                println!(
                    "key {id}\n  secret: {} (keep it private; it signs packages)\n  public: {} (give it to servers and agents)",
                    secret.display(),
                    public.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(KeyCmd::Rotate(a)) => keys::rotate(a, cli.json),
        Command::Key(KeyCmd::Add(a)) => keys::add(a, cli.json),
        Command::Key(KeyCmd::Revoke(a)) => keys::revoke(a, cli.json),
        Command::Key(KeyCmd::List(a)) => keys::list(a, cli.json),
        Command::Schema { document } => {
            print!("{}", schema(document));
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog { list } => {
            use crate::model::catalog::{LANGUAGES, OPERATING_SYSTEMS};
            match (list, cli.json) {
                (CatalogList::Os, true) => {
                    println!("{}", serde_json::to_string_pretty(OPERATING_SYSTEMS)?)
                }
                (CatalogList::Os, false) => {
                    println!("{:<32} {:<22} {:<12} NAME", "ID", "PRODUCT LINE", "ARCH");
                    for o in OPERATING_SYSTEMS {
                        println!(
                            "{:<32} {:<22} {:<12} {}",
                            o.id,
                            o.line,
                            o.archs.join(","),
                            o.name
                        );
                    }
                }
                (CatalogList::Languages, true) => {
                    let v: Vec<_> = LANGUAGES
                        .iter()
                        .map(|(c, n)| serde_json::json!({"tag": c, "name": n}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                (CatalogList::Languages, false) => {
                    for (c, n) in LANGUAGES {
                        println!("{c:<8} {n}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Codes { code, lang } => {
            use crate::core::errors::{Code, Lang, Params, render};
            let lang = Lang::from_tag(
                &lang
                    .or_else(|| std::env::var("LANG").ok())
                    .unwrap_or_default(),
            );
            let codes: Vec<Code> = match code {
                Some(c) => vec![c],
                None => crate::core::errors::all().collect(),
            };
            let rendered: Vec<_> = codes
                .iter()
                .map(|c| render(*c, lang, &Params::default()))
                .collect();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rendered)?);
            } else {
                for r in rendered {
                    println!("{} {}\n    remedy: {}", r.code, r.message, r.remedy);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => demo::run(a, cli.json),
        Command::Schedule(c) => schedule::schedule(c, cli.json),
        Command::Autoupdate(c) => schedule::autoupdate(c, cli.json),
        Command::Rollout(c) => rollout::rollout(c, cli.json),
        Command::Admin(c) => accounts::run(c, cli.json),
    }
}

#[cfg(test)]
mod tests {
    /// Every flag of every command, `patchcast-agent`'s too, says what it is for (positional
    /// arguments are named in the usage line).
    #[test]
    fn every_flag_has_help() {
        fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && !a.is_positional() && !a.is_hide_set() && a.get_help().is_none() {
                    out.push(format!("{path} {}", a.get_id()));
                }
            }
            // Hidden commands are the programs' own (the upgrade watchdog), not the user's.
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    out.push(format!("{path} {} (no about)", sub.get_name()));
                }
                missing(sub, &path, out);
            }
        }
        use clap::CommandFactory;
        let mut out = Vec::new();
        missing(&super::Cli::command(), "", &mut out);
        missing(&crate::agent::cli::command(), "", &mut out);
        assert!(out.is_empty(), "without help:\n{}", out.join("\n"));
    }
}
