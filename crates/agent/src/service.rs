//! The agent service: enrollment, and the loop that resumes journaled deliveries, reports the
//! inventory when it changes, and long-polls the server for work, reconnecting with backoff.

use super::backoff::{Backoff, jitter};
use super::config::{AgentConfig, Root, bearer};
use super::deliver::{Agent, Interrupted, Progress};
use super::emulated::Endpoint;
use super::inventory::{Collector, content_hash};
use super::journal::{Entry, Journal, check_delivery_id};
use anyhow::{Context, Result, bail};
use patchcast_core::faults::Fault;
use patchcast_proto::client::{CallError, Client};
use patchcast_proto::protocol::{AgentState, EnrollRequest, MAX_WAIT_MS, Poll, Work};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The server's certificate is not the pinned one (typed, `Fault::PinMismatch`): never talk
/// to it.
pub fn pin_mismatch(e: &CallError) -> Option<String> {
    match e {
        CallError::Unreachable {
            url,
            detail,
            fault: Fault::PinMismatch,
        } => Some(format!(
            "E26: refusing the server at {url}: its TLS certificate does not match the pinned fingerprint ({detail}). Check the fingerprint the server prints at start; if the server was re-installed, enroll again"
        )),
        _ => None,
    }
}

fn check_fingerprint(fp: &str) -> Result<()> {
    let ok = fp
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!(
            "--fingerprint `{fp}` is not `sha256:` followed by 64 hex digits; copy it from the server's start-up output"
        );
    }
    Ok(())
}

/// Enrolls this machine: sends the inventory with the token, keeps the credential (0600) and
/// the configuration under `root`.
pub async fn enroll(
    root: PathBuf,
    servers: &[String],
    token: &str,
    fingerprint: &str,
    proxy: crate::config::SavedProxy,
) -> Result<AgentConfig> {
    check_fingerprint(fingerprint)?;
    if servers.is_empty() {
        bail!("give --server https://HOST:PORT");
    }
    for server in servers {
        if !server.starts_with("https://") {
            bail!("--server `{server}` must be an https:// URL (the agent only talks TLS)");
        }
    }
    let root = Root(root);
    std::fs::create_dir_all(&root.0)
        .with_context(|| format!("creating the agent root {}", root.0.display()))?;
    let endpoint = Endpoint::load(&root.0)?;
    let inventory = Collector::default().collect(&root.0, endpoint.as_ref(), false);
    let req = EnrollRequest {
        token: token.to_string(),
        inventory,
    };
    // Servers sharing a database enroll alike: the first one that answers does.
    let mut resp = None;
    for (i, server) in servers.iter().enumerate() {
        let client = Client::new(server, fingerprint, None)?;
        match client.enroll(&req).await {
            Ok(r) => {
                resp = Some(r);
                break;
            }
            Err(e) if is_unreachable(&e) && i + 1 < servers.len() => {
                tracing::warn!(error = %e, "enrolling: trying the next server");
            }
            Err(e) => {
                return Err(match pin_mismatch(&e) {
                    Some(msg) => anyhow::anyhow!(msg),
                    None => anyhow::anyhow!("enrollment failed: {e}"),
                });
            }
        }
    }
    let resp = resp.expect("every server tried");
    let mut urls = servers.iter().map(|s| s.trim_end_matches('/').to_string());
    let cfg = AgentConfig {
        server: urls.next().expect("at least one server"),
        servers: urls.collect(),
        fingerprint: fingerprint.to_ascii_lowercase(),
        machine_id: resp.machine_id,
        publisher_keys: resp.publisher_keys,
        poll_ms: resp.poll_ms,
        proxy,
        trust_serial: resp.trust_serial,
        revoked_keys: resp.revoked_keys,
        next_fingerprint: None,
    };
    cfg.trusted_keys()
        .context("the server sent publisher keys this agent cannot use")?;
    let cred = root.credential();
    if cred.exists() {
        std::fs::remove_file(&cred).with_context(|| format!("replacing {}", cred.display()))?;
    }
    patchcast_pack::keys::write_private(&cred, resp.credential.as_bytes())?;
    cfg.save(&root)?;
    Ok(cfg)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub allow_real_reboot: bool,
    /// Longest wait between reconnects.
    pub backoff_max: Duration,
    /// How often a running install is announced to the server.
    pub heartbeat: Duration,
}

/// A server that could not be reached (a connection refused, reset or timed out), as opposed
/// to one that answered or presented another certificate: the case where the next server of
/// the installation is tried.
fn is_unreachable(e: &CallError) -> bool {
    matches!(e, CallError::Unreachable { fault, .. } if *fault != Fault::PinMismatch)
}

/// Runs until the future is dropped (on SIGTERM/SIGINT) or the server's certificate changes.
pub async fn run(opts: Options) -> Result<()> {
    let root = Root(opts.root.clone());
    // An upgrade whose watchdog is gone is rolled back before anything else runs.
    super::upgrade::recover_at_start(&root)?;
    let cfg = AgentConfig::load(&root)?;
    let urls = cfg.urls();
    let mut at = 0;
    let client = Client::new_pinned_any(&urls[at], &cfg.pins(), Some(bearer(&root, &cfg)?))?;
    let keys = cfg.trusted_keys()?;
    let mut trust = super::trust::Tracker::new(&cfg);
    let endpoint = Endpoint::load(&root.0)?;
    let mut agent = Agent {
        journal: Journal::new(root.journal()),
        root,
        client,
        keys,
        endpoint,
        allow_real_reboot: opts.allow_real_reboot,
        installed_something: false,
        heartbeat: opts.heartbeat,
    };
    tracing::info!(server = %cfg.server, machine = %cfg.machine_id, emulated = agent.endpoint.is_some(), "agent started");
    let mut relay = super::relay::Relay::new(&agent.root.0, &cfg.machine_id);
    let mut collector = Collector::default();
    let mut sent: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500), opts.backoff_max);
    let wait_ms = cfg.poll_ms.clamp(100, MAX_WAIT_MS);
    let mut setting = super::time_setting::Held::load(&agent.root.0)?;
    loop {
        let started = Instant::now();
        match iteration(
            &mut agent,
            &mut relay,
            &mut collector,
            &mut sent,
            &mut setting,
            &mut trust,
            wait_ms,
        )
        .await
        {
            Ok(got_work) => {
                backoff.reset();
                // A server that answers a long poll at once must not make the agent spin.
                let floor = Duration::from_millis(wait_ms.min(1000));
                if !got_work && started.elapsed() < floor {
                    tokio::time::sleep(floor - started.elapsed()).await;
                }
            }
            Err(e) => {
                if let Some(msg) = e.call().and_then(pin_mismatch) {
                    bail!(msg);
                }
                if e.call().and_then(CallError::status) == Some(401) {
                    tracing::error!(error = %e, "E26: the server rejected this agent's credential; enroll again");
                }
                if urls.len() > 1 && e.call().is_some_and(is_unreachable) {
                    // Fail over: the next server shares the database and the pinned
                    // certificate (the pin is checked on every connection, as before).
                    at = (at + 1) % urls.len();
                    let cfg = AgentConfig::load(&agent.root)?;
                    agent.client = Client::new_pinned_any(
                        &urls[at],
                        &cfg.pins(),
                        Some(bearer(&agent.root, &cfg)?),
                    )?;
                    tracing::warn!(error = %e, next = %urls[at], "server unreachable; trying the next server");
                    if at != 0 {
                        continue;
                    }
                }
                let d = backoff.next(jitter());
                tracing::warn!(error = %e, retry_in = ?d, "server call failed");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// One pass: journaled deliveries, inventory, poll. `Ok(true)` when work arrived.
async fn iteration(
    agent: &mut Agent,
    relay: &mut super::relay::Relay,
    collector: &mut Collector,
    sent: &mut Option<String>,
    setting: &mut super::time_setting::Held,
    trust: &mut super::trust::Tracker,
    wait_ms: u64,
) -> Result<bool, Interrupted> {
    let mut waiting: Option<(String, u32)> = None;
    for mut entry in agent.journal.entries()? {
        match agent.deliver(&mut entry).await? {
            Progress::Finished => {}
            Progress::AwaitingReboot => {
                waiting = Some((entry.work.delivery_id.clone(), entry.work.attempt))
            }
        }
    }
    if std::mem::take(&mut agent.installed_something) {
        collector.invalidate_packages();
    }
    let inv = collector.collect(&agent.root.0, agent.endpoint.as_ref(), waiting.is_some());
    let hash = content_hash(&inv);
    if sent.as_ref() != Some(&hash) {
        agent.client.send_inventory(&inv).await?;
        tracing::info!("inventory sent");
        *sent = Some(hash);
    }
    let state = match waiting {
        Some((delivery_id, attempt)) => AgentState::RebootPending {
            delivery_id,
            attempt,
        },
        None => AgentState::Idle,
    };
    let resp = agent
        .client
        .poll(&Poll {
            state,
            wait_ms,
            setting_version: Some(setting.version),
            session: Some(setting.session.clone()),
            trust_serial: trust.serial(),
            next_fingerprint: trust.next_fingerprint(),
        })
        .await?;
    // Publisher keys and server pins that changed (`trust`), before any work is accepted.
    trust.apply(agent, &resp);
    if let Some(s) = &resp.setting
        && let Err(e) = setting.keep(s)
    {
        tracing::warn!(error = %e, "could not keep the auto-update time setting");
    }
    // The relay role never stops the agent's own deliveries: its errors are only logged.
    if let Err(e) = relay.apply(resp.relay.as_ref(), &agent.client).await {
        tracing::warn!(error = %format!("{e:#}"), "relay role");
    }
    match resp.work {
        Some(work) => {
            accept(&agent.journal, work)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Journals a new work item; a replay of a finished or already journaled attempt is ignored.
pub fn accept(journal: &Journal, work: Work) -> Result<(), Interrupted> {
    if let Err(e) = check_delivery_id(&work.delivery_id) {
        tracing::error!(error = %e, "work item refused");
        return Ok(());
    }
    if journal.is_done(&work.delivery_id, work.attempt) {
        tracing::info!(delivery = %work.delivery_id, attempt = work.attempt, "work item already carried out; ignored");
        return Ok(());
    }
    if let Some(e) = journal.load(&work.delivery_id)?
        && e.work.attempt == work.attempt
    {
        return Ok(());
    }
    tracing::info!(delivery = %work.delivery_id, attempt = work.attempt, package = %work.package_id, "work received");
    journal.save(&Entry::new(work))?;
    Ok(())
}
