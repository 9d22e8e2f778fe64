//! The fuzz corpora replayed as ordinary tests: every saved input of `fuzz/corpus/<target>/`
//! and every crash reproducer of `fuzz/regressions/<target>/` goes through the target's entry
//! point in `patchcast::fuzzing`, and none may panic. No cargo-fuzz or nightly toolchain is
//! needed; `scripts/fuzz.sh` grows the corpora.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

/// Every fuzz target with its entry point (the names of `fuzz/fuzz_targets/*.rs`).
const TARGETS: [(&str, Target); 7] = [
    ("archive", patchcast::fuzzing::archive),
    ("group_policy_yaml", patchcast::fuzzing::group_policy_yaml),
    ("known_hosts", patchcast::fuzzing::known_hosts),
    ("package_yaml", patchcast::fuzzing::package_yaml),
    ("protocol_json", patchcast::fuzzing::protocol_json),
    ("range", patchcast::fuzzing::range),
    ("sources_yaml", patchcast::fuzzing::sources_yaml),
];

/// Stack of the thread that replays a target's inputs (see `replay_target`).
const REPLAY_STACK: usize = 64 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Feeds `file` to `target`; the panic's message when it panics.
fn replay(target: Target, file: &Path) -> Result<(), String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    catch_unwind(AssertUnwindSafe(|| target(&data))).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        format!("{} panicked: {why}", file.display())
    })
}

/// Replays the corpus (which must exist and hold files) and the regressions of `name`.
fn replay_target(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1;
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name}/ is missing or empty: scripts/fuzz.sh grows it from the seeds in git"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    let inputs: Vec<PathBuf> = corpus.iter().chain(&regressions).cloned().collect();
    // On a thread with a large stack: this unoptimised build's frames are many times those
    // of a release build, and a document nested as deep as serde-saphyr allows (64 levels)
    // overflows a test thread's 2 MiB here, while the release build needs less than 256 KiB.
    let failures: Vec<String> = std::thread::Builder::new()
        .name(format!("replay {name}"))
        .stack_size(REPLAY_STACK)
        .spawn(move || {
            inputs
                .iter()
                .filter_map(|f| replay(target, f).err())
                .collect()
        })
        .expect("a replay thread")
        .join()
        .expect("the replay thread catches panics");
    assert!(
        failures.is_empty(),
        "{} of {} inputs of fuzz target {name} failed:\n{}",
        failures.len(),
        corpus.len() + regressions.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets/ and TARGETS differ");
}

#[test]
fn corpus_archive() {
    replay_target("archive");
}

#[test]
fn corpus_group_policy_yaml() {
    replay_target("group_policy_yaml");
}

#[test]
fn corpus_known_hosts() {
    replay_target("known_hosts");
}

#[test]
fn corpus_package_yaml() {
    replay_target("package_yaml");
}

#[test]
fn corpus_protocol_json() {
    replay_target("protocol_json");
}

#[test]
fn corpus_range() {
    replay_target("range");
}

#[test]
fn corpus_sources_yaml() {
    replay_target("sources_yaml");
}

/// A stored policy's durations are `u64` seconds from the API (or from a document's
/// `duration`/`check_in_spread`); more seconds than a `chrono::Duration` holds panicked in
/// `GroupPolicy::windows`/`spread` (the server's window gate, the agents' schedule).
#[test]
fn regression_fuzz_protocol_json_policy_seconds_overflow() {
    use patchcast::model::group_policy::GroupPolicy;
    let dir = fuzz_dir().join("regressions/protocol_json");
    for name in [
        "policy-window-duration-overflow.json",
        "policy-spread-overflow.json",
    ] {
        let file = dir.join(name);
        replay(patchcast::fuzzing::protocol_json, &file).unwrap();
        let p: GroupPolicy = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let _ = p.spread();
        let windows = p.windows();
        if name.contains("window-duration") {
            assert!(windows.is_empty(), "a window longer than 7 days is dropped");
        } else {
            assert_eq!(windows.len(), 1);
        }
    }
}

/// The same overflow from a policy document: `resolve` panicked on a window duration of
/// 9999999999999999s; now it is refused like any window over 7 days.
#[test]
fn regression_fuzz_group_policy_yaml_seconds_overflow() {
    let dir = fuzz_dir().join("regressions/group_policy_yaml");
    let file = dir.join("window-duration-overflow.yaml");
    replay(patchcast::fuzzing::group_policy_yaml, &file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let problems = patchcast::model::group_policy::load("g.yaml", &text).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.problem.path == "windows[0].duration"),
        "{problems:?}"
    );
    let file = dir.join("spread-overflow.yaml");
    replay(patchcast::fuzzing::group_policy_yaml, &file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let p = patchcast::model::group_policy::load("g.yaml", &text).unwrap();
    assert!(p.spread() > chrono::Duration::days(7));
}
