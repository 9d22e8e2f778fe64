//! `patchcast server backup` and `restore` with the real server: a backup taken while the
//! server runs, restored into a new data directory (and, on PostgreSQL, a new database), gives
//! a server with the same results, certificate and admin token, whose agents keep working
//! and whose content store still serves what was published. A changed byte is refused
//! before anything is written. On SQLite and on PostgreSQL.

use crate::common::server_harness::{
    Backend, TestServer, bin, both_backends, postgres_database, scenario,
};
use patchcast::loadgen::{Behaviour, SimAgent};
use patchcast::transport::admin_api::{Admin, Results, ResultsQuery, ScenarioStatus};
use std::process::{Command, Output};

async fn drive(admin: &Admin, id: &str, agents: &[SimAgent]) -> ScenarioStatus {
    loop {
        let st = admin.status(id, "en").await.unwrap();
        if st.done {
            return st;
        }
        for a in agents {
            a.step(50).await.unwrap();
        }
    }
}

async fn results(admin: &Admin) -> Results {
    admin
        .results(&ResultsQuery {
            history: true,
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// `patchcast server ARGS…` with the server's database file when it has one.
fn server_cmd(s: &TestServer, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("server").args(args).env_remove("PATCHCAST_DATA");
    if s.database.is_some() {
        cmd.arg("--database-file")
            .arg(s.path().join("database.url"));
    }
    cmd.output().unwrap()
}

/// `url` as a role with a password would write it (the test cluster trusts every local
/// login, so the password is not checked, but pg_dump and pg_restore must still get a URL
/// they accept once the password is taken out of it).
async fn with_password(url: &str) -> String {
    use sqlx::Connection;
    let admin = std::env::var("PATCHCAST_TEST_POSTGRES").unwrap();
    let role = format!("backup_{}", patchcast::server::random_hex(4).unwrap());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'p@ss:w/rd'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let (_, rest) = url.split_once('@').unwrap();
    format!("postgres://{role}:p%40ss%3Aw%2Frd@{rest}")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn a_restored_server_has_the_same_results_certificate_and_token(backend: Backend) {
    let Some(mut s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-before").await;
    s.publish_sample("pkg-later").await;
    let agents = s.enroll(2, "fleet", Behaviour::Apply).await;
    let admin = s.admin();
    let id = admin
        .run_scenario(&scenario("before", "fleet", &["pkg-before"]))
        .await
        .unwrap()
        .id;
    let st = drive(&admin, &id, &agents).await;
    assert_eq!(st.counts.get("applied"), Some(&2), "{:?}", st.counts);
    let before = results(&admin).await;
    let (fingerprint, token) = (s.fingerprint.clone(), s.token.clone());

    if backend == Backend::Postgres {
        // The backup reads the URL with a password; the server keeps its own.
        let url = with_password(s.database.as_ref().unwrap()).await;
        std::fs::write(s.path().join("database.url"), &url).unwrap();
    }
    // A certificate renewal prepared and not yet switched: the backup keeps it.
    let o = Command::new(bin())
        .args(["server", "renew-cert", "--data"])
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(o.status.success(), "renew-cert: {}", text(&o));
    let statement = std::fs::read(s.data.join("tls/next/repin.json")).unwrap();
    // Taken while the server runs.
    let out = s.path().join("backup.tar");
    let publisher = s.path().join("publisher.pub");
    let o = server_cmd(
        &s,
        &[
            "backup",
            "--data",
            s.data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--trust-key",
            publisher.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "backup: {}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds secrets");
    assert!(admin.machines().await.is_ok(), "the server still runs");
    s.kill();

    // Restored into a new directory (and database), the server started on it.
    let restored = s.path().join("restored");
    if backend == Backend::Postgres {
        s.database = Some(postgres_database().await.expect("PostgreSQL is configured"));
        let url = with_password(s.database.as_ref().unwrap()).await;
        std::fs::write(s.path().join("database.url"), &url).unwrap();
    }
    let o = server_cmd(
        &s,
        &[
            "restore",
            "--in",
            out.to_str().unwrap(),
            "--data",
            restored.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "restore: {}", text(&o));
    let restored_key = restored.join("trust/0-publisher.pub");
    assert_eq!(
        std::fs::read(&restored_key).unwrap(),
        std::fs::read(&publisher).unwrap()
    );
    assert!(text(&o).contains(&format!("--trust-key {}", restored_key.display())));
    assert_eq!(
        std::fs::read(restored.join("tls/next/repin.json")).unwrap(),
        statement,
        "the prepared renewal was restored"
    );
    let next_key = std::fs::metadata(restored.join("tls/next/key.pem")).unwrap();
    assert_eq!(next_key.permissions().mode() & 0o777, 0o600);
    s.data = restored;
    s.spawn();
    assert_eq!(
        s.fingerprint, fingerprint,
        "agents pin the same certificate"
    );
    assert_eq!(s.token, token, "the same admin token");

    let admin = s.admin();
    let after = results(&admin).await;
    let summary = |r: &Results| {
        let mut rows: Vec<_> = r
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.delivery_id.clone(),
                    d.machine_id.clone(),
                    d.package_id.clone(),
                    d.state.clone(),
                    d.attempts,
                    d.history.len(),
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    assert_eq!(summary(&after), summary(&before));
    assert_eq!(after.deliveries.len(), 2);

    // The same agents (credentials, pinned certificate) get new work, and the archive
    // published before the backup comes from the restored content store.
    let id = admin
        .run_scenario(&scenario("after", "fleet", &["pkg-later"]))
        .await
        .unwrap()
        .id;
    let st = drive(&admin, &id, &agents).await;
    assert_eq!(st.counts.get("applied"), Some(&2), "{:?}", st.counts);
}
both_backends!(a_restored_server_has_the_same_results_certificate_and_token);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_is_refused_before_anything_is_written() {
    let s = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    s.publish_sample("pkg-one").await;
    let known_hosts = "[10.0.0.5]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n";
    std::fs::create_dir_all(s.data.join("ssh")).unwrap();
    std::fs::write(s.data.join("ssh/known_hosts"), known_hosts).unwrap();
    let out = s.path().join("backup.tar");
    let o = server_cmd(
        &s,
        &[
            "backup",
            "--data",
            s.data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "backup: {}", text(&o));

    // The content member: find the archive's bytes in the backup and change one.
    let archive = std::fs::read_dir(s.data.join("content"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    let member = std::fs::read(&archive).unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes
        .windows(member.len())
        .position(|w| w == member.as_slice())
        .expect("the archive is stored whole in the backup");
    bytes[at + member.len() / 2] ^= 0x01;
    let tampered = s.path().join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();

    let target = s.path().join("new");
    let o = server_cmd(
        &s,
        &[
            "restore",
            "--in",
            tampered.to_str().unwrap(),
            "--data",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let name = archive.file_name().unwrap().to_str().unwrap();
    assert!(
        text(&o).contains("does not match its manifest")
            && text(&o).contains(&format!("content/{name}")),
        "{}",
        text(&o)
    );
    assert!(!target.exists(), "nothing was written");

    // The untouched backup restores, but never over a directory that holds something.
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep"), "x").unwrap();
    let o = server_cmd(
        &s,
        &[
            "restore",
            "--in",
            out.to_str().unwrap(),
            "--data",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    let fresh = s.path().join("fresh");
    let o = server_cmd(
        &s,
        &[
            "restore",
            "--in",
            out.to_str().unwrap(),
            "--data",
            fresh.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(fresh.join("content").join(name)).unwrap(),
        member
    );
    assert_eq!(
        std::fs::read_to_string(fresh.join("ssh/known_hosts")).unwrap(),
        known_hosts
    );
    use std::os::unix::fs::PermissionsExt;
    for secret in ["tls/key.pem", "admin.token", "patchcast.db"] {
        let mode = std::fs::metadata(fresh.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is private");
    }
}
