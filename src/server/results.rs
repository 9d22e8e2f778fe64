//! Results: per delivery (state, attempts, last code rendered in the reader's language, exit
//! code, output tail, explanation, optionally the full history) and per package counts.

use super::Server;
use super::db::json;
use crate::core::delivery::{Delivery, State};
use crate::core::errors::{Code, Lang, render};
use crate::transport::admin_api::{
    DeliveryRow, HistoryEntry, PackageSummary, Results, ScenarioStatus,
};
use anyhow::{Result, bail};
use sqlx::Row;
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
        let rows = sqlx::query(
            "SELECT d.id, d.scenario_id, d.machine_id, m.hostname, d.package_id, d.delivery, d.detail, d.updated_at \
             FROM deliveries d JOIN machines m ON m.id = d.machine_id JOIN scenarios s ON s.id = d.scenario_id \
             WHERE ($1 = '' OR d.scenario_id = $1) AND ($2 = '' OR d.machine_id = $2 OR m.hostname = $2) \
             AND ($3 = '' OR d.package_id = $3) ORDER BY s.created_at, m.hostname, d.machine_id, d.position",
        )
        .bind(q.scenario.clone().unwrap_or_default())
        .bind(q.machine.clone().unwrap_or_default())
        .bind(q.package.clone().unwrap_or_default())
        .fetch_all(&self.db)
        .await?;
        let mut deliveries = Vec::new();
        for r in &rows {
            let d: Delivery = json(r, "delivery")?;
            let detail: crate::transport::protocol::Detail = json(r, "detail")?;
            let mut params = detail.params.clone();
            if params.exit_code.is_none() {
                params.exit_code = detail.exit_code;
            }
            let code = d.last_code;
            let id: String = r.try_get("id")?;
            let history = if q.history {
                self.history(&id).await?
            } else {
                Vec::new()
            };
            deliveries.push(DeliveryRow {
                delivery_id: id,
                scenario_id: r.try_get("scenario_id")?,
                machine_id: r.try_get("machine_id")?,
                hostname: r.try_get("hostname")?,
                package_id: r.try_get("package_id")?,
                attempts: d.attempt,
                unverified_runs: d.unverified_runs,
                last_code: code,
                rendered: code.map(|c| render(c, q.lang, &params)),
                state: d.state,
                detail,
                updated_at_ms: r.try_get("updated_at")?,
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
            match d.state {
                State::Applied => s.applied += 1,
                State::NotApplicable { .. } => s.not_applicable += 1,
                State::LoopDetected { .. } => s.not_applied += 1,
                State::Failed { .. } => s.failed += 1,
                _ => s.in_progress += 1,
            }
        }
        Ok(Results {
            deliveries,
            packages: by_pkg.into_values().collect(),
            settings: self.machine_settings(q.lang, q.machine.as_deref()).await?,
        })
    }

    pub async fn history(&self, delivery: &str) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query("SELECT n, attempt, seq, event, state, code, params, at FROM events WHERE delivery_id = $1 ORDER BY n")
            .bind(delivery)
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|r| {
                let state: State = json(r, "state")?;
                let code: Option<String> = r.try_get("code")?;
                Ok(HistoryEntry {
                    n: r.try_get::<i64, _>("n")? as u64,
                    attempt: r.try_get::<i64, _>("attempt")? as u32,
                    seq: r.try_get::<i64, _>("seq")? as u32,
                    event: json(r, "event")?,
                    state: state.name().to_string(),
                    code: code.and_then(|c| c.parse::<Code>().ok()),
                    params: json(r, "params")?,
                    at_ms: r.try_get("at")?,
                })
            })
            .collect()
    }

    pub async fn scenario_status(&self, id: &str, lang: Lang) -> Result<ScenarioStatus> {
        let Some(r) = sqlx::query("SELECT name, created_at FROM scenarios WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await?
        else {
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
            name: r.try_get("name")?,
            created_at_ms: r.try_get("created_at")?,
            total: res.deliveries.len() as u64,
            done: res.deliveries.iter().all(|d| d.state.is_terminal()),
            counts,
            deliveries: res.deliveries,
        })
    }
}
