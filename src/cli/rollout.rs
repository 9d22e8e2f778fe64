//! `patchcast rollout start FILE` and `patchcast rollout status [ID]`: waves and their gates.

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
    /// Waves of one rollout (or of all) and their gates: open, passed, waiting, stopped.
    Status {
        id: Option<String>,
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
