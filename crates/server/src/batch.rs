//! What the dispatches of one group (`group_commit`) share inside its transaction: reads
//! made once for all its machines instead of once each, and transitions written together
//! at the end (`db::deliveries::record`), so a group of 256 polls costs a handful of
//! statements rather than five each.
//!
//! The reads stay true within the group because a machine's deliveries are moved only by
//! its own dispatch (the group's reports were applied before the reads). What a machine's
//! own transitions make stale, it reads afresh (`touched`); before any read that could see
//! another machine's deliveries, or a write of its own, the deferred transitions are written
//! first (`flush`).

use super::db::{self, deliveries::DeliveryRow, deliveries::NewEvent, packages::WorkPackage};
use anyhow::Result;
use patchcast_core::delivery::State;
use patchcast_core::pipeline::Action;
use std::collections::{HashMap, HashSet};

pub type AppliedOrBusy = Vec<(String, State, Action)>;

#[derive(Default)]
pub struct Batch {
    /// Each machine's unfinished deliveries, moved in place by its dispatch.
    pub unfinished: HashMap<String, Vec<DeliveryRow>>,
    /// Each machine's packages applied or busy, as read at the start of the group.
    applied_or_busy: HashMap<String, AppliedOrBusy>,
    /// The manifest each unfinished delivery's archive carries (immutable).
    pub manifests: HashMap<String, String>,
    /// Current packages, read once per group.
    packages: HashMap<String, WorkPackage>,
    /// Machines with a transition in this group: their `applied_or_busy` is stale.
    touched: HashSet<String>,
    /// Transitions not written yet, each with its row as it left it.
    rows: Vec<DeliveryRow>,
    events: Vec<NewEvent>,
}

impl Batch {
    /// Reads what the dispatches of `machines` need, three statements for all of them.
    pub async fn read(tx: &mut sqlx::AnyConnection, machines: &[&str]) -> Result<Batch> {
        let unfinished = db::deliveries::unfinished_of_machines(&mut *tx, machines).await?;
        let ids: Vec<&str> = unfinished
            .values()
            .flatten()
            .map(|r| r.id.as_str())
            .collect();
        let manifests = db::deliveries::manifests_of(&mut *tx, &ids).await?;
        let applied_or_busy =
            db::deliveries::applied_or_busy_of_machines(&mut *tx, machines).await?;
        Ok(Batch {
            unfinished,
            applied_or_busy,
            manifests,
            ..Batch::default()
        })
    }

    /// A transition to write with the group (`r` as it left it).
    pub fn defer(&mut self, r: &DeliveryRow, e: NewEvent) {
        self.touched.insert(r.machine_id.clone());
        self.rows.push(r.clone());
        self.events.push(e);
    }

    /// Writes the deferred transitions (each row once, as its last transition left it).
    pub async fn flush(&mut self, tx: &mut sqlx::AnyConnection, now: i64) -> Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let mut last: HashMap<&str, &DeliveryRow> = HashMap::new();
        for r in &self.rows {
            last.insert(r.id.as_str(), r);
        }
        let rows: Vec<&DeliveryRow> = last.into_values().collect();
        db::deliveries::record(&mut *tx, &rows, &self.events, now).await?;
        self.rows.clear();
        self.events.clear();
        Ok(())
    }

    /// `machine`'s packages applied or busy: as read with the group, or afresh once its own
    /// transitions made that stale.
    pub async fn applied_or_busy(
        &mut self,
        tx: &mut sqlx::AnyConnection,
        machine: &str,
        now: i64,
    ) -> Result<AppliedOrBusy> {
        if !self.touched.contains(machine)
            && let Some(v) = self.applied_or_busy.get(machine)
        {
            return Ok(v.clone());
        }
        self.flush(&mut *tx, now).await?;
        let mut fresh = db::deliveries::applied_or_busy_of_machines(&mut *tx, &[machine]).await?;
        Ok(fresh.remove(machine).unwrap_or_default())
    }

    /// The current package `id` as a work item carries it.
    pub async fn package(&mut self, tx: &mut sqlx::AnyConnection, id: &str) -> Result<WorkPackage> {
        if let Some(p) = self.packages.get(id) {
            return Ok(p.clone());
        }
        let p = db::packages::for_work(&mut *tx, id).await?;
        self.packages.insert(id.to_string(), p.clone());
        Ok(p)
    }
}
