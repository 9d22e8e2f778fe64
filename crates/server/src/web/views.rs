//! What the console shows, computed from results without I/O or the clock (`now` is a
//! parameter): compliance buckets, the machine filters, and machines not seen lately. (The
//! current delivery per machine and package, and compliance, are counted in SQL: `db::reports`.)

use patchcast_proto::admin_api::{DeliveryRow, MachineView};
use serde::{Deserialize, Serialize};

/// The compliance bucket of a delivery, by name (`DeliveryRow::bucket`).
pub fn bucket(d: &DeliveryRow) -> &'static str {
    d.bucket().name()
}

/// The machine list's filters (query string); empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineFilter {
    /// Substring of host name, id, address, OS or a label (case-insensitive).
    pub q: String,
    pub group: String,
    /// OS id or its prefix (`windows-server-2008`).
    pub os: String,
    /// Language tag prefix (`ja`).
    pub language: String,
    /// A delivery state one of the machine's current deliveries is in.
    pub state: String,
    /// A result code one of the machine's current deliveries carries.
    pub code: String,
    /// The console's page of the list, from 0 (exports ignore it: they hold every row).
    pub page: usize,
}

impl MachineFilter {
    pub fn matches(&self, m: &MachineView, current: &[&DeliveryRow]) -> bool {
        let q = self.q.trim().to_lowercase();
        let text_ok = q.is_empty()
            || [&m.hostname, &m.id, &m.peer_address, &m.inventory.os]
                .iter()
                .any(|s| s.to_lowercase().contains(&q))
            || m.labels.iter().any(|l| l.to_lowercase().contains(&q));
        let mine = || current.iter().filter(|d| d.machine_id == m.id);
        text_ok
            && (self.group.is_empty() || m.groups.contains(&self.group))
            && (self.os.is_empty() || m.inventory.os.starts_with(&self.os))
            && (self.language.is_empty()
                || m.inventory
                    .language
                    .to_lowercase()
                    .starts_with(&self.language.to_lowercase()))
            && (self.state.is_empty() || mine().any(|d| d.state.name() == self.state))
            && (self.code.is_empty()
                || mine().any(|d| d.last_code.is_some_and(|c| c.as_str() == self.code)))
    }
}

/// Machines last heard from before `now - after_ms`, longest silent first.
pub fn stale(machines: &[MachineView], now_ms: i64, after_ms: i64) -> Vec<&MachineView> {
    let mut out: Vec<&MachineView> = machines
        .iter()
        .filter(|m| m.last_seen_ms < now_ms - after_ms)
        .collect();
    out.sort_by_key(|m| m.last_seen_ms);
    out
}

/// Unix milliseconds as `2026-11-22 01:45:48` (UTC).
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchcast_core::delivery::State;
    use patchcast_core::errors::Code;
    use patchcast_proto::protocol::{Detail, Inventory};

    fn row(machine: &str, package: &str, scenario: &str, state: State) -> DeliveryRow {
        DeliveryRow {
            delivery_id: format!("{scenario}-{machine}-{package}"),
            scenario_id: scenario.into(),
            machine_id: machine.into(),
            hostname: machine.into(),
            mac: None,
            package_id: package.into(),
            action: Default::default(),
            last_code: match &state {
                State::Failed { code } => Some(*code),
                _ => None,
            },
            state,
            attempts: 1,
            unverified_runs: 0,
            rendered: None,
            detail: Detail::default(),
            updated_at_ms: 0,
            history: vec![],
        }
    }

    fn machine(id: &str, os: &str, lang: &str, last_seen_ms: i64) -> MachineView {
        MachineView {
            id: id.into(),
            hostname: format!("host-{id}"),
            peer_address: "127.0.0.1".into(),
            inventory: Inventory {
                hostname: format!("host-{id}"),
                os: os.into(),
                os_version: String::new(),
                arch: "x86".into(),
                language: lang.into(),
                service_pack: None,
                system_drive: "C:".into(),
                disk_free: 0,
                disk_total: 0,
                memory_total: 0,
                interfaces: vec![],
                agent_version: "0".into(),
                boot_time: 0,
                pending_reboot: false,
                packages: Default::default(),
                installed_updates: vec![],
                emulated: true,
            },
            labels: vec!["Lab".into()],
            enroll_group: None,
            groups: vec!["fleet".into()],
            enrolled_at_ms: 0,
            last_seen_ms,
            agent_state: "idle".into(),
        }
    }

    #[test]
    fn buckets() {
        let of = |state| bucket(&row("m", "p", "s", state)).to_string();
        assert_eq!(of(State::LoopDetected { rule: "r".into() }), "not_applied");
        assert_eq!(of(State::AwaitingRetry), "in_progress");
        assert_eq!(of(State::Failed { code: Code::E06 }), "failed");
        // A verified uninstall leaves the package not applied.
        let mut removed = row("m", "p", "s", State::Applied);
        assert_eq!(bucket(&removed), "applied");
        removed.action = patchcast_core::pipeline::Action::Uninstall;
        assert_eq!(bucket(&removed), "not_applied");
    }

    #[test]
    fn filters() {
        let m = machine("m1", "windows-server-2008", "ja-JP", 0);
        let row = row("m1", "p", "s1", State::Failed { code: Code::E06 });
        let f = |f: MachineFilter| f.matches(&m, &[&row]);
        assert!(f(MachineFilter::default()));
        assert!(f(MachineFilter {
            q: "HOST-M".into(),
            ..Default::default()
        }));
        assert!(
            f(MachineFilter {
                q: "lab".into(),
                ..Default::default()
            }),
            "labels"
        );
        assert!(!f(MachineFilter {
            q: "nope".into(),
            ..Default::default()
        }));
        assert!(f(MachineFilter {
            os: "windows-server".into(),
            ..Default::default()
        }));
        assert!(!f(MachineFilter {
            os: "debian".into(),
            ..Default::default()
        }));
        assert!(f(MachineFilter {
            language: "ja".into(),
            ..Default::default()
        }));
        assert!(!f(MachineFilter {
            language: "en".into(),
            ..Default::default()
        }));
        assert!(f(MachineFilter {
            group: "fleet".into(),
            ..Default::default()
        }));
        assert!(!f(MachineFilter {
            group: "other".into(),
            ..Default::default()
        }));
        assert!(f(MachineFilter {
            state: "failed".into(),
            ..Default::default()
        }));
        assert!(!f(MachineFilter {
            state: "applied".into(),
            ..Default::default()
        }));
        assert!(f(MachineFilter {
            code: "E06".into(),
            ..Default::default()
        }));
        assert!(!f(MachineFilter {
            code: "E19".into(),
            ..Default::default()
        }));
    }

    #[test]
    fn stale_machines() {
        let ms = vec![
            machine("a", "x", "en", 100),
            machine("b", "x", "en", 50),
            machine("c", "x", "en", 990),
        ];
        let s: Vec<&str> = stale(&ms, 1000, 100)
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(s, ["b", "a"]);
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_795_139_148_000), "2026-11-20 01:45:48");
    }
}
