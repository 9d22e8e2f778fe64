//! Auto-update time settings sent to agents (the FAQ's detailed information 15 and 16).
//!
//! Every policy change raises a global version; a machine should have the highest version
//! among its groups' policies, and it reports the version it has on each poll. When a group's
//! policy changes, each of its machines is looked at once:
//! - **unreachable** (no open poll and not seen within its poll interval plus a grace): W16;
//!   it gets the setting at its next start (its first poll of a new session);
//! - **busy** (delivering, or waiting for a reboot a delivery asked for): W15; it keeps its old
//!   setting until its agent restarts (the FAQ: "takes effect after the client restarts"),
//!   even once idle again;
//! - otherwise it gets the setting on its next idle poll.
//!
//! A busy poll that meets a setting it has not been sent yet also raises W15. The server
//! enforces windows and holds itself at dispatch, so a machine with an old setting is never
//! given work outside its new window: the setting tells the agent, W15/W16 tell the admin.

use super::Server;
use super::db::{self, policies::Setting};
use anyhow::Result;
use patchcast_core::errors::{Code, Lang, render};
use patchcast_core::model::group_policy::GroupPolicy;
use patchcast_proto::admin_api::MachineView;
use patchcast_proto::protocol::{AgentState, Poll, TimeSetting};
use patchcast_proto::schedule_api::{MachineSetting, PolicySet};
use std::collections::HashMap;

/// Beyond the poll interval, how long a machine may go unheard and still count as reachable.
const GRACE_MS: i64 = 10_000;

/// Agents' sessions and open polls (memory only; after a server restart everyone's next poll
/// is a session's first, which is when a setting is sent anyway).
#[derive(Debug, Default)]
pub struct Presence {
    sessions: HashMap<String, String>,
    open_polls: HashMap<String, u32>,
}

/// Held for the length of one poll request: the machine is connected while it lives.
pub struct OpenPoll<'a> {
    server: &'a Server,
    machine: String,
}

impl Drop for OpenPoll<'_> {
    fn drop(&mut self) {
        let mut p = self
            .server
            .presence
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.open_polls.get_mut(&self.machine) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Server {
    pub fn open_poll(&self, machine: &str) -> OpenPoll<'_> {
        let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        *p.open_polls.entry(machine.to_string()).or_default() += 1;
        OpenPoll {
            server: self,
            machine: machine.to_string(),
        }
    }

    fn reachable(&self, m: &MachineView, now: i64) -> bool {
        let open = {
            let p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            p.open_polls.get(&m.id).copied().unwrap_or(0) > 0
        };
        open || m.last_seen_ms >= now - self.poll_ms as i64 - GRACE_MS
    }

    fn session_of(&self, machine: &str) -> Option<String> {
        let p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        p.sessions.get(machine).cloned()
    }

    /// The setting `m` should have: its groups' policies under the highest of their versions.
    async fn wanted_setting(&self, m: &MachineView) -> Result<TimeSetting> {
        let views = self.policies_of(m).await?;
        Ok(TimeSetting {
            version: views.iter().map(|v| v.version).max().unwrap_or(0),
            policies: views.into_iter().map(|v| v.policy).collect(),
        })
    }

    async fn setting_row(&self, machine: &str) -> Result<Setting> {
        Ok(db::policies::setting(&self.db, machine)
            .await?
            .unwrap_or_default())
    }

    async fn save_setting_row(&self, machine: &str, r: &Setting) -> Result<()> {
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        db::policies::put_setting(&mut tx, machine, r, self.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a group's policy and gives each of its machines W15/W16 where the FAQ says so.
    pub async fn set_policy(&self, p: &GroupPolicy) -> Result<PolicySet> {
        let version = self.set_policy_row(p).await?;
        let now = self.now();
        let mut out = Vec::new();
        // A policy was just stored, so every machine may be wanted to have a setting.
        let machines = self.machines().await?;
        for m in machines {
            if !Self::groups_of(&m).contains(&p.group) {
                continue;
            }
            let wanted = self.wanted_setting(&m).await?.version;
            let mut row = self.setting_row(&m.id).await?;
            let busy = m.agent_state != "idle" || self.in_flight(&m.id).await?;
            let code = if !self.reachable(&m, now) {
                Some(Code::W16)
            } else if busy {
                Some(Code::W15)
            } else {
                None
            };
            if let Some(c) = code {
                row.code = Some(c);
                row.code_version = Some(wanted);
                row.code_session = self.session_of(&m.id);
                self.save_setting_row(&m.id, &row).await?;
                tracing::warn!(machine = %m.id, code = %c, version = wanted, "time setting deferred");
            } else {
                // Reachable and idle: it gets the setting on its next poll.
                self.wake(&m.id);
            }
            out.push(MachineSetting {
                machine_id: m.id.clone(),
                hostname: m.hostname.clone(),
                wanted,
                applied: row.applied,
                code,
                rendered: None,
                code_version: code.map(|_| wanted),
            });
        }
        tracing::info!(group = %p.group, version, machines = out.len(), "group policy set");
        Ok(PolicySet {
            group: p.group.clone(),
            version,
            machines: out,
        })
    }

    async fn in_flight(&self, machine: &str) -> Result<bool> {
        db::deliveries::machine_busy(&self.db, machine).await
    }

    /// On each agent poll: records the version it has, and returns a setting to send, if any.
    pub async fn setting_for_poll(
        &self,
        machine: &str,
        poll: &Poll,
    ) -> Result<Option<TimeSetting>> {
        // Agents older than time settings neither send a session nor keep a setting.
        let Some(session) = &poll.session else {
            return Ok(None);
        };
        let first_of_session = {
            let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            p.sessions.insert(machine.to_string(), session.clone()) != Some(session.clone())
        };
        let mut row = self.setting_row(machine).await?;
        let has = poll.setting_version.unwrap_or(0);
        if has != row.applied {
            row.applied = has;
            self.save_setting_row(machine, &row).await?;
        }
        if self.policies().await?.is_empty() {
            return Ok(None);
        }
        let Some(m) = self.machine(machine).await? else {
            return Ok(None);
        };
        let wanted = self.wanted_setting(&m).await?;
        if wanted.version == 0 || wanted.version == has {
            return Ok(None);
        }
        if first_of_session {
            return Ok(Some(wanted));
        }
        let deferred = row.code == Some(Code::W15)
            && row.code_version == Some(wanted.version)
            && row.code_session.as_deref() == Some(session.as_str());
        if deferred {
            return Ok(None);
        }
        if poll.state != AgentState::Idle {
            row.code = Some(Code::W15);
            row.code_version = Some(wanted.version);
            row.code_session = Some(session.clone());
            self.save_setting_row(machine, &row).await?;
            tracing::warn!(
                machine,
                code = "W15",
                version = wanted.version,
                "time setting deferred: the agent is busy"
            );
            return Ok(None);
        }
        Ok(Some(wanted))
    }

    /// The setting each machine should have and has, for `patchcast results` (`only`: that
    /// machine's, by id), by hostname. Every machine under some policy is listed, read a batch
    /// at a time with its setting row; without any policy only those whose row says something
    /// (found by the database). Groups and policies are read once, not per machine.
    pub async fn machine_settings(
        &self,
        lang: Lang,
        only: Option<&str>,
    ) -> Result<Vec<MachineSetting>> {
        let policies = self.policies().await?;
        let groups = db::machines::groups(&self.db).await?;
        let mut out = Vec::new();
        let mut add = |mut m: MachineView, row: Setting| {
            m.groups = groups
                .iter()
                .filter(|g| super::machines::in_group(g, &m))
                .map(|g| g.name.clone())
                .collect();
            let in_groups = Self::groups_of(&m);
            let wanted = policies
                .iter()
                .filter(|p| in_groups.contains(&p.policy.group))
                .map(|p| p.version)
                .max()
                .unwrap_or(0);
            if wanted == 0 && row.applied == 0 && row.code.is_none() {
                return;
            }
            let params = patchcast_core::errors::Params {
                detail: Some(format!("setting version {wanted}")),
                ..Default::default()
            };
            out.push(MachineSetting {
                machine_id: m.id,
                hostname: m.hostname,
                wanted,
                applied: row.applied,
                code: row.code,
                rendered: row.code.map(|c| render(c, lang, &params)),
                code_version: row.code_version,
            });
        };
        if let Some(id) = only {
            if let Some(m) = db::machines::get(&self.db, id).await? {
                add(m, self.setting_row(id).await?);
            }
        } else if policies.is_empty() {
            for (m, row) in db::reports::machines_with_settings(&self.db).await? {
                add(m, row);
            }
        } else {
            let mut after = (String::new(), String::new());
            loop {
                let batch = db::reports::settings_after(
                    &self.db,
                    (&after.0, &after.1),
                    super::results::BATCH,
                )
                .await?;
                let Some((last, _)) = batch.last() else { break };
                after = (last.hostname.clone(), last.id.clone());
                for (m, row) in batch {
                    add(m, row);
                }
            }
        }
        Ok(out)
    }
}
