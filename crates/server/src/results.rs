//! Results: per delivery (state, attempts, last code rendered in the reader's language, exit
//! code, output tail, explanation, optionally the full history) and per package counts.

use super::Server;
use super::db;
use anyhow::{Result, bail};
use patchcast_core::delivery::Bucket;
use patchcast_core::errors::{Lang, render};
use patchcast_proto::admin_api::{
    DeliveryRow, HistoryEntry, PackageSummary, Results, ScenarioStatus,
};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub scenario: Option<String>,
    pub machine: Option<String>,
    pub package: Option<String>,
    pub history: bool,
    pub lang: Lang,
}

impl Server {
    pub async fn results(&self, q: &Query) -> Result<Results> {
        // A machine filter is a name the administrator typed: the one machine it stands for.
        let machine = match &q.machine {
            Some(name) if !name.is_empty() => Some(self.machine_id(name).await?),
            _ => None,
        };
        let rows = db::deliveries::results(
            &self.db,
            q.scenario.as_deref(),
            machine.as_deref(),
            q.package.as_deref(),
        )
        .await?;
        // The FAQ's result list names each computer with its MAC address.
        let macs: std::collections::HashMap<String, String> = self
            .machines()
            .await?
            .into_iter()
            .filter_map(|m| m.inventory.mac().map(|mac| (m.id.clone(), mac.to_string())))
            .collect();
        let mut deliveries = Vec::new();
        let mut actions = std::collections::HashMap::new();
        for r in rows {
            if !actions.contains_key(&r.scenario_id) {
                let mut conn = self.db.acquire().await?;
                let spec = db::scenarios::spec(&mut conn, &r.scenario_id).await?;
                actions.insert(r.scenario_id.clone(), spec.action);
            }
            let action = actions[&r.scenario_id];
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
            let history = if q.history {
                self.history(&r.id).await?
            } else {
                Vec::new()
            };
            let mac = macs.get(&r.machine_id).cloned();
            deliveries.push(DeliveryRow {
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
                rendered: code.map(|c| render(c, q.lang, &params)),
                state: d.state,
                detail,
                updated_at_ms: r.updated_at,
                history,
            });
        }
        let mut by_pkg: BTreeMap<String, PackageSummary> = BTreeMap::new();
        for d in &deliveries {
            let s = by_pkg
                .entry(d.package_id.clone())
                .or_insert_with(|| PackageSummary {
                    package_id: d.package_id.clone(),
                    ..PackageSummary::default()
                });
            *match d.bucket() {
                Bucket::Applied => &mut s.applied,
                Bucket::NotApplicable => &mut s.not_applicable,
                Bucket::NotApplied => &mut s.not_applied,
                Bucket::Failed => &mut s.failed,
                Bucket::InProgress => &mut s.in_progress,
            } += 1;
        }
        Ok(Results {
            deliveries,
            packages: by_pkg.into_values().collect(),
            settings: self.machine_settings(q.lang, q.machine.as_deref()).await?,
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
