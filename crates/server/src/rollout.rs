//! Rollouts: packages delivered in waves of groups (`model::rollout`). Wave 0 is the pilot.
//!
//! Each wave is a scheduled scenario (`<rollout>:w<n>`, listed in `scheduled` with its group),
//! so its deliveries follow that group's windows and holds and go through the usual dispatcher.
//! The ticker evaluates running rollouts: when the failure rate of any started wave goes over
//! the limit, the rollout stops (its waiting deliveries no longer start; work in flight
//! finishes); when the newest wave's applied rate (of its applicable deliveries) reaches the
//! threshold, the next wave's deliveries are created. The decision itself is `decide`, pure.

use super::Server;
use super::db;
use anyhow::{Result, bail};
use patchcast_core::delivery::{Bucket, State};
use patchcast_core::model::rollout::{Rollout, RolloutState};
use patchcast_core::model::scenario::Scenario;
use patchcast_proto::schedule_api::{RolloutStatus, WaveStatus};

/// Counts of one wave's deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub total: u64,
    pub applied: u64,
    pub not_applicable: u64,
    pub failed: u64,
}

impl Tally {
    /// Applied share of the applicable deliveries, per mille; a wave with nothing applicable
    /// (or no machines) has nothing left to prove.
    pub fn applied_permille(&self) -> u32 {
        (self.applied * 1000)
            .checked_div(self.total - self.not_applicable)
            .map_or(1000, |v| v as u32)
    }

    pub fn failed_permille(&self) -> u32 {
        (self.failed * 1000)
            .checked_div(self.total)
            .map_or(0, |v| v as u32)
    }

    pub fn in_progress(&self) -> u64 {
        self.total - self.applied - self.not_applicable - self.failed
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Keep,
    Stop(String),
    OpenWave(usize),
    Complete,
}

/// What a running rollout does next, given the tallies of its started waves (pure).
pub fn decide(r: &Rollout, started: &[Tally]) -> Decision {
    for (i, t) in started.iter().enumerate() {
        if t.failed_permille() > r.failure_permille {
            return Decision::Stop(format!(
                "wave {i} ({}) failed {} of {} deliveries ({:.1}%), over the {:.1}% limit",
                r.groups[i],
                t.failed,
                t.total,
                t.failed_permille() as f64 / 10.0,
                r.failure_permille as f64 / 10.0
            ));
        }
    }
    let Some(last) = started.last() else {
        return Decision::OpenWave(0);
    };
    if last.applied_permille() >= r.success_permille {
        if started.len() < r.groups.len() {
            return Decision::OpenWave(started.len());
        }
        if last.in_progress() == 0 {
            return Decision::Complete;
        }
    }
    Decision::Keep
}

pub(crate) fn wave_scenario(id: &str, wave: usize) -> String {
    format!("{id}:w{wave}")
}

impl Server {
    /// Starts a rollout for `who` (audited with it), opening the pilot wave.
    pub async fn start_rollout(
        &self,
        r: &Rollout,
        who: &crate::actions::Actor,
    ) -> Result<RolloutStatus> {
        for p in &r.packages {
            if self.package_model(p.as_str()).await?.is_none() {
                bail!(
                    "package `{p}` is not published on this server; publish it with `patchcast package publish DIR --key KEY`"
                );
            }
        }
        let machines = self.machines().await?;
        for g in &r.groups {
            if !machines.iter().any(|m| Self::groups_of(m).contains(g)) {
                bail!(
                    "group `{g}` has no machines; check `patchcast group list` and `patchcast machine list`"
                );
            }
        }
        let id = format!("r-{}", super::random_hex(6)?);
        let now = self.now();
        {
            let _w = self.write().await?;
            let mut tx = self.db.begin().await?;
            db::rollouts::insert(&mut tx, &id, r, now).await?;
            let what = format!(
                "{} of {} in {} waves, pilot group {}",
                r.name,
                r.packages
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.groups.len(),
                r.groups[0]
            );
            db::audit::insert(&mut tx, &who.0, "rollout.start", &id, &what, db::now_ms()).await?;
            tx.commit().await?;
        }
        self.open_wave(&id, r, 0).await?;
        tracing::info!(rollout = %id, name = %r.name, waves = r.groups.len(), "rollout started");
        self.rollout_status(&id).await
    }

    async fn open_wave(&self, id: &str, r: &Rollout, wave: usize) -> Result<()> {
        let group = &r.groups[wave];
        let machines: Vec<String> = self
            .machines()
            .await?
            .into_iter()
            .filter(|m| Self::groups_of(m).contains(group))
            .map(|m| m.id)
            .collect();
        let s = Scenario {
            name: format!("rollout {} wave {wave} ({group})", r.name),
            action: patchcast_core::pipeline::Action::Install,
            packages: r.packages.clone(),
            machines: Vec::new(),
            groups: vec![group.clone()],
            max_concurrent: None,
            max_unverified_runs: 3,
            max_attempts: r.max_attempts,
            retry_delay_ms: r.retry_delay_ms,
            allow_reboot: false,
            timeout_secs: None,
            when: None,
            versions: Default::default(),
            rollback: false,
        };
        self.insert_scheduled(
            &wave_scenario(id, wave),
            &s,
            "rollout",
            group,
            Some((id, wave as u32)),
            &machines,
        )
        .await?;
        {
            let _w = self.write().await?;
            db::rollouts::set_wave(&self.db, id, wave as i64, self.now()).await?;
        }
        for m in &machines {
            self.wake(m);
        }
        tracing::info!(rollout = %id, wave, group = %group, machines = machines.len(), "rollout wave opened");
        Ok(())
    }

    async fn tallies(&self, id: &str, waves: usize) -> Result<Vec<Tally>> {
        let mut out = Vec::new();
        for w in 0..waves {
            let counts = db::deliveries::count_by_state(&self.db, &wave_scenario(id, w)).await?;
            let mut t = Tally::default();
            for (state, n) in counts {
                // A cancelled delivery was taken out of the wave by an administrator: it
                // neither passes nor fails it.
                if state == State::Cancelled.name() {
                    continue;
                }
                t.total += n;
                match Bucket::of_name(&state) {
                    Bucket::Applied => t.applied += n,
                    Bucket::NotApplicable => t.not_applicable += n,
                    b if b.fails_a_wave() => t.failed += n,
                    _ => {}
                }
            }
            out.push(t);
        }
        Ok(out)
    }

    /// One pass over running rollouts (the ticker, and before each status read).
    pub async fn evaluate_rollouts(&self) -> Result<()> {
        for (id, r, wave) in db::rollouts::running(&self.db).await? {
            let started = self.tallies(&id, wave as usize + 1).await?;
            let (state, reason) = match decide(&r, &started) {
                Decision::Keep => continue,
                Decision::OpenWave(w) => {
                    self.open_wave(&id, &r, w).await?;
                    continue;
                }
                Decision::Stop(why) => {
                    tracing::warn!(rollout = %id, why, "rollout stopped automatically");
                    (RolloutState::Stopped, why)
                }
                Decision::Complete => (
                    RolloutState::Completed,
                    "every wave cleared the threshold".into(),
                ),
            };
            let _w = self.write().await?;
            let mut tx = self.db.begin().await?;
            let running = RolloutState::Running.name();
            db::rollouts::change_state(&mut tx, &id, running, state, &reason, self.now()).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    pub async fn rollout_status(&self, id: &str) -> Result<RolloutStatus> {
        let Some(row) = db::rollouts::get(&self.db, id).await? else {
            bail!("no rollout `{id}`; see `patchcast rollout status`");
        };
        let r = row.spec;
        // Paused, stopped or aborted: no wave delivers, each wave's gate says which.
        let stopped = [
            RolloutState::Paused,
            RolloutState::Stopped,
            RolloutState::Aborted,
        ]
        .iter()
        .any(|s| s.name() == row.state);
        let state = row.state;
        let wave = row.wave as usize;
        let reason = row.reason;
        let tallies = self.tallies(id, wave + 1).await?;
        let mut waves = Vec::new();
        for (i, g) in r.groups.iter().enumerate() {
            let t = tallies.get(i).copied().unwrap_or_default();
            let (gate, why) = if i > wave {
                let prev = tallies.get(i - 1).copied().unwrap_or_default();
                if stopped {
                    (state.clone(), reason.clone())
                } else {
                    (
                        "waiting".to_string(),
                        format!(
                            "wave {} ({}) has applied {:.1}%, needs {:.1}%",
                            i - 1,
                            r.groups[i - 1],
                            prev.applied_permille() as f64 / 10.0,
                            r.success_permille as f64 / 10.0
                        ),
                    )
                }
            } else if stopped {
                (state.clone(), reason.clone())
            } else if t.applied_permille() >= r.success_permille {
                ("passed".to_string(), "cleared the success threshold".into())
            } else {
                ("open".to_string(), format!("delivering in {g}'s windows"))
            };
            waves.push(WaveStatus {
                index: i as u32,
                group: g.clone(),
                gate,
                why,
                total: t.total,
                applied: t.applied,
                not_applicable: t.not_applicable,
                failed: t.failed,
                in_progress: t.in_progress(),
                applied_permille: t.applied_permille(),
                failed_permille: t.failed_permille(),
            });
        }
        Ok(RolloutStatus {
            id: id.to_string(),
            name: r.name.clone(),
            state,
            reason,
            success_threshold_permille: r.success_permille,
            failure_limit_permille: r.failure_permille,
            packages: r.packages.iter().map(|p| p.to_string()).collect(),
            waves,
            created_at_ms: row.created_at,
        })
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutStatus>> {
        let ids = db::rollouts::ids(&self.db).await?;
        let mut out = Vec::new();
        for id in ids {
            out.push(self.rollout_status(&id).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Rollout {
        patchcast_core::model::rollout::load(
            "r.yaml",
            "name: r\npackages: [a]\npilot: { group: p, success_threshold: 80% }\nwaves: [{ group: w1 }]\nfailure_limit: 25%\n",
        )
        .unwrap()
    }

    fn t(total: u64, applied: u64, na: u64, failed: u64) -> Tally {
        Tally {
            total,
            applied,
            not_applicable: na,
            failed,
        }
    }

    #[test]
    fn the_pilot_gates_the_next_wave() {
        let r = rollout();
        assert_eq!(decide(&r, &[t(4, 2, 0, 0)]), Decision::Keep);
        // 3 of 4 applicable = 75% < 80%.
        assert_eq!(decide(&r, &[t(5, 3, 1, 0)]), Decision::Keep);
        assert_eq!(decide(&r, &[t(5, 4, 1, 0)]), Decision::OpenWave(1));
        assert_eq!(decide(&r, &[t(5, 4, 1, 0), t(2, 1, 0, 0)]), Decision::Keep);
        assert_eq!(
            decide(&r, &[t(5, 4, 1, 0), t(2, 2, 0, 0)]),
            Decision::Complete
        );
    }

    #[test]
    fn too_many_failures_stop_the_rollout() {
        let r = rollout();
        // 1 of 4 = 25%: at the limit, not over it.
        assert_eq!(decide(&r, &[t(4, 0, 0, 1)]), Decision::Keep);
        match decide(&r, &[t(4, 0, 0, 2)]) {
            Decision::Stop(why) => assert!(why.contains("wave 0 (p) failed 2 of 4"), "{why}"),
            d => panic!("{d:?}"),
        }
        // A later wave's failures stop it too, though the pilot passed.
        assert!(matches!(
            decide(&r, &[t(4, 4, 0, 0), t(2, 0, 0, 1)]),
            Decision::Stop(_)
        ));
    }
}
