//! The admin API: what `patchcast token/group/machine/package/scenario/results` send to the
//! server. JSON over the same HTTPS listener as the agent protocol; every request carries
//! `Authorization: Bearer <admin token>` (the server's `DATA/admin.token`).
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | POST | `/api/v1/admin/tokens` | `TokenRequest` → `TokenCreated` |
//! | GET | `/api/v1/admin/machines` | → `Vec<MachineView>` |
//! | POST | `/api/v1/admin/machines/{id}/labels` | `Labels` → `MachineView` |
//! | GET/POST | `/api/v1/admin/groups` | `Group` → `Vec<GroupView>` / `GroupView` |
//! | GET/POST | `/api/v1/admin/packages` | archive bytes (streamed) → `PackageView` |
//! | POST | `/api/v1/admin/scenarios` | `Scenario` → `ScenarioCreated` |
//! | GET | `/api/v1/admin/scenarios/{id}` | → `ScenarioStatus` |
//! | GET | `/api/v1/admin/results?machine=&package=&lang=&history=` | → `Results` |

use crate::core::delivery::State;
use crate::core::errors::{Code, Params, Rendered};
use crate::transport::protocol::{Detail, Inventory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const TOKENS: &str = "/api/v1/admin/tokens";
pub const MACHINES: &str = "/api/v1/admin/machines";
pub const GROUPS: &str = "/api/v1/admin/groups";
pub const PACKAGES: &str = "/api/v1/admin/packages";
pub const SCENARIOS: &str = "/api/v1/admin/scenarios";
pub const RESULTS: &str = "/api/v1/admin/results";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Group the enrolled machines join.
    #[serde(default)]
    pub group: Option<String>,
    /// How many enrollments the token allows (None: unlimited until it expires).
    #[serde(default)]
    pub uses: Option<u64>,
    /// Lifetime in seconds.
    pub expires_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Shown once; the server keeps only its SHA-256.
    pub token: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    pub id: String,
    pub hostname: String,
    /// The address the server saw the agent's last request come from.
    pub peer_address: String,
    pub inventory: Inventory,
    pub labels: Vec<String>,
    pub groups: Vec<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: i64,
    /// The agent's last reported state (`idle`, `busy`, `reboot_pending`).
    pub agent_state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Labels {
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A group: static members plus machines matching every given filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Machine ids or hostnames.
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub filter: GroupFilter,
}

/// A machine matches when every set criterion matches; an empty filter matches nothing
/// (a group is static unless a filter is given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupFilter {
    /// OS id or its prefix (`debian`, `windows-server-2008`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Language tag prefix (`ja`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// CIDR (`10.0.0.0/8`): the peer address or any reported address inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl GroupFilter {
    pub fn is_empty(&self) -> bool {
        *self == GroupFilter::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: Group,
    /// Machine ids currently in the group.
    pub resolved: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageView {
    pub id: String,
    pub version: Option<String>,
    pub title: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub key_id: String,
    pub published_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioCreated {
    pub id: String,
    /// Deliveries created (machines × packages).
    pub deliveries: u64,
    pub machines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioStatus {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// Deliveries by state name.
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
    /// Every delivery is in a terminal state.
    pub done: bool,
    pub deliveries: Vec<DeliveryRow>,
}

/// One package on one machine, with what results show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub delivery_id: String,
    pub scenario_id: String,
    pub machine_id: String,
    pub hostname: String,
    pub package_id: String,
    pub state: State,
    pub attempts: u32,
    pub unverified_runs: u32,
    pub last_code: Option<Code>,
    /// Message and remedy of `last_code` in the requested language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Rendered>,
    pub detail: Detail,
    pub updated_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// One persisted transition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub n: u64,
    pub attempt: u32,
    /// The report's seq (0 for server-side events: dispatch, retry, no reply).
    pub seq: u32,
    pub event: serde_json::Value,
    /// State after the event.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default)]
    pub params: Params,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageSummary {
    pub package_id: String,
    pub applied: u64,
    pub not_applied: u64,
    pub not_applicable: u64,
    pub failed: u64,
    pub in_progress: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub deliveries: Vec<DeliveryRow>,
    pub packages: Vec<PackageSummary>,
}
