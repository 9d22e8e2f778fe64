//! Windows, automatic update, holds and time settings, with the server's controllable clock:
//! a real `patchcast server --test-clock` and real `patchcast-agent` processes (emulated
//! Windows Server 2008 endpoints), on SQLite and on PostgreSQL.
//!
//! Waiting is by condition with a generous guard; where a test shows that something does NOT
//! happen it first lets the agents poll several times (each poll is a chance to be given work).

use crate::common::agent_harness::AgentProc;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::loadgen::Behaviour;
use patchcast::model::group_policy::{self, GroupPolicy};
use patchcast::transport::admin_api::{Admin, DeliveryRow, ResultsQuery};
use patchcast::transport::protocol::AgentState;
use patchcast::transport::schedule_api::{Assign, ClockChange, MachineSetting};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .timestamp_millis()
}

fn profile(hostname: &str, extra: &str) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 21474836480\n{extra}"
    )
}

fn policy(text: &str) -> GroupPolicy {
    group_policy::load("test.yaml", text).unwrap_or_else(|p| panic!("{p:?}"))
}

/// Lets every agent poll a few times (1 s polls): the chances they would have had to get work.
async fn let_agents_poll() {
    tokio::time::sleep(Duration::from_secs(4)).await;
}

struct Env {
    server: TestServer,
    agents: HashMap<String, AgentProc>,
}

impl Env {
    async fn start(backend: Backend, packages: &[&str]) -> Option<Env> {
        let server = TestServer::start(backend, &["--poll", "1s", "--test-clock"]).await?;
        for p in packages {
            let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
            let key = server.key.to_str().unwrap().to_string();
            let o = server.cli(&["package", "publish", &dir, "--key", &key]);
            assert!(o.status.success(), "publish {p}: {o:?}");
        }
        Some(Env {
            server,
            agents: HashMap::new(),
        })
    }

    fn admin(&self) -> Admin {
        self.server.admin()
    }

    async fn set_clock(&self, t: &str) {
        let r = self
            .admin()
            .clock(&ClockChange {
                set_ms: Some(ms(t)),
                advance_ms: None,
            })
            .await
            .unwrap();
        assert!(r.test_clock && r.now_ms >= ms(t));
    }

    async fn now(&self) -> i64 {
        self.admin()
            .clock(&ClockChange::default())
            .await
            .unwrap()
            .now_ms
    }

    /// Enrolls `hostname` into `group` (not started).
    async fn enroll(&mut self, group: &str, hostname: &str, extra: &str) {
        let token = self.server.group_token(group).await;
        let a = AgentProc::new(&self.server.path().join("agents").join(hostname));
        std::fs::write(a.root.join("endpoint.yaml"), profile(hostname, extra)).unwrap();
        let (ok, out) = a
            .enroll(&self.server.url, &token, &self.server.fingerprint)
            .await;
        assert!(ok, "enroll {hostname}: {out}");
        self.agents.insert(hostname.into(), a);
    }

    fn agent(&mut self, hostname: &str) -> &mut AgentProc {
        self.agents.get_mut(hostname).unwrap()
    }

    async fn rows(&self, package: &str) -> Vec<DeliveryRow> {
        self.admin()
            .results(&ResultsQuery {
                package: Some(package.into()),
                history: true,
                lang: "en".into(),
                ..ResultsQuery::default()
            })
            .await
            .unwrap()
            .deliveries
    }

    async fn row(&self, package: &str, hostname: &str) -> Option<DeliveryRow> {
        self.rows(package)
            .await
            .into_iter()
            .find(|r| r.hostname == hostname)
    }

    async fn settings(&self) -> HashMap<String, MachineSetting> {
        self.admin()
            .results(&ResultsQuery {
                lang: "en".into(),
                ..ResultsQuery::default()
            })
            .await
            .unwrap()
            .settings
            .into_iter()
            .map(|s| (s.hostname.clone(), s))
            .collect()
    }

    /// Waits for an async condition; panics with the agents' logs after two minutes.
    async fn wait<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond().await {
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .agents
                    .iter()
                    .map(|(h, a)| format!("{h}:\n{}", a.log()))
                    .collect();
                panic!("timed out waiting for {what}\n{}", logs.join("\n---\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_state(&self, package: &str, hostname: &str, want: State) -> DeliveryRow {
        let what = format!("{package} on {hostname} to be {}", want.name());
        self.wait(&what, || async {
            self.row(package, hostname)
                .await
                .is_some_and(|r| r.state == want)
        })
        .await;
        self.row(package, hostname).await.unwrap()
    }
}

/// When the delivery was dispatched (server time), each attempt.
fn dispatched_at(r: &DeliveryRow) -> Vec<i64> {
    r.history
        .iter()
        .filter(|h| h.name() == "dispatched")
        .map(|h| h.at_ms)
        .collect()
}

async fn windows_gate_automatic_update_and_offline_machines_catch_up(backend: Backend) {
    let Some(mut env) = Env::start(backend, &["ws2008-sp2"]).await else {
        return;
    };
    env.set_clock("2026-11-21T00:00:00Z").await;
    env.enroll("night", "online", "").await;
    env.enroll("night", "offline", "").await;
    env.enroll("eager", "eager-offline", "").await;
    env.agent("online").start();
    let window =
        "windows:\n  - { start: '0 2 * * *', duration: 1h, time_zone: UTC }\ncheck_in_spread: 0s\n";
    for (group, extra) in [("night", ""), ("eager", "run_missed_at_start: true\n")] {
        let p = policy(&format!("group: {group}\n{window}{extra}"));
        env.admin().set_policy(&p).await.unwrap();
        let a = env
            .admin()
            .assign(&Assign {
                group: group.into(),
                package_id: "ws2008-sp2".into(),
                assign: true,
            })
            .await
            .unwrap();
        assert!(a.iter().any(|a| a.group == group));
    }
    // `schedule show` lists the next opening in the group's time zone.
    let o = env
        .server
        .cli(&["schedule", "show", "--group", "night", "--count", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(
        out.contains("2026-11-21T02:00:00+00:00 → 2026-11-21T03:00:00+00:00")
            && out.contains("2026-11-22T02:00:00+00:00"),
        "{out}"
    );

    // Automatic update: one delivery per machine of the group, no scenario run.
    env.wait(
        "automatic-update deliveries for all three machines",
        || async { env.rows("ws2008-sp2").await.len() == 3 },
    )
    .await;
    // Outside the window nothing starts, though the online agent polls all the time.
    let_agents_poll().await;
    let r = env.row("ws2008-sp2", "online").await.unwrap();
    assert_eq!((r.state.clone(), r.attempts), (State::Pending, 0), "{r:#?}");

    // In the window it is delivered and applied.
    env.set_clock("2026-11-21T02:00:30Z").await;
    let r = env.wait_state("ws2008-sp2", "online", State::Applied).await;
    let at = dispatched_at(&r);
    assert_eq!(at.len(), 1, "{r:#?}");
    assert!(
        (ms("2026-11-21T02:00:00Z")..ms("2026-11-21T03:00:00Z")).contains(&at[0]),
        "dispatched inside the window: {at:?}"
    );
    for h in ["offline", "eager-offline"] {
        let r = env.row("ws2008-sp2", h).await.unwrap();
        assert_eq!(r.state, State::Pending, "{h} was off through the window");
    }

    // Both offline machines come back after the window closed.
    env.set_clock("2026-11-21T04:00:00Z").await;
    env.agent("offline").start();
    env.agent("eager-offline").start();
    // The group that runs missed windows at start catches up at once...
    let r = env
        .wait_state("ws2008-sp2", "eager-offline", State::Applied)
        .await;
    assert!(dispatched_at(&r)[0] >= ms("2026-11-21T04:00:00Z"), "{r:#?}");
    // ...the other waits for its next window.
    let_agents_poll().await;
    let r = env.row("ws2008-sp2", "offline").await.unwrap();
    assert_eq!((r.state.clone(), r.attempts), (State::Pending, 0), "{r:#?}");
    env.set_clock("2026-11-22T02:00:10Z").await;
    let r = env
        .wait_state("ws2008-sp2", "offline", State::Applied)
        .await;
    assert!(
        (ms("2026-11-22T02:00:00Z")..ms("2026-11-22T03:00:00Z")).contains(&dispatched_at(&r)[0]),
        "{r:#?}"
    );
    // The agents were told their next slot: the following night's opening.
    assert!(env.now().await >= ms("2026-11-22T02:00:10Z"));
}
both_backends!(windows_gate_automatic_update_and_offline_machines_catch_up);

async fn a_hold_is_enforced_for_an_agent_that_never_saw_it(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    s.publish_sample("hold-app").await;
    // A simulated agent of an older version: it never sends a session, so the server never
    // sends it the time setting holding `application` updates.
    let agents = s.enroll(1, "frozen", Behaviour::Apply).await;
    let a = &agents[0];
    let admin = s.admin();
    let set = admin
        .set_policy(&policy("group: frozen\nhold: [application]\n"))
        .await
        .unwrap();
    assert_eq!(set.machines.len(), 1);
    admin
        .run_scenario(&scenario("held", "frozen", &["hold-app"]))
        .await
        .unwrap();
    for _ in 0..3 {
        let w = a.poll(AgentState::Idle, 300).await.unwrap();
        assert!(w.is_none(), "held work was handed out: {w:?}");
    }
    let results = admin
        .results(&ResultsQuery {
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(results.deliveries[0].state, State::Pending);
    // The agent never had any setting, yet the hold held.
    assert_eq!(results.settings[0].applied, 0, "{:?}", results.settings);
    assert!(results.settings[0].wanted > 0);

    // Lifting the hold releases the work at the next poll.
    admin.set_policy(&policy("group: frozen\n")).await.unwrap();
    let w = a.poll(AgentState::Idle, 2000).await.unwrap();
    assert_eq!(w.map(|w| w.package_id), Some("hold-app".to_string()));
}
both_backends!(a_hold_is_enforced_for_an_agent_that_never_saw_it);

async fn time_settings_give_w15_to_busy_and_w16_to_unreachable_agents(backend: Backend) {
    let Some(mut env) = Env::start(backend, &["ws2008-sp2"]).await else {
        return;
    };
    env.set_clock("2026-11-21T00:00:00Z").await;
    // `busy` waits for a reboot its service pack asked for (exit 3010, reboots not allowed).
    env.enroll("ops", "busy", "exit_codes: { ws2008-sp2: 3010 }\n")
        .await;
    env.enroll("ops", "off", "").await;
    env.enroll("ops", "idle", "").await;
    for h in ["busy", "off", "idle"] {
        env.agent(h).start();
    }
    let mut s = scenario("sp2 on busy", "ops", &["ws2008-sp2"]);
    s.groups.clear();
    s.machines = vec!["busy".into()];
    env.admin().run_scenario(&s).await.unwrap();
    env.wait_state("ws2008-sp2", "busy", State::RebootPending)
        .await;

    // `off` is switched off and not heard from for an hour.
    let status = env.agent("off").sigterm().await;
    assert!(status.success() || status.code().is_none(), "{status:?}");
    tokio::time::sleep(Duration::from_secs(2)).await; // its last long poll (1 s) has ended
    env.admin()
        .clock(&ClockChange {
            set_ms: None,
            advance_ms: Some(3_600_000),
        })
        .await
        .unwrap();
    let after = env.now().await;
    env.wait(
        "the running agents to be seen after the clock moved",
        || async {
            let ms = env.admin().machines().await.unwrap();
            ["busy", "idle"].iter().all(|h| {
                ms.iter()
                    .any(|m| m.hostname == *h && m.last_seen_ms >= after)
            })
        },
    )
    .await;

    let set = env
        .admin()
        .set_policy(&policy(
            "group: ops\nwindows:\n  - { start: '0 3 * * SUN', duration: 2h, time_zone: Asia/Tokyo }\n",
        ))
        .await
        .unwrap();
    let code = |h: &str| set.machines.iter().find(|m| m.hostname == h).unwrap().code;
    assert_eq!(
        (code("busy"), code("off"), code("idle")),
        (Some(Code::W15), Some(Code::W16), None),
        "{set:#?}"
    );
    let wanted = set.version;

    // The idle agent takes the setting at once and reports it back.
    env.wait("idle to report the new setting", || async {
        env.settings().await["idle"].applied == wanted
    })
    .await;
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.agent("idle").root.join("time-setting.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["version"], wanted);
    assert_eq!(kept["policies"][0]["windows"][0]["time_zone"], "Asia/Tokyo");

    // The busy one keeps its old setting while it runs; `off` has none. Results say why.
    let_agents_poll().await;
    let st = env.settings().await;
    assert_eq!((st["busy"].applied, st["busy"].code), (0, Some(Code::W15)));
    assert_eq!((st["off"].applied, st["off"].code), (0, Some(Code::W16)));
    let o = env.server.cli(&["results"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("W15 The machine is running an auto-update or a scenario")
            && text.contains("W16 Configuring the machine failed"),
        "{text}"
    );
    let o = env.server.cli(&["results", "--lang", "ja"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("自動更新時間設定はクライアントの再起動後に有効になります"),
        "{o:?}"
    );

    // The busy agent restarts: it has the setting from its start. `off` gets it at its next start.
    env.agent("busy").sigterm().await;
    env.agent("busy").start();
    env.agent("off").start();
    env.wait(
        "busy and off to report the setting after their restarts",
        || async {
            let st = env.settings().await;
            st["busy"].applied == wanted && st["off"].applied == wanted
        },
    )
    .await;
    let o = env.server.cli(&["results"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("up to date").count(), 3, "{text}");
}
both_backends!(time_settings_give_w15_to_busy_and_w16_to_unreachable_agents);

async fn automatic_update_from_the_cli_prefilters_and_unassigns(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    s.publish_sample("au-app").await;
    let dir = format!("{}/packages/ws2008-sp2", env!("CARGO_MANIFEST_DIR"));
    let o = s.cli(&["package", "publish", &dir, "--key", s.key.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    // Older simulated Debian agents (no session: never sent settings).
    let agents = s.enroll(2, "linux", Behaviour::Apply).await;
    let f = s.path().join("linux.yaml");
    std::fs::write(&f, "group: linux\ncheck_in_spread: 0s\n").unwrap();
    let o = s.cli(&["--json", "schedule", "set", f.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let set: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(set[0]["machines"].as_array().unwrap().len(), 2, "{set}");
    for p in ["au-app", "ws2008-sp2"] {
        let o = s.cli(&["autoupdate", "assign", p, "--group", "linux"]);
        assert!(o.status.success(), "{o:?}");
    }
    let o = s.cli(&["--json", "autoupdate", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // The Windows service pack is not for Debian machines: the inventory pre-filter gives them
    // no delivery. The application is delivered with no scenario run, and applied.
    for a in &agents {
        let w = a.poll(AgentState::Idle, 2000).await.unwrap().expect("work");
        assert_eq!(w.package_id, "au-app");
        assert!(
            w.policy.max_attempts == 0,
            "re-delivered until applied: {w:?}"
        );
    }
    let rows = s
        .admin()
        .results(&ResultsQuery {
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.package_id == "au-app"));

    // Unassigned: what has not started does not start. A third machine joining gets nothing.
    let o = s.cli(&["autoupdate", "unassign", "au-app", "--group", "linux"]);
    assert!(o.status.success(), "{o:?}");
    let late = s.enroll(1, "linux", Behaviour::Apply).await;
    let w = late[0].poll(AgentState::Idle, 2500).await.unwrap();
    assert!(w.is_none(), "{w:?}");
    let o = s.cli(&["autoupdate", "unassign", "au-app", "--group", "linux"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not assigned"),
        "{o:?}"
    );
}
both_backends!(automatic_update_from_the_cli_prefilters_and_unassigns);
