//! SSH machines: agentless Unix hosts registered by an administrator
//! (`patchcast machine add-ssh`). Each is an ordinary row in `machines` (so groups, scenarios
//! and results treat it like any machine) plus its access in `ssh_machines`: user, host,
//! port, the PATH of the private key on the server host (never the key), the known_hosts
//! file and the remote work directory.

use super::Server;
use super::db;
use super::db::machines::{NewMachine, SshRow};
use super::{random_hex, sha256_hex};
use crate::ssh::Target;
use crate::ssh::facts::{self, Host};
use crate::ssh::session::{Access, Session, SshError};
use anyhow::Result;
use patchcast_proto::protocol::Inventory;
use patchcast_proto::ssh_api::{SshMachineAdded, SshMachineRequest};
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
        let existing =
            db::machines::ssh_by_target(&self.db, &target.user, &target.host, target.port).await?;
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
            let _w = self.write().await?;
            let now = self.now();
            let mut tx = self.db.begin().await.map_err(anyhow::Error::from)?;
            // No agent holds a secret for this machine: a random one no one knows.
            db::machines::insert(
                &mut tx,
                &NewMachine {
                    id: &id,
                    secret_hash: &sha256_hex(&random_hex(32)?),
                    hostname: &req.name,
                    inventory: &inv,
                    peer_addr: &target.host,
                    now,
                    agent_state: "ssh",
                    enroll_group: None,
                },
            )
            .await?;
            db::machines::insert_ssh(
                &mut tx,
                &SshRow {
                    machine_id: id.clone(),
                    username: target.user.clone(),
                    host: target.host.clone(),
                    port: target.port as i64,
                    key_path: access.key.display().to_string(),
                    known_hosts: access.known_hosts.display().to_string(),
                    trust_on_first_use: req.trust_on_first_use,
                    work_dir: work_dir.clone(),
                },
                now,
            )
            .await?;
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
        Ok(db::machines::ssh_list(&self.db)
            .await?
            .into_iter()
            .map(|r| SshMachine {
                id: r.machine_id,
                access: Access {
                    target: Target {
                        user: r.username,
                        host: r.host,
                        port: r.port as u16,
                    },
                    key: PathBuf::from(r.key_path),
                    known_hosts: PathBuf::from(r.known_hosts),
                    // Deliveries never learn keys: the first connection recorded it.
                    trust_on_first_use: false,
                    connect_timeout: CONNECT_TIMEOUT,
                },
                work_dir: r.work_dir,
            })
            .collect())
    }
}
