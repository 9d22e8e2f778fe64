//! Deliveries (`deliveries`: one machine × package of a scenario, its `core::delivery` state as
//! JSON and the state's name for queries) and their history (`events`: one row per transition).
//!
//! The sets of states the queries select on are `State` values below, rendered into SQL from
//! `State::name`; the tests check them against the core's own `is_terminal` and `in_flight`.

use super::json;
use anyhow::Result;
use patchcast_core::delivery::{Delivery, Event, State};
use patchcast_core::errors::{Code, Params};
use patchcast_proto::admin_api::HistoryEntry;
use patchcast_proto::protocol::{Detail, Inventory};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Row};

// The payloads of the states below do not matter: only their names are rendered.

/// Finished: `State::is_terminal`.
pub static TERMINAL: &[State] = &[
    State::Applied,
    State::NotApplicable {
        reason: String::new(),
    },
    State::Failed { code: Code::E01 },
    State::LoopDetected {
        rule: String::new(),
    },
    State::Cancelled,
    State::Superseded { by: String::new() },
];

/// On the agent now: `State::in_flight`.
pub static IN_FLIGHT: &[State] = &[State::Transferring, State::Executing, State::Verifying];

/// Holding the machine: `State::is_busy`.
pub static BUSY: &[State] = &[
    State::Transferring,
    State::Executing,
    State::Verifying,
    State::RebootPending,
    State::StagedForBoot,
];

/// Waiting for the dispatcher to start them: neither finished nor busy.
pub static WAITING: &[State] = &[State::Pending, State::AwaitingRetry];

/// Still to fetch their content: waiting, or transferring.
pub static FETCHING: &[State] = &[State::Pending, State::AwaitingRetry, State::Transferring];

/// `('a','b')`: the states' names as an SQL list.
fn list(states: &[State]) -> String {
    let names: Vec<String> = states.iter().map(literal).collect();
    format!("({})", names.join(","))
}

/// `'a'`: the state's name as an SQL string.
fn literal(s: &State) -> String {
    format!("'{}'", s.name())
}

/// A delivery row as stored.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub scenario_id: String,
    pub machine_id: String,
    pub package_id: String,
    pub d: Delivery,
    pub last_seq: u32,
    pub deadline: Option<i64>,
    pub retry_at: Option<i64>,
    pub detail: Detail,
    pub events: i64,
    /// The package's install timeout; None when it is no longer published.
    pub install_timeout_secs: Option<i64>,
}

/// A delivery row's columns, with its package's install timeout (read with the row: every
/// transition into an in-flight state needs it for the deadline).
const COLUMNS: &str = "d.id, d.scenario_id, d.machine_id, d.package_id, d.delivery, d.last_seq, \
    d.deadline, d.retry_at, d.detail, d.events, p.install_timeout_secs";
/// Where `COLUMNS` come from.
const FROM: &str = "deliveries d LEFT JOIN packages p ON p.id = d.package_id";

fn row(r: &AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        scenario_id: r.try_get("scenario_id")?,
        machine_id: r.try_get("machine_id")?,
        package_id: r.try_get("package_id")?,
        d: json(r, "delivery")?,
        last_seq: r.try_get::<i64, _>("last_seq")? as u32,
        deadline: r.try_get("deadline")?,
        retry_at: r.try_get("retry_at")?,
        detail: json(r, "detail")?,
        events: r.try_get("events")?,
        install_timeout_secs: r.try_get("install_timeout_secs")?,
    })
}

/// The history row of one transition: the event, and the state it left the delivery in.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub delivery_id: String,
    /// Its number among the delivery's events (`DeliveryRow::events` after it).
    pub n: i64,
    pub event: Event,
    pub state: State,
    pub attempt: u32,
    pub seq: u32,
    pub code: Option<Code>,
    pub params: Params,
}

/// A new pending delivery of a scenario.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: String,
    pub scenario_id: &'a str,
    pub machine_id: &'a str,
    pub package_id: &'a str,
    pub position: i64,
    pub archive_sha256: &'a str,
    pub now: i64,
}

/// A delivery as `results` shows it.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub id: String,
    pub scenario_id: String,
    pub machine_id: String,
    pub hostname: String,
    pub package_id: String,
    pub delivery: Delivery,
    pub detail: Detail,
    pub updated_at: i64,
}

/// A delivery that still fetches its content, with what planning its sources needs.
#[derive(Debug, Clone)]
pub struct ContentDemand {
    pub machine_id: String,
    pub peer_addr: String,
    pub inventory: Inventory,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub manifest: String,
}

/// How often a code was raised, and when last.
#[derive(Debug, Clone)]
pub struct CodeCount {
    pub code: String,
    pub n: i64,
    pub last: i64,
}

/// The unfinished deliveries of `machines` (none given: none), each machine's in dispatch
/// order (oldest scenario first, then position).
pub async fn unfinished_of_machines(
    tx: &mut AnyConnection,
    machines: &[&str],
) -> Result<Vec<DeliveryRow>> {
    if machines.is_empty() {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT {COLUMNS} FROM {FROM} JOIN scenarios s ON s.id = d.scenario_id \
         WHERE d.machine_id IN {} AND d.state NOT IN {} \
         ORDER BY s.created_at, d.scenario_id, d.position",
        super::placeholders(1, machines.len()),
        list(TERMINAL)
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for m in machines {
        query = query.bind(*m);
    }
    query.fetch_all(&mut *tx).await?.iter().map(row).collect()
}

/// Whether `machine` has any unfinished delivery: an idle check-in without one needs no
/// write lock (the common case of a fleet between rollouts).
pub async fn has_unfinished(pool: &AnyPool, machine: &str) -> Result<bool> {
    let q = format!(
        "SELECT 1 FROM deliveries WHERE machine_id = $1 AND state NOT IN {} LIMIT 1",
        list(TERMINAL)
    );
    Ok(sqlx::query(AssertSqlSafe(q))
        .bind(machine)
        .fetch_optional(pool)
        .await?
        .is_some())
}

/// A delivery applied on its machine or busy on it, with its scenario's action: what may
/// supersede a package (`core::lifecycle`).
#[derive(Debug, Clone)]
pub struct AppliedOrBusy {
    pub machine_id: String,
    pub package_id: String,
    pub state: State,
    pub action: patchcast_core::pipeline::Action,
}

/// The deliveries applied on `machines` or busy on them (none given: none), oldest scenario
/// first.
pub async fn applied_or_busy_of_machines(
    tx: &mut AnyConnection,
    machines: &[&str],
) -> Result<Vec<AppliedOrBusy>> {
    if machines.is_empty() {
        return Ok(Vec::new());
    }
    let mut states = vec![State::Applied];
    states.extend(BUSY.iter().cloned());
    let q = format!(
        "SELECT d.machine_id, d.package_id, d.delivery, s.spec FROM deliveries d \
         JOIN scenarios s ON s.id = d.scenario_id \
         WHERE d.machine_id IN {} AND d.state IN {} ORDER BY s.created_at, d.scenario_id, d.position",
        super::placeholders(1, machines.len()),
        list(&states)
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for m in machines {
        query = query.bind(*m);
    }
    query
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let d: Delivery = json(r, "delivery")?;
            let spec: patchcast_core::model::scenario::Scenario = json(r, "spec")?;
            Ok(AppliedOrBusy {
                machine_id: r.try_get("machine_id")?,
                package_id: r.try_get("package_id")?,
                state: d.state,
                action: spec.action,
            })
        })
        .collect()
}

/// Every delivery of `package` to `machine`, oldest scenario first: the version of the
/// archive it delivers (from `package_versions`), its state, and its scenario's action.
/// What a package that requires `package` waits for (`core::lifecycle::requirements`).
pub async fn of_package_on_machine(
    tx: &mut AnyConnection,
    machine: &str,
    package: &str,
) -> Result<Vec<(Option<String>, State, patchcast_core::pipeline::Action)>> {
    let rows = sqlx::query(
        "SELECT v.version, d.delivery, s.spec FROM deliveries d \
         JOIN scenarios s ON s.id = d.scenario_id \
         LEFT JOIN package_versions v ON v.id = d.package_id AND v.archive_sha256 = d.archive_sha256 \
         WHERE d.machine_id = $1 AND d.package_id = $2 \
         ORDER BY s.created_at, d.scenario_id, d.position",
    )
    .bind(machine)
    .bind(package)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let d: Delivery = json(r, "delivery")?;
            let spec: patchcast_core::model::scenario::Scenario = json(r, "spec")?;
            Ok((r.try_get("version")?, d.state, spec.action))
        })
        .collect()
}

/// (delivery id, manifest) of the archives the deliveries `ids` deliver (a delivery whose
/// version is no longer published is left out).
pub async fn manifests_of(tx: &mut AnyConnection, ids: &[&str]) -> Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT d.id, v.manifest FROM deliveries d \
         JOIN package_versions v ON v.id = d.package_id AND v.archive_sha256 = d.archive_sha256 \
         WHERE d.id IN {}",
        super::placeholders(1, ids.len())
    );
    let mut query = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(q));
    for id in ids {
        query = query.bind(*id);
    }
    Ok(query.fetch_all(&mut *tx).await?)
}

/// The deliveries among `ids` (in no particular order; unknown ids are left out).
pub async fn find_many(tx: &mut AnyConnection, ids: &[&str]) -> Result<Vec<DeliveryRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE d.id IN {}",
        super::placeholders(1, ids.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for id in ids {
        query = query.bind(*id);
    }
    query.fetch_all(&mut *tx).await?.iter().map(row).collect()
}

/// The delivery `id`, if there is one.
pub async fn find(tx: &mut AnyConnection, id: &str) -> Result<Option<DeliveryRow>> {
    find_in(tx, id, "").await
}

/// The delivery `id`, locked until the transaction ends, unless another transaction has it
/// locked (PostgreSQL: `SKIP LOCKED`), when it is None as if it did not exist: whoever holds
/// it is moving it.
pub async fn claim(tx: &mut AnyConnection, id: &str) -> Result<Option<DeliveryRow>> {
    let lock = if super::row_locks(tx) {
        " FOR UPDATE OF d SKIP LOCKED"
    } else {
        ""
    };
    find_in(tx, id, lock).await
}

async fn find_in(tx: &mut AnyConnection, id: &str, lock: &str) -> Result<Option<DeliveryRow>> {
    let q = format!("SELECT {COLUMNS} FROM {FROM} WHERE d.id = $1{lock}");
    sqlx::query(AssertSqlSafe(q))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

/// Locks, until the transaction ends, the deliveries `reported` and every unfinished delivery
/// of `machines`, in id order (PostgreSQL; nothing on SQLite, whose one writer is alone). A
/// group takes it right after `machines::lock` of its polling machines, before anything else,
/// so groups on several servers wait for each other instead of deadlocking: no report,
/// dispatch or sweep (`claim`) moves a delivery under another's decision.
pub async fn lock(tx: &mut AnyConnection, reported: &[&str], machines: &[&str]) -> Result<()> {
    if !super::row_locks(tx) {
        return Ok(());
    }
    let mut any = Vec::new();
    if !reported.is_empty() {
        any.push(format!("id IN {}", super::placeholders(1, reported.len())));
    }
    if !machines.is_empty() {
        any.push(format!(
            "(machine_id IN {} AND state NOT IN {})",
            super::placeholders(reported.len() + 1, machines.len()),
            list(TERMINAL)
        ));
    }
    if any.is_empty() {
        return Ok(());
    }
    let q = format!(
        "SELECT id FROM deliveries WHERE {} ORDER BY id FOR UPDATE",
        any.join(" OR ")
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for id in reported.iter().chain(machines) {
        query = query.bind(*id);
    }
    query.fetch_all(&mut *tx).await?;
    Ok(())
}

/// Advisory key of `lock_transfers` ("patchcast" + 3; 1 and 2 are `cluster`'s).
const TRANSFERS_KEY: i64 = 0x7063_6173_7400_0003;

/// Serialises the transfer caps' count-then-start until the transaction ends (PostgreSQL: a
/// transaction-level advisory lock; nothing on SQLite): the running transfers are every
/// machine's, so there is no one row to lock.
pub async fn lock_transfers(tx: &mut AnyConnection) -> Result<()> {
    if super::row_locks(tx) {
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) l")
            .bind(TRANSFERS_KEY)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// In-flight deliveries whose deadline is before `now`.
pub async fn expired(db: &AnyPool, now: i64) -> Result<Vec<DeliveryRow>> {
    let q = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE d.state IN {} AND d.deadline < $1",
        list(IN_FLIGHT)
    );
    sqlx::query(AssertSqlSafe(q))
        .bind(now)
        .fetch_all(db)
        .await?
        .iter()
        .map(row)
        .collect()
}

pub async fn set_deadline(tx: &mut AnyConnection, id: &str, deadline: i64) -> Result<()> {
    sqlx::query("UPDATE deliveries SET deadline = $1 WHERE id = $2")
        .bind(deadline)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Gives every in-flight delivery the deadline `deadline`; how many there were.
pub async fn set_in_flight_deadlines(db: &AnyPool, deadline: i64) -> Result<u64> {
    let q = format!(
        "UPDATE deliveries SET deadline = $1 WHERE state IN {}",
        list(IN_FLIGHT)
    );
    let r = sqlx::query(AssertSqlSafe(q))
        .bind(deadline)
        .execute(db)
        .await?;
    Ok(r.rows_affected())
}

/// Writes up to `CHUNK` deliveries as they are after their transitions, in one statement
/// (each row once, as its last transition left it).
pub async fn update(tx: &mut AnyConnection, rows: &[&DeliveryRow], now: i64) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // `column1`… are the names SQLite and PostgreSQL both give a VALUES list's columns.
    let q = format!(
        "UPDATE deliveries SET delivery = v.column2, state = v.column3, attempt = v.column4, \
             last_seq = v.column5, deadline = v.column6, retry_at = v.column7, detail = v.column8, \
             updated_at = v.column9, events = v.column10 \
             FROM (VALUES {}) AS v WHERE deliveries.id = v.column1",
        super::values(
            rows.len(),
            &[
                "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "TEXT", "BIGINT",
                "BIGINT",
            ],
        )
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for r in rows {
        query = query
            .bind(&r.id)
            .bind(serde_json::to_string(&r.d)?)
            .bind(r.d.state.name())
            .bind(r.d.attempt as i64)
            .bind(r.last_seq as i64)
            .bind(r.deadline)
            .bind(r.retry_at)
            .bind(serde_json::to_string(&r.detail)?)
            .bind(now)
            .bind(r.events);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// Writes up to `CHUNK` transitions' history rows in one statement.
pub async fn insert_events(tx: &mut AnyConnection, events: &[NewEvent], now: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let q = format!(
        "INSERT INTO events (delivery_id, n, attempt, seq, event, state, code, params, at) VALUES {}",
        super::values(
            events.len(),
            &[
                "TEXT", "BIGINT", "BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT",
            ],
        )
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for e in events {
        query = query
            .bind(&e.delivery_id)
            .bind(e.n)
            .bind(e.attempt as i64)
            .bind(e.seq as i64)
            .bind(serde_json::to_string(&e.event)?)
            .bind(serde_json::to_string(&e.state)?)
            .bind(e.code.map(|c| c.to_string()))
            .bind(serde_json::to_string(&e.params)?)
            .bind(now);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// How many machines other than `machine` a delivery of the scenario keeps busy.
pub async fn busy_machines(
    tx: &mut AnyConnection,
    scenario_id: &str,
    machine: &str,
) -> Result<i64> {
    let q = format!(
        "SELECT COUNT(DISTINCT machine_id) FROM deliveries WHERE scenario_id = $1 \
         AND machine_id <> $2 AND state IN {}",
        list(BUSY)
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(q))
        .bind(scenario_id)
        .bind(machine)
        .fetch_one(&mut *tx)
        .await?)
}

/// Whether a delivery keeps `machine` busy.
pub async fn machine_busy(db: &AnyPool, machine: &str) -> Result<bool> {
    let q = format!(
        "SELECT COUNT(*) FROM deliveries WHERE machine_id = $1 AND state IN {}",
        list(BUSY)
    );
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(q))
        .bind(machine)
        .fetch_one(db)
        .await?;
    Ok(n > 0)
}

/// Deliveries of a package that have not finished.
pub async fn unfinished_of_package(db: &AnyPool, package: &str) -> Result<i64> {
    let q = format!(
        "SELECT COUNT(*) FROM deliveries WHERE package_id = $1 AND state NOT IN {}",
        list(TERMINAL)
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(q))
        .bind(package)
        .fetch_one(db)
        .await?)
}

/// Machines with a delivery of the scenario waiting to start.
pub async fn waiting_machines_of(db: &AnyPool, scenario_id: &str) -> Result<Vec<String>> {
    let q = format!(
        "SELECT DISTINCT machine_id FROM deliveries WHERE scenario_id = $1 AND state IN {}",
        list(WAITING)
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(q))
        .bind(scenario_id)
        .fetch_all(db)
        .await?)
}

/// Machines with any delivery waiting to start.
/// The ids of a scenario's waiting deliveries (what cancelling the scenario withdraws).
pub async fn waiting_of(tx: &mut AnyConnection, scenario_id: &str) -> Result<Vec<String>> {
    let q = format!(
        "SELECT id FROM deliveries WHERE scenario_id = $1 AND state IN {} ORDER BY id",
        list(WAITING)
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(q))
        .bind(scenario_id)
        .fetch_all(&mut *tx)
        .await?)
}

pub async fn waiting_machines(db: &AnyPool) -> Result<Vec<String>> {
    let q = format!(
        "SELECT DISTINCT machine_id FROM deliveries WHERE state IN {}",
        list(WAITING)
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(q)).fetch_all(db).await?)
}

/// Machines that have a delivery of the scenario (in any state).
pub async fn machines_of(db: &AnyPool, scenario_id: &str) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT machine_id FROM deliveries WHERE scenario_id = $1")
            .bind(scenario_id)
            .fetch_all(db)
            .await?,
    )
}

/// Writes up to `CHUNK` new pending deliveries in one statement.
pub async fn insert_pending(tx: &mut AnyConnection, new: &[NewDelivery<'_>]) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let fresh = Delivery::default();
    let (delivery, detail) = (
        serde_json::to_string(&fresh)?,
        serde_json::to_string(&Detail::default())?,
    );
    let q = format!(
        "INSERT INTO deliveries (id, scenario_id, machine_id, package_id, position, delivery, state, \
             attempt, last_seq, deadline, retry_at, detail, updated_at, events, archive_sha256) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
             0, 0, NULL, NULL, v.column8, v.column9, 0, v.column10 FROM (VALUES {}) AS v",
        super::values(
            new.len(),
            &[
                "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "TEXT", "TEXT", "TEXT", "BIGINT", "TEXT",
            ],
        )
    );
    let mut query = sqlx::query(AssertSqlSafe(q));
    for d in new {
        query = query
            .bind(&d.id)
            .bind(d.scenario_id)
            .bind(d.machine_id)
            .bind(d.package_id)
            .bind(d.position)
            .bind(&delivery)
            .bind(fresh.state.name())
            .bind(&detail)
            .bind(d.now)
            .bind(d.archive_sha256);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// When the delivery last moved; an error when there is none.
pub async fn updated_at(db: &AnyPool, id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT updated_at FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

/// (machine, address the server sees it at) of each transferring delivery not on `machine`.
pub async fn transfers_except(
    tx: &mut AnyConnection,
    machine: &str,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT d.machine_id, m.peer_addr FROM deliveries d JOIN machines m ON m.id = d.machine_id \
         WHERE d.state = $1 AND d.machine_id <> $2",
    )
    .bind(State::Transferring.name())
    .bind(machine)
    .fetch_all(&mut *tx)
    .await?)
}

/// The scenario's deliveries counted by state name.
pub async fn count_by_state(db: &AnyPool, scenario_id: &str) -> Result<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM deliveries WHERE scenario_id = $1 GROUP BY state",
    )
    .bind(scenario_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get::<i64, _>("n")? as u64)))
        .collect()
}

/// Every delivery counted by state name and the result code of its last transition (`""`
/// when it raised none), for the metrics gauge: one statement, grouped by the database.
pub async fn count_by_state_and_code(db: &AnyPool) -> Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query(
        "SELECT d.state, COALESCE(e.code, '') AS code, COUNT(*) AS n FROM deliveries d \
         LEFT JOIN events e ON e.delivery_id = d.id AND e.n = d.events \
         GROUP BY d.state, COALESCE(e.code, '')",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("code")?, r.try_get("n")?)))
        .collect()
}

/// Deliveries that still fetch their content (one row per machine and archive).
pub async fn content_demand(db: &AnyPool) -> Result<Vec<ContentDemand>> {
    let q = format!(
        "SELECT DISTINCT d.machine_id, m.peer_addr, m.inventory, p.archive_sha256, p.archive_size, p.manifest \
         FROM deliveries d JOIN machines m ON m.id = d.machine_id JOIN packages p ON p.id = d.package_id \
         WHERE d.state IN {}",
        list(FETCHING)
    );
    let rows = sqlx::query(AssertSqlSafe(q)).fetch_all(db).await?;
    rows.iter()
        .map(|r| {
            Ok(ContentDemand {
                machine_id: r.try_get("machine_id")?,
                peer_addr: r.try_get("peer_addr")?,
                inventory: json(r, "inventory")?,
                archive_sha256: r.try_get("archive_sha256")?,
                archive_size: r.try_get::<i64, _>("archive_size")? as u64,
                manifest: r.try_get("manifest")?,
            })
        })
        .collect()
}

/// The delivery's transitions, in order.
pub async fn history(db: &AnyPool, delivery: &str) -> Result<Vec<HistoryEntry>> {
    let rows = sqlx::query("SELECT n, attempt, seq, event, state, code, params, at FROM events WHERE delivery_id = $1 ORDER BY n")
        .bind(delivery)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| {
            let state: State = json(r, "state")?;
            let code: Option<String> = r.try_get("code")?;
            Ok(HistoryEntry {
                n: r.try_get::<i64, _>("n")? as u64,
                attempt: r.try_get::<i64, _>("attempt")? as u32,
                seq: r.try_get::<i64, _>("seq")? as u32,
                event: json(r, "event")?,
                state: state.name().to_string(),
                code: code.and_then(|c| c.parse::<Code>().ok()),
                params: json(r, "params")?,
                at_ms: r.try_get("at")?,
            })
        })
        .collect()
}

/// Codes raised by transitions at or after `since`.
pub async fn codes_since(db: &AnyPool, since: i64) -> Result<Vec<CodeCount>> {
    let rows = sqlx::query(
        "SELECT code, COUNT(*) AS n, MAX(at) AS last FROM events WHERE code IS NOT NULL AND at >= $1 GROUP BY code",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CodeCount {
                code: r.try_get("code")?,
                n: r.try_get("n")?,
                last: r.try_get("last")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &[State]) -> Vec<&'static str> {
        set.iter().map(State::name).collect()
    }

    /// `set` holds exactly the states `belongs` says, by name.
    fn exactly(set: &[State], belongs: impl Fn(&State) -> bool) {
        for s in patchcast_core::delivery::every_state() {
            assert_eq!(
                names(set).contains(&s.name()),
                belongs(&s),
                "{} in {:?}",
                s.name(),
                names(set)
            );
        }
    }

    #[test]
    fn state_sets_follow_the_core() {
        exactly(TERMINAL, State::is_terminal);
        exactly(IN_FLIGHT, State::in_flight);
        exactly(BUSY, State::is_busy);
        exactly(WAITING, |s| !s.is_terminal() && !s.is_busy());
        exactly(FETCHING, |s| {
            names(WAITING).contains(&s.name()) || *s == State::Transferring
        });
    }

    #[test]
    fn sets_render_as_sql_lists() {
        assert_eq!(
            list(TERMINAL),
            "('applied','not_applicable','failed','loop_detected','cancelled','superseded')"
        );
        assert_eq!(list(IN_FLIGHT), "('transferring','executing','verifying')");
        assert_eq!(literal(&State::Pending), "'pending'");
    }
}
