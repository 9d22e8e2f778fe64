//! Package lifecycle through the one pipeline: an uninstall is an ordinary delivery that
//! succeeds only when identification then says not applied, and loops like an install when
//! it does not; a `next_boot` package is staged and runs only after the machine starts
//! again; `patchcast-agent doctor` names each fault between an agent and its server. The
//! real server and a real Linux agent process, on SQLite and PostgreSQL.

use crate::common::agent_harness::{AgentProc, tool_package};
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::core::pipeline::Action;
use patchcast::transport::admin_api::{Admin, DeliveryRow, ResultsQuery};
use patchcast::transport::client::CallError;
use std::path::Path;
use std::time::{Duration, Instant};

const GROUP: &str = "life";

/// A package installing `tool` (a file, identified by its hash); `extra` YAML appended
/// (an `uninstall:`, a `when:`).
fn package(dir: &Path, id: &str, tool: &Path, extra: &str) {
    tool_package(dir, id, "1.0.0", tool, "", extra)
}

async fn wait_done(admin: &Admin, id: &str, agent: &AgentProc) -> Vec<DeliveryRow> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(st) = admin.status(id, "en").await
            && st.done
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scenario {id} did not finish; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .results(&ResultsQuery {
            machine: None,
            package: None,
            scenario: Some(id.into()),
            history: true,
            lang: "en".into(),
        })
        .await
        .unwrap()
        .deliveries
}

async fn uninstall_is_verified_as_not_applied(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let work = server.path().join("packages");
    let tools = server.path().join("installed");
    std::fs::create_dir_all(&tools).unwrap();
    let (good, stuck, plain) = (tools.join("good"), tools.join("stuck"), tools.join("plain"));
    let uninstall = |c: &str| format!("uninstall:\n  command: '{c}'\n  timeout: 1m\n");
    let rm = format!("rm -f {}", good.display());
    package(&work.join("good"), "life-good", &good, &uninstall(&rm));
    // An uninstaller that exits 0 and removes nothing.
    package(
        &work.join("stuck"),
        "life-stuck",
        &stuck,
        &uninstall("true"),
    );
    package(&work.join("plain"), "life-plain", &plain, "");
    let key = server.key.to_str().unwrap().to_string();
    for p in ["good", "stuck", "plain"] {
        let o = server.cli(&[
            "package",
            "publish",
            work.join(p).to_str().unwrap(),
            "--key",
            &key,
        ]);
        assert!(o.status.success(), "publish {p}: {o:?}");
    }
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent.start();
    let admin = server.admin();

    let install = scenario("install", GROUP, &["life-good", "life-stuck", "life-plain"]);
    let id = admin.run_scenario(&install).await.unwrap().id;
    let rows = wait_done(&admin, &id, &agent).await;
    assert!(rows.iter().all(|r| r.state == State::Applied), "{rows:#?}");
    assert!(good.exists() && stuck.exists() && plain.exists());

    // A package without an uninstall command cannot be uninstalled: refused up front.
    let mut uninstall = scenario("uninstall", GROUP, &["life-good", "life-plain"]);
    uninstall.action = Action::Uninstall;
    let err = admin
        .run_scenario(&uninstall)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("life-plain") && err.contains("no uninstall command"),
        "{err}"
    );

    uninstall.packages = vec!["life-good".parse().unwrap(), "life-stuck".parse().unwrap()];
    let id = admin.run_scenario(&uninstall).await.unwrap().id;
    let rows = wait_done(&admin, &id, &agent).await;
    let row = |p: &str| rows.iter().find(|r| r.package_id == p).unwrap();
    // Removed: applied toward the uninstall's goal, verified absent.
    let g = row("life-good");
    assert_eq!(
        (g.action, &g.state),
        (Action::Uninstall, &State::Applied),
        "{g:#?}"
    );
    assert_eq!(g.state_name(), "removed");
    assert!(!good.exists(), "the uninstall ran for real");
    // The uninstaller that removes nothing loops like an install and names what still holds.
    let s = row("life-stuck");
    let State::LoopDetected { rule } = &s.state else {
        panic!("expected loop_detected: {s:#?}");
    };
    assert!(
        rule.contains(&stuck.display().to_string()) && rule.contains("still holds"),
        "{rule}"
    );
    assert_eq!((s.unverified_runs, s.last_code), (3, Some(Code::E24)));
    assert!(stuck.exists());
    assert!(
        plain.exists(),
        "a package not in the scenario is left alone"
    );

    // The CLI shows the uninstall's result as `removed`, and in Japanese as 削除済み, with
    // Japanese headers and the loop's label, in columns sized to their content.
    let o = server.cli(&["results", "--scenario", &id]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("life-good") && l.contains("removed")),
        "{text}"
    );
    let o = server.cli(&["results", "--scenario", &id, "--lang", "ja"]);
    let ja = String::from_utf8_lossy(&o.stdout);
    let header = ja.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("マシン") && header.contains("状態"),
        "{ja}"
    );
    assert!(
        ja.lines()
            .any(|l| l.contains("life-good") && l.contains("削除済み")),
        "{ja}"
    );
    assert!(ja.contains("再配信ループ停止("), "{ja}");
    let o = server.cli(&["scenario", "status", &id, "--lang", "ja"]);
    let st = String::from_utf8_lossy(&o.stdout);
    assert!(st.starts_with("シナリオ ") && st.contains("、完了"), "{st}");

    // The administrator removes the file by hand and retries the stopped delivery: the probe
    // now finds the goal reached. Only a stopped delivery is retried.
    let code = |r: Result<serde_json::Value, CallError>| match r {
        Err(CallError::Status { status, .. }) => status,
        other => panic!("expected an HTTP error: {other:?}"),
    };
    assert_eq!(code(admin.retry_delivery(&g.delivery_id).await), 409);
    assert_eq!(code(admin.retry_delivery("d-nonexistent").await), 404);
    std::fs::remove_file(&stuck).unwrap();
    let o = server.cli(&["delivery", "retry", &s.delivery_id]);
    assert!(o.status.success(), "{o:?}");
    let rows = wait_done(&admin, &id, &agent).await;
    let s = rows.iter().find(|r| r.package_id == "life-stuck").unwrap();
    assert_eq!(
        (s.state_name(), s.unverified_runs),
        ("removed", 0),
        "{s:#?}"
    );
    assert!(
        s.history.iter().any(|h| h.name() == "reset"),
        "{:#?}",
        s.history
    );

    // `scenario list` shows both scenarios, the newest first, finished.
    let o = server.cli(&["--json", "scenario", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<(&str, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["done"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec![("uninstall", true), ("install", true)],
        "{list:#}"
    );
}
both_backends!(uninstall_is_verified_as_not_applied);

async fn next_boot_runs_only_after_the_machine_starts_again(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let dir = server.path().join("boot-pkg");
    let tool = server.path().join("driver");
    package(&dir, "life-boot", &tool, "when: next_boot\n");
    let key = server.key.to_str().unwrap().to_string();
    let o = server.cli(&["package", "publish", dir.to_str().unwrap(), "--key", &key]);
    assert!(o.status.success(), "publish: {o:?}");
    // The machine's boot id, as the agent reads it.
    let boot = server.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent.start_with(&[("PATCHCAST_BOOT_ID_FILE", &boot)]);
    let admin = server.admin();
    let id = admin
        .run_scenario(&scenario("boot", GROUP, &["life-boot"]))
        .await
        .unwrap()
        .id;
    let results = || async {
        admin
            .results(&ResultsQuery {
                machine: None,
                package: None,
                scenario: Some(id.clone()),
                history: true,
                lang: "en".into(),
            })
            .await
            .unwrap()
            .deliveries
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while results().await[0].state != State::StagedForBoot {
        assert!(
            Instant::now() < deadline,
            "not staged; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several polls later, in the same boot: still staged, nothing ran.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(results().await[0].state, State::StagedForBoot);
    assert!(!tool.exists(), "ran before the machine started again");
    assert!(!admin.status(&id, "en").await.unwrap().done);

    // The machine starts again: the agent runs the staged install first, then verifies.
    assert!(agent.sigterm().await.success());
    std::fs::write(&boot, "boot-2\n").unwrap();
    agent.start_with(&[("PATCHCAST_BOOT_ID_FILE", &boot)]);
    let rows = wait_done(&admin, &id, &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{:#?}", rows[0]);
    assert!(tool.exists());
    let events: Vec<&str> = rows[0].history.iter().map(|h| h.name()).collect();
    let staged = events.iter().position(|e| *e == "staged_for_boot");
    let executed = events.iter().position(|e| *e == "executed");
    assert!(
        matches!((staged, executed), (Some(s), Some(e)) if s < e),
        "{events:?}"
    );
}
both_backends!(next_boot_runs_only_after_the_machine_starts_again);

/// `patchcast-agent doctor` on a real enrolled agent root: every check passes, then each
/// fault gives its own failing check and code (E26 removed machine, E03 server down, E14
/// unknown host).
/// `patchcast-agent doctor --json --lang LANG`: whether every check passed, the failed
/// checks with their codes, and the whole output.
fn doctor(root: &Path, lang: &str) -> (bool, Vec<(String, Option<String>)>, serde_json::Value) {
    let mut cmd = std::process::Command::new(crate::common::agent_harness::BIN);
    cmd.args(["doctor", "--json", "--lang", lang, "--root"])
        .arg(root);
    doctor_output(cmd)
}

/// The doctor run on a machine whose name service knows only the names in `hosts` (a mount
/// namespace with its own /etc/hosts and `hosts: files`): a name the server resolves that this
/// machine does not, as with split DNS. Root only.
fn doctor_without_names(
    root: &Path,
    lang: &str,
    hosts: &Path,
) -> (bool, Vec<(String, Option<String>)>, serde_json::Value) {
    let nsswitch = hosts.with_extension("nsswitch");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/nsswitch.conf && exec \"$0\" doctor --json --lang \"$3\" --root \"$4\"",
        crate::common::agent_harness::BIN,
    ])
    .arg(hosts)
    .arg(&nsswitch)
    .arg(lang)
    .arg(root);
    doctor_output(cmd)
}

fn doctor_output(
    mut cmd: std::process::Command,
) -> (bool, Vec<(String, Option<String>)>, serde_json::Value) {
    let o = cmd.output().unwrap();
    assert!(
        !o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let checks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failed: Vec<(String, Option<String>)> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["ok"].as_bool().unwrap())
        .map(|c| {
            let code = c["code"].as_str().map(str::to_string);
            (c["check"].as_str().unwrap().to_string(), code)
        })
        .collect();
    (o.status.success(), failed, checks)
}

/// The failed checks named `check`, as (detail, message, remedy).
fn failures(checks: &serde_json::Value, check: &str) -> Vec<(String, String, String)> {
    let text = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == check && !c["ok"].as_bool().unwrap())
        .map(|c| (text(c, "detail"), text(c, "message"), text(c, "remedy")))
        .collect()
}

async fn agent_doctor_names_each_fault(backend: Backend) {
    let Some(mut server) = TestServer::start(backend, &[]).await else {
        return;
    };
    let token = server.group_token(GROUP).await;
    let agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    let doctor = || doctor(&agent.root, "en");
    let (ok, failed, checks) = doctor();
    assert!(ok && failed.is_empty(), "{checks:#}");
    // Enrollment, name, TCP, certificate, credential, clock; no custom sources.
    assert_eq!(checks.as_array().unwrap().len(), 6, "{checks:#}");

    // A second server to fail over to, that is down: its checks follow the first's (E03),
    // and the first still answers for the machine.
    let config = agent.root.join("agent.json");
    let saved = std::fs::read_to_string(&config).unwrap();
    let mut two: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let down = format!(
        "https://127.0.0.1:{}",
        crate::common::sources_harness::closed_port()
    );
    two["servers"] = serde_json::json!([down]);
    std::fs::write(&config, two.to_string()).unwrap();
    let (ok, failed, checks) = doctor();
    assert!(!ok);
    assert_eq!(
        failed,
        vec![("TCP connection".into(), Some("E03".into()))],
        "{checks:#}"
    );
    // Enrollment, the first server's five checks, the second's name and TCP.
    assert_eq!(checks.as_array().unwrap().len(), 8, "{checks:#}");
    assert!(
        checks[0]["detail"].as_str().unwrap().contains(&down),
        "{checks:#}"
    );
    std::fs::write(&config, &saved).unwrap();

    let id = server.admin().machines().await.unwrap()[0].id.clone();
    server.admin().remove_machine(&id).await.unwrap();
    let (ok, failed, _) = doctor();
    assert!(!ok);
    assert_eq!(failed, vec![("credential".into(), Some("E26".into()))]);

    server.kill();
    let (_, failed, _) = doctor();
    assert_eq!(failed, vec![("TCP connection".into(), Some("E03".into()))]);

    let text = std::fs::read_to_string(&config).unwrap();
    let url = server.url.clone();
    std::fs::write(
        &config,
        text.replace(&url, "https://patchcast-no-such-host.invalid:8443"),
    )
    .unwrap();
    let (_, failed, _) = doctor();
    assert_eq!(failed, vec![("name resolution".into(), Some("E14".into()))]);
}
both_backends!(agent_doctor_names_each_fault);

/// The doctor's clock check against the server's `Date` (its test clock moved 10 minutes:
/// E28) and its check of each custom update source the server lists for the machine: a
/// closed port (E03), a name under `.invalid` (E14), a certificate that is not the pinned
/// one (E26), with message and remedy in English and Japanese.
async fn agent_doctor_checks_the_clock_and_each_source(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--test-clock"]).await else {
        return;
    };
    let token = server.group_token(GROUP).await;
    let agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    let (ok, failed, checks) = doctor(&agent.root, "en");
    assert!(ok && failed.is_empty(), "{checks:#}");

    let clock = |advance_ms: i64| {
        let admin = server.admin();
        async move {
            admin
                .clock(&patchcast::transport::schedule_api::ClockChange {
                    set_ms: None,
                    advance_ms: Some(advance_ms),
                })
                .await
                .unwrap()
        }
    };
    // The server ten minutes ahead: this machine is 600 s behind.
    clock(600_000).await;
    for lang in ["en", "ja"] {
        let (ok, failed, checks) = doctor(&agent.root, lang);
        assert!(!ok);
        assert_eq!(
            failed,
            vec![("clock".into(), Some("E28".into()))],
            "{checks:#}"
        );
        let (detail, message, remedy) = failures(&checks, "clock").remove(0);
        assert!(
            detail.contains(" s behind the server's") && detail.contains("300 s"),
            "{detail}"
        );
        if lang == "en" {
            assert!(
                message.contains("more than 5 minutes") && message.contains("s)"),
                "{message}"
            );
            assert!(remedy.contains("NTP"), "{remedy}");
        } else {
            assert!(message.contains("5分以上ずれています"), "{message}");
            assert!(remedy.contains("時刻源"), "{remedy}");
        }
    }
    // Four minutes off is within the limit.
    clock(-360_000).await;
    let (ok, failed, checks) = doctor(&agent.root, "en");
    assert!(ok && failed.is_empty(), "{checks:#}");
    clock(-240_000).await;

    // A name that resolves nowhere is refused when the list is set (the server checks each
    // source's address), so the doctor meets E14 where this machine's view of names differs
    // from the server's: `localhost` below, on a machine that does not know it.
    let invalid = "entries:\n  - addresses: 127.0.0.1\n    sources:\n      - https: https://patchcast-no-such-host.invalid:8443/mirror\n";
    let (ok, err) = crate::common::sources_harness::set_sources(&server, invalid);
    assert!(!ok && err.contains("sources-address"), "{err}");

    let (dead, dead_named) = (
        crate::common::sources_harness::closed_port(),
        crate::common::sources_harness::closed_port(),
    );
    let wrong_pin = format!("sha256:{}", "ab".repeat(32));
    let yaml = format!(
        "entries:\n  - addresses: 127.0.0.1\n    sources:\n      - https: https://127.0.0.1:{dead}/mirror\n      - https: https://localhost:{dead_named}/mirror\n      - https: {}/mirror\n        fingerprint: \"{wrong_pin}\"\n      - https: {}/mirror\n        fingerprint: \"{}\"\n      - server\n",
        server.url, server.url, server.fingerprint
    );
    let (ok, err) = crate::common::sources_harness::set_sources(&server, &yaml);
    assert!(ok, "{err}");
    let source = |code: &str| ("update source".to_string(), Some(code.to_string()));
    let (ok, failed, checks) = doctor(&agent.root, "en");
    assert!(!ok);
    assert_eq!(
        failed,
        vec![source("E03"), source("E03"), source("E26")],
        "{checks:#}"
    );
    let f = failures(&checks, "update source");
    assert!(
        f[0].0
            .starts_with(&format!("https://127.0.0.1:{dead}/mirror: ")),
        "{f:?}"
    );
    assert!(f[2].0.contains("pinned"), "{f:?}");
    // The source with the right pin answers, and is the one that passed.
    let passed = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "update source" && c["ok"] == true)
        .count();
    assert_eq!(passed, 1, "{checks:#}");
    for lang in ["en", "ja"] {
        let (_, _, checks) = doctor(&agent.root, lang);
        let (_, message, remedy) = failures(&checks, "update source").remove(0);
        let want = if lang == "en" {
            "Connecting to the machine failed"
        } else {
            "接続に失敗しました"
        };
        assert!(message.contains(want), "{lang}: {message}");
        assert!(remedy.contains("ping"), "{lang}: {remedy}");
    }

    if !crate::common::agent_harness::root_or_skip() {
        return;
    }
    let hosts = server.path().join("hosts-without-localhost");
    std::fs::write(&hosts, "127.0.0.1 patchcast-elsewhere\n").unwrap();
    for lang in ["en", "ja"] {
        let (ok, failed, checks) = doctor_without_names(&agent.root, lang, &hosts);
        assert!(!ok);
        assert_eq!(
            failed,
            vec![source("E03"), source("E14"), source("E26")],
            "{checks:#}"
        );
        let (detail, message, remedy) = failures(&checks, "update source").remove(1);
        assert!(
            detail.starts_with(&format!(
                "https://localhost:{dead_named}/mirror: localhost: "
            )),
            "{detail}"
        );
        if lang == "en" {
            assert!(message.contains("no such host is known"), "{message}");
            assert!(remedy.contains("name resolution"), "{remedy}");
        } else {
            assert!(message.contains("ホストは不明です"), "{message}");
            assert!(remedy.contains("名前解決"), "{remedy}");
        }
    }
}
both_backends!(agent_doctor_checks_the_clock_and_each_source);
