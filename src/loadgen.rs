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
        self.report_until_heard(
            w,
            1,
            Event::Probed {
                verdict: Verdict::NotApplied,
            },
            Detail::default(),
        )
        .await?;
        self.fetch(w).await?;
        self.report_until_heard(w, 2, Event::Transferred, Detail::default())
            .await?;
        let executed = Detail {
            exit_code: Some(0),
            output_tail: Some("simulated install: ok\n".into()),
            ..Detail::default()
        };
        self.report_until_heard(
            w,
            3,
            Event::Executed {
                execution: Execution::Succeeded { code: 0 },
            },
            executed,
        )
        .await?;
        let (event, detail) = self.verify();
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

#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub agents: usize,
    pub concurrency: usize,
    pub enrollment: Stats,
    pub checkin: Stats,
    /// One per agent: from the poll that handed out the work to the acknowledged verify.
    pub delivery: Stats,
    pub applied: u64,
}

/// Where the load goes: a server to reach, with an admin token and a publisher key it trusts.
pub struct Target {
    pub url: String,
    pub fingerprint: String,
    pub admin_token: String,
    pub signing_key: ed25519_dalek::SigningKey,
}

/// Runs `agents` simulated agents (at most `concurrency` requests in flight) through
/// enrollment, a check-in, and a one-package scenario to applied.
pub async fn run(
    t: &Target,
    agents: usize,
    concurrency: usize,
    work: &std::path::Path,
) -> Result<LoadReport> {
    use futures_util::StreamExt;
    let admin = Admin::new(&t.url, &t.fingerprint, &t.admin_token)?;
    let tag = crate::server::random_hex(4)?;
    let group = format!("loadtest-{tag}");
    let pkg_id = format!("loadtest-{tag}");
    let archive = sample_package(work, &t.signing_key, &pkg_id)?;
    admin.publish(&archive).await??;
    let token = admin
        .create_token(&TokenRequest {
            group: Some(group.clone()),
            uses: Some(agents as u64),
            expires_secs: 3600,
        })
        .await?
        .token;

    let started = Instant::now();
    let enrolled: Vec<Result<(SimAgent, u64)>> = futures_util::stream::iter(0..agents)
        .map(|i| {
            let (url, fp, token) = (t.url.clone(), t.fingerprint.clone(), token.clone());
            async move {
                let t0 = Instant::now();
                let a = SimAgent::enroll(
                    &url,
                    &fp,
                    &token,
                    inventory(&format!("sim-{i:05}"), i as u32),
                    Behaviour::Apply,
                )
                .await?;
                Ok((a, t0.elapsed().as_micros() as u64))
            }
        })
        .buffer_unordered(concurrency)
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

    let started = Instant::now();
    let lat: Vec<Result<u64>> = futures_util::stream::iter(sims.iter())
        .map(|a| async move {
            let t0 = Instant::now();
            a.poll(AgentState::Idle, 0).await?;
            Ok(t0.elapsed().as_micros() as u64)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let checkin = stats(lat.into_iter().collect::<Result<_>>()?, started.elapsed());

    let scenario = Scenario {
        name: format!("loadtest {agents}"),
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
    };
    // The token put every agent in the group; make sure the group exists even for 0 agents.
    if agents == 0 {
        admin
            .put_group(&Group {
                name: group.clone(),
                ..Group::default()
            })
            .await?;
    }
    let created = admin.run_scenario(&scenario).await?;
    let started = Instant::now();
    let lat: Vec<Result<u64>> = futures_util::stream::iter(sims.iter())
        .map(|a| async move {
            loop {
                let t0 = Instant::now();
                if let Some(w) = a.poll(AgentState::Idle, 5_000).await? {
                    a.carry_out(&w).await?;
                    return Ok(t0.elapsed().as_micros() as u64);
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let delivery = stats(lat.into_iter().collect::<Result<_>>()?, started.elapsed());
    let status = admin.status(&created.id, "en").await?;
    Ok(LoadReport {
        agents,
        concurrency,
        enrollment,
        checkin,
        delivery,
        applied: status.counts.get("applied").copied().unwrap_or(0),
    })
}
