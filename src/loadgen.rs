//! Simulated agents and the load generator (`patchcast loadtest`).
//!
//! A `SimAgent` speaks the real agent protocol over real HTTPS: it enrolls with a token,
//! polls, fetches the archive for real (checking its SHA-256 and size) and reports each
//! step with increasing `seq`. It installs nothing: its "machine" applies a package by
//! its `behaviour`. It is the protocol's reference client and the integration tests' agent.

use crate::core::delivery::{Event, Execution};
use crate::core::identify::{Check, Outcome, Verdict};
use crate::model::scenario::Scenario;
use crate::transport::admin_api::{Admin, Group, TokenRequest};
use crate::transport::client::{CallError, Client};
use crate::transport::protocol::{
    self as proto, AgentState, Detail, EnrollRequest, EnrollResponse, Interface, Inventory, Poll,
    PollResponse, Report, ReportAck, Work,
};
use anyhow::{Context, Result, bail};
use sha2::Digest;
use std::time::{Duration, Instant};

/// How a simulated machine responds to an install.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Installs and verifies as applied.
    Apply,
    /// Installs with exit 0, but verification keeps failing on `rule` (a broken rule).
    NeverVerifies { rule: String },
}

pub struct SimAgent {
    pub machine_id: String,
    pub client: Client,
    pub behaviour: Behaviour,
}

/// A plausible Linux endpoint's inventory.
pub fn inventory(hostname: &str, index: u32) -> Inventory {
    Inventory {
        hostname: hostname.to_string(),
        os: "debian-12".into(),
        os_version: "Debian GNU/Linux 12 (bookworm)".into(),
        arch: "x86_64".into(),
        language: "en-US".into(),
        system_drive: "/".into(),
        disk_free: 50 << 30,
        disk_total: 100 << 30,
        memory_total: 4 << 30,
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                (index >> 16) & 0xff,
                (index >> 8) & 0xff,
                index & 0xff
            ),
            addresses: vec![std::net::IpAddr::from([
                10,
                (index >> 16) as u8,
                (index >> 8) as u8,
                index as u8,
            ])],
        }],
        agent_version: format!("sim-{}", env!("CARGO_PKG_VERSION")),
        boot_time: 0,
        pending_reboot: false,
        emulated: true,
        ..Inventory::default()
    }
}

impl SimAgent {
    pub async fn enroll(
        url: &str,
        fingerprint: &str,
        token: &str,
        inv: Inventory,
        behaviour: Behaviour,
    ) -> Result<SimAgent, CallError> {
        let anon = Client::new(url, fingerprint, None).map_err(|e| CallError::Protocol {
            url: url.into(),
            detail: e.to_string(),
        })?;
        Self::enroll_with(&anon, token, inv, behaviour).await
    }

    /// Enrolls through `anon`, whose connection pool the agent then shares (many simulated
    /// agents behind one proxy, as a fleet's site would be).
    pub async fn enroll_with(
        anon: &Client,
        token: &str,
        inv: Inventory,
        behaviour: Behaviour,
    ) -> Result<SimAgent, CallError> {
        let r: EnrollResponse = anon
            .post(
                proto::ENROLL,
                &EnrollRequest {
                    token: token.to_string(),
                    inventory: inv,
                },
            )
            .await?;
        let bearer = format!("{}.{}", r.machine_id, r.credential);
        Ok(SimAgent {
            machine_id: r.machine_id,
            client: anon.with_bearer(bearer),
            behaviour,
        })
    }

    /// The same machine, talking to another server of the installation at `url`.
    pub fn via(&self, url: &str) -> SimAgent {
        SimAgent {
            machine_id: self.machine_id.clone(),
            client: self.client.with_base(url),
            behaviour: self.behaviour.clone(),
        }
    }

    pub async fn poll(&self, state: AgentState, wait_ms: u64) -> Result<Option<Work>, CallError> {
        let r: PollResponse = self
            .client
            .post(
                proto::POLL,
                &Poll {
                    state,
                    wait_ms,
                    ..Poll::default()
                },
            )
            .await?;
        Ok(r.work)
    }

    pub async fn report(
        &self,
        w: &Work,
        seq: u32,
        event: Event,
        detail: Detail,
    ) -> Result<ReportAck, CallError> {
        let r = Report {
            delivery_id: w.delivery_id.clone(),
            attempt: w.attempt,
            seq,
            event,
            detail,
        };
        self.client.post(proto::REPORT, &r).await
    }

    /// Like `report`, but waits out a server that is down (restarting), as a real agent does.
    pub async fn report_until_heard(
        &self,
        w: &Work,
        seq: u32,
        event: Event,
        detail: Detail,
    ) -> Result<ReportAck> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.report(w, seq, event.clone(), detail.clone()).await {
                Ok(a) => return Ok(a),
                Err(CallError::Unreachable { .. }) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Downloads the work's archive, checking its size and SHA-256. Returns the bytes read.
    pub async fn fetch(&self, w: &Work) -> Result<u64> {
        use futures_util::StreamExt;
        let path = format!("{}/{}", proto::CONTENT, w.archive_sha256);
        let resp = self
            .client
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| self.client.unreachable(&path, &e))?;
        if !resp.status().is_success() {
            bail!("content {}: HTTP {}", w.archive_sha256, resp.status());
        }
        let mut h = sha2::Sha256::new();
        let mut n = 0u64;
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.context("content download broke off")?;
            n += chunk.len() as u64;
            h.update(&chunk);
        }
        let got = hex::encode(h.finalize());
        if n != w.archive_size || got != w.archive_sha256.hex() {
            bail!(
                "content {} arrived as {n} bytes with sha256 {got} (E19)",
                w.archive_sha256
            );
        }
        Ok(n)
    }

    /// The whole attempt: probe (not applied), fetch, execute (exit 0), verify per behaviour.
    pub async fn carry_out(&self, w: &Work) -> Result<ReportAck> {
        self.carry_out_through(w, None).await
    }

    /// `carry_out` where each request holds one of `slots` (a proxy's bounded connections)
    /// while it is in flight, and none between requests (while a real agent installs).
    pub async fn carry_out_through(
        &self,
        w: &Work,
        slots: Option<&tokio::sync::Semaphore>,
    ) -> Result<ReportAck> {
        let slot = || async {
            match slots {
                Some(s) => Some(s.acquire().await.expect("never closed")),
                None => None,
            }
        };
        let probed = Event::Probed {
            verdict: Verdict::NotApplied,
        };
        let s = slot().await;
        self.report_until_heard(w, 1, probed, Detail::default())
            .await?;
        drop(s);
        let s = slot().await;
        self.fetch(w).await?;
        drop(s);
        let s = slot().await;
        self.report_until_heard(w, 2, Event::Transferred, Detail::default())
            .await?;
        drop(s);
        let executed = Detail {
            exit_code: Some(0),
            output_tail: Some("simulated install: ok\n".into()),
            ..Detail::default()
        };
        let execution = Event::Executed {
            execution: Execution::Succeeded { code: 0 },
        };
        let s = slot().await;
        self.report_until_heard(w, 3, execution, executed).await?;
        drop(s);
        let (event, detail) = self.verify();
        let _s = slot().await;
        self.report_until_heard(w, 4, event, detail).await
    }

    pub fn verify(&self) -> (Event, Detail) {
        match &self.behaviour {
            Behaviour::Apply => (
                Event::Verified {
                    verdict: Verdict::Applied,
                    failing_rule: None,
                },
                Detail {
                    explanation: vec![Check {
                        check: "simulated rule".into(),
                        outcome: Outcome::Pass,
                        detail: "present".into(),
                    }],
                    ..Detail::default()
                },
            ),
            Behaviour::NeverVerifies { rule } => (
                Event::Verified {
                    verdict: Verdict::NotApplied,
                    failing_rule: Some(rule.clone()),
                },
                Detail {
                    explanation: vec![Check {
                        check: rule.clone(),
                        outcome: Outcome::Fail,
                        detail: "still not as the rule demands".into(),
                    }],
                    ..Detail::default()
                },
            ),
        }
    }

    /// Polls once (idle) and carries out any work. Returns whether there was work.
    pub async fn step(&self, wait_ms: u64) -> Result<bool> {
        match self.poll(AgentState::Idle, wait_ms).await? {
            Some(w) => {
                self.carry_out(&w).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Writes and builds a tiny signed package for load tests; returns the archive path.
pub fn sample_package(
    dir: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
    id: &str,
) -> Result<std::path::PathBuf> {
    let out = dir.join(format!("{id}.pcpkg"));
    sample(&dir.join(id), &out, key, id, "1.0.0")
}

/// `sample_package` at another version (as `DIR/ID-VERSION.pcpkg`).
pub fn sample_package_version(
    dir: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
    id: &str,
    version: &str,
) -> Result<std::path::PathBuf> {
    let name = format!("{id}-{version}");
    sample(
        &dir.join(&name),
        &dir.join(format!("{name}.pcpkg")),
        key,
        id,
        version,
    )
}

/// The sample package's directory at `pkg`, built and signed into `out`.
fn sample(
    pkg: &std::path::Path,
    out: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
    id: &str,
    version: &str,
) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(pkg)?;
    std::fs::write(pkg.join("hello.txt"), format!("hello from {id}\n"))?;
    std::fs::write(
        pkg.join("package.yaml"),
        format!(
            "id: {id}\nkind: application\ntitle: load test package\nversion: '{version}'\ntargets:\n  - {{ os: debian }}\n\
             identification:\n  - file: /opt/patchcast-loadtest/{id}\n    change: new\npayload: [hello.txt]\n\
             install:\n  command: 'cp \"{{{{payload.0}}}}\" /opt/patchcast-loadtest/{id}'\n  timeout: 1m\n"
        ),
    )?;
    let report = crate::pack::lint::lint_dir(pkg);
    if report.has_errors() {
        bail!("sample package does not lint: {:?}", report.problems);
    }
    let raw = report.raw.context("sample package loaded")?;
    crate::pack::archive::build(pkg, &raw, key, out, |_| {})?;
    Ok(out.to_path_buf())
}

/// Latency samples in microseconds, summarised.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub count: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn stats(mut us: Vec<u64>, wall: Duration) -> Stats {
    us.sort_unstable();
    let pct = |p: f64| {
        if us.is_empty() {
            0.0
        } else {
            us[((us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
        }
    };
    Stats {
        count: us.len(),
        seconds: wall.as_secs_f64(),
        per_second: us.len() as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: us.last().copied().unwrap_or(0) as f64 / 1000.0,
    }
}

/// What a load run does. Enrollment is closed loop (`concurrency` requests in flight); the
/// check-ins are open loop: agent i first checks in at `interval × i / agents` and then every
/// `interval`, whether or not earlier answers came back, as a real fleet arrives.
#[derive(Debug, Clone)]
pub struct Plan {
    pub agents: usize,
    pub concurrency: usize,
    pub check_in_interval: Duration,
    /// How long the steady check-ins run before the rollout (or the end).
    pub duration: Duration,
    /// Then one package rolled out to every agent, learnt at their next check-in.
    pub rollout: bool,
    /// Then this many long polls held open at once (to measure their memory).
    pub long_polls: usize,
    /// Check-ins (with the work they bring) in flight at most, as through one proxy's bounded
    /// pool; later arrivals queue, and their wait counts in their latency.
    pub connections: usize,
    /// Start the rollout's scenario but let no agent carry it out (its deliveries stay
    /// pending): the reports then read a fleet-sized scenario without the rollout's minutes.
    pub rollout_start_only: bool,
    /// At the end, time the reports (dashboard, compliance, machines list and CSV, the
    /// scenario page and exports, results)
    /// this many times each; 0: do not.
    pub report_runs: usize,
}

/// One report timed over HTTPS as a client sees it: request sent until the whole body was
/// read (and, for the results API, decoded as `patchcast results` decodes it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportTiming {
    pub report: String,
    pub path: String,
    pub bytes: u64,
    pub runs: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    /// The server's resident memory before the report's first run, and its peak during the
    /// runs (VmHWM, reset through /proc/PID/clear_refs first), when /proc can tell.
    pub server_rss_before: Option<u64>,
    pub server_peak_rss: Option<u64>,
}

/// What the database grew by in a phase: used bytes (pages in use × page size, so free pages
/// and the WAL's reuse do not count) and delivery history rows.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Growth {
    pub seconds: f64,
    pub bytes: i64,
    pub history_rows: i64,
}

/// The reports `patchcast loadtest --reports N` times, by name and path (`{scenario}`: the
/// rollout's scenario, timed only with `--rollout`).
pub const REPORTS: &[(&str, &str)] = &[
    ("dashboard", "/"),
    ("compliance.json", "/export/compliance.json"),
    ("machines page 1", "/machines"),
    ("machines.csv", "/export/machines.csv"),
    // The scenario's exports before its page and the results: a server keeps the memory a
    // whole-list report took, which would hide a later report's own peak.
    (
        "scenario deliveries.csv",
        "/export/scenarios/{scenario}/deliveries.csv",
    ),
    (
        "scenario deliveries.json",
        "/export/scenarios/{scenario}/deliveries.json",
    ),
    ("scenario page 1", "/scenarios/{scenario}"),
    (
        "scenario status",
        "/api/v1/admin/scenarios/{scenario}?lang=en",
    ),
    (
        "scenario status --limit 0",
        "/api/v1/admin/scenarios/{scenario}?lang=en&limit=0",
    ),
    (
        "results (all)",
        "/api/v1/admin/results?lang=en&history=false",
    ),
    (
        "results --limit 100",
        "/api/v1/admin/results?lang=en&history=false&limit=100&page=0",
    ),
];

/// Times each of `REPORTS` `runs` times (one after another, never overlapping), with the
/// server's peak memory during each when `server_pid` is known.
pub async fn time_reports(
    admin: &Admin,
    runs: usize,
    scenario: Option<&str>,
    server_pid: Option<u32>,
) -> Result<Vec<ReportTiming>> {
    let mut out = Vec::new();
    for (name, path) in REPORTS {
        let path = match (path.contains("{scenario}"), scenario) {
            (false, _) => path.to_string(),
            (true, Some(id)) => path.replace("{scenario}", id),
            (true, None) => continue,
        };
        let before = Memory::of(server_pid);
        // Linux: "5" resets the peak (VmHWM) to the current size, so the next read is this
        // report's own peak.
        let reset = server_pid
            .is_some_and(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok());
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let resp = admin
                .0
                .request(reqwest::Method::GET, &path)
                .send()
                .await
                .with_context(|| format!("GET {path}"))?;
            let status = resp.status();
            let body = resp.bytes().await.with_context(|| format!("GET {path}"))?;
            if !status.is_success() {
                bail!("GET {path}: {status}");
            }
            if path.starts_with("/api/") {
                // As `patchcast results` reads it: a row at a time.
                let mut n = 0;
                crate::transport::admin_api::read_results(&body[..], |_| {
                    n += 1;
                    Ok(())
                })?;
                std::hint::black_box(n);
            }
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len() as u64;
        }
        ms.sort_by(f64::total_cmp);
        out.push(ReportTiming {
            report: name.to_string(),
            path,
            bytes,
            runs: ms.len(),
            min_ms: ms[0],
            median_ms: ms[ms.len() / 2],
            server_rss_before: before.map(|m| m.rss_bytes),
            server_peak_rss: if reset {
                Memory::of(server_pid).map(|m| m.peak_bytes)
            } else {
                None
            },
        });
    }
    Ok(out)
}

/// The server process's memory (VmRSS / VmHWM of /proc/PID/status), when it can be read.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_bytes: u64,
}

impl Memory {
    pub fn of(pid: Option<u32>) -> Option<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        Some(Memory {
            rss_bytes: kib("VmRSS:")?,
            peak_bytes: kib("VmHWM:")?,
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub agents: usize,
    pub check_in_interval_s: f64,
    pub enrollment: Stats,
    /// Steady check-ins (open loop).
    pub check_in: Stats,
    pub check_ins_per_s: f64,
    pub check_in_p50_ms: f64,
    pub check_in_p99_ms: f64,
    /// Failed check-ins of the steady phase.
    pub errors: u64,
    /// Failed check-ins and deliveries during the rollout, and the first few of every phase.
    pub rollout_errors: u64,
    pub error_samples: Vec<String>,
    /// From `rollout start` until every agent's verify was acknowledged.
    pub rollout_seconds: Option<f64>,
    pub rollout_applied: u64,
    /// Check-ins during the rollout, and each delivery from its work to the verify ack.
    pub rollout_check_in: Option<Stats>,
    pub delivery: Option<Stats>,
    /// Server memory before enrollment, after it, with the long polls open, and its peak.
    pub server_rss_before: Option<u64>,
    pub server_rss_enrolled: Option<u64>,
    pub server_bytes_per_machine: Option<f64>,
    pub long_polls: usize,
    pub server_bytes_per_long_poll: Option<f64>,
    pub server_peak_rss: Option<u64>,
    /// The database's growth during the steady check-ins and during the rollout (when the
    /// target's database can be read).
    pub check_in_growth: Option<Growth>,
    pub rollout_growth: Option<Growth>,
    /// The reports timed at the end (`Plan::report_runs`).
    pub reports: Vec<ReportTiming>,
}

/// Where the load goes: a server to reach, with an admin token and a publisher key it trusts,
/// and its process id when its memory can be read.
pub struct Target {
    pub url: String,
    pub fingerprint: String,
    pub admin_token: String,
    pub signing_key: ed25519_dalek::SigningKey,
    pub server_pid: Option<u32>,
    /// The server's database URL, to measure its growth (None: not measured).
    pub database: Option<String>,
}

/// (used bytes, history rows) of the database now.
async fn measure(db: &Option<crate::server::db::Pool>) -> Option<(i64, i64)> {
    let db = db.as_ref()?;
    let bytes = crate::server::db::reports::used_bytes(db).await.ok()?;
    let rows = crate::server::db::reports::event_count(db).await.ok()?;
    Some((bytes, rows))
}

fn growth(a: Option<(i64, i64)>, b: Option<(i64, i64)>, seconds: f64) -> Option<Growth> {
    let ((b0, r0), (b1, r1)) = (a?, b?);
    Some(Growth {
        seconds,
        bytes: b1 - b0,
        history_rows: r1 - r0,
    })
}

#[derive(Default)]
struct Tally {
    check_ins: Vec<u64>,
    deliveries: Vec<u64>,
    errors: u64,
    /// The first few errors' text, to say what failed.
    samples: Vec<String>,
    applied: u64,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.samples.len() < 3 {
            self.samples.push(e.to_string());
        }
    }
}

/// Open-loop check-ins until `until` (or, with `done`, until it says the work is done):
/// each agent at its own phase of `interval`; one that is still carrying out work skips its
/// turn, as an agent does.
async fn check_ins(
    sims: &std::sync::Arc<Vec<SimAgent>>,
    busy: &std::sync::Arc<Vec<std::sync::atomic::AtomicBool>>,
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
    interval: Duration,
    until: Instant,
    done: impl Fn(&Tally) -> bool,
) -> Tally {
    use std::sync::atomic::Ordering;
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let n = sims.len().max(1) as u128;
    let start = Instant::now();
    let due = |k: u128| start + Duration::from_nanos((interval.as_nanos() * k / n) as u64);
    let mut k: u128 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < until && !done(&tally.lock().expect("tally")) {
        let now = Instant::now();
        while due(k) <= now {
            let i = (k % n) as usize;
            k += 1;
            if busy[i].swap(true, Ordering::AcqRel) {
                continue;
            }
            let (sims, busy, tally, slots) =
                (sims.clone(), busy.clone(), tally.clone(), slots.clone());
            tasks.spawn(async move {
                let a = &sims[i];
                // From the arrival, not from the send: a queued check-in was late.
                let t0 = Instant::now();
                let slot = slots.acquire().await.expect("never closed");
                let polled = a.poll(AgentState::Idle, 0).await;
                drop(slot);
                let us = t0.elapsed().as_micros() as u64;
                let outcome = match polled {
                    Ok(Some(w)) => {
                        let t1 = Instant::now();
                        let r = a.carry_out_through(&w, Some(&slots)).await;
                        Some(r.map(|_| t1.elapsed().as_micros() as u64))
                    }
                    Ok(None) => None,
                    Err(e) => Some(Err(anyhow::anyhow!("check-in: {e}"))),
                };
                let mut t = tally.lock().expect("tally");
                t.check_ins.push(us);
                match outcome {
                    Some(Ok(d)) => {
                        t.deliveries.push(d);
                        t.applied += 1;
                    }
                    Some(Err(e)) => t.error(format!("{e:#}")),
                    None => {}
                }
                drop(t);
                busy[i].store(false, Ordering::Release);
            });
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *tally.lock().expect("tally"))
}

/// Enrolls `plan.agents` simulated agents over one shared connection pool, runs the steady
/// open-loop check-ins, then (optionally) a rollout and a burst of long polls.
pub async fn run(t: &Target, plan: &Plan, work: &std::path::Path) -> Result<LoadReport> {
    use futures_util::StreamExt;
    use std::sync::Arc;
    let admin = Admin::new(&t.url, &t.fingerprint, &t.admin_token)?;
    let tag = crate::server::random_hex(4)?;
    let group = format!("loadtest-{tag}");
    let pkg_id = format!("loadtest-{tag}");
    let archive = sample_package(work, &t.signing_key, &pkg_id)?;
    admin.publish(&archive).await??;
    let token = admin
        .create_token(&TokenRequest {
            group: Some(group.clone()),
            uses: Some(plan.agents as u64),
            expires_secs: 3600,
        })
        .await?
        .token;
    admin
        .put_group(&Group {
            name: group.clone(),
            ..Group::default()
        })
        .await?;
    let before = Memory::of(t.server_pid);

    // Many agents behind one proxy: one pool of connections for all of them.
    let anon = Client::new(&t.url, &t.fingerprint, None)?;
    let started = Instant::now();
    let enrolled: Vec<Result<(SimAgent, u64)>> = futures_util::stream::iter(0..plan.agents)
        .map(|i| {
            let (anon, token) = (anon.clone(), token.clone());
            async move {
                let t0 = Instant::now();
                let inv = inventory(&format!("sim-{i:06}"), i as u32);
                let a = SimAgent::enroll_with(&anon, &token, inv, Behaviour::Apply).await?;
                Ok((a, t0.elapsed().as_micros() as u64))
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    let enroll_wall = started.elapsed();
    let mut sims = Vec::new();
    let mut lat = Vec::new();
    for r in enrolled {
        let (a, us) = r?;
        sims.push(a);
        lat.push(us);
    }
    let enrollment = stats(lat, enroll_wall);
    let enrolled_mem = Memory::of(t.server_pid);
    let sims = Arc::new(sims);
    let busy: Arc<Vec<_>> = Arc::new(
        (0..sims.len())
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );

    let slots = Arc::new(tokio::sync::Semaphore::new(plan.connections.max(1)));
    let db = match &t.database {
        Some(url) => Some(crate::server::db::connect(url).await?),
        None => None,
    };
    let steady_before = measure(&db).await;
    let steady_start = Instant::now();
    let steady = check_ins(
        &sims,
        &busy,
        &slots,
        plan.check_in_interval,
        steady_start + plan.duration,
        |_| false,
    )
    .await;
    let check_in = stats(steady.check_ins, steady_start.elapsed());
    let check_in_growth = growth(
        steady_before,
        measure(&db).await,
        steady_start.elapsed().as_secs_f64(),
    );
    let mut rollout_growth = None;
    let errors = steady.errors;
    let mut error_samples = steady.samples;
    let mut rollout_errors = 0;

    let (mut rollout_seconds, mut rollout_applied, mut rollout_check_in, mut delivery) =
        (None, 0, None, None);
    let mut rollout_scenario = None;
    if plan.rollout {
        let scenario = Scenario {
            name: format!("loadtest rollout {}", plan.agents),
            action: crate::core::pipeline::Action::Install,
            packages: vec![
                pkg_id
                    .parse()
                    .map_err(|e: crate::model::types::FormatError| anyhow::anyhow!(e.0))?,
            ],
            machines: Vec::new(),
            groups: vec![group.clone()],
            max_concurrent: None,
            max_unverified_runs: 3,
            max_attempts: 0,
            retry_delay_ms: 1000,
            allow_reboot: false,
            timeout_secs: None,
            when: None,
            versions: Default::default(),
            rollback: false,
        };
        let rollout_before = measure(&db).await;
        let t0 = Instant::now();
        rollout_scenario = Some(admin.run_scenario(&scenario).await?.id);
        let agents = sims.len() as u64;
        if plan.rollout_start_only {
            rollout_growth = growth(
                rollout_before,
                measure(&db).await,
                t0.elapsed().as_secs_f64(),
            );
        }
        // A generous guard: every agent checks in several times before it gives up.
        let guard = t0 + (plan.check_in_interval * 5).max(Duration::from_secs(300));
        let until = if plan.rollout_start_only {
            Instant::now()
        } else {
            guard
        };
        let r = check_ins(&sims, &busy, &slots, plan.check_in_interval, until, |t| {
            t.applied >= agents
        })
        .await;
        if r.applied >= agents {
            rollout_seconds = Some(t0.elapsed().as_secs_f64());
        }
        if !plan.rollout_start_only {
            rollout_growth = growth(
                rollout_before,
                measure(&db).await,
                t0.elapsed().as_secs_f64(),
            );
        }
        rollout_applied = r.applied;
        rollout_errors = r.errors;
        error_samples.extend(r.samples);
        rollout_check_in = Some(stats(r.check_ins, t0.elapsed()));
        delivery = Some(stats(r.deliveries, t0.elapsed()));
    }

    let mut per_long_poll = None;
    if plan.long_polls > 0 {
        let base = Memory::of(t.server_pid);
        let n = plan.long_polls.min(sims.len());
        let polls: Vec<_> = sims[..n]
            .iter()
            .map(|a| a.poll(AgentState::Idle, 20_000))
            .collect();
        let all = futures_util::future::join_all(polls);
        tokio::pin!(all);
        // Measured while they are all open (they end after 20 s without work).
        let open = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => Memory::of(t.server_pid),
            _ = &mut all => None,
        };
        for r in all.await {
            if let Err(e) = r
                && error_samples.len() < 6
            {
                error_samples.push(format!("long poll: {e}"));
            }
        }
        if let (Some(b), Some(o)) = (base, open) {
            per_long_poll = Some((o.rss_bytes as f64 - b.rss_bytes as f64) / n as f64);
        }
    }
    // The peak so far: timing the reports resets it, to read each report's own.
    let peak_before_reports = Memory::of(t.server_pid).map(|m| m.peak_bytes);
    let reports = if plan.report_runs > 0 {
        time_reports(
            &admin,
            plan.report_runs,
            rollout_scenario.as_deref(),
            t.server_pid,
        )
        .await?
    } else {
        Vec::new()
    };
    if let Some(db) = db {
        db.close().await;
    }
    let peak = [
        peak_before_reports,
        Memory::of(t.server_pid).map(|m| m.peak_bytes),
    ]
    .into_iter()
    .chain(reports.iter().map(|r| r.server_peak_rss))
    .flatten()
    .max();
    Ok(LoadReport {
        agents: sims.len(),
        check_in_interval_s: plan.check_in_interval.as_secs_f64(),
        enrollment,
        check_ins_per_s: check_in.per_second,
        check_in_p50_ms: check_in.p50_ms,
        check_in_p99_ms: check_in.p99_ms,
        check_in,
        errors,
        rollout_errors,
        error_samples,
        rollout_seconds,
        rollout_applied,
        rollout_check_in,
        delivery,
        server_rss_before: before.map(|m| m.rss_bytes),
        server_rss_enrolled: enrolled_mem.map(|m| m.rss_bytes),
        server_bytes_per_machine: match (before, enrolled_mem) {
            (Some(b), Some(e)) if !sims.is_empty() => {
                Some((e.rss_bytes as f64 - b.rss_bytes as f64) / sims.len() as f64)
            }
            _ => None,
        },
        long_polls: plan.long_polls.min(sims.len()),
        server_bytes_per_long_poll: per_long_poll,
        server_peak_rss: peak,
        check_in_growth,
        rollout_growth,
        reports,
    })
}
