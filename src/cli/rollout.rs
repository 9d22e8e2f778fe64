//! `patchcast rollout start FILE`, `patchcast rollout status [ID]` (waves and their gates) and
//! `patchcast rollout pause|resume|abort ID`.

use super::admin::Connect;
use super::schedule::{print_json, rt};
use crate::transport::schedule_api::RolloutStatus;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Start a rollout (`rollouts/*.yaml`): the pilot group first, then each wave.
    Start {
        file: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// Waves of one rollout (or of all) and their gates: open, passed, waiting, paused,
    /// stopped, aborted.
    Status {
        id: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Hold a running rollout: none of its deliveries starts and no wave opens until resumed
    /// (work already on a machine finishes).
    Pause {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Let a paused rollout go on.
    Resume {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// End a running or paused rollout for good: its waiting deliveries are cancelled.
    Abort {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
}

fn pct(permille: u32) -> String {
    format!("{:.1}%", permille as f64 / 10.0)
}

fn print(r: &RolloutStatus) {
    println!(
        "rollout {} ({}): {}{}  [success ≥ {}, stop when failures > {}]",
        r.id,
        r.name,
        r.state,
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        },
        pct(r.success_threshold_permille),
        pct(r.failure_limit_permille)
    );
    println!(
        "  {:<4} {:<20} {:<8} {:>6} {:>8} {:>7} {:>7} {:>9}  WHY",
        "WAVE", "GROUP", "GATE", "TOTAL", "APPLIED", "N/A", "FAILED", "APPLIED%"
    );
    for w in &r.waves {
        println!(
            "  {:<4} {:<20} {:<8} {:>6} {:>8} {:>7} {:>7} {:>9}  {}",
            if w.index == 0 {
                "pilot".to_string()
            } else {
                w.index.to_string()
            },
            w.group,
            w.gate,
            w.total,
            w.applied,
            w.not_applicable,
            w.failed,
            pct(w.applied_permille),
            w.why
        );
    }
}

fn verb(id: &str, verb: &str, connect: &Connect, json: bool) -> Result<()> {
    let d = rt()?.block_on(connect.admin()?.rollout_action(id, verb))?;
    super::admin::print_done(&d, json)
}

pub fn rollout(cmd: RolloutCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        RolloutCmd::Start { file, connect } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = match crate::model::rollout::load(&file.display().to_string(), &text) {
                Ok(r) => r,
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            let st = rt()?.block_on(connect.admin()?.start_rollout(&r))?;
            if json {
                print_json(&st)?;
            } else {
                println!("{}", st.id);
                eprintln!(
                    "rollout {} started with pilot group {}; follow it with `patchcast rollout status {}`",
                    st.name, st.waves[0].group, st.id
                );
            }
        }
        RolloutCmd::Pause { id, connect } => verb(&id, "pause", &connect, json)?,
        RolloutCmd::Resume { id, connect } => verb(&id, "resume", &connect, json)?,
        RolloutCmd::Abort { id, connect } => verb(&id, "abort", &connect, json)?,
        RolloutCmd::Status { id, connect } => {
            let admin = connect.admin()?;
            let list = rt()?.block_on(async {
                match &id {
                    Some(id) => admin.rollout(id).await.map(|r| vec![r]),
                    None => admin.rollouts().await,
                }
            })?;
            if json {
                if id.is_some() {
                    print_json(&list[0])?;
                } else {
                    print_json(&list)?;
                }
            } else {
                if list.is_empty() {
                    println!(
                        "no rollouts; start one with `patchcast rollout start rollouts/NAME.yaml`"
                    );
                }
                for r in &list {
                    print(r);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
