//! Machines: enrollment tokens, enrollment, agent credentials, inventory, labels and groups.
//!
//! Tokens and credentials are stored as SHA-256 only; the clear values are shown once.

use super::db::{self, machines::NewMachine};
use super::{Server, random_hex, sha256_hex};
use anyhow::Result;
use patchcast_core::machine_names;
use patchcast_proto::admin_api::{
    Group, GroupFilter, GroupView, MachineView, TokenCreated, TokenRequest, TokenView,
};
use patchcast_proto::protocol::{EnrollRequest, EnrollResponse, Inventory};
use std::net::IpAddr;

/// How stale `last_seen` may get while nothing else about a machine changes.
const SEEN_WRITE_MS: i64 = 5_000;
/// How long a heard-from record waits to be written with the others (`flush_seen`).
pub const SEEN_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the enrollment token is unknown, expired or used up; ask the administrator for a new one (`patchcast token create`)"
    )]
    BadToken,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Server {
    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenCreated> {
        let token = format!("pcenr_{}", random_hex(20)?);
        let now = self.now();
        let expires = now + (req.expires_secs as i64).saturating_mul(1000);
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        if let Some(g) = &req.group
            && db::machines::group(&mut tx, g).await?.is_none()
        {
            db::machines::save_group(
                &mut tx,
                &Group {
                    name: g.clone(),
                    ..Group::default()
                },
            )
            .await?;
        }
        db::machines::insert_token(
            &mut tx,
            &sha256_hex(&token),
            req.group.as_deref(),
            now,
            expires,
            req.uses.map(|u| u as i64),
        )
        .await?;
        tx.commit().await?;
        Ok(TokenCreated {
            id: token_id(&sha256_hex(&token)),
            token,
            expires_at_ms: expires,
        })
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        Ok(db::machines::tokens(&self.db)
            .await?
            .into_iter()
            .map(|(hash, t, created)| TokenView {
                id: token_id(&hash),
                group: t.group,
                created_at_ms: created,
                expires_at_ms: t.expires_at,
                uses: t.uses.max(0) as u64,
                max_uses: t.max_uses.map(|m| m.max(0) as u64),
            })
            .collect())
    }

    /// Deletes the token `id` names; false when none does.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let _w = self.write().await?;
        let Some(hash) = db::machines::tokens(&self.db)
            .await?
            .into_iter()
            .map(|(hash, _, _)| hash)
            .find(|h| token_id(h) == id)
        else {
            return Ok(false);
        };
        let mut tx = self.db.begin().await?;
        db::machines::delete_token(&mut tx, &hash).await?;
        tx.commit().await?;
        tracing::info!(token = %id, "enrollment token revoked");
        Ok(true)
    }

    pub async fn enroll(
        &self,
        req: &EnrollRequest,
        peer: IpAddr,
    ) -> Result<EnrollResponse, EnrollError> {
        let _w = self.write().await?;
        let now = self.now();
        let mut tx = self.db.begin().await.map_err(anyhow::Error::from)?;
        let hash = sha256_hex(req.token.trim());
        let t = db::machines::token(&mut tx, &hash)
            .await?
            .ok_or(EnrollError::BadToken)?;
        if t.expires_at < now || t.max_uses.is_some_and(|m| t.uses >= m) {
            return Err(EnrollError::BadToken);
        }
        db::machines::use_token(&mut tx, &hash).await?;
        let id = format!("m-{}", random_hex(8)?);
        let secret = random_hex(32)?;
        db::machines::insert(
            &mut tx,
            &NewMachine {
                id: &id,
                secret_hash: &sha256_hex(&secret),
                hostname: &req.inventory.hostname,
                inventory: &req.inventory,
                peer_addr: &peer.to_string(),
                now,
                agent_state: "idle",
                // Membership through the token is a column, not a growing member list to rewrite.
                enroll_group: t.group.as_deref(),
            },
        )
        .await?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        tracing::info!(machine = %id, hostname = %req.inventory.hostname, %peer, "enrolled");
        let trust = self.keys.set();
        Ok(EnrollResponse {
            machine_id: id.clone(),
            credential: secret,
            publisher_keys: trust.keys,
            poll_ms: self.poll_ms,
            trust_serial: trust.serial,
            revoked_keys: trust.revoked,
        })
    }

    /// The machine id behind an agent credential `<machine_id>.<secret>`, or None.
    pub async fn authenticate_agent(&self, bearer: &str) -> Result<Option<String>> {
        let Some((id, secret)) = bearer.split_once('.') else {
            return Ok(None);
        };
        let key = id.to_string();
        let stored = self
            .cached
            .agents
            .get(&key, || db::machines::secret_hash(&self.db, id))
            .await?;
        Ok(stored
            .filter(|h| constant_eq(h.as_bytes(), sha256_hex(secret).as_bytes()))
            .map(|_| id.to_string()))
    }

    pub fn is_admin(&self, bearer: &str) -> bool {
        constant_eq(sha256_hex(bearer).as_bytes(), self.admin_hash.as_bytes())
    }

    /// Records that the machine was heard from, where from, and in which state. The record
    /// waits for the next `flush_seen` (within `SEEN_FLUSH`): a fleet's check-ins of one
    /// second cost one transaction, not one write each.
    pub fn seen(&self, machine: &str, peer: IpAddr, state: &str) {
        // Heartbeats are frequent: write only when something changed or every few seconds.
        let now = self.now();
        let key = (peer.to_string(), state.to_string());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(machine) {
            Some((at, k)) if *k == key && now - at < SEEN_WRITE_MS => {}
            _ => {
                seen.insert(machine.to_string(), (now, key.clone()));
                let mut due = self.seen_due.lock().unwrap_or_else(|p| p.into_inner());
                due.insert(machine.to_string(), (now, key));
            }
        }
    }

    /// Writes the heard-from records waiting since the last flush, in one transaction of
    /// `db::CHUNK` machines to a statement (one statement per machine was 40 % of the
    /// writer's statements in a rollout).
    pub async fn flush_seen(&self) -> Result<usize> {
        let due = std::mem::take(&mut *self.seen_due.lock().unwrap_or_else(|p| p.into_inner()));
        if due.is_empty() {
            return Ok(0);
        }
        let heard: Vec<_> = due
            .into_iter()
            .map(|(id, (at, (peer, state)))| (id, at, peer, state))
            .collect();
        // Every write holds the lock: SQLite refuses a write from a stale snapshot (BUSY_SNAPSHOT).
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        for chunk in heard.chunks(db::CHUNK) {
            db::machines::seen(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(heard.len())
    }

    pub async fn set_inventory(&self, machine: &str, inv: &Inventory, peer: IpAddr) -> Result<()> {
        let _w = self.write().await?;
        db::machines::set_inventory(&self.db, machine, inv, self.now(), &peer.to_string()).await
    }

    pub async fn machines(&self) -> Result<Vec<MachineView>> {
        let mut out = db::machines::list(&self.db).await?;
        // Each machine against each group's definition: linear in the fleet (looking each
        // machine up in every group's resolved list was quadratic).
        let groups = db::machines::groups(&self.db).await?;
        for m in &mut out {
            m.groups = groups
                .iter()
                .filter(|g| in_group(g, m))
                .map(|g| g.name.clone())
                .collect();
        }
        Ok(out)
    }

    /// One machine with the names of the groups it is in (without resolving every group).
    pub async fn machine_by_id(&self, id: &str) -> Result<Option<MachineView>> {
        let Some(mut m) = db::machines::get(&self.db, id).await? else {
            return Ok(None);
        };
        let groups = db::machines::groups(&self.db).await?;
        m.groups = groups
            .iter()
            .filter(|g| in_group(g, &m))
            .map(|g| g.name.clone())
            .collect();
        Ok(Some(m))
    }

    /// The id an administrator's machine name (id or hostname) stands for, resolved now so
    /// that only ids are stored; a name that picks out no single machine is a `NameError`
    /// (the API answers 404 or 409 with "which one?").
    pub async fn machine_id(&self, name: &str) -> Result<String> {
        let named = db::machines::named(&self.db, name).await?;
        Ok(machine_names::resolve(
            name,
            named.iter().map(|(id, host)| (id.as_str(), host.as_str())),
        )?)
    }

    /// Removes the machine an admin names; its id, for the record.
    pub async fn remove_machine(&self, name: &str) -> Result<String> {
        let id = self.machine_id(name).await?;
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        db::machines::remove(&mut tx, &id).await?;
        tx.commit().await?;
        self.machine_removed(&id);
        tracing::info!(machine = %id, "machine removed");
        Ok(id)
    }

    /// Unpublishes a package: refused while deliveries of it are under way or automatic
    /// update assigns it; scenarios naming it are refused from then on. False: none.
    pub async fn remove_package(&self, id: &str) -> Result<std::result::Result<bool, String>> {
        let _w = self.write().await?;
        let groups: Vec<String> = db::policies::assignments(&self.db)
            .await?
            .into_iter()
            .filter(|a| a.package_id == id)
            .map(|a| format!("`patchcast autoupdate unassign {id} --group {}`", a.group))
            .collect();
        if !groups.is_empty() {
            return Ok(Err(format!(
                "package `{id}` is assigned for automatic update; unassign it first: {}",
                groups.join("; ")
            )));
        }
        let unfinished = db::deliveries::unfinished_of_package(&self.db, id).await?;
        if unfinished > 0 {
            return Ok(Err(format!(
                "package `{id}` has {unfinished} deliveries under way; wait for them to finish (`patchcast results --package {id}`)"
            )));
        }
        let mut tx = self.db.begin().await?;
        let found = db::packages::remove(&mut tx, id).await?;
        tx.commit().await?;
        if found {
            tracing::info!(package = %id, "package removed");
        }
        Ok(Ok(found))
    }

    /// Deletes a group; refused while a window policy or an automatic-update assignment
    /// still names it (they would silently stop applying). False when there is no such group.
    pub async fn delete_group(&self, name: &str) -> Result<std::result::Result<bool, String>> {
        let policy = db::policies::list(&self.db)
            .await?
            .iter()
            .any(|p| p.policy.group == name);
        let assigned: Vec<String> = db::policies::assignments(&self.db)
            .await?
            .into_iter()
            .filter(|a| a.group == name)
            .map(|a| a.package_id)
            .collect();
        if policy || !assigned.is_empty() {
            let mut what = Vec::new();
            if policy {
                what.push("a window policy (`patchcast schedule`)".to_string());
            }
            if !assigned.is_empty() {
                let commands: Vec<String> = assigned
                    .iter()
                    .map(|p| format!("`patchcast autoupdate unassign {p} --group {name}`"))
                    .collect();
                what.push(format!(
                    "automatic update of {} ({})",
                    assigned.join(", "),
                    commands.join("; ")
                ));
            }
            return Ok(Err(format!(
                "group `{name}` is still used by {}; remove those first",
                what.join(" and ")
            )));
        }
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let found = db::machines::delete_group(&mut tx, name).await?;
        tx.commit().await?;
        Ok(Ok(found))
    }

    pub async fn label(
        &self,
        machine: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Option<MachineView>> {
        let machine = self.machine_id(machine).await?;
        let machine = machine.as_str();
        let _w = self.write().await?;
        let Some(mut labels) = db::machines::labels(&self.db, machine).await? else {
            return Ok(None);
        };
        labels.retain(|l| !remove.contains(l));
        for a in add {
            if !labels.contains(a) {
                labels.push(a.clone());
            }
        }
        db::machines::set_labels(&self.db, machine, &labels).await?;
        drop(_w);
        self.machine_by_id(machine).await
    }

    pub async fn put_group(&self, g: &Group) -> Result<GroupView> {
        if let Some(r) = &g.filter.ip_range {
            r.parse::<ipnet::IpNet>().map_err(|e| {
                anyhow::anyhow!("ip_range `{r}` is not a CIDR range ({e}); write e.g. 10.0.0.0/8")
            })?;
        }
        anyhow::ensure!(!g.name.trim().is_empty(), "the group name is empty");
        let mut g = g.clone();
        for m in &mut g.members {
            *m = self.machine_id(m).await?;
        }
        let g = &g;
        {
            let _w = self.write().await?;
            let mut tx = self.db.begin().await?;
            db::machines::save_group(&mut tx, g).await?;
            tx.commit().await?;
        }
        self.groups()
            .await?
            .into_iter()
            .find(|v| v.group.name == g.name)
            .ok_or_else(|| anyhow::anyhow!("group {} vanished", g.name))
    }

    pub async fn groups(&self) -> Result<Vec<GroupView>> {
        let groups = db::machines::groups(&self.db).await?;
        let machines = db::machines::list(&self.db).await?;
        Ok(groups
            .into_iter()
            .map(|g| GroupView {
                resolved: machines
                    .iter()
                    .filter(|m| in_group(&g, m))
                    .map(|m| m.id.clone())
                    .collect(),
                group: g,
            })
            .collect())
    }
}

/// Static member, or matches every criterion of a non-empty filter.
pub fn in_group(g: &Group, m: &MachineView) -> bool {
    m.enroll_group.as_deref() == Some(g.name.as_str())
        || g.members.contains(&m.id)
        || (!g.filter.is_empty() && matches(&g.filter, m))
}

fn matches(f: &GroupFilter, m: &MachineView) -> bool {
    let inv = &m.inventory;
    if let Some(os) = &f.os
        && !(inv.os == *os || inv.os.starts_with(&format!("{os}-")))
    {
        return false;
    }
    if let Some(lang) = &f.language {
        let l = inv.language.to_ascii_lowercase();
        let want = lang.to_ascii_lowercase();
        if !(l == want || l.starts_with(&format!("{want}-")) || l.starts_with(&format!("{want}_")))
        {
            return false;
        }
    }
    if let Some(range) = &f.ip_range {
        let Ok(net) = range.parse::<ipnet::IpNet>() else {
            return false;
        };
        let peer = m.peer_address.parse::<IpAddr>().ok();
        let reported = inv
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().copied());
        if !peer.into_iter().chain(reported).any(|a| net.contains(&a)) {
            return false;
        }
    }
    if let Some(label) = &f.label
        && !m.labels.contains(label)
    {
        return false;
    }
    true
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token's public name: the first 16 hex digits of its SHA-256.
fn token_id(hash: &str) -> String {
    hash.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(os: &str, lang: &str, peer: &str, addr: &str, labels: &[&str]) -> MachineView {
        let mut inventory = Inventory {
            os: os.into(),
            language: lang.into(),
            ..Inventory::default()
        };
        inventory
            .interfaces
            .push(patchcast_proto::protocol::Interface {
                name: "eth0".into(),
                mac: String::new(),
                addresses: vec![addr.parse().unwrap()],
            });
        MachineView {
            id: "m-1".into(),
            hostname: "h1".into(),
            peer_address: peer.into(),
            inventory,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            enroll_group: None,
            groups: vec![],
            enrolled_at_ms: 0,
            last_seen_ms: 0,
            agent_state: "idle".into(),
        }
    }

    fn group(filter: GroupFilter) -> Group {
        Group {
            name: "g".into(),
            members: vec![],
            filter,
        }
    }

    #[test]
    fn filters_need_every_criterion() {
        let m = machine(
            "windows-server-2008-enterprise",
            "ja-JP",
            "192.168.1.5",
            "10.1.2.3",
            &["canary"],
        );
        let f = |os: Option<&str>, lang: Option<&str>, ip: Option<&str>, label: Option<&str>| {
            GroupFilter {
                os: os.map(Into::into),
                language: lang.map(Into::into),
                ip_range: ip.map(Into::into),
                label: label.map(Into::into),
            }
        };
        assert!(in_group(
            &group(f(Some("windows-server-2008"), Some("ja"), None, None)),
            &m
        ));
        assert!(!in_group(
            &group(f(Some("windows-server-2003"), Some("ja"), None, None)),
            &m
        ));
        assert!(
            !in_group(
                &group(f(Some("windows-server-2008-ent"), None, None, None)),
                &m
            ),
            "prefix by whole segments"
        );
        assert!(!in_group(&group(f(None, Some("j"), None, None)), &m));
        assert!(
            in_group(&group(f(None, None, Some("192.168.0.0/16"), None)), &m),
            "the address the server sees"
        );
        assert!(
            in_group(&group(f(None, None, Some("10.1.0.0/16"), None)), &m),
            "a reported address"
        );
        assert!(!in_group(
            &group(f(None, None, Some("172.16.0.0/12"), None)),
            &m
        ));
        assert!(in_group(&group(f(None, None, None, Some("canary"))), &m));
        assert!(!in_group(
            &group(f(Some("windows"), None, None, Some("prod"))),
            &m
        ));
        assert!(
            !in_group(&group(GroupFilter::default()), &m),
            "an empty filter matches nothing"
        );
    }

    #[test]
    fn members_and_enrollment_group() {
        let mut m = machine("debian-12", "en", "127.0.0.1", "10.0.0.1", &[]);
        let mut g = group(GroupFilter::default());
        assert!(!in_group(&g, &m));
        g.members = vec!["h1".into()];
        assert!(
            !in_group(&g, &m),
            "a hostname is the machine's own claim: members are ids"
        );
        g.members = vec!["m-1".into()];
        assert!(in_group(&g, &m), "by id");
        g.members.clear();
        m.enroll_group = Some("g".into());
        assert!(in_group(&g, &m), "the token's group");
    }
}
