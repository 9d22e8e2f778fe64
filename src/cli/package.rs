//! `patchcast package …`: lint, build, verify, new, explain.

use crate::core::identify::{Facts, Verdict, identify};
use crate::model::raw::RawKind;
use crate::pack::{self, archive, keys, lint};
use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PackageCmd {
    /// Report every problem of package directories as FILE:LINE:COLUMN with its fix; exit 1 on errors.
    Lint {
        #[arg(required_unless_present = "repository")]
        dirs: Vec<PathBuf>,
        /// Lint every package directory under DIR as one repository: besides each package,
        /// `requires:`/`supersedes:` cycles and ids that name no package of it are refused.
        /// (Several DIRS given at once are checked for cycles too.)
        #[arg(long, value_name = "DIR")]
        repository: Option<PathBuf>,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Lint, then write a deterministic, signed archive of the package.
    Build {
        dir: PathBuf,
        /// Secret signing key (from `patchcast key generate`).
        #[arg(long, env = "PATCHCAST_SIGNING_KEY")]
        key: PathBuf,
        /// Output file (default: ID-VERSION.pcpkg in the current directory).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check an archive's structure, signature and every file's hash; exit 1 with the reason otherwise.
    Verify {
        archive: PathBuf,
        /// Trusted public key(s) (`.pub` files).
        #[arg(
            long = "key",
            required = true,
            env = "PATCHCAST_TRUST_KEY",
            value_delimiter = ','
        )]
        keys: Vec<PathBuf>,
    },
    /// Upload a package to a server: a directory is linted, built and signed with --key first.
    Publish(crate::cli::admin::PublishArgs),
    /// List the packages published on a server.
    List {
        #[command(flatten)]
        connect: crate::cli::admin::Connect,
    },
    /// List every signed version published under a package id, the current one marked.
    Versions {
        id: String,
        #[command(flatten)]
        connect: crate::cli::admin::Connect,
    },
    /// Unpublish a package (refused while deliveries of it are under way or automatic update
    /// assigns it); scenarios naming it are refused from then on.
    Remove {
        id: String,
        #[command(flatten)]
        connect: crate::cli::admin::Connect,
    },
    /// Write a commented package skeleton into DIR.
    New {
        /// The kind of package the skeleton describes.
        #[arg(long, value_enum)]
        kind: Kind,
        dir: PathBuf,
    },
    /// Explain whether a package is applied on a machine described by a facts file (YAML or JSON).
    #[command(after_long_help = FACTS_HELP)]
    Explain {
        /// The package directory.
        dir: PathBuf,
        /// The machine's facts (format below; `patchcast-agent identify DIR` on a machine
        /// shows what it gathers).
        #[arg(long)]
        facts: PathBuf,
        /// Exit 1 unless the verdict is `applied` (for scripts).
        #[arg(long)]
        check: bool,
    },
}

/// The facts file `package explain` reads: what an agent gathers, written by hand.
const FACTS_HELP: &str = "\
Facts file (YAML or JSON; a fact left out is unknown, never guessed):
  os: windows-server-2008          # an id from `patchcast catalog os`
  arch: x86                        # x86, x64, ia64, arm64, …
  language: ja                     # a tag from `patchcast catalog languages`
  service_pack: {major: 1, minor: 0}   # SP1
  installed_updates: [KB948465]    # KB and MS numbers (Windows)
  files:                           # path → what is known of it
    'C:\\Windows\\system32\\netapi32.dll': {exists: true, version: 5.2.3790.4392}  # sha256: too
  registry:                        # 'KEY\\VALUE' → data, or null when absent
    'HKLM\\SOFTWARE\\Vendor\\App\\Version': '2.0'
  packages: {openssl: 3.0.11-1}    # dpkg/rpm name → version, or null when not installed
  probes: {'/usr/bin/app --version': 0}   # probe command → exit code, or null

Exit status: 0, or with --check 1 unless the verdict is applied.";

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Hotfix,
    ServicePack,
    Application,
    Agent,
}

pub fn run(cmd: PackageCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        PackageCmd::Lint {
            mut dirs,
            repository,
            deny_warnings,
        } => {
            if let Some(root) = &repository {
                let found = lint::repository(root)
                    .with_context(|| format!("reading the repository {}", root.display()))?;
                if found.is_empty() {
                    bail!(
                        "{} holds no package directory (DIR/*/package.yaml)",
                        root.display()
                    );
                }
                dirs.extend(found);
            }
            let reports = lint::lint_set(&dirs, repository.is_some());
            let errors = reports.iter().filter(|r| r.has_errors()).count();
            let warnings: usize = reports
                .iter()
                .flat_map(|r| &r.problems)
                .filter(|p| p.problem.severity == crate::model::problem::Severity::Warning)
                .count();
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for p in reports.iter().flat_map(|r| &r.problems) {
                    println!("{p}");
                }
                let clean = reports.iter().filter(|r| r.problems.is_empty()).count();
                eprintln!(
                    "{} package(s) checked: {clean} clean, {errors} with errors, {warnings} warning(s)",
                    reports.len()
                );
            }
            Ok(if errors > 0 || (deny_warnings && warnings > 0) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PackageCmd::Build { dir, key, out } => build(&dir, &key, out, json),
        PackageCmd::Publish(a) => crate::cli::admin::publish(a, json),
        PackageCmd::List { connect } => crate::cli::admin::packages(&connect, json),
        PackageCmd::Versions { id, connect } => {
            crate::cli::admin::package_versions(&id, &connect, json)
        }
        PackageCmd::Remove { id, connect } => {
            crate::cli::admin::remove_package(&id, &connect, json)
        }
        PackageCmd::Verify {
            archive: path,
            keys: key_files,
        } => {
            let trusted = key_files
                .iter()
                .map(|k| keys::read_public(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match archive::verify(&path, &trusted) {
                Ok(v) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": true, "package": v.package.id.as_str(), "key_id": v.key_id, "manifest_sha256": v.manifest_sha256, "files": v.manifest.files, "total_size": v.manifest.total_size})
                        );
                    } else {
                        println!(
                            "{}: OK: package {} signed by key {}, {} file(s), {} bytes, manifest {}",
                            path.display(),
                            v.package.id,
                            v.key_id,
                            v.manifest.files.len(),
                            v.manifest.total_size,
                            v.manifest_sha256
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "error": e.to_string()})
                        );
                    } else {
                        eprintln!(
                            "{}: REJECTED: {e}\nhelp: do not deploy this archive; rebuild it from its package directory and sign it with a trusted key",
                            path.display()
                        );
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PackageCmd::New { kind, dir } => {
            let file = dir.join(pack::PACKAGE_FILE);
            if file.exists() {
                bail!(
                    "{} already exists; refusing to overwrite it",
                    file.display()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_else(|| "new-package".into());
            let kind = match kind {
                Kind::Hotfix => RawKind::Hotfix,
                Kind::ServicePack => RawKind::ServicePack,
                Kind::Application => RawKind::Application,
                Kind::Agent => RawKind::Agent,
            };
            let schema = schema_path_from(&dir);
            std::fs::write(&file, pack::skeleton::skeleton(kind, &id, &schema))
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "wrote {}\nnext: fill in the TODOs, copy the payload files next to it, then `patchcast package lint {}`",
                file.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PackageCmd::Explain { dir, facts, check } => {
            let report = lint::lint_dir(&dir);
            let Some(pkg) = report.package else {
                for p in &report.problems {
                    eprintln!("{p}");
                }
                bail!("{} has lint errors; fix them first", dir.display());
            };
            let text = std::fs::read_to_string(&facts)
                .with_context(|| format!("reading {}", facts.display()))?;
            let facts: Facts = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", facts.display()))?;
            let id = identify(&pkg, &facts);
            if json {
                println!("{}", serde_json::to_string_pretty(&id)?);
            } else {
                let verdict = match &id.verdict {
                    Verdict::Applied => "applied".to_string(),
                    Verdict::NotApplied => "not applied".to_string(),
                    Verdict::NotApplicable(r) => format!("not applicable: {r}"),
                    Verdict::Indeterminate(r) => format!("indeterminate: {r}"),
                };
                println!("{}: {verdict}", pkg.id);
                for c in &id.explanation {
                    println!("  [{:?}] {}: {}", c.outcome, c.check, c.detail);
                }
            }
            Ok(if check && id.verdict != Verdict::Applied {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `schemas/package.schema.json` relative to a new package directory, when it sits in a
/// patchcast checkout's packages/ folder; otherwise the absolute path of the checkout's schema.
fn schema_path_from(dir: &Path) -> String {
    let depth = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    if dir.is_relative() && depth > 0 {
        format!("{}schemas/package.schema.json", "../".repeat(depth))
    } else {
        "https://patchcast.invalid/schemas/package.schema.json".to_string()
    }
}

fn build(dir: &Path, key: &Path, out: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let report = lint::lint_dir(dir);
    if report.has_errors() {
        for p in &report.problems {
            eprintln!("{p}");
        }
        eprintln!("{}: not built: fix the lint errors above", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    let raw = report
        .raw
        .expect("a package without lint errors was loaded");
    let signing = keys::read_secret(key)?;
    let out = out.unwrap_or_else(|| {
        PathBuf::from(format!(
            "{}-{}.pcpkg",
            raw.id,
            raw.version.as_deref().unwrap_or("0")
        ))
    });
    let total: u64 = raw
        .payload
        .iter()
        .filter_map(|p| std::fs::metadata(dir.join(p)).ok())
        .map(|m| m.len())
        .sum();
    // Two passes over the payload: hashing for the manifest, then archiving.
    let bar = crate::cli::progress::bytes(total * 2, &format!("building {}", raw.id), json);
    let built = archive::build(dir, &raw, &signing, &out, |n| bar.inc(n))?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::json!({"archive": out, "archive_sha256": built.archive_sha256, "archive_size": built.archive_size, "manifest_sha256": built.manifest_sha256, "key_id": built.key_id, "total_size": built.manifest.total_size, "files": built.manifest.files})
        );
    } else {
        println!(
            "built {} ({} bytes, sha256 {})\n  manifest {} signed by key {}; {} payload file(s), {} bytes",
            out.display(),
            built.archive_size,
            built.archive_sha256,
            built.manifest_sha256,
            built.key_id,
            built.manifest.files.len(),
            built.manifest.total_size
        );
    }
    Ok(ExitCode::SUCCESS)
}
