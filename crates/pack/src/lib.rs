//! Package files on disk: loading `package.yaml`, linting, signing keys, and the signed,
//! deterministic archive format.

pub mod archive;
pub mod hash;
pub mod keys;
pub mod lint;
pub mod payload;
pub mod pe;
pub mod skeleton;
pub mod trust;

use patchcast_core::model::problem::{Located, Problem};
use patchcast_core::model::raw::RawPackage;
use patchcast_core::model::yaml::{self, Positions};
use std::path::{Path, PathBuf};

pub const PACKAGE_FILE: &str = "package.yaml";

/// A package document read from disk, with the positions of its values.
pub struct Loaded {
    pub file: PathBuf,
    pub raw: RawPackage,
    pub positions: Positions,
}

impl Loaded {
    /// Places a problem at the line and column of the value it names.
    pub fn locate(&self, problem: Problem) -> Located {
        let pos = self.positions.of(&problem.path);
        Located {
            file: self.file.display().to_string(),
            line: pos.line,
            column: pos.column,
            problem,
        }
    }
}

/// Reads and parses `DIR/package.yaml`. A read, syntax or unknown-key error comes back as
/// one located problem.
pub fn load(dir: &Path) -> Result<Loaded, Box<Located>> {
    let file = dir.join(PACKAGE_FILE);
    let at = |line, column, problem| {
        Box::new(Located {
            file: file.display().to_string(),
            line,
            column,
            problem,
        })
    };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        at(
            1,
            1,
            Problem::error(
                "unreadable",
                "",
                format!("cannot read {}: {e}", file.display()),
                "a package is a directory holding package.yaml; `patchcast package new` writes one",
            ),
        )
    })?;
    match yaml::parse::<RawPackage>(&text) {
        Ok((raw, positions)) => Ok(Loaded {
            file,
            raw,
            positions,
        }),
        Err(e) => {
            use patchcast_core::model::yaml::YamlErrorKind;
            let (code, help) = match e.kind {
                YamlErrorKind::UnknownKey => (
                    "unknown-key",
                    "remove or correct the key; the schema (`patchcast schema package`) lists every key".to_string(),
                ),
                YamlErrorKind::MissingKey => {
                    let key = e.message.split('`').nth(1).unwrap_or("the key");
                    (
                        "missing-key",
                        format!("add `{key}:` here; the schema (`patchcast schema package`) lists the required keys"),
                    )
                }
                YamlErrorKind::Syntax => (
                    "yaml-syntax",
                    "fix the YAML at this position (indentation, quoting, a missing `:` or `-`)".to_string(),
                ),
            };
            Err(at(
                e.position.line,
                e.position.column,
                Problem::error(code, "", e.message, help),
            ))
        }
    }
}
