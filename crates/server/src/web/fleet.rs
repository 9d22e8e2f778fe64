//! The machine list at fleet size: machines read from the database in batches by the key
//! `(hostname, id)`, each batch with its machines' current deliveries, and the list's filter
//! applied per machine. A page of the console and a streamed export both walk this scan, so
//! neither holds more than one batch of machines however large the fleet.

use super::views::MachineFilter;
use crate::Server;
use crate::results::Actions;
use anyhow::Result;
use patchcast_core::errors::Lang;
use patchcast_proto::admin_api::{DeliveryRow, Group, MachineView};
use std::collections::HashMap;

/// Machines read per statement.
pub const BATCH: usize = 500;

/// A machine the filter kept, with its current deliveries.
pub struct Row {
    pub machine: MachineView,
    pub current: Vec<DeliveryRow>,
}

/// Walks the machines the filter keeps, in list order, a batch at a time.
pub struct Scan {
    filter: MachineFilter,
    groups: Vec<Group>,
    lang: Lang,
    after: Option<(String, String)>,
    done: bool,
    actions: Actions,
    batch: usize,
}

impl Scan {
    pub async fn new(s: &Server, filter: MachineFilter, lang: Lang) -> Result<Scan> {
        Ok(Scan {
            filter,
            groups: crate::db::machines::groups(&s.db).await?,
            lang,
            after: None,
            done: false,
            actions: Actions::default(),
            batch: BATCH,
        })
    }

    /// The next batch's kept machines; None at the end (an empty Vec: none kept this time).
    pub async fn next(&mut self, s: &Server) -> Result<Option<Vec<Row>>> {
        if self.done {
            return Ok(None);
        }
        let after = self.after.as_ref().map(|(h, i)| (h.as_str(), i.as_str()));
        let machines = s.machine_batch(&self.groups, after, self.batch).await?;
        if machines.len() < self.batch {
            self.done = true;
        }
        let Some(last) = machines.last() else {
            return Ok(None);
        };
        self.after = Some((last.hostname.clone(), last.id.clone()));
        let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
        let mut by_machine: HashMap<String, Vec<DeliveryRow>> = HashMap::new();
        for d in s.current_of(&ids, self.lang, &mut self.actions).await? {
            by_machine.entry(d.machine_id.clone()).or_default().push(d);
        }
        let mut out = Vec::new();
        for m in machines {
            let current = by_machine.remove(&m.id).unwrap_or_default();
            let refs: Vec<&DeliveryRow> = current.iter().collect();
            if self.filter.matches(&m, &refs) {
                out.push(Row {
                    machine: m,
                    current,
                });
            }
        }
        Ok(Some(out))
    }

    /// Page `page` (from 0) of `size` kept machines, and whether another page follows.
    pub async fn page(mut self, s: &Server, page: usize, size: usize) -> Result<(Vec<Row>, bool)> {
        let mut skip = page.saturating_mul(size);
        let mut out = Vec::new();
        while let Some(rows) = self.next(s).await? {
            for r in rows {
                if skip > 0 {
                    skip -= 1;
                } else if out.len() < size {
                    out.push(r);
                } else {
                    return Ok((out, true));
                }
            }
        }
        Ok((out, false))
    }
}
