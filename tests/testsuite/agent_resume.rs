//! Interrupted deliveries resume: a download cut mid-body continues with `Range`, and the agent
//! killed with SIGKILL during the download and again during the install picks up from its
//! journal at restart. The final reports are right, each step is reported once, and success
//! is reported only after a passing verify.

use crate::common::agent_harness::*;
use crate::common::scripted_server::{Glitch, Scripted};
use std::path::Path;

const BIG: usize = 6 << 20;

/// Random-looking bytes (so nothing compresses or repeats).
fn data(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A package with a large payload: the install copies it to `dest` (its hash identifies it);
/// `extra` runs before the copy.
fn big_package(dir: &Path, dest: &Path, extra: &str) -> Built {
    let blob = data(BIG);
    let sha = patchcast::pack::hash::sha256_bytes(&blob).hex();
    let yaml = format!(
        "id: big-pkg\nkind: application\ntitle: large payload\ntargets: [{{ os: debian }}, {{ os: ubuntu }}]\nidentification:\n  - file: {d}\n    change: new\n    sha256: {sha}\npayload: [run.sh, blob.bin]\ninstall: {{ command: 'sh \"{{{{payload.0}}}}\" \"{{{{payload.1}}}}\"', timeout: 30m }}\n",
        d = dest.display()
    );
    let script = format!(
        "{extra}\ncp \"$1\" '{d}.tmp' && mv '{d}.tmp' '{d}'\necho copied\n",
        d = dest.display()
    );
    build_package(
        dir,
        &yaml,
        &[("run.sh", script.as_bytes()), ("blob.bin", &blob)],
    )
}

async fn enrolled(root: &Path) -> (Scripted, AgentProc) {
    let server = Scripted::start("tok", vec![publisher_hex()], 300).await;
    let agent = AgentProc::new(root);
    let (ok, out) = agent.enroll(&server.url, "tok", &server.fingerprint).await;
    assert!(ok, "{out}");
    (server, agent)
}

async fn verified(server: &Scripted, id: &str) {
    wait_for(&format!("{id} to be verified"), || {
        events(&server.reports_of(id))
            .iter()
            .any(|e| e.starts_with("verified") || e.starts_with("refused"))
    })
    .await;
}

const EXPECTED: [&str; 4] = [
    "probed:not_applied",
    "transferred",
    "executed:succeeded",
    "verified:applied",
];

/// Every report was received once (nothing acknowledged was sent again), with seq 1, 2, 3, …
fn assert_each_report_sent_once(server: &Scripted, id: &str) {
    let raw: Vec<u32> = server.with(|s| {
        s.reports
            .iter()
            .filter(|r| r.delivery_id == id)
            .map(|r| r.seq)
            .collect()
    });
    assert_eq!(
        raw,
        (1..=raw.len() as u32).collect::<Vec<_>>(),
        "seqs as received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("installed.bin");
    let built = big_package(&tmp.path().join("pkg"), &dest, "");
    let (server, mut agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.with(|s| s.glitch = Some(Glitch::CutAfter(1 << 20)));
    agent.start();
    server.push_work(work("cut", 1, &built));
    verified(&server, "cut").await;
    assert_eq!(
        events(&server.reports_of("cut")),
        EXPECTED,
        "{}",
        agent.log()
    );
    let ranges = server.with(|s| s.content_requests.clone());
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 1 << 20, "resumed from {from}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        data(BIG),
        "the installed copy is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_download_and_during_install_then_restart_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("installed.bin");
    let count = tmp.path().join("runs");
    let first_pgid = tmp.path().join("first.pgid");
    // The first install run records its process group and hangs; later runs go through.
    let extra = format!(
        "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'\nif [ $n -eq 1 ]; then cut -d' ' -f5 /proc/$$/stat > '{p}.tmp'; mv '{p}.tmp' '{p}'; sleep 600; fi",
        c = count.display(),
        p = first_pgid.display()
    );
    let built = big_package(&tmp.path().join("pkg"), &dest, &extra);
    let (server, mut agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());
    const STALL_AT: usize = 2 << 20;
    server.with(|s| s.glitch = Some(Glitch::StallAfter(STALL_AT)));
    agent.start();
    server.push_work(work("killed", 1, &built));

    // Killed while the download stalls half way.
    let part = agent.root.join("work/killed/archive.part");
    wait_for("half of the archive on disk", || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() == STALL_AT as u64)
    })
    .await;
    agent.sigkill();
    let journal = std::fs::read_to_string(agent.root.join("journal/killed.json")).unwrap();
    assert!(journal.contains("\"step\": \"fetch\""), "{journal}");

    // Restarted: the download resumes from where it stopped, then the install hangs; kill again.
    agent.start();
    wait_for("the first install run", || first_pgid.exists()).await;
    let pgid: i32 = std::fs::read_to_string(&first_pgid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The agent journals the install's process group as soon as it has started it.
    let journal = agent.root.join("journal/killed.json");
    wait_for("the install's process group in the journal", || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains(&format!("\"pgid\": {pgid}")))
    })
    .await;
    agent.sigkill();
    let ranges = server.with(|s| s.content_requests.clone());
    assert_eq!(ranges, [None, Some(format!("bytes={STALL_AT}-"))]);
    let so_far = events(&server.reports_of("killed"));
    assert_eq!(
        so_far,
        ["probed:not_applied", "transferred"],
        "no success before verify"
    );

    // Restarted again: the leftover install is killed, the payload verified again, the
    // install runs again and the delivery is verified.
    agent.start();
    verified(&server, "killed").await;
    assert_eq!(
        events(&server.reports_of("killed")),
        EXPECTED,
        "{}",
        agent.log()
    );
    assert_each_report_sent_once(&server, "killed");
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().trim(),
        "2",
        "installed twice in all"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data(BIG));
    assert!(
        agent
            .log()
            .contains("install was interrupted; running it again")
    );
    // The first run's process group is gone.
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            f[2] == pgid.to_string() && f[0] != "Z"
        })
        .collect();
    assert!(alive.is_empty(), "{alive:?}");
    let ranges = server.with(|s| s.content_requests.len());
    assert_eq!(ranges, 2, "the complete archive was not downloaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_report_is_resent_after_a_kill_with_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("installed.bin");
    let built = big_package(&tmp.path().join("pkg"), &dest, "");
    let (server, mut agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());
    server.with(|s| s.fail_reports = Some(503));
    agent.start();
    server.push_work(work("outage", 1, &built));
    wait_for("the probe report to be tried twice", || {
        server.with(|s| s.failed_reports.len() >= 2)
    })
    .await;
    let journal = std::fs::read_to_string(agent.root.join("journal/outage.json")).unwrap();
    assert!(
        journal.contains("\"outbox\"") && journal.contains("\"probed\""),
        "{journal}"
    );
    agent.sigkill();
    assert!(server.with(|s| s.failed_reports.iter().all(|&seq| seq == 1)));
    assert!(server.reports_of("outage").is_empty());

    server.with(|s| s.fail_reports = None);
    agent.start();
    verified(&server, "outage").await;
    assert_eq!(
        events(&server.reports_of("outage")),
        EXPECTED,
        "{}",
        agent.log()
    );
    assert_each_report_sent_once(&server, "outage");
}

/// An agent killed between extracting a payload and starting its install used the extracted
/// files at restart without their hashes. The journal is left at that point by hand (the
/// verified archive and a changed extraction on disk); at restart the archive is extracted
/// and verified again, and the changed script never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_extracted_payload_is_verified_again_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("installed.bin");
    let built = big_package(&tmp.path().join("pkg"), &dest, "");
    let (server, mut agent) = enrolled(&tmp.path().join("agent")).await;
    server.serve(&built.sha256, built.bytes.clone());

    let w = work("resumed", 1, &built);
    let dir = agent.root.join("work/resumed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("archive.pcpkg"), &built.bytes).unwrap();
    patchcast::pack::archive::extract(
        std::io::Cursor::new(&built.bytes),
        &[publisher().verifying_key()],
        &dir.join("payload"),
    )
    .unwrap();
    let tampered = tmp.path().join("tampered.marker");
    let script = dir.join("payload/run.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, format!("touch '{}'\n{text}", tampered.display())).unwrap();
    let mut entry = patchcast::runner::Entry::new(w);
    entry.step = patchcast::core::pipeline::Step::Execute { pgid: None };
    std::fs::create_dir_all(agent.root.join("journal")).unwrap();
    std::fs::write(
        agent.root.join("journal/resumed.json"),
        serde_json::to_vec_pretty(&entry).unwrap(),
    )
    .unwrap();

    agent.start();
    verified(&server, "resumed").await;
    assert_eq!(
        events(&server.reports_of("resumed")),
        ["executed:succeeded", "verified:applied"],
        "{}",
        agent.log()
    );
    assert!(!tampered.exists(), "a payload changed on disk never runs");
    assert_eq!(std::fs::read(&dest).unwrap(), data(BIG));
}
