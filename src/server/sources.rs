//! The server's side of custom update sources and relays: stores the source list (checked
//! against the facts only the server has: relay addresses, DNS, its own addresses), gives
//! each work item its ordered sources with relay tokens, keeps the relay role and each relay's
//! cache, and holds a client's delivery until its relay has the content (OfficeScan upgrade
//! method 2). The decisions are `core::sources`; this file gathers facts and stores.

use super::Server;
use super::db::{json, now_ms};
use crate::core::sources::{self as cs, Category, Plan, Source, SourceList, validate};
use crate::model::types::Sha256;
use crate::transport::protocol::Inventory;
use crate::transport::sources::*;
use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use sqlx::Row;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Schema of migration 4 (appended to `db::MIGRATIONS`).
pub const MIGRATION: &[&str] = &[
    "CREATE TABLE update_sources (id BIGINT PRIMARY KEY, spec TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE relays (machine_id TEXT PRIMARY KEY, enabled BIGINT NOT NULL, listen TEXT NOT NULL, \
     url TEXT, fingerprint TEXT, cached TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE source_keys (id BIGINT PRIMARY KEY, secret TEXT NOT NULL)",
];

/// Where relays listen unless told otherwise.
pub const DEFAULT_RELAY_LISTEN: &str = "0.0.0.0:8444";
/// How long a relay token is good for: longer than any install of the work item it came with.
const TOKEN_LIFE_MS: i64 = 12 * 3600 * 1000;
/// A relay not heard of for this long no longer holds its clients back.
const RELAY_LIVE_MS: i64 = 5 * 60 * 1000;

/// In-memory state: the listen address (the server's own source facts) and relay wake-ups.
pub struct State {
    pub listen: SocketAddr,
    relay_notify: Mutex<HashMap<String, Arc<Notify>>>,
    key: tokio::sync::OnceCell<SigningKey>,
}

impl State {
    pub fn new(listen: SocketAddr) -> State {
        State {
            listen,
            relay_notify: Mutex::new(HashMap::new()),
            key: tokio::sync::OnceCell::new(),
        }
    }

    pub fn relay_notifier(&self, machine: &str) -> Arc<Notify> {
        let mut m = self.relay_notify.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(machine.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }
}

#[derive(Debug, Clone)]
struct RelayRow {
    machine_id: String,
    hostname: String,
    enabled: bool,
    listen: String,
    url: Option<String>,
    fingerprint: Option<String>,
    cached: Vec<String>,
    last_seen: i64,
    addresses: Vec<IpAddr>,
}

impl RelayRow {
    fn view(&self) -> RelayView {
        RelayView {
            machine_id: self.machine_id.clone(),
            hostname: self.hostname.clone(),
            enabled: self.enabled,
            listen: self.listen.clone(),
            url: self.url.clone(),
            fingerprint: self.fingerprint.clone(),
            cached: self.cached.clone(),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.machine_id == name || self.hostname == name
    }

    /// Where neighbours reach it: the address it listens on, or every address it has when
    /// it listens on all of them.
    fn reachable(&self) -> Vec<IpAddr> {
        let listen: Option<SocketAddr> = self
            .url
            .as_deref()
            .and_then(|u| u.strip_prefix("https://"))
            .and_then(|a| a.parse().ok())
            .or_else(|| self.listen.parse().ok());
        match listen {
            Some(a) if !a.ip().is_unspecified() => vec![a.ip()],
            Some(a) => self
                .addresses
                .iter()
                .copied()
                .filter(|x| a.ip().is_ipv6() || x.is_ipv4())
                .collect(),
            None => self.addresses.clone(),
        }
    }
}

/// A machine's addresses, the one the server sees first.
fn machine_addresses(peer: &str, inv: &Inventory) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = peer.parse().ok().into_iter().collect();
    for a in inv.interfaces.iter().flat_map(|i| i.addresses.iter()) {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The package kind in a stored manifest (`hotfix`, `service_pack`, `application`).
fn package_kind(manifest: &str) -> String {
    serde_json::from_str::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v["package"]["kind"].as_str().map(String::from))
        .unwrap_or_else(|| "hotfix".into())
}

/// Host of an `https://` or `smb://` URL, and its default port.
fn url_host(url: &str) -> Option<(String, u16)> {
    let (rest, port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        let u = crate::smb::ShareUrl::parse(url).ok()?;
        return Some((u.host, u.port));
    };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (authority, port),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

impl Server {
    async fn relay_rows(&self) -> Result<Vec<RelayRow>> {
        let rows = sqlx::query(
            "SELECT r.machine_id, r.enabled, r.listen, r.url, r.fingerprint, r.cached, \
             m.hostname, m.peer_addr, m.inventory, m.last_seen \
             FROM relays r JOIN machines m ON m.id = r.machine_id ORDER BY m.hostname",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                let inv: Inventory = json(r, "inventory")?;
                let peer: String = r.try_get("peer_addr")?;
                Ok(RelayRow {
                    machine_id: r.try_get("machine_id")?,
                    hostname: r.try_get("hostname")?,
                    enabled: r.try_get::<i64, _>("enabled")? != 0,
                    listen: r.try_get("listen")?,
                    url: r.try_get("url")?,
                    fingerprint: r.try_get("fingerprint")?,
                    cached: json(r, "cached")?,
                    last_seen: r.try_get("last_seen")?,
                    addresses: machine_addresses(&peer, &inv),
                })
            })
            .collect()
    }

    /// The stored list; empty (server only) when none was set.
    pub async fn source_list(&self) -> Result<SourcesView> {
        let r = sqlx::query("SELECT spec, updated_at FROM update_sources WHERE id = 1")
            .fetch_optional(&self.db)
            .await?;
        Ok(match r {
            Some(r) => SourcesView {
                list: json(&r, "spec")?,
                updated_at_ms: Some(r.try_get("updated_at")?),
            },
            None => SourcesView {
                list: SourceList::default(),
                updated_at_ms: None,
            },
        })
    }

    /// The addresses each source of `list` can be reached at (None: unknown).
    async fn source_facts(
        &self,
        list: &SourceList,
    ) -> Result<HashMap<Source, Option<Vec<IpAddr>>>> {
        let relays = self.relay_rows().await?;
        let mut facts = HashMap::new();
        for s in list.entries.iter().flat_map(|e| e.sources.iter()) {
            if facts.contains_key(s) {
                continue;
            }
            let addrs = match s {
                Source::Server => Some(self.server_addresses()),
                Source::Relay { machine } => relays
                    .iter()
                    .find(|r| r.is(machine) && r.enabled)
                    .map(RelayRow::reachable),
                Source::Https { url, .. } | Source::Smb { url } => match url_host(url) {
                    None => None,
                    Some((host, port)) => match host.parse::<IpAddr>() {
                        Ok(ip) => Some(vec![ip]),
                        Err(_) => tokio::net::lookup_host((host.as_str(), port))
                            .await
                            .ok()
                            .map(|it| it.map(|a| a.ip()).collect()),
                    },
                },
            };
            facts.insert(s.clone(), addrs);
        }
        Ok(facts)
    }

    /// The server's own addresses as a source: where it listens, or all of this host's.
    fn server_addresses(&self) -> Vec<IpAddr> {
        let ip = self.sources.listen.ip();
        if !ip.is_unspecified() {
            return vec![ip];
        }
        let Ok(nets) = sysinfo::Networks::new_with_refreshed_list() else {
            return Vec::new();
        };
        nets.values()
            .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
            .filter(|a| ip.is_ipv6() || a.is_ipv4())
            .collect()
    }

    /// Checks and stores the list; refused lists come back with every problem.
    pub async fn set_sources(
        &self,
        list: &SourceList,
    ) -> Result<std::result::Result<SourcesView, SourcesRefused>> {
        // Made here, outside any dispatch transaction, so later work items only read it.
        self.token_key().await?;
        let facts = self.source_facts(list).await?;
        let problems = validate(list, &|s| facts.get(s).cloned().flatten());
        if !problems.is_empty() {
            return Ok(Err(SourcesRefused {
                error: format!(
                    "the source list was not saved: {} problem(s)",
                    problems.len()
                ),
                problems: problems
                    .iter()
                    .map(|p| SourceProblem {
                        path: match (p.entry, p.source) {
                            (Some(e), Some(s)) => format!("entries[{e}].sources[{s}]"),
                            (Some(e), None) => format!("entries[{e}]"),
                            _ => "entries".into(),
                        },
                        message: p.message.clone(),
                    })
                    .collect(),
            }));
        }
        let _w = self.write.lock().await;
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM update_sources WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO update_sources (id, spec, updated_at) VALUES (1, $1, $2)")
            .bind(serde_json::to_string(list)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(_w);
        self.wake_relays().await;
        Ok(Ok(SourcesView {
            list: list.clone(),
            updated_at_ms: Some(now),
        }))
    }

    pub async fn sources_test(&self, address: IpAddr) -> Result<SourcesTest> {
        let list = self.source_list().await?.list;
        let plans = [
            Category::Components,
            Category::DomainSettings,
            Category::ProgramsAndHotfixes,
        ]
        .into_iter()
        .map(|category| CategoryPlan {
            category,
            plan: cs::plan(&list, &[address], category),
        })
        .collect();
        Ok(SourcesTest {
            address: address.to_string(),
            plans,
            fallback: list.fallback,
        })
    }

    /// Gives or takes the relay role. None when no machine has that id or hostname.
    pub async fn set_relay_role(
        &self,
        machine: &str,
        role: &RelayRole,
    ) -> Result<Option<RelayView>> {
        if let Some(l) = &role.listen {
            l.parse::<SocketAddr>().with_context(|| {
                format!("--listen `{l}` is not ADDRESS:PORT (e.g. 0.0.0.0:8444)")
            })?;
        }
        let _w = self.write.lock().await;
        let Some(id) = sqlx::query_scalar::<_, String>(
            "SELECT id FROM machines WHERE id = $1 OR hostname = $1 ORDER BY id LIMIT 1",
        )
        .bind(machine)
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        let old = sqlx::query("SELECT listen FROM relays WHERE machine_id = $1")
            .bind(&id)
            .fetch_optional(&self.db)
            .await?;
        let listen = role.listen.clone().unwrap_or_else(|| match &old {
            Some(r) => r
                .try_get("listen")
                .unwrap_or_else(|_| DEFAULT_RELAY_LISTEN.into()),
            None => DEFAULT_RELAY_LISTEN.into(),
        });
        let now = now_ms();
        if old.is_some() {
            sqlx::query("UPDATE relays SET enabled = $1, listen = $2, updated_at = $3 WHERE machine_id = $4")
                .bind(role.enabled as i64)
                .bind(&listen)
                .bind(now)
                .bind(&id)
                .execute(&self.db)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO relays (machine_id, enabled, listen, url, fingerprint, cached, updated_at) \
                 VALUES ($1, $2, $3, NULL, NULL, '[]', $4)",
            )
            .bind(&id)
            .bind(role.enabled as i64)
            .bind(&listen)
            .bind(now)
            .execute(&self.db)
            .await?;
        }
        drop(_w);
        self.sources.relay_notifier(&id).notify_one();
        Ok(self
            .relay_rows()
            .await?
            .into_iter()
            .find(|r| r.machine_id == id)
            .map(|r| r.view()))
    }

    pub async fn relays(&self) -> Result<Vec<RelayView>> {
        Ok(self
            .relay_rows()
            .await?
            .iter()
            .map(RelayRow::view)
            .collect())
    }

    async fn token_key(&self) -> Result<&SigningKey> {
        self.sources
            .key
            .get_or_try_init(|| async {
                let row: Option<String> =
                    sqlx::query_scalar("SELECT secret FROM source_keys WHERE id = 1")
                        .fetch_optional(&self.db)
                        .await?;
                let hexkey = match row {
                    Some(h) => h,
                    None => {
                        let h = super::random_hex(32)?;
                        // Two first uses at once: the second insert fails and both read the winner.
                        let _ = sqlx::query("INSERT INTO source_keys (id, secret) VALUES (1, $1)")
                            .bind(&h)
                            .execute(&self.db)
                            .await;
                        sqlx::query_scalar("SELECT secret FROM source_keys WHERE id = 1")
                            .fetch_one(&self.db)
                            .await?
                    }
                };
                let mut b = [0u8; 32];
                hex::decode_to_slice(hexkey.trim(), &mut b)
                    .context("the relay token key is corrupt")?;
                Ok::<_, anyhow::Error>(SigningKey::from_bytes(&b))
            })
            .await
    }

    /// The relay settings for `machine` when it has the role (for its poll reply).
    pub async fn relay_settings(&self, machine: &str) -> Result<Option<RelaySettings>> {
        let relays = self.relay_rows().await?;
        let Some(r) = relays.iter().find(|r| r.machine_id == machine && r.enabled) else {
            return Ok(None);
        };
        let key = self.token_key().await?;
        Ok(Some(RelaySettings {
            listen: r.listen.clone(),
            token_key: hex::encode(key.verifying_key().to_bytes()),
            prefetch: self.relay_prefetch(r, &relays).await?,
        }))
    }

    pub async fn is_relay(&self, machine: &str) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT enabled FROM relays WHERE machine_id = $1")
            .bind(machine)
            .fetch_optional(&self.db)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| e != 0)
    }

    async fn wake_relays(&self) {
        if let Ok(rs) = self.relay_rows().await {
            for r in rs {
                self.sources.relay_notifier(&r.machine_id).notify_one();
            }
        }
    }

    /// Archives that clients waiting on `relay` need and it does not hold yet.
    async fn relay_prefetch(&self, relay: &RelayRow, relays: &[RelayRow]) -> Result<Vec<Prefetch>> {
        let list = self.source_list().await?.list;
        if !list
            .entries
            .iter()
            .flat_map(|e| e.sources.iter())
            .any(|s| matches!(s, Source::Relay { machine } if relay.is(machine)))
        {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT DISTINCT d.machine_id, m.peer_addr, m.inventory, p.archive_sha256, p.archive_size, p.manifest \
             FROM deliveries d JOIN machines m ON m.id = d.machine_id JOIN packages p ON p.id = d.package_id \
             WHERE d.state IN ('pending','awaiting_retry','transferring')",
        )
        .fetch_all(&self.db)
        .await?;
        let mut out: Vec<Prefetch> = Vec::new();
        for r in &rows {
            let inv: Inventory = json(r, "inventory")?;
            let peer: String = r.try_get("peer_addr")?;
            let kind = package_kind(&r.try_get::<String, _>("manifest")?);
            let plan = cs::plan(
                &list,
                &machine_addresses(&peer, &inv),
                Category::of_package_kind(&kind),
            );
            let uses = plan.sources.iter().any(|s| {
                matches!(s, Source::Relay { machine } if relays.iter().any(|x| x.is(machine) && x.machine_id == relay.machine_id))
            });
            let sha: String = r.try_get("archive_sha256")?;
            if uses && !relay.cached.contains(&sha) && !out.iter().any(|p| p.sha256.hex() == sha) {
                out.push(Prefetch {
                    sha256: sha
                        .parse()
                        .map_err(|e: crate::model::types::FormatError| anyhow::anyhow!(e.0))?,
                    size: r.try_get::<i64, _>("archive_size")? as u64,
                });
            }
        }
        Ok(out)
    }

    /// A relay's report of where it listens and what it holds.
    pub async fn relay_status(&self, machine: &str, st: &RelayStatus) -> Result<Option<RelayAck>> {
        if !self.is_relay(machine).await {
            return Ok(None);
        }
        let cached: Vec<String> = st.cached.iter().map(Sha256::hex).collect();
        // A relay listening on every address is reached at the one the server sees it from.
        let mut url = st.url.clone();
        if let Some(addr) = st
            .url
            .strip_prefix("https://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| a.ip().is_unspecified())
            && let Some(peer) =
                sqlx::query_scalar::<_, String>("SELECT peer_addr FROM machines WHERE id = $1")
                    .bind(machine)
                    .fetch_optional(&self.db)
                    .await?
                    .and_then(|p| p.parse::<IpAddr>().ok())
        {
            url = format!("https://{}", SocketAddr::new(peer, addr.port()));
        }
        {
            let _w = self.write.lock().await;
            sqlx::query(
                "UPDATE relays SET url = $1, fingerprint = $2, cached = $3, updated_at = $4 WHERE machine_id = $5",
            )
            .bind(&url)
            .bind(&st.fingerprint)
            .bind(serde_json::to_string(&cached)?)
            .bind(now_ms())
            .bind(machine)
            .execute(&self.db)
            .await?;
        }
        // Clients held for this relay may go now.
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT machine_id FROM deliveries WHERE state IN ('pending','awaiting_retry')",
        )
        .fetch_all(&self.db)
        .await?;
        for m in waiting {
            self.wake(&m);
        }
        let relays = self.relay_rows().await?;
        let wanted = match relays.iter().find(|r| r.machine_id == machine) {
            Some(r) => self.relay_prefetch(r, &relays).await?,
            None => Vec::new(),
        };
        Ok(Some(RelayAck { wanted }))
    }

    async fn plan_for(
        &self,
        tx: &mut sqlx::AnyConnection,
        machine: &str,
        package: &str,
    ) -> Result<Option<(Plan, String, u64)>> {
        let list: Option<SourceList> =
            match sqlx::query("SELECT spec FROM update_sources WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(r) => Some(json(&r, "spec")?),
                None => None,
            };
        let Some(list) = list.filter(|l| !l.entries.is_empty()) else {
            return Ok(None);
        };
        let Some(m) = sqlx::query("SELECT peer_addr, inventory FROM machines WHERE id = $1")
            .bind(machine)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let Some(p) = sqlx::query(
            "SELECT manifest, archive_sha256, archive_size FROM packages WHERE id = $1",
        )
        .bind(package)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let inv: Inventory = json(&m, "inventory")?;
        let kind = package_kind(&p.try_get::<String, _>("manifest")?);
        let plan = cs::plan(
            &list,
            &machine_addresses(&m.try_get::<String, _>("peer_addr")?, &inv),
            Category::of_package_kind(&kind),
        );
        if plan.entry.is_none() {
            return Ok(None);
        }
        Ok(Some((
            plan,
            p.try_get("archive_sha256")?,
            p.try_get::<i64, _>("archive_size")? as u64,
        )))
    }

    /// The ordered sources for one work item; None: the server only (no entry matched).
    pub async fn work_sources(
        &self,
        tx: &mut sqlx::AnyConnection,
        machine: &str,
        package: &str,
    ) -> Result<Option<WorkSources>> {
        let Some((plan, sha, _)) = self.plan_for(tx, machine, package).await? else {
            return Ok(None);
        };
        let relays = self.relay_rows().await?;
        let key = self.token_key().await?;
        let mut sources = Vec::new();
        for s in &plan.sources {
            sources.push(match s {
                Source::Server => SourceTarget::Server,
                Source::Https { url, fingerprint } => SourceTarget::Https {
                    url: url.clone(),
                    fingerprint: fingerprint.clone(),
                },
                Source::Smb { url } => SourceTarget::Smb { url: url.clone() },
                Source::Relay { machine: name } => {
                    // A relay that lost its role since the list was set is skipped.
                    let Some(r) = relays.iter().find(|r| r.is(name) && r.enabled) else {
                        continue;
                    };
                    if r.machine_id == machine {
                        continue;
                    }
                    let grant = Grant {
                        sub: machine.to_string(),
                        aud: r.machine_id.clone(),
                        sha256: sha.clone(),
                        exp: now_ms() + TOKEN_LIFE_MS,
                    };
                    SourceTarget::Relay {
                        machine: r.machine_id.clone(),
                        url: r.url.clone(),
                        fingerprint: r.fingerprint.clone(),
                        token: sign_token(key, &grant),
                    }
                }
            });
        }
        Ok(Some(WorkSources {
            entry: plan.entry,
            sources,
            fallback_to_server: plan.fallback_to_server,
        }))
    }

    /// Whether `machine`'s delivery of `package` waits for a relay to cache it first.
    pub async fn held_for_relay(
        &self,
        tx: &mut sqlx::AnyConnection,
        machine: &str,
        package: &str,
    ) -> Result<bool> {
        let Some((plan, sha, _)) = self.plan_for(tx, machine, package).await? else {
            return Ok(false);
        };
        let relays = self.relay_rows().await?;
        let now = now_ms();
        let mut held = false;
        for s in &plan.sources {
            if let Source::Relay { machine: name } = s
                && let Some(r) = relays.iter().find(|r| r.is(name) && r.enabled)
                && r.machine_id != machine
                && now - r.last_seen < RELAY_LIVE_MS
                && !r.cached.contains(&sha)
            {
                self.sources.relay_notifier(&r.machine_id).notify_one();
                held = true;
            }
        }
        if held {
            tracing::info!(%machine, %package, "delivery held until its relay has the content");
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("https://mirror.example/p", Some(("mirror.example", 443))),
            ("https://10.0.0.1:8443/p", Some(("10.0.0.1", 8443))),
            ("https://[2001:db8::1]:8443/p", Some(("2001:db8::1", 8443))),
            ("smb://127.0.0.1:4450/share/d", Some(("127.0.0.1", 4450))),
            ("smb://files/share", Some(("files", 445))),
            ("ftp://x/y", None),
        ];
        for &(u, want) in cases {
            assert_eq!(url_host(u), want.map(|(h, p)| (h.to_string(), p)), "{u}");
        }
    }
}
