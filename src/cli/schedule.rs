//! `patchcast schedule` (group windows: set a policy, show upcoming openings) and
//! `patchcast autoupdate` (packages assigned to groups). Parsing and printing only.

use super::admin::Connect;
use crate::model::group_policy;
use crate::transport::schedule_api::{Assign, ClockChange, GroupSchedule};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Set group policies from files (`groups/*.yaml`: windows, blackout dates, spread, holds).
    Set {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Check policy files without a server (every problem with file:line:column).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Upcoming auto-update windows per group, in each window's time zone.
    Show {
        /// Only this group (default: every group with a policy).
        #[arg(long)]
        group: Option<String>,
        /// Openings listed per group.
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[command(flatten)]
        connect: Connect,
    },
    /// Read, set or advance a server's test clock (only a server started with --test-clock).
    #[command(hide = true)]
    Clock {
        /// RFC 3339 time, e.g. 2026-11-21T02:00:00Z.
        #[arg(long)]
        set: Option<String>,
        /// A duration, e.g. 3h.
        #[arg(long)]
        advance: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
pub enum AutoupdateCmd {
    /// Deliver PACKAGE to every machine of GROUP that needs it, in the group's windows.
    Assign {
        package: String,
        /// The group whose machines receive it.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Stop delivering PACKAGE to GROUP automatically (deliveries in flight finish).
    Unassign {
        package: String,
        /// The group whose machines receive it.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Packages assigned to groups.
    List {
        #[command(flatten)]
        connect: Connect,
    },
}

pub(super) fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn load_policies(files: &[PathBuf]) -> Result<Option<Vec<group_policy::GroupPolicy>>> {
    let mut out = Vec::new();
    let mut failed = false;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        match group_policy::load(&f.display().to_string(), &text) {
            Ok(p) => out.push(p),
            Err(problems) => {
                failed = true;
                for p in problems {
                    eprintln!("{p}");
                }
            }
        }
    }
    Ok((!failed).then_some(out))
}

fn local(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn print_schedule(groups: &[GroupSchedule]) {
    for g in groups {
        println!(
            "group {}  (spread {}s{}{})",
            g.group,
            g.check_in_spread_secs,
            if g.run_missed_at_start {
                ", missed windows run at start"
            } else {
                ""
            },
            if g.hold.is_empty() {
                String::new()
            } else {
                format!(
                    ", held: {}",
                    g.hold
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
        );
        if !g.auto_update.is_empty() {
            println!("  automatic update: {}", g.auto_update.join(", "));
        }
        if !g.blackout_dates.is_empty() {
            println!("  blackout: {}", g.blackout_dates.join(", "));
        }
        if g.openings.is_empty() {
            println!("  no windows: scheduled work may start at any time");
        }
        for o in &g.openings {
            println!(
                "  {} {} → {}  ({}, {}){}",
                if o.open_now { "*" } else { " " },
                o.start_local,
                o.end_local,
                o.time_zone,
                o.cron,
                if o.open_now { "  open now" } else { "" }
            );
        }
    }
}

pub fn schedule(cmd: ScheduleCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        ScheduleCmd::Check { files } => {
            let Some(ps) = load_policies(&files)? else {
                return Ok(ExitCode::FAILURE);
            };
            if json {
                print_json(&ps)?;
            } else {
                for p in ps {
                    println!("{}: ok ({} window(s))", p.group, p.windows.len());
                }
            }
        }
        ScheduleCmd::Set { files, connect } => {
            let Some(ps) = load_policies(&files)? else {
                return Ok(ExitCode::FAILURE);
            };
            let admin = connect.admin()?;
            let rt = rt()?;
            let mut results = Vec::new();
            for p in &ps {
                results.push(rt.block_on(admin.set_policy(p))?);
            }
            if json {
                print_json(&results)?;
            } else {
                for r in &results {
                    println!(
                        "group {}: policy version {} for {} machine(s)",
                        r.group,
                        r.version,
                        r.machines.len()
                    );
                    if r.machines.is_empty() {
                        eprintln!(
                            "note: no machine is in group {} yet; check the name with `patchcast group list` (the policy applies as machines join)",
                            r.group
                        );
                    }
                    for m in &r.machines {
                        match m.code {
                            Some(c) => println!(
                                "  {:<24} {c}: {}",
                                m.hostname,
                                crate::core::errors::render(
                                    c,
                                    crate::core::errors::Lang::En,
                                    &Default::default()
                                )
                                .message
                            ),
                            None => println!("  {:<24} sent at its next poll", m.hostname),
                        }
                    }
                }
            }
        }
        ScheduleCmd::Show {
            group,
            count,
            connect,
        } => {
            let s = rt()?.block_on(connect.admin()?.schedule(group.as_deref(), count))?;
            if json {
                print_json(&s)?;
            } else {
                if let Some(g) = s.first() {
                    println!("server time {}", local(g.now_ms));
                }
                print_schedule(&s);
            }
        }
        ScheduleCmd::Clock {
            set,
            advance,
            connect,
        } => {
            let mut c = ClockChange::default();
            if let Some(t) = set {
                c.set_ms = Some(
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .with_context(|| format!("--set {t}: write e.g. 2026-11-21T02:00:00Z"))?
                        .timestamp_millis(),
                );
            }
            if let Some(d) = advance {
                c.advance_ms = Some(
                    crate::model::types::parse_duration(&d)
                        .map_err(|e| anyhow::anyhow!("--advance: {}", e.0))?
                        .as_millis() as i64,
                );
            }
            let r = rt()?.block_on(connect.admin()?.clock(&c))?;
            if json {
                print_json(&r)?;
            } else {
                println!("server time {}", local(r.now_ms));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn autoupdate(cmd: AutoupdateCmd, json: bool) -> Result<ExitCode> {
    let (connect, req) = match cmd {
        AutoupdateCmd::Assign {
            package,
            group,
            connect,
        } => (
            connect,
            Some(Assign {
                group,
                package_id: package,
                assign: true,
            }),
        ),
        AutoupdateCmd::Unassign {
            package,
            group,
            connect,
        } => (
            connect,
            Some(Assign {
                group,
                package_id: package,
                assign: false,
            }),
        ),
        AutoupdateCmd::List { connect } => (connect, None),
    };
    let admin = connect.admin()?;
    let list = rt()?.block_on(async {
        match &req {
            Some(a) => admin.assign(a).await,
            None => admin.assignments().await,
        }
    });
    let list = match list {
        Ok(l) => l,
        Err(e) => bail!("{e}"),
    };
    if json {
        print_json(&list)?;
    } else {
        println!("{:<24} PACKAGE", "GROUP");
        for a in &list {
            println!("{:<24} {}", a.group, a.package_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
