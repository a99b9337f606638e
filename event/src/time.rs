//! Wall-clock time as nanoseconds since the Unix epoch, written as RFC 3339 UTC.
//!
//! oknek needs civil time (weekday, hour, minute) for rule time windows and a stable text form for
//! evidence. Both are small enough to own here instead of pulling in a date library.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// Day of the week, Monday first (ISO 8601).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    pub fn name(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }

    pub fn from_name(name: &str) -> Option<Weekday> {
        let lower = name.to_ascii_lowercase();
        let short = lower.get(..3)?;
        Weekday::ALL.into_iter().find(|d| d.name() == short)
    }
}

/// A broken-down civil time in some fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    pub weekday: Weekday,
}

impl Civil {
    /// Minutes since local midnight, for time-window comparisons.
    pub fn minute_of_day(&self) -> u32 {
        self.hour * 60 + self.minute
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timestamp {input:?}: {reason} (expected RFC 3339 UTC, e.g. 2026-11-22T08:30:00Z)")]
pub struct ParseTimestampError {
    input: String,
    reason: &'static str,
}

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp(secs.saturating_mul(NANOS_PER_SEC))
    }

    pub fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(NANOS_PER_SEC)
    }

    /// Civil time at a fixed offset east of UTC, in seconds.
    pub fn civil(self, utc_offset_secs: i32) -> Civil {
        let nanos = self.0.rem_euclid(NANOS_PER_SEC) as u32;
        let secs = self.as_secs() + i64::from(utc_offset_secs);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = Weekday::ALL[(days + 3).rem_euclid(7) as usize];
        Civil {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            nanos,
            weekday,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with nanosecond precision: `2026-11-22T08:30:00.000000000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.civil(0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanos
        )
    }
}

impl FromStr for Timestamp {
    type Err = ParseTimestampError;

    /// Accepts `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    fn from_str(input: &str) -> Result<Timestamp, ParseTimestampError> {
        let err = |reason| ParseTimestampError {
            input: input.to_owned(),
            reason,
        };
        let b = input.as_bytes();
        if b.len() < 20 {
            return Err(err("too short"));
        }
        let num = |range: std::ops::Range<usize>| -> Result<u32, ParseTimestampError> {
            let s = &input[range];
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(err("expected digits"));
            }
            s.parse().map_err(|_| err("expected digits"))
        };
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return Err(err("expected YYYY-MM-DDTHH:MM:SS"));
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(err("expected YYYY-MM-DDTHH:MM:SS"));
        }
        let year = i64::from(num(0..4)?);
        let (month, day) = (num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(err("no such date"));
        }
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("no such time of day"));
        }
        let mut rest = &input[19..];
        let mut nanos: i64 = 0;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return Err(err("fraction must have 1 to 9 digits"));
            }
            let scale = 10i64.pow(9 - digits as u32);
            nanos = frac[..digits]
                .parse::<i64>()
                .map_err(|_| err("bad fraction"))?
                * scale;
            rest = &frac[digits..];
        }
        let offset_secs: i64 = match rest {
            "Z" | "z" => 0,
            _ => parse_utc_offset(rest)
                .ok_or_else(|| err("expected Z or ±HH:MM"))?
                .into(),
        };
        let secs = days_from_civil(year, month, day) * SECS_PER_DAY
            + i64::from(hour * 3600 + minute * 60 + second.min(59))
            - offset_secs;
        Ok(Timestamp(secs * NANOS_PER_SEC + nanos))
    }
}

/// Parses `+HH:MM` / `-HH:MM` into seconds east of UTC.
pub fn parse_utc_offset(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hh: i32 = s.get(1..3)?.parse().ok()?;
    let mm: i32 = s.get(4..6)?.parse().ok()?;
    if !s[1..3].bytes().all(|c| c.is_ascii_digit()) || hh > 23 || mm > 59 {
        return None;
    }
    Some(sign * (hh * 3600 + mm * 60))
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for text in [
            "1970-01-01T00:00:00.000000000Z",
            "2026-11-22T08:30:05.123456789Z",
            "2000-02-29T23:59:59.000000001Z",
            "1969-12-31T23:59:59.500000000Z",
        ] {
            let ts: Timestamp = text.parse().unwrap();
            assert_eq!(ts.to_string(), text);
        }
    }

    #[test]
    fn parses_offsets_and_short_fractions() {
        let a: Timestamp = "2026-11-22T09:30:00+01:00".parse().unwrap();
        let b: Timestamp = "2026-11-22T08:30:00Z".parse().unwrap();
        assert_eq!(a, b);
        let c: Timestamp = "2026-11-22T08:30:00.5Z".parse().unwrap();
        assert_eq!(c.0 - b.0, 500_000_000);
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22 08:30",
            "yesterday",
            "2026-11-22T08:30:00+1:00",
            "2026-11-22T08:30:00.Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn weekday_and_local_time() {
        // 2026-11-22 is a Sunday.
        let ts: Timestamp = "2026-11-22T23:30:00Z".parse().unwrap();
        assert_eq!(ts.civil(0).weekday, Weekday::Sun);
        let tokyo = ts.civil(9 * 3600);
        assert_eq!(
            (tokyo.weekday, tokyo.hour, tokyo.minute),
            (Weekday::Mon, 8, 30)
        );
        assert_eq!(Weekday::from_name("Monday"), Some(Weekday::Mon));
    }

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+05:30"), Some(19_800));
        assert_eq!(parse_utc_offset("-08:00"), Some(-28_800));
        assert_eq!(parse_utc_offset("+5:30"), None);
        assert_eq!(parse_utc_offset("+24:00"), None);
    }
}
