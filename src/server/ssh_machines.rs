//! SSH machines: agentless Unix hosts registered by an administrator
//! (`patchcast machine add-ssh`). Each is an ordinary row in `machines` (so groups, scenarios
//! and results treat it like any machine) plus its access in `ssh_machines`: user, host,
//! port, the PATH of the private key on the server host (never the key), the known_hosts
//! file and the remote work directory.

use super::Server;
use super::db::now_ms;
use super::{random_hex, sha256_hex};
use crate::ssh::Target;
use crate::ssh::facts::{self, Host};
use crate::ssh::session::{Access, Session, SshError};
use crate::transport::protocol::Inventory;
use crate::transport::ssh_api::{SshMachineAdded, SshMachineRequest};
use anyhow::Result;
use sqlx::Row;
use std::path::PathBuf;
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Where work directories go when the request names none.
pub const DEFAULT_WORK_DIR: &str = "/tmp";

/// One registered SSH machine.
#[derive(Debug, Clone)]
pub struct SshMachine {
    pub id: String,
    pub access: Access,
    pub work_dir: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The request itself is wrong (bad target, missing key file, already added).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The inventory the server keeps for an SSH host.
pub fn inventory(name: &str, host: &Host, disk: Option<&facts::Disk>, work_dir: &str) -> Inventory {
    Inventory {
        hostname: name.to_string(),
        os: host.facts.os.clone(),
        os_version: host.os_version.clone(),
        arch: host.facts.arch.clone(),
        language: host.facts.language.clone(),
        system_drive: work_dir.to_string(),
        disk_free: disk.map_or(0, |d| d.free),
        disk_total: disk.map_or(0, |d| d.total),
        memory_total: host.memory_total,
        agent_version: format!("ssh (agentless, {})", host.hostname),
        ..Inventory::default()
    }
}

/// The host's description and free space in its work directory, in one round trip.
pub async fn describe(
    s: &Session,
    work_dir: &str,
) -> Result<(Host, Option<facts::Disk>), SshError> {
    let out = s
        .exec(&(facts::script(&[]) + &facts::disk_script(work_dir)))
        .await?;
    let text = out.stdout_text();
    Ok((facts::parse(&[], &text), facts::parse_disk(&text)))
}

impl Server {
    /// Registers an SSH machine after connecting to it once (host key checked, or recorded
    /// when trust on first use was asked) and reading what it is.
    pub async fn add_ssh_machine(
        &self,
        req: &SshMachineRequest,
    ) -> Result<SshMachineAdded, AddError> {
        let target: Target = req.target.parse().map_err(AddError::Invalid)?;
        if req.name.trim().is_empty() {
            return Err(AddError::Invalid("the machine name is empty".into()));
        }
        let key = PathBuf::from(&req.key);
        if !key.is_absolute() || !key.is_file() {
            return Err(AddError::Invalid(format!(
                "the private key {} is not a readable file on the server host (give an absolute path)",
                req.key
            )));
        }
        let known_hosts = match &req.known_hosts {
            Some(k) if !PathBuf::from(k).is_absolute() => {
                return Err(AddError::Invalid(format!(
                    "the known_hosts path {k} must be absolute (it is read by the server)"
                )));
            }
            Some(k) => PathBuf::from(k),
            None => crate::ssh::known_hosts::default_file(&self.ssh.data),
        };
        let work_dir = req
            .work_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_WORK_DIR.into());
        if !work_dir.starts_with('/') {
            return Err(AddError::Invalid(format!(
                "the remote work directory {work_dir} must be an absolute path"
            )));
        }
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT machine_id FROM ssh_machines WHERE username = $1 AND host = $2 AND port = $3",
        )
        .bind(&target.user)
        .bind(&target.host)
        .bind(target.port as i64)
        .fetch_optional(&self.db)
        .await
        .map_err(anyhow::Error::from)?;
        if let Some(id) = existing {
            return Err(AddError::Invalid(format!(
                "{target} is already machine {id}"
            )));
        }
        let access = Access {
            target: target.clone(),
            key,
            known_hosts,
            trust_on_first_use: req.trust_on_first_use,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let session = Session::connect(&access).await?;
        let (host, disk) = describe(&session, &work_dir).await?;
        let (learned, host_key) = (session.learned_host_key, session.host_key.clone());
        session.close().await;
        let inv = inventory(&req.name, &host, disk.as_ref(), &work_dir);
        let id = format!("m-{}", random_hex(8)?);
        {
            let _w = self.write.lock().await;
            let now = now_ms();
            let mut tx = self.db.begin().await.map_err(anyhow::Error::from)?;
            // No agent holds a secret for this machine: a random one no one knows.
            sqlx::query(
                "INSERT INTO machines (id, secret_hash, hostname, inventory, peer_addr, labels, enrolled_at, last_seen, agent_state, enroll_group) \
                 VALUES ($1, $2, $3, $4, $5, '[]', $6, $6, 'ssh', NULL)",
            )
            .bind(&id)
            .bind(sha256_hex(&random_hex(32)?))
            .bind(&req.name)
            .bind(serde_json::to_string(&inv).map_err(anyhow::Error::from)?)
            .bind(&target.host)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(anyhow::Error::from)?;
            sqlx::query(
                "INSERT INTO ssh_machines (machine_id, username, host, port, key_path, known_hosts, trust_on_first_use, work_dir, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&id)
            .bind(&target.user)
            .bind(&target.host)
            .bind(target.port as i64)
            .bind(access.key.display().to_string())
            .bind(access.known_hosts.display().to_string())
            .bind(req.trust_on_first_use as i64)
            .bind(&work_dir)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(anyhow::Error::from)?;
            tx.commit().await.map_err(anyhow::Error::from)?;
        }
        tracing::info!(machine = %id, %target, os = %inv.os, host_key = %host_key, "SSH machine added");
        self.ssh.spawn(SshMachine {
            id: id.clone(),
            access,
            work_dir,
        });
        let machine = self
            .machines()
            .await?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| anyhow::anyhow!("machine {id} vanished after it was added"))?;
        Ok(SshMachineAdded {
            machine,
            host_key_learned: learned,
            host_key,
        })
    }

    /// Every registered SSH machine.
    pub async fn ssh_machines(&self) -> Result<Vec<SshMachine>> {
        let rows = sqlx::query(
            "SELECT machine_id, username, host, port, key_path, known_hosts, trust_on_first_use, work_dir FROM ssh_machines",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SshMachine {
                    id: r.try_get("machine_id")?,
                    access: Access {
                        target: Target {
                            user: r.try_get("username")?,
                            host: r.try_get("host")?,
                            port: r.try_get::<i64, _>("port")? as u16,
                        },
                        key: PathBuf::from(r.try_get::<String, _>("key_path")?),
                        known_hosts: PathBuf::from(r.try_get::<String, _>("known_hosts")?),
                        // Deliveries never learn keys: the first connection recorded it.
                        trust_on_first_use: false,
                        connect_timeout: CONNECT_TIMEOUT,
                    },
                    work_dir: r.try_get("work_dir")?,
                })
            })
            .collect()
    }
}
