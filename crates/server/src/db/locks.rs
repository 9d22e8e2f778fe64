//! The statements several servers on one PostgreSQL database coordinate with: session-level
//! advisory locks (the write lock, the leader) and `NOTIFY`/`LISTEN`. When to take, hand on or
//! release them is `server::cluster`'s.

use anyhow::Result;
use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool, Connection};

/// A connection listening for notifications.
pub type Listener = PgListener;

/// A connection of its own: a session-level lock lives and dies with it.
pub async fn connect(url: &str) -> Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    Ok(AnyConnection::connect(url).await?)
}

/// Waits for the advisory lock `key` (in shared mode when `shared`), held by this
/// connection's session.
pub async fn lock(c: &mut AnyConnection, key: i64, shared: bool) -> Result<()> {
    let q = if shared {
        "SELECT 1 FROM (SELECT pg_advisory_lock_shared($1)) l"
    } else {
        "SELECT 1 FROM (SELECT pg_advisory_lock($1)) l"
    };
    sqlx::query(q).bind(key).execute(c).await?;
    Ok(())
}

/// Releases the advisory lock `key` this connection's session holds (in shared mode when
/// `shared`).
pub async fn unlock(c: &mut AnyConnection, key: i64, shared: bool) -> Result<()> {
    let q = if shared {
        "SELECT 1 FROM (SELECT pg_advisory_unlock_shared($1)) u"
    } else {
        "SELECT 1 FROM (SELECT pg_advisory_unlock($1)) u"
    };
    sqlx::query(q).bind(key).execute(c).await?;
    Ok(())
}

/// Takes the advisory lock `key` if it is free; whether this session holds it now.
pub async fn try_lock(c: &mut AnyConnection, key: i64) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(c)
        .await?)
}

/// Whether the connection (and so the locks its session holds) is still alive.
pub async fn alive(c: &mut AnyConnection) -> Result<()> {
    sqlx::query("SELECT 1").execute(c).await?;
    Ok(())
}

/// `NOTIFY channel, payload`, outside any transaction: delivered at once.
pub async fn notify(pool: &AnyPool, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) n")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// A connection listening on `channel`.
pub async fn listener(url: &str, channel: &str) -> Result<Listener> {
    let mut l = PgListener::connect(url).await?;
    l.listen(channel).await?;
    Ok(l)
}
