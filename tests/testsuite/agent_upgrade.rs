//! Agent self-upgrade (`kind: agent`): a real Linux agent process, started from a copy of the
//! agent build stamped `b1`, is given an agent package of the same build stamped `b2`
//! (`patchcast-agent stamp`: the two differ only in the stamp bytes, and each reports its own
//! version). It replaces its binary, restarts into it, checks in, and the delivery ends
//! applied with the machine now reporting the new version. A broken build (a script that
//! exits 1) is rolled back by the watchdog: E30, the previous binary back byte for byte, and
//! the old agent carrying on (it applies an ordinary package afterwards); so is a build that
//! starts but never checks in (it hangs until its 3 s deadline), and a build that checks in
//! with another version than its package's. Killed between the journaled moves of the swap
//! (`PATCHCAST_TEST_UPGRADE_KILL`), the agent, started again, completes the upgrade or
//! restores the previous binary; with its watchdog gone too (systemd stops the unit's cgroup),
//! `patchcast-agent recover` (the unit's `ExecStartPre=`) or the agent's own start rolls the
//! upgrade back. SQLite and PostgreSQL.

use crate::common::agent_harness::{
    AgentProc, BIN, run_to_end, tool_package, wait_for, wait_to_end,
};
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::sources_harness::publish;
use crate::common::web_client::{self, WebClient};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::transport::admin_api::{Admin, DeliveryRow};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GROUP: &str = "upgrade";

/// Writes a copy of the agent build carrying `stamp` to `out`; returns the version it reports.
fn stamped(stamp: &str, out: &Path) -> String {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = Command::new(BIN)
        .args(["stamp", stamp, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let version = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let v = Command::new(out).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("patchcast-agent {version}"),
        "the stamped copy reports its stamp"
    );
    version
}

/// A build that exits 1 at once.
const BROKEN: &[u8] = b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n";

/// Writes the agent package `id` in `dir` (`binary` as its payload, identified by
/// `version`) and publishes it.
fn publish_agent(
    server: &TestServer,
    dir: &Path,
    id: &str,
    version: &str,
    binary: &[u8],
    deadline: &str,
) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("patchcast-agent");
    std::fs::write(&file, binary).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("package.yaml"),
        format!(
            "id: {id}\nkind: agent\ntitle: {id}\nversion: '{version}'\ntargets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\n\
             payload: [patchcast-agent]\ncheck_in_deadline: {deadline}\n"
        ),
    )
    .unwrap();
    publish(server, dir, &[]);
}

/// Runs a scenario of `package` (one attempt) and returns its delivery once done.
async fn run(admin: &Admin, name: &str, package: &str, agent: &AgentProc) -> DeliveryRow {
    let mut s = scenario(name, GROUP, &[package]);
    s.max_attempts = 1;
    let (_, rows) = run_to_end(admin, &s, agent, Duration::from_secs(180)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    rows.into_iter().next().unwrap()
}

/// The version the server last heard from the one machine.
async fn reported_version(admin: &Admin) -> String {
    let machines = admin.machines().await.unwrap();
    assert_eq!(machines.len(), 1);
    machines[0].inventory.agent_version.clone()
}

/// The web console, signed in.
async fn console(server: &TestServer) -> WebClient {
    let password = "a long console password";
    let add = web_client::add_account(&server.data, "upgrader", password);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mut c = WebClient::new(&server.url, &server.fingerprint);
    c.sign_in("upgrader", password).await;
    c
}

/// Kills the agent the watchdog started in place of the first process (its pid is in
/// ROOT/agent.pid), when the test ends whichever way.
struct Restored(PathBuf);

impl Drop for Restored {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("agent.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
            && pid > 0
        {
            // SAFETY: a test agent this test started (through its watchdog).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A server, and an agent started from a copy of the build stamped `b1` in DIR/bin.
async fn setup(backend: Backend) -> Option<(TestServer, AgentProc, PathBuf, String)> {
    let server = TestServer::start(backend, &["--poll", "1s"]).await?;
    let exe = server.path().join("bin/patchcast-agent");
    let old = stamped("b1", &exe);
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agent"));
    agent.bin = Some(exe.clone());
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent.start();
    let admin = server.admin();
    let mut seen = String::new();
    for _ in 0..600 {
        seen = reported_version(&admin).await;
        if seen == old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, old, "the agent reports its stamped version");
    Some((server, agent, exe, old))
}

async fn an_agent_upgrades_itself_to_another_build(backend: Backend) {
    let Some((server, mut agent, exe, old)) = setup(backend).await else {
        return;
    };
    let _restored = Restored(agent.root.clone());
    let old_bytes = std::fs::read(&exe).unwrap();
    let build = server.path().join("build/patchcast-agent");
    let new = stamped("b2", &build);
    let new_bytes = std::fs::read(&build).unwrap();
    assert_ne!(old, new);
    let dir = server.path().join("packages/agent-b2");
    publish_agent(&server, &dir, "agent-b2", &new, &new_bytes, "2m");
    let admin = server.admin();
    let pid = agent.child.as_ref().unwrap().id();

    let row = run(&admin, "upgrade", "agent-b2", &agent).await;
    assert_eq!(row.state, State::Applied, "{row:#?}\n{}", agent.log());
    // The server heard the new version, from the same process (it re-executed itself).
    assert_eq!(reported_version(&admin).await, new);
    assert!(agent.exited().is_none(), "{}", agent.log());
    assert_eq!(agent.child.as_ref().unwrap().id(), pid);
    assert!(agent.log().contains("the upgraded agent checked in"));
    // The new build is in place; the old one is kept beside it.
    assert!(
        std::fs::read(&exe).unwrap() == new_bytes,
        "the binary was replaced"
    );
    assert!(
        std::fs::read(PathBuf::from(format!("{}.previous", exe.display()))).unwrap() == old_bytes
    );
    // The history shows the restart's check-in as the execution, then the verification.
    let events: Vec<&str> = row.history.iter().map(|h| h.name()).collect();
    assert!(
        events.ends_with(&["executed", "verified"]),
        "{events:?}\n{:#?}",
        row.history
    );
    // The console's machine page shows the new version.
    let mut c = console(&server).await;
    let page = c.get(&format!("/machines/{}", row.machine_id)).await;
    assert!(
        page.body.contains(&format!("<dd>{new}</dd>")),
        "{}",
        page.body
    );
    // Delivered again, it is already applied: the probe reads the running agent's version.
    let again = run(&admin, "again", "agent-b2", &agent).await;
    assert_eq!(again.state, State::Applied, "{again:#?}");
    assert!(std::fs::read(&exe).unwrap() == new_bytes);
}
both_backends!(an_agent_upgrades_itself_to_another_build);

async fn a_broken_build_is_rolled_back_by_the_watchdog(backend: Backend) {
    let Some((server, agent, exe, old)) = setup(backend).await else {
        return;
    };
    let _restored = Restored(agent.root.clone());
    let old_bytes = std::fs::read(&exe).unwrap();
    let dir = server.path().join("packages/agent-broken");
    let broken = format!("{}+b3", old.split('+').next().unwrap());
    publish_agent(&server, &dir, "agent-broken", &broken, BROKEN, "2m");
    let admin = server.admin();

    let row = run(&admin, "broken", "agent-broken", &agent).await;
    assert_eq!(
        row.state,
        State::Failed { code: Code::E30 },
        "{row:#?}\n{}",
        agent.log()
    );
    let detail = row.detail.params.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("exited before it checked in"),
        "{detail}\n{row:#?}"
    );
    let rendered = row.rendered.as_ref().unwrap();
    assert!(
        rendered.message.contains("previous agent was restored"),
        "{rendered:#?}"
    );
    // The console shows the failure with its code and message, in English and Japanese.
    let mut c = console(&server).await;
    let path = format!("/scenarios/{}", row.scenario_id);
    let page = c.get_lang(&path, "en").await;
    assert!(
        page.body.contains("E30") && page.body.contains("the previous agent was restored"),
        "{}",
        page.body
    );
    let page = c.get_lang(&path, "ja").await;
    assert!(
        page.body.contains("以前のエージェントに戻しました"),
        "{}",
        page.body
    );
    // The previous binary is back, byte for byte.
    assert!(
        std::fs::read(&exe).unwrap() == old_bytes,
        "the previous binary was not restored"
    );
    // The old agent carries on: it reports its version and applies an ordinary package.
    assert_eq!(reported_version(&admin).await, old);
    let tool = server.path().join("tool");
    let app = server.path().join("packages/after");
    tool_package(&app, "after-rollback", "1.0", &tool, "", "");
    publish(&server, &app, &[]);
    let after = run(&admin, "after", "after-rollback", &agent).await;
    assert_eq!(after.state, State::Applied, "{after:#?}\n{}", agent.log());
    wait_for("the tool the restored agent installed", || tool.exists()).await;
    assert_eq!(reported_version(&admin).await, old);

    // A build that starts but never checks in (it hangs): the watchdog kills it at the
    // deadline and restores the previous binary again.
    let dir = server.path().join("packages/agent-hangs");
    let hangs = format!("{}+b4", old.split('+').next().unwrap());
    publish_agent(
        &server,
        &dir,
        "agent-hangs",
        &hangs,
        b"#!/bin/sh
exec sleep 600
",
        "3s",
    );
    let row = run(&admin, "hangs", "agent-hangs", &agent).await;
    assert_eq!(
        row.state,
        State::Failed { code: Code::E30 },
        "{row:#?}\n{}",
        agent.log()
    );
    let detail = row.detail.params.detail.clone().unwrap_or_default();
    assert!(detail.contains("did not check in"), "{detail}\n{row:#?}");
    assert!(
        std::fs::read(&exe).unwrap() == old_bytes,
        "the previous binary was not restored after the hang"
    );
    assert_eq!(reported_version(&admin).await, old);
}
both_backends!(a_broken_build_is_rolled_back_by_the_watchdog);

const KILL: &str = "PATCHCAST_TEST_UPGRADE_KILL";

/// Stops whatever runs the agent on its root (the first process, or the one a watchdog
/// started in its place) and starts it again from `exe` with `env`.
fn restart(agent: &mut AgentProc, env: &[(&str, &Path)]) {
    agent.sigkill();
    drop(Restored(agent.root.clone()));
    agent.start_with(env);
}

/// Waits until the agent process the test started has exited (it killed itself at a hook).
async fn killed(agent: &mut AgentProc) {
    for _ in 0..1200 {
        if agent.exited().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent did not stop at its hook\n{}", agent.log());
}

/// Starts a scenario of `package` (one attempt); returns its id.
async fn start(admin: &Admin, name: &str, package: &str) -> String {
    let mut s = scenario(name, GROUP, &[package]);
    s.max_attempts = 1;
    admin.run_scenario(&s).await.unwrap().id
}

async fn ended(admin: &Admin, id: &str, agent: &AgentProc) -> DeliveryRow {
    let rows = wait_to_end(admin, id, agent, Duration::from_secs(180)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    rows.into_iter().next().unwrap()
}

/// The binary in place is whole and runs: it reports `version`.
fn runs_as(exe: &Path, version: &str) {
    let v = Command::new(exe).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("patchcast-agent {version}")
    );
    assert!(
        !PathBuf::from(format!("{}.new", exe.display())).exists(),
        "a staged binary was left behind"
    );
}

fn detail(row: &DeliveryRow) -> String {
    row.detail.params.detail.clone().unwrap_or_default()
}

/// The upgrade ended E30 (rolled back) for the reason `why`.
fn rolled_back(row: &DeliveryRow, agent: &AgentProc, why: &str) {
    assert_eq!(
        row.state,
        State::Failed { code: Code::E30 },
        "{row:#?}\n{}",
        agent.log()
    );
    assert!(detail(row).contains(why), "{row:#?}");
}

async fn a_kill_between_swap_steps_recovers(backend: Backend) {
    let Some((server, mut agent, exe, old)) = setup(backend).await else {
        return;
    };
    let _restored = Restored(agent.root.clone());
    let admin = server.admin();
    let (mut version, mut bytes) = (old, std::fs::read(&exe).unwrap());
    // Where the agent is killed, whether the test then starts it again (as a service
    // manager would), and whether the upgrade then completes (else it is rolled back).
    let cases = [
        ("staged-new", true, true),
        ("renamed", true, false),
        ("watchdog-started", false, false),
        ("before-exec", false, false),
    ];
    for (i, (point, start_again, completes)) in cases.into_iter().enumerate() {
        restart(&mut agent, &[(KILL, Path::new(point))]);
        let build = server.path().join(format!("build/k{i}/patchcast-agent"));
        let new = stamped(&format!("k{i}"), &build);
        let new_bytes = std::fs::read(&build).unwrap();
        let id = format!("agent-k{i}");
        let dir = server.path().join(format!("packages/{id}"));
        publish_agent(&server, &dir, &id, &new, &new_bytes, "2m");
        let scenario = start(&admin, &format!("kill-{point}"), &id).await;
        killed(&mut agent).await;
        if start_again {
            agent.start();
        }
        let row = ended(&admin, &scenario, &agent).await;
        let log = agent.log();
        if completes {
            assert_eq!(row.state, State::Applied, "{point}: {row:#?}\n{log}");
            (version, bytes) = (new, new_bytes);
        } else {
            assert_eq!(
                row.state,
                State::Failed { code: Code::E30 },
                "{point}: {row:#?}\n{log}"
            );
        }
        // Never a missing or half-written binary: the one in place runs, and is exactly the
        // build the server last heard from.
        assert!(
            std::fs::read(&exe).unwrap() == bytes,
            "{point}: wrong binary"
        );
        runs_as(&exe, &version);
        assert_eq!(reported_version(&admin).await, version, "{point}");
    }
}
both_backends!(a_kill_between_swap_steps_recovers);

async fn a_build_of_another_version_is_rolled_back(backend: Backend) {
    let Some((server, mut agent, exe, old)) = setup(backend).await else {
        return;
    };
    let _restored = Restored(agent.root.clone());
    let old_bytes = std::fs::read(&exe).unwrap();
    let pid = agent.child.as_ref().unwrap().id();
    // The package promises b9; its binary is stamped b2.
    let build = server.path().join("build/patchcast-agent");
    stamped("b2", &build);
    let promised = format!("{}+b9", old.split('+').next().unwrap());
    let dir = server.path().join("packages/agent-b9");
    publish_agent(
        &server,
        &dir,
        "agent-b9",
        &promised,
        &std::fs::read(&build).unwrap(),
        "2m",
    );
    let admin = server.admin();
    let row = run(&admin, "wrong", "agent-b9", &agent).await;
    rolled_back(&row, &agent, "not the new build");
    // Rolled back: the old build in place, running in the same process, and heard again.
    assert!(std::fs::read(&exe).unwrap() == old_bytes);
    runs_as(&exe, &old);
    assert!(agent.exited().is_none(), "{}", agent.log());
    assert_eq!(agent.child.as_ref().unwrap().id(), pid);
    assert!(agent.log().contains("rolling back"), "{}", agent.log());
    assert_eq!(reported_version(&admin).await, old);
    // It carries on: an ordinary package is applied by the restored agent.
    let tool = server.path().join("tool");
    let app = server.path().join("packages/after");
    tool_package(&app, "after-wrong", "1.0", &tool, "", "");
    publish(&server, &app, &[]);
    let after = run(&admin, "after", "after-wrong", &agent).await;
    assert_eq!(after.state, State::Applied, "{after:#?}\n{}", agent.log());
}
both_backends!(a_build_of_another_version_is_rolled_back);

async fn a_lost_watchdog_is_made_up_at_start(backend: Backend) {
    let Some((server, mut agent, exe, old)) = setup(backend).await else {
        return;
    };
    let _restored = Restored(agent.root.clone());
    let old_bytes = std::fs::read(&exe).unwrap();
    let admin = server.admin();
    let previous = PathBuf::from(format!("{}.previous", exe.display()));

    // A broken build (it exits 1 at once) whose watchdog died with it: the service manager
    // runs `EXE.previous recover` (ExecStartPre=), then the agent.
    restart(&mut agent, &[(KILL, Path::new("watchdog"))]);
    let dir = server.path().join("packages/agent-broken");
    let broken = format!("{}+b3", old.split('+').next().unwrap());
    publish_agent(&server, &dir, "agent-broken", &broken, BROKEN, "2m");
    let id = start(&admin, "broken", "agent-broken").await;
    killed(&mut agent).await;
    assert!(
        std::fs::read(&exe).unwrap() != old_bytes,
        "the broken build should be in place, unwatched\n{}",
        agent.log()
    );
    let pre = Command::new(&previous)
        .args(["recover", "--root"])
        .arg(&agent.root)
        .output()
        .unwrap();
    assert!(
        pre.status.success(),
        "{}",
        String::from_utf8_lossy(&pre.stderr)
    );
    assert!(
        std::fs::read(&exe).unwrap() == old_bytes,
        "recover did not restore"
    );
    agent.start();
    let row = ended(&admin, &id, &agent).await;
    rolled_back(&row, &agent, "no watchdog");
    runs_as(&exe, &old);

    // A real new build in place, its watchdog and the agent killed before the restart into
    // it; the service manager starts the agent (no ExecStartPre=): the new build itself
    // finds the upgrade unwatched, puts the previous binary back and starts it.
    restart(&mut agent, &[(KILL, Path::new("watchdog,before-exec"))]);
    let build = server.path().join("build/patchcast-agent");
    let new = stamped("b2", &build);
    let dir = server.path().join("packages/agent-b2");
    publish_agent(
        &server,
        &dir,
        "agent-b2",
        &new,
        &std::fs::read(&build).unwrap(),
        "2m",
    );
    let id = start(&admin, "unwatched", "agent-b2").await;
    killed(&mut agent).await;
    assert!(std::fs::read(&exe).unwrap() == std::fs::read(&build).unwrap());
    agent.start();
    let row = ended(&admin, &id, &agent).await;
    rolled_back(&row, &agent, "no watchdog");
    assert!(std::fs::read(&exe).unwrap() == old_bytes);
    runs_as(&exe, &old);
    // The unwatched new build never reported itself.
    assert_eq!(reported_version(&admin).await, old);
    assert!(
        agent
            .log()
            .contains("rolling an unwatched agent upgrade back")
    );
}
both_backends!(a_lost_watchdog_is_made_up_at_start);
