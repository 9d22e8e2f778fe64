//! End to end: the real `patchcast server` and three real `patchcast-agent` processes on
//! loopback (emulated Windows Server 2008 endpoints, each under its own root), the sample
//! packages published through the CLI, on SQLite and on PostgreSQL. Shows a scenario applied
//! everywhere, the loop breaker naming the failing rule, an offline machine catching up when
//! its agent comes back, and a server killed mid-scenario finishing with nothing lost and
//! nothing applied that was not verified.

use crate::common::agent_harness::AgentProc;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::transport::admin_api::{Admin, DeliveryRow, ResultsQuery, ScenarioStatus};
use std::time::{Duration, Instant};

const GROUP: &str = "fleet";

fn profile(hostname: &str, language: &str) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: {language}\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 21474836480\n"
    )
}

struct Fleet {
    server: TestServer,
    agents: Vec<AgentProc>,
}

impl Fleet {
    /// A server, the named sample packages published with the CLI, and three enrolled,
    /// running agents in `GROUP`.
    async fn start(backend: Backend, packages: &[&str]) -> Option<Fleet> {
        let server = TestServer::start(backend, &["--poll", "2s"]).await?;
        for p in packages {
            let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
            let key = server.key.to_str().unwrap().to_string();
            let o = server.cli(&["package", "publish", &dir, "--key", &key]);
            assert!(o.status.success(), "publish {p}: {o:?}");
        }
        let token = server.group_token(GROUP).await;
        let mut agents = Vec::new();
        for (name, lang) in [("ws-ja-1", "ja"), ("ws-ja-2", "ja"), ("ws-en-1", "en")] {
            let mut a = AgentProc::new(&server.path().join("agents").join(name));
            std::fs::write(a.root.join("endpoint.yaml"), profile(name, lang)).unwrap();
            let (ok, out) = a.enroll(&server.url, &token, &server.fingerprint).await;
            assert!(ok, "enroll {name}: {out}");
            a.start();
            agents.push(a);
        }
        Some(Fleet { server, agents })
    }

    fn admin(&self) -> Admin {
        self.server.admin()
    }

    /// Waits until `cond` holds for the scenario's status; panics with the status and the
    /// agents' logs when it does not within two minutes.
    async fn wait(&self, id: &str, what: &str, cond: impl Fn(&ScenarioStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = self.admin().status(id, "en").await;
            if let Ok(st) = &st
                && cond(st)
            {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.agents.iter().map(|a| a.log()).collect();
                panic!(
                    "timed out waiting for {what}: {st:#?}\nagent logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn results(&self, scenario: &str) -> Vec<DeliveryRow> {
        self.admin()
            .results(&ResultsQuery {
                machine: None,
                package: None,
                scenario: Some(scenario.into()),
                history: true,
                lang: "en".into(),
            })
            .await
            .unwrap()
            .deliveries
    }
}

/// Applied only right after an identification that said so, and each delivery applied once;
/// every report (attempt, seq) recorded once.
fn assert_applied_only_when_verified(rows: &[DeliveryRow]) {
    for r in rows {
        let applied: Vec<_> = r.history.iter().filter(|h| h.state == "applied").collect();
        assert!(applied.len() <= 1, "applied twice: {:#?}", r.history);
        if let Some(h) = applied.first() {
            let verdict = h.event.pointer("/verdict/verdict");
            assert!(
                matches!(h.name(), "verified" | "probed")
                    && verdict.and_then(|v| v.as_str()) == Some("applied"),
                "applied without a passing identification: {:#?}",
                r.history
            );
        }
        assert_eq!(r.state == State::Applied, applied.len() == 1, "{r:#?}");
        let mut seen = std::collections::BTreeSet::new();
        for h in r.history.iter().filter(|h| h.seq > 0) {
            assert!(
                seen.insert((h.attempt, h.seq)),
                "report recorded twice: {:#?}",
                r.history
            );
        }
    }
}

async fn applied_everywhere_and_the_loop_named(backend: Backend) {
    let Some(fleet) = Fleet::start(
        backend,
        &["ms10-046-ws2008-multi", "kb971468-ws2008-wrong-rule"],
    )
    .await
    else {
        return;
    };
    let s = scenario(
        "e2e",
        GROUP,
        &["ms10-046-ws2008-multi", "kb971468-ws2008-wrong-rule"],
    );
    let id = fleet.admin().run_scenario(&s).await.unwrap().id;
    fleet
        .wait(&id, "the scenario to finish", |st| st.done)
        .await;

    let rows = fleet.results(&id).await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    for r in &rows {
        match r.package_id.as_str() {
            "ms10-046-ws2008-multi" => {
                assert_eq!(r.state, State::Applied, "{r:#?}");
                assert_eq!(r.attempts, 1, "{r:#?}");
            }
            _ => {
                let State::LoopDetected { rule } = &r.state else {
                    panic!("expected loop_detected: {r:#?}");
                };
                assert!(rule.contains("pcshell.dll"), "the rule is named: {rule}");
                assert_eq!(r.unverified_runs, 3, "{r:#?}");
                assert_eq!(r.last_code, Some(Code::E24));
                let runs = r.history.iter().filter(|h| h.name() == "executed").count();
                assert_eq!(
                    runs, 3,
                    "three installs, then the breaker: {:#?}",
                    r.history
                );
            }
        }
    }
    assert_applied_only_when_verified(&rows);
    // The agent's own view agrees: the HotFix is now in the installed-update list it reports.
    let machines = fleet.admin().machines().await.unwrap();
    assert_eq!(machines.len(), 3);
    for m in machines {
        assert!(
            m.inventory
                .installed_updates
                .iter()
                .any(|u| u == "KB2286198"),
            "{}: {:?}",
            m.hostname,
            m.inventory.installed_updates
        );
    }
}
both_backends!(applied_everywhere_and_the_loop_named);

async fn an_offline_machine_catches_up(backend: Backend) {
    let Some(mut fleet) = Fleet::start(backend, &["ms10-046-ws2008-multi"]).await else {
        return;
    };
    // Wait until all three have checked in, then take one offline.
    let admin = fleet.admin();
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.machines().await.unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "agents did not enroll");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = fleet.agents[2].sigterm().await;
    assert!(
        status.success(),
        "SIGTERM stops the agent cleanly: {status}"
    );

    let s = scenario("offline", GROUP, &["ms10-046-ws2008-multi"]);
    let id = admin.run_scenario(&s).await.unwrap().id;
    fleet
        .wait(&id, "the two online machines", |st| {
            st.counts.get("applied").copied() == Some(2)
        })
        .await;
    let st = admin.status(&id, "en").await.unwrap();
    assert!(!st.done);
    let off = st
        .deliveries
        .iter()
        .find(|d| d.hostname == "ws-en-1")
        .expect("the offline machine's delivery");
    assert_eq!((off.state.clone(), off.attempts), (State::Pending, 0));

    fleet.agents[2].start();
    fleet
        .wait(&id, "the machine that came back", |st| st.done)
        .await;
    let rows = fleet.results(&id).await;
    assert!(rows.iter().all(|r| r.state == State::Applied), "{rows:#?}");
    assert_applied_only_when_verified(&rows);
}
both_backends!(an_offline_machine_catches_up);

async fn a_killed_server_finishes_the_scenario(backend: Backend) {
    let packages = [
        "ms10-046-ws2008-multi",
        "kb981550-ws2008-fileversion",
        "ws2008-sp2",
    ];
    let Some(mut fleet) = Fleet::start(backend, &packages).await else {
        return;
    };
    let mut s = scenario("crash", GROUP, &packages);
    // One machine at a time, so the kill lands with work still to do.
    s.max_concurrent = Some(1);
    let id = fleet.admin().run_scenario(&s).await.unwrap().id;
    fleet
        .wait(&id, "the first applied delivery", |st| {
            st.counts.get("applied").copied().unwrap_or(0) >= 1
        })
        .await;
    let before = fleet.admin().status(&id, "en").await.unwrap();
    fleet.server.kill();
    assert!(!before.done, "the kill must land mid-scenario: {before:#?}");

    // Agents keep working and reporting into the void; they retry until the server is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.server.spawn();
    assert!(
        fleet.server.banner.iter().any(|l| l.contains("recovered")),
        "{:?}",
        fleet.server.banner
    );
    fleet
        .wait(&id, "the scenario after the restart", |st| st.done)
        .await;

    let rows = fleet.results(&id).await;
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r.state == State::Applied), "{rows:#?}");
    assert_applied_only_when_verified(&rows);
    // Nothing applied before the kill was lost or redone.
    for d in before
        .deliveries
        .iter()
        .filter(|d| d.state == State::Applied)
    {
        let now = rows
            .iter()
            .find(|r| r.delivery_id == d.delivery_id)
            .unwrap();
        assert_eq!(now.attempts, d.attempts, "{now:#?}");
    }
}
both_backends!(a_killed_server_finishes_the_scenario);
