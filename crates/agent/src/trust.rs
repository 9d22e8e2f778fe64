//! Keys that can change, on the agent: trust statements (publisher keys added and revoked,
//! `pack::trust`) and the server certificate's renewal (`proto::repin`), both delivered in
//! poll replies and both verified here against what the agent already trusts.
//!
//! A statement is applied only when it is signed by a key in the agent's current set, its
//! serial is above the last one applied and the set keeps a key; the new set is written to
//! `agent.json` atomically (temporary file, fsync, rename) before the running agent uses it,
//! so a kill leaves the old set or the new one. A refused statement changes nothing and is
//! logged once (E18), and so is a refused re-pin statement (E26).
//!
//! A re-pin statement signed by the pinned certificate adds the new certificate's fingerprint
//! beside the old one; when the server says it presents the new one (`PollResponse::
//! fingerprint`, heard over a connection that matched one of the two pins), the old pin goes.

use super::config::{AgentConfig, bearer};
use super::deliver::Agent;
use anyhow::{Context, Result};
use patchcast_pack::trust::TrustSet;
use patchcast_proto::client::Client;
use patchcast_proto::protocol::PollResponse;

/// What the agent tells the server in each poll, and which refusals it already logged.
#[derive(Debug, Default)]
pub struct Tracker {
    serial: u64,
    next_fingerprint: Option<String>,
    refused_trust: Option<String>,
    refused_repin: Option<String>,
}

impl Tracker {
    pub fn new(cfg: &AgentConfig) -> Tracker {
        Tracker {
            serial: cfg.trust_serial,
            next_fingerprint: cfg.next_fingerprint.clone(),
            ..Tracker::default()
        }
    }

    /// `Poll::trust_serial`.
    pub fn serial(&self) -> Option<u64> {
        Some(self.serial)
    }

    /// `Poll::next_fingerprint`.
    pub fn next_fingerprint(&self) -> Option<String> {
        self.next_fingerprint.clone()
    }

    /// Applies what a poll reply carries; errors are logged (the agent goes on with what it
    /// trusted before).
    pub fn apply(&mut self, agent: &mut Agent, resp: &PollResponse) {
        let finishes_renewal = matches!(
            (&resp.fingerprint, &self.next_fingerprint),
            (Some(seen), Some(next)) if seen.eq_ignore_ascii_case(next)
        );
        if resp.trust.is_empty() && resp.repin.is_none() && !finishes_renewal {
            return;
        }
        if let Err(e) = self.try_apply(agent, resp) {
            tracing::error!(error = %format!("{e:#}"), "could not keep new keys; the agent goes on with the ones it had");
        }
    }

    fn try_apply(&mut self, agent: &mut Agent, resp: &PollResponse) -> Result<()> {
        let mut cfg = AgentConfig::load(&agent.root)?;
        let (mut keys_changed, mut pins_changed) = (false, false);
        if !resp.trust.is_empty() {
            let set = TrustSet {
                serial: cfg.trust_serial,
                keys: cfg
                    .publisher_keys
                    .iter()
                    .map(|k| k.trim().to_ascii_lowercase())
                    .collect(),
                revoked: cfg.revoked_keys.clone(),
            };
            let (next, refused) = set.apply_all(&resp.trust);
            if next != set {
                tracing::info!(
                    serial = next.serial,
                    keys = %ids(&next.keys),
                    revoked = %ids(&next.revoked),
                    "trust statement applied: publisher keys updated"
                );
                cfg.publisher_keys = next.keys;
                cfg.revoked_keys = next.revoked;
                cfg.trust_serial = next.serial;
                keys_changed = true;
            }
            if let Some(e) = refused {
                let msg = e.to_string();
                if self.refused_trust.as_deref() != Some(msg.as_str()) {
                    tracing::error!(code = "E18", error = %msg, "trust statement refused; publisher keys unchanged");
                    self.refused_trust = Some(msg);
                }
            }
        }
        if let Some(r) = &resp.repin
            && cfg.next_fingerprint.is_none()
        {
            match r.verify(&cfg.fingerprint) {
                Ok(new) => {
                    tracing::info!(old = %cfg.fingerprint, %new, "re-pin statement accepted: the server's renewed certificate is pinned beside the current one");
                    cfg.next_fingerprint = Some(new);
                    pins_changed = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.refused_repin.as_deref() != Some(msg.as_str()) {
                        tracing::error!(code = "E26", error = %msg, "re-pin statement refused; the pinned certificate is unchanged");
                        self.refused_repin = Some(msg);
                    }
                }
            }
        }
        if let (Some(seen), Some(next)) = (&resp.fingerprint, &cfg.next_fingerprint)
            && seen.eq_ignore_ascii_case(next)
        {
            tracing::info!(old = %cfg.fingerprint, new = %next, "the server presents its renewed certificate; the old pin is dropped");
            cfg.fingerprint = next.clone();
            cfg.next_fingerprint = None;
            pins_changed = true;
        }
        if !(keys_changed || pins_changed) {
            return Ok(());
        }
        // Kept on disk first: a restart never goes back to the old set or pins.
        cfg.save(&agent.root)?;
        if keys_changed {
            agent.keys = cfg.trusted_keys()?;
        }
        if pins_changed {
            agent.client = Client::new_pinned_any(
                agent.client.base(),
                &cfg.pins(),
                Some(bearer(&agent.root, &cfg)?),
            )
            .context("building the client for the new pins")?;
        }
        self.serial = cfg.trust_serial;
        self.next_fingerprint = cfg.next_fingerprint;
        Ok(())
    }
}

fn ids(keys: &[String]) -> String {
    keys.iter()
        .map(|k| patchcast_pack::trust::id_of_hex(k))
        .collect::<Vec<_>>()
        .join(",")
}
