//! Every lint rule against a broken package and its fixed twin.
//!
//! Each directory `tests/fixtures/lint/<name>/` holds:
//! - `broken/`: a package with one realistic mistake (plus the payload files it needs);
//! - `fixed/`: the same package with that mistake corrected, which must lint with no problem at all;
//! - `expect`: one line per problem `broken/` must report, `LINE:COLUMN CODE`, in any order;
//!   `#` starts a comment. It sits next to `broken/`, not inside it, because any extra file in a
//!   package directory is itself reported (`payload-unreferenced`).
//!
//! `<name>` is the rule code, optionally followed by `-variant` (`version-without-resource-pe`).

use patchcast::model::problem::{Located, Severity};
use patchcast::pack::lint::lint_dir;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every code `patchcast package lint` can report. A new rule must be added here, and then
/// needs a fixture before this test passes again.
const ALL_CODES: &[&str] = &[
    // loading package.yaml
    "unreadable",
    "yaml-syntax",
    "missing-key",
    "unknown-key",
    // package identity and kind
    "invalid-id",
    "missing-title",
    "ms-number-format",
    "kb-number-format",
    "field-for-other-kind",
    "service-pack-level-missing",
    "hotfix-unidentifiable",
    "service-pack-has-rules",
    "application-unidentifiable",
    "agent-install-command",
    "agent-version-missing",
    "agent-payload",
    "agent-field",
    "placeholder",
    "service-pack-level-zero",
    // targets
    "no-targets",
    "unknown-os",
    "unknown-arch",
    "unknown-language",
    // identification rules
    "rule-kind",
    "installed-update-format",
    "registry-key-format",
    "package-version-format",
    "probe-empty",
    "file-path-empty",
    "file-version-format",
    "sha256-format",
    "file-change-missing",
    "rewrite-needs-version-or-hash",
    "version-up-needs-version",
    "delete-with-version",
    // payload list
    "payload-path",
    "payload-duplicate",
    "payload-name-mismatch",
    "payload-name-no-number",
    // commands
    "command-empty",
    "template-undefined-variable",
    "template-syntax",
    "template-too-complex",
    "template-value-unquotable",
    "template-escaped-variable",
    "duration-format",
    "exit-code-overlap",
    // payload files on disk
    "payload-missing",
    "payload-not-regular",
    "payload-unreferenced",
    // version resources (FAQ Q2)
    "version-without-resource",
    "change-needs-version-resource",
    "payload-version-mismatch",
    // lifecycle
    "supersedes-itself",
    "requires-itself",
];

/// The codes that are warnings; every other code is an error.
const WARNING_CODES: &[&str] = &[
    "payload-name-mismatch",
    "payload-name-no-number",
    "service-pack-has-rules",
    "payload-unreferenced",
    "payload-version-mismatch",
    "template-escaped-variable",
];

/// One expected or reported problem: line, column, code.
type Spot = (u32, u32, String);

struct Fixture {
    name: String,
    dir: PathBuf,
}

impl Fixture {
    fn broken(&self) -> PathBuf {
        self.dir.join("broken")
    }

    fn fixed(&self) -> PathBuf {
        self.dir.join("fixed")
    }

    /// The `expect` file, sorted (a multiset: the same problem may be expected twice).
    fn expected(&self) -> Vec<Spot> {
        let path = self.dir.join("expect");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut spots: Vec<Spot> = text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let content = line.split('#').next().unwrap_or("").trim();
                (!content.is_empty()).then(|| {
                    parse_spot(content).unwrap_or_else(|| {
                        panic!(
                            "{}:{}: expected `LINE:COLUMN CODE`, found `{line}`",
                            path.display(),
                            i + 1
                        )
                    })
                })
            })
            .collect();
        spots.sort();
        spots
    }
}

/// `12:5 some-code` as a spot.
fn parse_spot(s: &str) -> Option<Spot> {
    let (at, code) = s.split_once(char::is_whitespace)?;
    let (line, column) = at.split_once(':')?;
    Some((
        line.parse().ok()?,
        column.parse().ok()?,
        code.trim().to_string(),
    ))
}

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint")
}

fn fixtures() -> Vec<Fixture> {
    let root = fixtures_root();
    let mut out: Vec<Fixture> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| Fixture {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
        })
        // A symbolic link checked out without symlink support is a plain file.
        .filter(|f| cfg!(unix) || f.name != "payload-not-regular")
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= ALL_CODES.len(),
        "only {} fixtures in {}",
        out.len(),
        root.display()
    );
    out
}

fn spots(problems: &[Located]) -> Vec<Spot> {
    let mut v: Vec<Spot> = problems
        .iter()
        .map(|p| (p.line, p.column, p.problem.code.to_string()))
        .collect();
    v.sort();
    v
}

fn show_spots(spots: &[Spot]) -> String {
    if spots.is_empty() {
        return "      (none)\n".to_string();
    }
    spots
        .iter()
        .map(|(l, c, code)| format!("      {l}:{c} {code}\n"))
        .collect()
}

fn show_problems(problems: &[Located]) -> String {
    problems
        .iter()
        .map(|p| format!("      {}\n", p.to_string().replace('\n', "\n      ")))
        .collect()
}

#[test]
fn broken_fixtures_report_exactly_the_expected_problems() {
    let mut failures = String::new();
    for f in fixtures() {
        let report = lint_dir(&f.broken());
        let want = f.expected();
        let got = spots(&report.problems);
        if got != want {
            let _ = write!(
                failures,
                "\n{}/broken:\n    expected:\n{}    reported:\n{}    problems:\n{}",
                f.name,
                show_spots(&want),
                show_spots(&got),
                show_problems(&report.problems)
            );
        }
    }
    assert!(failures.is_empty(), "lint fixtures disagree:{failures}");
}

#[test]
fn fixed_twins_lint_clean() {
    let mut failures = String::new();
    for f in fixtures() {
        let report = lint_dir(&f.fixed());
        if !report.problems.is_empty() {
            let _ = write!(
                failures,
                "\n{}/fixed:\n{}",
                f.name,
                show_problems(&report.problems)
            );
        } else if report.package.is_none() {
            let _ = write!(
                failures,
                "\n{}/fixed: no problem, but no package either",
                f.name
            );
        }
    }
    assert!(
        failures.is_empty(),
        "fixed fixtures are not clean:{failures}"
    );
}

#[test]
fn every_code_has_a_fixture_and_every_fixture_is_named_by_its_code() {
    let known: BTreeSet<&str> = ALL_CODES.iter().copied().collect();
    assert_eq!(known.len(), ALL_CODES.len(), "ALL_CODES has duplicates");
    let mut covered = BTreeSet::new();
    for f in fixtures() {
        let codes: BTreeSet<String> = f.expected().into_iter().map(|(_, _, c)| c).collect();
        assert!(!codes.is_empty(), "{}: empty expect file", f.name);
        for c in &codes {
            assert!(
                known.contains(c.as_str()),
                "{}: expect names `{c}`, which is not in ALL_CODES",
                f.name
            );
        }
        assert!(
            codes
                .iter()
                .any(|c| f.name == *c || f.name.starts_with(&format!("{c}-"))),
            "fixture `{}` is not named after a code it expects ({codes:?})",
            f.name
        );
        covered.extend(codes);
    }
    let missing: Vec<&str> = ALL_CODES
        .iter()
        .copied()
        .filter(|c| !covered.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a broken fixture: {missing:?}"
    );
}

#[test]
fn severities_are_as_documented() {
    let mut seen: BTreeMap<&'static str, Severity> = BTreeMap::new();
    for f in fixtures() {
        for p in lint_dir(&f.broken()).problems {
            let want = if WARNING_CODES.contains(&p.problem.code) {
                Severity::Warning
            } else {
                Severity::Error
            };
            assert_eq!(p.problem.severity, want, "{}: {p}", f.name);
            seen.insert(p.problem.code, p.problem.severity);
        }
    }
    for w in WARNING_CODES {
        assert_eq!(seen.get(w), Some(&Severity::Warning), "{w} never reported");
    }
}

#[test]
fn problems_name_the_package_file() {
    for f in fixtures() {
        // `unreadable` too: it names the file that should be there.
        let broken = f.broken();
        let want = broken.join("package.yaml").display().to_string();
        for p in lint_dir(&broken).problems {
            assert_eq!(p.file, want, "{}: {p}", f.name);
            assert!(!p.problem.message.is_empty(), "{}: {p}", f.name);
            assert!(!p.problem.help.is_empty(), "{}: {p}", f.name);
        }
    }
}

// ------------------------------------------------------------------ the real binary

fn patchcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(args)
        .env_remove("PATCHCAST_JSON")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn output(o: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixture(name: &str) -> Fixture {
    Fixture {
        name: name.to_string(),
        dir: fixtures_root().join(name),
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("fixture paths are UTF-8")
}

#[test]
fn cli_lint_exits_1_on_errors_and_0_on_the_fixed_twin() {
    let f = fixture("version-without-resource-pe");
    let [(line, column, code)]: [Spot; 1] = f.expected().try_into().expect("one expected problem");

    let o = patchcast(&["package", "lint", arg(&f.broken())]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let want = format!("package.yaml:{line}:{column}: error[{code}]");
    assert!(stdout.contains(&want), "no `{want}` in\n{}", output(&o));
    assert!(stdout.contains("help: "), "{}", output(&o));

    let o = patchcast(&["package", "lint", arg(&f.fixed())]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(o.stdout.is_empty(), "{}", output(&o));
}

#[test]
fn cli_lint_warnings_exit_0_unless_denied() {
    let f = fixture("payload-unreferenced");
    let [(line, column, code)]: [Spot; 1] = f.expected().try_into().expect("one expected problem");
    let want = format!("package.yaml:{line}:{column}: warning[{code}]");

    let o = patchcast(&["package", "lint", arg(&f.broken())]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&want),
        "no `{want}` in\n{}",
        output(&o)
    );

    let o = patchcast(&["package", "lint", "--deny-warnings", arg(&f.broken())]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));

    let o = patchcast(&["package", "lint", "--deny-warnings", arg(&f.fixed())]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
}

#[test]
fn cli_lint_json_reports_each_directory() {
    let f = fixture("change-needs-version-resource");
    let o = patchcast(&[
        "--json",
        "package",
        "lint",
        arg(&f.broken()),
        arg(&f.fixed()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", output(&o)));
    let reports = v.as_array().expect("an array of reports");
    assert_eq!(reports.len(), 2, "{v:#}");

    assert_eq!(reports[0]["dir"], arg(&f.broken()), "{v:#}");
    let problems = reports[0]["problems"].as_array().expect("problems array");
    let mut got: Vec<Spot> = problems
        .iter()
        .map(|p| {
            assert_eq!(p["severity"], "error", "{p:#}");
            assert_eq!(
                p["file"],
                f.broken().join("package.yaml").display().to_string(),
                "{p:#}"
            );
            assert_eq!(p["path"], "identification[0].change", "{p:#}");
            assert!(
                p["message"].as_str().is_some_and(|m| m.contains("app.ini")),
                "{p:#}"
            );
            assert!(p["help"].as_str().is_some_and(|h| !h.is_empty()), "{p:#}");
            (
                p["line"].as_u64().unwrap() as u32,
                p["column"].as_u64().unwrap() as u32,
                p["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, f.expected(), "{v:#}");

    assert_eq!(reports[1]["dir"], arg(&f.fixed()), "{v:#}");
    assert_eq!(reports[1]["problems"], serde_json::json!([]), "{v:#}");
}

/// `patchcast package lint --repository DIR`: the packages of `tests/fixtures/lint-repository/
/// broken` are each valid alone, but two `requires:` each other, two `supersedes:` each other
/// and one requires an id no package has; `expect` lists each problem as `PACKAGE LINE:COLUMN
/// CODE`, placed at the entry that closes the cycle (once per cycle) or names the unknown id.
/// The `fixed` twin lints clean.
#[test]
fn repository_lint_refuses_reference_cycles_and_unknown_ids() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint-repository");
    let text = std::fs::read_to_string(root.join("expect")).unwrap();
    let mut want: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (pkg, spot) = l.split_once(' ').unwrap();
            let (at, code) = spot.split_once(' ').unwrap();
            let file = root.join("broken").join(pkg).join("package.yaml");
            format!("{}:{at}: error[{code}]", file.display())
        })
        .collect();
    want.sort();
    assert_eq!(want.len(), 3, "{text}");

    let o = patchcast(&["package", "lint", "--repository", arg(&root.join("broken"))]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let mut got: Vec<String> = stdout
        .lines()
        .filter(|l| l.contains(": error["))
        .map(|l| l.split("]: ").next().unwrap().to_string() + "]")
        .collect();
    got.sort();
    assert_eq!(got, want, "{}", output(&o));
    // The messages name the whole cycle and the unknown id.
    for words in [
        "`requires` cycle app-a → lib-b → app-a",
        "`supersedes` cycle new-x → old-y → new-x",
        "`requires` names `nowhere`, which is no package of this repository",
    ] {
        assert!(stdout.contains(words), "no `{words}` in\n{}", output(&o));
    }
    // Each package alone is clean: only the repository view sees the cycle and the unknown id.
    let lone = root.join("broken/lone");
    let o = patchcast(&["package", "lint", arg(&lone)]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    // Given together without --repository: the cycles, but not the ids (they may be
    // published elsewhere).
    let o = patchcast(&[
        "package",
        "lint",
        arg(&root.join("broken/app-a")),
        arg(&root.join("broken/lib-b")),
        arg(&lone),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("[requires-cycle]"), "{}", output(&o));
    assert!(!stdout.contains("[unknown-package]"), "{}", output(&o));

    let o = patchcast(&[
        "package",
        "lint",
        "--deny-warnings",
        "--repository",
        arg(&root.join("fixed")),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
}
