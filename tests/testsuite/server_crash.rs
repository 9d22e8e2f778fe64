//! The server killed with SIGKILL mid-scenario and restarted on the same address: agents carry
//! on, every in-flight delivery is recovered from the database, no result is lost, and nothing
//! is applied without a verify that said so. On SQLite and on PostgreSQL.

use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::{Event, Execution, State};
use patchcast::core::identify::Verdict;
use patchcast::loadgen::Behaviour;
use patchcast::transport::admin_api::ResultsQuery;
use patchcast::transport::protocol::{AgentState, Detail};

async fn sigkill_mid_scenario_loses_nothing(backend: Backend) {
    let Some(mut s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-crash").await;
    let agents = s.enroll(3, "crash", Behaviour::Apply).await;
    let mut sc = scenario("crash", "crash", &["pkg-crash"]);
    sc.max_concurrent = Some(2);
    let created = s.admin().run_scenario(&sc).await.unwrap();

    // Two machines are mid-delivery: one fetched and is executing, one only probed.
    let w0 = agents[0]
        .poll(AgentState::Idle, 1000)
        .await
        .unwrap()
        .unwrap();
    agents[0]
        .report(
            &w0,
            1,
            Event::Probed {
                verdict: Verdict::NotApplied,
            },
            Detail::default(),
        )
        .await
        .unwrap();
    agents[0].fetch(&w0).await.unwrap();
    agents[0]
        .report(&w0, 2, Event::Transferred, Detail::default())
        .await
        .unwrap();
    let w1 = agents[1]
        .poll(AgentState::Idle, 1000)
        .await
        .unwrap()
        .unwrap();
    agents[1]
        .report(
            &w1,
            1,
            Event::Probed {
                verdict: Verdict::NotApplied,
            },
            Detail::default(),
        )
        .await
        .unwrap();
    // The third waits: max_concurrent is 2.
    assert!(agents[2].poll(AgentState::Idle, 0).await.unwrap().is_none());

    s.kill();
    // While the server is down the first agent's install finishes; its report waits.
    let pending = {
        let a = &agents[0];
        let w = w0.clone();
        async move {
            let exec = Detail {
                exit_code: Some(0),
                ..Detail::default()
            };
            a.report_until_heard(
                &w,
                3,
                Event::Executed {
                    execution: Execution::Succeeded { code: 0 },
                },
                exec,
            )
            .await
            .unwrap();
        }
    };
    let restart = async {
        s.spawn();
    };
    tokio::join!(pending, restart);
    assert!(
        s.banner
            .iter()
            .any(|l| l.contains("2 in-flight deliveries recovered")),
        "{:?}",
        s.banner
    );

    // The state survived: the executing and the transferring delivery are where they were.
    let admin = s.admin();
    let st = admin.status(&created.id, "en").await.unwrap();
    let state_of = |m: &str| {
        st.deliveries
            .iter()
            .find(|d| d.machine_id == m)
            .unwrap()
            .state
            .clone()
    };
    assert_eq!(state_of(&agents[0].machine_id), State::Verifying);
    assert_eq!(state_of(&agents[1].machine_id), State::Transferring);
    assert_eq!(state_of(&agents[2].machine_id), State::Pending);
    assert_eq!(
        st.counts.get("applied"),
        None,
        "nothing applied before a verify"
    );

    // The agents carry on after the restart.
    let (ev, detail) = agents[0].verify();
    assert!(agents[0].report(&w0, 4, ev, detail).await.unwrap().applied);
    agents[1].fetch(&w1).await.unwrap();
    agents[1]
        .report(&w1, 2, Event::Transferred, Detail::default())
        .await
        .unwrap();
    agents[1]
        .report(
            &w1,
            3,
            Event::Executed {
                execution: Execution::Succeeded { code: 0 },
            },
            Detail::default(),
        )
        .await
        .unwrap();
    let (ev, detail) = agents[1].verify();
    agents[1].report(&w1, 4, ev, detail).await.unwrap();
    // A report that was already recorded before the crash is recognised as a repeat.
    assert!(
        !agents[1]
            .report(
                &w1,
                1,
                Event::Probed {
                    verdict: Verdict::NotApplied
                },
                Detail::default()
            )
            .await
            .unwrap()
            .applied
    );
    assert!(
        agents[2].step(1000).await.unwrap(),
        "the third machine gets its turn"
    );

    let r = admin
        .results(&ResultsQuery {
            history: true,
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 3);
    for d in &r.deliveries {
        assert_eq!(d.state, State::Applied, "{}", d.hostname);
        assert_eq!(d.attempts, 1, "no attempt was lost or repeated");
        // Applied only ever follows a verify that said applied.
        let last = d.history.last().unwrap();
        assert_eq!(last.event["event"], "verified");
        assert_eq!(last.event["verdict"]["verdict"], "applied");
        let seqs: Vec<u32> = d.history.iter().map(|h| h.seq).collect();
        assert_eq!(
            seqs,
            vec![0, 1, 2, 3, 4],
            "every report recorded exactly once: {}",
            d.hostname
        );
    }
}
both_backends!(sigkill_mid_scenario_loses_nothing);
