//! Wall-clock time as epoch milliseconds, the ISO-8601 timestamps artifacts carry (`packedAt`,
//! `expiresAt`), and how long ago something happened. Pure functions; the clock is passed in
//! where decisions are made.
//!
//! Two clocks: the wall clock can be stepped (NTP, an operator, a VM restored from a snapshot),
//! the monotonic clock cannot, but it stops while the machine is suspended. Durations measured
//! within the process ([`elapsed_ms`]) take the longer of the two, so neither a clock set back
//! nor a suspend can make an old artifact look young.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// A clock that never steps back, in milliseconds from an arbitrary origin. A trait so that
/// tests can move it by hand.
pub trait Monotonic: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The process's monotonic clock ([`Instant`]), counted from its first reading.
pub struct SystemMonotonic;

impl Monotonic for SystemMonotonic {
    fn now_ms(&self) -> i64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        i64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// One moment read on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Epoch milliseconds, for display and for timestamps from outside the process.
    pub wall_ms: u64,
    /// [`Monotonic::now_ms`].
    pub monotonic_ms: i64,
}

impl Moment {
    /// The moment `age_ms` before `self`.
    pub fn minus(self, age_ms: u64) -> Moment {
        Moment {
            wall_ms: self.wall_ms.saturating_sub(age_ms),
            monotonic_ms: self.monotonic_ms.saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX)),
        }
    }
}

/// How long before `now` `then` was: the longer of what the two clocks measured. A wall clock
/// set back or a suspend shortens only one of them; a wall clock set forward makes `then` look
/// older than it is, which costs an early refresh, never a late wipe.
pub fn elapsed_ms(then: Moment, now: Moment) -> u64 {
    let wall = now.wall_ms.saturating_sub(then.wall_ms);
    let monotonic = u64::try_from(now.monotonic_ms.saturating_sub(then.monotonic_ms)).unwrap_or(0);
    wall.max(monotonic)
}

/// Parses an ISO-8601 / RFC 3339 timestamp such as `2026-11-24T12:00:00.000Z` into epoch
/// milliseconds. Accepts a date alone, `T` or a space before the time, seconds and fractions
/// optional, and `Z` or a `±HH:MM` offset; a time without an offset is taken as UTC.
pub fn parse_iso8601_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let mut cursor = Cursor { bytes, pos: 0 };
    let year = cursor.digits(4)? as i64;
    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut millis_of_day: i64 = 0;
    let mut offset_minutes: i64 = 0;
    if cursor.pos < bytes.len() {
        match bytes[cursor.pos] {
            b'T' | b't' | b' ' => cursor.pos += 1,
            _ => return None,
        }
        let hour = cursor.digits(2)?;
        cursor.expect(b':')?;
        let minute = cursor.digits(2)?;
        let mut second = 0;
        let mut millis = 0;
        if cursor.peek() == Some(b':') {
            cursor.pos += 1;
            second = cursor.digits(2)?;
            if cursor.peek() == Some(b'.') || cursor.peek() == Some(b',') {
                cursor.pos += 1;
                millis = cursor.fraction_as_millis()?;
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        millis_of_day = ((hour * 60 + minute) * 60 + second.min(59)) as i64 * 1000 + millis;
        match cursor.peek() {
            None => {}
            Some(b'Z') | Some(b'z') => cursor.pos += 1,
            Some(sign @ (b'+' | b'-')) => {
                cursor.pos += 1;
                let hours = cursor.digits(2)? as i64;
                if cursor.peek() == Some(b':') {
                    cursor.pos += 1;
                }
                let minutes = cursor.digits(2)? as i64;
                if hours > 23 || minutes > 59 {
                    return None;
                }
                offset_minutes = hours * 60 + minutes;
                if sign == b'-' {
                    offset_minutes = -offset_minutes;
                }
            }
            Some(_) => return None,
        }
    }
    if cursor.pos != bytes.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400_000 + millis_of_day - offset_minutes * 60_000)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn digits(&mut self, count: usize) -> Option<u32> {
        let slice = self.bytes.get(self.pos..self.pos + count)?;
        let mut value = 0u32;
        for &byte in slice {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(byte - b'0');
        }
        self.pos += count;
        Some(value)
    }

    fn fraction_as_millis(&mut self) -> Option<i64> {
        let start = self.pos;
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.bytes[start..self.pos];
        if digits.is_empty() {
            return None;
        }
        let mut millis = 0i64;
        for index in 0..3 {
            millis = millis * 10 + digits.get(index).map_or(0, |d| i64::from(d - b'0'));
        }
        Some(millis)
    }
}

/// Epoch seconds as SigV4's basic ISO-8601 form, `20261130T012345Z` (UTC).
pub fn amz_date(epoch_seconds: u64) -> String {
    let days = (epoch_seconds / 86_400) as i64;
    let seconds_of_day = epoch_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

/// The inverse of [`days_from_civil`] (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Moment = Moment { wall_ms: 1_800_000_000_000, monotonic_ms: 5_000 };

    #[test]
    fn elapsed_time_is_the_longer_of_the_two_clocks() {
        let then = NOW;
        // (what happened, wall clock moved by, monotonic clock moved by, elapsed)
        let cases: [(&str, i64, i64, u64); 6] = [
            ("nothing", 0, 0, 0),
            ("both clocks ran 30 s", 30_000, 30_000, 30_000),
            ("the wall clock was set back an hour during 30 s", -3_600_000 + 30_000, 30_000, 30_000),
            ("the wall clock was set forward an hour during 30 s", 3_600_000 + 30_000, 30_000, 3_630_000),
            ("the machine slept an hour (the monotonic clock stopped)", 3_600_000, 0, 3_600_000),
            ("the wall clock was set back a day, nothing else", -86_400_000, 0, 0),
        ];
        for (what, wall, monotonic, elapsed) in cases {
            let now = Moment {
                wall_ms: then.wall_ms.checked_add_signed(wall).unwrap(),
                monotonic_ms: then.monotonic_ms + monotonic,
            };
            assert_eq!(elapsed_ms(then, now), elapsed, "{what}");
        }
    }

    #[test]
    fn a_moment_minus_an_age_moves_both_clocks_back() {
        assert_eq!(NOW.minus(20_000), Moment { wall_ms: 1_799_999_980_000, monotonic_ms: -15_000 });
        assert_eq!(elapsed_ms(NOW.minus(20_000), NOW), 20_000);
    }

    #[test]
    fn the_system_monotonic_clock_does_not_go_back() {
        let first = SystemMonotonic.now_ms();
        assert!(SystemMonotonic.now_ms() >= first);
    }

    #[test]
    fn formats_sigv4_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        for days in [-1000_i64, 0, 59, 60, 365, 10_957, 20_000, 60_000] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn parses_the_format_clef_pack_writes() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_iso8601_ms("2024-11-24T08:00:00.000Z"), Some(1_732_435_200_000));
        assert_eq!(parse_iso8601_ms("2024-11-24T08:00:00.5Z"), Some(1_732_435_200_500));
    }

    #[test]
    fn parses_offsets_dates_and_missing_seconds() {
        assert_eq!(parse_iso8601_ms("2024-11-24T09:00:00+01:00"), Some(1_732_435_200_000));
        assert_eq!(parse_iso8601_ms("2024-11-24T03:00-0500"), Some(1_732_435_200_000));
        assert_eq!(parse_iso8601_ms("2024-11-24"), Some(1_732_406_400_000));
        assert_eq!(parse_iso8601_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_iso8601_ms("1969-12-31T23:59:59Z"), Some(-1000));
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for text in [
            "",
            "tomorrow",
            "2024-13-01",
            "2023-02-29",
            "2024-11-24T25:00:00Z",
            "2024-11-24T08:00:00Q",
            "2024-11-24T08:00:00.Z",
            "2024-11-24T08",
            "1732435200000",
            "2024-11-24T08:00:00Z trailing",
        ] {
            assert_eq!(parse_iso8601_ms(text), None, "{text:?}");
        }
    }
}
