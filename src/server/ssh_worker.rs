//! The SSH worker: the server plays the agent's part for SSH machines.
//!
//! One task per SSH machine takes work from the same dispatcher agents long-poll
//! (`Server::poll`) and reports every step through the same `Server::report`, so deliveries
//! to SSH machines go through `core::delivery` with the same states, codes, idempotent
//! `(attempt, seq)` reports and persistence as the agent path. The decisions are the shared
//! ones: `core::identify` on facts gathered over SSH (`ssh::facts`), `core::outcome` for disk
//! and exit codes, the package's own install template and timeout.
//!
//! Per delivery: verify the signed manifest with the server's trusted publisher keys, connect
//! (host key checked against known_hosts), probe, check free space in the work directory's
//! file system (3 × the archive, else E06 before any byte is sent), upload the archive over
//! SFTP into a private `mktemp -d` directory, compare its SHA-256 on the far side with the
//! content address before extracting it, run the install in its own session (process group)
//! with the package's time limit (killed as a group when it runs over), verify, clean up.
//! The archive was verified (signature and every entry) when it was published, and the
//! far-side hash proves the bytes extracted are those bytes.

use super::Server;
use super::dispatch::ReportOutcome;
use super::ssh_machines::{SshMachine, describe};
use crate::core::delivery::{Event, Execution};
use crate::core::errors::{Code, Params};
use crate::core::identify::{Identification, identify, queries};
use crate::core::outcome;
use crate::model::package::Package;
use crate::model::template::{TemplateContext, TemplateMachine, render};
use crate::pack::archive::{self, Verified};
use crate::ssh::facts::{self, Host};
use crate::ssh::session::{Finished, Session, SshError};
use crate::ssh::shell_quote;
use crate::transport::protocol::{AgentState, Detail, Report, Work};
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
        match server.poll(&m.id, &AgentState::Idle, POLL_MS).await {
            Ok(Some(work)) => {
                let id = work.delivery_id.clone();
                let mut d = Delivery {
                    server: &server,
                    m: &m,
                    work,
                    seq: 0,
                };
                if let Err(e) = d.run().await {
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

/// Why a delivery ends early: the code reported, with what its message names.
struct Refusal(Code, Params);

impl From<SshError> for Refusal {
    fn from(e: SshError) -> Refusal {
        Refusal(e.code(), detail(e.to_string()))
    }
}

fn detail(s: impl Into<String>) -> Params {
    Params {
        detail: Some(s.into()),
        ..Params::default()
    }
}

struct Delivery<'a> {
    server: &'a Server,
    m: &'a SshMachine,
    work: Work,
    seq: u32,
}

impl Delivery<'_> {
    /// Sends the next report of this attempt; false when the delivery must not go on.
    async fn report(&mut self, event: Event, detail: Detail) -> anyhow::Result<bool> {
        self.seq += 1;
        let r = Report {
            delivery_id: self.work.delivery_id.clone(),
            attempt: self.work.attempt,
            seq: self.seq,
            event,
            detail,
        };
        match self.server.report(&self.m.id, &r).await? {
            ReportOutcome::Ack(_) => Ok(true),
            ReportOutcome::NotFound => Ok(false),
            ReportOutcome::Refused(e) => {
                tracing::warn!(delivery = %r.delivery_id, seq = r.seq, "report refused: {e:?}");
                Ok(false)
            }
        }
    }

    async fn refuse(&mut self, r: Refusal) -> anyhow::Result<()> {
        let Refusal(code, params) = r;
        tracing::warn!(machine = %self.m.id, delivery = %self.work.delivery_id, %code, detail = ?params.detail, "SSH delivery refused");
        let params = Params {
            package: Some(self.work.package_id.clone()),
            ..params
        };
        self.report(
            Event::Refused { code },
            Detail {
                code: Some(code),
                params,
                ..Detail::default()
            },
        )
        .await?;
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        // Probes are commands: only a manifest signed by a trusted publisher is looked at.
        let v = match archive::verify_manifest(
            self.work.manifest.as_bytes(),
            self.work.signature.as_bytes(),
            &self.server.trusted,
        ) {
            Ok(v) => v,
            Err(e) => return self.refuse(Refusal(Code::E18, detail(e.to_string()))).await,
        };
        let session = match Session::connect(&self.m.access).await {
            Ok(s) => s,
            Err(e) => return self.refuse(e.into()).await,
        };
        if let Ok(ip) = self.m.access.target.host.parse::<std::net::IpAddr>() {
            self.server.seen(&self.m.id, ip, "ssh").await?;
        }
        let mut workdir = None;
        let r = self.steps(&session, &v, &mut workdir).await;
        if let Some(dir) = workdir {
            // The work directory goes whatever happened (a new attempt makes a new one).
            if let Err(e) = session.exec(&format!("rm -rf {}", shell_quote(&dir))).await {
                tracing::warn!(machine = %self.m.id, "cleaning {dir}: {e}");
            }
        }
        session.close().await;
        match r {
            Ok(()) => Ok(()),
            Err(Step::Refused(r)) => self.refuse(r).await,
            Err(Step::Stop(e)) => Err(e),
        }
    }

    async fn identify(
        &self,
        s: &Session,
        pkg: &Package,
    ) -> Result<(Identification, Host), SshError> {
        let q = queries(pkg);
        let out = s.exec(&facts::script(&q)).await?;
        let host = facts::parse(&q, &out.stdout_text());
        Ok((identify(pkg, &host.facts), host))
    }

    async fn steps(
        &mut self,
        s: &Session,
        v: &Verified,
        workdir: &mut Option<String>,
    ) -> Result<(), Step> {
        let pkg = &v.package;
        let id = self.work.delivery_id.clone();
        let (ident, host) = self.identify(s, pkg).await.map_err(Refusal::from)?;
        tracing::info!(machine = %self.m.id, delivery = %id, verdict = ?ident.verdict, "probed over SSH");
        let go_on = outcome::needs_install(&ident.verdict);
        if !self
            .report(
                Event::Probed {
                    verdict: ident.verdict,
                },
                Detail {
                    explanation: ident.explanation,
                    ..Detail::default()
                },
            )
            .await?
            || !go_on
        {
            return Ok(());
        }

        // Disk: the work directory's file system, before anything is sent.
        let required = outcome::required_disk(self.work.archive_size);
        let (_, disk) = describe(s, &self.m.work_dir).await.map_err(Refusal::from)?;
        let Some(disk) = disk else {
            return Err(Refusal(
                Code::E06,
                detail(format!(
                    "the free space of {} could not be read (df failed); check that the directory exists",
                    self.m.work_dir
                )),
            )
            .into());
        };
        if disk.free < required {
            return Err(Refusal(
                Code::E06,
                Params {
                    free_bytes: Some(disk.free),
                    required_bytes: Some(required),
                    file: Some(format!("{} ({})", self.m.work_dir, disk.mount)),
                    ..Params::default()
                },
            )
            .into());
        }

        // A private work directory (mktemp -d: mode 0700, fresh name).
        let made = s
            .exec(&format!(
                "mktemp -d {}/patchcast.XXXXXXXX",
                shell_quote(self.m.work_dir.trim_end_matches('/'))
            ))
            .await
            .map_err(Refusal::from)?;
        let dir = made.stdout_text().trim().to_string();
        if !made.success() || !dir.starts_with('/') {
            return Err(Refusal(
                Code::E06,
                detail(format!(
                    "creating a work directory under {}: {}",
                    self.m.work_dir,
                    made.stderr_text()
                )),
            )
            .into());
        }
        *workdir = Some(dir.clone());
        let q = |p: &str| shell_quote(&format!("{dir}/{p}"));

        // Transfer, then the far side's hash against the content address.
        let local = self.server.store.path_of(&self.work.archive_sha256);
        let remote = format!("{dir}/archive.pcpkg");
        if let Err(e) = s.upload(&local, &remote, |_| {}).await {
            return Err(Refusal(
                Code::E10,
                Params {
                    file: Some(remote.clone()),
                    detail: Some(e.to_string()),
                    ..Params::default()
                },
            )
            .into());
        }
        let sum = s
            .exec(&format!("sha256sum {}", q("archive.pcpkg")))
            .await
            .map_err(Refusal::from)?;
        let got = sum
            .stdout_text()
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        if got != self.work.archive_sha256.hex() {
            return Err(Refusal(
                Code::E19,
                Params {
                    file: Some(remote),
                    detail: Some(format!(
                        "the uploaded archive hashes to `{got}` on the host, not {}",
                        self.work.archive_sha256
                    )),
                    ..Params::default()
                },
            )
            .into());
        }
        let x = s
            .exec(&format!(
                "mkdir {x} && tar -xf {a} -C {x} --no-same-owner && rm -f {a}",
                x = q("x"),
                a = q("archive.pcpkg")
            ))
            .await
            .map_err(Refusal::from)?;
        if !x.success() {
            return Err(Refusal(
                Code::E12,
                detail(format!(
                    "extracting the archive on the host: {}",
                    x.stderr_text()
                )),
            )
            .into());
        }
        let source = format!("ssh://{} (sftp)", self.m.access.target);
        if !self
            .report(
                Event::Transferred,
                Detail {
                    source: Some(source),
                    ..Detail::default()
                },
            )
            .await?
        {
            return Ok(());
        }

        // Execute: the package's own command, in its own session so a time-out kills it all.
        let payload = format!("{dir}/x/payload");
        let ctx = TemplateContext::new(
            &v.manifest.package,
            &payload,
            TemplateMachine {
                os: host.facts.os.clone(),
                arch: host.facts.arch.clone(),
                language: host.facts.language.clone(),
                hostname: host.hostname.clone(),
            },
        );
        let command = render(&pkg.install.template, &ctx).map_err(|e| {
            Refusal(
                Code::E12,
                detail(format!("the install command cannot be rendered: {e}")),
            )
        })?;
        let limit = self
            .work
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(pkg.install.timeout);
        tracing::info!(machine = %self.m.id, delivery = %id, %command, timeout = ?limit, "installing over SSH");
        let remote_cmd = format!(
            "cd {p} && exec setsid -w sh -c 'echo $$ > \"$1\"; exec sh -c \"$2\"' sh {pg} {c} </dev/null 2>&1",
            p = shell_quote(&payload),
            pg = q("pgid"),
            c = shell_quote(&command),
        );
        let (finished, tail) = s
            .exec_limited(&remote_cmd, limit, OUTPUT_TAIL)
            .await
            .map_err(Refusal::from)?;
        let exit = match &finished {
            Finished::Exit(c) => Some(*c),
            // Killed on the far side by someone else: a failed run, as a signal exit is.
            Finished::Signal(_) => Some(-1),
            Finished::TimedOut => {
                // The whole process group, not only the shell: installers start children.
                let kill = format!(
                    // No `--`: dash's kill does not take it; `-PGID` alone names the group.
                    "pg=$(cat {pg} 2>/dev/null) && [ -n \"$pg\" ] && kill -KILL -\"$pg\"",
                    pg = q("pgid")
                );
                if let Err(e) = s.exec(&kill).await {
                    tracing::warn!(machine = %self.m.id, "killing the timed-out install: {e}");
                }
                None
            }
        };
        let execution = outcome::execution(pkg, exit);
        let mut output = format!("$ {command}\n{}", String::from_utf8_lossy(&tail));
        if let Finished::Signal(sig) = &finished {
            output.push_str(&format!("\n(ended by signal {sig})"));
        }
        tracing::info!(machine = %self.m.id, delivery = %id, ?execution, "install finished over SSH");
        let succeeded = matches!(execution, Execution::Succeeded { .. });
        if !self
            .report(
                Event::Executed {
                    execution: execution.clone(),
                },
                Detail {
                    code: outcome::execution_code(&execution),
                    params: Params {
                        package: Some(self.work.package_id.clone()),
                        exit_code: exit,
                        ..Params::default()
                    },
                    exit_code: exit,
                    output_tail: Some(output),
                    ..Detail::default()
                },
            )
            .await?
            || !succeeded
        {
            // A reboot exit code leaves the delivery reboot_pending, as on an agent; SSH
            // machines are not restarted by the server.
            return Ok(());
        }

        // Verify with the same rules as the probe.
        let (ident, _) = self.identify(s, pkg).await.map_err(Refusal::from)?;
        let failing_rule = match ident.verdict {
            crate::core::identify::Verdict::Applied => None,
            _ => ident.failing_check().map(|c| c.check.clone()),
        };
        tracing::info!(machine = %self.m.id, delivery = %id, verdict = ?ident.verdict, "verified over SSH");
        self.report(
            Event::Verified {
                verdict: ident.verdict,
                failing_rule,
            },
            Detail {
                explanation: ident.explanation,
                ..Detail::default()
            },
        )
        .await?;
        Ok(())
    }
}

/// How the steps ended early: a refusal to report, or trouble on the server itself.
enum Step {
    Refused(Refusal),
    Stop(anyhow::Error),
}

impl From<Refusal> for Step {
    fn from(r: Refusal) -> Step {
        Step::Refused(r)
    }
}

impl From<anyhow::Error> for Step {
    fn from(e: anyhow::Error) -> Step {
        Step::Stop(e)
    }
}
