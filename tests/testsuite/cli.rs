//! The `patchcast` binary end to end: schemas, samples, new, build, verify, explain.

use std::path::PathBuf;
use std::process::{Command, Output};

fn patchcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schemas_are_current() {
    // One entry per document type with a committed schema.
    for doc in ["package"].iter().copied() {
        let o = patchcast(&["schema", doc]);
        assert!(o.status.success(), "{}", text(&o));
        let committed =
            std::fs::read_to_string(repo().join(format!("schemas/{doc}.schema.json"))).unwrap();
        assert!(
            committed == String::from_utf8(o.stdout).unwrap(),
            "schemas/{doc}.schema.json is stale: run `cargo run -- schema {doc} > schemas/{doc}.schema.json`"
        );
    }
}

fn sample_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("packages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("package.yaml").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn samples_are_lint_clean_and_reference_the_schema() {
    let dirs = sample_dirs();
    assert!(dirs.len() >= 6, "{dirs:?}");
    // The deliberately wrong MS number is the one sample lint has a word for (a warning).
    let wrong_ms = "kb2286198-ws2008-wrong-ms";
    let mut args = vec!["package", "lint", "--deny-warnings"];
    let names: Vec<String> = dirs
        .iter()
        .filter(|d| !d.ends_with(wrong_ms))
        .map(|d| d.display().to_string())
        .collect();
    args.extend(names.iter().map(String::as_str));
    let o = patchcast(&args);
    assert!(o.status.success(), "{}", text(&o));
    let o = patchcast(&["package", "lint", &format!("packages/{wrong_ms}")]);
    assert!(o.status.success(), "a warning is no error: {}", text(&o));
    assert!(
        text(&o).contains("12:12: warning[payload-name-no-number]: MS10-064"),
        "{}",
        text(&o)
    );
    for d in &dirs {
        let y = std::fs::read_to_string(d.join("package.yaml")).unwrap();
        assert!(
            y.starts_with("# yaml-language-server: $schema=../../schemas/package.schema.json"),
            "{}",
            d.display()
        );
    }
}

#[test]
fn build_verify_and_reject_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("release");
    let o = patchcast(&["key", "generate", "--out", base.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let key = base.with_extension("key");
    let public = base.with_extension("pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A second generate must not overwrite the secret.
    assert!(
        !patchcast(&["key", "generate", "--out", base.to_str().unwrap()])
            .status
            .success()
    );

    for dir in sample_dirs() {
        let out = tmp.path().join(format!(
            "{}.pcpkg",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let o = patchcast(&[
            "--json",
            "package",
            "build",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let built: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let o = patchcast(&[
            "--json",
            "package",
            "verify",
            out.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let verified: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(built["manifest_sha256"], verified["manifest_sha256"]);

        // Flip the last byte of the last payload file: verify fails and names the file.
        let mut bytes = std::fs::read(&out).unwrap();
        let size = built["files"].as_array().unwrap().last().unwrap()["size"]
            .as_u64()
            .unwrap() as usize;
        let end = bytes.len() - 1024 - (512 - size % 512) % 512; // before padding and the end-of-archive blocks
        bytes[end - 1] ^= 0x55;
        let bad = tmp.path().join("bad.pcpkg");
        std::fs::write(&bad, &bytes).unwrap();
        let o = patchcast(&[
            "package",
            "verify",
            bad.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("REJECTED")
                && text(&o).contains("does not match the signed manifest"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn build_refuses_a_package_with_lint_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = patchcast(&[
        "key",
        "generate",
        "--out",
        tmp.path().join("k").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let pkg = tmp.path().join("p");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(pkg.join("package.yaml"), "id: p\nkind: hotfix\ntitle: t\nms_number: MS8-67\ntargets: [{ os: windows-10 }]\ninstall: { command: x }\n").unwrap();
    let out = tmp.path().join("p.pcpkg");
    let o = patchcast(&[
        "package",
        "build",
        pkg.to_str().unwrap(),
        "--key",
        tmp.path().join("k.key").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("package.yaml:4:12: error[ms-number-format]"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}

/// Before, a skeleton with only its payload supplied linted clean: `MS00-000`, `KB000000`,
/// TODO titles and a Service Pack at level 0.0 went out as they were (the FAQ's Q2).
#[test]
fn regression_new_skeletons_lint_clean_with_their_placeholders() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = [
        (
            "hotfix",
            vec![
                "payload-missing",
                "placeholder",
                "placeholder",
                "placeholder",
                "placeholder",
            ],
        ),
        (
            "service-pack",
            vec![
                "payload-missing",
                "placeholder",
                "placeholder",
                "service-pack-level-zero",
            ],
        ),
        (
            "application",
            vec!["payload-missing", "placeholder", "placeholder"],
        ),
    ];
    for (kind, want) in expected {
        let dir = tmp.path().join(format!("my-{kind}"));
        let o = patchcast(&["package", "new", "--kind", kind, dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let o = patchcast(&["--json", "package", "lint", dir.to_str().unwrap()]);
        let reports: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut codes: Vec<&str> = reports[0]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["code"].as_str().unwrap())
            .collect();
        codes.sort();
        // Valid YAML with known keys; what is left is each placeholder to fill and the payload.
        assert_eq!(codes, want, "{kind}: {}", text(&o));
        // It never overwrites.
        assert!(
            !patchcast(&["package", "new", "--kind", kind, dir.to_str().unwrap()])
                .status
                .success()
        );
    }
}

#[test]
fn explain_a_sample_against_machine_facts() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = tmp.path().join("ws2003.yaml");
    std::fs::write(&facts, "os: windows-server-2003-enterprise\narch: x86\nlanguage: ja-JP\ninstalled_updates: [KB958644]\n").unwrap();
    let o = patchcast(&[
        "--json",
        "package",
        "explain",
        "packages/ms08-067-ws2003-ja",
        "--facts",
        facts.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"]["verdict"], "applied", "{v}");
    std::fs::write(
        &facts,
        "os: windows-server-2003-enterprise\narch: x86\nlanguage: en-US\ninstalled_updates: []\n",
    )
    .unwrap();
    let o = patchcast(&[
        "package",
        "explain",
        "packages/ms08-067-ws2003-ja",
        "--facts",
        facts.to_str().unwrap(),
    ]);
    assert!(text(&o).contains("not applicable"), "{}", text(&o));
    // --check: exit 1 unless applied.
    let check = |facts: &std::path::Path| {
        patchcast(&[
            "package",
            "explain",
            "packages/ms08-067-ws2003-ja",
            "--check",
            "--facts",
            facts.to_str().unwrap(),
        ])
        .status
        .code()
    };
    assert_eq!(check(&facts), Some(1));
    // The format the help documents is the format explain reads.
    let help = text(&patchcast(&["package", "explain", "--help"]));
    let example: String = help
        .lines()
        .skip_while(|l| !l.starts_with("Facts file"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    assert!(example.contains("installed_updates"), "{help}");
    let documented = tmp.path().join("documented.yaml");
    std::fs::write(
        &documented,
        example
            .replace("windows-server-2008", "windows-server-2003-enterprise")
            .replace("[KB948465]", "[KB958644]"),
    )
    .unwrap();
    assert_eq!(check(&documented), Some(0), "{example}");
}

#[test]
fn catalog_lists_the_faq_support_list() {
    let o = patchcast(&["catalog", "os"]);
    let t = text(&o);
    for name in [
        "Windows 2000 Advanced Server",
        "Windows Server 2003 Enterprise Edition",
        "Windows Server 2008 Standard",
        "Rocky Linux 9",
    ] {
        assert!(t.contains(name), "{name}");
    }
}

#[test]
fn codes_in_english_and_japanese() {
    let o = patchcast(&["--json", "codes", "E06", "--lang", "ja"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["code"], "E06");
    assert!(v[0]["remedy"].as_str().unwrap().contains("3倍"), "{v}");
    let o = patchcast(&["codes", "--lang", "en"]);
    let t = text(&o);
    for code in ["E01", "E14", "W15", "W16", "E17", "E24"] {
        assert!(t.contains(code), "{code}");
    }
    assert!(
        t.contains("at least 3 times the size of the package"),
        "{t}"
    );
    assert_eq!(patchcast(&["codes", "E99"]).status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn regression_output_into_a_closed_pipe_ends_quietly() {
    // The reader is gone before the first write, as with `patchcast schema package | true`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(["schema", "package"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    crate::common::assert_ended_by_sigpipe(&o);
}

/// The agent program is discoverable from the admin CLI's own help.
#[test]
fn agent_is_listed_in_the_top_level_help() {
    let o = patchcast(&["--help"]);
    let help = text(&o);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("agent ")),
        "{help}"
    );
    let o = patchcast(&["agent", "--help"]);
    let agent = text(&o);
    assert!(
        o.status.success() && agent.contains("doctor") && agent.contains("enroll"),
        "{agent}"
    );
}

#[test]
fn exit_codes_are_cargos() {
    // A usage error is 2; an operation that fails is 1.
    assert_eq!(
        patchcast(&["results", "--no-such-flag"]).status.code(),
        Some(2)
    );
    // A server nobody answers at: the operation fails.
    let fp = format!("sha256:{}", "0".repeat(64));
    let unreachable = [
        "results",
        "--server",
        "https://127.0.0.1:9",
        "--fingerprint",
        &fp,
        "--token",
        "pcadm_x",
    ];
    let o = patchcast(&unreachable);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("error:"), "{}", text(&o));
    // With --json the error is JSON on stderr, with the same exit code.
    let o = patchcast(&[&["--json"][..], &unreachable].concat());
    assert_eq!(o.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{err}"
    );
    assert!(err["code"].is_null(), "{err}");
    // Two output formats at once is a usage error.
    let o = patchcast(&["--json", "results", "--csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--csv"), "{}", text(&o));
    // A value without a valid unit is a usage error that names the flag.
    let o = patchcast(&["server", "--data", "/nonexistent", "--reserve", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--reserve") && text(&o).contains("1GiB"),
        "{}",
        text(&o)
    );
    let o = patchcast(&[
        "server",
        "--data",
        "/nonexistent",
        "--transfer-rate",
        "fast",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("10MB/s"), "{}", text(&o));
}

/// Outside a checkout the demo names the flag to give, before it starts anything.
#[test]
fn demo_outside_a_checkout_points_at_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(["demo", "--exit", "--dir"])
        .arg(tmp.path().join("demo"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("give --packages"), "{}", text(&o));
    assert!(!tmp.path().join("demo").exists(), "nothing was started");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_itself() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let o = patchcast(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("rollout") && script.contains("results"),
            "{shell}"
        );
    }
    assert_eq!(patchcast(&["completions", "tcsh"]).status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let o = patchcast(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let top = std::fs::read_to_string(dir.path().join("patchcast.1")).unwrap();
    assert!(top.contains(".TH") && top.contains("patchcast"), "{top}");
    let results = std::fs::read_to_string(dir.path().join("patchcast-results.1")).unwrap();
    assert!(results.contains("csv"), "{results}");
    // Closed pipe: completions end quietly too.
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_patchcast"))
            .args(["completions", "bash"])
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{}", text(&o));
    }
}
