//! Group commit for the delivery path's writes: agents' reports and the dispatches of polling
//! machines. Each must be durable before it is answered; one transaction each made the write
//! lock the fleet's bottleneck. Writes that arrive while a group is being written wait in a
//! queue and are written together by one task, in one transaction (`Server::write_group`), so
//! a burst costs one lock hand-over and one commit instead of one each.
//!
//! Should a group fail (a database error, or a panic), each of its writes is tried again
//! alone, so one bad write fails only its own request.

use super::Server;
use super::dispatch::ReportOutcome;
use anyhow::{Result, anyhow};
use patchcast_proto::protocol::{AgentState, Report, Work};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most writes in one transaction; a queue this deep holds the next groups.
const GROUP: usize = 256;
const QUEUE: usize = 8 * GROUP;

/// One write of the delivery path.
#[derive(Debug, Clone)]
pub enum Job {
    /// A machine's report on its delivery.
    Report(String, Box<Report>),
    /// A machine's poll that may start (or chase) a delivery.
    Dispatch(String, AgentState),
}

/// What a write came to.
pub enum Done {
    Report(ReportOutcome),
    /// Work to hand out, and when a retry falls due.
    Dispatch(Option<Work>, Option<i64>),
}

struct Queued {
    job: Job,
    reply: oneshot::Sender<Result<Done>>,
}

/// Where writes wait for the writer.
pub struct Queue(mpsc::Sender<Queued>);

/// The writer's end, handed to `spawn` once the server exists.
pub struct Writer(mpsc::Receiver<Queued>);

pub fn channel() -> (Queue, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Queue(tx), Writer(rx))
}

impl Queue {
    /// Queues `job` and waits until its group committed (or failed).
    pub async fn submit(&self, job: Job) -> Result<Done> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Queued { job, reply })
            .await
            .map_err(|_| anyhow!("the delivery writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the delivery writer stopped before answering"))?
    }
}

/// Writes `jobs` as one group in a task of its own: should writing it panic, that is an
/// error of this group, and the writer goes on.
async fn write(server: &Arc<Server>, jobs: Arc<[Job]>) -> Result<Vec<Done>> {
    let s = server.clone();
    tokio::spawn(async move { s.write_group(&jobs).await })
        .await
        .unwrap_or_else(|e| Err(anyhow!("the writer of a group failed: {e}")))
}

/// Starts the writer: it takes whatever is queued (up to `GROUP`), writes it as one group and
/// answers each write with its own outcome. It runs on a thread of its own, with its own
/// runtime: on the server's workers, each of its statements' replies waited in the run
/// queue behind thousands of requests' tasks, and the one writer is the fleet's bottleneck.
pub fn spawn(server: Arc<Server>, Writer(mut rx): Writer) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("patchcast-writer".into())
        .spawn(move || rt.block_on(run(server, &mut rx)))?;
    Ok(())
}

async fn run(server: Arc<Server>, rx: &mut mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut batch, GROUP).await > 0 {
        let (jobs, replies): (Vec<_>, Vec<_>) = batch.drain(..).map(|q| (q.job, q.reply)).unzip();
        let jobs: Arc<[Job]> = jobs.into();
        let n = jobs.len();
        match write(&server, jobs.clone()).await {
            Ok(done) => {
                for (reply, d) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(d));
                }
            }
            Err(e) if n == 1 => {
                tracing::error!("a delivery write failed: {e:#}");
                for reply in replies {
                    let _ = reply.send(Err(anyhow!("writing failed: {e:#}")));
                }
            }
            Err(e) => {
                tracing::warn!(writes = n, "a group failed, writing each alone: {e:#}");
                server.ops.groups_retried.inc();
                for (job, reply) in jobs.iter().zip(replies) {
                    let done = write(&server, Arc::from([job.clone()])).await;
                    let _ = reply.send(done.and_then(|mut d| {
                        d.pop().ok_or_else(|| anyhow!("the write gave no outcome"))
                    }));
                }
            }
        }
    }
}
