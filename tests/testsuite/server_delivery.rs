//! Scenarios through the real `patchcast server` with simulated agents speaking the real
//! protocol: applied everywhere, the loop breaker, an offline machine, report idempotency,
//! and the results/status CLI output. Each test runs on SQLite and on PostgreSQL.

use crate::common::server_harness;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::{Event, Execution, State};
use patchcast::core::errors::Code;
use patchcast::core::identify::Verdict;
use patchcast::loadgen::{Behaviour, SimAgent};
use patchcast::transport::admin_api::{Admin, ScenarioStatus};
use patchcast::transport::protocol::{AgentState, Detail};

/// Every agent polls and works until the scenario is done (each poll either gets work or
/// returns at once when there is none for it).
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

async fn scenario_applies_on_three_agents(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-one").await;
    s.publish_sample("pkg-two").await;
    let agents = s.enroll(3, "fleet", Behaviour::Apply).await;
    let admin = s.admin();
    let mut sc = scenario("three", "fleet", &["pkg-one", "pkg-two"]);
    sc.max_concurrent = Some(2);
    let created = admin.run_scenario(&sc).await.unwrap();
    assert_eq!(created.deliveries, 6);
    let st = drive(&admin, &created.id, &agents).await;
    assert_eq!(st.counts.get("applied"), Some(&6), "{:?}", st.counts);
    for d in &st.deliveries {
        assert_eq!(d.attempts, 1);
        assert_eq!(d.detail.exit_code, Some(0));
    }
    // Order per machine: pkg-two was dispatched only after pkg-one was applied there.
    let r = admin
        .results(&patchcast::transport::admin_api::ResultsQuery {
            history: true,
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for m in &agents {
        let mine: Vec<_> = r
            .deliveries
            .iter()
            .filter(|d| d.machine_id == m.machine_id)
            .collect();
        let one_done = mine
            .iter()
            .find(|d| d.package_id == "pkg-one")
            .unwrap()
            .history
            .last()
            .unwrap()
            .at_ms;
        let two_start = mine
            .iter()
            .find(|d| d.package_id == "pkg-two")
            .unwrap()
            .history
            .first()
            .unwrap()
            .at_ms;
        assert!(one_done <= two_start);
    }
    assert_eq!(r.packages.len(), 2);
    assert!(
        r.packages
            .iter()
            .all(|p| p.applied == 3 && p.in_progress == 0)
    );
}
both_backends!(scenario_applies_on_three_agents);

async fn broken_rule_ends_in_loop_detected(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-broken").await;
    let rule = "file /opt/app/app.bin sha256 equals 00ff…".to_string();
    let agents = s
        .enroll(1, "lab", Behaviour::NeverVerifies { rule: rule.clone() })
        .await;
    let admin = s.admin();
    let created = admin
        .run_scenario(&scenario("broken", "lab", &["pkg-broken"]))
        .await
        .unwrap();
    let st = drive(&admin, &created.id, &agents).await;
    let d = &st.deliveries[0];
    assert_eq!(d.state, State::LoopDetected { rule: rule.clone() });
    assert_eq!(
        (d.attempts, d.unverified_runs, d.last_code),
        (3, 3, Some(Code::E24))
    );
    let rendered = d.rendered.as_ref().unwrap();
    assert!(
        rendered.message.contains(&rule) || rendered.remedy.contains(&rule),
        "the rule is named: {rendered:?}"
    );

    let r = admin
        .results(&patchcast::transport::admin_api::ResultsQuery {
            history: true,
            lang: "ja".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let h = &r.deliveries[0].history;
    let verifies = h.iter().filter(|e| e.event["event"] == "verified").count();
    assert_eq!(verifies, 3, "three runs that did not verify");
    assert_eq!(h.last().unwrap().state, "loop_detected");
    assert_eq!(h.last().unwrap().code, Some(Code::E24));
    assert_eq!(r.packages[0].not_applied, 1);
    // Rendered in Japanese when asked.
    assert!(
        r.deliveries[0]
            .rendered
            .as_ref()
            .unwrap()
            .message
            .chars()
            .any(|c| c > '\u{3000}')
    );
}
both_backends!(broken_rule_ends_in_loop_detected);

async fn offline_machine_gets_its_delivery_when_back(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-late").await;
    let agents = s.enroll(3, "site", Behaviour::Apply).await;
    let admin = s.admin();
    let created = admin
        .run_scenario(&scenario("late", "site", &["pkg-late"]))
        .await
        .unwrap();
    // The third machine is offline: only the first two poll.
    let online = &agents[..2];
    loop {
        let st = admin.status(&created.id, "en").await.unwrap();
        if st.counts.get("applied") == Some(&2) {
            let off = st
                .deliveries
                .iter()
                .find(|d| d.machine_id == agents[2].machine_id)
                .unwrap();
            assert_eq!(
                off.state,
                State::Pending,
                "nothing is sent to a machine that is not there"
            );
            assert_eq!(off.attempts, 0);
            break;
        }
        for a in online {
            a.step(50).await.unwrap();
        }
    }
    // It comes back: its first poll gets the work.
    let w = agents[2]
        .poll(AgentState::Idle, 1000)
        .await
        .unwrap()
        .expect("work waiting for the returning machine");
    agents[2].carry_out(&w).await.unwrap();
    let st = admin.status(&created.id, "en").await.unwrap();
    assert!(st.done);
    assert_eq!(st.counts.get("applied"), Some(&3));
}
both_backends!(offline_machine_gets_its_delivery_when_back);

async fn report_seq_is_idempotent(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-seq").await;
    let agents = s.enroll(1, "one", Behaviour::Apply).await;
    let a = &agents[0];
    let admin = s.admin();
    let created = admin
        .run_scenario(&scenario("seq", "one", &["pkg-seq"]))
        .await
        .unwrap();
    let w = a.poll(AgentState::Idle, 1000).await.unwrap().unwrap();
    assert_eq!(w.attempt, 1);
    let probed = Event::Probed {
        verdict: Verdict::NotApplied,
    };
    assert!(
        a.report(&w, 1, probed.clone(), Detail::default())
            .await
            .unwrap()
            .applied
    );
    assert!(
        !a.report(&w, 1, probed, Detail::default())
            .await
            .unwrap()
            .applied,
        "a repeat is acknowledged, not applied"
    );
    assert!(
        a.report(&w, 2, Event::Transferred, Detail::default())
            .await
            .unwrap()
            .applied
    );
    // A repeated seq with another event does not move the delivery either.
    let exec = Event::Executed {
        execution: Execution::Succeeded { code: 0 },
    };
    assert!(
        !a.report(&w, 2, exec.clone(), Detail::default())
            .await
            .unwrap()
            .applied
    );
    let history = |st: &ScenarioStatus| st.deliveries[0].clone();
    let st = admin.status(&created.id, "en").await.unwrap();
    assert_eq!(history(&st).state, State::Executing);
    // A report for an attempt that does not exist yet is refused (409), nothing recorded.
    let mut future = w.clone();
    future.attempt = 2;
    assert!(
        a.report(&future, 3, exec.clone(), Detail::default())
            .await
            .is_err()
    );
    assert!(
        a.report(&w, 3, exec, Detail::default())
            .await
            .unwrap()
            .applied
    );
    // Verified applied, then the same report again.
    let ok = Event::Verified {
        verdict: Verdict::Applied,
        failing_rule: None,
    };
    assert!(
        a.report(&w, 4, ok.clone(), Detail::default())
            .await
            .unwrap()
            .applied
    );
    assert!(
        !a.report(&w, 4, ok, Detail::default())
            .await
            .unwrap()
            .applied
    );
    let r = admin
        .results(&patchcast::transport::admin_api::ResultsQuery {
            history: true,
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let h = &r.deliveries[0].history;
    let seqs: Vec<u32> = h.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![0, 1, 2, 3, 4],
        "dispatch, then each seq exactly once"
    );
    assert_eq!(r.deliveries[0].state, State::Applied);
    // Another machine cannot report on this delivery.
    let other = s.enroll(1, "two", Behaviour::Apply).await;
    assert!(
        other[0]
            .report(&w, 5, Event::NoReply, Detail::default())
            .await
            .is_err()
    );
}
both_backends!(report_seq_is_idempotent);

async fn results_and_status_cli_shapes(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-cli-a").await;
    let agents = s.enroll(2, "cli", Behaviour::Apply).await;
    // A scenario file with a typo is refused with its position.
    let bad = s.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\npackages: [pkg-cli-a]\ntargets: { groups: [cli] }\noptions: { max_concurent: 1 }\n").unwrap();
    let o = s.cli(&["scenario", "run", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.yaml:4:"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let file = s.path().join("cli.yaml");
    std::fs::write(&file, "name: cli run\npackages: [pkg-cli-a]\ntargets:\n  groups: [cli]\noptions:\n  max_concurrent: 1\n  retry: { delay: 0s }\n").unwrap();
    let o = s.cli(&["scenario", "run", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(id.starts_with("s-"), "{id}");
    drive(&s.admin(), &id, &agents).await;

    let o = s.cli(&["scenario", "status", &id, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["done"], true);
    assert_eq!(st["counts"]["applied"], 2);

    let o = s.cli(&["results", "--json", "--history"]);
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ds = r["deliveries"].as_array().unwrap();
    assert_eq!(ds.len(), 2);
    for d in ds {
        for key in [
            "machine_id",
            "hostname",
            "package_id",
            "state",
            "attempts",
            "detail",
            "history",
        ] {
            assert!(d.get(key).is_some(), "results --json has {key}: {d}");
        }
        assert_eq!(d["state"]["state"], "applied");
        assert_eq!(d["history"].as_array().unwrap().len(), 5);
    }
    assert_eq!(r["packages"][0]["applied"], 2);

    // --watch returns once the scenario is done.
    let o = s.cli(&["scenario", "status", &id, "--watch", "--json"]);
    assert!(o.status.success());
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["done"], true);

    // Token, machine and group commands.
    let o = s.cli(&[
        "token", "create", "--group", "later", "--uses", "1", "--json",
    ]);
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(t["token"].as_str().unwrap().starts_with("pcenr_"));
    let o = s.cli(&["machine", "label", "cli-0", "canary"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = s.cli(&["group", "create", "canaries", "--label", "canary", "--json"]);
    let g: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(g["resolved"].as_array().unwrap().len(), 1);
    let o = s.cli(&["machine", "list", "--json"]);
    let ms: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ms.as_array().unwrap().len(), 2);
    let o = s.cli(&["group", "list"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("canaries") && text.contains("later") && text.contains("cli"),
        "{text}"
    );

    let o = s.cli(&["results", "--csv", "--machine", "cli-0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "machine_id,hostname,package_id,state,detail,attempts,last_code,exit_code,message,remedy"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].contains(",cli-0,pkg-cli-a,applied,,1,,0,"),
        "{}",
        lines[1]
    );

    let o = s.cli(&["results"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("PACKAGE") && text.contains("pkg-cli-a"),
        "{text}"
    );
    // Without a server to talk to, the error names the ways to give one.
    let o = std::process::Command::new(server_harness::bin())
        .args(["results"])
        .env_remove("PATCHCAST_DATA")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--data DIR"));
}
both_backends!(results_and_status_cli_shapes);

async fn silent_agent_gets_no_reply_then_retry(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--no-reply-margin", "1s"]).await else {
        return;
    };
    s.publish_sample("pkg-quiet").await;
    let agents = s.enroll(1, "quiet", Behaviour::Apply).await;
    let a = &agents[0];
    let admin = s.admin();
    let mut sc = scenario("quiet", "quiet", &["pkg-quiet"]);
    sc.timeout_secs = Some(1);
    let created = admin.run_scenario(&sc).await.unwrap();
    let w = a.poll(AgentState::Idle, 1000).await.unwrap().unwrap();
    a.report(
        &w,
        1,
        Event::Probed {
            verdict: Verdict::NotApplied,
        },
        Detail::default(),
    )
    .await
    .unwrap();
    // The agent goes quiet; the server's deadline (timeout + margin) passes.
    let d = loop {
        let st = admin.status(&created.id, "en").await.unwrap();
        let d = st.deliveries[0].clone();
        if d.state != State::Transferring {
            break d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(d.state, State::AwaitingRetry);
    // Silent while transferring: the agent was lost mid-delivery (E05); silent after the
    // transfer would be E13.
    assert_eq!(d.last_code, Some(Code::E05));
    // A late report of the abandoned attempt moves nothing.
    assert!(
        a.report(&w, 2, Event::Transferred, Detail::default())
            .await
            .is_err()
    );
    // Back again: attempt 2 is handed out and applies.
    let w2 = a.poll(AgentState::Idle, 1000).await.unwrap().unwrap();
    assert_eq!(w2.attempt, 2);
    a.carry_out(&w2).await.unwrap();
    let st = admin.status(&created.id, "en").await.unwrap();
    assert_eq!(st.deliveries[0].state, State::Applied);
}
both_backends!(silent_agent_gets_no_reply_then_retry);

/// Polls arriving together are dispatched in one group (`server::batch`): the group reads
/// once and writes at the end, yet `max_concurrent` still counts the machines the group
/// itself just started, and a machine polling twice at once gets the one work item twice
/// (the lost-reply case), dispatched once.
async fn grouped_dispatches_keep_max_concurrent_and_dispatch_once(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-group").await;
    let agents = s.enroll(40, "grouped", Behaviour::Apply).await;
    let admin = s.admin();
    let mut sc = scenario("grouped", "grouped", &["pkg-group"]);
    sc.max_concurrent = Some(5);
    let created = admin.run_scenario(&sc).await.unwrap();
    // Every agent polls twice at once: 80 polls in flight together.
    let polls = agents
        .iter()
        .flat_map(|a| [a.poll(AgentState::Idle, 0), a.poll(AgentState::Idle, 0)]);
    let works: Vec<_> = futures_util::future::join_all(polls)
        .await
        .into_iter()
        .map(|w| w.unwrap())
        .collect();
    let mut by_machine: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for (i, w) in works.iter().enumerate() {
        if let Some(w) = w {
            by_machine
                .entry(agents[i / 2].machine_id.as_str())
                .or_default()
                .push(format!("{} attempt {}", w.delivery_id, w.attempt));
        }
    }
    assert_eq!(by_machine.len(), 5, "machines given work: {by_machine:#?}");
    for got in by_machine.values() {
        assert!(
            got.len() <= 2 && got.iter().all(|g| g == &got[0]),
            "{got:?}"
        );
    }
    let rows = crate::common::agent_harness::rows_with_history(&admin, &created.id).await;
    let dispatched: usize = rows
        .iter()
        .map(|r| {
            r.history
                .iter()
                .filter(|h| h.event["event"] == "dispatched")
                .count()
        })
        .sum();
    assert_eq!(dispatched, 5, "{rows:#?}");
    // And the rollout goes on to the end, five at a time.
    let st = drive(&admin, &created.id, &agents).await;
    assert_eq!(st.counts.get("applied"), Some(&40), "{:?}", st.counts);
}
both_backends!(grouped_dispatches_keep_max_concurrent_and_dispatch_once);
