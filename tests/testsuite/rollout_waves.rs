//! Rollouts with real agents (emulated Windows Server 2008 endpoints) and a real server: the
//! pilot gates the next wave, and a failing pilot stops the rollout by itself. SQLite and
//! PostgreSQL.

use crate::common::agent_harness::AgentProc;
use crate::common::server_harness::{Backend, TestServer, both_backends};
use crate::common::web_client;
use patchcast::transport::admin_api::{Admin, ResultsQuery};
use patchcast::transport::schedule_api::RolloutStatus;
use std::time::{Duration, Instant};

fn profile(hostname: &str, extra: &str) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: en\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: 21474836480\n{extra}"
    )
}

async fn enroll(s: &TestServer, group: &str, hostname: &str, extra: &str) -> AgentProc {
    let token = s.group_token(group).await;
    let mut a = AgentProc::new(&s.path().join("agents").join(hostname));
    std::fs::write(a.root.join("endpoint.yaml"), profile(hostname, extra)).unwrap();
    let (ok, out) = a.enroll(&s.url, &token, &s.fingerprint).await;
    assert!(ok, "enroll {hostname}: {out}");
    a.start();
    a
}

/// Starts a rollout from YAML text through the CLI; returns its id.
fn start(s: &TestServer, yaml: &str) -> String {
    let f = s.path().join(format!("rollout-{}.yaml", rand_suffix()));
    std::fs::write(&f, yaml).unwrap();
    let o = s.cli(&["rollout", "start", f.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn rand_suffix() -> String {
    patchcast::server::random_hex(4).unwrap()
}

async fn wait(
    admin: &Admin,
    id: &str,
    agents: &[AgentProc],
    what: &str,
    cond: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = admin.rollout(id).await.unwrap();
        if cond(&st) {
            return st;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!(
                "timed out waiting for {what}: {st:#?}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn the_pilot_gates_the_waves_and_failures_stop_the_rollout(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    for p in ["ws2008-sp2", "ms10-046-ws2008-multi"] {
        let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
        let o = s.cli(&["package", "publish", &dir, "--key", s.key.to_str().unwrap()]);
        assert!(o.status.success(), "publish {p}: {o:?}");
    }
    // pilot-2's installer of the MS10-046 HotFix fails (exit code 1).
    let agents = vec![
        enroll(&s, "pilot", "pilot-1", "").await,
        enroll(
            &s,
            "pilot",
            "pilot-2",
            "exit_codes: { ms10-046-ws2008-multi: 1 }\n",
        )
        .await,
        enroll(&s, "branch", "branch-1", "").await,
        enroll(&s, "branch", "branch-2", "").await,
    ];
    let admin = s.admin();

    // A rollout the pilot clears: the branch wave starts only after it did.
    let id = start(
        &s,
        "name: sp2\npackages: [ws2008-sp2]\npilot: { group: pilot, success_threshold: 100% }\nwaves: [{ group: branch }]\n",
    );
    // Regression (a race in this test): a fast pilot may have cleared its gate before this
    // first look, so the branch wave is either still waiting with nothing, or open behind a
    // pilot that has fully applied, never open before.
    let st = admin.rollout(&id).await.unwrap();
    if st.waves[1].gate == "waiting" {
        assert_eq!(st.waves[1].total, 0, "{st:#?}");
    } else {
        assert_eq!(st.waves[0].applied_permille, 1000, "{st:#?}");
    }
    let st = wait(&admin, &id, &agents, "the sp2 rollout to complete", |st| {
        st.state == "completed"
    })
    .await;
    let completed = id.clone();
    assert_eq!(
        st.waves.iter().map(|w| w.applied).collect::<Vec<_>>(),
        vec![2, 2],
        "{st:#?}"
    );
    let rows = admin
        .results(&ResultsQuery {
            package: Some("ws2008-sp2".into()),
            history: true,
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries;
    let pilot_done = rows
        .iter()
        .filter(|r| r.hostname.starts_with("pilot"))
        .map(|r| r.updated_at_ms)
        .max()
        .unwrap();
    let branch_first = rows
        .iter()
        .filter(|r| r.hostname.starts_with("branch"))
        .flat_map(|r| r.history.iter().map(|h| h.at_ms))
        .min()
        .unwrap();
    assert!(
        branch_first >= pilot_done,
        "the branch wave moved before the pilot was applied: {rows:#?}"
    );

    // A rollout whose pilot fails half its deliveries, over a 20% limit: it stops by itself
    // and the branch wave never starts.
    let id = start(
        &s,
        "name: ms10-046\npackages: [ms10-046-ws2008-multi]\npilot: { group: pilot, success_threshold: 100% }\nwaves: [{ group: branch }]\nfailure_limit: 20%\nmax_attempts: 1\n",
    );
    let st = wait(&admin, &id, &agents, "the failing rollout to stop", |st| {
        st.state == "stopped"
    })
    .await;
    assert!(
        st.reason.contains("wave 0 (pilot) failed 1 of 2"),
        "{st:#?}"
    );
    assert_eq!(st.waves[0].failed, 1);
    assert_eq!(
        (st.waves[1].gate.as_str(), st.waves[1].total),
        ("stopped", 0)
    );
    let o = s.cli(&["rollout", "status", &id]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("stopped: wave 0 (pilot) failed 1 of 2"),
        "{text}"
    );
    let o = s.cli(&["--json", "rollout", "status", &id]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["waves"][1]["gate"], "stopped");

    // The web console's page of any wave's scenario shows every wave with its gate.
    let password = "a console password";
    let added = web_client::add_account(&s.data, "alice", password);
    assert!(added.status.success(), "{added:?}");
    let mut c = web_client::WebClient::new(&s.url, &s.fingerprint);
    let r = c.sign_in("alice", password).await;
    assert_eq!(r.status, reqwest::StatusCode::SEE_OTHER, "{}", r.body);
    let page = c.get(&format!("/scenarios/{id}:w0")).await;
    assert_eq!(page.status, reqwest::StatusCode::OK, "{}", page.body);
    let waves = &page.body[page.body.find("id=\"wave-gates\"").expect("a waves table")..];
    let waves = &waves[..waves.find("</table>").unwrap()];
    let rows: Vec<&str> = waves.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "{waves}");
    assert!(rows[0].contains("0 · pilot"), "{waves}");
    assert!(rows[1].contains("1 · branch"), "{waves}");
    for row in &rows {
        assert!(row.contains("<td class=\"gate\">stopped</td>"), "{waves}");
    }
    assert!(
        rows[0].contains("failed 1 of 2"),
        "the pilot's gate says why: {waves}"
    );
    let page = c.get(&format!("/scenarios/{completed}:w0")).await;
    assert_eq!(page.status, reqwest::StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.body.matches("<td class=\"gate\">passed</td>").count(),
        2,
        "both waves of the completed rollout passed: {}",
        page.body
    );
}
both_backends!(the_pilot_gates_the_waves_and_failures_stop_the_rollout);
