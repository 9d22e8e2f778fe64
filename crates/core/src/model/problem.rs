//! A problem found in an authored document: where, how bad, what, and how to fix it.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem before it is placed in a file: `path` names the value (`identification[0].version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// Stable rule name, e.g. `version-without-resource`.
    pub code: &'static str,
    pub path: String,
    pub message: String,
    pub help: String,
}

impl Problem {
    pub fn error(
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Error,
            code,
            path: path.into(),
            message: message.into(),
            help: help.into(),
        }
    }

    pub fn warning(
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(code, path, message, help)
        }
    }
}

/// A problem placed in a file, printed as `file:line:column: severity[code]: message` and a help line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    pub file: String,
    pub line: u32,
    pub column: u32,
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = self.problem.severity;
        write!(
            f,
            "{}:{}:{}: {sev}[{}]: {}\n    help: {}",
            self.file,
            self.line,
            self.column,
            self.problem.code,
            self.problem.message,
            self.problem.help
        )
    }
}

pub fn has_errors<'a>(problems: impl IntoIterator<Item = &'a Located>) -> bool {
    problems
        .into_iter()
        .any(|p| p.problem.severity == Severity::Error)
}
