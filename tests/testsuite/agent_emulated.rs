//! Emulated Windows endpoints (a profile under the agent's root, the installer's behaviour
//! in the payload's `emulated-installer.yaml`): a Windows Server 2008 Japanese machine
//! receives a HotFix identified by its KB number; a service pack that asks for a restart; a
//! file-version HotFix whose installer replaces the file its rule names; and, with the real
//! server, a package whose MS number is wrong loops until the breaker names the MS check.

use crate::common::agent_harness::*;
use crate::common::scripted_server::Scripted;
use crate::common::server_harness::{Backend, TestServer, scenario};
use patchcast::agent::emulated::Profile;
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::transport::admin_api::ResultsQuery;
use std::path::Path;
use std::time::{Duration, Instant};

fn sample(name: &str, out: &Path) -> Built {
    build_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packages")
            .join(name),
        out,
    )
}

async fn emulated(root: &Path, profile: &str, allow_reboot: bool) -> (Scripted, AgentProc) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("endpoint.yaml"), profile).unwrap();
    let server = Scripted::start("tok", vec![publisher_hex()], 300).await;
    server.with(|s| s.allow_reboot = allow_reboot);
    let mut agent = AgentProc::new(root);
    let (ok, out) = agent.enroll(&server.url, "tok", &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();
    (server, agent)
}

async fn done(server: &Scripted, id: &str) -> Vec<String> {
    wait_for(&format!("{id} to finish"), || {
        events(&server.reports_of(id))
            .iter()
            .any(|e| e.starts_with("verified") || e.starts_with("refused") || e == "probed:applied")
    })
    .await;
    events(&server.reports_of(id))
}

fn profile(root: &Path) -> Profile {
    serde_saphyr::from_str(&std::fs::read_to_string(root.join("endpoint.yaml")).unwrap()).unwrap()
}

const WS2008_JA: &str = "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: ws2008-ja-01\nservice_pack: \"1.0\"\ninstalled_updates: [KB958644]\nfree_disk_bytes: 20000000000\ntotal_disk_bytes: 40000000000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_server_2008_japanese_receives_a_hotfix_identified_by_its_kb() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws2008-ja");
    let built = sample("ms10-046-ws2008-multi", tmp.path());
    // The package is meant for this machine: Windows Server 2008, x86, Japanese.
    let v = patchcast::pack::archive::verify_manifest(
        built.manifest.as_bytes(),
        built.signature.as_bytes(),
        &[publisher().verifying_key()],
    )
    .unwrap();
    assert!(
        v.package
            .targets
            .iter()
            .any(|t| t.os == "windows-server-2008"
                && t.arch.as_deref() == Some("x86")
                && t.language.as_deref() == Some("ja"))
    );

    let (server, agent) = emulated(&root, WS2008_JA, false).await;
    server.serve(&built.sha256, built.bytes.clone());
    let enrolled = server.with(|s| s.inventories[0].clone());
    assert!(enrolled.emulated);
    assert_eq!(
        (
            enrolled.os.as_str(),
            enrolled.language.as_str(),
            enrolled.hostname.as_str()
        ),
        ("windows-server-2008", "ja", "ws2008-ja-01")
    );
    assert_eq!(enrolled.installed_updates, ["KB958644"]);

    server.push_work(work("kb-1", 1, &built));
    assert_eq!(
        done(&server, "kb-1").await,
        [
            "probed:not_applied",
            "transferred",
            "executed:succeeded",
            "verified:applied"
        ],
        "{}",
        agent.log()
    );
    let reports = server.reports_of("kb-1");
    let probe = &reports[0].detail.explanation;
    assert!(
        probe
            .iter()
            .any(|c| c.detail.contains("KB2286198") || c.check.contains("KB2286198")),
        "{probe:?}"
    );
    let out = reports[2].detail.output_tail.as_deref().unwrap();
    assert!(
        out.contains("Windows6.0-KB2286198-x86.exe\" /quiet /norestart"),
        "{out}"
    );
    assert!(out.contains("registered KB2286198 as installed"), "{out}");

    let p = profile(&root);
    assert!(
        p.installed_updates.contains(&"KB2286198".to_string()),
        "{p:?}"
    );
    assert!(p.installed_updates.contains(&"MS10-046".to_string()));
    wait_for("an inventory with the new KB", || {
        server.with(|s| {
            s.inventories
                .iter()
                .any(|i| i.installed_updates.iter().any(|u| u == "KB2286198"))
        })
    })
    .await;

    // Delivered again: the probe finds it applied and nothing is transferred.
    let requests = server.with(|s| s.content_requests.len());
    server.push_work(work("kb-2", 1, &built));
    assert_eq!(done(&server, "kb-2").await, ["probed:applied"]);
    assert_eq!(server.with(|s| s.content_requests.len()), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_pack_asking_for_a_restart_is_verified_after_the_recorded_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws2008-sp");
    let built = sample("ws2008-sp2", tmp.path());
    let profile_text = format!("{WS2008_JA}exit_codes: {{ ws2008-sp2: 3010 }}\n");
    let (server, agent) = emulated(&root, &profile_text, true).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.push_work(work("sp-1", 1, &built));
    assert_eq!(
        done(&server, "sp-1").await,
        [
            "probed:not_applied",
            "transferred",
            "executed:reboot_required",
            "verified:applied"
        ],
        "{}",
        agent.log()
    );
    let r = &server.reports_of("sp-1")[2];
    assert_eq!(r.detail.exit_code, Some(3010));
    let log = std::fs::read_to_string(root.join("reboots.log")).unwrap();
    assert!(
        log.contains("reboot recorded for delivery sp-1 attempt 1"),
        "{log}"
    );
    assert_eq!(profile(&root).service_pack.as_deref(), Some("2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_not_allowed_leaves_the_delivery_pending_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws2008-sp-wait");
    let built = sample("ws2008-sp2", tmp.path());
    let profile_text = format!("{WS2008_JA}exit_codes: {{ ws2008-sp2: 3010 }}\n");
    let (server, mut agent) = emulated(&root, &profile_text, false).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.push_work(work("sp-wait", 1, &built));
    wait_for("the reboot-required report", || {
        events(&server.reports_of("sp-wait")).len() == 3
    })
    .await;
    wait_for("an inventory saying a reboot is pending", || {
        server.with(|s| s.inventories.iter().any(|i| i.pending_reboot))
    })
    .await;
    assert!(
        !root.join("reboots.log").exists(),
        "no restart without the server's consent"
    );
    let status = agent.sigterm().await;
    assert!(status.success());
    // Same boot: after a restart of the agent the delivery still waits (no verify yet).
    agent.start();
    let polls = server.with(|s| s.polls);
    wait_for("two more polls", || server.with(|s| s.polls >= polls + 2)).await;
    assert_eq!(
        events(&server.reports_of("sp-wait")),
        [
            "probed:not_applied",
            "transferred",
            "executed:reboot_required"
        ]
    );
    let journal = std::fs::read_to_string(root.join("journal/sp-wait.json")).unwrap();
    assert!(journal.contains("reboot_pending"), "{journal}");
    // A different boot id (as after a real restart): the agent verifies.
    let text = journal.replace(&patchcast::agent::deliver::boot_id(), "an-earlier-boot");
    agent.sigkill();
    std::fs::write(root.join("journal/sp-wait.json"), text).unwrap();
    agent.start();
    assert_eq!(
        done(&server, "sp-wait").await.last().unwrap(),
        "verified:applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_payload_replaces_the_file_its_rule_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws2008-en");
    let built = sample("kb981550-ws2008-fileversion", tmp.path());
    let profile_text = "os: windows-server-2008\narch: x86\nlanguage: en\nhostname: ws2008-en\nservice_pack: \"2.0\"\nfree_disk_bytes: 20000000000\n";
    std::fs::create_dir_all(root.join("fs/C/WINDOWS/system32")).unwrap();
    let (server, agent) = emulated(&root, profile_text, false).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.push_work(work("dll-1", 1, &built));
    assert_eq!(
        done(&server, "dll-1").await,
        [
            "probed:not_applied",
            "transferred",
            "executed:succeeded",
            "verified:applied"
        ],
        "{}",
        agent.log()
    );
    // Matched case-insensitively onto the existing directory.
    let dll = root.join("fs/C/WINDOWS/system32/pcsample.dll");
    let original = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packages/kb981550-ws2008-fileversion/pcsample.dll");
    assert_eq!(
        std::fs::read(&dll).unwrap(),
        std::fs::read(original).unwrap()
    );
    assert!(!root.join("fs/C/Windows").exists());
}

/// DeploymentManager's FAQ Q2, "the MS number is wrong", with the real server and a real
/// agent: the installer (its description in the payload) registers MS10-046 and KB2286198,
/// the package identifies the HotFix by MS10-064. Every run exits 0 and never verifies, so
/// the loop breaker stops the delivery with E24 naming the MS10-064 check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ms_number_loops_until_the_breaker_names_the_ms_check() {
    let server = TestServer::start(Backend::Sqlite, &["--poll", "1s"])
        .await
        .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/kb2286198-ws2008-wrong-ms");
    let o = server.cli(&[
        "package",
        "publish",
        dir.to_str().unwrap(),
        "--key",
        server.key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "publish: {o:?}");
    let token = server.group_token("wrong-ms").await;
    let mut agent = AgentProc::new(&server.path().join("agents/ws2008-ja"));
    std::fs::write(agent.root.join("endpoint.yaml"), WS2008_JA).unwrap();
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();

    let admin = server.admin();
    let s = scenario("wrong-ms", "wrong-ms", &["kb2286198-ws2008-wrong-ms"]);
    let id = admin.run_scenario(&s).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = admin.status(&id, "en").await;
        if st.as_ref().is_ok_and(|st| st.done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scenario did not finish: {st:#?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rows = admin
        .results(&ResultsQuery {
            scenario: Some(id.clone()),
            history: true,
            lang: "en".into(),
            ..ResultsQuery::default()
        })
        .await
        .unwrap()
        .deliveries;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    let State::LoopDetected { rule } = &r.state else {
        panic!("expected loop_detected: {r:#?}\n{}", agent.log());
    };
    assert_eq!(rule, "MS10-064 in the installed-update list", "{r:#?}");
    assert_eq!(r.last_code, Some(Code::E24), "{r:#?}");
    assert_eq!(r.unverified_runs, 3, "{r:#?}");
    let runs = r.history.iter().filter(|h| h.name() == "executed").count();
    assert_eq!(
        runs, 3,
        "three installs, then the breaker: {:#?}",
        r.history
    );
    let rendered = r.rendered.as_ref().expect("E24 rendered");
    assert!(
        format!("{} {}", rendered.message, rendered.remedy).contains("MS10-064"),
        "{rendered:?}"
    );
    // The installer did what its description says, whatever the package claims.
    let p = profile(&agent.root);
    assert!(
        p.installed_updates.iter().any(|u| u == "MS10-046")
            && p.installed_updates.iter().any(|u| u == "KB2286198")
            && !p.installed_updates.iter().any(|u| u == "MS10-064"),
        "{p:?}"
    );
}
