//! `patchcast-agent`: the endpoint agent service.

use clap::{Parser, Subcommand};
use patchcast::core::identify::{identify, queries};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "patchcast-agent", version, about = "patchcast endpoint agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe this machine: is the package in DIR (a package directory) applied here?
    /// Prints the verdict and every rule's outcome as JSON; reads only, changes nothing.
    Identify { dir: PathBuf },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Identify { dir } => {
            let report = patchcast::pack::lint::lint_dir(&dir);
            let Some(pkg) = report.package else {
                for p in &report.problems {
                    eprintln!("{p}");
                }
                eprintln!("error: {} is not a valid package", dir.display());
                return ExitCode::from(2);
            };
            let mut facts = patchcast::agent::facts::machine();
            patchcast::agent::facts::gather(&mut facts, &queries(&pkg));
            let id = identify(&pkg, &facts);
            println!(
                "{}",
                serde_json::json!({"machine": {"os": facts.os, "arch": facts.arch, "language": facts.language}, "identification": id})
            );
            ExitCode::SUCCESS
        }
    }
}
