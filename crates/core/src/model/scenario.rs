//! Scenario documents (`scenarios/*.yaml`): which packages, in which order, go to which
//! machines, and how delivery behaves (concurrency, retries, reboots, timeouts).
//!
//! Like packages, a scenario is read raw (`RawScenario`, the schema's source, unknown keys
//! rejected) and resolved into a `Scenario` whose values are checked; every problem names
//! the path of its value so the loader can print `file:line:column`.

use super::problem::{Located, Problem};
use super::raw::When;
use super::types::{PackageId, parse_duration};
use crate::pipeline::Action;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A delivery scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// Name shown in status and results (e.g. `monthly-2026-11`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `install` (the default): run each package's install command until its identification
    /// says applied. `uninstall`: run its uninstall command until identification says not
    /// applied (every package must have one); loops and retries work the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RawAction>,
    /// Package ids, delivered in this order on each machine (the next starts once the
    /// previous one has finished on that machine). `ID@VERSION` delivers that published
    /// version instead of the current one (an older one only with `options.rollback`).
    pub packages: Vec<String>,
    /// Machines (ids or hostnames) and groups the scenario is delivered to.
    pub targets: RawScenarioTargets,
    #[serde(default)]
    pub options: RawScenarioOptions,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScenarioTargets {
    /// Machine ids or hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
    /// Group names (`patchcast group create`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScenarioOptions {
    /// Machines working on this scenario at the same time (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// Whether agents may restart machines themselves after a reboot exit code (default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_reboot: Option<bool>,
    /// Install timeout for every package, overriding the packages' own (e.g. `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `immediately` or `next_boot` for every package, overriding the packages' own `when`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Allows an `ID@VERSION` older than the package's current version: the older signed
    /// version is delivered as an ordinary update (default: false, such a scenario is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Runs that exit successfully but do not verify before re-delivery stops with
    /// `loop_detected` (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unverified_runs: Option<u32>,
    /// Attempts per machine and package before a delivery that keeps failing (a machine short
    /// of disk, an installer that keeps failing) stops as failed with its last code; 0 keeps
    /// re-delivering until applied (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wait before a delivery that did not apply is delivered again (default `1m`, e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAction {
    Install,
    Uninstall,
}

/// A checked scenario, as the server stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// Scenarios stored before uninstalls existed are installs.
    #[serde(default)]
    pub action: Action,
    pub packages: Vec<PackageId>,
    pub machines: Vec<String>,
    pub groups: Vec<String>,
    pub max_concurrent: Option<u32>,
    pub max_unverified_runs: u32,
    #[serde(default)]
    pub max_attempts: u32,
    pub retry_delay_ms: u64,
    pub allow_reboot: bool,
    pub timeout_secs: Option<u64>,
    /// Overrides each package's `when`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// The published version delivered for a package instead of its current one (`ID@VERSION`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<PackageId, String>,
    /// A version in `versions` may be older than the current one (an explicit rollback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

pub const DEFAULT_RETRY_DELAY_MS: u64 = 60_000;
/// Longest retry delay and install timeout a scenario may set (30 days): longer is a typo,
/// and the bound keeps every time computed from them far from overflowing.
pub const MAX_OPTION_MS: u64 = 30 * 24 * 3600 * 1000;

impl Scenario {
    /// What a checked scenario must hold, whoever built it: the resolver for documents, and
    /// the server again for scenarios posted to its API (a client may send any values).
    /// Each problem as (path, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(("name", "the scenario name is empty".to_string()));
        }
        if self.packages.is_empty() {
            out.push(("packages", "no packages listed".into()));
        }
        if self.max_concurrent == Some(0) {
            out.push((
                "options.max_concurrent",
                "max_concurrent is 0, so nothing would ever be delivered".into(),
            ));
        }
        if self.max_unverified_runs == 0 {
            out.push((
                "options.retry.max_unverified_runs",
                "max_unverified_runs is 0".into(),
            ));
        }
        if self.retry_delay_ms > MAX_OPTION_MS {
            out.push((
                "options.retry.delay",
                "the retry delay is longer than 30 days".into(),
            ));
        }
        if self
            .timeout_secs
            .is_some_and(|t| t == 0 || t.saturating_mul(1000) > MAX_OPTION_MS)
        {
            out.push((
                "options.timeout",
                "the timeout is zero or longer than 30 days".into(),
            ));
        }
        out
    }
}

/// Checks a raw scenario, collecting every problem.
pub fn resolve(raw: &RawScenario) -> (Option<Scenario>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut err = |path: String, msg: String, help: &str| {
        problems.push(Problem::error("scenario", path, msg, help.to_string()))
    };
    if raw.name.trim().is_empty() {
        err(
            "name".into(),
            "the scenario name is empty".into(),
            "give the scenario a name, e.g. `name: monthly-2026-11`",
        );
    }
    if raw.packages.is_empty() {
        err(
            "packages".into(),
            "no packages listed".into(),
            "list the package ids to deliver, in order",
        );
    }
    let mut packages = Vec::new();
    let mut versions = BTreeMap::new();
    for (i, entry) in raw.packages.iter().enumerate() {
        let (p, version) = match entry.split_once('@') {
            Some((p, v)) => (p, Some(v.trim())),
            None => (entry.as_str(), None),
        };
        match p.parse::<PackageId>() {
            Ok(id) if packages.contains(&id) => err(
                format!("packages[{i}]"),
                format!("package `{p}` is listed twice"),
                "list each package once",
            ),
            Ok(_) if version == Some("") => err(
                format!("packages[{i}]"),
                format!("`{entry}` names no version after `@`"),
                "write `ID@VERSION` with a published version (`patchcast package versions ID`), or the id alone for the current one",
            ),
            Ok(id) => {
                if let Some(v) = version {
                    versions.insert(id.clone(), v.to_string());
                }
                packages.push(id)
            }
            Err(e) => err(
                format!("packages[{i}]"),
                e.0,
                "use the `id` of a published package",
            ),
        }
    }
    if raw.targets.machines.is_empty() && raw.targets.groups.is_empty() {
        err(
            "targets".into(),
            "the scenario has no targets".into(),
            "add `machines:` (ids or hostnames) or `groups:` under `targets`",
        );
    }
    let o = &raw.options;
    if o.max_concurrent == Some(0) {
        err(
            "options.max_concurrent".into(),
            "max_concurrent is 0, so nothing would ever be delivered".into(),
            "use 1 or more, or leave it out for no limit",
        );
    }
    let retry = o.retry.clone().unwrap_or_default();
    let max_unverified_runs = retry.max_unverified_runs.unwrap_or(3);
    if max_unverified_runs == 0 {
        err(
            "options.retry.max_unverified_runs".into(),
            "max_unverified_runs is 0".into(),
            "use 1 or more (default 3)",
        );
    }
    let mut retry_delay_ms = DEFAULT_RETRY_DELAY_MS;
    if let Some(d) = &retry.delay {
        // Zero is a valid choice here: retry at the very next poll.
        match parse_duration(d).or_else(|e| {
            if matches!(d.trim(), "0" | "0s") {
                Ok(std::time::Duration::ZERO)
            } else {
                Err(e)
            }
        }) {
            Ok(d) => retry_delay_ms = d.as_millis() as u64,
            Err(e) => err(
                "options.retry.delay".into(),
                e.0,
                "write a duration such as `30s`, `5m` or `1h`",
            ),
        }
    }
    let mut timeout_secs = None;
    if let Some(t) = &o.timeout {
        match parse_duration(t) {
            Ok(d) if d.as_secs() == 0 => err(
                "options.timeout".into(),
                "the timeout is zero".into(),
                "write a duration such as `10m`",
            ),
            Ok(d) => timeout_secs = Some(d.as_secs()),
            Err(e) => err(
                "options.timeout".into(),
                e.0,
                "write a duration such as `10m`",
            ),
        }
    }
    let rollback = o.rollback.unwrap_or(false);
    if rollback && versions.is_empty() {
        err(
            "options.rollback".into(),
            "`rollback: true` but no package names the version to roll back to".into(),
            "list the package as `ID@VERSION` (an older published version), or drop `rollback`",
        );
    }
    let ok = problems.is_empty();
    let scenario = Scenario {
        name: raw.name.trim().to_string(),
        action: match raw.action {
            Some(RawAction::Uninstall) => Action::Uninstall,
            Some(RawAction::Install) | None => Action::Install,
        },
        packages,
        machines: raw.targets.machines.clone(),
        groups: raw.targets.groups.clone(),
        max_concurrent: o.max_concurrent,
        max_unverified_runs,
        max_attempts: retry.max_attempts.unwrap_or(5),
        retry_delay_ms,
        allow_reboot: o.allow_reboot.unwrap_or(false),
        timeout_secs,
        when: o.when,
        versions,
        rollback,
    };
    // The bounds no single key above checks (durations beyond 30 days).
    for (path, msg) in scenario.problems() {
        if !problems
            .iter()
            .any(|p| p.path == path || p.path.starts_with("packages") && path == "packages")
        {
            problems.push(Problem::error(
                "scenario",
                path,
                msg,
                "use a shorter duration".to_string(),
            ));
        }
    }
    let ok = ok && problems.is_empty();
    (ok.then_some(scenario), problems)
}

/// Parses and checks a scenario file's text; problems come back placed in `file`.
pub fn load(file: &str, text: &str) -> Result<Scenario, Vec<Located>> {
    super::yaml::load_document(file, text, "scenario", resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_resolves_with_defaults() {
        let s = load(
            "s.yaml",
            "name: t\npackages: [a, b]\ntargets: { groups: [linux] }\n",
        )
        .unwrap();
        assert_eq!(s.packages.len(), 2);
        assert_eq!(s.max_unverified_runs, 3);
        assert_eq!(s.retry_delay_ms, DEFAULT_RETRY_DELAY_MS);
        assert!(!s.allow_reboot);
    }

    #[test]
    fn a_version_is_named_with_at_and_rollback_needs_one() {
        let s = load(
            "s.yaml",
            "name: t\npackages: [a@1.0, b]\ntargets: { groups: [linux] }\noptions: { rollback: true }\n",
        )
        .unwrap();
        let a: PackageId = "a".parse().unwrap();
        assert_eq!(s.packages.len(), 2);
        assert_eq!(s.versions.get(&a).map(String::as_str), Some("1.0"));
        assert!(s.rollback);
        let e = load(
            "s.yaml",
            "name: t\npackages: [a]\ntargets: { groups: [linux] }\noptions: { rollback: true }\n",
        )
        .unwrap_err();
        assert_eq!(e[0].problem.path, "options.rollback");
        let e = load(
            "s.yaml",
            "name: t\npackages: [a@]\ntargets: { groups: [linux] }\n",
        )
        .unwrap_err();
        assert_eq!(e[0].problem.path, "packages[0]");
    }

    #[test]
    fn problems_are_placed() {
        let text = "name: t\npackages: [a]\ntargets: { machines: [m1] }\noptions:\n  retry:\n    delay: soon\n";
        let e = load("s.yaml", text).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].line, e[0].problem.path.as_str()),
            (6, "options.retry.delay")
        );
    }

    #[test]
    fn durations_beyond_30_days_are_refused_in_place() {
        let text = "name: t\npackages: [a]\ntargets: { machines: [m1] }\noptions:\n  retry:\n    delay: 31d\n";
        let e = load("s.yaml", text).unwrap_err();
        assert_eq!(
            (e.len(), e[0].line, e[0].problem.path.as_str()),
            (1, 6, "options.retry.delay"),
            "{e:?}"
        );
        let ok = load("s.yaml", &text.replace("31d", "30d")).unwrap();
        assert!(ok.problems().is_empty());
    }

    #[test]
    fn unknown_key_and_missing_targets_are_errors() {
        let e = load("s.yaml", "name: t\npackages: [a]\ntargets: {}\nopts: {}\n").unwrap_err();
        assert!(e[0].problem.message.contains("unknown field"), "{e:?}");
        let e = load("s.yaml", "name: t\npackages: [a]\ntargets: {}\n").unwrap_err();
        assert!(e[0].problem.message.contains("no targets"));
    }
}
