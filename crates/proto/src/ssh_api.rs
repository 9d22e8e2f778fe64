//! The admin API for SSH machines (agentless Unix hosts the server delivers to over SSH).
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | POST | `/api/v1/admin/ssh-machines` | `SshMachineRequest` → `SshMachineAdded` |
//!
//! The request names the private key by its path on the server host: the key itself never
//! travels and is never stored in the database or written to a log.

use super::admin_api::{Admin, MachineView};
use super::client::CallError;
use serde::{Deserialize, Serialize};

pub const SSH_MACHINES: &str = "/api/v1/admin/ssh-machines";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshMachineRequest {
    /// Shown as the machine's hostname until the host reports its own.
    pub name: String,
    /// `user@host[:port]`.
    pub target: String,
    /// Private key file on the server host (OpenSSH format, no passphrase).
    pub key: String,
    /// known_hosts file on the server host; default DATA/ssh/known_hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// Record the host key when the host is not in the file yet.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Directory on the host under which each delivery gets a private work directory
    /// (default `/tmp`); its file system is the one checked for free space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshMachineAdded {
    pub machine: MachineView,
    /// True when the host key was recorded by this request (trust on first use).
    pub host_key_learned: bool,
    /// `ssh-ed25519 SHA256:…`
    pub host_key: String,
}

impl Admin {
    pub async fn add_ssh_machine(
        &self,
        req: &SshMachineRequest,
    ) -> Result<SshMachineAdded, CallError> {
        self.0.post(SSH_MACHINES, req).await
    }
}
