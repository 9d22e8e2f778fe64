//! Group commit for agents' reports. Each step of a delivery is reported and must be durable
//! before it is acknowledged; one transaction per report made the write lock the fleet's
//! bottleneck. Reports that arrive while a group is being written wait in a queue and are
//! written together by one task, in one transaction (`Server::report_group`), so a burst of
//! reports costs one lock hand-over and one commit instead of one each.

use super::Server;
use super::dispatch::ReportOutcome;
use anyhow::{Result, anyhow};
use patchcast_proto::protocol::Report;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most reports written in one transaction; a queue this deep holds the next groups.
const GROUP: usize = 256;
const QUEUE: usize = 8 * GROUP;

struct Queued {
    report: (String, Report),
    reply: oneshot::Sender<Result<ReportOutcome>>,
}

/// Where reports wait for the writer.
pub struct Queue(mpsc::Sender<Queued>);

/// The writer's end, handed to `spawn` once the server exists.
pub struct Writer(mpsc::Receiver<Queued>);

pub fn channel() -> (Queue, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Queue(tx), Writer(rx))
}

impl Queue {
    /// Queues `rep` and waits until its group committed (or failed).
    pub async fn submit(&self, machine: &str, rep: &Report) -> Result<ReportOutcome> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            report: (machine.to_string(), rep.clone()),
            reply,
        };
        self.0
            .send(queued)
            .await
            .map_err(|_| anyhow!("the report writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the report writer stopped before answering"))?
    }
}

/// Starts the writer: it takes whatever is queued (up to `GROUP`), writes it as one group and
/// answers each report with its own outcome.
pub fn spawn(server: Arc<Server>, Writer(mut rx): Writer) {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(GROUP);
        while rx.recv_many(&mut batch, GROUP).await > 0 {
            let (reports, replies): (Vec<_>, Vec<_>) =
                batch.drain(..).map(|q| (q.report, q.reply)).unzip();
            // A group of its own task: should writing one panic, that group fails (its
            // agents send again) and the writer goes on with the next.
            let s = server.clone();
            let n = reports.len();
            let written = tokio::spawn(async move { s.report_group(&reports).await })
                .await
                .unwrap_or_else(|e| Err(anyhow!("the writer of a report group failed: {e}")));
            match written {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(reports = n, "writing reports failed: {e:#}");
                    for reply in replies {
                        let _ = reply.send(Err(anyhow!("writing the report failed: {e:#}")));
                    }
                }
            }
        }
    });
}
