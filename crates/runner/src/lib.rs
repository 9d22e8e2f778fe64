//! The one driver of a delivery. Whoever carries a delivery out — the agent on its own
//! machine, an emulated Windows endpoint, the server's SSH worker on a remote host — runs it
//! here: the runner carries out the current step through a `Target`, hands what the step
//! found to `core::pipeline::next`, and records the decision (the report and the next step)
//! through a `Reporter` in one write. The decisions live in the core; the targets only do I/O.
//!
//! | step | target call | outcome |
//! |---|---|---|
//! | probe | `facts` | identification |
//! | disk | `free_space` | free bytes (3 × the archive, else E06) |
//! | fetch | `fetch` | the archive is on the machine, hash checked |
//! | extract | `extract` | the payload, verified again, and its source |
//! | execute | `payload`, `install` (time limit, process tree) | exit code and output |
//! | verify | `facts` | identification |
//! | reboot wait | `boot_id`, `restart` | verify once the boot changed |
//! | done | `clean` | — |
//!
//! A `kind: agent` package (the agent upgrading itself) runs the same probe, disk, fetch and
//! extract steps; its execute step stages the new binary (`stage_agent`), then the runner
//! swaps it in and restarts the agent into it (`swap_agent`, `restart_agent`), and the new
//! agent's first step is to check in (`check_in`) before its version is verified. Only an
//! agent on its own machine can; every other carrier refuses with E30.
//!
//! Every step starts from the work item's manifest checked against the carrier's trusted
//! publisher keys: probes and installs run commands as root, so nothing runs for an unsigned
//! manifest (E18).

use ed25519_dalek::VerifyingKey;
use patchcast_core::errors::{Code, Params};
pub use patchcast_core::faults::Shell;
use patchcast_core::identify::{Facts, identify};
use patchcast_core::model::package::{Kind, Package};
use patchcast_core::model::template::{TemplateContext, TemplateMachine, render};
use patchcast_core::pipeline::{self, AfterReboot, Decision, Outcome, Refusal, Step};
use patchcast_pack::archive::{self, Verified, VerifyError};
use patchcast_proto::client::CallError;
use patchcast_proto::protocol::{AgentState, Report, Work};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One attempt in progress: the work, the step it is at, and the reports not yet
/// acknowledged. Agents journal it before each step (see `agent::journal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub work: Work,
    pub step: Step,
    /// The `seq` of the next report.
    pub next_seq: u32,
    /// Reports queued but not yet acknowledged, in order.
    #[serde(default)]
    pub outbox: Vec<Report>,
}

impl Entry {
    pub fn new(work: Work) -> Entry {
        Entry {
            work,
            step: Step::Probe,
            next_seq: 1,
            outbox: Vec::new(),
        }
    }

    /// Records a decision: its report (if any) queued with the next `seq`, and its next step
    /// (the caller saves the entry: one write for both).
    pub fn record(&mut self, d: Decision) {
        if let Some((event, detail)) = d.report {
            self.outbox.push(Report {
                delivery_id: self.work.delivery_id.clone(),
                attempt: self.work.attempt,
                seq: self.next_seq,
                event,
                detail,
            });
            self.next_seq += 1;
        }
        self.step = d.next;
    }
}

/// Why a delivery stopped before finishing; the carrier resumes it later (agents from their
/// journal) or leaves it to the server's no-reply rule.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
}

impl Interrupted {
    pub fn call(&self) -> Option<&CallError> {
        match self {
            Interrupted::Call(c) => Some(c),
            Interrupted::Local(_) => None,
        }
    }
}

/// How a target step ended early: a refusal the core turns into a report, or an interruption.
#[derive(Debug)]
pub enum Stop {
    Refused(Box<Refusal>),
    Interrupted(Interrupted),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refused(Box::new(r))
    }
}

impl From<Interrupted> for Stop {
    fn from(i: Interrupted) -> Stop {
        Stop::Interrupted(i)
    }
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Stop {
        Stop::Interrupted(Interrupted::Local(e))
    }
}

impl From<CallError> for Stop {
    fn from(e: CallError) -> Stop {
        Stop::Interrupted(Interrupted::Call(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Finished,
    /// Waiting for a restart (the delivery stays recorded).
    AwaitingReboot,
}

/// What a target did when asked to restart its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The machine is going down; the delivery resumes after the restart.
    Now,
    /// The restart was recorded instead of performed (tests, emulated endpoints).
    Recorded,
    /// This target cannot restart its machine; someone else must.
    Unsupported,
}

/// An install's end: the exit code (None: killed at its time limit) and the output kept.
pub struct Ran {
    pub exit: Option<i32>,
    pub output: String,
}

/// The machine a delivery is carried out on.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// The facts identifying `pkg` needs, gathered on the machine.
    async fn facts(&mut self, pkg: &Package) -> Result<Facts, Stop>;
    /// The machine a command is rendered for.
    fn machine(&self) -> TemplateMachine;
    /// Free bytes where the package will be staged.
    async fn free_space(&mut self) -> Result<u64, Stop>;
    /// Brings the archive onto the machine and checks its hash.
    async fn fetch(&mut self, work: &Work) -> Result<(), Stop>;
    /// Extracts the fetched archive, verified against `signed`; returns where it came from.
    async fn extract(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop>;
    /// The payload directory for an install, verified again first where the machine could
    /// have changed it since the extract (a restart in between).
    async fn payload(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop>;
    /// Stops what is left of an install interrupted by a restart of the carrier.
    fn kill_leftover(&mut self, pgid: i32);
    /// Runs `command` (of the package `signed`) in `payload` within `limit`, killing its whole process tree when it
    /// runs over; `started` gets the process group as soon as it exists.
    async fn install(
        &mut self,
        signed: &Verified,
        command: &str,
        payload: &str,
        limit: Duration,
        started: &mut (dyn FnMut(i32) -> anyhow::Result<()> + Send),
    ) -> Result<Ran, Stop>;
    /// Whether the target runs uninstall commands (the emulated endpoint emulates installers
    /// only, so it refuses an uninstall rather than pretend).
    fn uninstalls(&self) -> bool {
        true
    }
    /// Whether something on the machine runs a staged install at its next start (an agent
    /// does; an SSH host has nobody to do it, so it refuses `when: next_boot`).
    fn runs_at_boot(&self) -> bool {
        true
    }
    /// What runs install commands: `sh -c` unless the target says otherwise (`cmd /C` on
    /// Windows, the emulated installer).
    fn shell(&self) -> Shell {
        Shell::Posix
    }
    /// `kind: agent`: puts the new agent binary `binary` (a file of the verified payload)
    /// beside the running agent and keeps a copy of the running one as its previous binary.
    async fn stage_agent(&mut self, _work: &Work, _binary: &str) -> Result<(), Stop> {
        Err(not_an_agent().into())
    }
    /// `kind: agent`: renames the staged binary over the running agent's (idempotent) and
    /// starts the watchdog that restores the previous one unless the new agent checks in by
    /// the returned deadline (Unix milliseconds), `check_in` from now.
    async fn swap_agent(&mut self, _work: &Work, _check_in: Duration) -> Result<i64, Stop> {
        Err(not_an_agent().into())
    }
    /// `kind: agent`: restarts the agent into its new binary; returns only when that failed,
    /// after restoring the previous binary, with the refusal to report.
    async fn restart_agent(&mut self, _work: &Work) -> Refusal {
        not_an_agent()
    }
    /// `kind: agent`: the agent now running calls the server (its TLS pin and credential) and
    /// claims the upgrade against its watchdog; returns the facts that identify it (its own
    /// version).
    async fn check_in(&mut self, _work: &Work, _pkg: &Package) -> Result<Facts, Stop> {
        Err(not_an_agent().into())
    }
    /// The identity of the current boot: changes with every restart.
    async fn boot_id(&mut self) -> String;
    async fn restart(&mut self, work: &Work) -> Result<Restart, Stop>;
    /// Removes the delivery's files from the machine.
    async fn clean(&mut self, work: &Work) -> Result<(), Stop>;
}

/// Where decisions are recorded and reports go.
#[allow(async_fn_in_trait)]
pub trait Reporter {
    /// Keeps the entry (the agent's journal write; nothing for in-process carriers).
    fn save(&self, entry: &Entry) -> Result<(), Interrupted>;
    /// Sends the queued reports in order, removing each acknowledged one. A report the server
    /// refuses for good may end the delivery (`entry.step = Done`).
    async fn flush(&self, entry: &mut Entry) -> Result<(), Interrupted>;
    /// The delivery is over: forget the entry.
    fn finish(&self, entry: &Entry) -> Result<(), Interrupted>;
    /// Runs beside a long install, telling the server the machine is busy; never returns.
    async fn heartbeat(&self, _state: AgentState) -> std::convert::Infallible {
        std::future::pending().await
    }
}

/// What a carrier that is not an agent on its own machine says to an agent package.
pub fn not_an_agent() -> Refusal {
    Refusal::detail(
        Code::E30,
        "only a patchcast agent can upgrade itself: this machine is not served by its own agent (SSH host or emulated endpoint)",
    )
}

/// The refusal for an archive or manifest that failed verification or extraction.
pub fn archive_refusal(e: &VerifyError) -> Refusal {
    let with_file = |code, path: &String| {
        Refusal::new(
            code,
            Params {
                file: Some(path.clone()),
                detail: Some(e.to_string()),
                ..Params::default()
            },
        )
    };
    match e {
        VerifyError::UnsafeEntry { path, .. } => with_file(Code::E25, path),
        VerifyError::Tampered { path, .. } => with_file(Code::E19, path),
        VerifyError::Truncated(_) => Refusal::detail(Code::E19, e.to_string()),
        VerifyError::Io(_) => Refusal::detail(Code::E12, e.to_string()),
        VerifyError::Structure(_) | VerifyError::BadSignature(_) | VerifyError::UntrustedKey(_) => {
            Refusal::detail(Code::E18, e.to_string())
        }
    }
}

/// Carries the entry forward until the delivery finishes or waits for a restart.
pub async fn run<T: Target, R: Reporter + Sync>(
    target: &mut T,
    reporter: &R,
    entry: &mut Entry,
    keys: &[VerifyingKey],
) -> Result<Progress, Interrupted> {
    loop {
        reporter.flush(entry).await?;
        let id = entry.work.delivery_id.clone();
        tracing::debug!(delivery = %id, step = ?entry.step, "step");
        if entry.step == Step::Done {
            finish(target, entry).await?;
            reporter.finish(entry)?;
            tracing::info!(delivery = %id, "delivery finished");
            return Ok(Progress::Finished);
        }
        let signed = match archive::verify_manifest(
            entry.work.manifest.as_bytes(),
            entry.work.signature.as_bytes(),
            keys,
        ) {
            Ok(v) => v,
            Err(e) => {
                let r = Refusal::new(Code::E18, archive_refusal(&e).params);
                tracing::warn!(delivery = %id, error = %e, "manifest refused");
                entry.record(pipeline::refused(&entry.work.package_id, r));
                reporter.save(entry)?;
                continue;
            }
        };
        if matches!(entry.step, Step::RebootPending { .. }) {
            let boot = target.boot_id().await;
            match pipeline::after_reboot(&entry.step, &boot, signed.package.reboot) {
                AfterReboot::Verify => {
                    tracing::info!(delivery = %id, "restarted since the install; verifying");
                    entry.step = Step::Verify;
                }
                AfterReboot::Restart => match target.restart(&entry.work).await {
                    Ok(Restart::Now) => return Ok(Progress::AwaitingReboot),
                    Ok(Restart::Recorded) => {
                        if let Step::RebootPending { rebooted, .. } = &mut entry.step {
                            *rebooted = true;
                        }
                    }
                    Ok(Restart::Unsupported) => return Ok(Progress::AwaitingReboot),
                    Err(Stop::Interrupted(i)) => return Err(i),
                    Err(Stop::Refused(r)) => {
                        entry.record(pipeline::refused(&entry.work.package_id, *r))
                    }
                },
                AfterReboot::Wait => return Ok(Progress::AwaitingReboot),
            }
            reporter.save(entry)?;
            continue;
        }
        if matches!(entry.step, Step::AwaitBoot { .. }) {
            if !pipeline::boot_came(&entry.step, &target.boot_id().await) {
                return Ok(Progress::AwaitingReboot);
            }
            tracing::info!(delivery = %id, "the machine started again; running the staged install");
            entry.step = Step::Execute { pgid: None };
            reporter.save(entry)?;
        }
        if entry.step == Step::AgentSwap {
            match target
                .swap_agent(&entry.work, signed.package.install.timeout)
                .await
            {
                Ok(deadline_ms) => {
                    // Journaled before the restart: whichever binary starts next finds the
                    // delivery waiting for its check-in.
                    entry.step = Step::AgentCheckIn { deadline_ms };
                    reporter.save(entry)?;
                    tracing::info!(delivery = %id, "agent binary replaced; restarting into it");
                    let r = target.restart_agent(&entry.work).await;
                    tracing::error!(delivery = %id, code = %r.code, detail = ?r.params.detail, "agent restart failed");
                    entry.record(pipeline::refused(&entry.work.package_id, r));
                }
                Err(Stop::Interrupted(i)) => return Err(i),
                Err(Stop::Refused(r)) => {
                    entry.record(pipeline::refused(&entry.work.package_id, *r))
                }
            }
            reporter.save(entry)?;
            continue;
        }
        let step = entry.step.clone();
        let outcome = match carry_out(target, reporter, entry, &signed).await {
            Ok(o) => o,
            Err(Stop::Refused(r)) => {
                tracing::warn!(delivery = %id, code = %r.code, detail = ?r.params.detail, "refused");
                Outcome::Refused(*r)
            }
            Err(Stop::Interrupted(i)) => return Err(i),
        };
        let decision = pipeline::next(
            &step,
            outcome,
            &signed.package,
            entry.work.action,
            entry.work.when.unwrap_or(signed.package.when),
            entry.work.archive_size,
        );
        if let Some((event, _)) = &decision.report {
            tracing::info!(delivery = %id, ?event, next = ?decision.next, "step decided");
        }
        entry.record(decision);
        reporter.save(entry)?;
    }
}

/// Clean-up of a finished delivery: its files go whatever happened.
async fn finish<T: Target>(target: &mut T, entry: &Entry) -> Result<(), Interrupted> {
    match target.clean(&entry.work).await {
        Ok(()) => Ok(()),
        Err(Stop::Interrupted(i)) => Err(i),
        Err(Stop::Refused(r)) => {
            tracing::warn!(delivery = %entry.work.delivery_id, detail = ?r.params.detail, "clean-up failed");
            Ok(())
        }
    }
}

/// The current step, carried out: what it found.
async fn carry_out<T: Target, R: Reporter + Sync>(
    target: &mut T,
    reporter: &R,
    entry: &mut Entry,
    signed: &Verified,
) -> Result<Outcome, Stop> {
    let pkg = &signed.package;
    Ok(match entry.step.clone() {
        Step::Probe => Outcome::Probed(identify(pkg, &target.facts(pkg).await?)),
        Step::Disk => Outcome::FreeSpace(target.free_space().await?),
        Step::Fetch => {
            target.fetch(&entry.work).await?;
            Outcome::Fetched
        }
        Step::Extract => Outcome::Extracted {
            source: target.extract(&entry.work, signed).await?,
        },
        Step::Execute { pgid } => {
            if let Some(pg) = pgid {
                // Killed while installing: stop what is left of that run and start it again
                // from a payload verified again (installers are idempotent).
                tracing::warn!(delivery = %entry.work.delivery_id, pgid = pg, "install was interrupted; running it again");
                target.kill_leftover(pg);
                entry.step = Step::Execute { pgid: None };
                reporter.save(entry)?;
            }
            let action = entry.work.action;
            if pkg.kind == Kind::Agent {
                if !action.is_install() {
                    return Err(pipeline::no_uninstall().into());
                }
                let payload = target.payload(&entry.work, signed).await?;
                let binary = std::path::Path::new(&payload).join(&pkg.payload[0]);
                target
                    .stage_agent(&entry.work, &binary.display().to_string())
                    .await?;
                return Ok(Outcome::AgentStaged);
            }
            let cmd = action.command(pkg).ok_or_else(pipeline::no_uninstall)?;
            if !action.is_install() && !target.uninstalls() {
                return Err(Refusal::detail(
                    Code::E12,
                    "this endpoint cannot run uninstall commands (an emulated endpoint emulates installers only)",
                )
                .into());
            }
            let payload = target.payload(&entry.work, signed).await?;
            let ctx = TemplateContext::new(&signed.manifest.package, &payload, target.machine());
            let command = render(&cmd.template, &ctx).map_err(|e| {
                Refusal::detail(
                    Code::E12,
                    format!("the {action} command cannot be rendered: {e}"),
                )
            })?;
            let limit = entry
                .work
                .timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(cmd.timeout);
            tracing::info!(delivery = %entry.work.delivery_id, %command, timeout = ?limit, "installing");
            let state = AgentState::Busy {
                delivery_id: entry.work.delivery_id.clone(),
                attempt: entry.work.attempt,
            };
            let mut started = |pgid| {
                entry.step = Step::Execute { pgid: Some(pgid) };
                reporter.save(entry).map_err(|e| anyhow::anyhow!("{e}"))
            };
            let ran = tokio::select! {
                r = target.install(signed, &command, &payload, limit, &mut started) => r?,
                never = reporter.heartbeat(state) => match never {},
            };
            Outcome::Ran {
                exit: ran.exit,
                output: format!("$ {command}\n{}", ran.output),
                boot_id: target.boot_id().await,
                shell: target.shell(),
            }
        }
        Step::Stage if !target.runs_at_boot() => {
            return Err(Refusal::detail(
                Code::E12,
                "nothing on this host runs an install at its next start (no agent); deliver it with `when: immediately` or install the agent",
            )
            .into());
        }
        Step::Stage => Outcome::Staged {
            boot_id: target.boot_id().await,
        },
        Step::Verify => Outcome::Verified(identify(pkg, &target.facts(pkg).await?)),
        Step::AgentCheckIn { .. } => {
            Outcome::CheckedIn(identify(pkg, &target.check_in(&entry.work, pkg).await?))
        }
        Step::RebootPending { .. } | Step::AwaitBoot { .. } | Step::AgentSwap | Step::Done => {
            unreachable!("handled by run before carry_out")
        }
    })
}
