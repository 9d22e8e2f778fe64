//! Published packages (`packages`): the signed manifest, the archive's hash and size, and
//! the install timeout the dispatcher needs.

use anyhow::Result;
use patchcast_proto::admin_api::{PackageVersionView, PackageView};
use sqlx::{AnyConnection, AnyPool, Row, any::AnyRow};

/// What a work item carries about its package.
#[derive(Debug, Clone)]
pub struct WorkPackage {
    pub archive_sha256: String,
    pub archive_size: u64,
    pub manifest: String,
    pub signature: String,
}

/// What planning a package's sources needs.
#[derive(Debug, Clone)]
pub struct SourcePackage {
    pub manifest: String,
    pub archive_sha256: String,
    pub archive_size: u64,
}

/// Publishes `v` as the current version of its id (replacing the earlier current one) and
/// records it among the id's versions (`rollback`: published as an explicit rollback).
pub async fn replace(
    tx: &mut AnyConnection,
    v: &PackageView,
    manifest: &str,
    signature: &str,
    install_timeout_secs: u64,
    rollback: bool,
) -> Result<()> {
    sqlx::query("DELETE FROM packages WHERE id = $1")
        .bind(&v.id)
        .execute(&mut *tx)
        .await?;
    // The same archive published again is one version, published anew.
    sqlx::query("DELETE FROM package_versions WHERE id = $1 AND archive_sha256 = $2")
        .bind(&v.id)
        .bind(&v.archive_sha256)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO packages (id, version, title, archive_sha256, archive_size, manifest, signature, key_id, published_at, install_timeout_secs) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&v.id)
    .bind(v.version.clone())
    .bind(&v.title)
    .bind(&v.archive_sha256)
    .bind(v.archive_size as i64)
    .bind(manifest)
    .bind(signature)
    .bind(&v.key_id)
    .bind(v.published_at_ms)
    .bind(install_timeout_secs as i64)
    .execute(&mut *tx)
    .await?;
    // The version row is the current row just written, plus how it was published.
    sqlx::query(
        "INSERT INTO package_versions (id, version, title, archive_sha256, archive_size, manifest, signature, key_id, published_at, install_timeout_secs, rollback) \
         SELECT id, version, title, archive_sha256, archive_size, manifest, signature, key_id, published_at, install_timeout_secs, $2 \
         FROM packages WHERE id = $1",
    )
    .bind(&v.id)
    .bind(i64::from(rollback))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every version published under `id`, the most recently published first; `current` marks
/// the one in `packages`. Empty when the id was never published (or was removed).
pub async fn versions(db: &AnyPool, id: &str) -> Result<Vec<PackageVersionView>> {
    let rows = sqlx::query(
        "SELECT v.version, v.archive_sha256, v.archive_size, v.key_id, v.published_at, v.rollback, \
         p.archive_sha256 AS current_sha256 FROM package_versions v \
         LEFT JOIN packages p ON p.id = v.id WHERE v.id = $1 \
         ORDER BY v.published_at DESC, v.archive_sha256",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let sha: String = r.try_get("archive_sha256")?;
            let current: Option<String> = r.try_get("current_sha256")?;
            Ok(PackageVersionView {
                version: r.try_get("version")?,
                current: current.as_deref() == Some(sha.as_str()),
                archive_sha256: sha,
                archive_size: r.try_get::<i64, _>("archive_size")? as u64,
                key_id: r.try_get("key_id")?,
                published_at_ms: r.try_get("published_at")?,
                rollback: r.try_get::<i64, _>("rollback")? != 0,
            })
        })
        .collect()
}

/// The manifests of the current versions of `ids` (those still published).
pub async fn manifests(tx: &mut AnyConnection, ids: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for id in ids {
        let m: Option<String> = sqlx::query_scalar("SELECT manifest FROM packages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(m) = m {
            out.push((id.clone(), m));
        }
    }
    Ok(out)
}

/// Every published package, by id.
pub async fn list(db: &AnyPool) -> Result<Vec<PackageView>> {
    let rows = sqlx::query("SELECT id, version, title, archive_sha256, archive_size, key_id, published_at FROM packages ORDER BY id")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(PackageView {
                id: r.try_get("id")?,
                version: r.try_get("version")?,
                title: r.try_get("title")?,
                archive_sha256: r.try_get("archive_sha256")?,
                archive_size: r.try_get::<i64, _>("archive_size")? as u64,
                key_id: r.try_get("key_id")?,
                published_at_ms: r.try_get("published_at")?,
            })
        })
        .collect()
}

/// Unpublishes a package; false when there was none. Its content file stays in the store
/// (deliveries' history names its hash).
pub async fn remove(tx: &mut AnyConnection, id: &str) -> Result<bool> {
    // Every version goes: a later publish of the id starts its history afresh.
    sqlx::query("DELETE FROM package_versions WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let r = sqlx::query("DELETE FROM packages WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Whether a package with that id is published.
pub async fn exists(tx: &mut AnyConnection, id: &str) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM packages WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(found.is_some())
}

/// The stored manifest (JSON, as signed).
pub async fn manifest(db: &AnyPool, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT manifest FROM packages WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

pub async fn archive_sha256(tx: &mut AnyConnection, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT archive_sha256 FROM packages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// The package of a work item; an error when it is not published.
pub async fn for_work(tx: &mut AnyConnection, id: &str) -> Result<WorkPackage> {
    let p = sqlx::query(
        "SELECT archive_sha256, archive_size, manifest, signature FROM packages WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    work_package(&p)
}

/// Published version `version` of package `id` (the latest publish of it), as a work item
/// carries it: what a scenario's `ID@VERSION` delivers.
pub async fn version(
    tx: &mut AnyConnection,
    id: &str,
    version: &str,
) -> Result<Option<WorkPackage>> {
    sqlx::query(
        "SELECT archive_sha256, archive_size, manifest, signature FROM package_versions \
         WHERE id = $1 AND version = $2 ORDER BY published_at DESC, archive_sha256 LIMIT 1",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?
    .as_ref()
    .map(work_package)
    .transpose()
}

fn work_package(p: &AnyRow) -> Result<WorkPackage> {
    Ok(WorkPackage {
        archive_sha256: p.try_get("archive_sha256")?,
        archive_size: p.try_get::<i64, _>("archive_size")? as u64,
        manifest: p.try_get("manifest")?,
        signature: p.try_get("signature")?,
    })
}

pub async fn for_sources(tx: &mut AnyConnection, id: &str) -> Result<Option<SourcePackage>> {
    let Some(p) =
        sqlx::query("SELECT manifest, archive_sha256, archive_size FROM packages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    Ok(Some(SourcePackage {
        manifest: p.try_get("manifest")?,
        archive_sha256: p.try_get("archive_sha256")?,
        archive_size: p.try_get::<i64, _>("archive_size")? as u64,
    }))
}
