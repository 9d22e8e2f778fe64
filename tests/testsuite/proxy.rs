//! Agents and the admin CLI through a real HTTP CONNECT proxy (tinyproxy on loopback, asking
//! for Basic credentials; scripts/tinyproxy.sh): an agent enrolls through it, remembers it,
//! and runs doctor and a delivery through it, the admin CLI works through it, and a server with another certificate behind
//! the same proxy is refused (the proxy only tunnels; the pin is checked end to end).

use crate::common::agent_harness::{AgentProc, BIN as AGENT};
use crate::common::proxy_env::TestProxy;
use crate::common::server_harness::{Backend, TestServer, bin, scenario};
use patchcast::core::delivery::State;
use patchcast::transport::admin_api::ResultsQuery;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WS2008_JA: &str = "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: ws2008-proxied\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 20000000000\ntotal_disk_bytes: 40000000000\n";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("https://").to_string()
}

/// The admin CLI against `s` (by URL, fingerprint and token file, as from another host) with
/// `proxy_args` in front; no proxy from this process's environment.
fn admin_cli(s: &TestServer, fingerprint: &str, proxy_args: &[&str], args: &[&str]) -> Output {
    let token = s.path().join("admin.token.copy");
    std::fs::write(&token, &s.token).unwrap();
    Command::new(bin())
        .args(proxy_args)
        .args(args)
        .args([
            "--server",
            &s.url,
            "--fingerprint",
            fingerprint,
            "--token-file",
        ])
        .arg(&token)
        .env_remove("PATCHCAST_DATA")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_and_receives_work_through_the_proxy() {
    let Some(proxy) = TestProxy::from_env() else {
        return;
    };
    let server = TestServer::start(Backend::Sqlite, &["--poll", "1s"])
        .await
        .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/ws2008-sp2");
    let o = server.cli(&[
        "package",
        "publish",
        dir.to_str().unwrap(),
        "--key",
        server.key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "publish: {}", text(&o));
    let token = server.group_token("proxied").await;
    let mut agent = AgentProc::new(&server.path().join("agents/proxied"));
    std::fs::write(agent.root.join("endpoint.yaml"), WS2008_JA).unwrap();
    let creds = proxy.credentials_file(server.path());
    let target = host_port(&server.url);

    // Enrollment with --proxy and a credentials file.
    let before = proxy.connects_to(&target);
    let o = Command::new(AGENT)
        .args(["enroll", "--json", "--root"])
        .arg(&agent.root)
        .args([
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(["--proxy", &proxy.url, "--proxy-credentials-file"])
        .arg(&creds)
        .env("PATCHCAST_ENROLL_TOKEN", &token)
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap();
    assert!(o.status.success(), "enroll: {}", text(&o));
    let enrolled: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(enrolled["fingerprint"], server.fingerprint, "{enrolled}");
    assert_eq!(enrolled["proxy"], proxy.url, "{enrolled}");
    assert!(
        enrolled["machine_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{enrolled}"
    );
    let after_enroll = proxy.connects_to(&target);
    assert!(
        after_enroll > before,
        "the proxy saw the enrollment's CONNECT"
    );

    // Enrollment remembered the proxy (its URL and the credentials file's path, never the
    // password), so doctor and the service reach the server through it without flags, as a
    // service manager without the shell's environment starts them.
    let saved = std::fs::read_to_string(agent.root.join("agent.json")).unwrap();
    assert!(saved.contains(&proxy.url), "{saved}");
    assert!(!saved.contains(&proxy.password), "{saved}");
    let o = Command::new(AGENT)
        .args(["doctor", "--json", "--root"])
        .arg(&agent.root)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    assert!(o.status.success(), "doctor through the proxy: {}", text(&o));
    let after_doctor = proxy.connects_to(&target);
    assert!(after_doctor > after_enroll, "doctor went through the proxy");
    let after_enroll = after_doctor;
    agent.start();
    let admin = server.admin();
    let id = admin
        .run_scenario(&scenario("proxied", "proxied", &["ws2008-sp2"]))
        .await
        .unwrap()
        .id;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = admin.status(&id, "en").await.unwrap();
        if st.done {
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
            scenario: Some(id),
            history: true,
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].state,
        State::Applied,
        "{:#?}\n{}",
        rows[0],
        agent.log()
    );
    assert!(
        rows[0].history.iter().any(|h| h.name() == "transferred"),
        "the archive was fetched: {:#?}",
        rows[0].history
    );
    assert!(
        proxy.connects_to(&target) > after_enroll,
        "the agent's polls, reports and download went through the proxy"
    );
    let log = agent.log();
    assert!(
        log.contains("through a proxy") && !log.contains(&proxy.password),
        "{log}"
    );
    let argv = std::fs::read(format!(
        "/proc/{}/cmdline",
        agent.child.as_ref().unwrap().id()
    ))
    .unwrap_or_default();
    assert!(!String::from_utf8_lossy(&argv).contains(&proxy.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_works_through_the_proxy() {
    let Some(proxy) = TestProxy::from_env() else {
        return;
    };
    let s = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let creds = proxy.credentials_file(s.path());
    let target = host_port(&s.url);
    let before = proxy.connects_to(&target);
    let o = admin_cli(
        &s,
        &s.fingerprint,
        &[
            "--proxy",
            &proxy.url,
            "--proxy-credentials-file",
            creds.to_str().unwrap(),
        ],
        &["token", "create", "--group", "via-proxy"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        proxy.connects_to(&target) > before,
        "the proxy saw the CONNECT"
    );
    let tokens = s.admin().tokens().await.unwrap();
    assert_eq!(tokens.len(), 1, "the token was created: {tokens:?}");

    // Really through the proxy: without credentials the proxy itself refuses (407).
    let o = admin_cli(
        &s,
        &s.fingerprint,
        &["--proxy", &proxy.url],
        &["token", "list"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("proxy authorization required"),
        "{}",
        text(&o)
    );
    // NO_PROXY names the server: straight there, the proxy (and its 407) never involved.
    let token = s.path().join("admin.token.copy");
    let seen = proxy.connects_to(&target);
    let o = Command::new(bin())
        .args(["--proxy", &proxy.url, "token", "list"])
        .args([
            "--server",
            &s.url,
            "--fingerprint",
            &s.fingerprint,
            "--token-file",
        ])
        .arg(&token)
        .env_remove("PATCHCAST_DATA")
        .env("NO_PROXY", "localhost,127.0.0.0/8")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        proxy.connects_to(&target),
        seen,
        "NO_PROXY bypassed the proxy"
    );
    // Credentials never go on the command line.
    let in_argv = proxy.url.replacen("http://", "http://u:p@", 1);
    let o = admin_cli(
        &s,
        &s.fingerprint,
        &["--proxy", &in_argv],
        &["token", "list"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("--proxy-credentials-file") && !text(&o).contains("u:p@"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_certificate_behind_the_proxy_is_refused() {
    let Some(proxy) = TestProxy::from_env() else {
        return;
    };
    let pinned = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let other = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    assert_ne!(pinned.fingerprint, other.fingerprint);
    let creds = proxy.credentials_file(other.path());
    let flags = [
        "--proxy",
        &proxy.url,
        "--proxy-credentials-file",
        creds.to_str().unwrap(),
    ];
    let target = host_port(&other.url);
    let before = proxy.connects_to(&target);

    // The admin CLI pinned to the first server's certificate.
    let o = admin_cli(&other, &pinned.fingerprint, &flags, &["token", "list"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("is not the pinned {}", pinned.fingerprint)),
        "{}",
        text(&o)
    );
    assert!(
        proxy.connects_to(&target) > before,
        "the proxy tunnelled the connection; the pin refused it"
    );

    // An agent enrolling with the first server's fingerprint.
    let token = other.group_token("g").await;
    let root = other.path().join("agent");
    let o = Command::new(AGENT)
        .args(["enroll", "--root"])
        .arg(&root)
        .args(["--server", &other.url, "--fingerprint", &pinned.fingerprint])
        .args(flags)
        .env("PATCHCAST_ENROLL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("does not match the pinned fingerprint"),
        "{}",
        text(&o)
    );
    assert!(!root.join("agent.json").exists());
    assert!(
        other.admin().machines().await.unwrap().is_empty(),
        "nothing enrolled"
    );
}
