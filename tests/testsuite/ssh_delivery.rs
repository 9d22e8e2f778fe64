//! Agentless delivery over SSH against real OpenSSH servers on loopback (scripts/sshd.sh):
//! host key checks (refused, trust on first use), a real Linux sample installed and
//! verified, too little disk (E06, nothing sent), an install killed at its time limit (E20).
//! The server is the real `patchcast server` process; machines are added with the CLI.

use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::sshd_env::SshEnv;
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use patchcast::transport::admin_api::{Admin, DeliveryRow, ScenarioStatus};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Builds a signed package from `yaml` and `files` under the server's test directory.
fn build(server: &TestServer, id: &str, yaml: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = server.path().join("pkgs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("package.yaml"), yaml).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let report = patchcast::pack::lint::lint_dir(&dir);
    assert!(!report.has_errors(), "{:?}", report.problems);
    let out = server.path().join(format!("{id}.pcpkg"));
    patchcast::pack::archive::build(
        &dir,
        report.raw.as_ref().unwrap(),
        &server.signing,
        &out,
        |_| {},
    )
    .unwrap();
    out
}

async fn publish(server: &TestServer, archive: &Path) {
    server.admin().publish(archive).await.unwrap().unwrap();
}

/// `patchcast machine add-ssh` through the CLI; returns (exit ok, stdout+stderr).
fn add_ssh(server: &TestServer, name: &str, target: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--json", "machine", "add-ssh", name, target];
    args.extend_from_slice(extra);
    let o = server.cli(&args);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Adds host `i` with a known_hosts vouching for it; returns the machine id.
fn add_machine(server: &TestServer, env: &SshEnv, i: usize, name: &str, work_dir: &str) -> String {
    let kh = env.known_hosts(server.path(), i);
    let (ok, out) = add_ssh(
        server,
        name,
        &env.target(i),
        &[
            "--key",
            env.key.to_str().unwrap(),
            "--known-hosts",
            kh.to_str().unwrap(),
            "--work-dir",
            work_dir,
        ],
    );
    assert!(ok, "add-ssh: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["machine"]["id"].as_str().unwrap().to_string()
}

async fn run_on(
    admin: &Admin,
    machine: &str,
    package: &str,
    tune: impl FnOnce(&mut patchcast::model::scenario::Scenario),
) -> String {
    let mut s = scenario(&format!("ssh-{package}"), "unused", &[package]);
    s.groups.clear();
    s.machines = vec![machine.to_string()];
    tune(&mut s);
    admin.run_scenario(&s).await.unwrap().id
}

async fn settle(admin: &Admin, id: &str) -> DeliveryRow {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st: Result<ScenarioStatus, _> = admin.status(id, "en").await;
        if let Ok(st) = &st
            && st.done
        {
            return st.deliveries[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "scenario {id} did not finish: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_key_is_refused_and_tofu_records_the_key() {
    let Some(env) = SshEnv::get() else { return };
    let server = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let key = env.key.to_str().unwrap();

    // known_hosts holding another ed25519 key for this host:port.
    let other = server.path().join("other");
    let o = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success());
    let wrong = server.path().join("known_hosts_wrong");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    std::fs::write(&wrong, format!("[127.0.0.1]:{} {}", env.port(0), other_pub)).unwrap();
    let before = std::fs::read_to_string(&wrong).unwrap();
    // Refused even with --trust-on-first-use: a changed key is never learned.
    let (ok, out) = add_ssh(
        &server,
        "wrong-key",
        &env.target(0),
        &[
            "--key",
            key,
            "--known-hosts",
            wrong.to_str().unwrap(),
            "--trust-on-first-use",
        ],
    );
    assert!(!ok, "a wrong host key must be refused: {out}");
    assert!(out.contains("does not match the key recorded"), "{out}");
    assert!(out.contains("line 1"), "names the line: {out}");
    assert!(out.contains("ssh-keygen -R"), "says what to do: {out}");
    assert_eq!(
        std::fs::read_to_string(&wrong).unwrap(),
        before,
        "file untouched"
    );
    let secret = std::fs::read_to_string(&env.key).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!out.contains(body), "no private key material in messages");
    assert!(
        server.admin().machines().await.unwrap().is_empty(),
        "nothing registered"
    );

    // Unknown host without TOFU: refused, nothing written.
    let fresh = server.path().join("known_hosts_fresh");
    // A host name that does not resolve is E14 (resolved apart from connecting); an address
    // where nothing listens E03.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (target, code) in [
        (
            format!("{}@patchcast-no-such-host.invalid:22", env.user),
            "E14",
        ),
        (format!("{}@127.0.0.1:{dead}", env.user), "E03"),
    ] {
        let (ok, out) = add_ssh(
            &server,
            "nowhere",
            &target,
            &["--key", key, "--known-hosts", fresh.to_str().unwrap()],
        );
        assert!(!ok && out.contains(code), "{target}: {out}");
    }
    assert!(!fresh.exists());
    let (ok, out) = add_ssh(
        &server,
        "tofu",
        &env.target(0),
        &["--key", key, "--known-hosts", fresh.to_str().unwrap()],
    );
    assert!(!ok && out.contains("is not in"), "{out}");
    assert!(out.contains("--trust-on-first-use"), "{out}");
    assert!(!fresh.exists());

    // With TOFU: recorded, and it is the host's real key.
    let (ok, out) = add_ssh(
        &server,
        "tofu",
        &env.target(0),
        &[
            "--key",
            key,
            "--known-hosts",
            fresh.to_str().unwrap(),
            "--trust-on-first-use",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["host_key_learned"], true);
    let recorded = std::fs::read_to_string(&fresh).unwrap();
    let host_key_b64 = env
        .host_key_line()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        recorded.trim(),
        format!("[127.0.0.1]:{} ssh-ed25519 {host_key_b64}", env.port(0))
    );
    let ms = server.admin().machines().await.unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].hostname, "tofu");
    assert!(
        ms[0].inventory.os.starts_with("debian-") || ms[0].inventory.os.contains('-'),
        "{:?}",
        ms[0].inventory
    );
    // The same host twice is refused with the id it has.
    let (ok, out) = add_ssh(
        &server,
        "again",
        &env.target(0),
        &["--key", key, "--known-hosts", fresh.to_str().unwrap()],
    );
    assert!(!ok && out.contains(&ms[0].id), "{out}");
}

/// The linux-hello-script sample, installed under a scratch DESTDIR the login user owns.
async fn linux_sample_installs_and_verifies(backend: Backend) {
    let Some(env) = SshEnv::get() else { return };
    let Some(server) = TestServer::start(backend, &[]).await else {
        return;
    };
    let root = env.scratch(0);
    let work = format!("{root}/work");
    env.ssh(0, &format!("mkdir {work}"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/linux-hello-script");
    let hello = std::fs::read(sample.join("patchcast-hello")).unwrap();
    let install = std::fs::read(sample.join("install.sh")).unwrap();
    let yaml = format!(
        "id: linux-hello-ssh\nkind: application\ntitle: sample hello over SSH\nversion: 1.0.0\n\
         targets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\n\
         identification:\n  - file: {root}/usr/local/bin/patchcast-hello\n    change: new\n    sha256: {}\n\
         payload: [install.sh, patchcast-hello]\n\
         install:\n  command: 'DESTDIR={root} sh \"{{{{payload.0}}}}\"'\n  timeout: 2m\n",
        patchcast::pack::hash::sha256_bytes(&hello).hex()
    );
    let archive = build(
        &server,
        "linux-hello-ssh",
        &yaml,
        &[("install.sh", &install), ("patchcast-hello", &hello)],
    );
    publish(&server, &archive).await;
    let id = add_machine(&server, &env, 0, "ssh-sample", &work);
    let admin = server.admin();
    let sid = run_on(&admin, &id, "linux-hello-ssh", |_| {}).await;
    let d = settle(&admin, &sid).await;
    assert_eq!(d.state, State::Applied, "{d:#?}");
    assert!(
        d.detail.source.as_deref().unwrap().starts_with("ssh://"),
        "{:?}",
        d.detail.source
    );
    assert!(
        d.detail
            .output_tail
            .as_deref()
            .unwrap()
            .contains("installed"),
        "{:?}",
        d.detail.output_tail
    );
    assert_eq!(d.detail.exit_code, Some(0));
    // Really there, with the right content, checked with OpenSSH's own client.
    let sum = env.ssh(
        0,
        &format!("sha256sum {root}/usr/local/bin/patchcast-hello"),
    );
    assert!(
        sum.starts_with(&patchcast::pack::hash::sha256_bytes(&hello).hex()),
        "{sum}"
    );
    // The work directory is gone.
    assert_eq!(
        env.ssh(0, &format!("ls -A {work}")).trim(),
        "",
        "work dir cleaned"
    );

    // A second run finds it applied at the probe: nothing is sent again.
    let sid = run_on(&admin, &id, "linux-hello-ssh", |_| {}).await;
    let d = settle(&admin, &sid).await;
    assert_eq!(d.state, State::Applied);
    assert_eq!(
        d.detail.source, None,
        "no transfer when already applied: {d:#?}"
    );
    env.ssh(0, &format!("rm -rf {root}"));
}
both_backends!(linux_sample_installs_and_verifies);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_disk_is_e06_and_nothing_is_sent() {
    let Some(env) = SshEnv::get() else { return };
    let Some(small) = env.small_dir.clone() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but scripts/sshd.sh could not mount the 1 MiB tmpfs (PATCHCAST_TEST_SSH_SMALL_DIR)"
        );
        eprintln!("SKIPPED: no small file system (mounting tmpfs was not allowed here)");
        return;
    };
    let server = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    // 400 KiB of incompressible bytes: 3 × that is more than the 1 MiB file system.
    let mut blob = vec![0u8; 400 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let yaml = "id: big-ssh\nkind: application\ntitle: too big\nversion: 1.0.0\ntargets:\n  - { os: debian }\n  - { os: ubuntu }\n  - { os: rhel }\n  - { os: rocky }\n\
                identification:\n  - probe: 'false'\n    exit_code: 0\npayload: [blob.bin]\n\
                install:\n  command: 'true'\n  timeout: 1m\n";
    let archive = build(&server, "big-ssh", yaml, &[("blob.bin", &blob)]);
    let size = std::fs::metadata(&archive).unwrap().len();
    publish(&server, &archive).await;
    let id = add_machine(&server, &env, 0, "ssh-small", &small);
    let admin = server.admin();
    let sid = run_on(&admin, &id, "big-ssh", |s| s.max_attempts = 1).await;
    let d = settle(&admin, &sid).await;
    assert_eq!(d.last_code, Some(Code::E06), "{d:#?}");
    assert!(matches!(d.state, State::Failed { .. }), "{d:#?}");
    assert_eq!(d.detail.params.required_bytes, Some(3 * size));
    let free = d.detail.params.free_bytes.unwrap();
    assert!(free <= 1024 * 1024 && free < 3 * size, "{free}");
    assert_eq!(
        env.ssh(0, &format!("ls -A {small}")).trim(),
        "",
        "nothing was created or sent"
    );
    let rendered = d.rendered.unwrap();
    assert!(
        rendered.remedy.contains('3'),
        "the remedy names the 3 × rule: {}",
        rendered.remedy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_over_its_time_limit_is_killed_e20() {
    let Some(env) = SshEnv::get() else { return };
    let server = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let root = env.scratch(0);
    // The installer starts a child and waits: the whole group must die, not only the shell.
    let yaml = format!(
        "id: slow-ssh\nkind: application\ntitle: never finishes\nversion: 1.0.0\ntargets:\n  - {{ os: debian }}\n  - {{ os: ubuntu }}\n  - {{ os: rhel }}\n  - {{ os: rocky }}\n\
         identification:\n  - file: {root}/done\n    change: new\npayload: [slow.sh]\n\
         install:\n  command: 'sh \"{{{{payload.0}}}}\" {root}'\n  timeout: 1m\n"
    );
    let script =
        b"echo started\nsleep 300 &\necho $! > \"$1/child.pid\"\nwait\ntouch \"$1/done\"\n";
    let archive = build(&server, "slow-ssh", &yaml, &[("slow.sh", script)]);
    publish(&server, &archive).await;
    let id = add_machine(&server, &env, 0, "ssh-slow", &root);
    let admin = server.admin();
    let sid = run_on(&admin, &id, "slow-ssh", |s| {
        s.max_attempts = 1;
        s.timeout_secs = Some(2);
    })
    .await;
    let d = settle(&admin, &sid).await;
    assert_eq!(d.last_code, Some(Code::E20), "{d:#?}");
    assert!(matches!(d.state, State::Failed { .. }), "{d:#?}");
    assert!(
        d.detail.output_tail.as_deref().unwrap().contains("started"),
        "{d:#?}"
    );
    let pid = env
        .ssh(0, &format!("cat {root}/child.pid"))
        .trim()
        .to_string();
    // Gone, or a zombie its killed parent left for init to reap: not running either way.
    let state = env.ssh(0, &format!("ps -o stat= -p {pid} || true"));
    assert!(
        state.trim().is_empty() || state.trim().starts_with('Z'),
        "the installer's child {pid} must have been killed with its group: state {state:?}"
    );
    let (done, _) = env.try_ssh(0, &format!("test -e {root}/done"));
    assert!(!done);
    env.ssh(0, &format!("rm -rf {root}"));
}
