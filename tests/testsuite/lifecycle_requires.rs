//! Package requirements (`requires:`): a package is delivered to a machine only once the
//! packages it requires are applied there; they move ahead of it in its scenario, and one
//! that fails (or was never delivered to the machine) fails it with E29 naming the
//! requirement. The real server and a real Linux agent process, on SQLite and PostgreSQL.

use crate::common::agent_harness::{AgentProc, run_to_end, tool_package};
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::sources_harness::publish;
use patchcast::core::delivery::State;
use patchcast::core::errors::{Code, Lang, render};
use patchcast::transport::admin_api::{Admin, DeliveryRow};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const GROUP: &str = "requires";

/// A package `id` whose install runs `before` and then writes `tool` (identified by that
/// content's hash); `extra` YAML appended.
fn package(dir: &Path, id: &str, tool: &Path, before: &str, extra: &str) {
    tool_package(dir, id, "1.0", tool, before, extra)
}

/// Runs a scenario of `packages` (one attempt each) and returns its id and rows once done.
async fn run(
    admin: &Admin,
    name: &str,
    packages: &[&str],
    agent: &AgentProc,
) -> (String, Vec<DeliveryRow>) {
    let mut s = scenario(name, GROUP, packages);
    s.max_attempts = 1;
    run_to_end(admin, &s, agent, Duration::from_secs(120)).await
}

async fn agent_of(server: &TestServer) -> AgentProc {
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agent"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent.start();
    agent
}

/// When `row` was handed to the agent, if ever.
fn dispatched_at(row: &DeliveryRow) -> Option<i64> {
    row.history
        .iter()
        .find(|h| h.name() == "dispatched")
        .map(|h| h.at_ms)
}

async fn a_requirement_is_applied_first(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let work = server.path().join("packages");
    let (app, lib) = (server.path().join("app"), server.path().join("lib"));
    package(&work.join("lib"), "req-lib", &lib, "", "");
    // The app's installer fails unless the library is already in place.
    package(
        &work.join("app"),
        "req-app",
        &app,
        &format!("test -f '{}' || exit 7", lib.display()),
        "requires:\n  - { id: req-lib, version: '>= 1.0' }\n",
    );
    publish(&server, &work.join("lib"), &[]);
    publish(&server, &work.join("app"), &[]);
    let agent = agent_of(&server).await;
    // Listed after the app that requires it: it still goes first.
    let (_, rows) = run(&server.admin(), "app", &["req-app", "req-lib"], &agent).await;
    let row = |p: &str| rows.iter().find(|r| r.package_id == p).unwrap();
    let (a, l) = (row("req-app"), row("req-lib"));
    assert_eq!(l.state, State::Applied, "{l:#?}");
    assert_eq!(a.state, State::Applied, "{a:#?}\n{}", agent.log());
    assert!(app.exists() && lib.exists());
    // The app was handed out only after the library's delivery ended applied.
    let lib_applied = l
        .history
        .iter()
        .find(|h| h.state == "applied")
        .unwrap_or_else(|| panic!("{:#?}", l.history))
        .at_ms;
    let app_sent = dispatched_at(a).unwrap_or_else(|| panic!("{:#?}", a.history));
    assert!(
        dispatched_at(l).unwrap() <= lib_applied && lib_applied <= app_sent,
        "lib applied at {lib_applied}, app dispatched at {app_sent}\n{:#?}\n{:#?}",
        l.history,
        a.history
    );
}
both_backends!(a_requirement_is_applied_first);

/// `patchcast results --json` of `scenario` in `lang`: the delivery of `package`.
fn result(server: &TestServer, scenario: &str, package: &str, lang: &str) -> Value {
    let o = server.cli(&["results", "--json", "--scenario", scenario, "--lang", lang]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["package_id"] == package)
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone()
}

/// The delivery of `package` in `scenario` failed with E29 naming `requirement` (and
/// `detail`) in English and Japanese, with the catalog's remedy, and was never handed out.
fn failed_for(server: &TestServer, scenario: &str, package: &str, requirement: &str, detail: &str) {
    for (lang, words) in [
        ("en", "the package it requires"),
        ("ja", "前提となるパッケージ"),
    ] {
        let d = result(server, scenario, package, lang);
        assert_eq!(d["state"]["state"], "failed", "{d:#}");
        assert_eq!(d["last_code"], "E29", "{d:#}");
        assert_eq!(d["attempts"], 0, "never handed out: {d:#}");
        let r = &d["rendered"];
        assert_eq!(r["code"], "E29", "{lang}: {d:#}");
        let message = r["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.contains(requirement) && message.contains(detail),
            "{lang}: {message}"
        );
        let catalog = render(Code::E29, Lang::from_tag(lang), &Default::default());
        let opening: String = catalog.remedy.chars().take(20).collect();
        assert!(
            r["remedy"].as_str().unwrap().starts_with(&opening),
            "{lang}: {d:#}"
        );
    }
}

async fn a_failed_requirement_fails_the_dependent(backend: Backend) {
    let Some(server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let work = server.path().join("packages");
    let (app, bad, lone) = (
        server.path().join("app"),
        server.path().join("bad"),
        server.path().join("lone"),
    );
    package(&work.join("bad"), "req-bad", &bad, "exit 3", "");
    package(
        &work.join("app"),
        "req-app",
        &app,
        "",
        "requires: [req-bad]\n",
    );
    package(
        &work.join("lone"),
        "req-lone",
        &lone,
        "",
        "requires: [req-elsewhere]\n",
    );
    for p in ["bad", "app", "lone"] {
        publish(&server, &work.join(p), &[]);
    }
    let agent = agent_of(&server).await;
    let admin = server.admin();
    let (id, rows) = run(&admin, "bad", &["req-app", "req-bad"], &agent).await;
    let row = |p: &str| rows.iter().find(|r| r.package_id == p).unwrap();
    assert!(
        matches!(row("req-bad").state, State::Failed { .. }),
        "{:#?}",
        row("req-bad")
    );
    assert_eq!(
        row("req-app").state,
        State::Failed { code: Code::E29 },
        "{:#?}",
        row("req-app")
    );
    assert!(dispatched_at(row("req-app")).is_none());
    assert!(!app.exists(), "the dependent ran");
    failed_for(
        &server,
        &id,
        "req-app",
        "req-bad",
        "its delivery ended failed",
    );

    // A requirement neither in the scenario nor ever delivered to the machine: the same code
    // says so at once.
    let (id, _) = run(&admin, "lone", &["req-lone"], &agent).await;
    failed_for(
        &server,
        &id,
        "req-lone",
        "req-elsewhere",
        "never delivered to this machine",
    );
    assert!(!lone.exists());
}
both_backends!(a_failed_requirement_fails_the_dependent);
