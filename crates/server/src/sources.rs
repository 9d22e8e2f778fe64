//! The server's side of custom update sources and relays: stores the source list (checked
//! against the facts only the server has: relay addresses, DNS, its own addresses), gives
//! each work item its ordered sources with relay tokens, keeps the relay role and each relay's
//! cache, and holds a client's delivery until its relay has the content (OfficeScan upgrade
//! method 2). The decisions are `core::sources`; this file gathers facts and stores.

use super::Server;
use super::db::{self, now_ms};
use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use patchcast_core::machine_names::NameError;
use patchcast_core::model::types::Sha256;
use patchcast_core::sources::{self as cs, Category, Plan, Source, SourceList, validate};
use patchcast_proto::protocol::Inventory;
use patchcast_proto::sources::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

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

    /// Wakes every relay long poll waiting here.
    pub fn wake_all_relays(&self) {
        let m = self.relay_notify.lock().unwrap_or_else(|p| p.into_inner());
        for n in m.values() {
            n.notify_one();
        }
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

    /// Whether a stored source names this relay (sources store machine ids).
    fn is(&self, id: &str) -> bool {
        self.machine_id == id
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

/// A listed source as `machine` uses it, its relay token from `token`; None for a relay that
/// lost its role since the list was set, or the machine itself.
fn to_target(
    s: &Source,
    relays: &[RelayRow],
    machine: &str,
    token: impl FnOnce(&RelayRow) -> String,
) -> Option<SourceTarget> {
    Some(match s {
        Source::Server => SourceTarget::Server,
        Source::Https { url, fingerprint } => SourceTarget::Https {
            url: url.clone(),
            fingerprint: fingerprint.clone(),
        },
        Source::Smb { url } => SourceTarget::Smb { url: url.clone() },
        Source::Relay { machine: name } => {
            let r = relays.iter().find(|r| r.is(name) && r.enabled)?;
            if r.machine_id == machine {
                return None;
            }
            SourceTarget::Relay {
                machine: r.machine_id.clone(),
                url: r.url.clone(),
                fingerprint: r.fingerprint.clone(),
                token: token(r),
            }
        }
    })
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
        let u = patchcast_smb::ShareUrl::parse(url).ok()?;
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
        Ok(db::sources::relays(&self.db)
            .await?
            .into_iter()
            .map(|r| RelayRow {
                addresses: machine_addresses(&r.peer_addr, &r.inventory),
                machine_id: r.machine_id,
                hostname: r.hostname,
                enabled: r.enabled,
                listen: r.listen,
                url: r.url,
                fingerprint: r.fingerprint,
                cached: r.cached,
                last_seen: r.last_seen,
            })
            .collect())
    }

    /// The stored list; empty (server only) when none was set.
    pub async fn source_list(&self) -> Result<SourcesView> {
        let stored = self
            .cached
            .sources
            .get(|| db::sources::list(&self.db))
            .await?;
        Ok(match stored.as_ref().clone() {
            Some((list, updated_at)) => SourcesView {
                list,
                updated_at_ms: Some(updated_at),
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
        // A relay is stored by id: the name written is resolved now, once. An unknown name
        // is left for `validate` ("not known"); a hostname of several machines is refused.
        let mut list = list.clone();
        let mut ambiguous = Vec::new();
        for (e, entry) in list.entries.iter_mut().enumerate() {
            for (i, source) in entry.sources.iter_mut().enumerate() {
                if let Source::Relay { machine } = source {
                    match self.machine_id(machine).await {
                        Ok(id) => *machine = id,
                        Err(err) if err.is::<NameError>() => {
                            if let Some(a @ NameError::Ambiguous { .. }) = err.downcast_ref() {
                                ambiguous.push(SourceProblem {
                                    path: format!("entries[{e}].sources[{i}]"),
                                    message: a.to_string(),
                                });
                            }
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        let list = &list;
        let facts = self.source_facts(list).await?;
        let mut refused: Vec<SourceProblem> = validate(list, &|s| facts.get(s).cloned().flatten())
            .iter()
            .map(|p| SourceProblem {
                path: match (p.entry, p.source) {
                    (Some(e), Some(s)) => format!("entries[{e}].sources[{s}]"),
                    (Some(e), None) => format!("entries[{e}]"),
                    _ => "entries".into(),
                },
                message: p.message.clone(),
            })
            .collect();
        refused.extend(ambiguous);
        if !refused.is_empty() {
            return Ok(Err(SourcesRefused {
                error: format!(
                    "the source list was not saved: {} problem(s)",
                    refused.len()
                ),
                problems: refused,
            }));
        }
        let _w = self.write().await?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        db::sources::replace(&mut tx, list, now).await?;
        tx.commit().await?;
        drop(_w);
        self.tables_changed();
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
        let id = self.machine_id(machine).await?;
        let _w = self.write().await?;
        let old = db::sources::relay_listen(&self.db, &id).await?;
        let had_row = old.is_some();
        let listen = role
            .listen
            .clone()
            .or(old)
            .unwrap_or_else(|| DEFAULT_RELAY_LISTEN.into());
        let now = self.now();
        if had_row {
            db::sources::update_role(&self.db, &id, role.enabled, &listen, now).await?;
        } else {
            db::sources::insert_role(&self.db, &id, role.enabled, &listen, now).await?;
        }
        drop(_w);
        self.tables_changed();
        self.wake_relay(&id);
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
                let hexkey = match db::sources::token_key(&self.db).await? {
                    Some(h) => h,
                    None => {
                        let h = super::random_hex(32)?;
                        // Two first uses at once: the second insert fails and both read the winner.
                        let _ = db::sources::insert_token_key(&self.db, &h).await;
                        db::sources::token_key(&self.db)
                            .await?
                            .context("no relay token key is stored")?
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
        self.cached
            .relay_roles
            .get(|| async {
                let roles = db::sources::relay_roles(&self.db).await?;
                Ok(roles.into_iter().collect())
            })
            .await
            .is_ok_and(|roles| roles.get(machine).copied().unwrap_or(false))
    }

    /// Wakes a relay's long poll, here and on the other servers (`cluster`).
    pub fn wake_relay(&self, machine: &str) {
        self.sources.relay_notifier(machine).notify_one();
        self.cluster
            .signal(&super::cluster::Signal::Relay(machine.to_string()));
    }

    async fn wake_relays(&self) {
        if let Ok(rs) = self.relay_rows().await {
            for r in rs {
                self.wake_relay(&r.machine_id);
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
        let rows = db::deliveries::content_demand(&self.db).await?;
        let mut out: Vec<(bool, Prefetch)> = Vec::new();
        for r in &rows {
            let kind = package_kind(&r.manifest);
            let plan = cs::plan(
                &list,
                &machine_addresses(&r.peer_addr, &r.inventory),
                Category::of_package_kind(&kind),
            );
            let uses = plan.sources.iter().any(|s| {
                matches!(s, Source::Relay { machine } if relays.iter().any(|x| x.is(machine) && x.machine_id == relay.machine_id))
            });
            let sha = &r.archive_sha256;
            if uses
                && !relay.cached.contains(sha)
                && !out.iter().any(|(_, p)| p.sha256.hex() == *sha)
            {
                out.push((
                    kind != "agent",
                    Prefetch {
                        sha256: sha.parse().map_err(
                            |e: patchcast_core::model::types::FormatError| anyhow::anyhow!(e.0),
                        )?,
                        size: r.archive_size,
                    },
                ));
            }
        }
        // Agent builds first (as OfficeScan's update agents fetch their own update first): an
        // upgraded agent then serves the rest. The sort is stable, so the order is kept otherwise.
        out.sort_by_key(|(later, _)| *later);
        Ok(out.into_iter().map(|(_, p)| p).collect())
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
            && let Some(peer) = db::machines::peer_addr(&self.db, machine)
                .await?
                .and_then(|p| p.parse::<IpAddr>().ok())
        {
            url = format!("https://{}", SocketAddr::new(peer, addr.port()));
        }
        {
            let _w = self.write().await?;
            db::sources::update_status(
                &self.db,
                machine,
                &url,
                &st.fingerprint,
                &cached,
                self.now(),
            )
            .await?;
        }
        // Clients held for this relay may go now.
        let waiting = db::deliveries::waiting_machines(&self.db).await?;
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
        tx: &mut db::Conn,
        machine: &str,
        package: &str,
    ) -> Result<Option<(Plan, String, u64)>> {
        let list = self.source_list().await?.list;
        if list.entries.is_empty() {
            return Ok(None);
        }
        let Some((peer, inv)) = db::machines::addressing(tx, machine).await? else {
            return Ok(None);
        };
        let Some(p) = db::packages::for_sources(tx, package).await? else {
            return Ok(None);
        };
        let kind = package_kind(&p.manifest);
        let plan = cs::plan(
            &list,
            &machine_addresses(&peer, &inv),
            Category::of_package_kind(&kind),
        );
        if plan.entry.is_none() {
            return Ok(None);
        }
        Ok(Some((plan, p.archive_sha256, p.archive_size)))
    }

    /// The ordered sources for one work item; None: the server only (no entry matched).
    pub async fn work_sources(
        &self,
        tx: &mut db::Conn,
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
            let target = to_target(s, &relays, machine, |r| {
                let grant = Grant {
                    sub: machine.to_string(),
                    aud: r.machine_id.clone(),
                    sha256: sha.clone(),
                    exp: now_ms() + TOKEN_LIFE_MS,
                };
                sign_token(key, &grant)
            });
            sources.extend(target);
        }
        Ok(Some(WorkSources {
            entry: plan.entry,
            sources,
            fallback_to_server: plan.fallback_to_server,
        }))
    }

    /// Every custom source `machine` may be sent to, each once, in the order of the
    /// categories' plans (`patchcast-agent doctor` checks them). Relays come without a token:
    /// the doctor checks the way to them, not content.
    pub async fn machine_sources(&self, machine: &str) -> Result<Vec<SourceTarget>> {
        let list = self.source_list().await?.list;
        if list.entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.db.acquire().await?;
        let Some((peer, inv)) = db::machines::addressing(&mut conn, machine).await? else {
            return Ok(Vec::new());
        };
        drop(conn);
        let addresses = machine_addresses(&peer, &inv);
        let relays = self.relay_rows().await?;
        let mut out: Vec<SourceTarget> = Vec::new();
        for category in [
            Category::Components,
            Category::DomainSettings,
            Category::ProgramsAndHotfixes,
        ] {
            for s in &cs::plan(&list, &addresses, category).sources {
                let t = to_target(s, &relays, machine, |_| String::new());
                if let Some(t) = t.filter(|t| !out.contains(t) && *t != SourceTarget::Server) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Whether `machine`'s delivery of `package` waits for a relay to cache it first.
    pub async fn held_for_relay(
        &self,
        tx: &mut db::Conn,
        machine: &str,
        package: &str,
    ) -> Result<bool> {
        let Some((plan, sha, _)) = self.plan_for(tx, machine, package).await? else {
            return Ok(false);
        };
        let relays = self.relay_rows().await?;
        let now = self.now();
        let mut held = false;
        for s in &plan.sources {
            if let Source::Relay { machine: name } = s
                && let Some(r) = relays.iter().find(|r| r.is(name) && r.enabled)
                && r.machine_id != machine
                && now - r.last_seen < RELAY_LIVE_MS
                && !r.cached.contains(&sha)
            {
                self.wake_relay(&r.machine_id);
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
