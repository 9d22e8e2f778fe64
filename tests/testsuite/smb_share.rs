//! SMB against the private Samba server scripts/test.sh starts (scripts/samba.sh): publishing
//! to a share, a wrong password refused with a clear error that never shows the password, and
//! a share as an agent's update source (an unreachable share skipped for the next one, the
//! archive verified by its SHA-256 like any source). Fails under CI=true without Samba.

#![cfg(feature = "smb")]

use crate::common::server_harness::{Backend, bin};
use crate::common::sources_harness::{
    Site, SmbEnv, closed_port, hotfix, row, set_sources, smb_env,
};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;
use std::process::Command;

fn publish_cmd(site: &Site, smb: &SmbEnv, password: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("PATCHCAST_DATA", &site.server.data)
        .env("PATCHCAST_SMB_USER", &smb.user)
        .env("PATCHCAST_SMB_PASSWORD", password)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_share_and_fetch_from_it() {
    let Some(smb) = smb_env() else {
        return;
    };
    let mut site = Site::new(Backend::Sqlite, &["ws-1"]).await.unwrap();
    let dir = site.server.path().join("pkgs");
    let key = site.server.key.to_str().unwrap().to_string();

    // A wrong password: refused, clearly, and the password appears nowhere.
    let wrong = format!("wrong-{}", patchcast::server::random_hex(6).unwrap());
    let pkg = hotfix(&dir, "fix-s", "KB9000201");
    let o = publish_cmd(
        &site,
        &smb,
        &wrong,
        &[
            "package",
            "publish",
            pkg.to_str().unwrap(),
            "--key",
            &key,
            "--to",
            &smb.url,
            "--share-only",
        ],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(!o.status.success());
    assert!(
        err.contains("refused the user name or password") && err.contains(&smb.user),
        "{err}"
    );
    assert!(
        !err.contains(&wrong) && !out.contains(&wrong),
        "the password leaked: {err}{out}"
    );
    // Same with a credentials file.
    let creds = site.server.path().join("smb-creds");
    std::fs::write(&creds, format!("user={}\npassword={wrong}\n", smb.user)).unwrap();
    let o = Command::new(bin())
        .args([
            "package",
            "publish",
            pkg.to_str().unwrap(),
            "--key",
            &key,
            "--to",
            &smb.url,
        ])
        .args(["--share-only", "--credentials", creds.to_str().unwrap()])
        .env_remove("PATCHCAST_SMB_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("refused the user name or password"),
        "{err}"
    );
    assert!(!err.contains(&wrong));

    // The right password: the archive lands on the share as <sha256>.pcpkg, byte for byte,
    // and is published to the server too.
    let o = publish_cmd(
        &site,
        &smb,
        &smb.password,
        &[
            "--json",
            "package",
            "publish",
            pkg.to_str().unwrap(),
            "--key",
            &key,
            "--to",
            &smb.url,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sha = v["archive_sha256"].as_str().unwrap().to_string();
    let on_share = smb.dir.join(format!("{sha}.pcpkg"));
    let (got, size) = patchcast::pack::hash::sha256_file(&on_share).unwrap();
    assert_eq!(
        (got.hex(), size),
        (sha.clone(), v["archive_size"].as_u64().unwrap())
    );
    // Written as a .part and renamed: no .part is left on the share.
    let parts: Vec<String> = std::fs::read_dir(&smb.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");

    // The agent's sources: a share that is down, then the real one; no fallback to the server.
    std::fs::write(
        site.agent("ws-1").root.join("smb-credentials"),
        format!("user={}\npassword={}\n", smb.user, smb.password),
    )
    .unwrap();
    let dead = closed_port();
    let yaml = format!(
        "fallback:\n  components: not_at_all\n  domain_settings: not_at_all\n  programs_and_hotfixes: not_at_all\nentries:\n  - addresses: 127.0.0.1\n    sources:\n      - smb: smb://127.0.0.1:{dead}/patchcast\n      - smb: {}\n",
        smb.url
    );
    let (ok, e) = set_sources(&site.server, &yaml);
    assert!(ok, "{e}");
    site.agent("ws-1").start();
    let sc = site.run(&["ws-1"], &["fix-s"], 1).await;
    let rows = site.settle(&sc).await;
    let d = row(&rows, "ws-1", "fix-s");
    assert_eq!(d.state, State::Applied, "{d:#?}");
    assert_eq!(d.detail.source.as_deref(), Some(smb.url.as_str()));

    // A share file that is not what its name says is discarded, never installed: with the
    // bytes on the share replaced, the delivery fails with no source left (E27).
    let pkg2 = hotfix(&dir, "fix-t", "KB9000202");
    let o = publish_cmd(
        &site,
        &smb,
        &smb.password,
        &[
            "--json",
            "package",
            "publish",
            pkg2.to_str().unwrap(),
            "--key",
            &key,
            "--to",
            &smb.url,
        ],
    );
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sha2 = v["archive_sha256"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(smb.dir.join(format!("{sha2}.pcpkg"))).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(smb.dir.join(format!("{sha2}.pcpkg")), &bytes).unwrap();
    let sc = site.run(&["ws-1"], &["fix-t"], 1).await;
    let rows = site.settle(&sc).await;
    let d = row(&rows, "ws-1", "fix-t");
    assert_eq!(d.state, State::Failed { code: Code::E27 }, "{d:#?}");
    let detail = d.detail.params.detail.clone().unwrap_or_default();
    assert!(detail.contains("(discarded)"), "{detail}");

    // Wrong credentials on the agent: the share refuses, the delivery says so, no password.
    std::fs::write(
        site.agent("ws-1").root.join("smb-credentials"),
        format!("user={}\npassword={wrong}\n", smb.user),
    )
    .unwrap();
    let pkg3 = hotfix(&dir, "fix-u", "KB9000203");
    let o = publish_cmd(
        &site,
        &smb,
        &smb.password,
        &[
            "package",
            "publish",
            pkg3.to_str().unwrap(),
            "--key",
            &key,
            "--to",
            &smb.url,
        ],
    );
    assert!(o.status.success());
    let sc = site.run(&["ws-1"], &["fix-u"], 1).await;
    let rows = site.settle(&sc).await;
    let d = row(&rows, "ws-1", "fix-u");
    assert_eq!(d.state, State::Failed { code: Code::E27 }, "{d:#?}");
    let detail = d.detail.params.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("refused the user name or password"),
        "{detail}"
    );
    let all = format!("{rows:?}{}", site.agent("ws-1").log());
    assert!(
        !all.contains(&wrong) && !all.contains(&smb.password),
        "a password leaked into results or logs"
    );
}
