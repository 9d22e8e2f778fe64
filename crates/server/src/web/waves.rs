//! Rollout waves on the scenario page: each wave of a rollout is a scheduled scenario
//! (`server::rollout`), so a scenario that belongs to a rollout shows all of that rollout's
//! waves with their gates; any other scenario shows none.

use crate::Server;
use patchcast_core::model::rollout::RolloutVerb;
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

/// The rollout a scenario page shows, with the actions its state allows.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub id: String,
    pub name: String,
    pub state: String,
    pub reason: String,
    pub can_pause: bool,
    pub can_resume: bool,
    pub can_abort: bool,
    pub waves: Vec<WaveView>,
}

/// The rollout scenario `id` is a wave of, with all its waves in order; None for a plain
/// scenario.
pub async fn for_scenario(server: &Server, id: &str) -> anyhow::Result<Option<RolloutView>> {
    let Some(Some(rollout)) = crate::db::scenarios::rollout_of(&server.db, id).await? else {
        return Ok(None);
    };
    let status = server.rollout_status(&rollout).await?;
    let can = |v: RolloutVerb| v.apply(&status.state).is_ok();
    Ok(Some(RolloutView {
        id: status.id.clone(),
        name: status.name.clone(),
        can_pause: can(RolloutVerb::Pause),
        can_resume: can(RolloutVerb::Resume),
        can_abort: can(RolloutVerb::Abort),
        state: status.state.clone(),
        reason: status.reason.clone(),
        waves: status
            .waves
            .into_iter()
            .map(|w| WaveView {
                name: format!("{} · {}", w.index, w.group),
                state: w.gate,
                machines: w.total,
                gate: w.why,
            })
            .collect(),
    }))
}
