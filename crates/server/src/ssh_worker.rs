//! The SSH worker: the server plays the agent's part for SSH machines.
//!
//! One task per SSH machine takes work from the same dispatcher agents long-poll
//! (`Server::poll`), connects (host key checked against known_hosts) and hands the work to
//! the one delivery runner (`runner::run`) with the host as its `Target` and the server's own
//! report handling as its `Reporter`: the steps, refusals, codes and decisions are those of
//! every agent (`core::pipeline`). This module keeps the connection and the host's I/O: facts
//! by a shell script (`ssh::facts`), free space of the work directory's file system, the
//! archive over SFTP into a private `mktemp -d` directory with its SHA-256 checked on the far
//! side before extraction, the install in its own session (process group) killed as a group
//! at its time limit, and clean-up whatever happened.

use super::Server;
use super::dispatch::ReportOutcome;
use super::ssh_machines::{SshMachine, describe};
use crate::ssh::facts::{self, Host};
use crate::ssh::session::{Finished, Session, SshError};
use crate::ssh::shell_quote;
use patchcast_core::errors::{Code, Params};
use patchcast_core::identify::{Facts, queries};
use patchcast_core::model::package::Package;
use patchcast_core::model::template::TemplateMachine;
use patchcast_core::pipeline::{self, Refusal, Step};
use patchcast_pack::archive::{self, Verified};
use patchcast_proto::protocol::{AgentState, Work};
use patchcast_runner::{self as runner, Entry, Interrupted, Ran, Reporter, Restart, Stop};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The install output kept for results, as on the agent.
const OUTPUT_TAIL: usize = 64 * 1024;
/// How long one wait for work lasts before the worker looks again.
const POLL_MS: u64 = 30_000;

/// The server's SSH workers: which machines have one running.
pub struct Workers {
    pub data: PathBuf,
    me: OnceLock<Weak<Server>>,
    running: Mutex<HashSet<String>>,
}

impl Workers {
    pub fn new(data: &std::path::Path) -> Workers {
        Workers {
            data: data.to_path_buf(),
            me: OnceLock::new(),
            running: Mutex::new(HashSet::new()),
        }
    }

    /// Starts a worker for `m` unless one runs already.
    pub fn spawn(&self, m: SshMachine) {
        let Some(server) = self.me.get().and_then(Weak::upgrade) else {
            tracing::error!(machine = %m.id, "SSH workers are not started on this server");
            return;
        };
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.id.clone())
        {
            return;
        }
        tokio::spawn(run(server, m));
    }
}

/// Starts a worker for every registered SSH machine (at server start).
pub async fn start_all(server: Arc<Server>) -> anyhow::Result<usize> {
    let _ = server.ssh.me.set(Arc::downgrade(&server));
    let machines = server.ssh_machines().await?;
    let n = machines.len();
    for m in machines {
        server.ssh.spawn(m);
    }
    Ok(n)
}

async fn run(server: Arc<Server>, m: SshMachine) {
    loop {
        // With several servers, the leader's workers deliver (the others stand by).
        if !server.cluster.leader() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match server.poll(&m.id, &AgentState::Idle, POLL_MS).await {
            Ok(Some(work)) => {
                let id = work.delivery_id.clone();
                if let Err(e) = deliver(&server, &m, work).await {
                    // The dispatcher's no-reply rule (E13) settles a delivery left mid-way.
                    tracing::error!(machine = %m.id, delivery = %id, "SSH delivery stopped: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(machine = %m.id, "SSH worker could not poll: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// An SSH failure as the refusal it reports (E03 unreachable, E26 host key or credential, …).
fn refusal(e: SshError) -> Stop {
    Refusal::detail(e.code(), e.to_string()).into()
}

/// Runs one work item on the SSH host through the one delivery runner.
async fn deliver(server: &Server, m: &SshMachine, work: Work) -> anyhow::Result<()> {
    let reporter = InProcess { server, m };
    let mut entry = Entry::new(work);
    let session = match Session::connect(&m.access).await {
        Ok(s) => s,
        Err(e) => {
            let r = Refusal::detail(e.code(), e.to_string());
            entry.record(pipeline::refused(&entry.work.package_id, r));
            return Ok(reporter.flush(&mut entry).await?);
        }
    };
    if let Ok(ip) = m.access.target.host.parse::<std::net::IpAddr>() {
        server.seen(&m.id, ip, "ssh");
    }
    let mut target = SshHost {
        server,
        m,
        session: &session,
        host: None,
        workdir: None,
    };
    let r = runner::run(&mut target, &reporter, &mut entry, &server.trusted()).await;
    if r.is_err() {
        // The work directory goes whatever happened (a new attempt makes a new one).
        let _ = runner::Target::clean(&mut target, &entry.work).await;
    }
    session.close().await;
    match r {
        // A reboot exit code leaves the delivery reboot_pending, as on an agent; SSH
        // machines are not restarted by the server.
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Reports go straight to the server's own report handling, as an agent's would.
struct InProcess<'a> {
    server: &'a Server,
    m: &'a SshMachine,
}

impl runner::Reporter for InProcess<'_> {
    fn save(&self, _entry: &Entry) -> Result<(), Interrupted> {
        Ok(())
    }

    async fn flush(&self, entry: &mut Entry) -> Result<(), Interrupted> {
        while let Some(r) = entry.outbox.first().cloned() {
            match self.server.report(&self.m.id, &r).await? {
                ReportOutcome::Ack(_) => {
                    entry.outbox.remove(0);
                }
                // The delivery was withdrawn or moved on: nothing more is done for it.
                ReportOutcome::NotFound | ReportOutcome::Refused(_) => {
                    tracing::warn!(delivery = %r.delivery_id, seq = r.seq, "report refused; the SSH delivery stops");
                    entry.outbox.clear();
                    entry.step = Step::Done;
                }
            }
        }
        Ok(())
    }

    fn finish(&self, _entry: &Entry) -> Result<(), Interrupted> {
        Ok(())
    }
}

/// An SSH host: facts by a shell script, content over SFTP into a private `mktemp -d`
/// directory, the install in its own session (process group) killed as a group at its limit.
struct SshHost<'a> {
    server: &'a Server,
    m: &'a SshMachine,
    session: &'a Session,
    /// What the last facts script said about the host (hostname, boot id).
    host: Option<Host>,
    workdir: Option<String>,
}

impl SshHost<'_> {
    /// Where the server extracts the payload it writes to the host.
    fn staging(&self, work: &Work) -> PathBuf {
        self.server
            .ssh
            .data
            .join("ssh-staging")
            .join(&work.delivery_id)
    }

    fn dir(&self) -> Result<&str, Stop> {
        self.workdir.as_deref().ok_or_else(|| {
            Stop::from(anyhow::anyhow!(
                "the SSH work directory is gone (a restarted worker starts the attempt again)"
            ))
        })
    }
}

impl runner::Target for SshHost<'_> {
    async fn facts(&mut self, pkg: &Package) -> Result<Facts, Stop> {
        let q = queries(pkg);
        let out = self
            .session
            .exec(&facts::script(&q))
            .await
            .map_err(refusal)?;
        let host = facts::parse(&q, &out.stdout_text());
        let f = host.facts.clone();
        self.host = Some(host);
        Ok(f)
    }

    fn machine(&self) -> TemplateMachine {
        let (facts, hostname) = match &self.host {
            Some(h) => (h.facts.clone(), h.hostname.clone()),
            None => (Facts::default(), String::new()),
        };
        TemplateMachine {
            os: facts.os,
            arch: facts.arch,
            language: facts.language,
            hostname,
        }
    }

    async fn free_space(&mut self) -> Result<u64, Stop> {
        let (_, disk) = describe(self.session, &self.m.work_dir)
            .await
            .map_err(refusal)?;
        match disk {
            Some(d) => Ok(d.free),
            None => Err(Refusal::detail(
                Code::E06,
                format!(
                    "the free space of {} could not be read (df failed); check that the directory exists",
                    self.m.work_dir
                ),
            )
            .into()),
        }
    }

    /// A private work directory on the host, and the payload extracted and verified again
    /// on the server (from the content store, against the trusted keys).
    async fn fetch(&mut self, work: &Work) -> Result<(), Stop> {
        let made = self
            .session
            .exec(&format!(
                "mktemp -d {}/patchcast.XXXXXXXX",
                shell_quote(self.m.work_dir.trim_end_matches('/'))
            ))
            .await
            .map_err(refusal)?;
        let dir = made.stdout_text().trim().to_string();
        if !made.success() || !dir.starts_with('/') {
            return Err(Refusal::detail(
                Code::E07,
                format!(
                    "creating a work directory under {}: {}",
                    self.m.work_dir,
                    made.stderr_text()
                ),
            )
            .into());
        }
        self.workdir = Some(dir);
        let archive = self.server.store.path_of(&work.archive_sha256);
        let staging = self.staging(work);
        let trusted = self.server.trusted();
        let extracted = tokio::task::spawn_blocking(move || {
            if staging.exists() {
                std::fs::remove_dir_all(&staging)?;
            }
            std::fs::create_dir_all(staging.parent().unwrap_or(&staging))?;
            let file = std::fs::File::open(&archive)?;
            archive::extract(
                std::io::BufReader::with_capacity(1 << 20, file),
                &trusted,
                &staging,
            )
            .map_err(|e| {
                std::io::Error::other(
                    runner::archive_refusal(&e)
                        .params
                        .detail
                        .unwrap_or_default(),
                )
            })
        })
        .await
        .map_err(|e| anyhow::anyhow!("extracting on the server: {e}"))?;
        extracted.map_err(|e| {
            // The content store holds only archives verified at publish: this is the
            // server's own trouble (a damaged or missing store file).
            Refusal::detail(Code::E01, format!("preparing {}: {e}", work.archive_sha256))
        })?;
        Ok(())
    }

    /// Writes each verified file over SFTP (never through the host's tar), then has the host
    /// hash what landed against the signed manifest.
    async fn extract(&mut self, work: &Work, signed: &Verified) -> Result<String, Stop> {
        let payload = format!("{}/payload", self.dir()?);
        let staging = self.staging(work);
        let mut dirs = vec![payload.clone()];
        let mut files = Vec::new();
        for f in &signed.manifest.files {
            let mut parent = String::new();
            for part in f
                .path
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map_or(&[][..], |(_, p)| p)
            {
                parent = if parent.is_empty() {
                    (*part).to_string()
                } else {
                    format!("{parent}/{part}")
                };
                let d = format!("{payload}/{parent}");
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
            let mode = if f.executable { 0o755 } else { 0o644 };
            files.push((staging.join(&f.path), format!("{payload}/{}", f.path), mode));
        }
        if let Err(e) = self.session.upload(&dirs, &files, |_| {}).await {
            return Err(Refusal::new(
                Code::E10,
                Params {
                    file: Some(payload),
                    detail: Some(e.to_string()),
                    ..Params::default()
                },
            )
            .into());
        }
        let names: Vec<String> = signed
            .manifest
            .files
            .iter()
            .map(|f| shell_quote(&f.path))
            .collect();
        let sums = self
            .session
            .exec(&format!(
                "cd {} && sha256sum -- {}",
                shell_quote(&payload),
                names.join(" ")
            ))
            .await
            .map_err(refusal)?;
        let text = sums.stdout_text();
        let landed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for (i, f) in signed.manifest.files.iter().enumerate() {
            if landed.get(i) != Some(&f.sha256.hex().as_str()) {
                return Err(Refusal::new(
                    Code::E19,
                    Params {
                        file: Some(format!("{payload}/{}", f.path)),
                        detail: Some(format!(
                            "the file hashes to `{}` on the host, not the signed {}",
                            landed.get(i).unwrap_or(&"nothing"),
                            f.sha256
                        )),
                        ..Params::default()
                    },
                )
                .into());
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        Ok(format!("ssh://{} (sftp)", self.m.access.target))
    }

    async fn payload(&mut self, _work: &Work, _signed: &Verified) -> Result<String, Stop> {
        // Written in this same session, each file's hash confirmed by the host.
        Ok(format!("{}/payload", self.dir()?))
    }

    fn kill_leftover(&mut self, _pgid: i32) {}

    async fn install(
        &mut self,
        _signed: &Verified,
        command: &str,
        payload: &str,
        limit: Duration,
        _started: &mut (dyn FnMut(i32) -> anyhow::Result<()> + Send),
    ) -> Result<Ran, Stop> {
        let pgid = shell_quote(&format!("{}/pgid", self.dir()?));
        // The package's own command, in its own session so a time-out kills it all.
        let remote_cmd = format!(
            "cd {p} && exec setsid -w sh -c 'echo $$ > \"$1\"; exec sh -c \"$2\"' sh {pgid} {c} </dev/null 2>&1",
            p = shell_quote(payload),
            c = shell_quote(command),
        );
        let (finished, tail) = self
            .session
            .exec_limited(&remote_cmd, limit, OUTPUT_TAIL)
            .await
            .map_err(refusal)?;
        let mut output = String::from_utf8_lossy(&tail).into_owned();
        let exit = match &finished {
            Finished::Exit(c) => Some(*c),
            // Killed on the far side by someone else: a failed run, as a signal exit is.
            Finished::Signal(sig) => {
                output.push_str(&format!("\n(ended by signal {sig})"));
                Some(-1)
            }
            Finished::TimedOut => {
                // The whole process group, not only the shell: installers start children.
                // No `--`: dash's kill does not take it; `-PGID` alone names the group.
                let kill = format!(
                    "pg=$(cat {pgid} 2>/dev/null) && [ -n \"$pg\" ] && kill -KILL -\"$pg\""
                );
                if let Err(e) = self.session.exec(&kill).await {
                    tracing::warn!(machine = %self.m.id, "killing the timed-out install: {e}");
                }
                None
            }
        };
        Ok(Ran { exit, output })
    }

    fn runs_at_boot(&self) -> bool {
        false
    }

    async fn boot_id(&mut self) -> String {
        self.host
            .as_ref()
            .map(|h| h.boot_id.clone())
            .unwrap_or_default()
    }

    async fn restart(&mut self, _work: &Work) -> Result<Restart, Stop> {
        Ok(Restart::Unsupported)
    }

    async fn clean(&mut self, work: &Work) -> Result<(), Stop> {
        let _ = std::fs::remove_dir_all(self.staging(work));
        if let Some(dir) = self.workdir.take()
            && let Err(e) = self
                .session
                .exec(&format!("rm -rf {}", shell_quote(&dir)))
                .await
        {
            tracing::warn!(machine = %self.m.id, "cleaning {dir}: {e}");
        }
        Ok(())
    }
}
