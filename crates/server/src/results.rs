//! Results: per delivery (state, attempts, last code rendered in the reader's language, exit
//! code, output tail, explanation, optionally the full history) and per package counts.

use super::Server;
use super::db;
use anyhow::{Result, bail};
use patchcast_core::delivery::Bucket;
use patchcast_core::errors::{Lang, render};
use patchcast_core::pipeline::Action;
use patchcast_proto::admin_api::{
    DeliveryRow, HistoryEntry, PackageSummary, Results, ScenarioStatus,
};
use patchcast_proto::protocol::Inventory;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub scenario: Option<String>,
    pub machine: Option<String>,
    pub package: Option<String>,
    pub history: bool,
    pub lang: Lang,
    /// At most this many rows, from page `page` (0-based) of that size; None: every row.
    pub limit: Option<u64>,
    pub page: u64,
}

/// Each scenario's action (whether `applied` means installed or removed), read once per
/// scenario a report meets.
#[derive(Debug, Default)]
pub struct Actions(HashMap<String, Action>);

impl Actions {
    pub async fn of(&mut self, s: &Server, scenario: &str) -> Result<Action> {
        if let Some(a) = self.0.get(scenario) {
            return Ok(*a);
        }
        let mut conn = s.db.acquire().await?;
        let action = db::scenarios::spec(&mut conn, scenario).await?.action;
        self.0.insert(scenario.to_string(), action);
        Ok(action)
    }
}

/// A stored delivery as results show it: the code rendered in `lang` with its parameters.
pub fn delivery_row(
    r: db::deliveries::ResultRow,
    action: Action,
    mac: Option<String>,
    lang: Lang,
    history: Vec<HistoryEntry>,
) -> DeliveryRow {
    let d = r.delivery;
    let detail = r.detail;
    let mut params = detail.params.clone();
    if params.exit_code.is_none() {
        params.exit_code = detail.exit_code;
    }
    // Codes the server raised itself (E04, E05, E13) name the package too.
    if params.package.is_none() {
        params.package = Some(r.package_id.clone());
    }
    let code = d.last_code;
    DeliveryRow {
        delivery_id: r.id,
        scenario_id: r.scenario_id,
        machine_id: r.machine_id,
        mac,
        hostname: r.hostname,
        package_id: r.package_id,
        action,
        attempts: d.attempt,
        unverified_runs: d.unverified_runs,
        last_code: code,
        rendered: code.map(|c| render(c, lang, &params)),
        state: d.state,
        detail,
        updated_at_ms: r.updated_at,
        history,
    }
}

/// Counts by (package, scenario, state) summed into each package's buckets.
pub async fn summarise(
    s: &Server,
    actions: &mut Actions,
    counts: Vec<(String, String, String, u64)>,
) -> Result<Vec<PackageSummary>> {
    let mut by_pkg: BTreeMap<String, PackageSummary> = BTreeMap::new();
    for (package, scenario, state, n) in counts {
        let action = actions.of(s, &scenario).await?;
        let sum = by_pkg
            .entry(package.clone())
            .or_insert_with(|| PackageSummary {
                package_id: package,
                ..PackageSummary::default()
            });
        let bucket = match Bucket::of_name(&state) {
            Bucket::Applied if !action.is_install() => Bucket::NotApplied,
            b => b,
        };
        *match bucket {
            Bucket::Applied => &mut sum.applied,
            Bucket::NotApplicable => &mut sum.not_applicable,
            Bucket::NotApplied => &mut sum.not_applied,
            Bucket::Failed => &mut sum.failed,
            Bucket::InProgress => &mut sum.in_progress,
        } += n;
    }
    Ok(by_pkg.into_values().collect())
}

/// The MAC address the FAQ's result list names a computer by, from its stored inventory.
fn mac_of(inventory: &str) -> Option<String> {
    serde_json::from_str::<Inventory>(inventory)
        .ok()
        .and_then(|i| i.mac().map(str::to_string))
}

impl Server {
    /// Deliveries (one page of them with `limit`), paged and counted by the database: the
    /// package summary counts every delivery the filters select, whatever the page.
    pub async fn results(&self, q: &Query) -> Result<Results> {
        // A machine filter is a name the administrator typed: the one machine it stands for.
        let machine = match &q.machine {
            Some(name) if !name.is_empty() => Some(self.machine_id(name).await?),
            _ => None,
        };
        let filter = (
            q.scenario.as_deref().unwrap_or_default(),
            machine.as_deref().unwrap_or_default(),
            q.package.as_deref().unwrap_or_default(),
        );
        let (limit, offset) = match q.limit {
            Some(l) => {
                let l = l.clamp(1, i64::MAX as u64) as i64;
                (l, l.saturating_mul(q.page.min(i64::MAX as u64) as i64))
            }
            None => (i64::MAX, 0),
        };
        let rows = db::reports::results_page(&self.db, filter, limit, offset).await?;
        let mut actions = Actions::default();
        let mut deliveries = Vec::with_capacity(rows.len());
        for (r, inventory) in rows {
            let action = actions.of(self, &r.scenario_id).await?;
            let history = if q.history {
                self.history(&r.id).await?
            } else {
                Vec::new()
            };
            deliveries.push(delivery_row(r, action, mac_of(&inventory), q.lang, history));
        }
        let counts = db::reports::results_counts(&self.db, filter).await?;
        let total = q
            .limit
            .map(|_| counts.iter().map(|(_, _, _, n)| n).sum::<u64>());
        let packages = summarise(self, &mut actions, counts).await?;
        Ok(Results {
            deliveries,
            packages,
            settings: self.machine_settings(q.lang, q.machine.as_deref()).await?,
            total,
        })
    }

    pub async fn history(&self, delivery: &str) -> Result<Vec<HistoryEntry>> {
        db::deliveries::history(&self.db, delivery).await
    }

    pub async fn scenario_status(&self, id: &str, lang: Lang) -> Result<ScenarioStatus> {
        let Some((name, created_at_ms)) = db::scenarios::header(&self.db, id).await? else {
            bail!("no scenario `{id}` on this server");
        };
        let res = self
            .results(&Query {
                scenario: Some(id.to_string()),
                lang,
                ..Query::default()
            })
            .await?;
        let mut counts = BTreeMap::new();
        for d in &res.deliveries {
            *counts.entry(d.state.name().to_string()).or_insert(0u64) += 1;
        }
        Ok(ScenarioStatus {
            id: id.to_string(),
            name,
            created_at_ms,
            total: res.deliveries.len() as u64,
            done: res.deliveries.iter().all(|d| d.state.is_terminal()),
            counts,
            deliveries: res.deliveries,
        })
    }

    /// Every scenario, the newest first, with its deliveries counted by state (no rows).
    pub async fn scenario_list(&self) -> Result<Vec<ScenarioStatus>> {
        let mut out = Vec::new();
        for h in db::scenarios::newest_first(&self.db).await? {
            let c = counts(self, &h.id).await?;
            out.push(ScenarioStatus {
                id: h.id,
                name: h.name,
                created_at_ms: h.created_at,
                counts: c.states,
                total: c.total,
                done: c.done,
                deliveries: Vec::new(),
            });
        }
        Ok(out)
    }
}

/// Deliveries of a scenario by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub states: BTreeMap<String, u64>,
    pub total: u64,
    /// Every delivery is in a terminal state (and there is at least one).
    pub done: bool,
}

pub async fn counts(s: &Server, scenario: &str) -> Result<Counts> {
    let mut c = Counts::default();
    for (state, n) in db::deliveries::count_by_state(&s.db, scenario).await? {
        c.states.insert(state, n);
        c.total += n;
    }
    c.done = c.total > 0
        && c.states
            .iter()
            .all(|(k, n)| *n == 0 || patchcast_core::delivery::is_terminal_name(k));
    Ok(c)
}

/// Reports at fleet size: counted and paged by the database (`db::reports`).
impl Server {
    /// Per package: how many machines are in each bucket, by their current delivery.
    pub async fn compliance(&self) -> Result<Vec<PackageSummary>> {
        let counts = db::reports::current_counts(&self.db).await?;
        summarise(self, &mut Actions::default(), counts).await
    }

    /// How many machines have a current delivery in each of `states` (by name).
    pub async fn machines_in_states(&self, states: &[&str]) -> Result<Vec<i64>> {
        db::reports::machines_in_states(&self.db, states).await
    }

    /// Up to `limit` machines after the key `(hostname, id)`, in that order, each with the
    /// names of the `groups` it is in.
    pub async fn machine_batch(
        &self,
        groups: &[patchcast_proto::admin_api::Group],
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<patchcast_proto::admin_api::MachineView>> {
        let mut ms = db::reports::machines_after(&self.db, after, limit).await?;
        for m in &mut ms {
            m.groups = groups
                .iter()
                .filter(|g| super::machines::in_group(g, m))
                .map(|g| g.name.clone())
                .collect();
        }
        Ok(ms)
    }

    /// The current delivery of each package on each of `machines` (no history, no MAC).
    pub async fn current_of(
        &self,
        machines: &[String],
        lang: Lang,
        actions: &mut Actions,
    ) -> Result<Vec<DeliveryRow>> {
        let mut out = Vec::new();
        for r in db::reports::current_of_machines(&self.db, machines).await? {
            let action = actions.of(self, &r.scenario_id).await?;
            out.push(delivery_row(r, action, None, lang, Vec::new()));
        }
        Ok(out)
    }

    /// The result codes current deliveries carry, sorted, once each.
    pub async fn current_codes(&self) -> Result<Vec<String>> {
        let mut codes = std::collections::BTreeSet::new();
        for d in db::reports::current_with_codes(&self.db).await? {
            let d: patchcast_core::delivery::Delivery = serde_json::from_str(&d)?;
            if let Some(c) = d.last_code {
                codes.insert(c.to_string());
            }
        }
        Ok(codes.into_iter().collect())
    }

    /// Silent machines: up to `limit` last heard from before `before`, longest silent first,
    /// and how many there are in all.
    pub async fn silent_machines(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<(Vec<patchcast_proto::admin_api::MachineView>, i64)> {
        Ok((
            db::reports::silent_since(&self.db, before, limit).await?,
            db::reports::silent_count(&self.db, before).await?,
        ))
    }

    pub async fn machine_count(&self) -> Result<i64> {
        db::reports::machine_count(&self.db).await
    }

    pub async fn oses_and_languages(&self) -> Result<(Vec<String>, Vec<String>)> {
        db::reports::oses_and_languages(&self.db).await
    }

    /// Retention: deletes history older than `retention` that a finished delivery's later
    /// transitions superseded, in batches of `batch` rows (each its own statement under the
    /// write lock, so check-ins and reports go on in between). How many rows it deleted.
    pub async fn prune_history(&self, retention: std::time::Duration, batch: i64) -> Result<u64> {
        let before = self.now() - retention.as_millis() as i64;
        let mut total = 0;
        loop {
            let n = {
                let _w = self.write().await?;
                db::reports::prune_history(&self.db, before, batch).await?
            };
            total += n;
            if n < batch as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                rows = total,
                older_than_ms = before,
                "history retention pruned superseded delivery history"
            );
        }
        Ok(total)
    }
}
