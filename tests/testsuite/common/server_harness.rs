//! A real `patchcast server` process for integration tests, on SQLite or on PostgreSQL.
//!
//! PostgreSQL comes from `PATCHCAST_TEST_POSTGRES` (a URL to an administrative database, set
//! by scripts/test.sh); each test creates its own database `test_<random>`. Without it the
//! PostgreSQL variants are skipped with a message, and fail under `CI=true`.

use patchcast::loadgen::{Behaviour, SimAgent, inventory};
use patchcast::transport::admin_api::{Admin, TokenRequest};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub key: PathBuf,
    pub signing: ed25519_dalek::SigningKey,
    pub database: Option<String>,
    pub listen: String,
    pub url: String,
    pub fingerprint: String,
    pub token: String,
    pub extra: Vec<String>,
    /// The server's stdout lines, from the last start.
    pub banner: Vec<String>,
    child: Option<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_patchcast")
}

/// A fresh PostgreSQL database, or None (skipped) when no server is configured outside CI.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    let base = match std::env::var("PATCHCAST_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI=true but PATCHCAST_TEST_POSTGRES is unset: run the tests through scripts/test.sh, which starts PostgreSQL"
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL variant: PATCHCAST_TEST_POSTGRES is unset (scripts/test.sh sets it)"
            );
            return None;
        }
    };
    let name = format!("test_{}", patchcast::server::random_hex(6).unwrap());
    let mut conn = sqlx::postgres::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connecting to PATCHCAST_TEST_POSTGRES: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let (head, _) = base.rsplit_once('/').expect("a URL with a database path");
    Some(format!("{head}/{name}"))
}

impl TestServer {
    /// Starts a server trusting a fresh publisher key; None when the backend is unavailable
    /// (PostgreSQL outside CI).
    pub async fn start(backend: Backend, extra: &[&str]) -> Option<TestServer> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_database().await?),
        };
        let dir = tempfile::tempdir().unwrap();
        let signing = patchcast::pack::keys::generate().unwrap();
        patchcast::pack::keys::write_pair(&dir.path().join("publisher"), &signing).unwrap();
        let mut s = TestServer {
            data: dir.path().join("data"),
            key: dir.path().join("publisher.key"),
            signing,
            database,
            listen: "127.0.0.1:0".into(),
            url: String::new(),
            fingerprint: String::new(),
            token: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            banner: Vec::new(),
            child: None,
            dir,
        };
        s.spawn();
        Some(s)
    }

    /// Starts the process and waits for its banner (no sleeps: it prints once listening).
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.arg("server")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--trust-key")
            .arg(self.dir.path().join("publisher.pub"))
            .args(&self.extra)
            .env("PATCHCAST_LOG", "patchcast=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(db) = &self.database {
            // From a file: a database URL with its password never goes into argv.
            let f = self.dir.path().join("database.url");
            std::fs::write(&f, db).unwrap();
            cmd.arg("--database-file").arg(f);
        }
        if !self.extra.iter().any(|a| a == "--reserve") {
            cmd.args(["--reserve", "0"]);
        }
        let mut child = cmd.spawn().expect("starting patchcast server");
        let argv = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
        for secret in self.database.iter() {
            assert!(
                !String::from_utf8_lossy(&argv).contains(secret.as_str()),
                "the database URL is in the server's argv"
            );
        }
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        self.banner.clear();
        for _ in 0..4 {
            match lines.next() {
                Some(Ok(l)) => self.banner.push(l),
                _ => panic!(
                    "patchcast server exited before printing its banner: {:?}",
                    self.banner
                ),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data.join("server.json")).unwrap()).unwrap();
        self.url = info["url"].as_str().unwrap().to_string();
        self.fingerprint = info["fingerprint"].as_str().unwrap().to_string();
        self.token = std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        // A restart must come back on the same address (agents know it).
        self.listen = self.url.trim_start_matches("https://").to_string();
        assert!(
            self.banner[0].contains(&self.url),
            "banner names the address: {:?}",
            self.banner
        );
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            c.wait().unwrap();
        }
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.url, &self.fingerprint, &self.token).unwrap()
    }

    /// Runs the `patchcast` CLI against this server (`--data` on the server host).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("PATCHCAST_DATA", &self.data)
            .env_remove("PATCHCAST_SERVER")
            .output()
            .unwrap()
    }

    /// Builds and publishes a small signed package; returns its archive path.
    pub async fn publish_sample(&self, id: &str) -> PathBuf {
        let archive =
            patchcast::loadgen::sample_package(self.dir.path(), &self.signing, id).unwrap();
        self.admin().publish(&archive).await.unwrap().unwrap();
        archive
    }

    /// An enrollment token for `group`, good for any number of agents for an hour.
    pub async fn group_token(&self, group: &str) -> String {
        self.admin()
            .create_token(&TokenRequest {
                group: Some(group.into()),
                uses: None,
                expires_secs: 3600,
            })
            .await
            .unwrap()
            .token
    }

    pub async fn enroll(&self, n: usize, group: &str, behaviour: Behaviour) -> Vec<SimAgent> {
        let token = self.group_token(group).await;
        let mut out = Vec::new();
        for i in 0..n {
            let inv = inventory(&format!("{group}-{i}"), i as u32 + 1);
            out.push(
                SimAgent::enroll(&self.url, &self.fingerprint, &token, inv, behaviour.clone())
                    .await
                    .unwrap(),
            );
        }
        out
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A second server of the same installation, started: its own data directory given this
    /// one's identity by `patchcast server join`, the same database, the same publisher key,
    /// and this server's content store (`--content`, as a shared directory would be).
    pub fn join(&self) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        for f in ["publisher.pub", "publisher.key"] {
            std::fs::copy(self.dir.path().join(f), dir.path().join(f)).unwrap();
        }
        let data = dir.path().join("data");
        let o = Command::new(bin())
            .args(["server", "join", "--from"])
            .arg(&self.data)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "server join: {o:?}");
        let mut extra = self.extra.clone();
        extra.push("--content".into());
        extra.push(self.data.join("content").display().to_string());
        let mut s = TestServer {
            data,
            key: dir.path().join("publisher.key"),
            signing: self.signing.clone(),
            database: self.database.clone(),
            listen: "127.0.0.1:0".into(),
            url: String::new(),
            fingerprint: String::new(),
            token: String::new(),
            extra,
            banner: Vec::new(),
            child: None,
            dir,
        };
        s.spawn();
        assert_eq!(s.fingerprint, self.fingerprint, "one identity");
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test body run on SQLite and on PostgreSQL: `both_backends!(fn_name);`
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::server_harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::server_harness::Backend::Postgres).await
            }
        }
    };
}
pub(crate) use both_backends;

/// A scenario over `group` with `packages`, and quick retries.
pub fn scenario(
    name: &str,
    group: &str,
    packages: &[&str],
) -> patchcast::model::scenario::Scenario {
    patchcast::model::scenario::Scenario {
        name: name.into(),
        action: patchcast::core::pipeline::Action::Install,
        packages: packages.iter().map(|p| p.parse().unwrap()).collect(),
        machines: vec![],
        groups: vec![group.into()],
        max_concurrent: None,
        max_unverified_runs: 3,
        max_attempts: 0,
        retry_delay_ms: 0,
        allow_reboot: false,
        timeout_secs: None,
        when: None,
        versions: Default::default(),
        rollback: false,
    }
}
