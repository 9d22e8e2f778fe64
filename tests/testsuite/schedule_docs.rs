//! Group policy and rollout documents: the committed schemas are current, the samples load
//! and name their schema, and bad files are refused with file:line:column by the CLI.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn patchcast(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn schemas_are_current() {
    for doc in ["group-policy", "rollout"] {
        let o = patchcast(&["schema", doc]);
        assert!(o.status.success());
        let path = repo().join(format!("schemas/{doc}.schema.json"));
        let committed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            committed,
            "schemas/{doc}.schema.json is stale: run `cargo run -- schema {doc} > schemas/{doc}.schema.json`"
        );
    }
}

#[test]
fn samples_load_and_reference_their_schema() {
    let mut n = 0;
    for (dir, schema) in [("groups", "group-policy"), ("rollouts", "rollout")] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with(&format!(
                    "# yaml-language-server: $schema=../schemas/{schema}.schema.json"
                )),
                "{} names its schema",
                path.display()
            );
            let name = path.display().to_string();
            match dir {
                "groups" => {
                    patchcast::model::group_policy::load(&name, &text)
                        .unwrap_or_else(|p| panic!("{p:?}"));
                }
                _ => {
                    let r = patchcast::model::rollout::load(&name, &text)
                        .unwrap_or_else(|p| panic!("{p:?}"));
                    for p in &r.packages {
                        assert!(repo().join("packages").join(p.as_str()).is_dir(), "{p}");
                    }
                }
            }
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn a_bad_policy_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("g.yaml");
    std::fs::write(
        &f,
        "group: g\nwindows:\n  - start: '0 2 * * *'\n    duration: 3h\n    time_zone: Asia/Tokio\nhold: [hotfixes]\n",
    )
    .unwrap();
    let o = patchcast(&["schedule", "check", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // The unknown hold kind is a YAML-level error, reported first and alone.
    assert!(err.contains("g.yaml:6:"), "{err}");
    std::fs::write(
        &f,
        "group: g\nwindows:\n  - start: '0 2 * * *'\n    duration: 3h\n    time_zone: Asia/Tokio\n",
    )
    .unwrap();
    let o = patchcast(&["schedule", "check", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("g.yaml:5:16: error[group-policy]: time zone `Asia/Tokio`"),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");
}
