//! Auto-update windows: when new deliveries may start for a group. Pure: callers pass the clock.
//!
//! A window opens at each match of a cron pattern read in the group's time zone and stays open
//! for a duration of elapsed time (a 3 h window that opens at 01:00 on the night clocks go
//! forward closes at 05:00 local, three real hours later). Windows may cross midnight.
//!
//! Daylight saving (croner's rules): a start that falls in a skipped hour moves to the first
//! real instant after it; a start in a repeated hour happens once, at its first occurrence.
//!
//! Blackout dates are local calendar days with no new work at all: a window starting on one
//! does not open, and a window running into one closes at that day's local midnight.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::collections::BTreeSet;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub struct Window {
    start: Cron,
    duration: Duration,
    tz: Tz,
    blackout: BTreeSet<NaiveDate>,
}

/// One opening of a window, in absolute time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Occurrence {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Occurrence {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "start `{pattern}` is not a cron pattern: {reason} (five fields: minute hour day-of-month month day-of-week, e.g. `0 2 * * SAT`)"
    )]
    Cron { pattern: String, reason: String },
    #[error(
        "time zone `{0}` is not an IANA time zone name (e.g. `Asia/Tokyo`, `Europe/Berlin`, `UTC`)"
    )]
    TimeZone(String),
    #[error("duration must be longer than zero and at most 7 days")]
    Duration,
}

/// Occurrences looked at when walking back over blacked-out or overlapping starts. A minutely
/// pattern with a day-long blackout is 1440; beyond this the schedule is treated as closed.
const MAX_STEPS: usize = 10_000;

impl Window {
    pub fn new(
        cron: &str,
        duration: Duration,
        tz: &str,
        blackout: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<Window, ScheduleError> {
        let start = Cron::from_str(cron).map_err(|e| ScheduleError::Cron {
            pattern: cron.into(),
            reason: e.to_string(),
        })?;
        let tz = Tz::from_str(tz).map_err(|_| ScheduleError::TimeZone(tz.into()))?;
        if duration <= Duration::zero() || duration > Duration::days(7) {
            return Err(ScheduleError::Duration);
        }
        Ok(Window {
            start,
            duration,
            tz,
            blackout: blackout.into_iter().collect(),
        })
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The opening that starts at `start`, cut at the first blackout day it runs into;
    /// `None` when it starts on a blackout day.
    fn occurrence(&self, start: DateTime<Utc>) -> Option<Occurrence> {
        let first = self.local_date(start);
        if self.blackout.contains(&first) {
            return None;
        }
        let mut end = start + self.duration;
        let last = self.local_date(end - Duration::nanoseconds(1));
        if let Some(day) = self.blackout.range(first..=last).next() {
            end = end.min(self.local_midnight(*day));
        }
        Some(Occurrence { start, end })
    }

    /// The first instant of local day `day` (after a gap, if midnight itself is skipped).
    fn local_midnight(&self, day: NaiveDate) -> DateTime<Utc> {
        let midnight = day.and_hms_opt(0, 0, 0).expect("midnight exists");
        (0..=24)
            .find_map(|h| {
                self.tz
                    .from_local_datetime(&(midnight + Duration::hours(h)))
                    .earliest()
            })
            .expect("a local day has an instant")
            .with_timezone(&Utc)
    }

    /// The opening that `now` falls in, if any: nothing new starts outside it.
    pub fn open_at(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        let mut cursor = now.with_timezone(&self.tz);
        let mut inclusive = true;
        for _ in 0..MAX_STEPS {
            let start = self
                .start
                .find_previous_occurrence(&cursor, inclusive)
                .ok()?;
            let start_utc = start.with_timezone(&Utc);
            // Earlier starts end earlier still: none of them can contain `now`.
            if start_utc + self.duration <= now {
                return None;
            }
            if let Some(o) = self.occurrence(start_utc).filter(|o| o.contains(now)) {
                return Some(o);
            }
            cursor = start;
            inclusive = false;
        }
        None
    }

    /// The next opening that starts after `t` (the one open at `t` is not included).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<Occurrence> {
        let mut cursor = t.with_timezone(&self.tz);
        for _ in 0..MAX_STEPS {
            let start = self.start.find_next_occurrence(&cursor, false).ok()?;
            if let Some(o) = self.occurrence(start.with_timezone(&Utc)) {
                return Some(o);
            }
            cursor = start;
        }
        None
    }

    /// The opening at `now` (if any) and the following ones, `n` in all: `schedule show`.
    pub fn upcoming(&self, now: DateTime<Utc>, n: usize) -> Vec<Occurrence> {
        let mut out: Vec<Occurrence> = self.open_at(now).into_iter().collect();
        let mut t = now;
        while out.len() < n {
            match self.next_after(t) {
                Some(o) => {
                    t = o.start;
                    out.push(o);
                }
                None => break,
            }
        }
        out
    }
}

/// When in an opening a machine should check in: a fixed offset per machine, spread evenly over
/// the first `spread` of the opening, so thousands of machines do not arrive at its first second.
/// Deterministic, so a restarted server gives every machine the same slot.
pub fn check_in_at(machine_id: &str, o: &Occurrence, spread: Duration) -> DateTime<Utc> {
    let span = spread.min(o.end - o.start).num_milliseconds().max(1) as u64;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(machine_id.as_bytes());
    let seed = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"));
    o.start + Duration::milliseconds((seed % span) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::from_str(s).unwrap()
    }

    fn window(cron: &str, hours: i64, tz: &str, blackout: &[&str]) -> Window {
        Window::new(
            cron,
            Duration::hours(hours),
            tz,
            blackout.iter().map(|d| day(d)),
        )
        .unwrap()
    }

    fn occ(start: &str, end: &str) -> Occurrence {
        Occurrence {
            start: utc(start),
            end: utc(end),
        }
    }

    #[test]
    fn open_and_closed_around_a_daily_window() {
        let w = window("0 2 * * *", 3, "UTC", &[]);
        let o = occ("2026-11-21T02:00:00Z", "2026-11-21T05:00:00Z");
        assert_eq!(w.open_at(utc("2026-11-21T02:00:00Z")), Some(o));
        assert_eq!(w.open_at(utc("2026-11-21T04:59:59Z")), Some(o));
        assert_eq!(w.open_at(utc("2026-11-21T05:00:00Z")), None);
        assert_eq!(w.open_at(utc("2026-11-21T01:59:59Z")), None);
        assert_eq!(
            w.next_after(utc("2026-11-21T03:00:00Z")),
            Some(occ("2026-11-22T02:00:00Z", "2026-11-22T05:00:00Z"))
        );
    }

    #[test]
    fn a_window_crosses_midnight() {
        let w = window("0 23 * * SAT", 4, "UTC", &[]);
        let o = occ("2026-11-21T23:00:00Z", "2026-11-22T03:00:00Z");
        assert_eq!(w.open_at(utc("2026-11-22T01:30:00Z")), Some(o));
        assert_eq!(w.open_at(utc("2026-11-22T03:00:00Z")), None);
        // Sunday night is not Saturday night.
        assert_eq!(w.open_at(utc("2026-11-23T00:30:00Z")), None);
    }

    #[test]
    fn the_same_pattern_means_local_time_in_each_zone() {
        let tokyo = window("0 2 * * *", 1, "Asia/Tokyo", &[]);
        let new_york = window("0 2 * * *", 1, "America/New_York", &[]);
        let t = utc("2026-11-20T12:00:00Z");
        assert_eq!(
            tokyo.next_after(t).unwrap().start,
            utc("2026-11-20T17:00:00Z")
        );
        assert_eq!(
            new_york.next_after(t).unwrap().start,
            utc("2026-11-21T07:00:00Z")
        );
    }

    #[test]
    fn spring_forward_moves_a_skipped_start_to_the_end_of_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
        let w = window("30 2 * * *", 2, "Europe/Berlin", &[]);
        let o = w.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(o.start, utc("2026-03-29T01:00:00Z")); // 03:00 CEST
        assert_eq!(o.end, utc("2026-03-29T03:00:00Z")); // two real hours later
        let next = w.next_after(o.start).unwrap();
        assert_eq!(next.start, utc("2026-03-30T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn a_window_spanning_the_spring_forward_lasts_its_real_duration() {
        // Opens 01:00 CET (00:00 UTC); four real hours end at 06:00 CEST local time.
        let w = window("0 1 * * *", 4, "Europe/Berlin", &[]);
        let o = w.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(o, occ("2026-03-29T00:00:00Z", "2026-03-29T04:00:00Z"));
        assert!(w.open_at(utc("2026-03-29T03:59:00Z")).is_some());
    }

    #[test]
    fn fall_back_opens_a_repeated_start_once() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let w = window("30 2 * * *", 1, "Europe/Berlin", &[]);
        let starts: Vec<_> = w
            .upcoming(utc("2026-10-24T12:00:00Z"), 3)
            .iter()
            .map(|o| o.start)
            .collect();
        assert_eq!(
            starts,
            [
                utc("2026-10-25T00:30:00Z"), // 02:30 CEST, the first of the two
                utc("2026-10-26T01:30:00Z"), // 02:30 CET the next day
                utc("2026-10-27T01:30:00Z"),
            ]
        );
        // The second 02:30 (01:30 UTC) is inside the first opening, not a new one.
        assert_eq!(
            w.open_at(utc("2026-10-25T01:20:00Z")).map(|o| o.start),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn a_blackout_day_skips_the_windows_starting_on_it() {
        let w = window("0 2 * * *", 3, "Asia/Tokyo", &["2026-12-31"]);
        // 2026-12-31 02:00 JST = 2026-12-30 17:00 UTC.
        assert_eq!(w.open_at(utc("2026-12-30T18:00:00Z")), None);
        assert_eq!(
            w.next_after(utc("2026-12-30T00:00:00Z")).unwrap().start,
            utc("2026-12-31T17:00:00Z") // 2027-01-01 02:00 JST
        );
    }

    #[test]
    fn a_window_running_into_a_blackout_day_closes_at_its_midnight() {
        let w = window("0 22 * * *", 4, "UTC", &["2026-12-25"]);
        let o = w.open_at(utc("2026-12-24T23:00:00Z")).unwrap();
        assert_eq!(o, occ("2026-12-24T22:00:00Z", "2026-12-25T00:00:00Z"));
        assert_eq!(w.open_at(utc("2026-12-25T01:00:00Z")), None);
    }

    #[test]
    fn blackout_dates_are_local_days() {
        // 2026-11-21 23:30 UTC is already the 22nd in Tokyo.
        let w = window("30 8 * * *", 1, "Asia/Tokyo", &["2026-11-22"]);
        assert_eq!(w.open_at(utc("2026-11-21T23:45:00Z")), None);
        let utc_w = window("30 23 * * *", 1, "UTC", &["2026-11-22"]);
        assert!(utc_w.open_at(utc("2026-11-21T23:45:00Z")).is_some());
    }

    #[test]
    fn overlapping_openings_report_the_latest_start() {
        let w = window("0 * * * *", 3, "UTC", &[]);
        assert_eq!(
            w.open_at(utc("2026-11-21T10:30:00Z")).map(|o| o.start),
            Some(utc("2026-11-21T10:00:00Z"))
        );
    }

    #[test]
    fn upcoming_lists_the_open_window_first() {
        let w = window("0 2 * * MON,THU", 6, "UTC", &[]);
        // 2026-11-23 is a Monday.
        let list = w.upcoming(utc("2026-11-23T03:00:00Z"), 3);
        assert_eq!(
            list.iter().map(|o| o.start).collect::<Vec<_>>(),
            [
                utc("2026-11-23T02:00:00Z"),
                utc("2026-11-26T02:00:00Z"),
                utc("2026-11-30T02:00:00Z")
            ]
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let e = Window::new("0 25 * * *", Duration::hours(1), "UTC", []).unwrap_err();
        assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
        let e = Window::new("0 2 * * *", Duration::hours(1), "Tokyo", []).unwrap_err();
        assert_eq!(e, ScheduleError::TimeZone("Tokyo".into()));
        assert!(e.to_string().contains("Asia/Tokyo"));
        let e = Window::new("0 2 * * *", Duration::zero(), "UTC", []).unwrap_err();
        assert_eq!(e, ScheduleError::Duration);
    }

    #[test]
    fn check_ins_spread_over_the_opening_and_stay_put() {
        let o = occ("2026-11-21T02:00:00Z", "2026-11-21T05:00:00Z");
        let spread = Duration::minutes(30);
        let slots: BTreeSet<_> = (0..1000)
            .map(|i| check_in_at(&format!("m{i}"), &o, spread))
            .collect();
        assert!(slots.iter().all(|t| o.start <= *t && *t < o.start + spread));
        // 1000 machines over 1800 s: many distinct slots, and both halves used.
        assert!(slots.len() > 700, "{}", slots.len());
        let mid = o.start + Duration::minutes(15);
        assert!(slots.iter().any(|t| *t < mid) && slots.iter().any(|t| *t >= mid));
        assert_eq!(check_in_at("m1", &o, spread), check_in_at("m1", &o, spread));
        // A spread longer than the opening stays inside it.
        let short = occ("2026-11-21T02:00:00Z", "2026-11-21T02:05:00Z");
        assert!(short.contains(check_in_at("m7", &short, Duration::hours(1))));
    }
}
