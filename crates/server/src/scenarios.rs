//! Scenario runs: a checked scenario becomes one delivery per machine × package, all pending,
//! written in one transaction; the dispatcher takes it from there.

use super::Server;
use super::actions::Actor;
use super::db::{self, deliveries::NewDelivery};
use super::machines::in_group;
use anyhow::{Result, bail};
use patchcast_core::machine_names;
use patchcast_core::model::scenario::Scenario;
use patchcast_core::pipeline::Action;
use patchcast_pack::archive::Manifest;
use patchcast_proto::admin_api::ScenarioCreated;

impl Server {
    /// Starts a scenario for `who`, with its audit entry in the same transaction.
    pub async fn create_scenario(&self, s: &Scenario, who: &Actor) -> Result<ScenarioCreated> {
        // A scenario posted to the API is checked again: a client may send any values.
        if let Some((path, msg)) = s.problems().into_iter().next() {
            bail!("the scenario is refused: {path}: {msg}");
        }
        let machines = self.machines().await?;
        let groups = self.groups().await?;
        let mut targets: Vec<String> = Vec::new();
        // Kept in order; the set makes each check constant time at fleet size.
        let mut seen = std::collections::HashSet::new();
        let mut add = |id: &String| {
            if seen.insert(id.clone()) {
                targets.push(id.clone());
            }
        };
        for name in &s.machines {
            let id = machine_names::resolve(
                name,
                machines
                    .iter()
                    .map(|m| (m.id.as_str(), m.hostname.as_str())),
            )
            .map_err(|e| anyhow::anyhow!("scenario target: {e}"))?;
            add(&id);
        }
        for g in &s.groups {
            let Some(v) = groups.iter().find(|v| v.group.name == *g) else {
                bail!(
                    "scenario target group `{g}` does not exist; create it with `patchcast group create {g} …`"
                );
            };
            for m in machines.iter().filter(|m| in_group(&v.group, m)) {
                add(&m.id);
            }
        }
        if targets.is_empty() {
            bail!(
                "the scenario's targets resolve to no machine; check `patchcast group list` and `patchcast machine list`"
            );
        }
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let mut shas = Vec::new();
        for p in &s.packages {
            match db::packages::archive_sha256(&mut tx, p.as_str()).await? {
                Some(sha) => shas.push(sha),
                None => bail!(
                    "package `{p}` is not published on this server; publish it with `patchcast package publish DIR --key KEY`"
                ),
            }
            if let Some(version) = s.versions.get(p) {
                let sha = pinned(&mut tx, p.as_str(), version, s.rollback).await?;
                *shas.last_mut().expect("pushed above") = sha;
            }
            if s.action == Action::Uninstall {
                let manifest = db::packages::manifest(&self.db, p.as_str()).await?;
                let m: Option<Manifest> = manifest.and_then(|m| serde_json::from_str(&m).ok());
                if m.is_none_or(|m| m.package.uninstall.is_none()) {
                    bail!(
                        "package `{p}` has no uninstall command, so it cannot be uninstalled; add `uninstall:` to it and publish it again"
                    );
                }
            }
        }
        let id = format!("s-{}", super::random_hex(6)?);
        let now = self.now();
        db::scenarios::insert(&mut tx, &id, s, now).await?;
        let new = pending(&id, &targets, s, &shas, now)?;
        write_pending(&mut tx, &new).await?;
        let n = new.len() as u64;
        let what = format!(
            "{} of {} on {} machines ({} deliveries): {}",
            if s.action == Action::Uninstall {
                "uninstall"
            } else {
                "install"
            },
            s.packages
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            targets.len(),
            n,
            s.name
        );
        db::audit::insert(&mut tx, &who.0, "scenario.start", &id, &what, db::now_ms()).await?;
        tx.commit().await?;
        drop(_w);
        for m in &targets {
            self.wake(m);
        }
        tracing::info!(scenario = %id, name = %s.name, machines = targets.len(), deliveries = n, "scenario started");
        Ok(ScenarioCreated {
            id,
            deliveries: n,
            machines: targets,
        })
    }
}

/// Writes `new`, `db::CHUNK` to a statement: a scenario for 100,000 machines is
/// 2,000 statements, not 100,000.
pub(crate) async fn write_pending(tx: &mut db::Conn, new: &[NewDelivery<'_>]) -> Result<()> {
    for chunk in new.chunks(db::CHUNK) {
        db::deliveries::insert_pending(&mut *tx, chunk).await?;
    }
    Ok(())
}

/// The pending deliveries of scenario `id` (its packages `s.packages`, archives `shas`) on
/// `machines`, each machine's in the scenario's order.
pub(crate) fn pending<'a>(
    id: &'a str,
    machines: &'a [String],
    s: &'a Scenario,
    shas: &'a [String],
    now: i64,
) -> Result<Vec<NewDelivery<'a>>> {
    let mut new = Vec::with_capacity(machines.len() * s.packages.len());
    for m in machines {
        for (pos, (p, sha)) in s.packages.iter().zip(shas).enumerate() {
            new.push(NewDelivery {
                id: format!("d-{}", super::random_hex(8)?),
                scenario_id: id,
                machine_id: m,
                package_id: p.as_str(),
                position: pos as i64,
                archive_sha256: sha,
                now,
            });
        }
    }
    Ok(new)
}

/// The archive of version `version` of package `id` a scenario names (`ID@VERSION`); refused
/// when that version is not published, or is older than the current one without the
/// scenario's `rollback` (`core::lifecycle::publish`, as for a publish).
async fn pinned(tx: &mut db::Conn, id: &str, version: &str, rollback: bool) -> Result<String> {
    use patchcast_core::lifecycle::{Publish, publish};
    let Some(old) = db::packages::version(tx, id, version).await? else {
        bail!(
            "package `{id}` has no published version {version}; `patchcast package versions {id}` lists them"
        );
    };
    let package = |m: &str| -> Result<_> {
        let m: Manifest = serde_json::from_str(m)?;
        Ok(patchcast_core::model::package::resolve(&m.package).0)
    };
    let current = db::packages::for_work(tx, id).await?;
    let (Some(current), Some(named)) = (package(&current.manifest)?, package(&old.manifest)?)
    else {
        bail!("package `{id}`: a published manifest no longer resolves");
    };
    if let Publish::RefuseOlder { current, offered } = publish(Some(&current), &named, rollback) {
        bail!(
            "package `{id}` {offered} is older than the current {current}; a scenario delivers an older version only with `options: {{ rollback: true }}`"
        );
    }
    Ok(old.archive_sha256)
}
