//! Publisher trust statements (`trust_statements`, migration 11): the signed chain, in serial
//! order. What a statement means is decided in `pack::trust`, when it is accepted in
//! `server::keys`.

use anyhow::{Context, Result};
use patchcast_pack::trust::Signed;
use sqlx::{AnyConnection, AnyPool, Row};

/// Every statement, the lowest serial first.
pub async fn chain(db: &AnyPool) -> Result<Vec<(u64, Signed)>> {
    let rows = sqlx::query(
        "SELECT serial, statement, signer, signature FROM trust_statements ORDER BY serial",
    )
    .fetch_all(db)
    .await
    .context("reading trust_statements")?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("serial")? as u64,
                Signed {
                    statement: r.try_get("statement")?,
                    key: r.try_get("signer")?,
                    signature: r.try_get("signature")?,
                },
            ))
        })
        .collect()
}

/// Records an accepted statement, in the caller's transaction.
pub async fn insert(tx: &mut AnyConnection, serial: u64, s: &Signed, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO trust_statements (serial, statement, signer, signature, published_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(serial as i64)
    .bind(&s.statement)
    .bind(&s.key)
    .bind(&s.signature)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("recording the trust statement")?;
    Ok(())
}
