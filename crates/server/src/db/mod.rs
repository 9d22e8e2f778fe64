//! The store: every SQL statement of the server and the web console, over SQLite (default)
//! and PostgreSQL through the sqlx `Any` driver. SQL uses `$1` placeholders (both accept them),
//! times are unix milliseconds in BIGINT, structured values are JSON in TEXT, and numbers are
//! BIGINT, so the same statements run unchanged on both backends.
//!
//! One module per aggregate; each function runs its statements on the pool, or on a
//! connection (`&mut AnyConnection`, i.e. an open transaction) when the caller runs several
//! statements in one transaction. Callers keep the decisions (and the write lock); the store
//! only reads and writes typed rows. Delivery state sets are rendered from
//! `core::delivery::State` (`deliveries::TERMINAL`, …), never written out as SQL literals.
//! Statements differ between the backends only in SQLite's connection settings in `open`,
//! `reports::used_bytes` (the database's size, which the load generator reads) and the row
//! locks of the hot delivery paths (`FOR UPDATE`, PostgreSQL only: `row_locks`).
//!
//! Migrations are a small versioned runner: each entry runs once, in its own transaction,
//! recorded in `schema_migrations` with the SHA-256 of its statements (`checksum`); every open
//! checks the recorded checksums against this list and refuses an edited or unknown migration.

pub mod accounts;
pub mod audit;
pub mod deliveries;
pub mod locks;
pub mod machines;
pub mod packages;
pub mod policies;
pub mod reports;
pub mod rollouts;
pub mod scenarios;
pub mod sources;
pub mod timing;
pub mod trust;
pub mod upgrades;

use anyhow::{Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};
use sqlx::{Executor, Row};
use std::time::Duration;

/// The pool every store function takes (for callers outside the server that open a store).
pub type Pool = AnyPool;
/// A connection or open transaction, as the store functions take it: modules outside `db`
/// name this and `Pool`, never sqlx's types.
pub type Conn = AnyConnection;

/// `($k, $k+1, …)`: `n` placeholders from `$first`.
fn placeholders(first: usize, n: usize) -> String {
    let p: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", p.join(", "))
}

/// The most rows a caller gives one multi-row statement (`deliveries::update`,
/// `insert_events`, `insert_pending`, `machines::seen`): at most 10 parameters a row, far
/// below both backends' limits, and few enough that SQLite's bind, which looks each
/// parameter up by a linear search, stays cheap.
pub const CHUNK: usize = 50;

/// `(CAST($1 AS TEXT), …), (…)`: `rows` rows of placeholders cast to `types`, numbered on from
/// `$1`. The casts give PostgreSQL the column types of a `VALUES` list up front.
pub(crate) fn values(rows: usize, types: &[&str]) -> String {
    let mut n = 0;
    let rows: Vec<String> = (0..rows)
        .map(|_| {
            let cols: Vec<String> = types
                .iter()
                .map(|t| {
                    n += 1;
                    format!("CAST(${n} AS {t})")
                })
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect();
    rows.join(", ")
}

/// Whether `c` locks rows (`SELECT … FOR UPDATE`): PostgreSQL. SQLite has one writer and
/// no row locks; there every writer holds the exclusive write lock (`cluster`), so the
/// locking statements are skipped.
fn row_locks(c: &AnyConnection) -> bool {
    !c.backend_name().eq_ignore_ascii_case("sqlite")
}

/// Locks the rows of `table` with `ids` until the transaction ends, in id order (so two
/// transactions locking overlapping sets wait instead of deadlocking); nothing on SQLite.
async fn lock_ids(tx: &mut AnyConnection, table: &'static str, ids: &[&str]) -> Result<()> {
    if ids.is_empty() || !row_locks(tx) {
        return Ok(());
    }
    let q = format!(
        "SELECT id FROM {table} WHERE id IN {} ORDER BY id FOR UPDATE",
        placeholders(1, ids.len())
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
    for id in ids {
        query = query.bind(*id);
    }
    query.fetch_all(&mut *tx).await?;
    Ok(())
}

/// Ordered; never edit a released entry, append a new one.
pub const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "initial schema",
        &[
            "CREATE TABLE tokens (hash TEXT PRIMARY KEY, grp TEXT, created_at BIGINT NOT NULL, \
         expires_at BIGINT NOT NULL, uses BIGINT NOT NULL, max_uses BIGINT)",
            "CREATE TABLE machines (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, hostname TEXT NOT NULL, \
         inventory TEXT NOT NULL, peer_addr TEXT NOT NULL, labels TEXT NOT NULL, \
         enrolled_at BIGINT NOT NULL, last_seen BIGINT NOT NULL, agent_state TEXT NOT NULL, enroll_group TEXT)",
            "CREATE TABLE machine_groups (name TEXT PRIMARY KEY, members TEXT NOT NULL, filter TEXT NOT NULL)",
            "CREATE TABLE packages (id TEXT PRIMARY KEY, version TEXT, title TEXT NOT NULL, \
         archive_sha256 TEXT NOT NULL, archive_size BIGINT NOT NULL, manifest TEXT NOT NULL, \
         signature TEXT NOT NULL, key_id TEXT NOT NULL, published_at BIGINT NOT NULL, \
         install_timeout_secs BIGINT NOT NULL)",
            "CREATE TABLE scenarios (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, \
         created_at BIGINT NOT NULL)",
            "CREATE TABLE deliveries (id TEXT PRIMARY KEY, scenario_id TEXT NOT NULL, machine_id TEXT NOT NULL, \
         package_id TEXT NOT NULL, position BIGINT NOT NULL, delivery TEXT NOT NULL, state TEXT NOT NULL, \
         attempt BIGINT NOT NULL, last_seq BIGINT NOT NULL, deadline BIGINT, retry_at BIGINT, \
         detail TEXT NOT NULL, updated_at BIGINT NOT NULL, events BIGINT NOT NULL, \
         archive_sha256 TEXT NOT NULL)",
            "CREATE INDEX deliveries_machine ON deliveries (machine_id, state)",
            "CREATE INDEX deliveries_scenario ON deliveries (scenario_id, state)",
            "CREATE TABLE events (delivery_id TEXT NOT NULL, n BIGINT NOT NULL, attempt BIGINT NOT NULL, \
         seq BIGINT NOT NULL, event TEXT NOT NULL, state TEXT NOT NULL, code TEXT, params TEXT NOT NULL, \
         at BIGINT NOT NULL, PRIMARY KEY (delivery_id, n))",
        ],
    ),
    (
        2,
        "windows, automatic update, time settings, rollouts",
        &[
            "CREATE TABLE group_policies (grp TEXT PRIMARY KEY, spec TEXT NOT NULL, \
         version BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE TABLE autoupdate (grp TEXT NOT NULL, package_id TEXT NOT NULL, \
         assigned_at BIGINT NOT NULL, PRIMARY KEY (grp, package_id))",
            "CREATE TABLE scheduled (scenario_id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL, \
         rollout_id TEXT, wave BIGINT)",
            "CREATE TABLE machine_settings (machine_id TEXT PRIMARY KEY, applied BIGINT NOT NULL, \
         code TEXT, code_version BIGINT, code_session TEXT, code_at BIGINT, updated_at BIGINT NOT NULL)",
            "CREATE TABLE rollouts (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, \
         state TEXT NOT NULL, wave BIGINT NOT NULL, reason TEXT NOT NULL, created_at BIGINT NOT NULL, \
         updated_at BIGINT NOT NULL)",
        ],
    ),
    (
        3,
        "SSH machines",
        &[
            "CREATE TABLE ssh_machines (machine_id TEXT PRIMARY KEY, username TEXT NOT NULL, \
       host TEXT NOT NULL, port BIGINT NOT NULL, key_path TEXT NOT NULL, known_hosts TEXT NOT NULL, \
       trust_on_first_use BIGINT NOT NULL, work_dir TEXT NOT NULL, created_at BIGINT NOT NULL)",
        ],
    ),
    (
        4,
        "update sources and relays",
        &[
            "CREATE TABLE update_sources (id BIGINT PRIMARY KEY, spec TEXT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE TABLE relays (machine_id TEXT PRIMARY KEY, enabled BIGINT NOT NULL, listen TEXT NOT NULL, \
     url TEXT, fingerprint TEXT, cached TEXT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE TABLE source_keys (id BIGINT PRIMARY KEY, secret TEXT NOT NULL)",
        ],
    ),
    (
        5,
        "web console: admin accounts and sessions",
        &[
            // Passwords as argon2id PHC strings; sessions by the SHA-256 of the cookie value.
            "CREATE TABLE web_accounts (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, \
         created_at BIGINT NOT NULL)",
            "CREATE TABLE web_sessions (token_hash TEXT PRIMARY KEY, account TEXT NOT NULL, \
         csrf TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
            // The dashboard's "recent errors" reads events by time.
            "CREATE INDEX events_at ON events (at)",
        ],
    ),
    (
        6,
        "data upgrades run once (stored machine names become ids)",
        &["CREATE TABLE data_upgrades (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)"],
    ),
    (
        7,
        "audit of administrators' actions",
        &[
            // `n` orders entries written in the same millisecond; written under the write lock.
            "CREATE TABLE audit (n BIGINT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, \
         action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)",
        ],
    ),
    (
        8,
        "package versions: every signed version published under an id",
        &[
            // `packages` keeps the current version of each id; this holds every one, by
            // archive, so a rollback has something to choose from and `versions` to list.
            "CREATE TABLE package_versions (id TEXT NOT NULL, archive_sha256 TEXT NOT NULL, \
         version TEXT, title TEXT NOT NULL, archive_size BIGINT NOT NULL, manifest TEXT NOT NULL, \
         signature TEXT NOT NULL, key_id TEXT NOT NULL, published_at BIGINT NOT NULL, \
         install_timeout_secs BIGINT NOT NULL, rollback BIGINT NOT NULL, \
         PRIMARY KEY (id, archive_sha256))",
            "INSERT INTO package_versions (id, archive_sha256, version, title, archive_size, manifest, \
         signature, key_id, published_at, install_timeout_secs, rollback) \
         SELECT id, archive_sha256, version, title, archive_size, manifest, signature, key_id, \
         published_at, install_timeout_secs, 0 FROM packages",
        ],
    ),
    (
        10,
        "reporting at fleet size: machine OS and language columns, list and history indexes",
        &[
            // Copies of the inventory's `os` and `language` (written with it; the data
            // upgrade "machine os and language columns" fills existing rows), so the console's
            // filters list them with DISTINCT instead of reading every inventory.
            "ALTER TABLE machines ADD COLUMN os TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE machines ADD COLUMN language TEXT NOT NULL DEFAULT ''",
            // Lists page by (hostname, id); the dashboard finds silent machines by last_seen.
            "CREATE INDEX machines_hostname ON machines (hostname, id)",
            "CREATE INDEX machines_last_seen ON machines (last_seen)",
            // The current delivery of a package on a machine; results by package.
            "CREATE INDEX deliveries_machine_package ON deliveries (machine_id, package_id)",
            "CREATE INDEX deliveries_package ON deliveries (package_id, state)",
            "CREATE INDEX scenarios_created ON scenarios (created_at, id)",
        ],
    ),
    (
        11,
        "publisher trust statements (key rotation and revocation)",
        &[
            // The chain of signed statements, each exactly as signed; agents are handed the
            // ones above the serial they report (`server::keys`).
            "CREATE TABLE trust_statements (serial BIGINT PRIMARY KEY, statement TEXT NOT NULL, \
         signer TEXT NOT NULL, signature TEXT NOT NULL, published_at BIGINT NOT NULL)",
        ],
    ),
    (
        47,
        "a scenario's deliveries paged by machine",
        &[
            // `scenario status` pages by (hostname, machine, position, id): machines are
            // walked by `machines_hostname` and each one's deliveries found by this index,
            // so a page costs its own rows, not the whole scenario's sorted.
            "CREATE INDEX deliveries_scenario_machine ON deliveries \
         (scenario_id, machine_id, position, id)",
        ],
    ),
];

/// The wall clock. Decisions read `Server::now()` (the one clock, which tests can move);
/// this is for what must follow real time whatever that clock says: the clock's own base,
/// sign-in sessions, lockouts and signed relay tokens that other machines check.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Opens the database at `url` (`sqlite://…` or `postgres://…`) and brings its schema up to date.
/// One round trip to the database (`/readyz`): it answers, or the error says why not.
pub async fn ping(pool: &AnyPool) -> Result<()> {
    sqlx::query("SELECT 1")
        .fetch_one(pool)
        .await
        .context("database")?;
    Ok(())
}

pub async fn open(url: &str) -> Result<AnyPool> {
    let pool = connect(url).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Opens the database at `url` as it is, without touching its schema: for a reader beside
/// the server that owns it (the load generator measuring its growth).
pub async fn connect(url: &str) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        // SQLite has one writer anyway; a few readers are plenty. PostgreSQL gets more.
        .max_connections(if sqlite { 4 } else { 16 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn: &mut AnyConnection, _| {
            Box::pin(async move {
                if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                    // WAL: readers do not block the writer; NORMAL is durable across a process
                    // crash (the SIGKILL case), only an OS crash may lose the last commits.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("opening the database {}", redact(url)))?;
    Ok(pool)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The checksum of a migration: SHA-256 over each statement's UTF-8 bytes followed by
/// `"\n;\n"`, in order, as lowercase hex. Stored in `schema_migrations.checksum` and compared
/// on every open, so an edited released migration is caught before it can drift the schema.
pub fn checksum(statements: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in statements {
        h.update(s.as_bytes());
        h.update(b"\n;\n");
    }
    hex::encode(h.finalize())
}

async fn migrate(pool: &AnyPool) -> Result<()> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, applied_at BIGINT NOT NULL, checksum TEXT)",
    )
    .await
    .context("creating schema_migrations")?;
    add_checksums(pool).await?;

    // Every applied version must be one of ours, applied from exactly our statements.
    let rows = sqlx::query("SELECT version, description, checksum FROM schema_migrations")
        .fetch_all(pool)
        .await
        .context("reading schema_migrations")?;
    let mut applied = std::collections::BTreeSet::new();
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    for row in &rows {
        let version: i64 = row.try_get("version")?;
        let description: String = row.try_get("description")?;
        let stored: Option<String> = row.try_get("checksum")?;
        let Some((_, _, statements)) = MIGRATIONS.iter().find(|m| m.0 == version) else {
            anyhow::bail!(
                "the database has schema migration {version} ({description}), which this \
                 patchcast does not know (it knows migrations up to {latest}): the database was \
                 upgraded by a newer patchcast. Run that newer release (or a later one) on it, \
                 or restore a backup taken before the upgrade; refusing to start"
            );
        };
        let expected = checksum(statements);
        if stored.as_deref() != Some(expected.as_str()) {
            anyhow::bail!(
                "schema migration {version} ({description}) was applied with checksum {} but \
                 this patchcast's migration {version} has checksum {expected}: the statements of \
                 a released migration differ from those that built this database. Run a \
                 patchcast release whose migration {version} is unchanged (released migrations \
                 are never edited; a schema change is a new migration); refusing to start",
                stored.as_deref().unwrap_or("(none)")
            );
        }
        applied.insert(version);
    }

    for (version, description, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut tx = pool.begin().await?;
        for s in *statements {
            sqlx::query(sqlx::AssertSqlSafe(*s))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("migration {version} ({description}): {s}"))?;
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at, checksum) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(*version)
        .bind(*description)
        .bind(now_ms())
        .bind(checksum(statements))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, description, "applied migration");
    }
    Ok(())
}

/// The bridge from release 0.1, whose `schema_migrations` has no `checksum` column: adds it
/// and records, for each applied version, the checksum of this binary's statements (release
/// 0.1 applied exactly these), all in one transaction.
async fn add_checksums(pool: &AnyPool) -> Result<()> {
    match pool
        .execute("SELECT checksum FROM schema_migrations WHERE version = -1")
        .await
    {
        Ok(_) => return Ok(()),
        // The column is missing (any other failure shows again at the ALTER below).
        Err(sqlx::Error::Database(_)) => {}
        Err(e) => return Err(e).context("reading schema_migrations"),
    }
    let mut tx = pool.begin().await?;
    sqlx::query("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")
        .execute(&mut *tx)
        .await
        .context("adding schema_migrations.checksum")?;
    for (version, _, statements) in MIGRATIONS {
        sqlx::query("UPDATE schema_migrations SET checksum = $1 WHERE version = $2")
            .bind(checksum(statements))
            .bind(*version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!("recorded checksums of the applied schema migrations");
    Ok(())
}

/// Reads a TEXT column holding JSON.
fn json<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow, col: &str) -> Result<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).with_context(|| format!("column {col} holds unreadable JSON"))
}

/// Writes a consistent copy of the SQLite database at `db` into `out` (which must not exist)
/// with `VACUUM INTO`: a read transaction, so the running server keeps writing meanwhile and
/// the copy is one point in time, compacted and without a WAL beside it.
pub async fn sqlite_snapshot(db: &std::path::Path, out: &std::path::Path) -> Result<()> {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30));
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&opts)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    sqlx::query("VACUUM INTO $1")
        .bind(out.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .with_context(|| format!("copying {} into {}", db.display(), out.display()))?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source file below `dir` (recursively), skipping `skip`.
    fn sources(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            if p.is_dir() {
                sources(&p, skip, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// One store: no statement and no sqlx type outside `db`, in the server or the CLI.
    #[test]
    fn sql_stays_in_the_store() {
        let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&server.join("src"), &server.join("src/db"), &mut files);
        sources(
            &server.join("../../src"),
            &server.join("src/db"),
            &mut files,
        );
        assert!(files.len() > 20, "{files:?}");
        let leaks: Vec<String> = files
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                [
                    "sqlx::",
                    "\"SELECT ",
                    "\"INSERT INTO",
                    "\"UPDATE ",
                    "\"DELETE FROM",
                ]
                .iter()
                .any(|needle| text.contains(needle))
            })
            .map(|f| f.display().to_string())
            .collect();
        assert!(leaks.is_empty(), "SQL or sqlx outside db: {leaks:?}");
    }

    #[test]
    fn placeholders_count_from_the_first() {
        assert_eq!(placeholders(1, 3), "($1, $2, $3)");
        assert_eq!(placeholders(4, 1), "($4)");
    }

    #[test]
    fn checksum_is_sha256_of_statements_each_followed_by_a_separator() {
        use sha2::Digest;
        let expected = hex::encode(sha2::Sha256::digest(
            b"CREATE TABLE a (x BIGINT)\n;\nSELECT 1\n;\n",
        ));
        assert_eq!(
            checksum(&["CREATE TABLE a (x BIGINT)", "SELECT 1"]),
            expected
        );
    }

    /// The released migrations, as databases in the field recorded them. A failure here means
    /// a released migration was edited: restore it and append a new migration instead.
    #[test]
    fn released_migrations_are_unchanged() {
        let released = [
            (
                1,
                "e04fe9b444de0a872b4d8ef3830b3ed54b9a89a874198aec99ba12c545fafe86",
            ),
            (
                2,
                "d948aa156325761dbe1e400364cfc1028c81db0341dfe9e56e5bff12e7b294a6",
            ),
            (
                3,
                "bec48b692a5fdccbdd01d7452b1c38ddf3cf53b6b3a0b33d9f472560708b4862",
            ),
            (
                4,
                "442f79f610b31f1c087f762d171a1e1aa43825cf6755803ad3f7cae61c9c7057",
            ),
            (
                5,
                "ae043302f2b2353698e402335b59c4e0b8ef00353b774dfaa26aab5712277c0d",
            ),
        ];
        for (version, sum) in released {
            let (_, description, statements) = MIGRATIONS
                .iter()
                .find(|m| m.0 == version)
                .unwrap_or_else(|| panic!("released migration {version} was removed"));
            assert_eq!(
                checksum(statements),
                sum,
                "migration {version} ({description}) was edited"
            );
        }
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "versions ascend: {versions:?}"
        );
    }
}
