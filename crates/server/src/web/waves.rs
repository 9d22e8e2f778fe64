//! Rollout waves on the scenario page: each wave of a rollout is a scheduled scenario
//! (`server::rollout`), so a scenario that belongs to a rollout shows all of that rollout's
//! waves with their gates; any other scenario shows none.

use crate::Server;
use serde::Serialize;

/// One wave of a rollout as the scenario page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WaveView {
    pub name: String,
    /// The wave's gate as the rollout names it (open, passed, waiting, stopped).
    pub state: String,
    pub machines: u64,
    /// The gate in words ("wave 0 (pilot) has applied 40.0%, needs 90.0%").
    pub gate: String,
}

/// The waves of the rollout scenario `id` belongs to, in order; none for a plain scenario.
pub async fn for_scenario(server: &Server, id: &str) -> anyhow::Result<Vec<WaveView>> {
    let Some(Some(rollout)) = crate::db::scenarios::rollout_of(&server.db, id).await? else {
        return Ok(Vec::new());
    };
    let status = server.rollout_status(&rollout).await?;
    Ok(status
        .waves
        .into_iter()
        .map(|w| WaveView {
            name: format!("{} · {}", w.index, w.group),
            state: w.gate,
            machines: w.total,
            gate: w.why,
        })
        .collect())
}
