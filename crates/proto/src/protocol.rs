//! The agent protocol: JSON over HTTPS. Agents connect out to the server; nothing connects in.
//!
//! | method | path | auth | body → reply |
//! |---|---|---|---|
//! | POST | `/api/v1/enroll` | enrollment token in body | `EnrollRequest` → `EnrollResponse` |
//! | POST | `/api/v1/agent/inventory` | agent | `Inventory` → 204 |
//! | POST | `/api/v1/agent/poll` | agent | `Poll` → `PollResponse` (long poll, up to `wait_ms`; may carry a `TimeSetting`, trust statements, a re-pin statement) |
//! | POST | `/api/v1/agent/report` | agent | `Report` → `ReportAck` |
//! | GET | `/api/v1/content/{sha256}` | agent | archive bytes; `Range: bytes=N-` resumes |
//!
//! Agent requests carry `Authorization: Bearer <machine_id>.<secret>`; the server keeps only the
//! SHA-256 of the secret. Admin requests carry `Authorization: Bearer <admin token>`.
//!
//! Package content is the signed archive (`pack::archive`), addressed by its SHA-256. A work
//! item carries the signed manifest itself, so the agent checks the publisher's signature before
//! it runs a single probe, and it checks the archive's hash, signature and every entry again
//! before anything is extracted or executed.
//!
//! Reports are idempotent: each carries the attempt it belongs to and its step number `seq`
//! within that attempt. The agent journals a step before it starts and resends unacknowledged
//! reports after a restart; the server acknowledges a `seq` it already has without moving the
//! delivery again.

use patchcast_core::delivery::{Event, Policy};
use patchcast_core::errors::Code;
use patchcast_core::model::raw::When;
use patchcast_core::model::types::Sha256;
use patchcast_core::pipeline::Action;
pub use patchcast_core::pipeline::Detail;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const ENROLL: &str = "/api/v1/enroll";
pub const INVENTORY: &str = "/api/v1/agent/inventory";
pub const POLL: &str = "/api/v1/agent/poll";
pub const REPORT: &str = "/api/v1/agent/report";
/// Followed by `/{sha256}`.
pub const CONTENT: &str = "/api/v1/content";
/// Longest long poll the server holds open; agents ask for less.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub inventory: Inventory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub machine_id: String,
    /// The agent's secret; shown once, stored by the agent (mode 0600), never logged.
    pub credential: String,
    /// Ed25519 public keys (hex) whose signatures the agent accepts on packages.
    pub publisher_keys: Vec<String>,
    /// How long the agent's long polls should be.
    pub poll_ms: u64,
    /// The serial of the last trust statement behind `publisher_keys` (`pack::trust`): the
    /// agent asks for the statements above it.
    #[serde(default)]
    pub trust_serial: u64,
    /// Publisher keys revoked so far (hex): never trusted again, even if a statement adds one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<String>,
}

/// What the agent reports about its machine: at start and whenever it changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    /// Catalog id: `debian-12`, `windows-server-2008`, …
    pub os: String,
    /// Human-readable OS name and version as the machine reports it.
    pub os_version: String,
    pub arch: String,
    /// BCP 47-ish: `en`, `ja`, `ja-JP`.
    pub language: String,
    /// `2.0` style service pack level (Windows), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<String>,
    /// Mount point or drive (`/`, `C:`) packages are staged and installed on.
    pub system_drive: String,
    pub disk_free: u64,
    pub disk_total: u64,
    pub memory_total: u64,
    pub interfaces: Vec<Interface>,
    pub agent_version: String,
    /// Unix seconds.
    pub boot_time: u64,
    pub pending_reboot: bool,
    /// Installed dpkg/rpm packages: name → version.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// Installed MS bulletins and KB numbers (Windows).
    #[serde(default)]
    pub installed_updates: Vec<String>,
    /// True for an emulated endpoint profile (tests, demo).
    #[serde(default)]
    pub emulated: bool,
}

impl Inventory {
    /// The MAC address of the first interface that has a real one (loopback reports zeros).
    pub fn mac(&self) -> Option<&str> {
        self.interfaces
            .iter()
            .map(|i| i.mac.as_str())
            .find(|m| m.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub addresses: Vec<IpAddr>,
}

/// A heartbeat that also asks for work.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Poll {
    pub state: AgentState,
    /// How long the server may hold the request when there is no work.
    pub wait_ms: u64,
    /// The auto-update time setting version this agent has (`PollResponse::setting`).
    /// Absent from older agents, which are then never sent settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting_version: Option<u64>,
    /// Random per agent process start: a new value tells the server the agent restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The serial of the last trust statement this agent applied; the server sends the ones
    /// above it (`PollResponse::trust`). Absent from older agents and heartbeats, which are
    /// then sent no statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_serial: Option<u64>,
    /// The renewed certificate's fingerprint this agent already pins beside the current one,
    /// so the server does not send the same re-pin statement again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentState {
    #[default]
    Idle,
    /// Working on a delivery (the server does not time it out while this is heard).
    Busy { delivery_id: String, attempt: u32 },
    /// Waiting for a restart that a delivery asked for.
    RebootPending { delivery_id: String, attempt: u32 },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PollResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
    /// Present while this agent has the relay (update agent) role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<super::sources::RelaySettings>,
    /// A new auto-update time setting for this agent to keep (and report in `Poll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<TimeSetting>,
    /// When this machine's next auto-update slot starts (unix ms, server time; jittered per
    /// machine), for agents that sleep instead of long-polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_in_ms: Option<i64>,
    /// Trust statements above the agent's `Poll::trust_serial`, in serial order
    /// (`pack::trust`: each signed by a key trusted after the ones before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<patchcast_pack::trust::Signed>,
    /// A certificate renewal, signed by the certificate the agent pins (`repin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repin: Option<super::repin::Signed>,
    /// The fingerprint of the certificate the server presents: an agent holding it as its
    /// renewed pin drops the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The auto-update time setting of a machine: its groups' policies, under one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSetting {
    pub version: u64,
    #[serde(default)]
    pub policies: Vec<patchcast_core::model::group_policy::GroupPolicy>,
}

/// One attempt of one package on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub delivery_id: String,
    pub attempt: u32,
    pub package_id: String,
    /// The signed archive.
    pub archive_sha256: Sha256,
    pub archive_size: u64,
    /// `manifest.json` and `manifest.sig` exactly as they are in the archive.
    pub manifest: String,
    pub signature: String,
    pub policy: Policy,
    /// Install (the default) or uninstall: which command runs and which verdict is the goal.
    #[serde(default, skip_serializing_if = "Action::is_install")]
    pub action: Action,
    /// Overrides the package's `when` (scenario option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Overrides the package's install timeout (scenario option), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Custom update sources to try, in order, before (or instead of) the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<super::sources::WorkSources>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub delivery_id: String,
    pub attempt: u32,
    /// Step number within the attempt, from 1; a repeated `seq` is acknowledged, not applied.
    pub seq: u32,
    pub event: Event,
    #[serde(default)]
    pub detail: Detail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportAck {
    /// False when the report was a repeat of one already recorded.
    pub applied: bool,
    /// The reboot policy's answer to a reboot exit code: restart the machine now.
    #[serde(default)]
    pub reboot: bool,
}

/// Error body of every non-2xx reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
}
