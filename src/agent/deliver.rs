//! One delivery, step by step: verify the signed manifest, probe, check disk, fetch, extract,
//! execute, verify, clean. Each step is journaled before it starts and its report is queued in
//! the same journal write that moves to the next step (see `journal`), so a kill at any moment
//! resumes here with no step lost and no report sent twice.

use super::config::Root;
use super::emulated::Endpoint;
use super::exec::{self, Exit};
use super::fetch::{self, Fetched};
use super::journal::{Entry, Journal, Step};
use crate::core::delivery::{Event, Execution};
use crate::core::errors::{Code, Params};
use crate::core::identify::{Facts, Identification, Verdict, identify, queries};
use crate::model::package::{Package, RebootPolicy};
use crate::model::template::{TemplateContext, TemplateMachine, render};
use crate::pack::archive::{self, Verified, VerifyError};
use crate::transport::client::{CallError, Client};
use crate::transport::protocol::{AgentState, Detail, Poll, PollResponse, Report};
use ed25519_dalek::VerifyingKey;
use std::path::PathBuf;
use std::time::Duration;

/// How often a running install is announced to the server.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Why a delivery stopped before finishing; it is resumed from the journal later.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0}")]
    Fetch(#[from] fetch::FetchError),
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
}

impl Interrupted {
    pub fn call(&self) -> Option<&CallError> {
        match self {
            Interrupted::Call(c) => Some(c),
            Interrupted::Fetch(fetch::FetchError::Call(c)) => Some(c),
            _ => None,
        }
    }
}

/// Why the agent will not go on with a delivery: the code and what its message names.
type Refusal = Box<(Code, Params)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Finished,
    /// Waiting for a restart (the delivery stays journaled).
    AwaitingReboot,
}

/// Everything a delivery needs from the running agent.
pub struct Agent {
    pub root: Root,
    pub client: Client,
    pub keys: Vec<VerifyingKey>,
    pub endpoint: Option<Endpoint>,
    pub journal: Journal,
    pub allow_real_reboot: bool,
    /// Set after an install so the next inventory reads the package list again.
    pub installed_something: bool,
    /// How often a running install is announced (`HEARTBEAT`; tests shorten it).
    pub heartbeat: Duration,
}

fn report(entry: &Entry, event: Event, detail: Detail) -> Report {
    Report {
        delivery_id: entry.work.delivery_id.clone(),
        attempt: entry.work.attempt,
        seq: 0,
        event,
        detail,
    }
}

fn refused(entry: &Entry, code: Code, params: Params) -> Report {
    let params = Params {
        package: Some(entry.work.package_id.clone()),
        ..params
    };
    report(
        entry,
        Event::Refused { code },
        Detail {
            code: Some(code),
            params,
            ..Detail::default()
        },
    )
}

fn detail_text(s: impl Into<String>) -> Params {
    Params {
        detail: Some(s.into()),
        ..Params::default()
    }
}

/// The identity of the current boot: changes with every restart.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| sysinfo::System::boot_time().unwrap_or(0).to_string())
}

/// The catalog code for an archive that failed verification or extraction.
fn archive_code(e: &VerifyError) -> (Code, Params) {
    match e {
        VerifyError::UnsafeEntry { path, .. } => (
            Code::E25,
            Params {
                file: Some(path.clone()),
                detail: Some(e.to_string()),
                ..Params::default()
            },
        ),
        VerifyError::Tampered { path, .. } => (
            Code::E19,
            Params {
                file: Some(path.clone()),
                detail: Some(e.to_string()),
                ..Params::default()
            },
        ),
        VerifyError::Truncated(_) => (Code::E19, detail_text(e.to_string())),
        VerifyError::Io(_) => (Code::E12, detail_text(e.to_string())),
        VerifyError::Structure(_) | VerifyError::BadSignature(_) | VerifyError::UntrustedKey(_) => {
            (Code::E18, detail_text(e.to_string()))
        }
    }
}

impl Agent {
    fn work_dir(&self, entry: &Entry) -> PathBuf {
        self.root.work(&entry.work.delivery_id)
    }

    /// The work item's manifest, checked against the publisher keys pinned at enrollment.
    fn signed_manifest(&self, entry: &Entry) -> Result<Verified, VerifyError> {
        archive::verify_manifest(
            entry.work.manifest.as_bytes(),
            entry.work.signature.as_bytes(),
            &self.keys,
        )
    }

    async fn identify(&self, pkg: &Package) -> Result<Identification, Interrupted> {
        let facts = match &self.endpoint {
            Some(e) => {
                let mut f = e.machine();
                e.gather(&mut f, &queries(pkg));
                f
            }
            None => {
                let pkg = pkg.clone();
                // Probes may take a while; keep the runtime free while they run.
                tokio::task::spawn_blocking(move || {
                    let mut f: Facts = super::facts::machine();
                    super::facts::gather(&mut f, &queries(&pkg));
                    f
                })
                .await
                .map_err(|e| anyhow::anyhow!("gathering facts failed: {e}"))?
            }
        };
        Ok(identify(pkg, &facts))
    }

    /// Sends the queued reports in order; each acknowledged one leaves the journal.
    async fn flush(&self, entry: &mut Entry) -> Result<(), Interrupted> {
        while let Some(r) = entry.outbox.first().cloned() {
            match self.client.report(&r).await {
                Ok(ack) => {
                    tracing::info!(delivery = %r.delivery_id, seq = r.seq, applied = ack.applied, "report acknowledged");
                    let reboot_asked = matches!(
                        r.event,
                        Event::Executed {
                            execution: Execution::RebootRequired { .. }
                        }
                    );
                    if reboot_asked
                        && ack.reboot
                        && let Step::RebootPending {
                            reboot_requested, ..
                        } = &mut entry.step
                    {
                        *reboot_requested = true;
                    }
                    entry.outbox.remove(0);
                    self.journal.save(entry)?;
                }
                // The server refuses this report for good (it no longer fits the delivery):
                // resending it forever would block every later delivery.
                Err(CallError::Status { status, body, .. })
                    if (400..500).contains(&status) && ![401, 408, 429].contains(&status) =>
                {
                    tracing::warn!(delivery = %r.delivery_id, seq = r.seq, status, error = %body.error, "report refused by the server; dropped");
                    entry.outbox.remove(0);
                    self.journal.save(entry)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn step(&self, entry: &mut Entry, step: Step) -> Result<(), Interrupted> {
        entry.step = step;
        self.journal.save(entry)?;
        Ok(())
    }

    /// Reports `code` and ends the delivery: nothing after a refusal runs.
    fn refuse(&self, entry: &mut Entry, code: Code, params: Params) -> Result<(), Interrupted> {
        let r = refused(entry, code, params);
        self.queue(entry, r, Step::Done)
    }

    /// The work's manifest when a pinned publisher key signed it; otherwise refuses with E18.
    fn signed_or_refuse(&self, entry: &mut Entry) -> Result<Option<Verified>, Interrupted> {
        match self.signed_manifest(entry) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                let (_, params) = archive_code(&e);
                self.refuse(entry, Code::E18, params)?;
                Ok(None)
            }
        }
    }

    fn queue(&self, entry: &mut Entry, r: Report, next: Step) -> Result<(), Interrupted> {
        entry.queue(r, next);
        self.journal.save(entry)?;
        Ok(())
    }

    /// Extracts (and so verifies again) the fetched archive into a fresh payload directory.
    fn extract(&self, entry: &Entry) -> Result<Verified, Refusal> {
        let dir = self.work_dir(entry);
        let payload = dir.join("payload");
        if payload.exists() {
            std::fs::remove_dir_all(&payload).map_err(|e| {
                Box::new((
                    Code::E12,
                    detail_text(format!("removing {}: {e}", payload.display())),
                ))
            })?;
        }
        let path = fetch::archive_path(&dir);
        let file = std::fs::File::open(&path).map_err(|e| {
            Box::new((
                Code::E12,
                detail_text(format!("opening {}: {e}", path.display())),
            ))
        })?;
        let v = archive::extract(
            std::io::BufReader::with_capacity(1 << 16, file),
            &self.keys,
            &payload,
        )
        .map_err(|e| Box::new(archive_code(&e)))?;
        let expected = crate::pack::hash::sha256_bytes(entry.work.manifest.as_bytes());
        if v.manifest_sha256 != expected {
            return Err(Box::new((
                Code::E18,
                detail_text("the archive's signed manifest is not the one in the work item"),
            )));
        }
        Ok(v)
    }

    fn machine(&self) -> TemplateMachine {
        match &self.endpoint {
            Some(e) => TemplateMachine {
                os: e.profile.os.clone(),
                arch: e.profile.arch.clone(),
                language: e.profile.language.clone(),
                hostname: e.profile.hostname.clone(),
            },
            None => {
                let m = super::facts::machine();
                TemplateMachine {
                    os: m.os,
                    arch: m.arch,
                    language: m.language,
                    hostname: sysinfo::System::host_name().unwrap_or_default(),
                }
            }
        }
    }

    /// Carries the journaled delivery forward until it finishes or waits for a restart.
    pub async fn deliver(&mut self, entry: &mut Entry) -> Result<Progress, Interrupted> {
        loop {
            self.flush(entry).await?;
            let id = entry.work.delivery_id.clone();
            tracing::debug!(delivery = %id, step = ?entry.step, "step");
            match entry.step.clone() {
                Step::Probe => {
                    // Probes run commands as root: only a manifest signed by a pinned key is probed.
                    let Some(v) = self.signed_or_refuse(entry)? else {
                        continue;
                    };
                    let ident = self.identify(&v.package).await?;
                    let next = if crate::core::outcome::needs_install(&ident.verdict) {
                        Step::Disk
                    } else {
                        Step::Done
                    };
                    tracing::info!(delivery = %id, verdict = ?ident.verdict, "probed");
                    let r = report(
                        entry,
                        Event::Probed {
                            verdict: ident.verdict,
                        },
                        Detail {
                            explanation: ident.explanation,
                            ..Detail::default()
                        },
                    );
                    self.queue(entry, r, next)?;
                }
                Step::Disk => {
                    let required = crate::core::outcome::required_disk(entry.work.archive_size);
                    let free = match &self.endpoint {
                        Some(e) => e.profile.free_disk_bytes,
                        None => super::inventory::disk_of(&self.root.0).1,
                    };
                    if free < required {
                        tracing::warn!(delivery = %id, free, required, "not enough disk space");
                        let params = Params {
                            free_bytes: Some(free),
                            required_bytes: Some(required),
                            ..Params::default()
                        };
                        self.refuse(entry, Code::E06, params)?;
                    } else {
                        self.step(entry, Step::Fetch)?;
                    }
                }
                Step::Fetch => {
                    let dir = self.work_dir(entry);
                    let got = super::sources::fetch(
                        &self.client,
                        &self.root.0,
                        entry.work.sources.as_ref(),
                        &entry.work.archive_sha256,
                        entry.work.archive_size,
                        &dir,
                    )
                    .await;
                    match got {
                        Ok(Fetched::Complete(_)) => self.step(entry, Step::Extract)?,
                        Ok(Fetched::Mismatch { got }) => {
                            let params = Params {
                                file: Some(format!(
                                    "{}/archive.part ({})",
                                    dir.display(),
                                    entry.work.archive_sha256
                                )),
                                detail: Some(format!(
                                    "the downloaded archive hashes to {got}, not {}; it was deleted",
                                    entry.work.archive_sha256
                                )),
                                ..Params::default()
                            };
                            self.refuse(entry, Code::E19, params)?;
                        }
                        Ok(Fetched::Refused(why)) => {
                            self.refuse(entry, Code::E11, detail_text(why))?;
                        }
                        Ok(Fetched::Exhausted(tried)) => {
                            tracing::error!(delivery = %id, ?tried, "no update source could provide the archive and the server fallback is off");
                            self.refuse(entry, Code::E27, detail_text(tried.join("; ")))?;
                        }
                        Err(fetch::FetchError::Disk { path, err }) => {
                            let params = Params {
                                file: Some(path),
                                detail: Some(err.to_string()),
                                ..Params::default()
                            };
                            self.refuse(entry, Code::E06, params)?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Step::Extract => match self.extract(entry) {
                    Ok(_) => {
                        let r = report(
                            entry,
                            Event::Transferred,
                            Detail {
                                source: Some(
                                    std::fs::read_to_string(super::sources::source_path(
                                        &self.work_dir(entry),
                                    ))
                                    .unwrap_or_else(|_| self.client.base().to_string()),
                                ),
                                ..Detail::default()
                            },
                        );
                        self.queue(entry, r, Step::Execute { pgid: None })?;
                    }
                    Err(refusal) => {
                        let (code, params) = *refusal;
                        tracing::error!(delivery = %id, ?code, detail = ?params.detail, "archive refused");
                        self.refuse(entry, code, params)?;
                    }
                },
                Step::Execute { pgid } => {
                    let v = if let Some(pg) = pgid {
                        // Killed while installing: stop what is left of that run and start it
                        // again from a payload verified again (installers are idempotent).
                        tracing::warn!(delivery = %id, pgid = pg, "install was interrupted; running it again");
                        exec::kill_group(pg);
                        self.step(entry, Step::Execute { pgid: None })?;
                        self.extract(entry)
                    } else {
                        self.extract_or_existing(entry)
                    };
                    let v = match v {
                        Ok(v) => v,
                        Err(refusal) => {
                            let (code, params) = *refusal;
                            self.refuse(entry, code, params)?;
                            continue;
                        }
                    };
                    self.execute(entry, &v).await?;
                }
                Step::Verify => {
                    let Some(v) = self.signed_or_refuse(entry)? else {
                        continue;
                    };
                    let ident = self.identify(&v.package).await?;
                    let failing_rule = match ident.verdict {
                        Verdict::Applied => None,
                        _ => ident.failing_check().map(|c| c.check.clone()),
                    };
                    tracing::info!(delivery = %id, verdict = ?ident.verdict, "verified");
                    let r = report(
                        entry,
                        Event::Verified {
                            verdict: ident.verdict,
                            failing_rule,
                        },
                        Detail {
                            explanation: ident.explanation,
                            ..Detail::default()
                        },
                    );
                    self.queue(entry, r, Step::Done)?;
                }
                Step::RebootPending {
                    boot_id: installed_in,
                    reboot_requested,
                    rebooted,
                } => {
                    if rebooted || boot_id() != installed_in {
                        tracing::info!(delivery = %id, "restarted since the install; verifying");
                        self.step(entry, Step::Verify)?;
                        continue;
                    }
                    let never = self
                        .signed_manifest(entry)
                        .map(|v| v.package.reboot == RebootPolicy::Never)
                        .unwrap_or(true);
                    if reboot_requested && !never {
                        if self.allow_real_reboot {
                            tracing::warn!(delivery = %id, "restarting the machine as the server allowed");
                            reboot_machine()?;
                            return Ok(Progress::AwaitingReboot);
                        }
                        self.record_reboot(entry)?;
                        if let Step::RebootPending { rebooted, .. } = &mut entry.step {
                            *rebooted = true;
                        }
                        self.journal.save(entry)?;
                        continue;
                    }
                    return Ok(Progress::AwaitingReboot);
                }
                Step::Done => {
                    let dir = self.work_dir(entry);
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir)
                            .map_err(|e| anyhow::anyhow!("cleaning {}: {e}", dir.display()))?;
                    }
                    self.journal.finish(entry)?;
                    tracing::info!(delivery = %id, "delivery finished");
                    return Ok(Progress::Finished);
                }
            }
        }
    }

    /// The payload extracted by the Extract step, or extracted again if it is gone.
    fn extract_or_existing(&self, entry: &Entry) -> Result<Verified, Refusal> {
        let payload = self.work_dir(entry).join("payload");
        if payload.is_dir() {
            return self
                .signed_manifest(entry)
                .map_err(|e| Box::new((Code::E18, archive_code(&e).1)));
        }
        self.extract(entry)
    }

    async fn execute(&mut self, entry: &mut Entry, v: &Verified) -> Result<(), Interrupted> {
        let payload = self.work_dir(entry).join("payload");
        let pkg = &v.package;
        let ctx = TemplateContext::new(
            &v.manifest.package,
            &payload.display().to_string(),
            self.machine(),
        );
        let command = match render(&pkg.install.template, &ctx) {
            Ok(c) => c,
            Err(e) => {
                let r = refused(
                    entry,
                    Code::E12,
                    detail_text(format!("the install command cannot be rendered: {e}")),
                );
                return self.queue(entry, r, Step::Done);
            }
        };
        let limit = entry
            .work
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(pkg.install.timeout);
        tracing::info!(delivery = %entry.work.delivery_id, %command, timeout = ?limit, "installing");
        let outcome = match &mut self.endpoint {
            Some(endpoint) => {
                let (code, out) = endpoint.install(pkg, &payload)?;
                exec::Outcome {
                    exit: Exit::Code(code),
                    output_tail: format!("$ {command}\n{out}"),
                }
            }
            None => {
                let journal = &self.journal;
                let state = AgentState::Busy {
                    delivery_id: entry.work.delivery_id.clone(),
                    attempt: entry.work.attempt,
                };
                let run = exec::run(&command, &payload, limit, |pgid| {
                    entry.step = Step::Execute { pgid: Some(pgid) };
                    journal.save(entry)
                });
                tokio::select! {
                    r = run => r?,
                    never = heartbeat(&self.client, journal, state, self.heartbeat) => match never {},
                }
            }
        };
        self.installed_something = true;
        let exit_code = match outcome.exit {
            Exit::Code(c) => Some(c),
            Exit::TimedOut => None,
        };
        let execution = crate::core::outcome::execution(pkg, exit_code);
        tracing::info!(delivery = %entry.work.delivery_id, ?execution, "install finished");
        let next = match execution {
            Execution::Succeeded { .. } => Step::Verify,
            Execution::RebootRequired { .. } => Step::RebootPending {
                boot_id: boot_id(),
                reboot_requested: false,
                rebooted: false,
            },
            Execution::Failed { .. } | Execution::TimedOut => Step::Done,
        };
        let code = crate::core::outcome::execution_code(&execution);
        let r = report(
            entry,
            Event::Executed { execution },
            Detail {
                code,
                params: Params {
                    package: Some(entry.work.package_id.clone()),
                    exit_code,
                    ..Params::default()
                },
                exit_code,
                output_tail: Some(outcome.output_tail),
                ..Detail::default()
            },
        );
        self.queue(entry, r, next)
    }

    /// In tests (and unless real restarts are allowed) a restart is recorded, not performed.
    fn record_reboot(&self, entry: &Entry) -> Result<(), Interrupted> {
        use std::io::Write;
        let path = self.root.reboots_log();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = format!(
            "{now} reboot recorded for delivery {} attempt {} (package {})\n",
            entry.work.delivery_id, entry.work.attempt, entry.work.package_id
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        tracing::warn!(delivery = %entry.work.delivery_id, log = %path.display(), "reboot recorded (not performed)");
        Ok(())
    }
}

/// While an install runs, tells the server every `every` that this machine is busy with
/// it, so a long install is not taken for a lost agent. Work offered meanwhile is journaled
/// and carried out after this delivery (one at a time).
async fn heartbeat(
    client: &Client,
    journal: &Journal,
    state: AgentState,
    every: Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        let poll = Poll {
            state: state.clone(),
            wait_ms: 0,
            ..Poll::default()
        };
        match client.poll(&poll).await {
            Ok(PollResponse { work: Some(w), .. }) => {
                // Never replace the journal entry of the install that is running.
                if let AgentState::Busy { delivery_id, .. } = &state
                    && *delivery_id == w.delivery_id
                {
                    continue;
                }
                if let Err(e) = super::service::accept(journal, w) {
                    tracing::warn!(error = %e, "could not journal work offered during an install");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

fn reboot_machine() -> anyhow::Result<()> {
    #[cfg(unix)]
    let status = std::process::Command::new("sh")
        .args(["-c", "systemctl reboot || /sbin/reboot"])
        .status();
    #[cfg(windows)]
    let status = std::process::Command::new("shutdown")
        .args(["/r", "/t", "0"])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => anyhow::bail!("the reboot command failed ({s})"),
        Err(e) => anyhow::bail!("the reboot command could not run: {e}"),
    }
}
