//! Machines: enrollment tokens (`tokens`), machines and their inventory (`machines`), groups
//! (`machine_groups`) and the access of agentless SSH machines (`ssh_machines`).

use super::json;
use anyhow::Result;
use patchcast_proto::admin_api::{Group, MachineView};
use patchcast_proto::protocol::Inventory;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Row};

/// An enrollment token as stored.
#[derive(Debug, Clone)]
pub struct Token {
    pub group: Option<String>,
    pub expires_at: i64,
    pub uses: i64,
    pub max_uses: Option<i64>,
}

/// A machine row to insert (enrolled by an agent, or added as an SSH host).
#[derive(Debug, Clone)]
pub struct NewMachine<'a> {
    pub id: &'a str,
    pub secret_hash: &'a str,
    pub hostname: &'a str,
    pub inventory: &'a Inventory,
    pub peer_addr: &'a str,
    pub now: i64,
    pub agent_state: &'a str,
    pub enroll_group: Option<&'a str>,
}

/// The access of an SSH machine as stored.
#[derive(Debug, Clone)]
pub struct SshRow {
    pub machine_id: String,
    pub username: String,
    pub host: String,
    pub port: i64,
    pub key_path: String,
    pub known_hosts: String,
    pub trust_on_first_use: bool,
    pub work_dir: String,
}

pub async fn insert_token(
    tx: &mut AnyConnection,
    hash: &str,
    group: Option<&str>,
    now: i64,
    expires_at: i64,
    max_uses: Option<i64>,
) -> Result<()> {
    sqlx::query("INSERT INTO tokens (hash, grp, created_at, expires_at, uses, max_uses) VALUES ($1, $2, $3, $4, 0, $5)")
        .bind(hash)
        .bind(group)
        .bind(now)
        .bind(expires_at)
        .bind(max_uses)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn token(tx: &mut AnyConnection, hash: &str) -> Result<Option<Token>> {
    let Some(t) = sqlx::query("SELECT grp, expires_at, uses, max_uses FROM tokens WHERE hash = $1")
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Token {
        group: t.try_get("grp")?,
        expires_at: t.try_get("expires_at")?,
        uses: t.try_get("uses")?,
        max_uses: t.try_get("max_uses")?,
    }))
}

/// Every enrollment token, newest first: (hash, token, created_at).
pub async fn tokens(db: &AnyPool) -> Result<Vec<(String, Token, i64)>> {
    let rows = sqlx::query(
        "SELECT hash, grp, created_at, expires_at, uses, max_uses FROM tokens ORDER BY created_at DESC, hash",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|t| {
            Ok((
                t.try_get("hash")?,
                Token {
                    group: t.try_get("grp")?,
                    expires_at: t.try_get("expires_at")?,
                    uses: t.try_get("uses")?,
                    max_uses: t.try_get("max_uses")?,
                },
                t.try_get("created_at")?,
            ))
        })
        .collect()
}

pub async fn delete_token(tx: &mut AnyConnection, hash: &str) -> Result<()> {
    sqlx::query("DELETE FROM tokens WHERE hash = $1")
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Forgets a machine: its credential (so its agent is refused from then on), deliveries with
/// their history, settings, SSH and relay rows.
pub async fn remove(tx: &mut AnyConnection, id: &str) -> Result<bool> {
    for q in [
        "DELETE FROM events WHERE delivery_id IN (SELECT id FROM deliveries WHERE machine_id = $1)",
        "DELETE FROM deliveries WHERE machine_id = $1",
        "DELETE FROM machine_settings WHERE machine_id = $1",
        "DELETE FROM ssh_machines WHERE machine_id = $1",
        "DELETE FROM relays WHERE machine_id = $1",
    ] {
        sqlx::query(q).bind(id).execute(&mut *tx).await?;
    }
    let r = sqlx::query("DELETE FROM machines WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn delete_group(tx: &mut AnyConnection, name: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM machine_groups WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Counts one use of the token.
pub async fn use_token(tx: &mut AnyConnection, hash: &str) -> Result<()> {
    sqlx::query("UPDATE tokens SET uses = uses + 1 WHERE hash = $1")
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A new machine, enrolled and last seen `now`, without labels.
pub async fn insert(tx: &mut AnyConnection, m: &NewMachine<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO machines (id, secret_hash, hostname, inventory, peer_addr, labels, enrolled_at, last_seen, agent_state, enroll_group, os, language) \
         VALUES ($1, $2, $3, $4, $5, '[]', $6, $6, $7, $8, $9, $10)",
    )
    .bind(m.id)
    .bind(m.secret_hash)
    .bind(m.hostname)
    .bind(serde_json::to_string(m.inventory)?)
    .bind(m.peer_addr)
    .bind(m.now)
    .bind(m.agent_state)
    .bind(m.enroll_group)
    .bind(&m.inventory.os)
    .bind(&m.inventory.language)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn secret_hash(db: &AnyPool, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT secret_hash FROM machines WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Records when and where from up to `CHUNK` machines were last heard, and their agents'
/// states (id, heard at, peer address, state), in one statement.
pub async fn seen(tx: &mut AnyConnection, heard: &[(String, i64, String, String)]) -> Result<()> {
    if heard.is_empty() {
        return Ok(());
    }
    let q = format!(
        "UPDATE machines SET last_seen = v.column2, peer_addr = v.column3, agent_state = v.column4 \
         FROM (VALUES {}) AS v WHERE machines.id = v.column1",
        super::values(heard.len(), &["TEXT", "BIGINT", "TEXT", "TEXT"])
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for (id, at, peer_addr, state) in heard {
        query = query.bind(id).bind(at).bind(peer_addr).bind(state);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

pub async fn set_inventory(
    db: &AnyPool,
    id: &str,
    inv: &Inventory,
    now: i64,
    peer_addr: &str,
) -> Result<()> {
    sqlx::query("UPDATE machines SET inventory = $1, hostname = $2, last_seen = $3, peer_addr = $4, os = $5, language = $6 WHERE id = $7")
        .bind(serde_json::to_string(inv)?)
        .bind(&inv.hostname)
        .bind(now)
        .bind(peer_addr)
        .bind(&inv.os)
        .bind(&inv.language)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Every machine (without its groups), by hostname then id.
pub async fn list(db: &AnyPool) -> Result<Vec<MachineView>> {
    sqlx::query(
        "SELECT id, hostname, inventory, peer_addr, labels, enrolled_at, last_seen, agent_state, enroll_group FROM machines ORDER BY hostname, id",
    )
    .fetch_all(db)
    .await?
    .iter()
    .map(machine_view)
    .collect()
}

/// One machine (without its groups).
pub async fn get(db: &AnyPool, id: &str) -> Result<Option<MachineView>> {
    sqlx::query(
        "SELECT id, hostname, inventory, peer_addr, labels, enrolled_at, last_seen, agent_state, enroll_group FROM machines WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(machine_view)
    .transpose()
}

/// `(id, hostname)` of the machines a name could stand for (`core::machine_names` decides).
pub async fn named(db: &AnyPool, name: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, hostname FROM machines WHERE id = $1 OR LOWER(hostname) = LOWER($1)",
    )
    .bind(name)
    .fetch_all(db)
    .await?)
}

pub async fn peer_addr(db: &AnyPool, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT peer_addr FROM machines WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// The address the server sees the machine at, and its inventory.
pub async fn addressing(tx: &mut AnyConnection, id: &str) -> Result<Option<(String, Inventory)>> {
    let Some(m) = sqlx::query("SELECT peer_addr, inventory FROM machines WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let inv: Inventory = json(&m, "inventory")?;
    Ok(Some((m.try_get("peer_addr")?, inv)))
}

/// The labels of a machine.
pub async fn labels(db: &AnyPool, id: &str) -> Result<Option<Vec<String>>> {
    sqlx::query("SELECT labels FROM machines WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .map(|r| json(&r, "labels"))
        .transpose()
}

pub async fn set_labels(db: &AnyPool, id: &str, labels: &[String]) -> Result<()> {
    sqlx::query("UPDATE machines SET labels = $1 WHERE id = $2")
        .bind(serde_json::to_string(labels)?)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub(super) fn machine_view(r: &AnyRow) -> Result<MachineView> {
    Ok(MachineView {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        peer_address: r.try_get("peer_addr")?,
        inventory: json(r, "inventory")?,
        labels: json(r, "labels")?,
        enroll_group: r.try_get("enroll_group")?,
        groups: Vec::new(),
        enrolled_at_ms: r.try_get("enrolled_at")?,
        last_seen_ms: r.try_get("last_seen")?,
        agent_state: r.try_get("agent_state")?,
    })
}

/// Every group, by name.
pub async fn groups(db: &AnyPool) -> Result<Vec<Group>> {
    groups_in(&mut *db.acquire().await?).await
}

/// Every group, by name (in a transaction).
pub async fn groups_in(tx: &mut AnyConnection) -> Result<Vec<Group>> {
    sqlx::query("SELECT name, members, filter FROM machine_groups ORDER BY name")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(group_row)
        .collect()
}

/// `(id, hostname)` of every machine (in a transaction).
pub async fn names(tx: &mut AnyConnection) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT id, hostname FROM machines")
        .fetch_all(&mut *tx)
        .await?)
}

pub async fn group(tx: &mut AnyConnection, name: &str) -> Result<Option<Group>> {
    sqlx::query("SELECT name, members, filter FROM machine_groups WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(group_row)
        .transpose()
}

/// Creates or replaces the group.
pub async fn save_group(tx: &mut AnyConnection, g: &Group) -> Result<()> {
    sqlx::query("DELETE FROM machine_groups WHERE name = $1")
        .bind(&g.name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO machine_groups (name, members, filter) VALUES ($1, $2, $3)")
        .bind(&g.name)
        .bind(serde_json::to_string(&g.members)?)
        .bind(serde_json::to_string(&g.filter)?)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn group_row(r: &AnyRow) -> Result<Group> {
    Ok(Group {
        name: r.try_get("name")?,
        members: json(r, "members")?,
        filter: json(r, "filter")?,
    })
}

/// The machine already registered for `user@host:port`, if any.
pub async fn ssh_by_target(
    db: &AnyPool,
    user: &str,
    host: &str,
    port: u16,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT machine_id FROM ssh_machines WHERE username = $1 AND host = $2 AND port = $3",
    )
    .bind(user)
    .bind(host)
    .bind(port as i64)
    .fetch_optional(db)
    .await?)
}

pub async fn insert_ssh(tx: &mut AnyConnection, s: &SshRow, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO ssh_machines (machine_id, username, host, port, key_path, known_hosts, trust_on_first_use, work_dir, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&s.machine_id)
    .bind(&s.username)
    .bind(&s.host)
    .bind(s.port)
    .bind(&s.key_path)
    .bind(&s.known_hosts)
    .bind(s.trust_on_first_use as i64)
    .bind(&s.work_dir)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every SSH machine's access (`trust_on_first_use` as recorded when it was added).
pub async fn ssh_list(db: &AnyPool) -> Result<Vec<SshRow>> {
    let rows = sqlx::query(
        "SELECT machine_id, username, host, port, key_path, known_hosts, trust_on_first_use, work_dir FROM ssh_machines",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SshRow {
                machine_id: r.try_get("machine_id")?,
                username: r.try_get("username")?,
                host: r.try_get("host")?,
                port: r.try_get("port")?,
                key_path: r.try_get("key_path")?,
                known_hosts: r.try_get("known_hosts")?,
                trust_on_first_use: r.try_get::<i64, _>("trust_on_first_use")? != 0,
                work_dir: r.try_get("work_dir")?,
            })
        })
        .collect()
}

/// `(id, inventory JSON)` of every machine (in a transaction): for data upgrades.
pub async fn inventories(tx: &mut AnyConnection) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT id, inventory FROM machines")
        .fetch_all(&mut *tx)
        .await?)
}

/// Writes the copies of the inventory's OS and language (migration 10's columns).
pub async fn set_os_language(
    tx: &mut AnyConnection,
    id: &str,
    os: &str,
    language: &str,
) -> Result<()> {
    sqlx::query("UPDATE machines SET os = $1, language = $2 WHERE id = $3")
        .bind(os)
        .bind(language)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Locks the rows of `machines` until the transaction ends, in id order (PostgreSQL;
/// nothing on SQLite): one dispatch per machine at a time across servers
/// (`deliveries::lock` follows).
pub async fn lock(tx: &mut AnyConnection, machines: &[&str]) -> Result<()> {
    super::lock_ids(tx, "machines", machines).await
}
