//! Package versions and what they allow: several signed versions kept per id, a refused then
//! explicit rollback delivered as an ordinary update (by a publish `--rollback`, or by a
//! scenario naming `ID@VERSION` with `options.rollback`), and supersedence (a package whose
//! successor is applied on a machine is never delivered there, ends `superseded` and counts
//! as applied). The real server and a real Linux agent process, on SQLite and PostgreSQL.

use crate::common::agent_harness::{AgentProc, run_to_end, tool_package, wait_to_end};
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::transport::admin_api::{Admin, DeliveryRow, ResultsQuery};
use std::path::Path;
use std::time::Duration;

const GROUP: &str = "versions";

/// A package `id` at `version` that writes `tool` with "ID VERSION" (identified by that
/// content's hash, so another version of it is not applied); `extra` YAML appended.
fn package(dir: &Path, id: &str, version: &str, tool: &Path, extra: &str) {
    tool_package(dir, id, version, tool, "", extra)
}

/// Runs a scenario of `packages` on the group and returns its rows once it is done.
async fn run(admin: &Admin, name: &str, packages: &[&str], agent: &AgentProc) -> Vec<DeliveryRow> {
    let s = scenario(name, GROUP, packages);
    run_to_end(admin, &s, agent, Duration::from_secs(120))
        .await
        .1
}

async fn agent_of(server: &TestServer) -> AgentProc {
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent.start();
    agent
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn rollback_is_refused_then_explicit(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let tool = server.path().join("installed-app");
    let (v1, v2) = (server.path().join("v1"), server.path().join("v2"));
    package(&v1, "life-app", "1.0", &tool, "");
    package(&v2, "life-app", "2.0", &tool, "");
    let key = server.key.to_str().unwrap().to_string();
    let publish = |dir: &Path, rollback: bool| {
        let mut args = vec!["package", "publish", dir.to_str().unwrap(), "--key", &key];
        if rollback {
            args.push("--rollback");
        }
        server.cli(&args)
    };
    let o = publish(&v2, false);
    assert!(o.status.success(), "publish 2.0: {}", text(&o));
    let agent = agent_of(&server).await;
    let admin = server.admin();
    let rows = run(&admin, "install", &["life-app"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "life-app 2.0\n");

    // A normal publish of the older version is refused, naming both versions.
    let o = publish(&v1, false);
    assert!(!o.status.success(), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("`life-app` 2.0 is published")
            && err.contains("1.0 is older")
            && err.contains("--rollback"),
        "{err}"
    );
    let versions = || {
        let o = server.cli(&["--json", "package", "versions", "life-app"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_string(),
                    v["current"].as_bool().unwrap(),
                    v["rollback"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(), vec![("2.0".into(), true, false)]);

    // Explicitly: accepted, current, and listed beside the newer version.
    let o = publish(&v1, true);
    assert!(o.status.success(), "rollback: {}", text(&o));
    assert!(
        text(&o).contains("rolled back to life-app 1.0"),
        "{}",
        text(&o)
    );
    assert_eq!(
        versions(),
        vec![("1.0".into(), true, true), ("2.0".into(), false, false)]
    );
    let o = server.cli(&["package", "versions", "life-app"]);
    let table = String::from_utf8_lossy(&o.stdout);
    let line = |v: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == v))
            .unwrap_or_else(|| panic!("{table}"))
            .to_string()
    };
    assert!(
        line("1.0").starts_with('*') && line("1.0").contains("current (rollback)"),
        "{table}"
    );
    assert!(!line("2.0").starts_with('*'), "{table}");
    let list = admin.packages().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].version.as_deref(), Some("1.0"));
    let o = server.cli(&["package", "versions", "no-such-package"]);
    assert!(!o.status.success() && text(&o).contains("no package `no-such-package`"));

    // The rollback is delivered as an ordinary update: 1.0 is not applied where 2.0 is, so
    // it is installed and verified.
    let rows = run(&admin, "roll back", &["life-app"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "life-app 1.0\n");

    // Forward again: 2.0 is newer than the current 1.0, so a normal publish takes it.
    let o = publish(&v2, false);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        versions(),
        vec![("2.0".into(), true, false), ("1.0".into(), false, true)]
    );
}
both_backends!(rollback_is_refused_then_explicit);

async fn a_scenario_rolls_back_only_when_it_says_so(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let tool = server.path().join("installed-app");
    let (v1, v2) = (server.path().join("v1"), server.path().join("v2"));
    package(&v1, "life-app", "1.0", &tool, "");
    package(&v2, "life-app", "2.0", &tool, "");
    let key = server.key.to_str().unwrap().to_string();
    for dir in [&v1, &v2] {
        let o = server.cli(&["package", "publish", dir.to_str().unwrap(), "--key", &key]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let agent = agent_of(&server).await;
    let admin = server.admin();
    let rows = run(&admin, "install", &["life-app"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "life-app 2.0\n");

    let file = |name: &str, options: &str| {
        let f = server.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!(
                "name: {name}\npackages: [life-app@1.0]\ntargets: {{ groups: [{GROUP}] }}\noptions: {{ retry: {{ max_attempts: 1 }}{options} }}\n"
            ),
        )
        .unwrap();
        f
    };
    // Without `rollback` the older version is refused, naming both and the option.
    let o = server.cli(&["scenario", "run", file("plain", "").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("1.0 is older than the current 2.0") && err.contains("rollback: true"),
        "{err}"
    );
    // A version never published is refused too.
    let missing = server.path().join("missing.yaml");
    std::fs::write(
        &missing,
        format!("name: missing\npackages: [life-app@3.0]\ntargets: {{ groups: [{GROUP}] }}\n"),
    )
    .unwrap();
    let o = server.cli(&["scenario", "run", missing.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("no published version 3.0"),
        "{}",
        text(&o)
    );
    // With it: 1.0 is delivered as an ordinary update, installed and verified; 2.0 stays
    // the current version.
    let o = server.cli(&[
        "scenario",
        "run",
        file("back", ", rollback: true").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let rows = wait_to_end(&admin, &id, &agent, Duration::from_secs(120)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}\n{}", agent.log());
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "life-app 1.0\n");
    let list = admin.packages().await.unwrap();
    assert_eq!(list[0].version.as_deref(), Some("2.0"));
    // And forward again by the current version.
    let rows = run(&admin, "forward", &["life-app"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "life-app 2.0\n");
}
both_backends!(a_scenario_rolls_back_only_when_it_says_so);

async fn a_superseded_package_is_never_delivered(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let work = server.path().join("packages");
    let (old, new, other) = (
        server.path().join("old-tool"),
        server.path().join("new-tool"),
        server.path().join("other-tool"),
    );
    package(&work.join("old"), "life-old", "1.0", &old, "");
    package(&work.join("other"), "life-other", "1.0.0", &other, "");
    // Replaces every version of life-old, and life-other only below 1.0.
    package(
        &work.join("new"),
        "life-new",
        "2.0",
        &new,
        "supersedes:\n  - life-old\n  - { id: life-other, version: '< 1.0' }\n",
    );
    let key = server.key.to_str().unwrap().to_string();
    for p in ["old", "other", "new"] {
        let o = server.cli(&[
            "package",
            "publish",
            work.join(p).to_str().unwrap(),
            "--key",
            &key,
        ]);
        assert!(o.status.success(), "publish {p}: {}", text(&o));
    }
    let agent = agent_of(&server).await;
    let admin = server.admin();
    let rows = run(&admin, "successor", &["life-new"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");

    let rows = run(&admin, "older", &["life-old", "life-other"], &agent).await;
    let row = |p: &str| rows.iter().find(|r| r.package_id == p).unwrap();
    let o = row("life-old");
    assert_eq!(
        o.state,
        State::Superseded {
            by: "life-new".into()
        },
        "{o:#?}"
    );
    // Never handed to the agent: no attempt, nothing ran.
    assert_eq!(o.attempts, 0, "{o:#?}");
    assert!(
        !o.history.iter().any(|h| h.name() == "dispatched"),
        "{:#?}",
        o.history
    );
    assert!(!old.exists(), "the superseded package ran");
    // Outside the successor's version range: delivered as usual.
    assert_eq!(row("life-other").state, State::Applied);
    assert!(other.exists());

    // Compliance counts it as applied; results say what replaced it.
    let results = admin
        .results(&ResultsQuery {
            machine: None,
            package: Some("life-old".into()),
            scenario: None,
            history: false,
            lang: "en".into(),
        })
        .await
        .unwrap();
    let summary = &results.packages[0];
    assert_eq!(
        (summary.applied, summary.not_applied, summary.in_progress),
        (1, 0, 0),
        "{summary:?}"
    );
    let o = server.cli(&["results", "--package", "life-old"]);
    let en = String::from_utf8_lossy(&o.stdout);
    assert!(
        en.lines()
            .any(|l| l.contains("life-old") && l.contains("superseded by life-new")),
        "{en}"
    );
    let o = server.cli(&["results", "--package", "life-old", "--lang", "ja"]);
    let ja = String::from_utf8_lossy(&o.stdout);
    assert!(ja.contains("置き換え済み(life-new)"), "{ja}");
}
both_backends!(a_superseded_package_is_never_delivered);
