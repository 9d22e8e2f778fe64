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
use crate::core::delivery::Delivery;
use crate::core::identify::{Facts, Verdict, identify};
use crate::model::package::Package;
use crate::model::scenario::{DEFAULT_RETRY_DELAY_MS, Scenario};
use crate::model::types::{PackageId, UpdateId};
use crate::transport::admin_api::MachineView;
use crate::transport::schedule_api::{Assign, Assignment};
use anyhow::{Result, bail};
use sqlx::Row;
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
            Some(crate::model::package::SpLevel {
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
        let rows = sqlx::query(
            "SELECT grp, package_id, assigned_at FROM autoupdate ORDER BY grp, package_id",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Assignment {
                    group: r.try_get("grp")?,
                    package_id: r.try_get("package_id")?,
                    assigned_at_ms: r.try_get("assigned_at")?,
                })
            })
            .collect()
    }

    pub async fn assign(&self, a: &Assign) -> Result<Vec<Assignment>> {
        a.package_id
            .parse::<PackageId>()
            .map_err(|e| anyhow::anyhow!(e.0))?;
        anyhow::ensure!(!a.group.trim().is_empty(), "the group name is empty");
        {
            let _w = self.write.lock().await;
            let mut tx = self.db.begin().await?;
            if a.assign {
                let published: Option<String> =
                    sqlx::query_scalar("SELECT id FROM packages WHERE id = $1")
                        .bind(&a.package_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if published.is_none() {
                    bail!(
                        "package `{}` is not published on this server; publish it with `patchcast package publish DIR --key KEY`",
                        a.package_id
                    );
                }
                sqlx::query("DELETE FROM autoupdate WHERE grp = $1 AND package_id = $2")
                    .bind(&a.group)
                    .bind(&a.package_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO autoupdate (grp, package_id, assigned_at) VALUES ($1, $2, $3)",
                )
                .bind(&a.group)
                .bind(&a.package_id)
                .bind(self.now())
                .execute(&mut *tx)
                .await?;
            } else {
                let n = sqlx::query("DELETE FROM autoupdate WHERE grp = $1 AND package_id = $2")
                    .bind(&a.group)
                    .bind(&a.package_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    bail!(
                        "package `{}` is not assigned to group `{}`; see `patchcast autoupdate list`",
                        a.package_id,
                        a.group
                    );
                }
            }
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
                packages: vec![pkg.id.clone()],
                machines: Vec::new(),
                groups: vec![a.group.clone()],
                max_concurrent: None,
                max_unverified_runs: 3,
                max_attempts: 0,
                retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
                allow_reboot: false,
                timeout_secs: None,
            };
            let members: Vec<&MachineView> = machines
                .iter()
                .filter(|m| Self::groups_of(m).contains(&a.group))
                .collect();
            let have: HashSet<String> =
                sqlx::query_scalar("SELECT machine_id FROM deliveries WHERE scenario_id = $1")
                    .bind(&sid)
                    .fetch_all(&self.db)
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
        let manifest: Option<String> =
            sqlx::query_scalar("SELECT manifest FROM packages WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db)
                .await?;
        let Some(m) = manifest else { return Ok(None) };
        let m: crate::pack::archive::Manifest = serde_json::from_str(&m)?;
        Ok(crate::model::package::resolve(&m.package).0)
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
        let _w = self.write.lock().await;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM scenarios WHERE id = $1")
            .bind(scenario_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            sqlx::query(
                "INSERT INTO scenarios (id, name, spec, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(scenario_id)
            .bind(&s.name)
            .bind(serde_json::to_string(s)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO scheduled (scenario_id, kind, grp, rollout_id, wave) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(scenario_id)
            .bind(kind)
            .bind(group)
            .bind(rollout.map(|r| r.0.to_string()))
            .bind(rollout.map(|r| r.1 as i64))
            .execute(&mut *tx)
            .await?;
        }
        let mut shas = Vec::new();
        for p in &s.packages {
            let sha: Option<String> =
                sqlx::query_scalar("SELECT archive_sha256 FROM packages WHERE id = $1")
                    .bind(p.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            match sha {
                Some(sha) => shas.push(sha),
                None => bail!("package `{p}` is not published on this server"),
            }
        }
        let fresh = serde_json::to_string(&Delivery::default())?;
        let mut n = 0;
        for m in machines {
            for (pos, (p, sha)) in s.packages.iter().zip(&shas).enumerate() {
                sqlx::query(
                    "INSERT INTO deliveries (id, scenario_id, machine_id, package_id, position, delivery, state, attempt, \
                     last_seq, deadline, retry_at, detail, updated_at, events, archive_sha256) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, 0, NULL, NULL, '{}', $7, 0, $8)",
                )
                .bind(format!("d-{}", super::random_hex(8)?))
                .bind(scenario_id)
                .bind(m)
                .bind(p.as_str())
                .bind(pos as i64)
                .bind(&fresh)
                .bind(now)
                .bind(sha)
                .execute(&mut *tx)
                .await?;
                n += 1;
            }
        }
        tx.commit().await?;
        if n > 0 {
            tracing::info!(scenario = %scenario_id, machines = machines.len(), deliveries = n, "scheduled deliveries created");
        }
        Ok(n)
    }

    /// Whether an automatic-update scenario's assignment still stands.
    pub async fn still_assigned(&self, group: &str, package: &str) -> Result<bool> {
        let v: Option<String> = sqlx::query_scalar(
            "SELECT package_id FROM autoupdate WHERE grp = $1 AND package_id = $2",
        )
        .bind(group)
        .bind(package)
        .fetch_optional(&self.db)
        .await?;
        Ok(v.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::Inventory;

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
        let raw: crate::model::raw::RawPackage = crate::model::yaml::parse(yaml).unwrap().0;
        let (p, problems) = crate::model::package::resolve(&raw);
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
