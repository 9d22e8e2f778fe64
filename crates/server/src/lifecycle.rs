//! Supersedence and requirements at dispatch: before a delivery is handed out, the packages
//! applied on (or busy on) its machine are read and `core::lifecycle::superseded_by` decides
//! whether one of them replaces it; then the machine's deliveries of the packages it
//! `requires:` are read and `core::lifecycle::requirements` decides whether it may start.

use super::Server;
use super::db;
use anyhow::Result;
use patchcast_core::delivery::State;
use patchcast_core::lifecycle::{Delivered, Other, Requirements, requirements, superseded_by};
use patchcast_core::model::package::{Package, resolve};
use patchcast_core::pipeline::Action;

/// The current version of a published package, resolved from its signed manifest.
fn resolved(manifest: &str) -> Option<Package> {
    let m: patchcast_pack::archive::Manifest = serde_json::from_str(manifest).ok()?;
    resolve(&m.package).0
}

/// The package a delivery's manifest resolves to, when it requires anything (most require
/// nothing: only a manifest that lists `requires` is resolved).
pub(super) fn requiring(manifest: Option<&str>) -> Option<Package> {
    manifest
        .filter(|m| m.contains("\"requires\""))
        .and_then(resolved)
}

impl Server {
    /// The id of the package that supersedes `package` on `machine`, if any.
    /// `applied_or_busy`: the machine's packages applied or busy
    /// (`db::deliveries::applied_or_busy_of_machines`).
    pub(super) async fn superseded(
        &self,
        tx: &mut db::Conn,
        applied_or_busy: &[(String, State, Action)],
        package: &str,
    ) -> Result<Option<String>> {
        let others: Vec<_> = applied_or_busy.iter().filter(|o| o.0 != package).collect();
        if others.is_empty() {
            return Ok(None);
        }
        let ids: Vec<String> = std::iter::once(package.to_string())
            .chain(others.iter().map(|o| o.0.clone()))
            .collect();
        let manifests = db::packages::manifests(tx, &ids).await?;
        let find = |id: &str| -> Option<Package> {
            manifests
                .iter()
                .find(|(i, _)| i == id)
                .and_then(|(_, m)| resolved(m))
        };
        // Only a manifest that lists `supersedes` can replace anything: resolve just those.
        let lists = |id: &str| {
            manifests
                .iter()
                .any(|(i, m)| i == id && m.contains("\"supersedes\""))
        };
        let packages: Vec<(Package, &_)> = others
            .iter()
            .filter(|o| lists(&o.0))
            .filter_map(|o| Some((find(&o.0)?, o)))
            .collect();
        if packages.is_empty() {
            return Ok(None);
        }
        let Some(this) = find(package) else {
            return Ok(None);
        };
        let others: Vec<Other> = packages
            .iter()
            .map(|(p, o)| Other {
                package: p,
                state: &o.1,
                install: o.2.is_install(),
            })
            .collect();
        Ok(superseded_by(&this, &others))
    }

    /// Whether a delivery of `this` (an install) may start on `machine`, given the packages
    /// it `requires:`; with those ids, which the dispatcher lets move ahead of it in its
    /// scenario.
    pub(super) async fn required(
        &self,
        tx: &mut db::Conn,
        machine: &str,
        this: &Package,
    ) -> Result<(Requirements, Vec<String>)> {
        let ids: Vec<String> = this.requires.iter().map(|r| r.id.to_string()).collect();
        let mut rows = Vec::new();
        for id in &ids {
            for (version, state, action) in
                db::deliveries::of_package_on_machine(tx, machine, id).await?
            {
                rows.push((id.as_str(), version, state, action.is_install()));
            }
        }
        let delivered: Vec<Delivered> = rows
            .iter()
            .map(|(id, version, state, install)| Delivered {
                id,
                version: version.as_deref(),
                state,
                install: *install,
            })
            .collect();
        Ok((requirements(this, &delivered), ids))
    }
}
