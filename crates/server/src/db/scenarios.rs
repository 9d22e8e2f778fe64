//! Scenarios (`scenarios`: the checked spec as JSON) and what created the scheduled ones
//! (`scheduled`: automatic update or a rollout wave, with its group).

use super::json;
use anyhow::{Context, Result};
use patchcast_core::model::scenario::Scenario;
use sqlx::{AnyConnection, AnyPool, Row};

/// What created a scheduled delivery's scenario.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub kind: String,
    pub group: String,
    pub rollout_id: Option<String>,
}

/// A scenario as listed.
#[derive(Debug, Clone)]
pub struct Header {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// The scenario's spec; an error when there is no such scenario.
pub async fn spec(tx: &mut AnyConnection, id: &str) -> Result<Scenario> {
    let r = sqlx::query("SELECT spec FROM scenarios WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .with_context(|| format!("loading scenario {id}"))?;
    json(&r, "spec")
}

/// Locks the rows of the scenarios `ids` until the transaction ends, in id order
/// (PostgreSQL; nothing on SQLite, whose one writer is alone): their `max_concurrent` counts
/// are read and raised by one group at a time on every server.
pub async fn lock_rows(tx: &mut AnyConnection, ids: &[&str]) -> Result<()> {
    super::lock_ids(tx, "scenarios", ids).await
}

pub async fn exists(tx: &mut AnyConnection, id: &str) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM scenarios WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(found.is_some())
}

pub async fn insert(tx: &mut AnyConnection, id: &str, s: &Scenario, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO scenarios (id, name, spec, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&s.name)
        .bind(serde_json::to_string(s)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// (name, created_at) of the scenario.
pub async fn header(db: &AnyPool, id: &str) -> Result<Option<(String, i64)>> {
    let Some(r) = sqlx::query("SELECT name, created_at FROM scenarios WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((r.try_get("name")?, r.try_get("created_at")?)))
}

/// Every scenario, the newest first.
pub async fn newest_first(db: &AnyPool) -> Result<Vec<Header>> {
    let rows = sqlx::query("SELECT id, name, created_at FROM scenarios ORDER BY created_at DESC")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Header {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Lists the scenario as scheduled work of `kind` for `group` (a rollout wave: `(rollout, wave)`).
pub async fn insert_scheduled(
    tx: &mut AnyConnection,
    scenario_id: &str,
    kind: &str,
    group: &str,
    rollout: Option<(&str, u32)>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO scheduled (scenario_id, kind, grp, rollout_id, wave) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(scenario_id)
    .bind(kind)
    .bind(group)
    .bind(rollout.map(|r| r.0.to_string()))
    .bind(rollout.map(|r| r.1 as i64))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn scheduled(db: &AnyPool, scenario_id: &str) -> Result<Option<Scheduled>> {
    let r = sqlx::query("SELECT kind, grp, rollout_id FROM scheduled WHERE scenario_id = $1")
        .bind(scenario_id)
        .fetch_optional(db)
        .await?;
    r.map(|r| {
        Ok(Scheduled {
            kind: r.try_get("kind")?,
            group: r.try_get("grp")?,
            rollout_id: r.try_get("rollout_id")?,
        })
    })
    .transpose()
}

/// The rollout the scenario is a wave of: None when it is not scheduled, Some(None) when it
/// is scheduled by something else (automatic update).
pub async fn rollout_of(db: &AnyPool, scenario_id: &str) -> Result<Option<Option<String>>> {
    Ok(
        sqlx::query_scalar("SELECT rollout_id FROM scheduled WHERE scenario_id = $1")
            .bind(scenario_id)
            .fetch_optional(db)
            .await?,
    )
}
