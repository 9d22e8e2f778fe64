//! Results: per delivery (state, attempts, last code rendered in the reader's language, exit
//! code, output tail, explanation, optionally the full history) and per package counts.

use super::Server;
use super::db;
use anyhow::Result;
use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use patchcast_core::delivery::Bucket;
use patchcast_core::errors::{Lang, render};
use patchcast_core::pipeline::Action;
use patchcast_proto::admin_api::{
    DeliveryRow, HistoryEntry, PackageSummary, Results, ScenarioStatus,
};
use patchcast_proto::protocol::Inventory;
use patchcast_proto::schedule_api::MachineSetting;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A streamed report as a response body. An error after the first bytes cannot change the
/// status line any more: it is logged and the body cut short, which is how the reader learns.
pub fn body(
    what: &'static str,
    chunks: impl Stream<Item = Result<Bytes>> + Send + 'static,
) -> axum::body::Body {
    axum::body::Body::from_stream(chunks.map(move |c| {
        c.map_err(|e| {
            tracing::error!("{what} stopped: {e:#}");
            std::io::Error::other(format!("{e:#}"))
        })
    }))
}

/// Batches of records as the elements of a JSON array (commas between, none around):
/// the bytes `serde_json` writes for the whole list, less its brackets.
pub fn json_elements<T: Serialize>(
    batches: impl Stream<Item = Result<Vec<T>>>,
) -> impl Stream<Item = Result<Bytes>> {
    let mut first = true;
    batches.map(move |b| {
        let mut out = Vec::new();
        for r in b? {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &r)?;
        }
        Ok(Bytes::from(out))
    })
}

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub scenario: Option<String>,
    pub machine: Option<String>,
    pub package: Option<String>,
    pub history: bool,
    pub lang: Lang,
    /// At most this many rows, from page `page` (0-based) of that size; None: every row.
    pub limit: Option<u64>,
    pub page: u64,
}

/// Each scenario's action (whether `applied` means installed or removed), read once per
/// scenario a report meets.
#[derive(Debug, Default)]
pub struct Actions(HashMap<String, Action>);

impl Actions {
    pub async fn of(&mut self, s: &Server, scenario: &str) -> Result<Action> {
        if let Some(a) = self.0.get(scenario) {
            return Ok(*a);
        }
        let mut conn = s.db.acquire().await?;
        let action = db::scenarios::spec(&mut conn, scenario).await?.action;
        self.0.insert(scenario.to_string(), action);
        Ok(action)
    }
}

/// A stored delivery as results show it: the code rendered in `lang` with its parameters.
pub fn delivery_row(
    r: db::deliveries::ResultRow,
    action: Action,
    mac: Option<String>,
    lang: Lang,
    history: Vec<HistoryEntry>,
) -> DeliveryRow {
    let d = r.delivery;
    let detail = r.detail;
    let mut params = detail.params.clone();
    if params.exit_code.is_none() {
        params.exit_code = detail.exit_code;
    }
    // Codes the server raised itself (E04, E05, E13) name the package too.
    if params.package.is_none() {
        params.package = Some(r.package_id.clone());
    }
    let code = d.last_code;
    DeliveryRow {
        delivery_id: r.id,
        scenario_id: r.scenario_id,
        machine_id: r.machine_id,
        mac,
        hostname: r.hostname,
        package_id: r.package_id,
        action,
        attempts: d.attempt,
        unverified_runs: d.unverified_runs,
        last_code: code,
        rendered: code.map(|c| render(c, lang, &params)),
        state: d.state,
        detail,
        updated_at_ms: r.updated_at,
        history,
    }
}

/// Counts by (package, scenario, state) summed into each package's buckets.
pub async fn summarise(
    s: &Server,
    actions: &mut Actions,
    counts: Vec<(String, String, String, u64)>,
) -> Result<Vec<PackageSummary>> {
    let mut by_pkg: BTreeMap<String, PackageSummary> = BTreeMap::new();
    for (package, scenario, state, n) in counts {
        let action = actions.of(s, &scenario).await?;
        let sum = by_pkg
            .entry(package.clone())
            .or_insert_with(|| PackageSummary {
                package_id: package,
                ..PackageSummary::default()
            });
        let bucket = match Bucket::of_name(&state) {
            Bucket::Applied if !action.is_install() => Bucket::NotApplied,
            b => b,
        };
        *match bucket {
            Bucket::Applied => &mut sum.applied,
            Bucket::NotApplicable => &mut sum.not_applicable,
            Bucket::NotApplied => &mut sum.not_applied,
            Bucket::Failed => &mut sum.failed,
            Bucket::InProgress => &mut sum.in_progress,
        } += n;
    }
    Ok(by_pkg.into_values().collect())
}

/// The MAC address the FAQ's result list names a computer by, from its stored inventory.
fn mac_of(inventory: &str) -> Option<String> {
    serde_json::from_str::<Inventory>(inventory)
        .ok()
        .and_then(|i| i.mac().map(str::to_string))
}

/// Rows a streamed report reads and hands on at a time.
pub const BATCH: usize = 500;

/// What `results` selects, resolved before an answer starts: a machine name the
/// administrator typed becomes its machine's id (an unknown one is an error status, never a
/// body cut short).
#[derive(Debug, Clone)]
pub struct Selection {
    scenario: String,
    machine_id: String,
    package: String,
    history: bool,
    lang: Lang,
}

impl Selection {
    fn filter(&self) -> (&str, &str, &str) {
        (&self.scenario, &self.machine_id, &self.package)
    }
}

impl Server {
    pub async fn select(&self, q: &Query) -> Result<Selection> {
        let machine_id = match &q.machine {
            Some(name) if !name.is_empty() => self.machine_id(name).await?,
            _ => String::new(),
        };
        Ok(Selection {
            scenario: q.scenario.clone().unwrap_or_default(),
            machine_id,
            package: q.package.clone().unwrap_or_default(),
            history: q.history,
            lang: q.lang,
        })
    }

    async fn delivery(
        &self,
        (r, inventory): (db::deliveries::ResultRow, String),
        sel: &Selection,
        actions: &mut Actions,
    ) -> Result<DeliveryRow> {
        let action = actions.of(self, &r.scenario_id).await?;
        let history = if sel.history {
            self.history(&r.id).await?
        } else {
            Vec::new()
        };
        Ok(delivery_row(
            r,
            action,
            mac_of(&inventory),
            sel.lang,
            history,
        ))
    }

    /// `limit` of the deliveries `sel` selects from `offset`, in `results`' order.
    pub async fn deliveries(
        &self,
        sel: &Selection,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows = db::reports::results_page(&self.db, sel.filter(), limit, offset).await?;
        let mut actions = Actions::default();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.delivery(r, sel, &mut actions).await?);
        }
        Ok(out)
    }

    /// Every delivery `sel` selects, in `results`' order, in batches of [`BATCH`]: a task
    /// reads one statement a row at a time and hands a batch on only once the reader took
    /// the one before, so the server holds about two batches however many rows there are.
    /// Dropping the stream (a reader who went away) ends the task and its statement.
    pub fn delivery_batches(
        self: &Arc<Self>,
        sel: Selection,
    ) -> impl Stream<Item = Result<Vec<DeliveryRow>>> + Send + 'static {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let s = self.clone();
        tokio::spawn(async move {
            let read = async {
                let mut rows = db::reports::results_rows(&s.db, sel.filter(), i64::MAX, 0);
                let mut actions = Actions::default();
                let mut batch = Vec::with_capacity(BATCH);
                while let Some(r) = rows.next().await {
                    batch.push(s.delivery(r?, &sel, &mut actions).await?);
                    if batch.len() == BATCH
                        && tx.send(Ok(std::mem::take(&mut batch))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(Ok(batch)).await;
                }
                anyhow::Ok(())
            };
            if let Err(e) = read.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// The package summary of what `sel` selects (every delivery, whatever the page) and
    /// the machines' time settings.
    pub async fn results_summary(
        &self,
        sel: &Selection,
        actions: &mut Actions,
    ) -> Result<(Vec<PackageSummary>, Vec<MachineSetting>, u64)> {
        let counts = db::reports::results_counts(&self.db, sel.filter()).await?;
        let total = counts.iter().map(|(_, _, _, n)| n).sum::<u64>();
        let packages = summarise(self, actions, counts).await?;
        let settings = self
            .machine_settings(
                sel.lang,
                Some(sel.machine_id.as_str()).filter(|m| !m.is_empty()),
            )
            .await?;
        Ok((packages, settings, total))
    }

    /// Deliveries (one page of them with `limit`), paged and counted by the database: the
    /// package summary counts every delivery the filters select, whatever the page.
    pub async fn results(&self, q: &Query) -> Result<Results> {
        let sel = self.select(q).await?;
        let (limit, offset) = match q.limit {
            Some(l) => {
                let l = l.clamp(1, i64::MAX as u64) as i64;
                (l, l.saturating_mul(q.page.min(i64::MAX as u64) as i64))
            }
            None => (i64::MAX, 0),
        };
        let deliveries = self.deliveries(&sel, limit, offset).await?;
        let (packages, settings, total) =
            self.results_summary(&sel, &mut Actions::default()).await?;
        Ok(Results {
            deliveries,
            packages,
            settings,
            total: q.limit.map(|_| total),
        })
    }

    /// `results` without a page, as the JSON bytes `serde_json::to_vec(&Results)` writes,
    /// streamed: the rows a batch at a time, then the summary.
    pub fn results_json(
        self: &Arc<Self>,
        sel: Selection,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let s = self.clone();
        let tail_sel = sel.clone();
        let head =
            futures_util::stream::once(async { Ok(Bytes::from_static(b"{\"deliveries\":[")) });
        let tail = futures_util::stream::once(async move {
            let (packages, settings, _) = s
                .results_summary(&tail_sel, &mut Actions::default())
                .await?;
            Ok(Bytes::from(format!(
                "],\"packages\":{},\"settings\":{}}}",
                serde_json::to_string(&packages)?,
                serde_json::to_string(&settings)?
            )))
        });
        head.chain(json_elements(self.delivery_batches(sel)))
            .chain(tail)
    }

    pub async fn history(&self, delivery: &str) -> Result<Vec<HistoryEntry>> {
        db::deliveries::history(&self.db, delivery).await
    }

    pub async fn scenario_exists(&self, id: &str) -> Result<bool> {
        Ok(db::scenarios::header(&self.db, id).await?.is_some())
    }

    /// A scenario's deliveries counted by state (all of them) and one page of its rows:
    /// `limit` (default [`STATUS_PAGE`], at most [`STATUS_PAGE_MAX`], 0 for counts only)
    /// after the cursor `after` a previous page handed out as `next`.
    pub async fn scenario_status(
        &self,
        id: &str,
        lang: Lang,
        page: &StatusPage,
    ) -> Result<ScenarioStatus, StatusError> {
        let after = match &page.after {
            Some(c) => parse_cursor(c).ok_or_else(|| StatusError::Cursor(c.clone()))?,
            None => db::reports::ScenarioKey::default(),
        };
        let Some((name, created_at_ms)) = db::scenarios::header(&self.db, id).await? else {
            return Err(StatusError::NoScenario(id.to_string()));
        };
        // Counted before the rows are read: deliveries only move towards their end, so rows
        // read after a count that says done are all ended too.
        let c = counts(self, id).await?;
        let limit = page.limit.unwrap_or(STATUS_PAGE).min(STATUS_PAGE_MAX) as usize;
        let mut rows = Vec::new();
        let mut next = None;
        if limit > 0 {
            // One row more than the page says whether there is a next one.
            rows = db::reports::scenario_page(&self.db, id, &after, limit as i64 + 1).await?;
            if rows.len() > limit {
                rows.truncate(limit);
                next = rows.last().map(|(_, _, k)| cursor(k));
            }
        }
        let sel = Selection {
            scenario: id.to_string(),
            machine_id: String::new(),
            package: String::new(),
            history: false,
            lang,
        };
        let mut actions = Actions::default();
        let mut deliveries = Vec::with_capacity(rows.len());
        for (r, inventory, _) in rows {
            deliveries.push(self.delivery((r, inventory), &sel, &mut actions).await?);
        }
        Ok(ScenarioStatus {
            id: id.to_string(),
            name,
            created_at_ms,
            total: c.total,
            done: c.done || c.total == 0,
            counts: c.states,
            deliveries,
            next,
        })
    }

    /// Every scenario, the newest first, with its deliveries counted by state (no rows).
    pub async fn scenario_list(&self) -> Result<Vec<ScenarioStatus>> {
        let mut out = Vec::new();
        for h in db::scenarios::newest_first(&self.db).await? {
            let c = counts(self, &h.id).await?;
            out.push(ScenarioStatus {
                id: h.id,
                name: h.name,
                created_at_ms: h.created_at,
                counts: c.states,
                total: c.total,
                done: c.done,
                deliveries: Vec::new(),
                next: None,
            });
        }
        Ok(out)
    }
}

/// Rows of `scenario status` a page holds unless the request says otherwise.
pub const STATUS_PAGE: u64 = 1000;
/// The most rows one page of `scenario status` holds, whatever the request asks.
pub const STATUS_PAGE_MAX: u64 = 10_000;

/// Which page of a scenario's deliveries `scenario_status` answers with.
#[derive(Debug, Clone, Default)]
pub struct StatusPage {
    pub limit: Option<u64>,
    /// The `next` of the page before; None: the first page.
    pub after: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no scenario `{0}` on this server: `patchcast scenario list` shows the ones it has")]
    NoScenario(String),
    #[error(
        "`{0}` is not a page cursor this server hands out: pass the `next` of the page before, \
         or leave `after` out for the first page"
    )]
    Cursor(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// A page key as the opaque cursor clients pass back: the hex of its JSON.
fn cursor(k: &db::reports::ScenarioKey) -> String {
    let json = serde_json::to_vec(&(&k.hostname, &k.machine_id, k.position, &k.id))
        .expect("strings and a number serialise");
    hex::encode(json)
}

fn parse_cursor(c: &str) -> Option<db::reports::ScenarioKey> {
    let (hostname, machine_id, position, id) =
        serde_json::from_slice(&hex::decode(c).ok()?).ok()?;
    Some(db::reports::ScenarioKey {
        hostname,
        machine_id,
        position,
        id,
    })
}

/// Deliveries of a scenario by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub states: BTreeMap<String, u64>,
    pub total: u64,
    /// Every delivery is in a terminal state (and there is at least one).
    pub done: bool,
}

pub async fn counts(s: &Server, scenario: &str) -> Result<Counts> {
    let mut c = Counts::default();
    for (state, n) in db::deliveries::count_by_state(&s.db, scenario).await? {
        c.states.insert(state, n);
        c.total += n;
    }
    c.done = c.total > 0
        && c.states
            .iter()
            .all(|(k, n)| *n == 0 || patchcast_core::delivery::is_terminal_name(k));
    Ok(c)
}

/// Reports at fleet size: counted and paged by the database (`db::reports`).
impl Server {
    /// Per package: how many machines are in each bucket, by their current delivery.
    pub async fn compliance(&self) -> Result<Vec<PackageSummary>> {
        let counts = db::reports::current_counts(&self.db).await?;
        summarise(self, &mut Actions::default(), counts).await
    }

    /// How many machines have a current delivery in each of `states` (by name).
    pub async fn machines_in_states(&self, states: &[&str]) -> Result<Vec<i64>> {
        db::reports::machines_in_states(&self.db, states).await
    }

    /// Up to `limit` machines after the key `(hostname, id)`, in that order, each with the
    /// names of the `groups` it is in.
    pub async fn machine_batch(
        &self,
        groups: &[patchcast_proto::admin_api::Group],
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<patchcast_proto::admin_api::MachineView>> {
        let mut ms = db::reports::machines_after(&self.db, after, limit).await?;
        for m in &mut ms {
            m.groups = groups
                .iter()
                .filter(|g| super::machines::in_group(g, m))
                .map(|g| g.name.clone())
                .collect();
        }
        Ok(ms)
    }

    /// The current delivery of each package on each of `machines` (no history, no MAC).
    pub async fn current_of(
        &self,
        machines: &[String],
        lang: Lang,
        actions: &mut Actions,
    ) -> Result<Vec<DeliveryRow>> {
        let mut out = Vec::new();
        for r in db::reports::current_of_machines(&self.db, machines).await? {
            let action = actions.of(self, &r.scenario_id).await?;
            out.push(delivery_row(r, action, None, lang, Vec::new()));
        }
        Ok(out)
    }

    /// The result codes current deliveries carry, sorted, once each.
    pub async fn current_codes(&self) -> Result<Vec<String>> {
        let mut codes = std::collections::BTreeSet::new();
        for d in db::reports::current_with_codes(&self.db).await? {
            let d: patchcast_core::delivery::Delivery = serde_json::from_str(&d)?;
            if let Some(c) = d.last_code {
                codes.insert(c.to_string());
            }
        }
        Ok(codes.into_iter().collect())
    }

    /// Silent machines: up to `limit` last heard from before `before`, longest silent first,
    /// and how many there are in all.
    pub async fn silent_machines(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<(Vec<patchcast_proto::admin_api::MachineView>, i64)> {
        Ok((
            db::reports::silent_since(&self.db, before, limit).await?,
            db::reports::silent_count(&self.db, before).await?,
        ))
    }

    pub async fn machine_count(&self) -> Result<i64> {
        db::reports::machine_count(&self.db).await
    }

    pub async fn oses_and_languages(&self) -> Result<(Vec<String>, Vec<String>)> {
        db::reports::oses_and_languages(&self.db).await
    }

    /// Retention: deletes history older than `retention` that a finished delivery's later
    /// transitions superseded, in batches of `batch` rows (each its own statement under the
    /// write lock, so check-ins and reports go on in between). How many rows it deleted.
    pub async fn prune_history(&self, retention: std::time::Duration, batch: i64) -> Result<u64> {
        let before = self.now() - retention.as_millis() as i64;
        let mut total = 0;
        loop {
            let n = {
                let _w = self.write().await?;
                db::reports::prune_history(&self.db, before, batch).await?
            };
            total += n;
            if n < batch as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                rows = total,
                older_than_ms = before,
                "history retention pruned superseded delivery history"
            );
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_gives_back_its_key_and_nothing_else_passes() {
        let k = db::reports::ScenarioKey {
            hostname: "ホスト \"a\",b".into(),
            machine_id: "m-1".into(),
            position: i64::MIN,
            id: "d-1".into(),
        };
        assert_eq!(parse_cursor(&cursor(&k)), Some(k));
        for foreign in ["", "zz", "5b5d", &hex::encode("[\"a\",\"b\",\"c\",\"d\"]")] {
            assert_eq!(parse_cursor(foreign), None, "{foreign}");
        }
    }
}
