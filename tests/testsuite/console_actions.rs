//! Administrators' actions through the CLI, against a real server and real agents (emulated
//! Windows Server 2008 endpoints), SQLite and PostgreSQL: `delivery cancel`, `scenario
//! cancel`, `rollout pause|resume|abort`; a cancelled delivery is never handed out to its
//! agent, a paused rollout's delivery does not start until it is resumed; and `audit` lists
//! each action with who did it. The console's buttons run the same actions (`web_console`).

use crate::common::agent_harness::AgentProc;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::transport::admin_api::{ActionDone, AuditEntry, ResultsQuery};
use std::time::{Duration, Instant};

const SP2: &str = "ws2008-sp2";
const HOTFIX: &str = "ms10-046-ws2008-multi";

fn profile(hostname: &str) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: en\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 21474836480\n"
    )
}

/// An enrolled agent, not started: its deliveries wait until `start`.
async fn enroll(s: &TestServer, group: &str, hostname: &str) -> AgentProc {
    let token = s.group_token(group).await;
    let a = AgentProc::new(&s.path().join("agents").join(hostname));
    std::fs::write(a.root.join("endpoint.yaml"), profile(hostname)).unwrap();
    let (ok, out) = a.enroll(&s.url, &token, &s.fingerprint).await;
    assert!(ok, "enroll {hostname}: {out}");
    a
}

/// The JSON an action verb printed, after checking it succeeded.
fn done(s: &TestServer, args: &[&str]) -> ActionDone {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = s.cli(&all);
    assert!(o.status.success(), "{args:?}: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {o:?}"))
}

/// A refused action exits 1 and says why.
fn refused(s: &TestServer, args: &[&str], why: &str) {
    let o = s.cli(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
    assert!(err.contains(why), "{args:?}: {err}");
}

async fn rows_of(
    s: &TestServer,
    scenario: &str,
) -> Vec<patchcast::transport::admin_api::DeliveryRow> {
    s.admin()
        .results(&ResultsQuery {
            scenario: Some(scenario.into()),
            history: true,
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries
}

async fn wait_state(s: &TestServer, scenario: &str, state: &str, agents: &[&AgentProc]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = rows_of(s, scenario).await;
        if !rows.is_empty() && rows.iter().all(|r| r.state.name() == state) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!(
                "{scenario} never became {state}: {rows:#?}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn actions_from_the_cli_are_audited(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    for p in [SP2, HOTFIX] {
        let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
        let o = s.cli(&["package", "publish", &dir, "--key", s.key.to_str().unwrap()]);
        assert!(o.status.success(), "publish {p}: {o:?}");
    }
    let mut office = enroll(&s, "office", "office-1").await;
    let mut pilot = enroll(&s, "pilot", "pilot-1").await;
    let _late = enroll(&s, "late", "late-1").await;
    let admin = s.admin();

    // A delivery that waits for its agent is cancelled; twice is refused (409 → exit 1).
    let s1 = admin
        .run_scenario(&scenario("sp2 for office", "office", &[SP2]))
        .await
        .unwrap()
        .id;
    let d1 = rows_of(&s, &s1).await[0].delivery_id.clone();
    let d = done(&s, &["delivery", "cancel", &d1]);
    assert_eq!(
        (d.action.as_str(), d.target.as_str(), d.state.as_str()),
        ("delivery.cancel", d1.as_str(), "cancelled")
    );
    refused(
        &s,
        &["delivery", "cancel", &d1],
        "only a pending or awaiting-retry delivery is cancelled",
    );
    refused(&s, &["delivery", "cancel", "d-nonexistent"], "no delivery");
    // A cancelled delivery is not retried either: retry is for failed ones.
    refused(&s, &["delivery", "retry", &d1], "is cancelled");

    // A whole scenario: its waiting deliveries.
    let s2 = admin
        .run_scenario(&scenario("hotfix for office", "office", &[HOTFIX]))
        .await
        .unwrap()
        .id;
    let d = done(&s, &["scenario", "cancel", &s2]);
    assert_eq!(d.detail, "1 waiting deliveries cancelled");
    let st = admin.status(&s2, "en").await.unwrap();
    assert!(
        st.done,
        "every delivery of a cancelled scenario is finished: {st:#?}"
    );
    assert_eq!(st.counts.get("cancelled"), Some(&1), "{st:#?}");

    // The agent starts: a third scenario's delivery of the same package is applied; the
    // cancelled ones are never handed out (no attempt, no dispatch in their history).
    let s3 = admin
        .run_scenario(&scenario("sp2 again", "office", &[SP2]))
        .await
        .unwrap()
        .id;
    office.start();
    wait_state(&s, &s3, "applied", &[&office]).await;
    for sc in [&s1, &s2] {
        for r in rows_of(&s, sc).await {
            assert_eq!(r.state.name(), "cancelled", "{r:#?}");
            assert_eq!(r.attempts, 0, "never handed out: {r:#?}");
            let events: Vec<&str> = r.history.iter().map(|h| h.name()).collect();
            assert_eq!(events, vec!["cancel"], "{r:#?}");
        }
    }
    let o = s.cli(&["results", "--scenario", &s1]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cancelled"),
        "{o:?}"
    );

    // A rollout paused before its agent runs: its delivery does not start while paused.
    let f = s.path().join("rollout.yaml");
    std::fs::write(
        &f,
        format!("name: hotfix\npackages: [{HOTFIX}]\npilot: {{ group: pilot, success_threshold: 100% }}\n"),
    )
    .unwrap();
    let o = s.cli(&["rollout", "start", f.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let r1 = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let d = done(&s, &["rollout", "pause", &r1]);
    assert_eq!(
        (d.action.as_str(), d.state.as_str()),
        ("rollout.pause", "paused")
    );
    refused(
        &s,
        &["rollout", "pause", &r1],
        "only a running rollout is paused",
    );
    let st = admin.rollout(&r1).await.unwrap();
    assert_eq!(
        (st.state.as_str(), st.waves[0].gate.as_str()),
        ("paused", "paused")
    );
    assert!(st.reason.contains("paused by admin-token"), "{st:#?}");
    pilot.start();
    let wave = format!("{r1}:w0");
    // Several poll periods with the agent connected: the delivery stays pending.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rows = rows_of(&s, &wave).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state.name(), "pending", "paused: {rows:#?}");
    assert_eq!(rows[0].attempts, 0);
    let d = done(&s, &["rollout", "resume", &r1]);
    assert_eq!(d.state, "running");
    wait_state(&s, &wave, "applied", &[&pilot]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.rollout(&r1).await.unwrap().state != "completed" {
        assert!(Instant::now() < deadline, "the resumed rollout completes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused(&s, &["rollout", "abort", &r1], "is completed already");

    // Aborted: its waiting delivery (an agent that never runs) is cancelled.
    std::fs::write(
        &f,
        format!(
            "name: late\npackages: [{SP2}]\npilot: {{ group: late, success_threshold: 90% }}\n"
        ),
    )
    .unwrap();
    let o = s.cli(&["rollout", "start", f.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let r2 = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let d = done(&s, &["rollout", "abort", &r2]);
    assert_eq!(d.state, "aborted");
    assert!(
        d.detail.ends_with("1 waiting deliveries cancelled"),
        "{d:?}"
    );
    assert_eq!(
        rows_of(&s, &format!("{r2}:w0")).await[0].state.name(),
        "cancelled"
    );
    refused(&s, &["rollout", "resume", &r2], "only a paused one resumed");
    let o = s.cli(&["rollout", "status", &r2]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("aborted"),
        "{o:?}"
    );

    // The audit: every action, the newest first, with who and when; refusals are not in it.
    let o = s.cli(&["--json", "audit"]);
    assert!(o.status.success(), "{o:?}");
    let audit: Vec<AuditEntry> = serde_json::from_slice(&o.stdout).unwrap();
    let seen: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("rollout.abort", r2.as_str()),
            ("rollout.start", r2.as_str()),
            ("rollout.resume", r1.as_str()),
            ("rollout.pause", r1.as_str()),
            ("rollout.start", r1.as_str()),
            ("scenario.start", s3.as_str()),
            ("scenario.cancel", s2.as_str()),
            ("scenario.start", s2.as_str()),
            ("delivery.cancel", d1.as_str()),
            ("scenario.start", s1.as_str()),
        ],
        "{audit:#?}"
    );
    assert!(audit.iter().all(|e| e.actor == "admin-token"), "{audit:#?}");
    // A delivery's entry names its machine by hostname, beside the id.
    let cancel = audit
        .iter()
        .find(|e| e.action == "delivery.cancel")
        .unwrap();
    assert!(cancel.detail.contains(" on "), "{cancel:?}");
    assert!(cancel.detail.contains(" on office-1 [m-"), "{cancel:?}");
    assert!(
        audit
            .windows(2)
            .all(|w| w[0].n > w[1].n && w[0].at_ms >= w[1].at_ms)
    );
    let o = s.cli(&["--json", "audit", "--limit", "2"]);
    let two: Vec<AuditEntry> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(two, audit[..2].to_vec());
    let o = s.cli(&["audit"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.trim_start().starts_with('#')
            && text.contains("admin-token")
            && text.contains("delivery.cancel"),
        "{text}"
    );
}
both_backends!(actions_from_the_cli_are_audited);
