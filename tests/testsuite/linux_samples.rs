//! The two Linux samples really install on this machine and are then identified as applied
//! by `patchcast-agent identify` (real dpkg, real files), and as not applied once removed.
//! Needs root (dpkg -i, /usr/local/bin); in CI (`CI=true`) a non-root run fails loudly.

use std::process::Command;

fn root_or_skip() -> bool {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    if uid.trim() == "0" {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but not running as root: cannot install the Linux samples"
    );
    eprintln!("SKIPPED: installing the Linux samples needs root");
    false
}

fn verdict(dir: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_patchcast-agent"))
        .args(["identify", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["identification"]["verdict"]["verdict"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sh(cmd: &str) {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn samples_install_and_identify() {
    if !root_or_skip() {
        return;
    }
    let _machine = crate::common::MACHINE.blocking_lock();
    // Start from a clean machine, whatever an earlier run left.
    sh(
        "dpkg -r patchcast-sample-hello >/dev/null 2>&1 || true; rm -f /usr/local/bin/patchcast-hello",
    );

    assert_eq!(verdict("packages/linux-hello-deb"), "not_applied");
    sh("dpkg -i packages/linux-hello-deb/patchcast-sample-hello_1.2.0-1_all.deb");
    assert_eq!(verdict("packages/linux-hello-deb"), "applied");
    sh("dpkg -r patchcast-sample-hello");
    assert_eq!(verdict("packages/linux-hello-deb"), "not_applied");

    assert_eq!(verdict("packages/linux-hello-script"), "not_applied");
    sh("sh packages/linux-hello-script/install.sh");
    assert_eq!(verdict("packages/linux-hello-script"), "applied");
    // A different file at the same path is not the package.
    sh("echo tampered > /usr/local/bin/patchcast-hello");
    assert_eq!(verdict("packages/linux-hello-script"), "not_applied");
    sh("rm -f /usr/local/bin/patchcast-hello");
}
