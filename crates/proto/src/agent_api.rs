//! The agent's side of the protocol as typed calls on `Client`.

use super::client::{CallError, Client};
use super::protocol::*;
use patchcast_core::model::types::Sha256;
use std::time::Duration;

/// Extra time over the long poll's wait before a silent server counts as unreachable.
const POLL_GRACE: Duration = Duration::from_secs(30);
/// Time limit of the short calls (inventory, report).
const CALL_LIMIT: Duration = Duration::from_secs(60);

impl Client {
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, CallError> {
        self.send(
            self.request(reqwest::Method::POST, ENROLL)
                .timeout(CALL_LIMIT)
                .json(req),
            ENROLL,
        )
        .await
    }

    pub async fn send_inventory(&self, inv: &Inventory) -> Result<(), CallError> {
        let _: Option<serde_json::Value> = self
            .send(
                self.request(reqwest::Method::POST, INVENTORY)
                    .timeout(CALL_LIMIT)
                    .json(inv),
                INVENTORY,
            )
            .await?;
        Ok(())
    }

    pub async fn poll(&self, poll: &Poll) -> Result<PollResponse, CallError> {
        let limit = Duration::from_millis(poll.wait_ms) + POLL_GRACE;
        self.send(
            self.request(reqwest::Method::POST, POLL)
                .timeout(limit)
                .json(poll),
            POLL,
        )
        .await
    }

    pub async fn report(&self, report: &Report) -> Result<ReportAck, CallError> {
        self.send(
            self.request(reqwest::Method::POST, REPORT)
                .timeout(CALL_LIMIT)
                .json(report),
            REPORT,
        )
        .await
    }

    /// Starts downloading an archive from byte `offset` (`Range: bytes=N-` when N > 0). The
    /// caller checks the status (200, 206 with a matching `Content-Range`, 416) and streams the body.
    pub async fn content(
        &self,
        sha256: &Sha256,
        offset: u64,
    ) -> Result<reqwest::Response, CallError> {
        let path = format!("{CONTENT}/{}", sha256.hex());
        let mut rb = self.request(reqwest::Method::GET, &path);
        if offset > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        rb.send().await.map_err(|e| self.unreachable(&path, &e))
    }
}
