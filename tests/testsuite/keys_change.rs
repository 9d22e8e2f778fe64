//! Keys that can change (issue 12 item 10), with real agent processes: a publisher key
//! rotated and revoked through a signed trust statement handed out in the poll (a package
//! signed by the new key installs, one signed by the revoked key is refused with E18 and never
//! runs, an agent offline meanwhile catches up), the server certificate renewed with agents
//! re-pinning through a statement signed by the old certificate, served across a restart
//! until the switch (and an agent that missed it, or a server with another certificate,
//! refused with E26), on SQLite and PostgreSQL; and
//! forged and replayed statements refused by the agent, from a scripted server.

use crate::common::agent_harness::{
    AgentProc, publisher, publisher_hex, run_to_end, tool_package, wait_for,
};
use crate::common::scripted_server::Scripted;
use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::pack::trust::{Statement, sign};
use patchcast::transport::admin_api::{Admin, DeliveryRow};
use patchcast::transport::repin;
use patchcast::transport::tls::Identity;
use std::path::Path;
use std::time::Duration;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The agent's `agent.json` as JSON.
fn agent_json(agent: &AgentProc) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(agent.root.join("agent.json")).unwrap()).unwrap()
}

fn pub_hex(pub_file: &Path) -> String {
    hex::encode(
        patchcast::pack::keys::read_public(pub_file)
            .unwrap()
            .to_bytes(),
    )
}

async fn enrolled(server: &TestServer, group: &str, name: &str) -> AgentProc {
    let token = server.group_token(group).await;
    let agent = AgentProc::new(&server.path().join(name));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "enroll: {out}");
    agent
}

/// Runs a scenario of `packages` on `group` and returns its rows once it is done.
async fn run(
    admin: &Admin,
    name: &str,
    group: &str,
    packages: &[&str],
    agent: &AgentProc,
) -> Vec<DeliveryRow> {
    let s = scenario(name, group, packages);
    run_to_end(admin, &s, agent, Duration::from_secs(120))
        .await
        .1
}

async fn publisher_key_rotation(backend: Backend) {
    let Some(mut server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let dir = server.path().to_path_buf();
    let k1 = server.key.to_str().unwrap().to_string();
    let k1_hex = hex::encode(server.signing.verifying_key().to_bytes());
    let (tool_old, tool_new) = (dir.join("old-app"), dir.join("new-app"));
    tool_package(&dir.join("p-old"), "key-old", "1.0", &tool_old, "", "");
    tool_package(&dir.join("p-new"), "key-new", "1.0", &tool_new, "", "");
    tool_package(
        &dir.join("p-late"),
        "key-late",
        "1.0",
        &dir.join("late-app"),
        "",
        "",
    );
    let publish = |pkg: &str, key: &str| {
        server.cli(&[
            "package",
            "publish",
            dir.join(pkg).to_str().unwrap(),
            "--key",
            key,
        ])
    };
    // Signed by the old key while it was trusted: stays on the server after the revocation.
    let o = publish("p-old", &k1);
    assert!(o.status.success(), "publish key-old: {}", text(&o));
    let mut agent = enrolled(&server, "keys", "agent").await;
    agent.start();
    // Enrolled now, offline during the rotation.
    let mut offline = enrolled(&server, "keys-offline", "offline").await;
    assert_eq!(agent_json(&agent)["publisher_keys"][0], k1_hex.as_str());

    let o = server.cli(&["key", "generate", "--out", dir.join("k2").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (k2, k2_pub) = (dir.join("k2.key"), dir.join("k2.pub"));
    let k2_hex = pub_hex(&k2_pub);
    let o = server.cli(&[
        "key",
        "rotate",
        "--key",
        &k1,
        "--new",
        k2_pub.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "rotate: {}", text(&o));
    assert!(
        text(&o).contains("trust statement 1 published") && text(&o).contains(&k2_hex),
        "{}",
        text(&o)
    );

    // The agent applies it from its poll and keeps it on disk.
    wait_for("the agent to apply trust statement 1", || {
        agent_json(&agent)["trust_serial"] == 1
    })
    .await;
    let cfg = agent_json(&agent);
    assert_eq!(cfg["publisher_keys"], serde_json::json!([k2_hex]));
    assert_eq!(cfg["revoked_keys"], serde_json::json!([k1_hex]));
    assert!(
        agent
            .log()
            .contains("trust statement applied: publisher keys updated"),
        "{}",
        agent.log()
    );

    // The server trusts the new key at once and refuses the revoked one (E18).
    let o = publish("p-new", k2.to_str().unwrap());
    assert!(o.status.success(), "publish with the new key: {}", text(&o));
    let o = publish("p-late", &k1);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("E18"), "{}", text(&o));

    let admin = server.admin();
    let rows = run(&admin, "new-key", "keys", &["key-new"], &agent).await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    assert_eq!(std::fs::read_to_string(&tool_new).unwrap(), "key-new 1.0\n");
    // Signed by the revoked key: refused by the agent with the signature code, never run.
    let rows = run(&admin, "old-key", "keys", &["key-old"], &agent).await;
    assert!(
        matches!(rows[0].state, State::Failed { code: Code::E18 }),
        "{rows:#?}"
    );
    assert_eq!(rows[0].last_code, Some(Code::E18), "{rows:#?}");
    assert!(!tool_old.exists(), "the revoked key's package ran");

    // Refused by the server, changing nothing: the last key revoked, a revoked signer.
    let o = server.cli(&[
        "key",
        "revoke",
        "--key",
        k2.to_str().unwrap(),
        k2_pub.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("would leave no trusted publisher key"),
        "{}",
        text(&o)
    );
    let k1_pub = dir.join("publisher.pub");
    let o = server.cli(&["key", "add", "--key", &k1, k1_pub.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("was revoked"), "{}", text(&o));

    // The chain outlives a restart (the server still gets --trust-key publisher.pub).
    server.kill();
    server.spawn();
    let o = server.cli(&["--json", "key", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["serial"], 1, "{view}");
    assert_eq!(view["keys"][0]["key"], k2_hex.as_str(), "{view}");
    assert_eq!(view["revoked"][0]["key"], k1_hex.as_str(), "{view}");

    // The agent that was offline catches up at its first poll.
    offline.start();
    wait_for("the offline agent to apply the statement", || {
        agent_json(&offline)["trust_serial"] == 1
    })
    .await;
    assert_eq!(
        agent_json(&offline)["publisher_keys"],
        serde_json::json!([k2_hex])
    );
    // An agent enrolled after the rotation is given the current set at enrollment.
    let fresh = enrolled(&server, "keys-fresh", "fresh").await;
    let cfg = agent_json(&fresh);
    assert_eq!(cfg["publisher_keys"], serde_json::json!([k2_hex]));
    assert_eq!(cfg["trust_serial"], 1);
    assert_eq!(cfg["revoked_keys"], serde_json::json!([k1_hex]));
}

both_backends!(publisher_key_rotation);

async fn certificate_renewal(backend: Backend) {
    let Some(mut server) = TestServer::start(backend, &["--poll", "1s"]).await else {
        return;
    };
    let dir = server.path().to_path_buf();
    let tool = dir.join("renew-app");
    tool_package(&dir.join("p"), "renew-app", "1.0", &tool, "", "");
    let key = server.key.to_str().unwrap().to_string();
    let o = server.cli(&[
        "package",
        "publish",
        dir.join("p").to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut agent = enrolled(&server, "renew", "agent").await;
    agent.start();
    let mut late = enrolled(&server, "renew-late", "late").await;
    let mut missed = enrolled(&server, "renew-missed", "missed").await;
    let old = server.fingerprint.clone();

    let o = server.cli(&["--json", "server", "renew-cert"]);
    assert!(o.status.success(), "renew-cert: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["old"], old.as_str());
    let new = r["new"].as_str().unwrap().to_string();
    assert_ne!(new, old);

    // The agent verifies the statement and pins both while the server still presents the old.
    wait_for("the agent to pin the renewed certificate", || {
        agent_json(&agent)["next_fingerprint"] == new.as_str()
    })
    .await;
    assert_eq!(agent_json(&agent)["fingerprint"], old.as_str());

    // A restart before the switch keeps the old certificate and still serves the statement:
    // an agent that was offline until now picks it up from the restarted server.
    server.kill();
    server.spawn();
    assert_eq!(server.fingerprint, old, "{:?}", server.banner);
    late.start();
    wait_for("the late agent to pin the renewed certificate", || {
        agent_json(&late)["next_fingerprint"] == new.as_str()
    })
    .await;

    // The switch, asked for on the server host, takes effect at the next start.
    let o = server.cli(&["server", "renew-cert", "--switch"]);
    assert!(o.status.success(), "switch: {}", text(&o));
    assert!(text(&o).contains(&new), "{}", text(&o));
    server.kill();
    server.spawn();
    assert_eq!(server.fingerprint, new, "{:?}", server.banner);
    // Both agents keep working and drop the old pin.
    let rows = run(
        &server.admin(),
        "after-renewal",
        "renew",
        &["renew-app"],
        &agent,
    )
    .await;
    assert_eq!(rows[0].state, State::Applied, "{rows:#?}");
    for a in [&agent, &late] {
        wait_for("the agent to drop the old pin", || {
            let cfg = agent_json(a);
            cfg["fingerprint"] == new.as_str() && cfg.get("next_fingerprint").is_none()
        })
        .await;
    }
    assert!(
        dir.join("data/tls/retired")
            .join(old.trim_start_matches("sha256:"))
            .join("cert.pem")
            .exists()
    );

    // An agent that was offline during the renewal only knows the old certificate: E26.
    missed.start();
    wait_for("the agent that missed the renewal to stop", || {
        missed.exited().is_some()
    })
    .await;
    let log = missed.log();
    assert!(
        log.contains("E26") && log.contains("does not match the pinned fingerprint"),
        "{log}"
    );

    // A server with another certificate (its identity replaced, no statement): refused, E26.
    server.kill();
    std::fs::rename(dir.join("data/tls"), dir.join("tls-moved")).unwrap();
    server.spawn();
    assert_ne!(server.fingerprint, new);
    wait_for("the agent to refuse the substituted server", || {
        agent.exited().is_some()
    })
    .await;
    let log = agent.log();
    assert!(
        log.contains("E26") && log.contains("does not match the pinned fingerprint"),
        "{log}"
    );
    assert_eq!(agent_json(&agent)["fingerprint"], new.as_str());
}

both_backends!(certificate_renewal);

/// A server that hands out statements no trusted key signed, or old ones again: the real
/// agent refuses each, logs it once, and keeps its keys and pin; genuine ones it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_statements_are_refused() {
    let scripted = Scripted::start("tok", vec![publisher_hex()], 200).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::new(&tmp.path().join("agent"));
    let (ok, out) = agent
        .enroll(&scripted.url, "tok", &scripted.fingerprint)
        .await;
    assert!(ok, "{out}");
    agent.start();
    let polls = || scripted.script.lock().unwrap().polls;

    // Signed by a key the agent never trusted, adding it and revoking the real one.
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let attacker_hex = hex::encode(attacker.verifying_key().to_bytes());
    let forged = sign(
        &Statement {
            serial: 1,
            add: vec![attacker_hex],
            revoke: vec![publisher_hex()],
        },
        &attacker,
    );
    scripted.script.lock().unwrap().trust = vec![forged];
    wait_for("the forged statement's refusal", || {
        agent.log().contains("not a trusted publisher key")
    })
    .await;
    let seen = polls();
    wait_for("three more polls", || polls() >= seen + 3).await;
    assert_eq!(
        agent.log().matches("trust statement refused").count(),
        1,
        "logged once: {}",
        agent.log()
    );
    let cfg = agent_json(&agent);
    assert_eq!(cfg["publisher_keys"], serde_json::json!([publisher_hex()]));
    assert_eq!(cfg["trust_serial"], 0);

    // A genuine statement is applied (so the refusal above was the agent's check).
    let k2 = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let k2_hex = hex::encode(k2.verifying_key().to_bytes());
    let genuine = sign(
        &Statement {
            serial: 1,
            add: vec![k2_hex.clone()],
            revoke: vec![],
        },
        &publisher(),
    );
    scripted.script.lock().unwrap().trust = vec![genuine.clone()];
    wait_for("the genuine statement", || {
        agent_json(&agent)["trust_serial"] == 1
    })
    .await;
    assert_eq!(
        agent_json(&agent)["publisher_keys"],
        serde_json::json!([publisher_hex(), k2_hex])
    );
    // Its serial is what the agent reports from then on.
    wait_for("a poll reporting serial 1", || {
        scripted.script.lock().unwrap().trust_serials.last() == Some(&Some(1))
    })
    .await;

    // Replayed: the same statement again (a server that forgot, or an attacker's copy).
    wait_for("the replay's refusal", || {
        agent.log().contains("is not above the current serial 1")
    })
    .await;
    assert_eq!(agent_json(&agent)["trust_serial"], 1);
    scripted.script.lock().unwrap().trust.clear();

    // A re-pin statement signed by another server's identity: refused, the pin unchanged.
    let other = Identity::load_or_create(&tmp.path().join("other"), &["localhost".into()]).unwrap();
    let next = Identity::load_or_create(&tmp.path().join("next"), &["localhost".into()]).unwrap();
    scripted.script.lock().unwrap().repin = Some(repin::sign(&other, &next.fingerprint).unwrap());
    wait_for("the forged re-pin's refusal", || {
        agent.log().contains("re-pin statement refused")
    })
    .await;
    let cfg = agent_json(&agent);
    assert_eq!(cfg["fingerprint"], scripted.fingerprint.as_str());
    assert!(cfg.get("next_fingerprint").is_none(), "{cfg}");

    // The same, signed by the scripted server's own certificate: accepted.
    let own = Identity::load_or_create(scripted.tls_dir(), &[]).unwrap();
    scripted.script.lock().unwrap().repin = Some(repin::sign(&own, &next.fingerprint).unwrap());
    wait_for("the genuine re-pin", || {
        agent_json(&agent)["next_fingerprint"] == next.fingerprint.as_str()
    })
    .await;
    assert_eq!(
        agent_json(&agent)["fingerprint"],
        scripted.fingerprint.as_str()
    );
    // Still talking to the server it pinned first.
    let seen = polls();
    wait_for("polls after the re-pin", || polls() >= seen + 2).await;
    assert!(agent.exited().is_none(), "{}", agent.log());
}
