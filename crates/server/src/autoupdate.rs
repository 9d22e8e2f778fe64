//! Automatic update (DeploymentManager's 自動更新): packages assigned to groups are delivered
//! to every machine of the group that needs them, in the group's windows, with no scenario run.
//!
//! Each assignment is carried by one scheduled scenario row (`au:<group>:<package>`, listed in
//! `scheduled`), so its deliveries go through the same dispatcher, state machine, results and
//! loop breaker as any scenario; only its policy differs: `max_attempts` 0, i.e. re-delivery at
//! every opportunity until applied, as DeploymentManager does. A ticker adds a pending delivery
//! for each machine of the group that has none yet; the window gate decides when it starts.
//!
//! Pre-filter: the machine's inventory (OS, architecture, language, service pack, installed
//! updates) goes through `core::identify`; a machine the package does not target, or where the
//! inventory already shows it applied, gets no delivery (it is looked at again on later ticks,
//! so a changed inventory is picked up). Anything the inventory cannot tell is delivered, and
//! the agent's own identification on the machine decides.

use super::Server;
use super::db;
use anyhow::{Result, bail};
use patchcast_core::identify::{Facts, Verdict, identify};
use patchcast_core::model::package::Package;
use patchcast_core::model::scenario::{DEFAULT_RETRY_DELAY_MS, Scenario};
use patchcast_core::model::types::{PackageId, UpdateId};
use patchcast_proto::admin_api::MachineView;
use patchcast_proto::schedule_api::{Assign, Assignment};
use std::collections::HashSet;

pub fn scenario_id(group: &str, package: &str) -> String {
    format!("au:{group}:{package}")
}

/// Facts the inventory can vouch for; everything else stays unknown.
pub fn inventory_facts(m: &MachineView) -> Facts {
    let inv = &m.inventory;
    let windows = inv.os.starts_with("windows");
    Facts {
        os: inv.os.clone(),
        arch: inv.arch.clone(),
        language: inv.language.clone(),
        service_pack: inv.service_pack.as_deref().and_then(|s| {
            let (a, b) = s.split_once('.').unwrap_or((s, "0"));
            Some(patchcast_core::model::package::SpLevel {
                major: a.trim().parse().ok()?,
                minor: b.trim().parse().ok()?,
            })
        }),
        // Only Windows inventories list installed updates; elsewhere the list means nothing.
        installed_updates: windows.then(|| {
            inv.installed_updates
                .iter()
                .filter_map(|u| u.parse::<UpdateId>().ok())
                .collect()
        }),
        ..Facts::default()
    }
}

/// Whether the inventory alone shows there is nothing to deliver (and why).
pub fn needless(pkg: &Package, m: &MachineView) -> Option<String> {
    match identify(pkg, &inventory_facts(m)).verdict {
        Verdict::Applied => Some("applied according to the inventory".into()),
        Verdict::NotApplicable(r) => Some(r),
        _ => None,
    }
}

impl Server {
    pub async fn assignments(&self) -> Result<Vec<Assignment>> {
        db::policies::assignments(&self.db).await
    }

    /// Assigns (or withdraws) automatic update for `who`, with its audit entry in the same
    /// transaction.
    pub async fn assign(&self, a: &Assign, who: &crate::actions::Actor) -> Result<Vec<Assignment>> {
        a.package_id
            .parse::<PackageId>()
            .map_err(|e| anyhow::anyhow!(e.0))?;
        anyhow::ensure!(!a.group.trim().is_empty(), "the group name is empty");
        {
            let _w = self.write().await?;
            let mut tx = self.db.begin().await?;
            if a.assign {
                if !db::packages::exists(&mut tx, &a.package_id).await? {
                    bail!(
                        "package `{}` is not published on this server; publish it with `patchcast package publish DIR --key KEY`",
                        a.package_id
                    );
                }
                db::policies::assign(&mut tx, &a.group, &a.package_id, self.now()).await?;
            } else if !db::policies::unassign(&mut tx, &a.group, &a.package_id).await? {
                bail!(
                    "package `{}` is not assigned to group `{}`; see `patchcast autoupdate list`",
                    a.package_id,
                    a.group
                );
            }
            let (action, what) = if a.assign {
                (
                    "autoupdate.assign",
                    "delivered automatically to the group's machines",
                )
            } else {
                ("autoupdate.unassign", "no longer delivered automatically")
            };
            db::audit::insert(
                &mut tx,
                &who.0,
                action,
                &format!("{}/{}", a.group, a.package_id),
                &format!("package {} {what} (group {})", a.package_id, a.group),
                db::now_ms(),
            )
            .await?;
            tx.commit().await?;
        }
        if a.assign {
            self.materialize_autoupdate().await?;
        }
        tracing::info!(group = %a.group, package = %a.package_id, assign = a.assign, "automatic update assignment changed");
        self.assignments().await
    }

    /// Pending deliveries for machines of assigned groups that have none yet.
    pub async fn materialize_autoupdate(&self) -> Result<u64> {
        let assignments = self.assignments().await?;
        if assignments.is_empty() {
            return Ok(0);
        }
        let machines = self.machines().await?;
        let mut created = 0;
        let mut woken = HashSet::new();
        for a in &assignments {
            let Some(pkg) = self.package_model(&a.package_id).await? else {
                continue;
            };
            let sid = scenario_id(&a.group, &a.package_id);
            let scenario = Scenario {
                name: format!("autoupdate {}: {}", a.group, a.package_id),
                action: patchcast_core::pipeline::Action::Install,
                packages: vec![pkg.id.clone()],
                machines: Vec::new(),
                groups: vec![a.group.clone()],
                max_concurrent: None,
                max_unverified_runs: 3,
                max_attempts: 0,
                retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
                allow_reboot: false,
                timeout_secs: None,
                when: None,
                versions: Default::default(),
                rollback: false,
            };
            let members: Vec<&MachineView> = machines
                .iter()
                .filter(|m| Self::groups_of(m).contains(&a.group))
                .collect();
            let have: HashSet<String> = db::deliveries::machines_of(&self.db, &sid)
                .await?
                .into_iter()
                .collect();
            let todo: Vec<String> = members
                .iter()
                .filter(|m| !have.contains(&m.id))
                .filter(|m| match needless(&pkg, m) {
                    Some(why) => {
                        tracing::debug!(machine = %m.id, package = %a.package_id, why, "automatic update not needed");
                        false
                    }
                    None => true,
                })
                .map(|m| m.id.clone())
                .collect();
            if todo.is_empty() {
                continue;
            }
            created += self
                .insert_scheduled(&sid, &scenario, "autoupdate", &a.group, None, &todo)
                .await?;
            woken.extend(todo);
        }
        for m in woken {
            self.wake(&m);
        }
        Ok(created)
    }

    /// The published package's resolved definition (from its signed manifest).
    pub async fn package_model(&self, id: &str) -> Result<Option<Package>> {
        let Some(m) = db::packages::manifest(&self.db, id).await? else {
            return Ok(None);
        };
        let m: patchcast_pack::archive::Manifest = serde_json::from_str(&m)?;
        Ok(patchcast_core::model::package::resolve(&m.package).0)
    }

    /// Writes (once) the scenario row and its `scheduled` entry, then one pending delivery per
    /// machine × package, in one transaction. Returns the deliveries written.
    pub async fn insert_scheduled(
        &self,
        scenario_id: &str,
        s: &Scenario,
        kind: &str,
        group: &str,
        rollout: Option<(&str, u32)>,
        machines: &[String],
    ) -> Result<u64> {
        let _w = self.write().await?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        if !db::scenarios::exists(&mut tx, scenario_id).await? {
            db::scenarios::insert(&mut tx, scenario_id, s, now).await?;
            db::scenarios::insert_scheduled(&mut tx, scenario_id, kind, group, rollout).await?;
        }
        let mut shas = Vec::new();
        for p in &s.packages {
            match db::packages::archive_sha256(&mut tx, p.as_str()).await? {
                Some(sha) => shas.push(sha),
                None => bail!("package `{p}` is not published on this server"),
            }
        }
        let new = super::scenarios::pending(scenario_id, machines, s, &shas, now)?;
        super::scenarios::write_pending(&mut tx, &new).await?;
        let n = new.len() as u64;
        tx.commit().await?;
        if n > 0 {
            tracing::info!(scenario = %scenario_id, machines = machines.len(), deliveries = n, "scheduled deliveries created");
        }
        Ok(n)
    }

    /// Whether an automatic-update scenario's assignment still stands.
    pub async fn still_assigned(&self, group: &str, package: &str) -> Result<bool> {
        db::policies::is_assigned(&self.db, group, package).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchcast_proto::protocol::Inventory;

    fn machine(os: &str, sp: Option<&str>, updates: &[&str]) -> MachineView {
        MachineView {
            id: "m".into(),
            hostname: "h".into(),
            peer_address: "127.0.0.1".into(),
            inventory: Inventory {
                os: os.into(),
                arch: "x86".into(),
                language: "ja".into(),
                service_pack: sp.map(String::from),
                installed_updates: updates.iter().map(|s| s.to_string()).collect(),
                ..Inventory::default()
            },
            labels: vec![],
            enroll_group: None,
            groups: vec![],
            enrolled_at_ms: 0,
            last_seen_ms: 0,
            agent_state: "idle".into(),
        }
    }

    fn pkg(yaml: &str) -> Package {
        let raw: patchcast_core::model::raw::RawPackage =
            patchcast_core::model::yaml::parse(yaml).unwrap().0;
        let (p, problems) = patchcast_core::model::package::resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:?}"))
    }

    #[test]
    fn the_inventory_prefilters_only_what_it_can_tell() {
        let hotfix = pkg(
            "id: kb1\nkind: hotfix\ntitle: t\nkb: KB958644\ntargets: [{ os: windows-server-2003 }]\npayload: [a.exe]\ninstall: { command: a.exe }\n",
        );
        // Another OS: not applicable, no delivery.
        assert!(needless(&hotfix, &machine("debian-12", None, &[])).is_some());
        // Listed as installed: already applied.
        assert!(
            needless(
                &hotfix,
                &machine("windows-server-2003-enterprise", None, &["KB958644"])
            )
            .is_some()
        );
        // Not listed: delivered (the agent identifies it on the machine).
        assert!(
            needless(
                &hotfix,
                &machine("windows-server-2003-enterprise", None, &[])
            )
            .is_none()
        );
    }
}
