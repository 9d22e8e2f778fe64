//! Group policies (`groups/*.yaml`): when a group's machines may start scheduled work
//! (automatic update, rollouts), how their check-ins are spread, and which content types are
//! held.
//!
//! ```yaml
//! group: night-servers
//! windows:
//!   - { start: "0 2 * * *", duration: 3h, time_zone: Asia/Tokyo }
//! blackout_dates: [2026-12-31]
//! check_in_spread: 30m
//! run_missed_at_start: true
//! hold: [hotfix]
//! ```
//!
//! Read raw (the schema's source, unknown keys rejected), then resolved: every window is built
//! with `core::schedule::Window::new`, so a bad cron pattern or time zone is reported with the
//! path of its value and never reaches the server.

use super::problem::{Located, Problem};
use super::types::parse_duration;
use crate::schedule::Window;
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A group's auto-update policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroupPolicy {
    /// The group this policy is for (`patchcast group list`, or an enrollment token's group).
    pub group: String,
    /// When scheduled work may start. No windows: at any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<RawWindow>,
    /// Local days (`YYYY-MM-DD`, in each window's time zone) on which nothing new starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout_dates: Vec<String>,
    /// Machines' start times are spread evenly over this much of each opening (default `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_in_spread: Option<String>,
    /// A machine that was offline through a window gets what it missed as soon as it is back,
    /// instead of at its next window (default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_missed_at_start: Option<bool>,
    /// Content types the server does not start on this group's machines, whatever created the
    /// delivery: `hotfix`, `service_pack`, `application`, `agent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold: Vec<ContentKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Cron pattern of the opening times, five fields (`0 2 * * SAT`: Saturdays 02:00).
    pub start: String,
    /// How long each opening lasts, in elapsed time (`3h`, `90m`; at most 7 days).
    pub duration: String,
    /// IANA time zone the pattern is read in (`Asia/Tokyo`, `UTC`; default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The package kinds, as holds name them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ContentKind {
    Hotfix,
    ServicePack,
    Application,
    /// The patchcast agent itself (agent self-upgrades).
    Agent,
}

impl From<super::raw::RawKind> for ContentKind {
    fn from(k: super::raw::RawKind) -> Self {
        match k {
            super::raw::RawKind::Hotfix => ContentKind::Hotfix,
            super::raw::RawKind::ServicePack => ContentKind::ServicePack,
            super::raw::RawKind::Application => ContentKind::Application,
            super::raw::RawKind::Agent => ContentKind::Agent,
        }
    }
}

impl std::fmt::Display for ContentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContentKind::Hotfix => "hotfix",
            ContentKind::ServicePack => "service_pack",
            ContentKind::Application => "application",
            ContentKind::Agent => "agent",
        })
    }
}

/// One checked window, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub start: String,
    pub duration_secs: u64,
    pub time_zone: String,
}

/// A checked policy, as the server stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPolicy {
    pub group: String,
    pub windows: Vec<WindowSpec>,
    pub blackout_dates: Vec<NaiveDate>,
    pub check_in_spread_secs: u64,
    pub run_missed_at_start: bool,
    pub hold: Vec<ContentKind>,
}

pub const DEFAULT_SPREAD_SECS: u64 = 15 * 60;

impl GroupPolicy {
    /// The windows as the core computes them. Resolve checked each one already.
    pub fn windows(&self) -> Vec<Window> {
        self.windows
            .iter()
            .filter_map(|w| {
                Window::new(
                    &w.start,
                    seconds(w.duration_secs),
                    &w.time_zone,
                    self.blackout_dates.iter().copied(),
                )
                .ok()
            })
            .collect()
    }

    pub fn spread(&self) -> chrono::Duration {
        seconds(self.check_in_spread_secs)
    }

    pub fn holds(&self, kind: ContentKind) -> bool {
        self.hold.contains(&kind)
    }
}

/// `secs` as a `chrono::Duration`, the longest one when it holds more seconds than that can
/// (`chrono::Duration::seconds` panics there): a policy posted to the API carries any `u64`,
/// and `Window::new` refuses such a window as too long like any other over 7 days.
fn seconds(secs: u64) -> chrono::Duration {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX)
}

/// Checks a raw policy, collecting every problem.
pub fn resolve(raw: &RawGroupPolicy) -> (Option<GroupPolicy>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut err = |path: String, msg: String, help: &str| {
        problems.push(Problem::error("group-policy", path, msg, help.to_string()))
    };
    if raw.group.trim().is_empty() {
        err(
            "group".into(),
            "the group name is empty".into(),
            "name the group this policy is for, e.g. `group: night-servers`",
        );
    }
    let mut blackout = Vec::new();
    for (i, d) in raw.blackout_dates.iter().enumerate() {
        match NaiveDate::from_str(d.trim()) {
            Ok(d) => blackout.push(d),
            Err(_) => err(
                format!("blackout_dates[{i}]"),
                format!("`{d}` is not a date"),
                "write dates as YYYY-MM-DD, e.g. 2026-12-31",
            ),
        }
    }
    let mut windows = Vec::new();
    for (i, w) in raw.windows.iter().enumerate() {
        let tz = w.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let duration = match parse_duration(&w.duration) {
            Ok(d) => d,
            Err(e) => {
                err(
                    format!("windows[{i}].duration"),
                    e.0,
                    "write a duration such as `3h` or `90m`",
                );
                continue;
            }
        };
        let secs = duration.as_secs();
        match Window::new(&w.start, seconds(secs), &tz, blackout.iter().copied()) {
            Ok(_) => windows.push(WindowSpec {
                start: w.start.trim().to_string(),
                duration_secs: secs,
                time_zone: tz,
            }),
            Err(e) => {
                use crate::schedule::ScheduleError as E;
                let (field, help) = match &e {
                    E::Cron { .. } => ("start", "five fields, e.g. `0 2 * * SAT`"),
                    E::TimeZone(_) => ("time_zone", "an IANA name such as `Asia/Tokyo`"),
                    E::Duration => ("duration", "between 1s and 7d, e.g. `3h`"),
                };
                err(format!("windows[{i}].{field}"), e.to_string(), help);
            }
        }
    }
    let mut spread = DEFAULT_SPREAD_SECS;
    if let Some(s) = &raw.check_in_spread {
        match parse_duration(s).or_else(|e| {
            if matches!(s.trim(), "0" | "0s") {
                Ok(std::time::Duration::ZERO)
            } else {
                Err(e)
            }
        }) {
            Ok(d) => spread = d.as_secs(),
            Err(e) => err(
                "check_in_spread".into(),
                e.0,
                "write a duration such as `30m`, or `0s` for no spreading",
            ),
        }
    }
    let mut hold = raw.hold.clone();
    hold.sort();
    hold.dedup();
    let ok = problems.is_empty();
    let p = GroupPolicy {
        group: raw.group.trim().to_string(),
        windows,
        blackout_dates: blackout,
        check_in_spread_secs: spread,
        run_missed_at_start: raw.run_missed_at_start.unwrap_or(false),
        hold,
    };
    (ok.then_some(p), problems)
}

/// Parses and checks a policy file's text; problems come back placed in `file`.
pub fn load(file: &str, text: &str) -> Result<GroupPolicy, Vec<Located>> {
    super::yaml::load_document(file, text, "group-policy", resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_resolves_with_defaults() {
        let p = load(
            "g.yaml",
            "group: night\nwindows:\n  - { start: '0 2 * * *', duration: 3h, time_zone: Asia/Tokyo }\nhold: [hotfix]\n",
        )
        .unwrap();
        assert_eq!(p.windows.len(), 1);
        assert_eq!(p.windows[0].duration_secs, 3 * 3600);
        assert_eq!(p.check_in_spread_secs, DEFAULT_SPREAD_SECS);
        assert!(p.holds(ContentKind::Hotfix) && !p.holds(ContentKind::Application));
        assert!(!p.run_missed_at_start);
        assert_eq!(p.windows().len(), 1);
    }

    #[test]
    fn every_problem_is_placed() {
        let text = "group: night\nwindows:\n  - start: '0 25 * * *'\n    duration: 3h\n  - start: '0 2 * * *'\n    duration: 3h\n    time_zone: Mars/Olympus\nblackout_dates: [2026-13-01]\n";
        let e = load("g.yaml", text).unwrap_err();
        let placed: Vec<_> = e
            .iter()
            .map(|l| (l.line, l.problem.path.as_str()))
            .collect();
        assert_eq!(
            placed,
            vec![
                (8, "blackout_dates[0]"),
                (3, "windows[0].start"),
                (7, "windows[1].time_zone")
            ],
            "{e:?}"
        );
        assert!(e[1].to_string().starts_with("g.yaml:3:"), "{}", e[1]);
    }

    #[test]
    fn unknown_keys_and_kinds_are_errors() {
        let e = load("g.yaml", "group: g\nholds: [hotfix]\n").unwrap_err();
        assert!(e[0].problem.message.contains("unknown field"), "{e:?}");
        let e = load("g.yaml", "group: g\nhold: [driver]\n").unwrap_err();
        assert!(e[0].problem.message.contains("driver"), "{e:?}");
    }
}
