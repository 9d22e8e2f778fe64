//! The real agent process against a scripted HTTPS server on loopback: enrollment with a pinned
//! certificate, a Linux sample package really installed end to end, clean shutdown.

use crate::common::agent_harness::*;
use crate::common::scripted_server::Scripted;
use std::path::Path;
use std::process::Command;

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_deb_sample_is_installed_for_real_and_verified() {
    if !root_or_skip() {
        return;
    }
    let _machine = crate::common::MACHINE.lock().await;
    sh("dpkg -r patchcast-sample-hello >/dev/null 2>&1 || true");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/linux-hello-deb");
    let built = build_dir(&pkg, tmp.path());
    let server = Scripted::start("enroll-me", vec![publisher_hex()], 500).await;
    server.serve(&built.sha256, built.bytes.clone());

    let mut agent = AgentProc::new(&tmp.path().join("agent"));
    let (ok, out) = agent
        .enroll(&server.url, "enroll-me", &server.fingerprint)
        .await;
    assert!(ok, "{out}");
    assert!(out.contains("enrolled as machine m1"), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.root.join("agent.json")).unwrap()).unwrap();
    assert_eq!(cfg["fingerprint"], server.fingerprint.as_str());
    assert_eq!(cfg["machine_id"], "m1");
    assert_eq!(cfg["publisher_keys"][0], publisher_hex().as_str());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.root.join("credential"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the credential is private");
    let enrolled_inv = server.with(|s| s.inventories[0].clone());
    assert!(!enrolled_inv.emulated && enrolled_inv.os.starts_with("debian"));
    assert!(
        enrolled_inv
            .interfaces
            .iter()
            .any(|i| i.name == "lo" && i.addresses.contains(&"127.0.0.1".parse().unwrap()))
    );
    assert!(enrolled_inv.packages.contains_key("dpkg"));

    agent.start();
    server.push_work(work("deb-1", 1, &built));
    wait_for("the deb delivery to be verified", || {
        events(&server.reports_of("deb-1"))
            .iter()
            .any(|e| e.starts_with("verified") || e.starts_with("refused"))
    })
    .await;
    let reports = server.reports_of("deb-1");
    assert_eq!(
        events(&reports),
        [
            "probed:not_applied",
            "transferred",
            "executed:succeeded",
            "verified:applied"
        ],
        "{}",
        agent.log()
    );
    let seqs: Vec<u32> = reports.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(reports[2].detail.exit_code, Some(0));
    assert!(
        reports[2]
            .detail
            .output_tail
            .as_deref()
            .unwrap()
            .contains("patchcast-sample-hello"),
        "dpkg's output is kept"
    );
    assert!(!reports[3].detail.explanation.is_empty());
    // dpkg itself says it is installed.
    assert!(
        sh("dpkg-query -W -f='${Status} ${Version}' patchcast-sample-hello")
            .contains("install ok installed 1.2.0-1")
    );
    // Work directory cleaned, journal entry gone, delivery remembered as done.
    wait_for("the delivery to be finished", || {
        !agent.root.join("journal/deb-1.json").exists()
    })
    .await;
    assert!(
        !agent.root.join("work/deb-1").exists(),
        "work directory cleaned"
    );
    let done = std::fs::read_to_string(agent.root.join("journal/done.json")).unwrap();
    assert!(done.contains("deb-1#1"), "{done}");
    // The inventory after the install lists the package.
    wait_for("an inventory listing the installed package", || {
        server.with(|s| {
            s.inventories.iter().any(|i| {
                i.packages.get("patchcast-sample-hello").map(String::as_str) == Some("1.2.0-1")
            })
        })
    })
    .await;

    // A replay of the same work item is not executed twice.
    server.push_work(work("deb-1", 1, &built));
    wait_for("the replayed work to be taken", || {
        server.with(|s| s.work.is_empty())
    })
    .await;
    let polls = server.with(|s| s.polls);
    wait_for("two more polls", || server.with(|s| s.polls >= polls + 2)).await;
    assert_eq!(server.reports_of("deb-1").len(), 4, "replay ignored");

    let status = agent.sigterm().await;
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    assert!(agent.log().contains("stopping on signal"));
    sh("dpkg -r patchcast-sample-hello >/dev/null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Scripted::start("tok", vec![publisher_hex()], 500).await;
    let mut agent = AgentProc::new(&tmp.path().join("agent"));
    let wrong = format!("sha256:{}", "ab".repeat(32));

    let (ok, out) = agent.enroll(&server.url, "tok", &wrong).await;
    assert!(!ok);
    assert!(
        out.contains("does not match the pinned fingerprint") && out.contains(&wrong),
        "{out}"
    );
    assert!(!agent.root.join("agent.json").exists());
    assert!(
        server.with(|s| s.agents.is_empty()),
        "no enrollment happened"
    );

    let (ok, out) = agent.enroll(&server.url, "tok", "sha256:nothex").await;
    assert!(!ok && out.contains("64 hex digits"), "{out}");
    let (ok, out) = agent
        .enroll(&server.url, "bad-token", &server.fingerprint)
        .await;
    assert!(!ok && out.contains("unknown enrollment token"), "{out}");

    // Enrolled correctly, then the pinned fingerprint no longer matches: `run` refuses.
    let (ok, out) = agent.enroll(&server.url, "tok", &server.fingerprint).await;
    assert!(ok, "{out}");
    let path = agent.root.join("agent.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&server.fingerprint, &wrong)).unwrap();
    agent.start();
    wait_for("the agent to exit", || agent.exited().is_some()).await;
    let status = agent.exited().unwrap();
    assert!(!status.success());
    let log = agent.log();
    assert!(
        log.contains("does not match the pinned fingerprint"),
        "{log}"
    );
    assert_eq!(
        server.with(|s| s.polls),
        0,
        "nothing was sent to that server"
    );
}
