//! Weekly time windows (`when`), evaluated on the event's own time in a fixed UTC offset.

use oknek_event::Timestamp;

const MINUTES_PER_DAY: u16 = 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct When {
    /// Seconds east of UTC.
    pub offset_secs: i32,
    /// True: the rule applies inside one of the windows; false: only outside all of them.
    pub inside: bool,
    pub windows: Box<[Window]>,
}

/// A window that starts at `start` on each of `days` and lasts `len` minutes (1 ..= 1440).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Bit d set: the window starts on weekday d (Monday = 0).
    pub days: u8,
    /// Minute of the day the window opens.
    pub start: u16,
    /// Minutes the window stays open; `from == to` means a whole day.
    pub len: u16,
}

impl Window {
    pub fn new(days: u8, from: u16, to: u16) -> Window {
        let len = (to + MINUTES_PER_DAY - from) % MINUTES_PER_DAY;
        Window {
            days,
            start: from,
            len: if len == 0 { MINUTES_PER_DAY } else { len },
        }
    }

    /// Whether minute `minute` of weekday `day` (Monday = 0) is inside the window.
    fn contains(&self, day: u8, minute: u16) -> bool {
        // A window is at most a day long, so only one that opened today or yesterday can be open.
        if minute >= self.start {
            self.days & (1 << day) != 0 && minute - self.start < self.len
        } else {
            let yesterday = (day + 6) % 7;
            self.days & (1 << yesterday) != 0 && minute + MINUTES_PER_DAY - self.start < self.len
        }
    }
}

impl When {
    pub fn applies(&self, time: Timestamp) -> bool {
        let civil = time.civil(self.offset_secs);
        let day = civil.weekday as u8;
        let minute = civil.minute_of_day() as u16;
        let in_any = self.windows.iter().any(|w| w.contains(day, minute));
        in_any == self.inside
    }
}

/// `HH:MM` (00:00 ..= 23:59, or 24:00 as the end of the day) to minutes since midnight.
pub(crate) fn parse_clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(0),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// `mon`, `mon-fri`, `fri-mon` (wrapping) to a weekday bit mask.
pub(crate) fn parse_days(s: &str) -> Option<u8> {
    let day = |name: &str| -> Option<u8> {
        let lower = name.trim().to_ascii_lowercase();
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|d| *d == lower)
            .map(|i| i as u8)
    };
    match s.split_once('-') {
        None => day(s).map(|d| 1 << d),
        Some((a, b)) => {
            let (a, b) = (day(a)?, day(b)?);
            let mut mask = 0u8;
            let mut d = a;
            loop {
                mask |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
            Some(mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn office_hours() {
        let w = When {
            offset_secs: 0,
            inside: true,
            windows: [Window::new(parse_days("mon-fri").unwrap(), 8 * 60, 18 * 60)].into(),
        };
        // 2026-11-23 is a Monday.
        assert!(w.applies(at("2026-11-23T08:00:00Z")));
        assert!(w.applies(at("2026-11-23T17:59:59Z")));
        assert!(!w.applies(at("2026-11-23T18:00:00Z")));
        assert!(!w.applies(at("2026-11-23T07:59:59Z")));
        assert!(!w.applies(at("2026-11-22T12:00:00Z"))); // Sunday
    }

    #[test]
    fn wraps_past_midnight_and_zones() {
        let w = When {
            offset_secs: 3600,
            inside: true,
            windows: [Window::new(parse_days("fri").unwrap(), 22 * 60, 6 * 60)].into(),
        };
        // Friday 2026-11-27 23:00 local = 22:00Z; Saturday 05:59 local = 04:59Z.
        assert!(w.applies(at("2026-11-27T22:00:00Z")));
        assert!(w.applies(at("2026-11-28T04:59:00Z")));
        assert!(!w.applies(at("2026-11-28T05:00:00Z")));
        // Saturday 23:00 local: the window starts on Fridays only.
        assert!(!w.applies(at("2026-11-28T22:00:00Z")));
        let outside = When { inside: false, ..w };
        assert!(outside.applies(at("2026-11-28T22:00:00Z")));
    }

    #[test]
    fn whole_day() {
        let w = Window::new(0b1, 0, 0);
        assert!(w.contains(0, 0) && w.contains(0, 1439) && !w.contains(1, 0));
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_clock("08:30"), Some(510));
        assert_eq!(parse_clock("24:00"), Some(0));
        assert_eq!(parse_clock("8:30"), None);
        assert_eq!(parse_clock("24:01"), None);
        assert_eq!(parse_days("sat-sun"), Some(0b110_0000));
        assert_eq!(parse_days("sun-mon"), Some(0b100_0001));
        assert_eq!(parse_days("Mon"), Some(1));
        assert_eq!(parse_days("monday"), None);
    }
}
