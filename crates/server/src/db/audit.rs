//! The audit of administrators' actions (`audit`): who (a console account or the admin
//! token), what (an action and its target, with a sentence of detail) and when. Entries are
//! written in the transaction of the change they describe and never updated.

use anyhow::Result;
use patchcast_proto::admin_api::AuditEntry;
use sqlx::{AnyConnection, AnyPool, Row};

/// Appends one entry. The caller holds the server's write lock, so `n` is not raced.
pub async fn insert(
    tx: &mut AnyConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    now: i64,
) -> Result<()> {
    let n: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) + 1 FROM audit")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO audit (n, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(n)
    .bind(now)
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `limit` entries, the newest first, after skipping the `skip` newest.
pub async fn newest(db: &AnyPool, limit: i64, skip: i64) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT n, at, actor, action, target, detail FROM audit ORDER BY n DESC LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(skip)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                n: r.try_get::<i64, _>("n")? as u64,
                at_ms: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}
