//! Web console accounts (`web_accounts`) and their sessions (`web_sessions`).

use anyhow::Result;
use sqlx::{AnyConnection, AnyPool, Row};

/// A console account as stored (without its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub created_at: i64,
}

/// Creates or replaces `name` with `password_hash`, and ends the account's sessions.
pub async fn put(tx: &mut AnyConnection, name: &str, password_hash: &str, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM web_accounts WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO web_accounts (name, password_hash, created_at) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    end_sessions(tx, name).await
}

/// Deletes `name` and its sessions; whether the account existed.
pub async fn remove(tx: &mut AnyConnection, name: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM web_accounts WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    end_sessions(tx, name).await?;
    Ok(n > 0)
}

async fn end_sessions(tx: &mut AnyConnection, account: &str) -> Result<()> {
    sqlx::query("DELETE FROM web_sessions WHERE account = $1")
        .bind(account)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn list(db: &AnyPool) -> Result<Vec<Account>> {
    let rows = sqlx::query("SELECT name, created_at FROM web_accounts ORDER BY name")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Account {
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn password_hash(db: &AnyPool, name: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT password_hash FROM web_accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?,
    )
}

/// (account, CSRF token) of the unexpired session whose cookie hashes to `token_hash`.
pub async fn session(db: &AnyPool, token_hash: &str, now: i64) -> Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT account, csrf FROM web_sessions WHERE token_hash = $1 AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("account")?, r.try_get("csrf")?)),
        None => None,
    })
}

/// Deletes sessions expired at `now`.
pub async fn sweep_sessions(db: &AnyPool, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn insert_session(
    db: &AnyPool,
    token_hash: &str,
    account: &str,
    csrf: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO web_sessions (token_hash, account, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(account)
    .bind(csrf)
    .bind(now)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn delete_session(db: &AnyPool, token_hash: &str) -> Result<()> {
    sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(())
}
