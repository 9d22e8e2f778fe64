//! Operating the server, against real processes on SQLite and PostgreSQL: the probes
//! (`/healthz`, `/readyz` turning 503 with its reason when the data directory is gone),
//! Prometheus metrics after a real agent's delivery (behind the admin token, and without it
//! on `--metrics-listen`), JSON log lines, and the YAML configuration file (with a bad one
//! refused at its line and column).

use crate::common::agent_harness::{AgentProc, BIN as AGENT_BIN};
use crate::common::sample;
use crate::common::server_harness::{Backend, TestServer, bin, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::transport::admin_api::ResultsQuery;
use reqwest::StatusCode;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WS2008_JA: &str = "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: ws2008-ja-01\nservice_pack: \"1.0\"\ninstalled_updates: [KB958644]\nfree_disk_bytes: 20000000000\ntotal_disk_bytes: 40000000000\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pinned(fingerprint: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(
            patchcast::transport::tls::pinned_client_config(fingerprint).unwrap(),
        )
        .build()
        .unwrap()
}

/// A free loopback port (bound, then released for the server to take).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The value of the sample `name` (with its labels exactly as written), if present.
fn positive(text: &str, name: &str) -> f64 {
    match sample(text, name) {
        Some(v) if v > 0.0 => v,
        other => panic!("{name} = {other:?} in:\n{text}"),
    }
}

async fn probes_and_metrics(backend: Backend) {
    let metrics_at = free_addr();
    let Some(server) =
        TestServer::start(backend, &["--poll", "1s", "--metrics-listen", &metrics_at]).await
    else {
        return;
    };
    let http = pinned(&server.fingerprint);
    let get = |path: &str| http.get(format!("{}{path}", server.url));

    // The probes need no credential and answer with tiny bodies.
    let r = get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), r#"{"status":"ok"}"#);
    let r = get("/readyz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), r#"{"status":"ready"}"#);

    // /metrics on the main listener: the admin token or 401.
    let r = get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get("/metrics")
        .bearer_auth("pcadm_not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A real agent (an emulated Windows Server 2008, Japanese) receives a real package.
    let dir = repo().join("packages/ms10-046-ws2008-multi");
    let o = server.cli(&[
        "package",
        "publish",
        dir.to_str().unwrap(),
        "--key",
        server.key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "publish: {o:?}");
    let token = server.group_token("ops").await;
    let mut agent = AgentProc::new(&server.path().join("agents/ws2008-ja"));
    std::fs::write(agent.root.join("endpoint.yaml"), WS2008_JA).unwrap();
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();
    let admin = server.admin();
    let s = scenario("ops", "ops", &["ms10-046-ws2008-multi"]);
    let id = admin.run_scenario(&s).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = admin.status(&id, "en").await;
        if st.as_ref().is_ok_and(|st| st.done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scenario did not finish: {st:#?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = admin
        .results(&ResultsQuery {
            scenario: Some(id.clone()),
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries;
    assert!(
        matches!(rows[0].state, State::Applied),
        "{rows:#?}\n{}",
        agent.log()
    );
    agent.sigterm().await;

    let r = get("/metrics")
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        sample(&text, r#"patchcast_deliveries{state="applied",code=""}"#),
        Some(1.0),
        "{text}"
    );
    positive(&text, "patchcast_check_ins_total");
    assert_eq!(
        sample(&text, "patchcast_write_groups_retried_total"),
        Some(0.0),
        "{text}"
    );
    // The whole archive went out once (the agent keeps it: no second download).
    let archive_size = std::fs::read_dir(server.data.join("content"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.metadata().unwrap().len())
        .max();
    let sent = positive(&text, "patchcast_transfer_bytes_total");
    assert!(
        archive_size.is_none_or(|n| sent >= n as f64),
        "{sent} bytes sent, archive {archive_size:?}"
    );
    // Latency by route template: the poll route, and content by its template, not its hash.
    let poll = format!(
        r#"patchcast_http_request_duration_seconds_count{{method="POST",route="{}",status="200"}}"#,
        patchcast::transport::protocol::POLL
    );
    positive(&text, &poll);
    assert!(
        text.contains(r#"route="/api/v1/content/{sha256}""#),
        "content by its template: {text}"
    );
    assert!(!text.contains("route=\"/api/v1/content/sha256"), "{text}");
    positive(&text, "patchcast_db_query_duration_seconds_count");
    positive(&text, "patchcast_db_query_duration_seconds_sum");

    // The separate listener: plain HTTP, no token, the same metrics.
    let r = reqwest::get(format!("http://{metrics_at}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let plain = r.text().await.unwrap();
    positive(&plain, "patchcast_check_ins_total");
    assert_eq!(
        sample(&plain, r#"patchcast_deliveries{state="applied",code=""}"#),
        Some(1.0)
    );
    // Only /metrics there: the admin API is not reachable without TLS and a token.
    let r = reqwest::get(format!("http://{metrics_at}/api/v1/machines"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The data directory gone (a lost mount): not ready, with the reason; back: ready.
    let moved = server.path().join("data.moved");
    std::fs::rename(&server.data, &moved).unwrap();
    let r = get("/readyz").send().await.unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    std::fs::rename(&moved, &server.data).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not ready");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("data directory"),
        "{body}"
    );
    let r = get("/readyz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Alive all along.
    assert_eq!(
        get("/healthz").send().await.unwrap().status(),
        StatusCode::OK
    );
}
both_backends!(probes_and_metrics);

/// A `patchcast server` started with `args` (and PATCHCAST_LOG=warn), stderr captured.
struct Proc {
    child: Child,
    banner: Vec<String>,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn start(args: &[&str], cwd: &Path) -> Result<Proc, String> {
        let mut child = Command::new(bin())
            .arg("server")
            .args(args)
            .current_dir(cwd)
            .env("PATCHCAST_LOG", "warn")
            .env_remove("PATCHCAST_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        for _ in 0..4 {
            match lines.next() {
                Some(Ok(l)) => banner.push(l),
                _ => {
                    let status = child.wait().unwrap();
                    let err: Vec<String> = stderr.iter().collect();
                    return Err(format!("{status}: {}", err.join("\n")));
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Proc {
            child,
            banner,
            stderr,
        })
    }

    /// The next stderr line (within 10 s).
    fn line(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn log_lines_are_json_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // --test-clock logs a warning at start: one line to look at.
    let s = Proc::start(
        &[
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--test-clock",
            "--log-format",
            "json",
        ],
        tmp.path(),
    )
    .unwrap();
    let line = s.line();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("TEST CLOCK"),
        "{v}"
    );
    assert!(v["timestamp"].is_string(), "{v}");
    drop(s);

    // The agent too: its first line as it starts.
    let root = tmp.path().join("agent");
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new(AGENT_BIN)
        .args([
            "run",
            "--root",
            root.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .env("PATCHCAST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "agent running", "{v}");
}

async fn configuration_file(backend: Backend) {
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match crate::common::server_harness::postgres_database().await {
            Some(d) => Some(d),
            None => return,
        },
    };
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let listen = free_addr();
    // Relative paths are relative to the file, not to the working directory.
    let mut yaml = format!(
        "# yaml-language-server: $schema=../../schemas/server-config.schema.json\ndata: ../data\nlisten: {listen}\nreserve: 1KiB\ntransfer_rate: 100MB/s\npoll: 2s\nlog_format: json\n"
    );
    if let Some(db) = &database {
        std::fs::write(etc.join("database.url"), db).unwrap();
        yaml.push_str("database_file: database.url\n");
    }
    let config = etc.join("server.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let elsewhere = tmp.path().join("cwd");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let s = Proc::start(
        &["--config", config.to_str().unwrap(), "--test-clock"],
        &elsewhere,
    )
    .unwrap();
    assert!(
        s.banner[0].contains(&format!("https://{listen}")),
        "{:?}",
        s.banner
    );
    let data = tmp.path().join("data");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("server.json")).unwrap()).unwrap();
    let fingerprint = info["fingerprint"].as_str().unwrap();
    match &database {
        Some(_) => assert!(
            s.banner[2].starts_with("database: postgres://"),
            "{:?}",
            s.banner
        ),
        None => {
            assert!(
                s.banner[2].starts_with("database: SQLite"),
                "{:?}",
                s.banner
            );
            assert!(data.join("patchcast.db").exists());
        }
    }
    // The file's log format.
    let line = s.line();
    serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    // Ready: the database answers, the data directory is writable.
    let r = pinned(fingerprint)
        .get(format!("https://{listen}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(s);

    // A flag wins over the file.
    let s = Proc::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--test-clock",
            "--log-format",
            "text",
        ],
        &elsewhere,
    )
    .unwrap();
    let line = s.line();
    assert!(
        line.contains("WARN") && serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "{line}"
    );
    drop(s);

    // A mistake is refused with where it is.
    let bad = etc.join("bad.yaml");
    std::fs::write(
        &bad,
        format!("data: ../data\nlisten: {listen}\npoll_interval: 5s\n"),
    )
    .unwrap();
    let e = Proc::start(&["--config", bad.to_str().unwrap()], &elsewhere)
        .err()
        .expect("refused");
    assert!(
        e.contains(&format!("{}:3:1", bad.display())) && e.contains("poll_interval"),
        "{e}"
    );
}
both_backends!(configuration_file);

#[test]
fn the_server_config_schema_is_current() {
    let o = Command::new(bin())
        .args(["schema", "server-config"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let committed =
        std::fs::read_to_string(repo().join("schemas/server-config.schema.json")).unwrap();
    assert!(
        committed == String::from_utf8(o.stdout).unwrap(),
        "schemas/server-config.schema.json is stale: run `cargo run -- schema server-config > schemas/server-config.schema.json`"
    );
    // Every flag of `patchcast server` but the hidden test clock has its key.
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let keys = schema["properties"].as_object().unwrap();
    for key in [
        "data",
        "listen",
        "database",
        "database_file",
        "trust_keys",
        "reserve",
        "names",
        "no_reply_margin",
        "poll",
        "max_transfers",
        "max_transfers_per_subnet",
        "subnet_prefix",
        "transfer_rate",
        "metrics_listen",
        "log_format",
    ] {
        assert!(keys.contains_key(key), "{key} missing: {keys:?}");
    }
}

/// One TLS connection to `url` with `config`, an HTTP request on it (so the session ticket that
/// follows the handshake is read), and how its handshake went.
fn handshake(url: &str, config: &std::sync::Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("https://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    conn.handshake_kind().unwrap()
}

/// An agent that reconnects (a server restart, a proxy's idle timeout) resumes its TLS
/// session from the server's ticket instead of a full handshake, however many agents the
/// server has seen since: tickets are stateless, not a 256-entry cache.
#[tokio::test]
async fn regression_reconnecting_agents_resume_their_tls_session() {
    let Some(server) = TestServer::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let (url, fingerprint) = (server.url.clone(), server.fingerprint.clone());
    tokio::task::spawn_blocking(move || {
        let agent = || {
            std::sync::Arc::new(
                patchcast::transport::tls::pinned_client_config(&fingerprint).unwrap(),
            )
        };
        let first = agent();
        assert_eq!(handshake(&url, &first), rustls::HandshakeKind::Full);
        // More agents than the stateful cache would hold come and go in between.
        for _ in 0..300 {
            handshake(&url, &agent());
        }
        assert_eq!(handshake(&url, &first), rustls::HandshakeKind::Resumed);
    })
    .await
    .unwrap();
}
