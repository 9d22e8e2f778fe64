//! Sign-in lockout. argon2 makes each guess cost the guesser, but not enough against a
//! patient one; so after `MAX_FAILURES` failed sign-ins for one account name, or from one
//! address, within `WINDOW_MS` of each other, that key is refused without checking the
//! password until `WINDOW_MS` has passed since its last failure. Per account stops a slow
//! guess spread over many addresses; per address stops one host trying many accounts. The
//! price is that anyone can lock an account for 15 minutes; an administrator at the server
//! still has the CLI. Pure (the caller supplies the time); kept in memory, so a server restart
//! forgets it.

use std::collections::HashMap;

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Above this many keys, the expired ones are dropped (a flood of names cannot grow it forever).
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct Lockout {
    /// Key → (failures in the current run, time of the last one).
    failures: HashMap<String, (u32, i64)>,
}

/// The keys one attempt counts against.
pub fn keys(account: &str, peer: std::net::IpAddr) -> [String; 2] {
    [
        format!("account:{}", account.trim().to_lowercase()),
        format!("address:{peer}"),
    ]
}

impl Lockout {
    /// Milliseconds until an attempt under `keys` may be checked; 0: now.
    pub fn wait_ms(&self, keys: &[String], now: i64) -> i64 {
        keys.iter()
            .filter_map(|k| self.failures.get(k))
            .filter(|(n, _)| *n >= MAX_FAILURES)
            .map(|(_, last)| last + WINDOW_MS - now)
            .max()
            .unwrap_or(0)
            .max(0)
    }

    pub fn failed(&mut self, keys: &[String], now: i64) {
        if self.failures.len() >= PRUNE_AT {
            self.failures.retain(|_, (_, last)| now - *last < WINDOW_MS);
        }
        for k in keys {
            let e = self.failures.entry(k.clone()).or_insert((0, now));
            // A run of failures ends when WINDOW_MS passes without one.
            *e = if now - e.1 >= WINDOW_MS {
                (1, now)
            } else {
                (e.0 + 1, now)
            };
        }
    }

    /// A correct password clears its keys' failures.
    pub fn succeeded(&mut self, keys: &[String]) {
        for k in keys {
            self.failures.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(account: &str, ip: &str) -> [String; 2] {
        keys(account, ip.parse().unwrap())
    }

    #[test]
    fn the_fifth_failure_locks_the_account_for_the_window_from_the_last_failure() {
        let mut l = Lockout::default();
        for i in 0..4 {
            l.failed(&k("alice", "10.0.0.1"), i * 1000);
            assert_eq!(l.wait_ms(&k("alice", "10.0.0.1"), i * 1000), 0);
        }
        l.failed(&k("Alice", "10.0.0.2"), 4000);
        // Same account from another address, and any account from the first address: locked.
        assert_eq!(l.wait_ms(&k("alice", "10.0.0.9"), 5000), WINDOW_MS - 1000);
        assert_eq!(
            l.wait_ms(&k("bob", "10.0.0.1"), 5000),
            0,
            "10.0.0.1 failed only 4 times"
        );
        assert_eq!(l.wait_ms(&k("alice", "10.0.0.1"), 4000 + WINDOW_MS), 0);
    }

    #[test]
    fn one_address_trying_many_accounts_is_locked() {
        let mut l = Lockout::default();
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            l.failed(&k(name, "192.0.2.7"), i as i64);
        }
        assert!(l.wait_ms(&k("f", "192.0.2.7"), 10) > 0);
        assert_eq!(l.wait_ms(&k("f", "192.0.2.8"), 10), 0);
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock_and_success_clears() {
        let mut l = Lockout::default();
        for i in 0..10 {
            l.failed(&k("alice", "10.0.0.1"), i * WINDOW_MS);
        }
        assert_eq!(l.wait_ms(&k("alice", "10.0.0.1"), 10 * WINDOW_MS), 0);
        for i in 0..4 {
            l.failed(&k("carol", "10.0.0.3"), i);
        }
        l.succeeded(&k("carol", "10.0.0.3"));
        l.failed(&k("carol", "10.0.0.3"), 5);
        assert_eq!(
            l.wait_ms(&k("carol", "10.0.0.3"), 6),
            0,
            "the count started again"
        );
    }
}
