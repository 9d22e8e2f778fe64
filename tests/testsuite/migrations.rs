//! Schema migrations across releases: a database made by release 0.1 (committed fixtures under
//! tests/fixtures/db/, one per backend) opens with this server, keeps its rows and gains the
//! `schema_migrations.checksum` column; a tampered checksum or a migration unknown to this
//! binary makes the server refuse to start, naming the version.

use crate::common::server_harness::{Backend, TestServer, bin, both_backends};
use sqlx::Connection;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/db")
        .join(name)
}

/// Runs `sql` (one or more statements) on the test's database.
async fn exec(s: &TestServer, sql: &str) {
    match &s.database {
        Some(url) => {
            let mut c = sqlx::postgres::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        None => {
            let url = format!("sqlite://{}", s.data.join("patchcast.db").display());
            let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    }
}

/// `(version, checksum)` rows of `schema_migrations`, by version.
async fn recorded(s: &TestServer) -> Vec<(i64, Option<String>)> {
    let q = "SELECT version, checksum FROM schema_migrations ORDER BY version";
    match &s.database {
        Some(url) => {
            let mut c = sqlx::postgres::PgConnection::connect(url).await.unwrap();
            sqlx::query_as(q).fetch_all(&mut c).await.unwrap()
        }
        None => {
            let url = format!("sqlite://{}", s.data.join("patchcast.db").display());
            let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_as(q).fetch_all(&mut c).await.unwrap()
        }
    }
}

/// Starts the server on `s`'s data and database expecting a refusal; returns its stderr.
fn refused(s: &TestServer) -> String {
    let mut cmd = Command::new(bin());
    cmd.arg("server")
        .arg("--data")
        .arg(&s.data)
        .args(["--listen", "127.0.0.1:0", "--reserve", "0", "--trust-key"])
        .arg(s.path().join("publisher.pub"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(db) = &s.database {
        cmd.arg("--database").arg(db);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "the server exited successfully: {err}");
            return err;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started on a database it should refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn release_0_1_database(backend: Backend) {
    let Some(mut s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.kill();
    // Swap the fresh database for release 0.1's.
    match backend {
        Backend::Sqlite => {
            for f in ["patchcast.db", "patchcast.db-wal", "patchcast.db-shm"] {
                let _ = std::fs::remove_file(s.data.join(f));
            }
            std::fs::copy(fixture("release-0.1.sqlite"), s.data.join("patchcast.db")).unwrap();
        }
        Backend::Postgres => {
            let fresh = s.database.clone().unwrap();
            let (head, name) = fresh.rsplit_once('/').unwrap();
            let old = format!("{name}_r01");
            exec(&s, &format!("CREATE DATABASE {old}")).await;
            s.database = Some(format!("{head}/{old}"));
            let dump = std::fs::read_to_string(fixture("release-0.1.postgres.sql")).unwrap();
            exec(&s, &dump).await;
        }
    }
    // Release 0.1 matched group members by id or hostname, so a group could hold a hostname.
    exec(
        &s,
        r#"INSERT INTO machine_groups VALUES ('named', '["sim-00000","gone-host"]', '{}')"#,
    )
    .await;
    // (Release 0.1's `schema_migrations` has no `checksum` column: the server adds it.)
    s.spawn();
    let machines = s.admin().machines().await.unwrap();
    let m = machines
        .iter()
        .find(|m| m.hostname == "sim-00000")
        .unwrap_or_else(|| panic!("release 0.1's machine is kept: {machines:?}"));
    // The data upgrade stored the id the hostname stood for; a name that stands for no
    // machine is kept as written and matches nothing.
    let groups = s.admin().groups().await.unwrap();
    let named = groups.iter().find(|g| g.group.name == "named").unwrap();
    assert_eq!(named.group.members, vec![m.id.clone(), "gone-host".into()]);
    assert_eq!(named.resolved, vec![m.id.clone()]);
    // Migration 8 keeps the package release 0.1 published as its one, current version.
    let packages = s.admin().packages().await.unwrap();
    assert_eq!(packages.len(), 1, "{packages:?}");
    let versions = s.admin().package_versions(&packages[0].id).await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].current && !versions[0].rollback);
    assert_eq!(versions[0].version.as_deref(), Some("1.0.0"));
    s.kill();
    let after = recorded(&s).await;
    // Every migration up to 8, and 10 (reporting at fleet size); others may join them.
    let versions: Vec<i64> = after.iter().map(|(v, _)| *v).collect();
    for v in (1..=8).chain([10]) {
        assert!(versions.contains(&v), "migration {v} applied: {after:?}");
    }
    for (version, sum) in &after {
        let sum = sum.as_deref().unwrap_or_default();
        assert!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "migration {version} has a checksum: {sum:?}"
        );
    }

    // A released migration that differs from what built the database.
    exec(
        &s,
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2",
    )
    .await;
    let err = refused(&s);
    assert!(
        err.contains("schema migration 2 (") && err.contains("refusing to start"),
        "{err}"
    );
    let sum2 = after[1].1.clone().unwrap();
    exec(
        &s,
        &format!("UPDATE schema_migrations SET checksum = '{sum2}' WHERE version = 2"),
    )
    .await;

    // A database from a newer patchcast.
    exec(
        &s,
        "INSERT INTO schema_migrations (version, description, applied_at, checksum) \
         VALUES (999, 'from the future', 0, 'x')",
    )
    .await;
    let err = refused(&s);
    assert!(
        err.contains("schema migration 999 (from the future)") && err.contains("newer patchcast"),
        "{err}"
    );
    exec(&s, "DELETE FROM schema_migrations WHERE version = 999").await;

    // Restored: it starts again.
    s.spawn();
    assert_eq!(s.admin().machines().await.unwrap().len(), machines.len());
}
both_backends!(release_0_1_database);
