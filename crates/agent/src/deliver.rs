//! The agent's side of a delivery: its journal as the `Reporter` (each decision is journaled
//! with its queued report in one write, so a kill at any moment resumes with no step lost and
//! no report sent twice), and its two `Target`s — this machine, and an emulated Windows
//! endpoint — for `runner::run`, which decides nothing itself either: `core::pipeline` does.

use super::config::Root;
use super::emulated::Endpoint;
use super::exec::{self, Exit};
use super::fetch::{self, FetchError, Fetched};
use super::journal::{Entry, Journal, Step};
use ed25519_dalek::VerifyingKey;
use patchcast_core::delivery::{Event, Execution};
use patchcast_core::errors::{Code, Params};
use patchcast_core::faults::{self, Fault};
use patchcast_core::identify::{Facts, queries};
use patchcast_core::model::package::Package;
use patchcast_core::model::template::TemplateMachine;
use patchcast_core::pipeline::Refusal;
use patchcast_pack::archive::{self, Verified};
use patchcast_proto::client::{CallError, Client};
use patchcast_proto::protocol::{AgentState, Poll, PollResponse, Work};
use patchcast_runner::{self as runner, Ran, Restart, Stop, archive_refusal};
use std::path::PathBuf;
use std::time::Duration;

pub use patchcast_runner::{Interrupted, Progress};

/// How often a running install is announced to the server.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

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

impl Agent {
    /// Carries the journaled delivery forward until it finishes or waits for a restart.
    pub async fn deliver(&mut self, entry: &mut Entry) -> Result<Progress, Interrupted> {
        let reporter = JournalReporter {
            client: &self.client,
            journal: &self.journal,
            heartbeat: self.heartbeat,
        };
        let staging = Staging {
            root: &self.root,
            client: &self.client,
            keys: &self.keys,
            installed: false,
            extracted: None,
        };
        let (progress, installed) = match &mut self.endpoint {
            Some(endpoint) => {
                let mut t = Emulated { staging, endpoint };
                let p = runner::run(&mut t, &reporter, entry, &self.keys).await;
                (p, t.staging.installed)
            }
            None => {
                let mut t = Local {
                    staging,
                    allow_real_reboot: self.allow_real_reboot,
                };
                let p = runner::run(&mut t, &reporter, entry, &self.keys).await;
                (p, t.staging.installed)
            }
        };
        self.installed_something |= installed;
        progress
    }
}

/// The journal, and the server over HTTPS.
struct JournalReporter<'a> {
    client: &'a Client,
    journal: &'a Journal,
    heartbeat: Duration,
}

impl runner::Reporter for JournalReporter<'_> {
    fn save(&self, entry: &Entry) -> Result<(), Interrupted> {
        Ok(self.journal.save(entry)?)
    }

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

    fn finish(&self, entry: &Entry) -> Result<(), Interrupted> {
        Ok(self.journal.finish(entry)?)
    }

    /// While an install runs, tells the server every `heartbeat` that this machine is busy
    /// with it, so a long install is not taken for a lost agent. Work offered meanwhile is
    /// journaled and carried out after this delivery (one at a time).
    async fn heartbeat(&self, state: AgentState) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(self.heartbeat).await;
            let poll = Poll {
                state: state.clone(),
                wait_ms: 0,
                ..Poll::default()
            };
            match self.client.poll(&poll).await {
                Ok(PollResponse { work: Some(w), .. }) => {
                    // Never replace the journal entry of the install that is running.
                    if let AgentState::Busy { delivery_id, .. } = &state
                        && *delivery_id == w.delivery_id
                    {
                        continue;
                    }
                    if let Err(e) = super::service::accept(self.journal, w) {
                        tracing::warn!(error = %e, "could not journal work offered during an install");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// Content on this machine's disk, shared by both agent targets: the download from the
/// server or an update source, and the verified extraction under the delivery's work dir.
struct Staging<'a> {
    root: &'a Root,
    client: &'a Client,
    keys: &'a [VerifyingKey],
    /// An install ran (the next inventory reads the package list again).
    installed: bool,
    /// The payload directory this process extracted and verified; a payload found on disk
    /// from before (a restart) is never used without extracting it again.
    extracted: Option<String>,
}

impl Staging<'_> {
    fn work_dir(&self, work: &Work) -> PathBuf {
        self.root.work(&work.delivery_id)
    }

    async fn fetch(&self, work: &Work) -> Result<(), Stop> {
        let dir = self.work_dir(work);
        let got = super::sources::fetch(
            self.client,
            &self.root.0,
            work.sources.as_ref(),
            &work.archive_sha256,
            work.archive_size,
            &dir,
        )
        .await;
        match got {
            Ok(Fetched::Complete(_)) => Ok(()),
            Ok(Fetched::Mismatch { got }) => Err(Refusal::new(
                Code::E19,
                Params {
                    file: Some(format!(
                        "{}/archive.part ({})",
                        dir.display(),
                        work.archive_sha256
                    )),
                    detail: Some(format!(
                        "the downloaded archive hashes to {got}, not {}; it was deleted",
                        work.archive_sha256
                    )),
                    ..Params::default()
                },
            )
            .into()),
            // The source answered that it has no such content (404, 403…).
            Ok(Fetched::Refused(why)) => Err(Fault::ContentMissing
                .refusal(Some(format!("{}.pcpkg", work.archive_sha256)), why)
                .into()),
            Ok(Fetched::Exhausted(tried)) => {
                tracing::error!(delivery = %work.delivery_id, ?tried, "no update source could provide the archive and the server fallback is off");
                Err(Refusal::detail(Code::E27, tried.join("; ")).into())
            }
            Err(FetchError::Staging { path, err }) => Err(faults::staging_fault(err.kind())
                .refusal(Some(path), err.to_string())
                .into()),
            Err(FetchError::Disk { path, err }) => Err(faults::write_fault(err.kind())
                .refusal(Some(path), err.to_string())
                .into()),
            // The server itself cannot be reached: nothing can be reported now either; the
            // delivery resumes from the journal, or the server's deadline settles it (E05).
            Err(FetchError::Call(c)) => Err(c.into()),
            Err(FetchError::Unreachable(why)) => Err(Fault::Unreachable.refusal(None, why).into()),
            // Reset, cut or stalled on every quick retry: reported with its own code.
            Err(e @ FetchError::Broken { how, .. }) => Err(how
                .fault()
                .refusal(
                    Some(format!("{} ({})", work.package_id, work.archive_sha256)),
                    e.to_string(),
                )
                .into()),
        }
    }

    /// Extracts (and so verifies again: hash, signature, every entry) the fetched archive
    /// into a fresh payload directory; returns where the archive came from.
    fn extract(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        let dir = self.work_dir(work);
        let payload = dir.join("payload");
        if payload.exists() {
            std::fs::remove_dir_all(&payload).map_err(|e| {
                Refusal::detail(Code::E12, format!("removing {}: {e}", payload.display()))
            })?;
        }
        let path = fetch::archive_path(&dir);
        let file = std::fs::File::open(&path)
            .map_err(|e| Refusal::detail(Code::E12, format!("opening {}: {e}", path.display())))?;
        let v = archive::extract(
            std::io::BufReader::with_capacity(1 << 16, file),
            self.keys,
            &payload,
        )
        .map_err(|e| archive_refusal(&e))?;
        if v.manifest_sha256 != signed.manifest_sha256 {
            return Err(Refusal::detail(
                Code::E18,
                "the archive's signed manifest is not the one in the work item",
            )
            .into());
        }
        self.extracted = Some(payload.display().to_string());
        Ok(std::fs::read_to_string(super::sources::source_path(&dir))
            .unwrap_or_else(|_| self.client.base().to_string()))
    }

    /// The payload to install from: the one this process extracted, else (after a restart)
    /// the archive extracted and verified again.
    fn payload(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        if self.extracted.is_none() {
            self.extract(work, signed)?;
        }
        Ok(self.extracted.clone().unwrap_or_default())
    }

    fn clean(&self, work: &Work) -> Result<(), Stop> {
        let dir = self.work_dir(work);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cleaning {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// In tests (and unless real restarts are allowed) a restart is recorded, not performed.
    fn record_reboot(&self, work: &Work) -> Result<Restart, Stop> {
        use std::io::Write;
        let path = self.root.reboots_log();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = format!(
            "{now} reboot recorded for delivery {} attempt {} (package {})\n",
            work.delivery_id, work.attempt, work.package_id
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        tracing::warn!(delivery = %work.delivery_id, log = %path.display(), "reboot recorded (not performed)");
        Ok(Restart::Recorded)
    }
}

/// This machine (Linux; Windows behind `cfg(windows)` in `facts` and `exec`).
struct Local<'a> {
    staging: Staging<'a>,
    allow_real_reboot: bool,
}

impl runner::Target for Local<'_> {
    async fn facts(&mut self, pkg: &Package) -> Result<Facts, Stop> {
        let pkg = pkg.clone();
        // Probes may take a while; keep the runtime free while they run.
        Ok(tokio::task::spawn_blocking(move || {
            let mut f: Facts = super::facts::machine();
            f.agent_version = Some(super::stamp::version());
            super::facts::gather(&mut f, &queries(&pkg));
            f
        })
        .await
        .map_err(|e| anyhow::anyhow!("gathering facts failed: {e}"))?)
    }

    fn machine(&self) -> TemplateMachine {
        let m = super::facts::machine();
        TemplateMachine {
            os: m.os,
            arch: m.arch,
            language: m.language,
            hostname: sysinfo::System::host_name().unwrap_or_default(),
        }
    }

    async fn free_space(&mut self) -> Result<u64, Stop> {
        Ok(super::facts::disk_of(&self.staging.root.0).1)
    }

    async fn fetch(&mut self, work: &Work) -> Result<(), Stop> {
        self.staging.fetch(work).await
    }

    async fn extract(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        self.staging.extract(work, signed)
    }

    async fn payload(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        self.staging.payload(work, signed)
    }

    fn kill_leftover(&mut self, pgid: i32) {
        exec::kill_group(pgid);
    }

    fn shell(&self) -> runner::Shell {
        if cfg!(windows) {
            runner::Shell::Other
        } else {
            runner::Shell::Posix
        }
    }

    async fn install(
        &mut self,
        _signed: &Verified,
        command: &str,
        payload: &str,
        limit: Duration,
        started: &mut (dyn FnMut(i32) -> anyhow::Result<()> + Send),
    ) -> Result<Ran, Stop> {
        self.staging.installed = true;
        let outcome = exec::run(command, payload.as_ref(), limit, started).await?;
        Ok(Ran {
            exit: match outcome.exit {
                Exit::Code(c) => Some(c),
                Exit::TimedOut => None,
            },
            output: outcome.output_tail,
        })
    }

    async fn stage_agent(&mut self, _work: &Work, binary: &str) -> Result<(), Stop> {
        super::upgrade::stage(binary.as_ref()).map_err(Stop::Refused)
    }

    async fn swap_agent(&mut self, work: &Work, check_in: Duration) -> Result<i64, Stop> {
        super::upgrade::swap(self.staging.root, &work.delivery_id, check_in).map_err(Stop::Refused)
    }

    async fn restart_agent(&mut self, _work: &Work) -> Refusal {
        super::upgrade::restart()
    }

    /// The check-in: this agent's inventory (with its version) sent over the pinned TLS
    /// connection with its credential, then the claim against the watchdog.
    async fn check_in(&mut self, work: &Work, pkg: &Package) -> Result<Facts, Stop> {
        let facts = super::upgrade::facts();
        let ident = patchcast_core::identify::identify(pkg, &facts);
        if ident.verdict != patchcast_core::identify::Verdict::Applied {
            // Not the promised build: it must not run on, checked in or not.
            let why = patchcast_core::pipeline::wrong_build(&ident);
            tracing::error!(delivery = %work.delivery_id, reason = %why, "this agent is not the build the package names; rolling back");
            return Err(super::upgrade::disown(self.staging.root, &work.delivery_id, &why).into());
        }
        let root = self.staging.root.0.clone();
        let inv = tokio::task::spawn_blocking(move || {
            super::inventory::Collector::default().collect(&root, None, false)
        })
        .await
        .map_err(|e| anyhow::anyhow!("gathering the inventory failed: {e}"))?;
        self.staging.client.send_inventory(&inv).await?;
        super::upgrade::claim(self.staging.root, &work.delivery_id)?;
        tracing::info!(delivery = %work.delivery_id, version = %super::stamp::version(), "the upgraded agent checked in");
        Ok(facts)
    }

    async fn boot_id(&mut self) -> String {
        boot_id()
    }

    async fn restart(&mut self, work: &Work) -> Result<Restart, Stop> {
        if !self.allow_real_reboot {
            return self.staging.record_reboot(work);
        }
        tracing::warn!(delivery = %work.delivery_id, "restarting the machine as the server allowed");
        reboot_machine()?;
        Ok(Restart::Now)
    }

    async fn clean(&mut self, work: &Work) -> Result<(), Stop> {
        self.staging.clean(work)
    }
}

/// An emulated Windows endpoint (`agent::emulated`): its facts, disk and installer are the
/// profile's; its content is staged and verified on this machine's disk like any other.
struct Emulated<'a> {
    staging: Staging<'a>,
    endpoint: &'a mut Endpoint,
}

impl runner::Target for Emulated<'_> {
    async fn facts(&mut self, pkg: &Package) -> Result<Facts, Stop> {
        let mut f = self.endpoint.machine();
        self.endpoint.gather(&mut f, &queries(pkg));
        Ok(f)
    }

    fn machine(&self) -> TemplateMachine {
        let p = &self.endpoint.profile;
        TemplateMachine {
            os: p.os.clone(),
            arch: p.arch.clone(),
            language: p.language.clone(),
            hostname: p.hostname.clone(),
        }
    }

    async fn free_space(&mut self) -> Result<u64, Stop> {
        Ok(self.endpoint.profile.free_disk_bytes)
    }

    async fn fetch(&mut self, work: &Work) -> Result<(), Stop> {
        self.staging.fetch(work).await
    }

    async fn extract(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        self.staging.extract(work, signed)
    }

    async fn payload(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        self.staging.payload(work, signed)
    }

    fn kill_leftover(&mut self, _pgid: i32) {}

    async fn install(
        &mut self,
        signed: &Verified,
        _command: &str,
        payload: &str,
        _limit: Duration,
        _started: &mut (dyn FnMut(i32) -> anyhow::Result<()> + Send),
    ) -> Result<Ran, Stop> {
        self.staging.installed = true;
        // The emulated installer reads its behaviour from the verified payload; the package
        // definition only says which exit codes mean success.
        let (code, output) = self
            .endpoint
            .install(&signed.package, payload.as_ref())
            .map_err(|e| match e.downcast::<super::emulated::Replace>() {
                // A destination it cannot write (busy: the Windows sharing violation).
                Ok(r) => Stop::from(
                    faults::write_fault(r.err.kind())
                        .refusal(Some(r.windows_path.clone()), r.to_string()),
                ),
                Err(e) => Stop::from(e),
            })?;
        Ok(Ran {
            exit: Some(code),
            output,
        })
    }

    fn uninstalls(&self) -> bool {
        false
    }

    fn shell(&self) -> runner::Shell {
        runner::Shell::Other
    }

    async fn boot_id(&mut self) -> String {
        boot_id()
    }

    async fn restart(&mut self, work: &Work) -> Result<Restart, Stop> {
        self.staging.record_reboot(work)
    }

    async fn clean(&mut self, work: &Work) -> Result<(), Stop> {
        self.staging.clean(work)
    }
}

/// The identity of the current boot: changes with every restart.
/// Read from the file `PATCHCAST_BOOT_ID_FILE` names when set (how tests restart a machine
/// without restarting it), else the kernel's boot id.
pub fn boot_id() -> String {
    let file = std::env::var_os("PATCHCAST_BOOT_ID_FILE")
        .unwrap_or_else(|| "/proc/sys/kernel/random/boot_id".into());
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| sysinfo::System::boot_time().unwrap_or(0).to_string())
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
