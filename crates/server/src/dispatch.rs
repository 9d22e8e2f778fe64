//! The dispatcher: hands deliveries to agents on poll and moves them on reports, timeouts and
//! retries, through the pure state machine in `core::delivery`.
//!
//! Every transition is written (new state plus an `events` row with attempt, seq, code and
//! time) in one transaction that commits BEFORE the reply that acts on it, so a crash at any
//! point either loses nothing or repeats an action the state machine refuses to count twice.
//! These writes take the shared write lock (`Server::write_shared`; `cluster`) and lock the
//! rows they decide on (the polling machines and their unfinished deliveries, the reported
//! deliveries, the scenario before its `max_concurrent` count), so they run concurrently on
//! every server sharing a PostgreSQL database and "one delivery per machine" and
//! `max_concurrent` stay race-free; SQLite has a single writer anyway (ARCHITECTURE
//! "Several servers").

use super::Server;
use super::batch::Batch;
use super::db::{self, deliveries::DeliveryRow, deliveries::NewEvent};
use super::group_commit::{Done, Job};
use super::lifecycle;
use super::windows::Gate;
use anyhow::{Context, Result};
use patchcast_core::delivery::{Action, Event, Invalid, Policy, State, next};
use patchcast_core::errors::{Code, Params};
use patchcast_core::faults::{self, Fault};
use patchcast_core::lifecycle::Requirements;
use patchcast_core::model::scenario::Scenario;
use patchcast_core::model::types::Sha256;
use patchcast_core::pipeline::Refusal;
use patchcast_proto::protocol::{AgentState, Detail, Report, ReportAck, Work};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Default when the package's install timeout cannot be read (it always can after publish).
const DEFAULT_TIMEOUT_SECS: u64 = 30 * 60;

/// What the outcome of a report is, for the HTTP layer.
pub enum ReportOutcome {
    Ack(ReportAck),
    NotFound,
    Refused(Invalid),
}

impl Server {
    pub fn notifier(&self, machine: &str) -> Arc<Notify> {
        let mut map = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(machine.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Wakes the machine's long poll, here and on the other servers (`cluster`).
    pub fn wake(&self, machine: &str) {
        self.notifier(machine).notify_one();
        self.cluster
            .signal(&super::cluster::Signal::Wake(machine.to_string()));
    }

    /// A wake-up another server sent: only a poll waiting (or that waited) here is woken.
    pub fn wake_local(&self, machine: &str) {
        let map = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(machine) {
            n.notify_one();
        }
    }

    /// A scenario's spec, read once per process: a scenario never changes once created.
    async fn scenario(&self, tx: &mut db::Conn, id: &str) -> Result<Arc<Scenario>> {
        let spec = self
            .cached
            .specs
            .get(&id.to_string(), || async {
                Ok(Some(Arc::new(db::scenarios::spec(tx, id).await?)))
            })
            .await?;
        spec.with_context(|| format!("no scenario `{id}`"))
    }

    fn policy(s: &Scenario) -> Policy {
        Policy {
            max_unverified_runs: s.max_unverified_runs,
            allow_reboot: s.allow_reboot,
            max_attempts: s.max_attempts,
        }
    }

    /// Applies `event` (a server-side one: seq 0) to `r`; its row and history row are written
    /// with `b` (`Batch::flush`). Nothing is kept when the state machine refuses the event.
    #[allow(clippy::too_many_arguments)]
    fn defer(
        &self,
        b: &mut Batch,
        r: &mut DeliveryRow,
        event: &Event,
        attempt: u32,
        detail: &Detail,
        scenario: &Scenario,
        now: i64,
    ) -> std::result::Result<Action, Invalid> {
        let (action, e) = self.advance(r, event, attempt, 0, detail, scenario, now)?;
        b.defer(r, e);
        Ok(action)
    }

    /// Applies `event` to `r` in memory: the action to take and the history row to write with
    /// the row (`defer`; a group's reports write all theirs together).
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &self,
        r: &mut DeliveryRow,
        event: &Event,
        attempt: u32,
        seq: u32,
        detail: &Detail,
        scenario: &Scenario,
        now: i64,
    ) -> Result<(Action, NewEvent), Invalid> {
        let t = next(&r.d, event, attempt, &Self::policy(scenario))?;
        let before_code = r.d.last_code;
        r.d = t.delivery;
        if seq > 0 {
            r.last_seq = seq;
        }
        if *event == Event::Dispatched {
            // Reports of the new attempt count their seq from 1 again.
            r.last_seq = 0;
        }
        merge(&mut r.detail, detail);
        let mut params = detail.params.clone();
        if let State::LoopDetected { rule } = &r.d.state {
            params.rule = Some(rule.clone());
            params.package = Some(r.package_id.clone());
            r.detail.params = params.clone();
        }
        // E23 names the rule that could not be judged, as E24 names the one that kept failing.
        if let (
            State::Failed { code: Code::E23 },
            Event::Verified {
                failing_rule: Some(rule),
                ..
            },
        ) = (&r.d.state, event)
        {
            params.rule = Some(rule.clone());
            params.package = Some(r.package_id.clone());
            r.detail.params = params.clone();
        }
        // A code raised by this event: the agent's, or the one the state machine set.
        let code = detail.code.or(if r.d.last_code != before_code {
            r.d.last_code
        } else {
            None
        });
        if let (Some(c), None) = (code, r.detail.code) {
            r.detail.code = Some(c);
        }
        r.deadline = if r.d.state.in_flight() {
            Some(now + self.deadline_ms(scenario, r))
        } else {
            None
        };
        r.retry_at = match t.action {
            Action::ScheduleRetry => Some(now.saturating_add(scenario.retry_delay_ms as i64)),
            _ if r.d.state == State::AwaitingRetry => r.retry_at,
            _ => None,
        };
        r.events += 1;
        let e = NewEvent {
            delivery_id: r.id.clone(),
            n: r.events,
            event: event.clone(),
            state: r.d.state.clone(),
            attempt,
            seq,
            code,
            params,
        };
        Ok((t.action, e))
    }

    /// An administrator's event on one delivery (`Event::Reset` to retry one that stopped,
    /// `Event::Cancel` to withdraw one that waits), persisted in `tx` with its history row;
    /// the caller holds the write lock, writes the audit entry and commits (`actions`).
    /// None: no such delivery; Err: the state machine refuses the event in its state.
    pub(crate) async fn admin_event(
        &self,
        tx: &mut db::Conn,
        id: &str,
        event: &Event,
    ) -> Result<Option<Result<DeliveryRow, Invalid>>> {
        let Some(mut r) = db::deliveries::find(tx, id).await? else {
            return Ok(None);
        };
        let s = self.scenario(tx, &r.scenario_id).await?;
        let attempt = r.d.attempt;
        let now = self.now();
        let mut b = Batch::default();
        let done = self.defer(&mut b, &mut r, event, attempt, &Detail::default(), &s, now);
        b.flush(tx, now).await?;
        Ok(Some(done.map(|_| r)))
    }

    /// How long an in-flight delivery may go unheard: its install timeout plus the margin.
    fn deadline_ms(&self, scenario: &Scenario, r: &DeliveryRow) -> i64 {
        let secs = scenario.timeout_secs.unwrap_or_else(|| {
            r.install_timeout_secs
                .map_or(DEFAULT_TIMEOUT_SECS, |s| s as u64)
        });
        (secs * 1000) as i64 + self.no_reply_margin.as_millis() as i64
    }

    async fn work(
        &self,
        tx: &mut db::Conn,
        b: &mut Batch,
        r: &DeliveryRow,
        s: &Scenario,
    ) -> Result<Work> {
        // A scenario's `ID@VERSION` delivers that version, else the current one.
        let pinned = s
            .versions
            .iter()
            .find(|(id, _)| id.as_str() == r.package_id);
        let p = match pinned {
            Some((_, v)) => db::packages::version(tx, &r.package_id, v)
                .await?
                .with_context(|| format!("version {v} is gone")),
            None => b.package(tx, &r.package_id).await,
        }
        .with_context(|| format!("package {} is no longer published", r.package_id))?;
        Ok(Work {
            delivery_id: r.id.clone(),
            attempt: r.d.attempt,
            package_id: r.package_id.clone(),
            archive_sha256: p
                .archive_sha256
                .parse::<Sha256>()
                .map_err(|e| anyhow::anyhow!(e.0))?,
            archive_size: p.archive_size,
            manifest: p.manifest,
            signature: p.signature,
            policy: Self::policy(s),
            action: s.action,
            when: s.when,
            timeout_secs: s.timeout_secs,
            // Sources and relays hold the current version: a pinned one comes from here.
            sources: match pinned {
                Some(_) => None,
                None => {
                    self.work_sources(&mut *tx, &r.machine_id, &r.package_id)
                        .await?
                }
            },
        })
    }

    /// Why the server cannot carry `w` through, if it cannot: too little room on its own disk
    /// above the reserve (it records every step; FAQ Q3: E17), or the archive not ready to
    /// serve (E01).
    fn unprepared(&self, w: &Work) -> Option<Refusal> {
        match self.store.free_bytes() {
            Ok(free) => {
                if let Some(r) = faults::server_disk(free, self.reserve) {
                    return Some(r);
                }
            }
            Err(e) => tracing::warn!("reading the server's free disk space: {e:#}"),
        }
        self.content_missing(w)
    }

    /// Why the archive of `w` cannot be served, if it cannot: absent from the content store,
    /// unreadable, or not of the published size (E01).
    fn content_missing(&self, w: &Work) -> Option<Refusal> {
        let path = self.store.path_of(&w.archive_sha256);
        let file = Some(path.display().to_string());
        // Blocking, on the writer's own thread (`group_commit`): cheaper than two hand-offs
        // to tokio's blocking pool for every dispatch.
        let detail = match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(m) if m.len() == w.archive_size => return None,
            Ok(m) => format!(
                "{} is {} bytes in the content store, not the published {}",
                path.display(),
                m.len(),
                w.archive_size
            ),
            Err(e) => format!(
                "{} cannot be read from the content store: {e}",
                path.display()
            ),
        };
        Some(Fault::ContentUnavailable.refusal(file, detail))
    }

    /// One look for work for `machine`; also returns when a retry falls due (to wait until then).
    async fn try_dispatch(
        &self,
        machine: &str,
        state: &AgentState,
    ) -> Result<(Option<Work>, Option<i64>)> {
        // Nothing to hand out or to chase: answered without the write lock. A scenario
        // created just after this read wakes the poll (`Notify` keeps the permit).
        if *state == AgentState::Idle && !db::deliveries::has_unfinished(&self.db, machine).await? {
            return Ok((None, None));
        }
        match self
            .writes
            .submit(Job::Dispatch(machine.to_string(), state.clone()))
            .await?
        {
            Done::Dispatch(work, due) => Ok((work, due)),
            Done::Report(_) => anyhow::bail!("the writer answered a poll with a report's outcome"),
        }
    }

    /// One machine's look for work inside a group's transaction (`write_group`), from and
    /// into what the group's dispatches share (`batch`).
    async fn dispatch_in(
        &self,
        tx: &mut db::Conn,
        b: &mut Batch,
        machine: &str,
        state: &AgentState,
        now: i64,
    ) -> Result<(Option<Work>, Option<i64>)> {
        let mut rows = b.unfinished.remove(machine).unwrap_or_default();
        let found = self
            .dispatch_rows(tx, b, machine, state, &mut rows, now)
            .await;
        b.unfinished.insert(machine.to_string(), rows);
        found
    }

    /// `dispatch_in` over the machine's unfinished deliveries `rows`.
    async fn dispatch_rows(
        &self,
        tx: &mut db::Conn,
        b: &mut Batch,
        machine: &str,
        state: &AgentState,
        rows: &mut [DeliveryRow],
        now: i64,
    ) -> Result<(Option<Work>, Option<i64>)> {
        match state {
            AgentState::Busy {
                delivery_id,
                attempt,
            } => {
                // A heartbeat: the agent is still on it, so push the no-reply deadline out.
                if let Some(r) = rows.iter().find(|r| {
                    &r.id == delivery_id && r.d.attempt == *attempt && r.d.state.in_flight()
                }) {
                    let s = self.scenario(&mut *tx, &r.scenario_id).await?;
                    let deadline = now + self.deadline_ms(&s, r);
                    b.flush(&mut *tx, now).await?;
                    db::deliveries::set_deadline(&mut *tx, &r.id, deadline).await?;
                }
                return Ok((None, None));
            }
            AgentState::RebootPending { .. } => {
                return Ok((None, None));
            }
            AgentState::Idle => {}
        }
        // An idle agent with a delivery in flight either never got the work (the reply was
        // lost: send it again, same attempt) or lost it after starting (no reply: E13).
        for r in rows.iter_mut().filter(|r| r.d.state.in_flight()) {
            let s = self.scenario(&mut *tx, &r.scenario_id).await?;
            if r.last_seq == 0 && r.d.state == State::Transferring {
                let w = self.work(&mut *tx, b, r, &s).await?;
                return Ok((Some(w), None));
            }
            let detail = no_reply_detail(
                &r.d.state,
                "the agent reported idle while this delivery was in flight",
            );
            let attempt = r.d.attempt;
            self.defer(b, r, &Event::NoReply, attempt, &detail, &s, now)?;
        }
        if rows
            .iter()
            .any(|r| r.d.state.is_busy() && !r.d.state.in_flight())
        {
            return Ok((None, None));
        }
        let mut next_due: Option<i64> = None;
        let mut seen = std::collections::HashSet::new();
        // Per scenario, the packages a waiting one requires: they move ahead of it.
        let mut ahead: std::collections::HashMap<String, Vec<String>> = Default::default();
        for r in rows.iter_mut() {
            // Packages of a scenario go in order: only the first unfinished one may move,
            // and the ones it waits for (`requires:`).
            let first = seen.insert(r.scenario_id.clone());
            let required = ahead
                .get(&r.scenario_id)
                .is_some_and(|ids| ids.contains(&r.package_id));
            if !first && !required {
                continue;
            }
            let due = match r.d.state {
                State::Pending => true,
                State::AwaitingRetry => match r.retry_at {
                    Some(t) if t > now => {
                        next_due = Some(next_due.map_or(t, |n: i64| n.min(t)));
                        false
                    }
                    _ => true,
                },
                _ => false,
            };
            if !due {
                continue;
            }
            // A package a successor replaces on this machine is never handed out; the next
            // package of the scenario may move at once.
            let applied_or_busy = b.applied_or_busy(&mut *tx, machine, now).await?;
            if let Some(by) = self
                .superseded(&mut *tx, &applied_or_busy, &r.package_id)
                .await?
            {
                let s = self.scenario(&mut *tx, &r.scenario_id).await?;
                let a = r.d.attempt;
                tracing::info!(machine, delivery = %r.id, package = %r.package_id, by, "superseded");
                let detail = Detail::default();
                self.defer(b, r, &Event::Superseded { by }, a, &detail, &s, now)?;
                seen.remove(&r.scenario_id);
                continue;
            }
            // The packages it requires go first (`core::lifecycle::requirements`).
            let s = self.scenario(&mut *tx, &r.scenario_id).await?;
            if s.action.is_install() {
                let requires = lifecycle::requiring(b.manifests.get(&r.id).map(String::as_str));
                let required = match requires {
                    Some(this) => {
                        b.flush(&mut *tx, now).await?;
                        self.required(&mut *tx, machine, &this).await?
                    }
                    None => (Requirements::Start, Vec::new()),
                };
                match required {
                    (Requirements::Start, _) => {}
                    (Requirements::Wait { requirement }, ids) => {
                        tracing::debug!(machine, delivery = %r.id, requirement, "waiting for a required package");
                        ahead.entry(r.scenario_id.clone()).or_default().extend(ids);
                        continue;
                    }
                    (
                        Requirements::Failed {
                            requirement,
                            detail,
                        },
                        _,
                    ) => {
                        tracing::info!(machine, delivery = %r.id, package = %r.package_id, requirement, detail, "a required package is not applied");
                        let detail = Detail {
                            code: Some(Code::E29),
                            params: Params {
                                package: Some(requirement),
                                detail: Some(detail),
                                ..Params::default()
                            },
                            ..Detail::default()
                        };
                        let a = r.d.attempt;
                        self.defer(b, r, &Event::RequirementFailed, a, &detail, &s, now)?;
                        // The next package of the scenario may move at once.
                        seen.remove(&r.scenario_id);
                        continue;
                    }
                }
            }
            // Holds and windows (`windows::Server::gate`), then the transfer caps: they
            // count every machine's transfers, this group's dispatches included, one
            // dispatch at a time.
            let mut gate = self
                .gate(machine, &r.scenario_id, &r.package_id, &r.id, now)
                .await?;
            if gate == Gate::Open && self.caps.limit_transfers() {
                db::deliveries::lock_transfers(&mut *tx).await?;
                b.flush(&mut *tx, now).await?;
                gate = self.transfer_gate(&mut *tx, machine, now).await?;
            }
            if let Gate::Wait { until, why } = gate {
                tracing::debug!(machine, delivery = %r.id, why, "not starting yet");
                if let Some(t) = until {
                    next_due = Some(next_due.map_or(t, |n: i64| n.min(t)));
                }
                continue;
            }
            if let Some(max) = s.max_concurrent {
                // The scenario's row is locked (`lock_limited`).
                b.flush(&mut *tx, now).await?;
                let busy = db::deliveries::busy_machines(&mut *tx, &r.scenario_id, machine).await?;
                if busy >= max as i64 {
                    continue;
                }
            }
            // OfficeScan upgrade method 2: clients wait until their relay has the content.
            if self
                .held_for_relay(&mut *tx, machine, &r.package_id)
                .await?
            {
                continue;
            }
            // The caps' and the scenario's locks may have waited.
            let now = now.max(self.now());
            if r.d.state == State::AwaitingRetry {
                let a = r.d.attempt;
                self.defer(b, r, &Event::RetryDue, a, &Detail::default(), &s, now)?;
            }
            let a = r.d.attempt + 1;
            self.defer(b, r, &Event::Dispatched, a, &Detail::default(), &s, now)?;
            let w = self.work(&mut *tx, b, r, &s).await?;
            if let Some(refusal) = self.unprepared(&w) {
                // The server cannot prepare this delivery: the machine's result says so (E01,
                // E17) instead of the agent seeing an HTTP error it cannot name.
                tracing::error!(delivery = %r.id, machine, code = %refusal.code, file = ?refusal.params.file, detail = ?refusal.params.detail, "cannot prepare the delivery");
                let detail = Detail {
                    code: Some(refusal.code),
                    params: Params {
                        package: Some(r.package_id.clone()),
                        ..refusal.params
                    },
                    ..Detail::default()
                };
                let code = refusal.code;
                self.defer(b, r, &Event::Refused { code }, a, &detail, &s, now)?;
                continue;
            }
            return Ok((Some(w), None));
        }
        Ok((None, next_due))
    }

    /// A long poll: work now, or wait (up to `wait_ms`) to be woken by a new scenario, a freed
    /// concurrency slot or a retry falling due.
    pub async fn poll(
        &self,
        machine: &str,
        state: &AgentState,
        wait_ms: u64,
    ) -> Result<Option<Work>> {
        let until = tokio::time::Instant::now()
            + Duration::from_millis(wait_ms.min(patchcast_proto::protocol::MAX_WAIT_MS));
        let notify = self.notifier(machine);
        loop {
            let (work, due) = self.try_dispatch(machine, state).await?;
            if work.is_some() {
                return Ok(work);
            }
            if !matches!(state, AgentState::Idle) {
                // A heartbeat: held like an idle poll (so a simple agent loop does not spin),
                // and released early when this machine reports.
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
                return Ok(None);
            }
            let mut wake = until;
            if let Some(due) = due {
                let in_ms = (due - self.now()).max(0) as u64;
                wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(in_ms + 5));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(None);
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= until {
                // One last look, so a wake-up right at the end is not lost.
                return Ok(self.try_dispatch(machine, state).await?.0);
            }
        }
    }

    /// An agent's report: idempotent by (attempt, seq), persisted before it is acknowledged.
    /// Reports arriving together share one transaction (`group_commit`); each is still
    /// acknowledged only after that transaction committed.
    pub async fn report(&self, machine: &str, rep: &Report) -> Result<ReportOutcome> {
        match self
            .writes
            .submit(Job::Report(machine.to_string(), Box::new(rep.clone())))
            .await?
        {
            Done::Report(outcome) => Ok(outcome),
            Done::Dispatch(..) => anyhow::bail!("the writer answered a report with work"),
        }
    }

    /// Writes one group (`group_commit`) in one transaction under the shared write lock, the
    /// rows it decides on locked first (`db::machines::lock`, `db::deliveries::lock`): its reports
    /// first (so a machine's poll in the same group sees its report), then its dispatches; then
    /// wakes the machines the reports concern. A database error fails the whole group (nothing
    /// of it is committed). The outcomes come in the order of `jobs`.
    pub(crate) async fn write_group(&self, jobs: &[Job]) -> Result<Vec<Done>> {
        let reports: Vec<(&str, &Report)> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Report(m, r) => Some((m.as_str(), r.as_ref())),
                Job::Dispatch(..) => None,
            })
            .collect();
        let mut wakes = Vec::new();
        let (mut outcomes, mut dispatched) = (Vec::new(), Vec::new());
        {
            let _w = self.write_shared().await?;
            let mut tx = self.db.begin().await?;
            let machines: Vec<&str> = jobs
                .iter()
                .filter_map(|j| match j {
                    Job::Dispatch(m, _) => Some(m.as_str()),
                    Job::Report(..) => None,
                })
                .collect();
            let reported: Vec<&str> = reports
                .iter()
                .map(|(_, r)| r.delivery_id.as_str())
                .collect();
            db::machines::lock(&mut tx, &machines).await?;
            db::deliveries::lock(&mut tx, &reported, &machines).await?;
            // After the locks: a transition is stamped no earlier than the ones it waited for.
            let now = self.now();
            let mut b = Batch::default();
            if !reports.is_empty() {
                outcomes = self
                    .apply_reports(&mut tx, &mut b, &reports, now, &mut wakes)
                    .await?;
                b.flush(&mut tx, now).await?;
            }
            if !machines.is_empty() {
                b.read(&mut tx, &machines).await?;
                self.lock_limited(&mut tx, &b).await?;
                for j in jobs {
                    if let Job::Dispatch(machine, state) = j {
                        dispatched.push(
                            self.dispatch_in(&mut tx, &mut b, machine, state, now)
                                .await?,
                        );
                    }
                }
                b.flush(&mut tx, now).await?;
            }
            tx.commit().await?;
        }
        // The machines may have their next package, and others a freed concurrency slot.
        for (machine, freed) in wakes {
            self.wake(&machine);
            if let Some(scenario_id) = freed {
                self.wake_scenario(&scenario_id).await;
            }
        }
        let (mut outcomes, mut dispatched) = (outcomes.into_iter(), dispatched.into_iter());
        jobs.iter()
            .map(|j| match j {
                Job::Report(..) => outcomes.next().map(Done::Report),
                Job::Dispatch(..) => dispatched.next().map(|(w, due)| Done::Dispatch(w, due)),
            })
            .collect::<Option<Vec<_>>>()
            .context("a write of the group has no outcome")
    }

    /// Locks the scenarios with a `max_concurrent` among the group's unfinished deliveries,
    /// all at once in id order: taken as each dispatch reached one, two groups could take two
    /// of them in opposite orders and deadlock.
    async fn lock_limited(&self, tx: &mut db::Conn, b: &Batch) -> Result<()> {
        let ids: std::collections::BTreeSet<&str> = b
            .unfinished
            .values()
            .flatten()
            .map(|r| r.scenario_id.as_str())
            .collect();
        let mut limited = Vec::new();
        for id in ids {
            if self.scenario(&mut *tx, id).await?.max_concurrent.is_some() {
                limited.push(id);
            }
        }
        db::scenarios::lock_rows(tx, &limited).await
    }

    /// The reports of a group: one read of their rows; their transitions are deferred into
    /// `b` and written together. A report repeated within the group sees the row as the one
    /// before it left it. Adds to `wakes` the machines whose report was applied, with the
    /// scenario whose concurrency slot it freed.
    async fn apply_reports(
        &self,
        tx: &mut db::Conn,
        b: &mut Batch,
        group: &[(&str, &Report)],
        now: i64,
        wakes: &mut Vec<(String, Option<String>)>,
    ) -> Result<Vec<ReportOutcome>> {
        let ids: Vec<&str> = group.iter().map(|(_, r)| r.delivery_id.as_str()).collect();
        let mut rows: std::collections::HashMap<String, DeliveryRow> =
            db::deliveries::find_many(&mut *tx, &ids)
                .await?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect();
        let mut outcomes = Vec::with_capacity(group.len());
        for (machine, rep) in group {
            let row = rows
                .get_mut(&rep.delivery_id)
                .filter(|r| r.machine_id == *machine);
            let (outcome, freed) = self.apply_report(&mut *tx, b, row, rep, now).await?;
            if matches!(outcome, ReportOutcome::Ack(ReportAck { applied: true, .. })) {
                wakes.push((machine.to_string(), freed));
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// One report inside a group's transaction, its transition deferred into `b`; with the
    /// scenario whose concurrency slot it freed, if any.
    async fn apply_report(
        &self,
        tx: &mut db::Conn,
        b: &mut Batch,
        row: Option<&mut DeliveryRow>,
        rep: &Report,
        now: i64,
    ) -> Result<(ReportOutcome, Option<String>)> {
        let Some(r) = row else {
            return Ok((ReportOutcome::NotFound, None));
        };
        // A repeat (same or earlier seq) or a report of an older attempt: acknowledged, not applied.
        if rep.attempt < r.d.attempt || (rep.attempt == r.d.attempt && rep.seq <= r.last_seq) {
            let ack = ReportAck {
                applied: false,
                reboot: false,
            };
            return Ok((ReportOutcome::Ack(ack), None));
        }
        let s = self.scenario(tx, &r.scenario_id).await?;
        let was_busy = r.d.state.is_busy();
        let event = &rep.event;
        match self.advance(r, event, rep.attempt, rep.seq, &rep.detail, &s, now) {
            Ok((action, e)) => {
                b.defer(r, e);
                // A concurrency slot opened only if the scenario limits them.
                let freed = s.max_concurrent.is_some() && was_busy && !r.d.state.is_busy();
                let ack = ReportAck {
                    applied: true,
                    reboot: action == Action::Reboot,
                };
                Ok((
                    ReportOutcome::Ack(ack),
                    freed.then(|| r.scenario_id.clone()),
                ))
            }
            Err(e) => Ok((ReportOutcome::Refused(e), None)),
        }
    }

    pub async fn wake_scenario(&self, scenario_id: &str) {
        let machines = db::deliveries::waiting_machines_of(&self.db, scenario_id)
            .await
            .unwrap_or_default();
        for m in machines {
            self.wake(&m);
        }
    }

    /// In-flight deliveries whose agent went quiet past the deadline get `NoReply` (E13).
    pub async fn sweep(&self) -> Result<usize> {
        let now = self.now();
        let expired = db::deliveries::expired(&self.db, now).await?;
        let mut n = 0;
        for r in expired {
            let _w = self.write_shared().await?;
            let mut tx = self.db.begin().await?;
            // Re-read, locked: a report may have moved it meanwhile. One locked by a report
            // or a dispatch now is theirs to move; the next sweep looks again.
            let Some(mut cur) = db::deliveries::claim(&mut tx, &r.id).await? else {
                continue;
            };
            if !cur.d.state.in_flight() || cur.deadline.is_none_or(|d| d >= now) {
                continue;
            }
            let s = self.scenario(&mut tx, &cur.scenario_id).await?;
            let a = cur.d.attempt;
            let detail = no_reply_detail(
                &cur.d.state,
                "no report from the agent within the install timeout and margin",
            );
            let mut b = Batch::default();
            if self
                .defer(&mut b, &mut cur, &Event::NoReply, a, &detail, &s, now)
                .is_ok()
            {
                b.flush(&mut tx, now).await?;
                tx.commit().await?;
                n += 1;
                tracing::warn!(delivery = %cur.id, machine = %cur.machine_id, code = ?cur.d.last_code, "no reply from the agent");
                self.wake(&cur.machine_id);
            }
        }
        Ok(n)
    }

    /// After a start: in-flight deliveries get a fresh deadline, so agents that carried on
    /// while the server was down can still report; the rest of the state is already in the DB.
    /// Under the exclusive lock: another server on the database may be writing.
    pub async fn recover(&self) -> Result<u64> {
        let margin = self.no_reply_margin.as_millis() as i64;
        let _w = self.write().await?;
        db::deliveries::set_in_flight_deadlines(&self.db, self.now() + margin).await
    }
}

/// The detail of a delivery left unheard in `state`: E05 when the agent went silent during
/// the transfer, E13 after it (`core::faults::no_reply` decides).
fn no_reply_detail(state: &State, why: &str) -> Detail {
    Detail {
        code: Some(faults::no_reply(*state == State::Transferring).code()),
        params: Params {
            detail: Some(why.to_string()),
            ..Params::default()
        },
        ..Detail::default()
    }
}

/// Keeps what earlier reports said unless the new one says something else.
fn merge(into: &mut Detail, new: &Detail) {
    if new.code.is_some() {
        into.code = new.code;
        into.params = new.params.clone();
    }
    if new.exit_code.is_some() {
        into.exit_code = new.exit_code;
    }
    if new.output_tail.is_some() {
        into.output_tail = new.output_tail.clone();
    }
    if !new.explanation.is_empty() {
        into.explanation = new.explanation.clone();
    }
    if new.source.is_some() {
        into.source = new.source.clone();
    }
}
