//! Several `patchcast server` processes on one PostgreSQL database (issue 17, goal 3): two
//! real servers (the second given the first's identity by `patchcast server join` and its
//! content store by `--content`), real agents enrolled with both URLs and spread over them,
//! one server killed with SIGKILL mid-rollout; the rollout finishes on the other with every
//! delivery applied exactly once, and the killed server's agents fail over. Also: a change
//! made on one server wakes a long poll waiting on the other (LISTEN/NOTIFY), and a trust
//! statement accepted on one is trusted by the other.
//!
//! PostgreSQL only: SQLite is one server process's own database by design (its file, its
//! in-process write lock); several servers need the shared database, its advisory locks and
//! its notifications (`server::cluster`). The exception is the race for one concurrency
//! slot, where the hot paths run under the shared write lock and row locks: on SQLite it
//! races one server against itself.

use crate::common::agent_harness::{AgentProc, rows_with_history};
use crate::common::sample;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::web_client::WebClient;
use patchcast::core::delivery::{Event, Execution, State};
use patchcast::core::identify::Verdict;
use patchcast::loadgen::Behaviour;
use patchcast::transport::admin_api::{Admin, ScenarioStatus};
use patchcast::transport::protocol::{AgentState, Detail};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

const GROUP: &str = "multi";
/// Where the package installs, under each agent's install root.
const TOOL: &str = "/opt/multi/tool";

/// A package whose install counts its runs in `runs` beside the tool it writes (under the
/// agent's install root, `DESTDIR`), and takes a second so the rollout is under way for a
/// while.
fn package(dir: &Path) {
    use sha2::Digest;
    std::fs::create_dir_all(dir).unwrap();
    let body = "multi 1.0\n";
    let sha = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    std::fs::write(
        dir.join("install.sh"),
        "set -e\nd=\"$DESTDIR/opt/multi\"\nmkdir -p \"$d\"\necho run >> \"$d/runs\"\nsleep 1\nprintf 'multi 1.0\\n' > \"$d/tool\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("package.yaml"),
        format!(
            "id: multi-app\nkind: application\ntitle: multi\nversion: '1.0'\ntargets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\n\
             identification:\n  - file: {TOOL}\n    change: new\n    sha256: {sha}\n\
             payload: [install.sh]\ninstall:\n  command: 'sh \"{{{{payload.0}}}}\"'\n  timeout: 1m\n"
        ),
    )
    .unwrap();
}

/// Waits until `cond` holds for the scenario's status on `admin`; fails with the agents' logs
/// when it does not within two minutes.
async fn wait(
    admin: &Admin,
    id: &str,
    agents: &[AgentProc],
    what: &str,
    cond: impl Fn(&ScenarioStatus) -> bool,
) -> ScenarioStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(st) = admin.status(id, "en").await
            && cond(&st)
        {
            return st;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!(
                "{what} did not happen; agents' logs:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_of_two_servers_mid_rollout_loses_nothing_and_repeats_nothing() {
    let Some(mut a) = TestServer::start(Backend::Postgres, &["--poll", "1s"]).await else {
        return;
    };
    let b = a.join();
    assert_ne!(a.url, b.url);
    let dir = a.path().join("multi-app");
    package(&dir);
    let o = a.cli(&[
        "package",
        "publish",
        dir.to_str().unwrap(),
        "--key",
        a.key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "publish: {o:?}");

    // Six agents, each given both servers: even ones try A first, odd ones B.
    let token = a.group_token(GROUP).await;
    let mut agents = Vec::new();
    for i in 0..6 {
        let mut agent = AgentProc::new(&a.path().join(format!("agent-{i}")));
        let urls = if i % 2 == 0 {
            format!("{},{}", a.url, b.url)
        } else {
            format!("{},{}", b.url, a.url)
        };
        let (ok, out) = agent.enroll(&urls, &token, &a.fingerprint).await;
        assert!(ok, "enroll {i}: {out}");
        let prefix = agent.root.join("prefix");
        agent.start_with(&[("PATCHCAST_AGENT_INSTALL_ROOT", &prefix)]);
        agents.push(agent);
    }

    // The rollout, two at a time, started on B; A is killed once some, not all, are applied.
    let mut sc = scenario("two servers", GROUP, &["multi-app"]);
    sc.max_concurrent = Some(2);
    let id = b.admin().run_scenario(&sc).await.unwrap().id;
    let st = wait(&b.admin(), &id, &agents, "a first applied delivery", |st| {
        st.counts.get("applied").copied().unwrap_or(0) >= 1
    })
    .await;
    assert!(!st.done, "the rollout must still be under way: {st:#?}");
    a.kill();

    let st = wait(&b.admin(), &id, &agents, "the rollout's end", |st| st.done).await;
    assert_eq!(st.total, 6, "{st:#?}");
    assert_eq!(st.counts.get("applied"), Some(&6), "{st:#?}");

    // Each agent ran the installer exactly once and has the tool.
    for (i, agent) in agents.iter().enumerate() {
        let prefix = agent.root.join("prefix");
        let runs = std::fs::read_to_string(prefix.join("opt/multi/runs")).unwrap_or_default();
        assert_eq!(
            runs.lines().count(),
            1,
            "agent {i} installer runs; log:\n{}",
            agent.log()
        );
        assert_eq!(
            std::fs::read_to_string(prefix.join(TOOL.trim_start_matches('/'))).unwrap(),
            "multi 1.0\n"
        );
    }
    // One delivery per machine, each executed once and verified once in its history.
    let rows = rows_with_history(&b.admin(), &id).await;
    assert_eq!(rows.len(), 6);
    let mut machines: Vec<&str> = rows.iter().map(|r| r.machine_id.as_str()).collect();
    machines.sort();
    machines.dedup();
    assert_eq!(machines.len(), 6, "one delivery per machine");
    for r in &rows {
        assert_eq!(r.state, State::Applied, "{r:#?}");
        let count = |e: &str| r.history.iter().filter(|h| h.name() == e).count();
        assert_eq!(count("executed"), 1, "{:#?}", r.history);
        assert_eq!(count("verified"), 1, "{:#?}", r.history);
    }
    // Every agent that started on A reached B after the kill.
    for agent in agents.iter().step_by(2) {
        assert!(
            agent.log().contains("trying the next server"),
            "{}",
            agent.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_server_wakes_a_long_poll_on_the_other() {
    let Some(a) = TestServer::start(Backend::Postgres, &[]).await else {
        return;
    };
    let b = a.join();
    a.publish_sample("pkg-wake").await;
    // The agent long-polls B (for the longest wait the protocol allows); the scenario is
    // created on A. Only A's NOTIFY can end that poll with work.
    let agents = b.enroll(1, "wake", Behaviour::Apply).await;
    let agent = &agents[0];
    assert!(agent.poll(AgentState::Idle, 0).await.unwrap().is_none());
    let poll = agent.poll(
        AgentState::Idle,
        patchcast::transport::protocol::MAX_WAIT_MS,
    );
    let create = async {
        // Ordering only (the poll is waiting by then); nothing is asserted on time.
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.admin()
            .run_scenario(&scenario("wake", "wake", &["pkg-wake"]))
            .await
            .unwrap()
    };
    // Without A's NOTIFY, B would hand the work out only at the end of the 60 s poll (its
    // last look); the guard below is half of that.
    let handed_out = async {
        let created = create.await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = b.admin().status(&created.id, "en").await.unwrap();
            if !st.counts.contains_key("pending") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "B's long poll was not woken by the scenario created on A: {st:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (work, st) = tokio::join!(poll, handed_out);
    let work = work.unwrap().expect("work from B's long poll");
    assert_eq!(work.package_id, "pkg-wake");
    assert_eq!(st.total, 1);
}

/// Machines racing for the one `max_concurrent: 1` slot of each of two scenarios, each
/// polling both servers at once and reporting to either (on SQLite: one server, polled twice
/// at once): never two machines busy together in a scenario, and a machine polling both gets
/// each attempt from one dispatch (its second answer may only be the same attempt sent
/// again, never a new one). Machines done with one scenario walk only the other, so two
/// groups may meet the two scenarios in opposite orders: no group may fail as a whole
/// (a deadlock; `write_groups_retried`).
async fn racing_polls_on_two_servers_keep_one_slot_and_one_dispatch_per_attempt(backend: Backend) {
    const MACHINES: usize = 8;
    const PACKAGES: [&str; 2] = ["pkg-race", "pkg-race2"];
    let Some(a) = TestServer::start(backend, &[]).await else {
        return;
    };
    let b = (backend == Backend::Postgres).then(|| a.join());
    let b_url = b.as_ref().map_or(a.url.clone(), |b| b.url.clone());
    let agents = a.enroll(MACHINES, "race", Behaviour::Apply).await;
    let mut ids = Vec::new();
    for (i, pkg) in PACKAGES.into_iter().enumerate() {
        a.publish_sample(pkg).await;
        let mut sc = scenario(&format!("race{i}"), "race", &[pkg]);
        sc.max_concurrent = Some(1);
        ids.push(a.admin().run_scenario(&sc).await.unwrap().id);
    }

    // Per scenario, machines between receiving their work and sending the report that frees
    // the slot: a window inside the server's (dispatch committed .. that report committed).
    let busy: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
    let most: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for (i, on_a) in agents.into_iter().enumerate() {
        let on_b = on_a.via(&b_url);
        let (busy, most) = (busy.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            for _ in PACKAGES {
                let w = loop {
                    assert!(Instant::now() < deadline, "machine {i} never got its work");
                    let (x, y) = tokio::join!(
                        on_a.poll(AgentState::Idle, 1000),
                        on_b.poll(AgentState::Idle, 1000)
                    );
                    let (x, y) = (x.unwrap(), y.unwrap());
                    if let (Some(x), Some(y)) = (&x, &y) {
                        assert_eq!(
                            (&x.delivery_id, x.attempt),
                            (&y.delivery_id, y.attempt),
                            "machine {i} was dispatched twice at once"
                        );
                    }
                    if let Some(w) = x.or(y) {
                        break w;
                    }
                };
                let k = PACKAGES.iter().position(|p| *p == w.package_id).unwrap();
                let now = busy[k].fetch_add(1, SeqCst) + 1;
                most[k].fetch_max(now, SeqCst);
                let reporter = if i % 2 == 0 { &on_a } else { &on_b };
                // The attempt up to its verification (`SimAgent::carry_out` without the last step).
                let steps = [
                    Event::Probed {
                        verdict: Verdict::NotApplied,
                    },
                    Event::Transferred,
                    Event::Executed {
                        execution: Execution::Succeeded { code: 0 },
                    },
                ];
                for (seq, event) in (1..).zip(steps) {
                    let ack = reporter
                        .report_until_heard(&w, seq, event, Detail::default())
                        .await
                        .unwrap();
                    assert!(ack.applied, "machine {i}: report {seq} was not applied");
                }
                busy[k].fetch_sub(1, SeqCst);
                let (event, detail) = reporter.verify();
                let ack = reporter
                    .report_until_heard(&w, 4, event, detail)
                    .await
                    .unwrap();
                assert!(ack.applied, "machine {i}: the verification was not applied");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (k, most) in most.iter().enumerate() {
        assert_eq!(
            most.load(SeqCst),
            1,
            "more than one machine held scenario {k}'s one slot at once"
        );
    }
    for id in &ids {
        let st = a.admin().status(id, "en").await.unwrap();
        assert!(st.done, "{st:#?}");
        assert_eq!(
            st.counts.get("applied"),
            Some(&(MACHINES as u64)),
            "{st:#?}"
        );
        let rows = rows_with_history(&a.admin(), id).await;
        assert_eq!(rows.len(), MACHINES);
        for r in &rows {
            let dispatched = r
                .history
                .iter()
                .filter(|h| h.name() == "dispatched")
                .count();
            assert_eq!(
                dispatched, 1,
                "one dispatch for one attempt: {:#?}",
                r.history
            );
        }
    }
    for s in std::iter::once(&a).chain(b.as_ref()) {
        let text = WebClient::new(&s.url, &s.fingerprint)
            .get_bearer("/metrics", &s.token)
            .await
            .body;
        assert_eq!(
            sample(&text, "patchcast_write_groups_retried_total"),
            Some(0.0),
            "a group of writes failed as a whole (a deadlock?): {text}"
        );
    }
    drop(b);
}

both_backends!(racing_polls_on_two_servers_keep_one_slot_and_one_dispatch_per_attempt);

/// `patchcast key list --json` on `s`, once its serial is `serial` (within 30 s).
async fn trust_at(s: &TestServer, serial: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s.cli(&["--json", "key", "list"]);
        assert!(o.status.success(), "{o:?}");
        let view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if view["serial"] == serial {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "serial {serial} not seen: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_on_one_server_is_trusted_by_the_other() {
    let Some(a) = TestServer::start(Backend::Postgres, &[]).await else {
        return;
    };
    let b = a.join();
    let k2 = a.path().join("k2");
    let k3 = a.path().join("k3");
    for k in [&k2, &k3] {
        let o = a.cli(&["key", "generate", "--out", k.to_str().unwrap()]);
        assert!(o.status.success(), "{o:?}");
    }
    let (k2_key, k2_pub) = (k2.with_extension("key"), k2.with_extension("pub"));
    let k3_pub = k3.with_extension("pub");
    // Serial 1 accepted on A: B trusts it too (reloaded on A's NOTIFY).
    let o = a.cli(&[
        "key",
        "add",
        "--key",
        a.key.to_str().unwrap(),
        k2_pub.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let view = trust_at(&b, 1).await;
    assert_eq!(view["keys"].as_array().unwrap().len(), 2, "{view}");
    // Serial 2, signed by the key serial 1 added, accepted on B; A follows.
    let o = b.cli(&[
        "key",
        "add",
        "--key",
        k2_key.to_str().unwrap(),
        k3_pub.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let view = trust_at(&a, 2).await;
    assert_eq!(view["keys"].as_array().unwrap().len(), 3, "{view}");
}

/// Polls `cond` every 100 ms for up to 30 s (a NOTIFY's way to the other server).
async fn within_30s<F: std::future::Future<Output = bool>>(what: &str, cond: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each server keeps policies and agents' credential hashes in memory between changes
/// (`server::cache`): a change on one server must drop the other's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_or_a_removal_on_one_server_holds_on_the_other() {
    let Some(a) = TestServer::start(Backend::Postgres, &[]).await else {
        return;
    };
    let b = a.join();
    a.publish_sample("pkg-cache").await;
    let agents = b.enroll(2, "cache", Behaviour::Apply).await;
    // B reads the (empty) policies and both credentials now, and keeps them.
    for agent in &agents {
        assert!(agent.poll(AgentState::Idle, 0).await.unwrap().is_none());
    }
    assert!(b.admin().policies().await.unwrap().is_empty());

    // A hold set on A: B holds the work too.
    let hold =
        patchcast::model::group_policy::load("hold.yaml", "group: cache\nhold: [application]\n")
            .unwrap();
    a.admin().set_policy(&hold).await.unwrap();
    within_30s("B seeing A's hold", || async {
        b.admin().policies().await.unwrap().len() == 1
    })
    .await;
    a.admin()
        .run_scenario(&scenario("cache", "cache", &["pkg-cache"]))
        .await
        .unwrap();
    for agent in &agents {
        let w = agent.poll(AgentState::Idle, 0).await.unwrap();
        assert!(w.is_none(), "B handed out work A holds: {w:?}");
    }

    // A machine removed on A: B refuses its agent from then on; the other still gets in.
    a.admin()
        .remove_machine(&agents[0].machine_id)
        .await
        .unwrap();
    within_30s("B refusing the removed machine", || async {
        matches!(
            agents[0].poll(AgentState::Idle, 0).await,
            Err(patchcast::transport::client::CallError::Status { status: 401, .. })
        )
    })
    .await;
    assert!(agents[1].poll(AgentState::Idle, 0).await.unwrap().is_none());
}
