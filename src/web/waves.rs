//! HOOK for rollout waves (issue 6, built on another branch): the scenario page shows a
//! "Rollout waves" section with one row per wave when this returns any. This branch has no
//! rollout tables, so a scenario has no waves here and the section is not shown. When rollouts
//! land, fill `for_scenario` from their store (name, state, machine count, gate) and the page
//! and template need no other change.

use crate::server::Server;
use serde::Serialize;

/// One wave of a rollout as the scenario page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WaveView {
    pub name: String,
    /// The wave's state as its store names it (waiting, running, gated, done).
    pub state: String,
    pub machines: u64,
    /// The gate before the next wave, in words (e.g. "95 % applied, no E19").
    pub gate: String,
}

/// The waves of scenario `id`, in order. Without rollout tables: none.
pub async fn for_scenario(_server: &Server, _id: &str) -> anyhow::Result<Vec<WaveView>> {
    Ok(Vec::new())
}
