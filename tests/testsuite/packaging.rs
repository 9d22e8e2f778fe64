//! The Debian packages (issue 15 item 13): `scripts/build-deb.sh` packs the binaries this test
//! run built, `dpkg -i` installs them for real, `systemd-analyze verify` checks the units, and
//! the installed binaries are started the way their units say (user, environment, environment
//! file, command line, umask): the server as its system user, the agent enrolled and checking
//! in. The machines here do not run systemd as PID 1, so the units' own start is not possible.
//! Root only (it installs software); under `CI=true` without root it fails.

use crate::common::agent_harness::{root_or_skip, wait_for};
use patchcast::transport::admin_api::{Admin, TokenRequest};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const SERVER_UNIT: &str = "/lib/systemd/system/patchcast-server.service";
const AGENT_UNIT: &str = "/lib/systemd/system/patchcast-agent.service";

/// What a unit's [Service] section says about starting its process.
#[derive(Debug, Default)]
struct Unit {
    user: Option<String>,
    env: BTreeMap<String, String>,
    env_files: Vec<PathBuf>,
    exec: Vec<String>,
    umask: Option<u32>,
}

fn read_unit(path: &str) -> Unit {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut u = Unit::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "User" => u.user = Some(v.into()),
            "Environment" => {
                let (k, v) = v.split_once('=').unwrap();
                u.env.insert(k.into(), v.into());
            }
            "EnvironmentFile" => u.env_files.push(v.trim_start_matches('-').into()),
            "ExecStart" => u.exec = v.split_whitespace().map(String::from).collect(),
            "UMask" => u.umask = Some(u32::from_str_radix(v, 8).unwrap()),
            _ => {}
        }
    }
    assert!(!u.exec.is_empty(), "{path} has an ExecStart");
    u
}

impl Unit {
    /// The unit's process, as systemd would start it (environment files override `Environment=`).
    fn start(&self, extra: &[&str]) -> Child {
        let mut env = self.env.clone();
        for f in &self.env_files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            for line in text.lines().map(str::trim) {
                if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                    env.insert(k.into(), v.into());
                }
            }
        }
        let mut cmd = Command::new(&self.exec[0]);
        cmd.args(&self.exec[1..]);
        if let Some(user) = &self.user {
            let (uid, gid) = ids(user);
            cmd.uid(uid).gid(gid);
        }
        cmd.args(extra)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(&env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(mask) = self.umask {
            // SAFETY: umask is async-signal-safe and has no preconditions.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("starting the unit's ExecStart")
    }
}

/// A user's uid and primary gid.
fn ids(user: &str) -> (u32, u32) {
    let passwd = run(Command::new("getent").args(["passwd", user]));
    let field = |i: usize| passwd.split(':').nth(i).unwrap().parse().unwrap();
    (field(2), field(3))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes what the test installed, also after a failed earlier run.
fn uninstall() {
    let _ = Command::new("dpkg")
        .args(["--purge", "patchcast-agent", "patchcast"])
        .output();
    for d in [
        "/var/lib/patchcast",
        "/var/lib/patchcast-agent",
        "/etc/patchcast",
    ] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = Command::new("deluser")
        .args(["--system", "patchcast"])
        .output();
}

struct Installed(Vec<Child>);

impl Drop for Installed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        uninstall();
    }
}

fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debs_install_and_start_as_their_units_say() {
    if !root_or_skip() {
        return;
    }
    uninstall();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_patchcast")).parent().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb.sh");
    let built = run(Command::new(&script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(dir.path())
        // The test's debug binaries are large; xz would spend a minute on them.
        .args(["--compress", "none"]));
    let debs: Vec<&str> = built.lines().collect();
    assert_eq!(debs.len(), 2, "two packages: {built}");
    assert!(debs[0].contains("/patchcast_0.") && debs[1].contains("/patchcast-agent_0."));
    let info = run(Command::new("dpkg-deb").args(["--info", debs[0]]));
    assert!(info.contains("Depends: adduser"), "{info}");
    let contents = run(Command::new("dpkg-deb").args(["--contents", debs[0]]));
    for f in [
        "./usr/bin/patchcast",
        SERVER_UNIT,
        "./etc/default/patchcast",
        "man1/patchcast.1.gz",
    ] {
        assert!(
            contents.contains(f.trim_start_matches('/')),
            "{f} in {contents}"
        );
    }

    let contents = run(Command::new("dpkg-deb").args(["--contents", debs[1]]));
    for f in [
        "./usr/bin/patchcast-agent",
        AGENT_UNIT,
        "man1/patchcast-agent-enroll.1.gz",
    ] {
        assert!(
            contents.contains(f.trim_start_matches('/')),
            "{f} in {contents}"
        );
    }

    let mut installed = Installed(Vec::new());
    run(Command::new("dpkg").arg("-i").args(&debs));
    let status = run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Package} ${Status}\n",
        "patchcast",
        "patchcast-agent",
    ]));
    assert_eq!(
        status,
        "patchcast install ok installed\npatchcast-agent install ok installed\n"
    );
    let verify = Command::new("systemd-analyze")
        .args(["verify", SERVER_UNIT, AGENT_UNIT])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The system user and its data directory, made by postinst.
    let passwd = run(Command::new("getent").args(["passwd", "patchcast"]));
    let (uid, _) = ids("patchcast");
    assert!(passwd.trim_end().ends_with("/usr/sbin/nologin"), "{passwd}");
    assert_eq!(owner(Path::new("/var/lib/patchcast")), (uid, 0o750));
    assert_eq!(owner(Path::new("/var/lib/patchcast-agent")), (0, 0o700));

    // The administrator's settings go in the conffile the unit reads.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        "/etc/default/patchcast",
        format!("PATCHCAST_LISTEN=127.0.0.1:{port}\nPATCHCAST_RESERVE=0\n"),
    )
    .unwrap();
    let server_unit = read_unit(SERVER_UNIT);
    assert_eq!(server_unit.user.as_deref(), Some("patchcast"));
    let server = server_unit.start(&[]);
    let server_pid = server.id();
    installed.0.push(server);
    let data = Path::new("/var/lib/patchcast");
    wait_for("the installed server's server.json", || {
        data.join("server.json").exists() && data.join("admin.token").exists()
    })
    .await;
    // It runs as its user, and what it writes is private to it (UMask=0077).
    let server_uid = owner(Path::new(&format!("/proc/{server_pid}"))).0;
    assert_eq!(server_uid, uid, "the server runs as patchcast");
    assert_eq!(owner(&data.join("admin.token")), (uid, 0o600));
    assert_eq!(owner(&data.join("patchcast.db")).0, uid);

    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("server.json")).unwrap()).unwrap();
    let url = info["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("https://127.0.0.1:{port}"));
    let fingerprint = info["fingerprint"].as_str().unwrap().to_string();
    let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let admin = Admin::new(&url, &fingerprint, admin_token.trim()).unwrap();
    let token = admin
        .create_token(&TokenRequest {
            group: Some("debian".into()),
            uses: Some(1),
            expires_secs: 600,
        })
        .await
        .unwrap()
        .token;

    // The agent: enrolled once by hand, then started as its unit says.
    let agent_unit = read_unit(AGENT_UNIT);
    assert_eq!(
        agent_unit.user, None,
        "the agent runs as root: it installs packages"
    );
    let root = agent_unit.env["PATCHCAST_AGENT_ROOT"].clone();
    assert_eq!(root, "/var/lib/patchcast-agent");
    let token_file = dir.path().join("enroll.token");
    std::fs::write(&token_file, &token).unwrap();
    run(Command::new("/usr/bin/patchcast-agent")
        .args(["enroll", "--root", &root, "--server", &url, "--fingerprint"])
        .arg(&fingerprint)
        .arg("--token-file")
        .arg(&token_file));
    assert!(
        Path::new(&root).join("agent.json").exists(),
        "enrolled: the unit's ConditionPathExists now holds"
    );
    installed.0.push(agent_unit.start(&[]));
    let mut machines = Vec::new();
    for _ in 0..600 {
        machines = admin.machines().await.unwrap();
        if machines.iter().any(|m| m.last_seen_ms > m.enrolled_at_ms) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert!(
        machines[0].last_seen_ms > machines[0].enrolled_at_ms,
        "the installed agent checked in after enrolling: {machines:?}"
    );
    assert_eq!(machines[0].enroll_group.as_deref(), Some("debian"));
    drop(installed);
    assert!(!Path::new("/usr/bin/patchcast").exists(), "purged");
    assert!(
        !run(Command::new("getent").arg("passwd")).contains("\npatchcast:"),
        "the user is gone with its processes"
    );
}
