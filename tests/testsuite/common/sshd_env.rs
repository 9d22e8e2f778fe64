//! The private OpenSSH servers scripts/sshd.sh starts (scripts/test.sh does it once per run):
//! where they listen, as which user, with which keys. Outside CI a test without them is
//! skipped with a message; under `CI=true` it fails.
//!
//! Checks on the far side use the OpenSSH client (`ssh`), not patchcast's own SSH code, so a
//! bug there cannot hide itself.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SshEnv {
    /// `127.0.0.1:PORT` each.
    pub hosts: Vec<String>,
    pub user: String,
    pub key: PathBuf,
    pub host_key_pub: PathBuf,
    /// A 1 MiB file system owned by the login user, when the machine allowed mounting one.
    pub small_dir: Option<String>,
}

impl SshEnv {
    pub fn get() -> Option<SshEnv> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(hosts) = var("PATCHCAST_TEST_SSH") else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI=true but PATCHCAST_TEST_SSH is unset: run the tests through scripts/test.sh, which starts sshd"
                );
            }
            eprintln!(
                "SKIPPED: PATCHCAST_TEST_SSH is unset (scripts/test.sh sets it; by hand: eval \"$(scripts/sshd.sh start /tmp/sshd-dev)\")"
            );
            return None;
        };
        Some(SshEnv {
            hosts: hosts.split(',').map(str::to_string).collect(),
            user: var("PATCHCAST_TEST_SSH_USER").expect("PATCHCAST_TEST_SSH_USER"),
            key: var("PATCHCAST_TEST_SSH_KEY")
                .expect("PATCHCAST_TEST_SSH_KEY")
                .into(),
            host_key_pub: var("PATCHCAST_TEST_SSH_HOST_KEY")
                .expect("PATCHCAST_TEST_SSH_HOST_KEY")
                .into(),
            small_dir: var("PATCHCAST_TEST_SSH_SMALL_DIR"),
        })
    }

    pub fn port(&self, i: usize) -> u16 {
        self.hosts[i].rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// `user@127.0.0.1:PORT` of host `i`.
    pub fn target(&self, i: usize) -> String {
        format!("{}@{}", self.user, self.hosts[i])
    }

    /// The host key line as it is in the .pub file (`ssh-ed25519 AAAA…`).
    pub fn host_key_line(&self) -> String {
        std::fs::read_to_string(&self.host_key_pub)
            .unwrap()
            .trim()
            .to_string()
    }

    /// A known_hosts file in `dir` that vouches for host `i`.
    pub fn known_hosts(&self, dir: &Path, i: usize) -> PathBuf {
        let p = dir.join(format!("known_hosts_{i}"));
        std::fs::write(
            &p,
            format!("[127.0.0.1]:{} {}\n", self.port(i), self.host_key_line()),
        )
        .unwrap();
        p
    }

    /// Runs `cmd` on host `i` with the OpenSSH client; panics unless it exits 0. Returns
    /// its stdout (stderr carries sshd's notices, e.g. about the login's home directory).
    pub fn ssh(&self, i: usize, cmd: &str) -> String {
        let (ok, out, err) = self.run(i, cmd);
        assert!(ok, "ssh {cmd}: {out}{err}");
        out
    }

    /// Whether `cmd` exited 0, and everything it printed.
    pub fn try_ssh(&self, i: usize, cmd: &str) -> (bool, String) {
        let (ok, out, err) = self.run(i, cmd);
        (ok, format!("{out}{err}"))
    }

    fn run(&self, i: usize, cmd: &str) -> (bool, String, String) {
        let o = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port(i).to_string()])
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(cmd)
            .output()
            .expect("running ssh");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A fresh directory on host `i`, owned by the login user.
    pub fn scratch(&self, i: usize) -> String {
        self.ssh(i, "mktemp -d /tmp/pcssh-test.XXXXXX")
            .trim()
            .to_string()
    }
}
