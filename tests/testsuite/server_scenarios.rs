//! Scenario documents: the committed schema is current, and the sample scenarios load.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn scenario_schema_is_current() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(["schema", "scenario"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let committed = std::fs::read_to_string(repo().join("schemas/scenario.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        committed,
        "schemas/scenario.schema.json is stale: run `cargo run -- schema scenario > schemas/scenario.schema.json`"
    );
}

#[test]
fn sample_scenarios_load_and_reference_the_schema() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("scenarios")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/scenario.schema.json"),
            "{} names its schema",
            path.display()
        );
        let s = patchcast::model::scenario::load(&path.display().to_string(), &text)
            .unwrap_or_else(|p| panic!("{}: {p:?}", path.display()));
        // Every package a sample names exists in packages/.
        for p in &s.packages {
            assert!(
                repo()
                    .join("packages")
                    .join(p.as_str())
                    .join("package.yaml")
                    .exists(),
                "{p}"
            );
        }
        n += 1;
    }
    assert!(n >= 2);
}
