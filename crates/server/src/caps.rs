//! Transfer caps: how many deliveries may be transferring at once on the whole server and in
//! one subnet (so a branch office's link is not filled by its own machines), and the
//! bandwidth of one content stream (`throttle`).
//!
//! A delivery is "transferring" from dispatch until the agent reports the download done, so
//! the count comes from the deliveries table and holds across restarts. Subnets are the
//! machine's address as the server sees it, cut to `/24` (IPv4) or `/64` (IPv6) by default.

use super::Server;
use super::windows::Gate;
use crate::db;
use anyhow::Result;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    pub max_transfers: Option<u32>,
    pub max_transfers_per_subnet: Option<u32>,
    pub subnet_prefix_v4: u8,
    pub subnet_prefix_v6: u8,
    /// Bytes per second for one content download; None: unlimited.
    pub transfer_rate: Option<u64>,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_transfers: None,
            max_transfers_per_subnet: None,
            subnet_prefix_v4: 24,
            subnet_prefix_v6: 64,
            transfer_rate: None,
        }
    }
}

impl Caps {
    /// Whether a cap limits how many transfers run at once.
    pub fn limit_transfers(&self) -> bool {
        self.max_transfers.is_some() || self.max_transfers_per_subnet.is_some()
    }

    /// The subnet `addr` counts in.
    pub fn subnet(&self, addr: IpAddr) -> ipnet::IpNet {
        let prefix = match addr {
            IpAddr::V4(_) => self.subnet_prefix_v4.min(32),
            IpAddr::V6(_) => self.subnet_prefix_v6.min(128),
        };
        ipnet::IpNet::new(addr, prefix)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(addr))
    }
}

/// Looked at again this soon when a cap is full (a finishing transfer frees a slot).
const RECHECK_MS: i64 = 1_000;

impl Server {
    /// May a transfer to `machine` start now under the caps? Counted in `tx`, after its
    /// group's writes are flushed: a pool read missed the group's own dispatches.
    pub async fn transfer_gate(&self, tx: &mut db::Conn, machine: &str, now: i64) -> Result<Gate> {
        let c = &self.caps;
        let Some(m) = self.machine(machine).await? else {
            return Ok(Gate::Open);
        };
        let rows = super::db::deliveries::transfers_except(tx, &m.id).await?;
        let wait = |why: String| Gate::Wait {
            until: Some(now + RECHECK_MS),
            why,
        };
        if let Some(max) = c.max_transfers
            && rows.len() >= max as usize
        {
            return Ok(wait(format!("{max} transfers running (server cap)")));
        }
        if let Some(max) = c.max_transfers_per_subnet
            && let Ok(mine) = m.peer_address.parse::<IpAddr>()
        {
            let net = c.subnet(mine);
            let same = rows
                .iter()
                .filter(|(_, a)| a.parse::<IpAddr>().is_ok_and(|a| net.contains(&a)))
                .count();
            if same >= max as usize {
                return Ok(wait(format!(
                    "{max} transfers running in {net} (subnet cap)"
                )));
            }
        }
        Ok(Gate::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_cut_to_the_prefix() {
        let c = Caps::default();
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(c.subnet(a).to_string(), "10.1.2.0/24");
        assert!(
            c.subnet(a)
                .contains(&"10.1.2.200".parse::<IpAddr>().unwrap())
        );
        assert!(!c.subnet(a).contains(&"10.1.3.1".parse::<IpAddr>().unwrap()));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.subnet(v6).to_string(), "2001:db8::/64");
    }
}
