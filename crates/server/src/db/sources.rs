//! Update sources and relays: the source list (`update_sources`, one row), the relay role and
//! each relay's cache (`relays`), and the key relay tokens are signed with (`source_keys`).

use super::json;
use anyhow::Result;
use patchcast_core::sources::SourceList;
use patchcast_proto::protocol::Inventory;
use sqlx::{AnyConnection, AnyPool, Row};

/// A relay with what the server knows of its machine.
#[derive(Debug, Clone)]
pub struct Relay {
    pub machine_id: String,
    pub enabled: bool,
    pub listen: String,
    pub url: Option<String>,
    pub fingerprint: Option<String>,
    /// SHA-256 (hex) of the archives it holds.
    pub cached: Vec<String>,
    pub hostname: String,
    pub peer_addr: String,
    pub inventory: Inventory,
    pub last_seen: i64,
}

/// The stored list and when it was set.
pub async fn list(db: &AnyPool) -> Result<Option<(SourceList, i64)>> {
    let r = sqlx::query("SELECT spec, updated_at FROM update_sources WHERE id = 1")
        .fetch_optional(db)
        .await?;
    Ok(match r {
        Some(r) => Some((json(&r, "spec")?, r.try_get("updated_at")?)),
        None => None,
    })
}

/// The stored list (in a transaction).
pub async fn list_in(tx: &mut AnyConnection) -> Result<Option<SourceList>> {
    match sqlx::query("SELECT spec FROM update_sources WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await?
    {
        Some(r) => Ok(Some(json(&r, "spec")?)),
        None => Ok(None),
    }
}

pub async fn replace(tx: &mut AnyConnection, list: &SourceList, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM update_sources WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO update_sources (id, spec, updated_at) VALUES (1, $1, $2)")
        .bind(serde_json::to_string(list)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Every machine with a relay row (enabled or not), by hostname.
pub async fn relays(db: &AnyPool) -> Result<Vec<Relay>> {
    let rows = sqlx::query(
        "SELECT r.machine_id, r.enabled, r.listen, r.url, r.fingerprint, r.cached, \
         m.hostname, m.peer_addr, m.inventory, m.last_seen \
         FROM relays r JOIN machines m ON m.id = r.machine_id ORDER BY m.hostname",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Relay {
                inventory: json(r, "inventory")?,
                peer_addr: r.try_get("peer_addr")?,
                machine_id: r.try_get("machine_id")?,
                hostname: r.try_get("hostname")?,
                enabled: r.try_get::<i64, _>("enabled")? != 0,
                listen: r.try_get("listen")?,
                url: r.try_get("url")?,
                fingerprint: r.try_get("fingerprint")?,
                cached: json(r, "cached")?,
                last_seen: r.try_get("last_seen")?,
            })
        })
        .collect()
}

/// Where the machine's relay row says it listens; None without a row.
pub async fn relay_listen(db: &AnyPool, machine: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT listen FROM relays WHERE machine_id = $1")
            .bind(machine)
            .fetch_optional(db)
            .await?,
    )
}

/// (machine, enabled) of every relay row.
pub async fn relay_roles(db: &AnyPool) -> Result<Vec<(String, bool)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT machine_id, enabled FROM relays")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(m, e)| (m, e != 0)).collect())
}

/// Sets the role of a machine that has a relay row.
pub async fn update_role(
    db: &AnyPool,
    machine: &str,
    enabled: bool,
    listen: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE relays SET enabled = $1, listen = $2, updated_at = $3 WHERE machine_id = $4",
    )
    .bind(enabled as i64)
    .bind(listen)
    .bind(now)
    .bind(machine)
    .execute(db)
    .await?;
    Ok(())
}

/// The first relay row of a machine: no URL or fingerprint yet, nothing cached.
pub async fn insert_role(
    db: &AnyPool,
    machine: &str,
    enabled: bool,
    listen: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO relays (machine_id, enabled, listen, url, fingerprint, cached, updated_at) \
         VALUES ($1, $2, $3, NULL, NULL, '[]', $4)",
    )
    .bind(machine)
    .bind(enabled as i64)
    .bind(listen)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// A relay's report: where it is reached, its certificate, what it holds.
pub async fn update_status(
    db: &AnyPool,
    machine: &str,
    url: &str,
    fingerprint: &str,
    cached: &[String],
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE relays SET url = $1, fingerprint = $2, cached = $3, updated_at = $4 WHERE machine_id = $5",
    )
    .bind(url)
    .bind(fingerprint)
    .bind(serde_json::to_string(cached)?)
    .bind(now)
    .bind(machine)
    .execute(db)
    .await?;
    Ok(())
}

/// The relay token key (hex), when one was made.
pub async fn token_key(db: &AnyPool) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT secret FROM source_keys WHERE id = 1")
            .fetch_optional(db)
            .await?,
    )
}

/// Stores the relay token key; fails when one is stored already.
pub async fn insert_token_key(db: &AnyPool, hex: &str) -> Result<()> {
    sqlx::query("INSERT INTO source_keys (id, secret) VALUES (1, $1)")
        .bind(hex)
        .execute(db)
        .await?;
    Ok(())
}
