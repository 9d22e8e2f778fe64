//! The server's one source of the current time. Every scheduling decision (windows, retries,
//! deadlines, last seen) reads `Server::now()`, so a test can move the server through days of
//! windows in seconds.
//!
//! The system clock is the default. `patchcast server --test-clock` (hidden, logged loudly)
//! adds an offset that an admin may set or advance over `POST /api/v1/admin/clock`; without
//! the flag that endpoint refuses. Time keeps running at real speed from the shifted point, so
//! timeouts and long polls behave as usual. The pure core never reads a clock: callers pass it.

use super::Server;
use super::db::now_ms;
use patchcast_proto::schedule_api::{ClockChange, ClockReading};
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Clock {
    test: bool,
    offset_ms: AtomicI64,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this server runs on the system clock; start it with --test-clock to set its time (tests only)"
)]
pub struct NotATestClock;

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn test() -> Clock {
        Clock {
            test: true,
            offset_ms: AtomicI64::new(0),
        }
    }

    pub fn is_test(&self) -> bool {
        self.test
    }

    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn change(&self, c: &ClockChange) -> Result<ClockReading, NotATestClock> {
        if !self.test {
            return Err(NotATestClock);
        }
        if let Some(t) = c.set_ms {
            self.offset_ms.store(t - now_ms(), Ordering::SeqCst);
        } else if let Some(d) = c.advance_ms {
            self.offset_ms.fetch_add(d, Ordering::SeqCst);
        }
        Ok(self.reading())
    }

    pub fn reading(&self) -> ClockReading {
        ClockReading {
            now_ms: self.now_ms(),
            test_clock: self.test,
        }
    }
}

impl Server {
    /// The current time in unix milliseconds, as this server sees it.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now()).unwrap_or_default()
    }

    /// Moves the test clock and wakes every waiting poll, so gates are looked at again at once.
    pub fn change_clock(&self, c: &ClockChange) -> Result<ClockReading, NotATestClock> {
        let r = self.clock.change(c)?;
        tracing::warn!(now_ms = r.now_ms, "TEST CLOCK moved by an administrator");
        let machines: Vec<String> = {
            let map = self.notify.lock().unwrap_or_else(|p| p.into_inner());
            map.keys().cloned().collect()
        };
        for m in machines {
            self.wake(&m);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_refuses_changes_and_test_clock_moves() {
        let c = Clock::system();
        assert!(c.change(&ClockChange::default()).is_err());
        let t = Clock::test();
        let r = t
            .change(&ClockChange {
                set_ms: Some(1_000_000),
                advance_ms: None,
            })
            .unwrap();
        assert!((1_000_000..1_000_000 + 60_000).contains(&r.now_ms));
        let r2 = t
            .change(&ClockChange {
                set_ms: None,
                advance_ms: Some(3_600_000),
            })
            .unwrap();
        assert!(r2.now_ms >= r.now_ms + 3_600_000);
    }
}
