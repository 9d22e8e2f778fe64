//! What the agent refuses to run, and how it stops what overruns: tampered bytes (E19),
//! unsafe archive entries (E25), too little disk (E06, nothing transferred), an installer over
//! its time limit (killed with its whole process group, E20 on the server).

use crate::common::agent_harness::*;
use crate::common::crafted::{crafted, raw_entry};
use crate::common::scripted_server::Scripted;
use patchcast::core::errors::Code;
use std::path::Path;

async fn enrolled(root: &Path) -> (Scripted, AgentProc) {
    let server = Scripted::start("tok", vec![publisher_hex()], 300).await;
    let mut agent = AgentProc::new(root);
    let (ok, out) = agent.enroll(&server.url, "tok", &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();
    (server, agent)
}

async fn finished(server: &Scripted, id: &str) -> Vec<String> {
    wait_for(&format!("delivery {id} to finish"), || {
        let ev = events(&server.reports_of(id));
        ev.iter().any(|e| {
            e.starts_with("refused") || e.starts_with("verified") || e.starts_with("executed:timed")
        }) || ev.iter().any(|e| e == "probed:applied")
    })
    .await;
    events(&server.reports_of(id))
}

/// A package whose install creates `marker`; identified by that file.
fn marker_package(dir: &Path, marker: &Path) -> Built {
    let yaml = format!(
        "id: marker-pkg\nkind: application\ntitle: creates a marker\ntargets: [{{ os: debian }}, {{ os: ubuntu }}]\nidentification:\n  - file: {m}\n    change: new\npayload: [run.sh]\ninstall: {{ command: 'sh \"{{{{payload.0}}}}\"', timeout: 5m }}\n",
        m = marker.display()
    );
    let script = format!("touch '{}'\n", marker.display());
    build_package(dir, &yaml, &[("run.sh", script.as_bytes())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_unsafe_archives_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("installed.marker");
    let good = marker_package(&tmp.path().join("pkg"), &marker);
    let (server, agent) = enrolled(&tmp.path().join("agent")).await;

    // 1. Bytes changed on the way: the archive hash does not match the work item.
    // Flip one byte of the payload file's content (the install script).
    let mut bad = good.bytes.clone();
    let at = bad.windows(5).position(|w| w == b"touch").unwrap();
    bad[at] ^= 0x20;
    server.serve(&good.sha256, bad.clone());
    server.push_work(work("tamper-hash", 1, &good));
    let ev = finished(&server, "tamper-hash").await;
    assert_eq!(ev, ["probed:not_applied", "refused:E19"], "{}", agent.log());
    let r = &server.reports_of("tamper-hash")[1];
    assert_eq!(r.detail.code, Some(Code::E19));
    assert!(
        r.detail
            .params
            .file
            .as_deref()
            .unwrap()
            .contains(&good.sha256)
    );
    let dir = agent.root.join("work/tamper-hash");
    wait_for("the bad bytes to be deleted", || !dir.exists()).await;

    // 2. The archive hash matches (the server stores tampered content) but a payload file does
    //    not match the signed manifest.
    let t = from_bytes(bad, "marker-pkg");
    server.serve(&t.sha256, t.bytes.clone());
    let mut w = work("tamper-file", 1, &good);
    w.archive_sha256 = t.sha256.parse().unwrap();
    server.push_work(w);
    assert_eq!(
        finished(&server, "tamper-file").await,
        ["probed:not_applied", "refused:E19"]
    );
    let r = &server.reports_of("tamper-file")[1];
    assert_eq!(r.detail.params.file.as_deref(), Some("run.sh"), "{r:?}");

    // 3. Signed manifest, then an entry escaping the directory, an absolute path, a symlink.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            crafted(&good.bytes, |b| {
                raw_entry(
                    b,
                    b"payload/../../run.sh",
                    tar::EntryType::Regular,
                    None,
                    b"touch /tmp/x",
                )
            }),
        ),
        (
            "absolute",
            crafted(&good.bytes, |b| {
                raw_entry(
                    b,
                    b"/tmp/patchcast-abs-run.sh",
                    tar::EntryType::Regular,
                    None,
                    b"x",
                )
            }),
        ),
        (
            "symlink",
            crafted(&good.bytes, |b| {
                raw_entry(
                    b,
                    b"payload/run.sh",
                    tar::EntryType::Symlink,
                    Some(b"../../../../etc/passwd"),
                    b"",
                )
            }),
        ),
    ];
    for (name, bytes) in cases {
        let id = format!("unsafe-{name}");
        let c = from_bytes(bytes, "marker-pkg");
        server.serve(&c.sha256, c.bytes.clone());
        let mut w = work(&id, 1, &good);
        w.archive_sha256 = c.sha256.parse().unwrap();
        w.archive_size = c.bytes.len() as u64;
        server.push_work(w);
        assert_eq!(
            finished(&server, &id).await,
            ["probed:not_applied", "refused:E25"],
            "{name}"
        );
        let r = &server.reports_of(&id)[1];
        assert!(
            r.detail
                .params
                .detail
                .as_deref()
                .unwrap()
                .contains("unsafe entry"),
            "{r:?}"
        );
        let dir = agent.root.join(format!("work/{id}"));
        wait_for("the work directory to be cleaned", || !dir.exists()).await;
    }
    assert!(!Path::new("/tmp/patchcast-abs-run.sh").exists());

    // 4. A work item whose manifest is not signed by the pinned key is not even probed.
    let mut w = work("unsigned", 1, &good);
    w.signature = w.signature.replace(
        &w.signature[w.signature.len() - 20..w.signature.len() - 4],
        "0000000000000000",
    );
    server.push_work(w);
    assert_eq!(finished(&server, "unsigned").await, ["refused:E18"]);

    assert!(!marker.exists(), "the install command never ran");
    assert_eq!(
        server.with(|s| s
            .reports
            .iter()
            .filter(|r| matches!(r.event, patchcast::core::delivery::Event::Executed { .. }))
            .count()),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_disk_is_refused_with_e06_and_nothing_is_transferred() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agent");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("endpoint.yaml"),
        "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: small-disk\nfree_disk_bytes: 1000\n",
    )
    .unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/ms10-046-ws2008-multi");
    let built = build_dir(&pkg, tmp.path());
    let (server, _agent) = enrolled(&root).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.push_work(work("small-disk", 1, &built));
    assert_eq!(
        finished(&server, "small-disk").await,
        ["probed:not_applied", "refused:E06"]
    );
    let r = &server.reports_of("small-disk")[1];
    assert_eq!(r.detail.params.free_bytes, Some(1000));
    assert_eq!(
        r.detail.params.required_bytes,
        Some(3 * built.bytes.len() as u64)
    );
    let msg = patchcast::core::errors::render(
        Code::E06,
        patchcast::core::errors::Lang::En,
        &r.detail.params,
    );
    let text = format!("{} {}", msg.message, msg.remedy);
    assert!(
        text.contains("free space on the system drive is 1.0 kB")
            && text.contains("(3 × the package size) is needed"),
        "{text}"
    );
    assert!(
        server.with(|s| s.content_requests.is_empty()),
        "nothing was downloaded"
    );
    wait_for("the delivery to be finished", || {
        !root.join("journal/small-disk.json").exists()
    })
    .await;
    assert!(!root.join("work/small-disk").exists(), "nothing was staged");
}

/// Processes of group `pgid` that still run (zombies waiting for init do not count).
fn running_in_group(pgid: i32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
            found.push(stat);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_over_its_time_limit_is_killed_with_its_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let pgid_file = tmp.path().join("pgid");
    let yaml = format!(
        "id: slow-pkg\nkind: application\ntitle: never finishes\ntargets: [{{ os: debian }}, {{ os: ubuntu }}]\nidentification:\n  - file: {m}\n    change: new\npayload: [run.sh]\ninstall: {{ command: 'sh \"{{{{payload.0}}}}\"', timeout: 30m }}\n",
        m = tmp.path().join("never").display()
    );
    let script = format!(
        "cut -d' ' -f5 /proc/$$/stat > '{p}.tmp' && mv '{p}.tmp' '{p}'\necho installer started\nsleep 600 &\nsleep 600\n",
        p = pgid_file.display()
    );
    let built = build_package(
        &tmp.path().join("pkg"),
        &yaml,
        &[("run.sh", script.as_bytes())],
    );
    let (server, agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());
    let mut w = work("slow", 1, &built);
    w.timeout_secs = Some(2); // the scenario's override beats the package's 30 minutes
    server.push_work(w);
    assert_eq!(
        finished(&server, "slow").await,
        ["probed:not_applied", "transferred", "executed:timed_out"],
        "{}",
        agent.log()
    );
    let r = &server.reports_of("slow")[2];
    assert_eq!(r.detail.exit_code, None);
    assert_eq!(r.detail.code, Some(Code::E20));
    assert!(
        r.detail
            .output_tail
            .as_deref()
            .unwrap()
            .contains("installer started")
    );
    let pgid: i32 = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pgid > 1);
    let left = running_in_group(pgid);
    assert!(left.is_empty(), "still running: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_install_is_announced_with_busy_heartbeats() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let done = tmp.path().join("done");
    let yaml = format!(
        "id: waits-pkg\nkind: application\ntitle: waits for the test\ntargets: [{{ os: debian }}, {{ os: ubuntu }}]\nidentification:\n  - file: {d}\n    change: new\npayload: [run.sh]\ninstall: {{ command: 'sh \"{{{{payload.0}}}}\"', timeout: 30m }}\n",
        d = done.display()
    );
    // The install finishes only once the test saw the agent's busy heartbeat.
    let script = format!(
        "while [ ! -e '{g}' ]; do sleep 0.05; done\ntouch '{d}'\n",
        g = go.display(),
        d = done.display()
    );
    let built = build_package(
        &tmp.path().join("pkg"),
        &yaml,
        &[("run.sh", script.as_bytes())],
    );
    let (server, agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.push_work(work("busy", 1, &built));
    wait_for("a busy heartbeat for the running install", || {
        server.with(|s| s.busy.iter().any(|d| d == "busy"))
    })
    .await;
    assert_eq!(
        events(&server.reports_of("busy")),
        ["probed:not_applied", "transferred"],
        "still installing"
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(
        finished(&server, "busy").await,
        [
            "probed:not_applied",
            "transferred",
            "executed:succeeded",
            "verified:applied"
        ],
        "{}",
        agent.log()
    );
}
