//! Rollout documents (`rollouts/*.yaml`): packages delivered in waves. The pilot group goes
//! first; each following wave starts only when the wave before it has applied at least the
//! success threshold, and the whole rollout stops by itself when the failure rate of the
//! waves started so far goes over the limit (the OfficeScan guide's pilot deployment).
//!
//! ```yaml
//! name: 2026-12-hotfixes
//! packages: [kb981550-ws2008-fileversion]
//! pilot: { group: pilot, success_threshold: 90% }
//! waves:
//!   - group: branch-offices
//!   - group: head-office
//! failure_limit: 10%
//! ```
//!
//! Each wave's deliveries follow that group's windows and holds (`model::group_policy`).

use super::problem::{Located, Problem};
use super::types::{PackageId, parse_duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// Name shown in `patchcast rollout status`.
    pub name: String,
    /// Package ids, delivered in this order on each machine.
    pub packages: Vec<String>,
    pub pilot: RawPilot,
    /// Groups after the pilot, in order; each starts when the one before clears the threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<RawWave>,
    /// The rollout stops when failed deliveries exceed this share of a started wave's
    /// deliveries (`10%`; default `20%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<String>,
    /// Attempts per machine and package before a delivery counts as failed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wait before a delivery that did not apply is tried again (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPilot {
    pub group: String,
    /// Share of the pilot's (and then each wave's) applicable deliveries that must be applied
    /// before the next wave starts (`90%`).
    pub success_threshold: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWave {
    pub group: String,
}

/// A checked rollout, as the server stores it. Rates are per mille (900 = 90%).
/// Where a rollout is: its waves still opening, stopped by a gate, or every wave cleared.
/// `name` is how the store keeps it and the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    /// Held by an administrator: no delivery of it starts and no wave opens until resumed.
    Paused,
    /// Stopped by its failure limit.
    Stopped,
    /// Ended by an administrator: its waiting deliveries are cancelled.
    Aborted,
    Completed,
}

/// What an administrator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutVerb {
    Pause,
    Resume,
    Abort,
}

impl RolloutVerb {
    pub fn parse(s: &str) -> Option<RolloutVerb> {
        match s {
            "pause" => Some(RolloutVerb::Pause),
            "resume" => Some(RolloutVerb::Resume),
            "abort" => Some(RolloutVerb::Abort),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RolloutVerb::Pause => "pause",
            RolloutVerb::Resume => "resume",
            RolloutVerb::Abort => "abort",
        }
    }

    /// The state a rollout in `from` (a stored name) goes to, or why it cannot: only a
    /// running rollout pauses, only a paused one resumes, and one that ended stays ended.
    pub fn apply(self, from: &str) -> Result<RolloutState, String> {
        let (running, paused) = (RolloutState::Running.name(), RolloutState::Paused.name());
        match self {
            RolloutVerb::Pause if from == running => Ok(RolloutState::Paused),
            RolloutVerb::Resume if from == paused => Ok(RolloutState::Running),
            RolloutVerb::Abort if from == running || from == paused => Ok(RolloutState::Aborted),
            RolloutVerb::Pause | RolloutVerb::Resume => Err(format!(
                "the rollout is {from}: only a running rollout is paused, only a paused one resumed"
            )),
            RolloutVerb::Abort => Err(format!(
                "the rollout is {from} already: only a running or paused rollout is aborted"
            )),
        }
    }
}

impl RolloutState {
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Stopped => "stopped",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub name: String,
    pub packages: Vec<PackageId>,
    /// Wave 0 is the pilot.
    pub groups: Vec<String>,
    pub success_permille: u32,
    pub failure_permille: u32,
    pub max_attempts: u32,
    pub retry_delay_ms: u64,
}

/// `90%`, `90` or `0.9` → 900 per mille.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, pct) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    let v = if pct || v > 1.0 { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is outside 0%–100%"));
    }
    Ok((v * 1000.0).round() as u32)
}

pub fn resolve(raw: &RawRollout) -> (Option<Rollout>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut err = |path: String, msg: String, help: &str| {
        problems.push(Problem::error("rollout", path, msg, help.to_string()))
    };
    if raw.name.trim().is_empty() {
        err(
            "name".into(),
            "the rollout name is empty".into(),
            "give it a name, e.g. `name: 2026-12-hotfixes`",
        );
    }
    if raw.packages.is_empty() {
        err(
            "packages".into(),
            "no packages listed".into(),
            "list the package ids to roll out",
        );
    }
    let mut packages: Vec<PackageId> = Vec::new();
    for (i, p) in raw.packages.iter().enumerate() {
        match p.parse::<PackageId>() {
            Ok(id) if packages.contains(&id) => err(
                format!("packages[{i}]"),
                format!("package `{p}` is listed twice"),
                "list each package once",
            ),
            Ok(id) => packages.push(id),
            Err(e) => err(format!("packages[{i}]"), e.0, "use a published package id"),
        }
    }
    let mut groups = vec![raw.pilot.group.trim().to_string()];
    if groups[0].is_empty() {
        err(
            "pilot.group".into(),
            "the pilot group is empty".into(),
            "name the group that goes first",
        );
    }
    for (i, w) in raw.waves.iter().enumerate() {
        let g = w.group.trim().to_string();
        if g.is_empty() || groups.contains(&g) {
            err(
                format!("waves[{i}].group"),
                format!("wave group `{g}` is empty or already a wave"),
                "give each wave its own group",
            );
        }
        groups.push(g);
    }
    let success = parse_rate(&raw.pilot.success_threshold).unwrap_or_else(|e| {
        err(
            "pilot.success_threshold".into(),
            e,
            "write a percentage such as `90%`",
        );
        0
    });
    let failure = match &raw.failure_limit {
        None => 200,
        Some(f) => parse_rate(f).unwrap_or_else(|e| {
            err(
                "failure_limit".into(),
                e,
                "write a percentage such as `10%`",
            );
            0
        }),
    };
    let mut retry_delay_ms = super::scenario::DEFAULT_RETRY_DELAY_MS;
    if let Some(d) = &raw.retry_delay {
        match parse_duration(d) {
            Ok(d) => retry_delay_ms = d.as_millis() as u64,
            Err(_) if matches!(d.trim(), "0" | "0s") => retry_delay_ms = 0,
            Err(e) => err("retry_delay".into(), e.0, "write a duration such as `30s`"),
        }
    }
    let max_attempts = raw.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        err(
            "max_attempts".into(),
            "max_attempts is 0: a failing delivery would never count as failed, so the failure limit could not stop the rollout".into(),
            "use 1 or more (default 3)",
        );
    }
    let ok = problems.is_empty();
    let r = Rollout {
        name: raw.name.trim().to_string(),
        packages,
        groups,
        success_permille: success,
        failure_permille: failure,
        max_attempts,
        retry_delay_ms,
    };
    (ok.then_some(r), problems)
}

pub fn load(file: &str, text: &str) -> Result<Rollout, Vec<Located>> {
    super::yaml::load_document(file, text, "rollout", resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn administrators_pause_resume_and_abort() {
        use RolloutVerb::*;
        assert_eq!(Pause.apply("running"), Ok(RolloutState::Paused));
        assert_eq!(Resume.apply("paused"), Ok(RolloutState::Running));
        assert_eq!(Abort.apply("paused"), Ok(RolloutState::Aborted));
        assert_eq!(Abort.apply("running"), Ok(RolloutState::Aborted));
        assert!(Resume.apply("running").is_err());
        assert!(Pause.apply("paused").is_err());
        for ended in ["stopped", "aborted", "completed"] {
            for v in [Pause, Resume, Abort] {
                assert!(v.apply(ended).is_err(), "{v:?} {ended}");
            }
        }
        assert_eq!(RolloutVerb::parse("abort"), Some(Abort));
        assert_eq!(RolloutVerb::parse("stop"), None);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("90%"), Ok(900));
        assert_eq!(parse_rate("90"), Ok(900));
        assert_eq!(parse_rate("0.25"), Ok(250));
        assert_eq!(parse_rate("100%"), Ok(1000));
        assert!(parse_rate("150%").is_err());
        assert!(parse_rate("most").is_err());
    }

    #[test]
    fn a_rollout_resolves_and_problems_are_placed() {
        let r = load(
            "r.yaml",
            "name: r\npackages: [a]\npilot: { group: p, success_threshold: 80% }\nwaves: [{ group: w1 }, { group: w2 }]\n",
        )
        .unwrap();
        assert_eq!(r.groups, vec!["p", "w1", "w2"]);
        assert_eq!((r.success_permille, r.failure_permille), (800, 200));
        let e = load(
            "r.yaml",
            "name: r\npackages: [a]\npilot:\n  group: p\n  success_threshold: lots\nwaves: [{ group: p }]\n",
        )
        .unwrap_err();
        let placed: Vec<_> = e
            .iter()
            .map(|l| (l.line, l.problem.path.as_str()))
            .collect();
        assert_eq!(
            placed,
            vec![(6, "waves[0].group"), (5, "pilot.success_threshold")],
            "{e:?}"
        );
    }
}
