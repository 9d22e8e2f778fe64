//! The admin API for windows, automatic update, rollouts and the test clock (the
//! `patchcast schedule / autoupdate / rollout` commands). Same listener and admin token as
//! `admin_api`.
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | GET/POST | `/api/v1/admin/policies` | `GroupPolicy` → `PolicySet` / `Vec<PolicyView>` |
//! | GET | `/api/v1/admin/schedule?group=&count=` | → `Vec<GroupSchedule>` |
//! | GET/POST | `/api/v1/admin/autoupdate` | `Assign` → `Vec<Assignment>` |
//! | GET/POST | `/api/v1/admin/rollouts` | `Rollout` → `RolloutStatus` / `Vec<RolloutStatus>` |
//! | GET | `/api/v1/admin/rollouts/{id}` | → `RolloutStatus` |
//! | GET/POST | `/api/v1/admin/clock` | `ClockChange` → `ClockReading` (POST only with `--test-clock`) |

use super::admin_api::{Admin, encode};
use super::client::CallError;
use patchcast_core::errors::{Code, Rendered};
use patchcast_core::model::group_policy::{ContentKind, GroupPolicy};
use patchcast_core::model::rollout::Rollout;
use serde::{Deserialize, Serialize};

/// Asked of `POST /api/v1/admin/clock`: `set_ms` (unix ms) wins over `advance_ms`; neither
/// just reads the clock.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClockChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance_ms: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClockReading {
    pub now_ms: i64,
    pub test_clock: bool,
}

pub const POLICIES: &str = "/api/v1/admin/policies";
pub const SCHEDULE: &str = "/api/v1/admin/schedule";
pub const AUTOUPDATE: &str = "/api/v1/admin/autoupdate";
pub const ROLLOUTS: &str = "/api/v1/admin/rollouts";
pub const CLOCK: &str = "/api/v1/admin/clock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    pub policy: GroupPolicy,
    /// Raised by one on every change of any group's policy; machines report the one they have.
    pub version: u64,
    pub updated_at_ms: i64,
}

/// What setting a policy change gave each machine of the group right away.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySet {
    pub group: String,
    pub version: u64,
    pub machines: Vec<MachineSetting>,
}

/// The auto-update time setting a machine should have and the one it reported having.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineSetting {
    pub machine_id: String,
    pub hostname: String,
    pub wanted: u64,
    /// The version the agent last reported (0: none yet).
    pub applied: u64,
    /// W15 (busy: takes effect after its restart) or W16 (unreachable: at its next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Rendered>,
    /// The setting version the code was raised for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<u64>,
}

/// One opening, in unix ms and RFC 3339 (UTC) and the window's own time zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opening {
    pub start_ms: i64,
    pub end_ms: i64,
    pub start_local: String,
    pub end_local: String,
    pub time_zone: String,
    pub cron: String,
    /// True for the opening the server's clock is in now.
    pub open_now: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSchedule {
    pub group: String,
    pub now_ms: i64,
    /// Empty: the group has no windows, scheduled work may start at any time.
    pub openings: Vec<Opening>,
    pub blackout_dates: Vec<String>,
    pub hold: Vec<ContentKind>,
    pub run_missed_at_start: bool,
    pub check_in_spread_secs: u64,
    pub auto_update: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assign {
    pub group: String,
    pub package_id: String,
    /// False: unassign.
    pub assign: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub group: String,
    pub package_id: String,
    pub assigned_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: String,
    pub name: String,
    /// `running`, `paused` (by an administrator), `stopped` (by its failure limit),
    /// `aborted` (by an administrator) or `completed`.
    pub state: String,
    /// Why it stopped (or completed).
    pub reason: String,
    pub success_threshold_permille: u32,
    pub failure_limit_permille: u32,
    pub packages: Vec<String>,
    pub waves: Vec<WaveStatus>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveStatus {
    pub index: u32,
    pub group: String,
    /// `open` (delivering), `passed` (cleared the threshold), `waiting` (for the wave
    /// before it), or the rollout's own state when it holds every wave: `paused`, `stopped`
    /// or `aborted`.
    pub gate: String,
    pub why: String,
    pub total: u64,
    pub applied: u64,
    pub not_applicable: u64,
    pub failed: u64,
    pub in_progress: u64,
    /// Applied share of the applicable deliveries, per mille.
    pub applied_permille: u32,
    pub failed_permille: u32,
}

impl Admin {
    pub async fn set_policy(&self, p: &GroupPolicy) -> Result<PolicySet, CallError> {
        self.0.post(POLICIES, p).await
    }

    pub async fn policies(&self) -> Result<Vec<PolicyView>, CallError> {
        self.0.get(POLICIES).await
    }

    pub async fn schedule(
        &self,
        group: Option<&str>,
        count: usize,
    ) -> Result<Vec<GroupSchedule>, CallError> {
        let mut q = format!("{SCHEDULE}?count={count}");
        if let Some(g) = group {
            q.push_str(&format!("&group={}", encode(g)));
        }
        self.0.get(&q).await
    }

    pub async fn assign(&self, a: &Assign) -> Result<Vec<Assignment>, CallError> {
        self.0.post(AUTOUPDATE, a).await
    }

    pub async fn assignments(&self) -> Result<Vec<Assignment>, CallError> {
        self.0.get(AUTOUPDATE).await
    }

    pub async fn start_rollout(&self, r: &Rollout) -> Result<RolloutStatus, CallError> {
        self.0.post(ROLLOUTS, r).await
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutStatus>, CallError> {
        self.0.get(ROLLOUTS).await
    }

    /// `pause`, `resume` or `abort` a rollout (`RolloutVerb`).
    pub async fn rollout_action(
        &self,
        id: &str,
        verb: &str,
    ) -> Result<crate::admin_api::ActionDone, CallError> {
        self.action(&format!("{ROLLOUTS}/{}/{verb}", encode(id)))
            .await
    }

    pub async fn rollout(&self, id: &str) -> Result<RolloutStatus, CallError> {
        self.0.get(&format!("{ROLLOUTS}/{}", encode(id))).await
    }

    pub async fn clock(&self, c: &ClockChange) -> Result<ClockReading, CallError> {
        self.0.post(CLOCK, c).await
    }
}
