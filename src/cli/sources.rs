//! `patchcast sources set|show|test`, `patchcast machine relay`, and publishing to an SMB share.

use super::admin::Connect;
use crate::core::sources::{Fallback, Source, SourceList};
use crate::model::problem::Problem;
use crate::transport::sources::{RelayRole, SourcesTest};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SourcesCmd {
    /// Check a sources.yaml file and make it the server's custom update source list.
    Set {
        file: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print the custom update source list, the fallback switches and the relays.
    Show {
        #[command(flatten)]
        connect: Connect,
    },
    /// Which entry and sources a machine at ADDRESS gets, per kind of content.
    Test {
        address: String,
        #[command(flatten)]
        connect: Connect,
    },
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

fn fallback_text(f: Fallback) -> &'static str {
    match f {
        Fallback::Server => "from the server",
        Fallback::NotAtAll => "not at all",
    }
}

pub fn run(cmd: SourcesCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        SourcesCmd::Set { file, connect } => set(&file, &connect, json),
        SourcesCmd::Show { connect } => {
            let admin = connect.admin()?;
            let (view, relays) = rt()?.block_on(async {
                Ok::<_, anyhow::Error>((admin.sources().await?, admin.relays().await?))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"sources": view, "relays": relays})
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            print_list(&view.list);
            if !relays.is_empty() {
                println!("\nrelays:");
                for r in relays {
                    println!(
                        "  {} ({}) {} listen {} url {} cached {}",
                        r.hostname,
                        r.machine_id,
                        if r.enabled { "enabled" } else { "disabled" },
                        r.listen,
                        r.url.as_deref().unwrap_or("-"),
                        r.cached.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SourcesCmd::Test { address, connect } => {
            let t = rt()?.block_on(connect.admin()?.sources_test(&address))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print_test(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_list(l: &SourceList) {
    let f = &l.fallback;
    println!("when every source of an entry fails:");
    println!("  components:            {}", fallback_text(f.components));
    println!(
        "  domain settings:       {}",
        fallback_text(f.domain_settings)
    );
    println!(
        "  programs and hotfixes: {}",
        fallback_text(f.programs_and_hotfixes)
    );
    if l.entries.is_empty() {
        println!("no custom update sources: every machine uses the server");
        return;
    }
    println!("entries (first match wins):");
    for (i, e) in l.entries.iter().enumerate() {
        let s: Vec<String> = e.sources.iter().map(Source::to_string).collect();
        println!("  {i:>4}  {:<34} {}", e.range.to_string(), s.join(" -> "));
    }
}

fn print_test(t: &SourcesTest) {
    let Some(first) = t.plans.first() else {
        return;
    };
    match first.plan.entry {
        None => {
            println!(
                "{}: no entry matches; the machine fetches from the server",
                t.address
            );
            return;
        }
        Some(i) => println!("{}: entry {i}", t.address),
    }
    for p in &t.plans {
        let s: Vec<String> = p.plan.sources.iter().map(Source::to_string).collect();
        let tail = if p.plan.fallback_to_server {
            " -> server (fallback)"
        } else if p.plan.sources.contains(&Source::Server) {
            ""
        } else {
            " -> stop (E27)"
        };
        println!(
            "  {:<24} {}{tail}",
            format!("{:?}", p.category),
            s.join(" -> ")
        );
    }
}

fn set(file: &Path, connect: &Connect, json: bool) -> Result<ExitCode> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {name}"))?;
    let list = match crate::model::sources::load(&name, &text) {
        Ok(l) => l,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("error: {name}: not applied: fix the problems above");
            return Ok(ExitCode::FAILURE);
        }
    };
    match rt()?.block_on(connect.admin()?.set_sources(&list))? {
        Ok(view) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "custom update source list set: {} entr{}",
                    view.list.entries.len(),
                    if view.list.entries.len() == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refused) => {
            let positions = crate::model::sources::positions(&text).unwrap_or_default();
            let problems: Vec<Problem> = refused
                .problems
                .iter()
                .map(|p| {
                    Problem::error(
                        "sources-address",
                        p.path.clone(),
                        p.message.clone(),
                        "fix the entry or the source, then run `patchcast sources set` again",
                    )
                })
                .collect();
            for l in crate::model::yaml::place(&name, &positions, problems) {
                eprintln!("{l}");
            }
            eprintln!("error: {name}: {}", refused.error);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `patchcast machine relay M --enable|--disable [--listen ADDR:PORT]`.
pub fn relay(
    machine: &str,
    enable: bool,
    disable: bool,
    listen: Option<String>,
    connect: &Connect,
    json: bool,
) -> Result<ExitCode> {
    if enable == disable {
        bail!("say --enable or --disable");
    }
    let v = rt()?.block_on(connect.admin()?.relay_role(
        machine,
        &RelayRole {
            enabled: enable,
            listen,
        },
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.enabled {
        println!(
            "{} ({}) has the relay role, listening on {} (it starts at its next poll)",
            v.hostname, v.machine_id, v.listen
        );
    } else {
        println!("{} ({}) no longer relays", v.hostname, v.machine_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a built archive to `smb://…` as `<sha256>.pcpkg`; returns the name written.
pub fn publish_to_share(archive: &Path, url: &str, credentials: Option<&Path>) -> Result<String> {
    let share = crate::smb::ShareUrl::parse(url)?;
    let creds = crate::smb::Credentials::load(credentials)?;
    let (sha, size) = crate::pack::hash::sha256_file(archive)
        .with_context(|| format!("hashing {}", archive.display()))?;
    let name = crate::smb::content_name(&sha);
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(format!("copying {size} bytes to {share}/{name}"));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let r = rt()?.block_on(async {
        let conn = crate::smb::Share::connect(&share, &creds).await?;
        let r = conn.upload(archive, &name).await;
        conn.close().await;
        r
    });
    pb.finish_and_clear();
    let written = r?;
    if written != size {
        bail!("{share}/{name}: wrote {written} of {size} bytes");
    }
    Ok(format!("{share}/{name}"))
}
