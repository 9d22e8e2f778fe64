//! Transfer caps and the bandwidth limit with a real server and real agents (emulated
//! Windows Server 2008 endpoints), and the next check-in slot a poll reply carries.

use crate::common::agent_harness::AgentProc;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::loadgen::Behaviour;
use patchcast::transport::admin_api::{DeliveryRow, ResultsQuery};
use patchcast::transport::protocol::{self as proto, AgentState, Poll, PollResponse};
use patchcast::transport::schedule_api::ClockChange;
use std::time::{Duration, Instant};

async fn fleet(s: &TestServer, group: &str, n: usize) -> Vec<AgentProc> {
    let token = s.group_token(group).await;
    let mut out = Vec::new();
    for i in 0..n {
        let h = format!("{group}-{i}");
        let mut a = AgentProc::new(&s.path().join("agents").join(&h));
        std::fs::write(
            a.root.join("endpoint.yaml"),
            format!("os: windows-server-2008\narch: x86\nlanguage: en\nhostname: {h}\nservice_pack: \"1.0\"\nfree_disk_bytes: 21474836480\n"),
        )
        .unwrap();
        let (ok, out_) = a.enroll(&s.url, &token, &s.fingerprint).await;
        assert!(ok, "{out_}");
        a.start();
        out.push(a);
    }
    out
}

fn publish(s: &TestServer, p: &str) {
    let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
    let o = s.cli(&["package", "publish", &dir, "--key", s.key.to_str().unwrap()]);
    assert!(o.status.success(), "publish {p}: {o:?}");
}

async fn all_applied(s: &TestServer, id: &str, agents: &[AgentProc]) -> Vec<DeliveryRow> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = s.admin().status(id, "en").await.unwrap();
        if st.done {
            assert!(
                st.deliveries.iter().all(|d| d.state == State::Applied),
                "{st:#?}"
            );
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!("not all applied: {st:#?}\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.admin()
        .results(&ResultsQuery {
            scenario: Some(id.into()),
            history: true,
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries
}

/// [start, end) of the delivery's time in `transferring` (server time).
fn transferring(r: &DeliveryRow) -> (i64, i64) {
    let start = r
        .history
        .iter()
        .position(|h| h.state == "\"transferring\"" || h.state == "transferring")
        .unwrap_or_else(|| panic!("never transferring: {r:#?}"));
    let end = r.history[start..]
        .iter()
        .find(|h| !h.state.contains("transferring"))
        .unwrap_or_else(|| panic!("never left transferring: {r:#?}"));
    (r.history[start].at_ms, end.at_ms)
}

async fn a_server_cap_of_one_transfer_serialises_the_fleet(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--poll", "1s", "--max-transfers", "1"]).await
    else {
        return;
    };
    publish(&s, "ws2008-sp2");
    let agents = fleet(&s, "capped", 3).await;
    let id = s
        .admin()
        .run_scenario(&scenario("capped", "capped", &["ws2008-sp2"]))
        .await
        .unwrap()
        .id;
    let rows = all_applied(&s, &id, &agents).await;
    let mut spans: Vec<(i64, i64)> = rows.iter().map(transferring).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two transfers overlapped under --max-transfers 1: {spans:?}"
        );
    }
}
both_backends!(a_server_cap_of_one_transfer_serialises_the_fleet);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_download_arrives_whole() {
    let s = TestServer::start(
        Backend::Sqlite,
        &["--poll", "1s", "--transfer-rate", "4096"],
    )
    .await
    .unwrap();
    publish(&s, "ws2008-sp2");
    let size = s.admin().packages().await.unwrap()[0].archive_size;
    // More than the bucket's one second: the stream is really paced.
    assert!(size > 4096, "{size}");
    let agents = fleet(&s, "slow", 1).await;
    let id = s
        .admin()
        .run_scenario(&scenario("slow", "slow", &["ws2008-sp2"]))
        .await
        .unwrap()
        .id;
    // The agent checks the archive's hash, signature and every entry before installing.
    let rows = all_applied(&s, &id, &agents).await;
    assert_eq!(rows[0].state, State::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_reply_names_the_machines_next_slot() {
    let s = TestServer::start(Backend::Sqlite, &["--poll", "1s", "--test-clock"])
        .await
        .unwrap();
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    s.admin()
        .clock(&ClockChange {
            set_ms: Some(ms("2026-11-21T00:00:00Z")),
            advance_ms: None,
        })
        .await
        .unwrap();
    let agents = s.enroll(20, "spread", Behaviour::Apply).await;
    let p = patchcast::model::group_policy::load(
        "g.yaml",
        "group: spread\nwindows:\n  - { start: '0 2 * * *', duration: 2h }\ncheck_in_spread: 30m\n",
    )
    .unwrap();
    s.admin().set_policy(&p).await.unwrap();
    let mut slots = std::collections::BTreeSet::new();
    for a in &agents {
        let r: PollResponse = a
            .client
            .post(
                proto::POLL,
                &Poll {
                    state: AgentState::Idle,
                    wait_ms: 0,
                    ..Poll::default()
                },
            )
            .await
            .unwrap();
        let slot = r.next_check_in_ms.expect("a slot");
        assert!(
            (ms("2026-11-21T02:00:00Z")..ms("2026-11-21T02:30:00Z")).contains(&slot),
            "{slot}"
        );
        slots.insert(slot);
    }
    // Twenty machines, twenty different starts.
    assert!(slots.len() >= 18, "{slots:?}");
}
