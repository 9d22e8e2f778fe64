//! Group policies (`group_policies`: windows, holds, spread, under one global version),
//! automatic-update assignments (`autoupdate`: package × group) and each machine's time
//! setting state (`machine_settings`: the version it has, and a deferral code).

use super::json;
use anyhow::Result;
use patchcast_core::errors::Code;
use patchcast_core::model::group_policy::GroupPolicy;
use patchcast_proto::schedule_api::{Assignment, PolicyView};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// A machine's time setting state; the default when none was recorded.
#[derive(Debug, Clone, Default)]
pub struct Setting {
    /// The version the machine reported it has.
    pub applied: u64,
    pub code: Option<Code>,
    pub code_version: Option<u64>,
    pub code_session: Option<String>,
}

/// Stores the group's policy under the next global version, which it returns.
pub async fn replace(tx: &mut AnyConnection, p: &GroupPolicy, now: i64) -> Result<i64> {
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM group_policies")
        .fetch_one(&mut *tx)
        .await?;
    let version = version + 1;
    sqlx::query("DELETE FROM group_policies WHERE grp = $1")
        .bind(&p.group)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO group_policies (grp, spec, version, updated_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&p.group)
    .bind(serde_json::to_string(p)?)
    .bind(version)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(version)
}

/// Every group's policy, by group.
pub async fn list(db: &AnyPool) -> Result<Vec<PolicyView>> {
    sqlx::query("SELECT spec, version, updated_at FROM group_policies ORDER BY grp")
        .fetch_all(db)
        .await?
        .iter()
        .map(|r| {
            Ok(PolicyView {
                policy: json(r, "spec")?,
                version: r.try_get::<i64, _>("version")? as u64,
                updated_at_ms: r.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Every automatic-update assignment, by group then package.
pub async fn assignments(db: &AnyPool) -> Result<Vec<Assignment>> {
    let rows =
        sqlx::query("SELECT grp, package_id, assigned_at FROM autoupdate ORDER BY grp, package_id")
            .fetch_all(db)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Assignment {
                group: r.try_get("grp")?,
                package_id: r.try_get("package_id")?,
                assigned_at_ms: r.try_get("assigned_at")?,
            })
        })
        .collect()
}

/// Assigns the package to the group (again: `assigned_at` becomes `now`).
pub async fn assign(tx: &mut AnyConnection, group: &str, package: &str, now: i64) -> Result<()> {
    unassign(tx, group, package).await?;
    sqlx::query("INSERT INTO autoupdate (grp, package_id, assigned_at) VALUES ($1, $2, $3)")
        .bind(group)
        .bind(package)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Withdraws the assignment; whether there was one.
pub async fn unassign(tx: &mut AnyConnection, group: &str, package: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM autoupdate WHERE grp = $1 AND package_id = $2")
        .bind(group)
        .bind(package)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(n > 0)
}

pub async fn is_assigned(db: &AnyPool, group: &str, package: &str) -> Result<bool> {
    let v: Option<String> =
        sqlx::query_scalar("SELECT package_id FROM autoupdate WHERE grp = $1 AND package_id = $2")
            .bind(group)
            .bind(package)
            .fetch_optional(db)
            .await?;
    Ok(v.is_some())
}

pub async fn setting(db: &AnyPool, machine: &str) -> Result<Option<Setting>> {
    let r = sqlx::query(
        "SELECT applied, code, code_version, code_session FROM machine_settings WHERE machine_id = $1",
    )
    .bind(machine)
    .fetch_optional(db)
    .await?;
    r.as_ref().map(setting_of).transpose()
}

/// A `machine_settings` row's `applied, code, code_version, code_session`.
pub(super) fn setting_of(r: &AnyRow) -> Result<Setting> {
    Ok(Setting {
        applied: r.try_get::<i64, _>("applied")? as u64,
        code: r
            .try_get::<Option<String>, _>("code")?
            .and_then(|c| c.parse().ok()),
        code_version: r
            .try_get::<Option<i64>, _>("code_version")?
            .map(|v| v as u64),
        code_session: r.try_get("code_session")?,
    })
}

pub async fn put_setting(
    tx: &mut AnyConnection,
    machine: &str,
    s: &Setting,
    now: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM machine_settings WHERE machine_id = $1")
        .bind(machine)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO machine_settings (machine_id, applied, code, code_version, code_session, code_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(machine)
    .bind(s.applied as i64)
    .bind(s.code.map(|c| c.to_string()))
    .bind(s.code_version.map(|v| v as i64))
    .bind(&s.code_session)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
