//! Every FAQ code from a real fault (issue 18): the real server, real agent processes and a
//! fault proxy (`common::fault_proxy`) between them. Each fault ends as one result line whose
//! code, message (with its parameters) and remedy `patchcast results --json` shows in English
//! and Japanese.
//!
//! | code | fault |
//! |---|---|
//! | E01 | the archive is gone from the server's content store at dispatch |
//! | E02 | the proxy resets the download on every retry |
//! | E04 | the package targets another OS |
//! | E05 | the proxy swallows everything while the agent downloads: the deadline passes |
//! | E07 | the agent's work directory is a read-only tmpfs |
//! | E08 | the proxy closes the download mid-body on every retry |
//! | E09 | the proxy stalls the download on every retry |
//! | E10 | the content vanishes from the server between dispatch and download |
//! | E11 | the file the installer replaces is a running executable (ETXTBSY) |
//! | E12 | the installer is not executable (sh exits 126) |
//! | E13 | the agent is killed while its installer runs: the deadline passes |
//! | E21 | the installer exits 3 |
//! | E23 | the identification probe is killed (SIGKILL) at the verify after the install |
//! | E17 | the server's data directory (a 48 MB tmpfs) fills below its reserve while it works |

use crate::common::agent_harness::{AgentProc, root_or_skip};
use crate::common::fault_proxy::{FaultProxy, Mode};
use crate::common::server_harness::{Backend, TestServer, both_backends};
use crate::common::sources_harness::{application, profile, publish};
use patchcast::core::errors::Code;
use patchcast::model::scenario::Scenario;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GROUP: &str = "faults";
/// Bytes a faulty connection carries before the fault: far less than one archive, far more
/// than a poll or a report.
const FAULT_AFTER: u64 = 96 << 10;
const BLOB: usize = 2 << 20;

/// Random-looking bytes (nothing compresses or repeats).
fn blob(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..BLOB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An emulated Windows hotfix with a 2 MiB payload, applied when its KB is registered.
fn big_hotfix(dir: &Path, id: &str, kb: &str, seed: u64) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("big.bin"), blob(seed)).unwrap();
    std::fs::write(
        d.join("emulated-installer.yaml"),
        format!("updates: [{kb}]\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("package.yaml"),
        format!(
            "id: {id}\nkind: hotfix\ntitle: big hotfix {id}\nversion: \"1.0\"\nkb: {kb}\ntargets:\n  - {{ os: windows-server-2008, arch: x86 }}\npayload: [big.bin, emulated-installer.yaml]\ninstall:\n  command: 'install {{{{payload.0}}}}'\n  timeout: 5m\n"
        ),
    )
    .unwrap();
    d
}

async fn run(
    server: &TestServer,
    machine: &str,
    package: &str,
    timeout_secs: Option<u64>,
) -> String {
    let s = Scenario {
        name: format!("fault-{package}"),
        action: patchcast::core::pipeline::Action::Install,
        packages: vec![package.parse().unwrap()],
        machines: vec![machine.into()],
        groups: vec![],
        max_concurrent: None,
        max_unverified_runs: 3,
        max_attempts: 1,
        retry_delay_ms: 0,
        allow_reboot: false,
        timeout_secs,
        when: None,
        versions: Default::default(),
        rollback: false,
    };
    server.admin().run_scenario(&s).await.unwrap().id
}

/// `patchcast results --json` of one scenario in `lang`: its only delivery.
fn result(server: &TestServer, scenario: &str, lang: &str) -> Value {
    let o = server.cli(&["results", "--json", "--scenario", scenario, "--lang", lang]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ds = v["deliveries"].as_array().unwrap();
    assert_eq!(ds.len(), 1, "{v:#}");
    ds[0].clone()
}

/// Waits (guarded against hangs, never timed) for the scenario's delivery to end.
async fn settled(server: &TestServer, scenario: &str, agent: &AgentProc) -> Value {
    let start = Instant::now();
    loop {
        let d = result(server, scenario, "en");
        let state = d["state"]["state"].as_str().unwrap_or_default().to_string();
        if ["failed", "not_applicable", "applied", "loop_detected"].contains(&state.as_str()) {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{scenario} did not end: {d:#}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The delivery of `scenario` ended with `code` (failed, or not applicable for E04); its
/// message names `names` in both languages, and each language has its own message and remedy.
async fn check(
    server: &TestServer,
    scenario: &str,
    agent: &AgentProc,
    code: Code,
    (en, ja): (&str, &str),
    names: &[&str],
) {
    let d = settled(server, scenario, agent).await;
    assert_eq!(d["last_code"], code.as_str(), "{d:#}\n{}", agent.log());
    let want_state = if code == Code::E04 {
        "not_applicable"
    } else {
        "failed"
    };
    assert_eq!(d["state"]["state"], want_state, "{d:#}");
    let ja_row = result(server, scenario, "ja");
    for (lang, row, text) in [("en", &d, en), ("ja", &ja_row, ja)] {
        let r = &row["rendered"];
        assert_eq!(r["code"], code.as_str(), "{lang}: {row:#}");
        let (message, remedy) = (
            r["message"].as_str().unwrap(),
            r["remedy"].as_str().unwrap(),
        );
        assert!(message.contains(text), "{code} {lang}: {message}");
        for n in names {
            assert!(message.contains(n), "{code} {lang} names {n}: {message}");
        }
        let catalog = patchcast::core::errors::render(
            code,
            patchcast::core::errors::Lang::from_tag(lang),
            &Default::default(),
        );
        let opening: String = catalog.remedy.chars().take(20).collect();
        assert!(
            remedy.starts_with(&opening),
            "{code} {lang} remedy: {remedy}"
        );
    }
}

async fn agent_faults(backend: Backend) {
    let Some(server) =
        TestServer::start(backend, &["--poll", "1s", "--no-reply-margin", "1s"]).await
    else {
        return;
    };
    let proxy = FaultProxy::start(&server.url).await;
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agents/ws-f"));
    std::fs::write(agent.root.join("endpoint.yaml"), profile("ws-f")).unwrap();
    let (ok, out) = agent.enroll(&proxy.url, &token, &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start_with(&[("PATCHCAST_TRANSFER_IDLE_SECS", Path::new("1"))]);
    let dir = server.path().join("pkgs");

    // E02, E08, E09: the download breaks the same way on every quick retry.
    for (i, (mode, code, en, ja, says)) in [
        (
            Mode::ResetAfter(FAULT_AFTER),
            Code::E02,
            "A socket error occurred while downloading net-e02 (",
            "のダウンロード中にソケットエラーが発生しました。",
            "download reset",
        ),
        (
            Mode::CloseAfter(FAULT_AFTER),
            Code::E08,
            "Creating the file transfer thread failed. The transfer of net-e08 (",
            "の転送が最後まで届く前に終了しました。",
            "download cut",
        ),
        (
            Mode::StallAfter(FAULT_AFTER),
            Code::E09,
            "Creating the file transfer control thread failed. The transfer of net-e09 (",
            "の転送が停止しました。",
            "download stalled: no data for 1 s",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("net-{}", code.as_str().to_lowercase());
        publish(
            &server,
            &big_hotfix(&dir, &id, &format!("KB91000{i}0"), i as u64 + 7),
            &[],
        );
        proxy.set(mode);
        let sc = run(&server, "ws-f", &id, None).await;
        check(&server, &sc, &agent, code, (en, ja), &[says, &id]).await;
        proxy.set(Mode::Pass);
    }

    // E11: the file the installer replaces is a running program.
    publish(&server, &application(&dir, "busy-app"), &[]);
    let dest = agent.root.join("fs/C/Windows/System32/pcsample.dll");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy("/bin/sleep", &dest).unwrap();
    let mut running = std::process::Command::new(&dest)
        .arg("600")
        .spawn()
        .unwrap();
    let sc = run(&server, "ws-f", "busy-app", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E11,
        (
            "Transferring file %SystemRoot%\\System32\\pcsample.dll to the machine failed.",
            "クライアントへのファイル「%SystemRoot%\\System32\\pcsample.dll」の転送に失敗しました。",
        ),
        &["busy"],
    )
    .await;
    running.kill().unwrap();
    running.wait().unwrap();

    // E04: a package for another OS is one result line, not silence.
    let other = dir.join("other-os");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("fix.txt"), "x\n").unwrap();
    std::fs::write(
        other.join("package.yaml"),
        "id: other-os\nkind: hotfix\ntitle: for Windows Server 2003 only\nversion: \"1.0\"\nkb: KB9100900\ntargets:\n  - { os: windows-server-2003, arch: x86 }\npayload: [fix.txt]\ninstall:\n  command: 'install {{payload.0}}'\n  timeout: 5m\n",
    )
    .unwrap();
    publish(&server, &other, &[]);
    let sc = run(&server, "ws-f", "other-os", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E04,
        (
            "Package other-os does not target this machine's OS",
            "パッケージ「other-os」はこのコンピュータのOS",
        ),
        &[],
    )
    .await;

    // E01: the archive is gone from the server's content store when the work is handed out.
    let sha = publish(&server, &big_hotfix(&dir, "gone", "KB9100910", 99), &[]);
    let stored = server.data.join("content").join(&sha);
    std::fs::remove_file(&stored).unwrap();
    let sc = run(&server, "ws-f", "gone", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E01,
        (
            "An error occurred while preparing the auto-update.",
            "自動更新準備中エラーが発生しました。",
        ),
        &[&sha, "cannot be read from the content store"],
    )
    .await;

    // E07: the agent's work directory is a read-only file system.
    if mounted_read_only(&agent.root.join("work")) {
        let _unmount = Unmount(agent.root.join("work"));
        publish(&server, &big_hotfix(&dir, "ro", "KB9100920", 5), &[]);
        let sc = run(&server, "ws-f", "ro", None).await;
        check(
            &server,
            &sc,
            &agent,
            Code::E07,
            (
                "An error occurred while preparing the file transfer.",
                "ファイル転送準備時にエラーが発生しました。",
            ),
            &["Read-only file system"],
        )
        .await;
    }

    // E05: everything between the agent and the server is swallowed mid-download; the
    // deadline (1 s install timeout + 1 s margin) passes while the delivery is transferring.
    publish(&server, &big_hotfix(&dir, "lost", "KB9100930", 11), &[]);
    let stalls = |log: String| log.matches("download interrupted").count();
    let before = stalls(agent.log());
    proxy.set(Mode::StallAfter(FAULT_AFTER));
    let sc = run(&server, "ws-f", "lost", Some(1)).await;
    // Once the download has stalled, nothing gets through any more: the server is lost.
    crate::common::agent_harness::wait_for("the download to stall", || {
        stalls(agent.log()) > before
    })
    .await;
    proxy.set(Mode::Blackhole);
    check(
        &server,
        &sc,
        &agent,
        Code::E05,
        (
            "Re-checking the connection to the machine failed.",
            "クライアントとの接続の再確認に失敗しました。",
        ),
        &["no report from the agent"],
    )
    .await;
    proxy.set(Mode::Pass);
}
both_backends!(agent_faults);

/// Mounts a read-only tmpfs on `dir`; false (skipped) when not root outside CI.
fn mounted_read_only(dir: &Path) -> bool {
    if !root_or_skip() {
        return false;
    }
    std::fs::create_dir_all(dir).unwrap();
    let o = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    true
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        // Lazy: a server still holding files there lets go as it exits.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real Linux agent: the content vanishes from the server between dispatch and download
/// (E10: the probe, run on the agent before the download, deletes it), and an installer
/// without its executable bit (E12: `sh` exits 126).
async fn linux_agent_faults(backend: Backend) {
    let Some(server) =
        TestServer::start(backend, &["--poll", "1s", "--no-reply-margin", "1s"]).await
    else {
        return;
    };
    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agents/linux"));
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();
    let machine = wait_machine(&server).await;
    let dir = server.path().join("pkgs");
    let package = |id: &str, rule: &str, command: &str| {
        let d = dir.join(id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("run.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(
            d.join("package.yaml"),
            format!(
                "id: {id}\nkind: application\ntitle: {id}\nversion: 1.0.0\ntargets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\nidentification:\n{rule}payload: [run.sh]\ninstall:\n  command: '{command}'\n  timeout: 1m\n"
            ),
        )
        .unwrap();
        d
    };
    let content = server.data.join("content");
    let vanish = package(
        "vanish",
        &format!(
            "  - probe: 'rm -f {}/*; exit 1'\n    exit_code: 0\n",
            content.display()
        ),
        "sh \"{{payload.0}}\"",
    );
    let sha = publish(&server, &vanish, &[]);
    let sc = run(&server, &machine, "vanish", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E10,
        (
            &format!("An error occurred while transferring file {sha}.pcpkg."),
            &format!("ファイル「{sha}.pcpkg」転送時にエラーが発生しました。"),
        ),
        &["HTTP 404"],
    )
    .await;

    // The result names the machine with its MAC address, in the JSON and in the table.
    let mac = result(&server, &sc, "en")["mac"]
        .as_str()
        .expect("results --json names the MAC")
        .to_string();
    let o = server.cli(&["results", "--scenario", &sc]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains(&format!("({mac})")), "{table}");

    let marker = server.path().join("never-created");
    let noexec = package(
        "noexec",
        &format!("  - file: {}\n    change: new\n", marker.display()),
        "\"{{payload.0}}\"",
    );
    publish(&server, &noexec, &[]);
    let sc = run(&server, &machine, "noexec", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E12,
        (
            "An error occurred while executing package noexec.",
            "パッケージ「noexec」実行時にエラーが発生しました。",
        ),
        &["exit 126", "Permission denied"],
    )
    .await;

    // E21: the installer ran and said it failed.
    let fails = package(
        "fails",
        &format!("  - file: {}\n    change: new\n", marker.display()),
        "sh -c \"exit 3\"",
    );
    publish(&server, &fails, &[]);
    let sc = run(&server, &machine, "fails", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E21,
        (
            "The installation of package fails exited with exit code 3.",
            "パッケージ「fails」のインストールが終了コード3で終了しました。",
        ),
        &[],
    )
    .await;

    // E23: the identification probe is killed (SIGKILL) once the installer has run, so the
    // verify after the install cannot say applied or not.
    let installed = server.path().join("undecidable-installed");
    let undecidable = package(
        "undecidable",
        &format!(
            "  - probe: 'test -e {} && kill -9 $$; exit 1'\n    exit_code: 0\n",
            installed.display()
        ),
        &format!("touch {}", installed.display()),
    );
    publish(&server, &undecidable, &[]);
    let sc = run(&server, &machine, "undecidable", None).await;
    let rule = format!(
        "probe `test -e {} && kill -9 $$; exit 1` exits 0",
        installed.display()
    );
    check(
        &server,
        &sc,
        &agent,
        Code::E23,
        (
            "Whether package undecidable is applied cannot be determined",
            "パッケージ「undecidable」の適用状態を判断できません。",
        ),
        &[&rule],
    )
    .await;
    assert!(installed.exists(), "the installer ran before the verify");

    // E13: the agent dies while the installer runs (after the transfer): no "finished" reply
    // within the deadline (the install timeout, 2 s, and the 1 s margin).
    let slow = package(
        "slow",
        &format!("  - file: {}\n    change: new\n", marker.display()),
        "sleep 4",
    );
    let yaml = slow.join("package.yaml");
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("timeout: 1m", "timeout: 2s");
    std::fs::write(&yaml, text).unwrap();
    publish(&server, &slow, &[]);
    let sc = run(&server, &machine, "slow", None).await;
    let start = Instant::now();
    while result(&server, &sc, "en")["state"]["state"] != "executing" {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.sigkill();
    check(
        &server,
        &sc,
        &agent,
        Code::E13,
        (
            "The \"auto-update finished\" reply from the machine was not received.",
            "クライアントからの「自動更新終了」応答を受け取れませんでした。",
        ),
        &["no report from the agent"],
    )
    .await;
}
both_backends!(linux_agent_faults);

/// The id of the one enrolled machine, once its inventory is in.
async fn wait_machine(server: &TestServer) -> String {
    let start = Instant::now();
    loop {
        let ms = server.admin().machines().await.unwrap();
        if let Some(m) = ms.first() {
            return m.id.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no machine enrolled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// FAQ Q3: the server's own disk fills while it works. Its data directory is a 48 MB tmpfs
/// and it keeps 8 MB; once a file leaves less than that, the next delivery ends with E17 and
/// both figures, the dashboard's auto-update-error banner shows it, and the server keeps
/// running: with the space freed, the same delivery retried is applied.
async fn server_disk_fills_during_operation(backend: Backend) {
    if !root_or_skip() {
        return;
    }
    let Some(mut server) =
        TestServer::start(backend, &["--poll", "1s", "--reserve", "8000000"]).await
    else {
        return;
    };
    // Move the data directory onto a small tmpfs of its own.
    server.kill();
    let saved = server.path().join("data-saved");
    let sh = |cmd: &str| {
        let o = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let (data, saved_s) = (
        server.data.display().to_string(),
        saved.display().to_string(),
    );
    sh(&format!(
        "cp -a '{data}' '{saved_s}' && mount -t tmpfs -o size=48m tmpfs '{data}' && cp -a '{saved_s}/.' '{data}/'"
    ));
    let _unmount = Unmount(server.data.clone());
    server.spawn();

    let token = server.group_token(GROUP).await;
    let mut agent = AgentProc::new(&server.path().join("agents/ws-q3"));
    std::fs::write(agent.root.join("endpoint.yaml"), profile("ws-q3")).unwrap();
    let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
    assert!(ok, "{out}");
    agent.start();
    let dir = server.path().join("pkgs");
    publish(
        &server,
        &crate::common::sources_harness::hotfix(&dir, "q3", "KB9100940"),
        &[],
    );

    // Fill the disk to 4 MB short of the reserve's 8 MB.
    let free = free_bytes(&server.data);
    let filler = server.data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = free.saturating_sub(4_000_000);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    let sc = run(&server, "ws-q3", "q3", None).await;
    check(
        &server,
        &sc,
        &agent,
        Code::E17,
        (
            "The auto-update failed: the patchcast server's disk is short of space.",
            "管理サーバのディスク容量が不足しています。",
        ),
        &["8.0 MB"],
    )
    .await;

    // The console's dashboard: the auto-update error banner, and E17 among the recent errors.
    let add = crate::common::web_client::add_account(&server.data, "q3", "a long console password");
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mut c = crate::common::web_client::WebClient::new(&server.url, &server.fingerprint);
    c.sign_in("q3", "a long console password").await;
    let page = c.get("/").await;
    assert!(
        page.body.contains("id=\"autoupdate-error\"") && page.body.contains("E17"),
        "{}",
        page.body
    );

    // Still running: with the space freed, the same delivery retried is applied.
    std::fs::remove_file(&filler).unwrap();
    let id = result(&server, &sc, "en")["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = server.cli(&["delivery", "retry", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = settled(&server, &sc, &agent).await;
    assert_eq!(d["state"]["state"], "applied", "{d:#}");
}
both_backends!(server_disk_fills_during_operation);

fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}
