//! `patchcast demo` run by an ordinary user (issue 15 item 8): the Linux endpoints install
//! into their own prefix under the demo directory, their file rules follow it, the dpkg sample
//! is left out with its reason, and nothing ends `failed(E21)` for want of root. Run with
//! `--json`: the narration goes to stderr and stdout is one object with the results.

use crate::common::agent_harness::root_or_skip;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

fn chown(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) },
        0,
        "chown {}",
        p.display()
    );
}

#[test]
fn demo_as_an_unprivileged_user_installs_into_its_own_prefix() {
    // Switching to another user needs root (fails loudly under CI=true without it).
    if !root_or_skip() {
        return;
    }
    // The machine's own /usr/local/bin is checked below: no other test may install meanwhile.
    let _machine = crate::common::MACHINE.blocking_lock();
    let _ = std::fs::remove_file("/usr/local/bin/patchcast-hello");

    let tmp = tempfile::tempdir().unwrap();
    chown(tmp.path());
    // The binary under target/ may sit where the user cannot reach it: a copy it can run.
    let exe = tmp.path().join("patchcast");
    std::fs::copy(env!("CARGO_BIN_EXE_patchcast"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tmp.path().join("demo");

    let out = Command::new("timeout")
        .arg("300")
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(&exe)
        .args(["--json", "demo", "--exit", "--dir"])
        .arg(&dir)
        .arg("--packages")
        .arg(repo.join("packages"))
        .arg("--scenario")
        .arg(repo.join("scenarios/demo.yaml"))
        .env("HOME", tmp.path())
        .env("TMPDIR", tmp.path())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "{all}");

    // With --json the narration is on stderr, and stdout is one JSON object.
    let prefix = dir.canonicalize().unwrap().join("prefix");
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "not root: the Linux endpoints install into {}/<endpoint> (linux-hello-deb is left out: dpkg installs only as root)",
            prefix.display()
        ),
        "{all}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{all}"));
    assert_eq!(
        summary["linux_endpoints"],
        prefix.display().to_string(),
        "{all}"
    );
    let rows = summary["results"]["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        rows.iter().all(|r| r["last_code"] != "E21"),
        "a Linux endpoint lacked a permission:\n{all}"
    );
    let sample = std::fs::read(repo.join("packages/linux-hello-script/patchcast-hello")).unwrap();
    for name in ["linux-1", "linux-2"] {
        let rows: Vec<_> = rows.iter().filter(|r| r["hostname"] == name).collect();
        assert!(
            rows.iter().any(
                |r| r["package_id"] == "linux-hello-script" && r["state"]["state"] == "applied"
            ),
            "{name}: linux-hello-script not applied:\n{all}"
        );
        assert!(
            !rows.iter().any(|r| r["package_id"] == "linux-hello-deb"),
            "{name}: the dpkg sample was delivered:\n{all}"
        );
        assert!(
            rows.iter().all(|r| r["state"]["state"] != "failed"),
            "{name}: a delivery failed:\n{all}"
        );
        // Installed into the endpoint's own prefix, and identified there.
        let installed = prefix.join(name).join("usr/local/bin/patchcast-hello");
        assert_eq!(
            std::fs::read(&installed).ok().as_deref(),
            Some(&sample[..]),
            "{}",
            installed.display()
        );
    }
    // The rules followed the prefix: nothing was installed into (or read from) the machine.
    assert!(
        !Path::new("/usr/local/bin/patchcast-hello").exists(),
        "the unprivileged demo wrote /usr/local/bin"
    );
}
