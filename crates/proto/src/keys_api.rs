//! The admin API for keys that can change: publisher trust statements and the server
//! certificate's renewal (`patchcast key rotate|revoke|trust`, `patchcast server renew-cert`).
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | GET | `/api/v1/admin/trust` | → `TrustView` |
//! | POST | `/api/v1/admin/trust` | `pack::trust::Signed` → `TrustView` (409 when refused) |
//! | POST | `/api/v1/admin/tls/renew` | → `Renewed` |

use crate::admin_api::Admin;
use crate::client::CallError;
use patchcast_pack::trust::Signed;
use serde::{Deserialize, Serialize};

pub const TRUST: &str = "/api/v1/admin/trust";
pub const RENEW_CERT: &str = "/api/v1/admin/tls/renew";

/// A publisher key: its id (`pack::keys::key_id`) and the public key (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub key: String,
}

/// The publisher keys the server (and, once they polled, its agents) trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustView {
    /// The serial of the last statement; the next one must be `serial + 1`.
    pub serial: u64,
    pub keys: Vec<KeyView>,
    pub revoked: Vec<KeyView>,
}

/// A prepared certificate renewal: agents are handed the re-pin statement from now on, and
/// the server presents `new` from its next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    pub old: String,
    pub new: String,
}

impl Admin {
    pub async fn trust(&self) -> Result<TrustView, CallError> {
        self.0.get(TRUST).await
    }

    /// Publishes a signed trust statement; the server checks it as agents will.
    pub async fn publish_trust(&self, signed: &Signed) -> Result<TrustView, CallError> {
        self.0.post(TRUST, signed).await
    }

    pub async fn renew_cert(&self) -> Result<Renewed, CallError> {
        self.0.post(RENEW_CERT, &serde_json::json!({})).await
    }
}
