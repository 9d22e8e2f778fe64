//! The record of data upgrades run (`data_upgrades`, created by migration 6). What each
//! upgrade does is decided in `server::upgrades`.

use anyhow::{Context, Result};
use sqlx::{AnyConnection, AnyPool};

/// The names of the upgrades already applied.
pub async fn done(db: &AnyPool) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT name FROM data_upgrades")
        .fetch_all(db)
        .await
        .context("reading data_upgrades")
}

/// Records `name` as applied, in the transaction that applied it.
pub async fn record(tx: &mut AnyConnection, name: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO data_upgrades (name, applied_at) VALUES ($1, $2)")
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
