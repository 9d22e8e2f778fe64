//! Rollouts (`rollouts`: the spec as JSON, `running` / `stopped` / `completed`, the newest
//! open wave and why it stopped). Each wave's deliveries are a scheduled scenario.

use super::json;
use anyhow::Result;
use patchcast_core::model::rollout::{Rollout, RolloutState};
use sqlx::{AnyConnection, AnyPool, Row};

/// A rollout as stored.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub spec: Rollout,
    pub state: String,
    pub wave: i64,
    pub reason: String,
    pub created_at: i64,
}

/// A new running rollout at wave 0.
pub async fn insert(tx: &mut AnyConnection, id: &str, r: &Rollout, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO rollouts (id, name, spec, state, wave, reason, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $6)",
    )
    .bind(id)
    .bind(&r.name)
    .bind(serde_json::to_string(r)?)
    .bind(RolloutState::Running.name())
    .bind("")
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn set_wave(db: &AnyPool, id: &str, wave: i64, now: i64) -> Result<()> {
    sqlx::query("UPDATE rollouts SET wave = $1, updated_at = $2 WHERE id = $3")
        .bind(wave)
        .bind(now)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// (id, spec, newest open wave) of each running rollout.
pub async fn running(db: &AnyPool) -> Result<Vec<(String, Rollout, i64)>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, spec, wave FROM rollouts WHERE state = $1")
            .bind(RolloutState::Running.name())
            .fetch_all(db)
            .await?;
    rows.into_iter()
        .map(|(id, spec, wave)| Ok((id, serde_json::from_str(&spec)?, wave)))
        .collect()
}

pub async fn get(db: &AnyPool, id: &str) -> Result<Option<RolloutRow>> {
    let Some(row) = sqlx::query(
        "SELECT id, name, spec, state, wave, reason, created_at FROM rollouts WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(RolloutRow {
        spec: json(&row, "spec")?,
        state: row.try_get("state")?,
        wave: row.try_get("wave")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
    }))
}

/// Moves a rollout from state `from` to `to` with `reason`; false when it was not in `from`
/// (another change came first).
pub async fn change_state(
    tx: &mut AnyConnection,
    id: &str,
    from: &str,
    to: RolloutState,
    reason: &str,
    now: i64,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5",
    )
    .bind(to.name())
    .bind(reason)
    .bind(now)
    .bind(id)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// (state, newest open wave) of a rollout, in a transaction.
pub async fn state_and_wave(tx: &mut AnyConnection, id: &str) -> Result<Option<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT state, wave FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// Every rollout id, the oldest first.
pub async fn ids(db: &AnyPool) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM rollouts ORDER BY created_at")
            .fetch_all(db)
            .await?,
    )
}

/// The rollout's state (`running`, `stopped`, `completed`).
pub async fn state(db: &AnyPool, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT state FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}
