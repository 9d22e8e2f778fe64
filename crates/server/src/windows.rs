//! Group windows on the server: policies stored per group, the gate the dispatcher asks
//! before it starts anything new on a machine, `schedule show`, and the ticker that keeps
//! automatic update and rollouts moving.
//!
//! What the gate enforces, in order:
//! 1. **Holds**, for every delivery whatever created it: a content type held by any group the
//!    machine is in does not start there. The server checks this at dispatch, so an agent that
//!    never received the hold setting still gets no held work (OfficeScan upgrade method 1's
//!    race cannot happen).
//! 2. **Windows**, for scheduled deliveries only (automatic update and rollout waves, listed in
//!    `scheduled`): they start inside an opening of their group's window, at or after the
//!    machine's own slot (`core::schedule::check_in_at`), so a fleet's starts are spread over
//!    `check_in_spread`. A delivery that waited through a whole opening (the machine was
//!    off) starts at once when the group says `run_missed_at_start`, otherwise at the next
//!    opening. Ad-hoc scenarios (`patchcast scenario run`) are an administrator's explicit
//!    "now" and do not wait for windows, as DeploymentManager's scenario execution does not
//!    wait for its auto-update time; scheduled work goes through `autoupdate` or `rollout`.
//! 3. **Transfer caps** (`caps`), for every delivery.
//!
//! Work already in flight is never stopped by a closing window: only starts are gated.

use super::Server;
use super::db;
use anyhow::Result;
use chrono::{DateTime, Utc};
use patchcast_core::model::group_policy::{ContentKind, GroupPolicy};
use patchcast_core::model::raw::RawKind;
use patchcast_core::model::rollout::RolloutState;
use patchcast_core::schedule::{Occurrence, check_in_at};
use patchcast_proto::admin_api::MachineView;
use patchcast_proto::schedule_api::{GroupSchedule, Opening, PolicyView};
use std::sync::Arc;
use std::time::Duration;

/// The dispatcher's answer for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Open,
    /// Not now; look again at `until` (unix ms, server time) when known.
    Wait {
        until: Option<i64>,
        why: String,
    },
}

pub use super::db::scenarios::Scheduled;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// When `machine` may start scheduled work under `p` at `now`: `Ok(())` or the time of its
/// next slot. Pure; `since` is when the delivery last moved (for missed openings).
pub fn window_gate(
    p: &GroupPolicy,
    machine: &str,
    now: i64,
    since: i64,
) -> std::result::Result<(), Option<i64>> {
    let windows = p.windows();
    if windows.is_empty() {
        return Ok(());
    }
    let t = at(now);
    let mut next: Option<i64> = None;
    let mut consider = |o: Occurrence| {
        let slot = ms(check_in_at(machine, &o, p.spread()));
        next = Some(next.map_or(slot, |n: i64| n.min(slot)));
        slot
    };
    for w in &windows {
        if let Some(o) = w.open_at(t)
            && consider(o) <= now
        {
            return Ok(());
        }
        if let Some(o) = w.next_after(t) {
            consider(o);
        }
    }
    if p.run_missed_at_start && missed(p, since, now) {
        return Ok(());
    }
    Err(next)
}

/// Whether a whole opening passed between `since` and `now` (the machine missed it).
pub fn missed(p: &GroupPolicy, since: i64, now: i64) -> bool {
    let (s, n) = (at(since), at(now));
    p.windows().iter().any(|w| {
        w.open_at(s).is_some_and(|o| o.end <= n) || w.next_after(s).is_some_and(|o| o.end <= n)
    })
}

impl Server {
    pub async fn set_policy_row(&self, p: &GroupPolicy) -> Result<u64> {
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let version = db::policies::replace(&mut tx, p, self.now()).await?;
        tx.commit().await?;
        self.tables_changed();
        Ok(version as u64)
    }

    /// Every group's policy; read on every check-in, so kept between changes (`cache`).
    pub async fn policies(&self) -> Result<Arc<Vec<PolicyView>>> {
        self.cached
            .policies
            .get(|| db::policies::list(&self.db))
            .await
    }

    /// Names of the groups `m` is in: groups that resolve it, and its enrollment group.
    pub fn groups_of(m: &MachineView) -> Vec<String> {
        let mut g = m.groups.clone();
        if let Some(e) = &m.enroll_group
            && !g.contains(e)
        {
            g.push(e.clone());
        }
        g
    }

    pub async fn machine(&self, id: &str) -> Result<Option<MachineView>> {
        self.machine_by_id(id).await
    }

    /// The policies of the groups `machine` is in.
    pub async fn policies_of(&self, m: &MachineView) -> Result<Vec<PolicyView>> {
        let groups = Self::groups_of(m);
        Ok(self
            .policies()
            .await?
            .iter()
            .filter(|p| groups.contains(&p.policy.group))
            .cloned()
            .collect())
    }

    async fn package_kind(&self, package: &str) -> Result<Option<ContentKind>> {
        let manifest = db::packages::manifest(&self.db, package).await?;
        Ok(manifest.and_then(|m| {
            serde_json::from_str::<patchcast_pack::archive::Manifest>(&m)
                .ok()
                .map(|m| ContentKind::from(m.package.kind as RawKind))
        }))
    }

    /// How a scenario was scheduled, if it was: written with the scenario and never changed,
    /// so read once per process (a dispatch asks for every delivery).
    pub async fn scheduled(&self, scenario_id: &str) -> Result<Option<Scheduled>> {
        let found = self
            .cached
            .scheduled
            .get(&scenario_id.to_string(), || async {
                Ok(Some(db::scenarios::scheduled(&self.db, scenario_id).await?))
            })
            .await?;
        Ok(found.flatten())
    }

    /// May `delivery` (of `scenario_id`, `package`) start on `machine` now? See the module doc.
    pub async fn gate(
        &self,
        machine: &str,
        scenario_id: &str,
        package: &str,
        delivery_id: &str,
        now: i64,
    ) -> Result<Gate> {
        let all = self.policies().await?;
        // The common case of a server without policies reads nothing per machine.
        if all.is_empty() {
            return self.rollout_gate(scenario_id).await;
        }
        let Some(m) = self.machine(machine).await? else {
            return Ok(Gate::Open);
        };
        let policies = self.policies_of(&m).await?;
        if let Some(kind) = self.package_kind(package).await?
            && let Some(p) = policies.iter().find(|p| p.policy.holds(kind))
        {
            return Ok(Gate::Wait {
                until: None,
                why: format!("{kind} updates are held on group {}", p.policy.group),
            });
        }
        if let Gate::Wait { until, why } = self.rollout_gate(scenario_id).await? {
            return Ok(Gate::Wait { until, why });
        }
        if let Some(s) = self.scheduled(scenario_id).await?
            && let Some(p) = policies.iter().find(|p| p.policy.group == s.group)
        {
            let since = db::deliveries::updated_at(&self.db, delivery_id).await?;
            if let Err(until) = window_gate(&p.policy, machine, now, since) {
                return Ok(Gate::Wait {
                    until,
                    why: format!("outside group {}'s window", s.group),
                });
            }
        }
        Ok(Gate::Open)
    }

    /// Scheduled deliveries of a stopped rollout, or of a withdrawn automatic-update
    /// assignment, no longer start.
    async fn rollout_gate(&self, scenario_id: &str) -> Result<Gate> {
        let Some(s) = self.scheduled(scenario_id).await? else {
            return Ok(Gate::Open);
        };
        if let Some(r) = &s.rollout_id {
            let state = db::rollouts::state(&self.db, r).await?;
            if state.as_deref() != Some(RolloutState::Running.name()) {
                return Ok(Gate::Wait {
                    until: None,
                    why: format!("rollout {r} is {}", state.unwrap_or("gone".into())),
                });
            }
        }
        if s.kind == "autoupdate" {
            let package = scenario_id.rsplit(':').next().unwrap_or_default();
            if !self.still_assigned(&s.group, package).await? {
                return Ok(Gate::Wait {
                    until: None,
                    why: format!("{package} is no longer assigned to {}", s.group),
                });
            }
        }
        Ok(Gate::Open)
    }

    /// Upcoming openings per group with a policy (or one group), for `schedule show`.
    pub async fn schedule(&self, group: Option<&str>, count: usize) -> Result<Vec<GroupSchedule>> {
        let now = self.now();
        let assignments = self.assignments().await?;
        let mut out = Vec::new();
        for v in self.policies().await?.iter() {
            let p = v.policy.clone();
            if group.is_some_and(|g| g != p.group) {
                continue;
            }
            let mut openings: Vec<Opening> = Vec::new();
            for (spec, w) in p.windows.iter().zip(p.windows()) {
                for o in w.upcoming(at(now), count) {
                    let tz: chrono_tz::Tz = spec.time_zone.parse().unwrap_or(chrono_tz::UTC);
                    openings.push(Opening {
                        start_ms: ms(o.start),
                        end_ms: ms(o.end),
                        start_local: o.start.with_timezone(&tz).to_rfc3339(),
                        end_local: o.end.with_timezone(&tz).to_rfc3339(),
                        time_zone: spec.time_zone.clone(),
                        cron: spec.start.clone(),
                        open_now: o.contains(at(now)),
                    });
                }
            }
            openings.sort_by_key(|o| o.start_ms);
            openings.truncate(count);
            out.push(GroupSchedule {
                group: p.group.clone(),
                now_ms: now,
                openings,
                blackout_dates: p.blackout_dates.iter().map(|d| d.to_string()).collect(),
                hold: p.hold.clone(),
                run_missed_at_start: p.run_missed_at_start,
                check_in_spread_secs: p.check_in_spread_secs,
                auto_update: assignments
                    .iter()
                    .filter(|a| a.group == p.group)
                    .map(|a| a.package_id.clone())
                    .collect(),
            });
        }
        if let Some(g) = group
            && out.is_empty()
        {
            anyhow::bail!(
                "group `{g}` has no policy; set one with `patchcast schedule set groups/{g}.yaml`"
            );
        }
        Ok(out)
    }

    /// This machine's next slot in any of its groups' windows (for `PollResponse`).
    pub async fn next_check_in(&self, machine: &str) -> Result<Option<i64>> {
        if self
            .policies()
            .await?
            .iter()
            .all(|p| p.policy.windows.is_empty())
        {
            return Ok(None);
        }
        let Some(m) = self.machine(machine).await? else {
            return Ok(None);
        };
        let now = self.now();
        let mut best: Option<i64> = None;
        for v in self.policies_of(&m).await? {
            for w in v.policy.windows() {
                let o = w.open_at(at(now)).or_else(|| w.next_after(at(now)));
                if let Some(o) = o {
                    let slot = ms(check_in_at(machine, &o, v.policy.spread()));
                    let slot = if slot < now {
                        w.next_after(at(now))
                            .map(|o| ms(check_in_at(machine, &o, v.policy.spread())))
                    } else {
                        Some(slot)
                    };
                    if let Some(s) = slot {
                        best = Some(best.map_or(s, |b: i64| b.min(s)));
                    }
                }
            }
        }
        Ok(best)
    }
}

/// Every two seconds: automatic-update deliveries for new machines and assignments, rollout
/// gates. Errors are logged and the next tick tries again.
pub fn spawn_ticker(server: Arc<Server>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if !server.cluster.leader() {
                continue;
            }
            if server.cluster.shared()
                && let Err(e) = super::ssh_worker::start_all(server.clone()).await
            {
                tracing::error!("starting SSH workers failed: {e:#}");
            }
            if let Err(e) = server.materialize_autoupdate().await {
                tracing::error!("automatic update pass failed: {e:#}");
            }
            if let Err(e) = server.evaluate_rollouts().await {
                tracing::error!("rollout gate pass failed: {e:#}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchcast_core::model::group_policy::load;

    fn t(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn policy(extra: &str) -> GroupPolicy {
        load(
            "g.yaml",
            &format!(
                "group: g\nwindows:\n  - {{ start: '0 2 * * *', duration: 2h }}\ncheck_in_spread: 0s\n{extra}"
            ),
        )
        .unwrap()
    }

    #[test]
    fn inside_and_outside_the_window() {
        let p = policy("");
        let since = t("2026-11-20T12:00:00Z");
        assert_eq!(
            window_gate(&p, "m", t("2026-11-21T02:30:00Z"), since),
            Ok(())
        );
        assert_eq!(
            window_gate(
                &p,
                "m",
                t("2026-11-21T05:00:00Z"),
                t("2026-11-21T04:59:00Z")
            ),
            Err(Some(t("2026-11-22T02:00:00Z")))
        );
    }

    #[test]
    fn missed_openings_run_at_start_only_when_asked() {
        // Created before the 21st's window, the machine came back after it ended.
        let since = t("2026-11-20T12:00:00Z");
        let back = t("2026-11-21T09:00:00Z");
        assert!(missed(&policy(""), since, back));
        assert_eq!(
            window_gate(&policy(""), "m", back, since),
            Err(Some(t("2026-11-22T02:00:00Z")))
        );
        assert_eq!(
            window_gate(&policy("run_missed_at_start: true\n"), "m", back, since),
            Ok(())
        );
        // Nothing missed yet: created after the last window closed.
        assert!(!missed(&policy(""), t("2026-11-21T05:00:00Z"), back));
    }

    #[test]
    fn slots_are_spread_inside_the_opening() {
        let p = load(
            "g.yaml",
            "group: g\nwindows:\n  - { start: '0 2 * * *', duration: 2h }\ncheck_in_spread: 30m\n",
        )
        .unwrap();
        let since = t("2026-11-20T12:00:00Z");
        let mut slots = std::collections::BTreeSet::new();
        for i in 0..20 {
            let m = format!("m-{i}");
            let Err(Some(slot)) = window_gate(&p, &m, t("2026-11-21T01:00:00Z"), since) else {
                panic!("closed before 02:00")
            };
            assert!((t("2026-11-21T02:00:00Z")..t("2026-11-21T02:30:00Z")).contains(&slot));
            assert_eq!(window_gate(&p, &m, slot, since), Ok(()));
            slots.insert(slot);
        }
        assert!(slots.len() > 15, "slots spread: {slots:?}");
    }
}
