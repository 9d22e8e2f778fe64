//! `patchcast agent install --ssh` against a real OpenSSH server on loopback and a real
//! management server: the agent binary is uploaded, enrolled with a token sent on stdin,
//! started in the background, and shows up at the server as an enrolled, polling machine.

use crate::common::server_harness;
use crate::common::server_harness::{Backend, TestServer};
use crate::common::sshd_env::SshEnv;
use patchcast::transport::admin_api::TokenRequest;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_installed_enrolled_and_started_over_ssh() {
    let Some(env) = SshEnv::get() else { return };
    let server = TestServer::start(Backend::Sqlite, &["--poll", "1s"])
        .await
        .unwrap();
    let token = server
        .admin()
        .create_token(&TokenRequest {
            group: Some("ssh-installed".into()),
            uses: Some(1),
            expires_secs: 600,
        })
        .await
        .unwrap()
        .token;
    let root = env.scratch(1 % env.hosts.len());
    let i = 1 % env.hosts.len();
    let kh = server.path().join("known_hosts");
    let o = std::process::Command::new(server_harness::bin())
        .args(["agent", "install", "--json", "--trust-on-first-use"])
        .args(["--ssh", &env.target(i)])
        .arg("--key")
        .arg(&env.key)
        .arg("--known-hosts")
        .arg(&kh)
        .args([
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(["--token", &token, "--remote-dir", &format!("{root}/agent")])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "agent install: {out}");
    assert!(!out.contains(&token), "the token is never printed: {out}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let machine = v["machine_id"].as_str().unwrap().to_string();
    assert!(machine.starts_with("m-"), "{v}");
    assert_eq!(
        v["started_with"], "nohup",
        "no systemd on the test host: {v}"
    );
    assert!(
        std::fs::read_to_string(&kh)
            .unwrap()
            .contains("ssh-ed25519")
    );

    // The token is not in any process's arguments on the host, and the agent runs there.
    let ps = env.ssh(i, "ps -eo args");
    assert!(!ps.contains(&token), "token visible in ps: {ps}");
    assert!(
        ps.contains(&format!("{root}/agent/bin/patchcast-agent run")),
        "{ps}"
    );

    // Enrolled at the server, in the token's group, and polling (last seen after enrollment).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ms = server.admin().machines().await.unwrap();
        if let Some(m) = ms.iter().find(|m| m.id == machine)
            && m.last_seen_ms > m.enrolled_at_ms
            && m.agent_state == "idle"
        {
            assert_eq!(m.enroll_group.as_deref(), Some("ssh-installed"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the installed agent never polled: {ms:#?}\nagent log: {}",
            env.try_ssh(i, &format!("cat {root}/agent/agent.log")).1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Installing again with the used-up token fails clearly and leaves the running agent be.
    let o = std::process::Command::new(server_harness::bin())
        .args(["agent", "install"])
        .args(["--ssh", &env.target(i)])
        .arg("--key")
        .arg(&env.key)
        .arg("--known-hosts")
        .arg(&kh)
        .args([
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(["--token", &token, "--remote-dir", &format!("{root}/agent2")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("enrolling the agent") && err.contains("token"),
        "{err}"
    );
    assert!(!err.contains(&token), "{err}");

    env.ssh(
        i,
        &format!("kill $(cat {root}/agent/agent.pid); rm -rf {root}"),
    );
}
