//! What the writes of one group (`group_commit`) share inside its transaction: transitions
//! written together at the end, `db::CHUNK` rows to a statement (`flush`), and,
//! for its dispatches, reads made once for all its machines instead of once each (`read`),
//! so a group of 256 polls and reports costs a handful of statements rather than a few each.
//!
//! The reads stay true within the group because a machine's deliveries are moved only by
//! its own dispatch (the group's reports were applied and flushed before the reads). What a
//! machine's own transitions make stale, it reads afresh (`touched`); before any read that
//! could see another machine's deliveries, or a write of its own, the deferred transitions are
//! written first (`flush`).

use super::db::{
    self, CHUNK,
    deliveries::{AppliedOrBusy, DeliveryRow, NewEvent},
    packages::WorkPackage,
};
use anyhow::Result;
use patchcast_core::delivery::State;
use patchcast_core::pipeline::Action;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A machine's packages applied or busy there: the latest delivery of each, with its state
/// and its scenario's action.
pub type Latest = Vec<(String, State, Action)>;

#[derive(Default)]
pub struct Batch {
    /// Each machine's unfinished deliveries, moved in place by its dispatch.
    pub unfinished: HashMap<String, Vec<DeliveryRow>>,
    /// Each machine's packages applied or busy, as read at the start of the dispatches.
    applied_or_busy: HashMap<String, Latest>,
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

/// Per machine of `machines`, the latest delivery of each package among `rows` (oldest
/// scenario first); an empty list for a machine with none, which is an answer too.
fn latest(machines: &[&str], rows: Vec<AppliedOrBusy>) -> HashMap<String, Latest> {
    let mut by_machine: HashMap<String, BTreeMap<String, (State, Action)>> = machines
        .iter()
        .map(|m| (m.to_string(), BTreeMap::new()))
        .collect();
    for r in rows {
        by_machine
            .entry(r.machine_id)
            .or_default()
            .insert(r.package_id, (r.state, r.action));
    }
    by_machine
        .into_iter()
        .map(|(m, l)| (m, l.into_iter().map(|(p, (s, a))| (p, s, a)).collect()))
        .collect()
}

impl Batch {
    /// Reads what the dispatches of `machines` need, three statements for all of them.
    /// Called after a `flush`, so what the group did before is in what it reads.
    pub async fn read(&mut self, tx: &mut db::Conn, machines: &[&str]) -> Result<()> {
        self.touched.clear();
        self.unfinished = machines
            .iter()
            .map(|m| (m.to_string(), Vec::new()))
            .collect();
        for r in db::deliveries::unfinished_of_machines(&mut *tx, machines).await? {
            self.unfinished
                .entry(r.machine_id.clone())
                .or_default()
                .push(r);
        }
        let ids: Vec<&str> = self
            .unfinished
            .values()
            .flatten()
            .map(|r| r.id.as_str())
            .collect();
        self.manifests = db::deliveries::manifests_of(&mut *tx, &ids)
            .await?
            .into_iter()
            .collect();
        self.applied_or_busy = latest(
            machines,
            db::deliveries::applied_or_busy_of_machines(&mut *tx, machines).await?,
        );
        Ok(())
    }

    /// A transition to write with the group (`r` as it left it).
    pub fn defer(&mut self, r: &DeliveryRow, e: NewEvent) {
        self.touched.insert(r.machine_id.clone());
        self.rows.push(r.clone());
        self.events.push(e);
    }

    /// Writes the deferred transitions (each row once, as its last transition left it).
    pub async fn flush(&mut self, tx: &mut db::Conn, now: i64) -> Result<()> {
        let mut last: HashMap<&str, &DeliveryRow> = HashMap::new();
        for r in &self.rows {
            last.insert(r.id.as_str(), r);
        }
        let rows: Vec<&DeliveryRow> = last.into_values().collect();
        for chunk in rows.chunks(CHUNK) {
            db::deliveries::update(&mut *tx, chunk, now).await?;
        }
        for chunk in self.events.chunks(CHUNK) {
            db::deliveries::insert_events(&mut *tx, chunk, now).await?;
        }
        self.rows.clear();
        self.events.clear();
        Ok(())
    }

    /// `machine`'s packages applied or busy: as read with the group, or afresh once its own
    /// transitions made that stale.
    pub async fn applied_or_busy(
        &mut self,
        tx: &mut db::Conn,
        machine: &str,
        now: i64,
    ) -> Result<Latest> {
        if !self.touched.contains(machine)
            && let Some(v) = self.applied_or_busy.get(machine)
        {
            return Ok(v.clone());
        }
        self.flush(&mut *tx, now).await?;
        let fresh = db::deliveries::applied_or_busy_of_machines(&mut *tx, &[machine]).await?;
        Ok(latest(&[machine], fresh)
            .remove(machine)
            .unwrap_or_default())
    }

    /// The current package `id` as a work item carries it.
    pub async fn package(&mut self, tx: &mut db::Conn, id: &str) -> Result<WorkPackage> {
        if let Some(p) = self.packages.get(id) {
            return Ok(p.clone());
        }
        let p = db::packages::for_work(&mut *tx, id).await?;
        self.packages.insert(id.to_string(), p.clone());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_delivery_of_each_package_wins_per_machine() {
        let row = |m: &str, p: &str, s: State| AppliedOrBusy {
            machine_id: m.into(),
            package_id: p.into(),
            state: s,
            action: Action::Install,
        };
        let l = latest(
            &["m1", "m2"],
            vec![
                row("m1", "a", State::Applied),
                row("m2", "a", State::Transferring),
                row("m1", "a", State::Executing),
                row("m1", "b", State::Applied),
            ],
        );
        assert_eq!(
            l["m1"],
            vec![
                ("a".to_string(), State::Executing, Action::Install),
                ("b".to_string(), State::Applied, Action::Install),
            ]
        );
        assert_eq!(
            l["m2"],
            vec![("a".to_string(), State::Transferring, Action::Install)]
        );
    }

    /// Regression: a machine with nothing applied or busy (every machine of a first rollout)
    /// had no entry, so each of its dispatches flushed the group's writes and read again:
    /// one read and two writes per dispatch instead of per group.
    #[test]
    fn regression_a_machine_with_nothing_applied_is_answered_from_the_group_read() {
        let l = latest(&["fresh", "m2"], Vec::new());
        assert_eq!(l.get("fresh"), Some(&Vec::new()));
        assert_eq!(l.len(), 2);
    }
}
