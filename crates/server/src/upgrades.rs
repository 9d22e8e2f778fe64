//! Changes to stored documents that SQL cannot express on both backends, each run once at
//! start, in one transaction with its record (`db::upgrades`).

use super::db;
use anyhow::{Context, Result};
use patchcast_core::machine_names;
use patchcast_core::sources::Source;

/// Ordered; never edit a released entry, append a new one.
const UPGRADES: &[&str] = &["machine names to ids", "machine os and language columns"];

pub async fn run(pool: &db::Pool) -> Result<()> {
    let done = db::upgrades::done(pool).await?;
    for &name in UPGRADES.iter().filter(|u| !done.iter().any(|d| d == *u)) {
        let mut tx = pool.begin().await?;
        match name {
            "machine names to ids" => names_to_ids(&mut tx).await?,
            "machine os and language columns" => os_and_language(&mut tx).await?,
            other => anyhow::bail!("no data upgrade named {other}"),
        }
        db::upgrades::record(&mut tx, name, db::now_ms()).await?;
        tx.commit()
            .await
            .with_context(|| format!("data upgrade `{name}`"))?;
    }
    Ok(())
}

/// Group members and relay sources were matched by id or hostname when read, so an agent
/// could claim a name; they are ids from now on. A name that stands for one machine becomes
/// its id; one that does not is kept as written, matches nothing (only ids are compared) and
/// is logged for the administrator to rewrite.
async fn names_to_ids(tx: &mut db::Conn) -> Result<()> {
    let machines = db::machines::names(tx).await?;
    let to_id = |what: &str, name: &mut String| match machine_names::resolve(
        name,
        machines.iter().map(|(i, h)| (i.as_str(), h.as_str())),
    ) {
        Ok(id) => *name = id,
        Err(e) => tracing::warn!("{what}: {e}; it names no machine until it is rewritten"),
    };
    for mut g in db::machines::groups_in(tx).await? {
        for m in &mut g.members {
            to_id(&format!("group {}", g.name), m);
        }
        db::machines::save_group(tx, &g).await?;
    }
    if let Some(mut list) = db::sources::list_in(tx).await? {
        for s in list.entries.iter_mut().flat_map(|e| e.sources.iter_mut()) {
            if let Source::Relay { machine } = s {
                to_id("update sources", machine);
            }
        }
        db::sources::replace(tx, &list, db::now_ms()).await?;
    }
    Ok(())
}

/// Migration 10 added `machines.os` and `machines.language`, copies of the inventory's; the
/// machines enrolled before it get them from their stored inventory.
async fn os_and_language(tx: &mut db::Conn) -> Result<()> {
    for (id, inventory) in db::machines::inventories(tx).await? {
        let inv: patchcast_proto::protocol::Inventory = serde_json::from_str(&inventory)
            .with_context(|| format!("machine {id}: unreadable inventory"))?;
        db::machines::set_os_language(tx, &id, &inv.os, &inv.language).await?;
    }
    Ok(())
}
