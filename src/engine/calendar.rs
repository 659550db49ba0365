//! Business time: SLA durations count working time in a calendar (time zone, working hours per
//! weekday, holidays), so "4h" handed off Friday 16:30 in a Mon–Fri 09:00–17:00 calendar is due
//! Monday 12:30. Without a calendar, time runs around the clock.
//!
//! - `h`, `m`, `s`, `ms` count working time: the deadline is the instant it is used up (13:00 +
//!   4h in 09:00–17:00 is 17:00 the same day, not 09:00 the next).
//! - `d` counts working days: `Nd` ends at the same local time N working days later, moved into
//!   that day's working hours when it falls outside them.
//! - Working intervals are local times turned into instants in the calendar's time zone (jiff),
//!   so a DST change moves them with the wall clock; holidays are dates in that zone.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// How far a walk through the calendar may go before it gives up (a calendar of holidays only).
const MAX_DAYS: i32 = 3 * 366;

/// An SLA duration: whole working days, then working time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlaDuration {
    pub days: u32,
    pub time: Duration,
}

impl SlaDuration {
    pub fn is_zero(&self) -> bool {
        self.days == 0 && self.time.is_zero()
    }

    /// For ordering checks in the rules: a day counts as 24 hours.
    pub fn nominal(&self) -> Duration {
        Duration::from_secs(u64::from(self.days) * 86_400) + self.time
    }
}

impl fmt::Display for SlaDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.days > 0 {
            parts.push(format!("{}d", self.days));
        }
        if !self.time.is_zero() || self.days == 0 {
            parts.push(humantime::format_duration(self.time).to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

impl std::str::FromStr for SlaDuration {
    type Err = String;

    /// `250ms`, `90s`, `15m`, `4h`, `4h 30m`, `2d`, `5days`, `1d 4h`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("`{text}` is not a duration such as \"30m\", \"4h\" or \"2d\": {why}")
        };
        let mut out = SlaDuration::default();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad("expected a number"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| bad("the number is too large"))?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let add = |out: &mut SlaDuration, d: Duration| {
                out.time = out.time.checked_add(d).ok_or_else(|| bad("too long"))?;
                Ok::<_, String>(())
            };
            match unit {
                "ms" | "msec" | "millis" => add(&mut out, Duration::from_millis(n))?,
                "s" | "sec" | "secs" | "second" | "seconds" => {
                    add(&mut out, Duration::from_secs(n))?
                }
                "m" | "min" | "mins" | "minute" | "minutes" => add(
                    &mut out,
                    Duration::from_secs(n.checked_mul(60).ok_or_else(|| bad("too long"))?),
                )?,
                "h" | "hr" | "hrs" | "hour" | "hours" => add(
                    &mut out,
                    Duration::from_secs(n.checked_mul(3600).ok_or_else(|| bad("too long"))?),
                )?,
                "d" | "day" | "days" => {
                    let n = u32::try_from(n).map_err(|_| bad("too many days"))?;
                    out.days = out.days.checked_add(n).ok_or_else(|| bad("too long"))?;
                }
                "" => return Err(bad("a unit is missing (ms, s, m, h or d)")),
                other => {
                    return Err(bad(&format!(
                        "unknown unit `{other}` (use ms, s, m, h for working time, d for working days)"
                    )));
                }
            }
        }
        if out.is_zero() {
            return Err(bad("it must be longer than zero"));
        }
        Ok(out)
    }
}

/// A working calendar.
#[derive(Clone)]
pub struct Calendar {
    pub name: String,
    tz: TimeZone,
    /// Working intervals per weekday (Monday first), as minutes since local midnight, ordered
    /// and not overlapping; the end may be 1440 (24:00).
    hours: [Vec<(u16, u16)>; 7],
    holidays: BTreeSet<Date>,
    /// Each date's working intervals as instants, worked out once per year of dates (see
    /// [`Days`]), shared by the clones of this calendar.
    days: Arc<Days>,
}

/// The first year whose dates' intervals [`Days`] keeps.
const DAYS_FROM_YEAR: i16 = 1970;
/// How many years of dates [`Days`] keeps; dates outside them are worked out at each use.
const DAYS_YEARS: usize = 200;

/// A calendar's working intervals by date, each year's worked out the first time one of its
/// dates is asked for: every deadline of every lead is computed from them (after every event),
/// and turning a local time into an instant in a time zone is most of that work (issue 13).
struct Days {
    years: Box<[OnceLock<Year>]>,
}

/// One year's dates' working intervals, by day of the year (from 0).
type Year = Box<[Box<[(Timestamp, Timestamp)]>]>;

impl Default for Days {
    fn default() -> Self {
        Self {
            years: (0..DAYS_YEARS).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl fmt::Debug for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calendar")
            .field("name", &self.name)
            .field("time_zone", &self.tz.iana_name())
            .field("holidays", &self.holidays.len())
            .finish()
    }
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `"09:00-17:00"` or `"09:00-12:00, 13:00-17:00"` into minute intervals.
pub fn parse_hours(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    for part in text.split(',') {
        let part = part.trim();
        let (a, b) = part
            .split_once('-')
            .ok_or_else(|| format!("`{part}` is not a range such as \"09:00-17:00\""))?;
        let (a, b) = (minute_of_day(a.trim())?, minute_of_day(b.trim())?);
        if a >= b {
            return Err(format!("`{part}`: the end must be after the start"));
        }
        if let Some(&(_, prev_end)) = out.last()
            && a < prev_end
        {
            return Err(format!(
                "`{part}` overlaps or precedes the range before it; list ranges in order"
            ));
        }
        out.push((a, b));
    }
    Ok(out)
}

fn minute_of_day(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time such as \"09:00\" (00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Calendar {
    /// Builds a calendar; problems are `(key under the calendar, message)`.
    pub fn new(
        name: &str,
        time_zone: &str,
        hours: &std::collections::BTreeMap<String, String>,
        holidays: &[String],
    ) -> Result<Calendar, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let tz = TimeZone::get(time_zone)
            .map_err(|_| {
                problems.push((
                    "time_zone".to_string(),
                    format!("`{time_zone}` is not an IANA time zone such as \"America/New_York\""),
                ))
            })
            .ok();
        let mut week: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, text) in hours {
            match WEEKDAYS.iter().position(|d| d == &day.to_lowercase()) {
                None => problems.push((
                    format!("hours.{day}"),
                    "not a weekday: use mon, tue, wed, thu, fri, sat, sun".into(),
                )),
                Some(i) => match parse_hours(text) {
                    Ok(ranges) => week[i] = ranges,
                    Err(e) => problems.push((format!("hours.{day}"), e)),
                },
            }
        }
        if hours.is_empty() {
            problems.push((
                "hours".into(),
                "name the working hours, e.g. { mon = \"09:00-17:00\", … }".into(),
            ));
        } else if week.iter().all(Vec::is_empty) && problems.is_empty() {
            problems.push(("hours".into(), "no working time in the week".into()));
        }
        let mut days = BTreeSet::new();
        for (i, h) in holidays.iter().enumerate() {
            match h.trim().parse::<Date>() {
                Ok(d) => {
                    days.insert(d);
                }
                Err(_) => problems.push((
                    format!("holidays[{i}]"),
                    format!("`{h}` is not a date such as \"2026-12-25\""),
                )),
            }
        }
        match tz {
            Some(tz) if problems.is_empty() => Ok(Calendar {
                name: name.to_string(),
                tz,
                hours: week,
                holidays: days,
                days: Arc::default(),
            }),
            _ => Err(problems),
        }
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn local_date(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }

    fn instant(&self, date: Date, minute: u16) -> Timestamp {
        let (date, minute) = if minute >= 1440 {
            (date.tomorrow().unwrap_or(date), minute - 1440)
        } else {
            (date, minute)
        };
        let time = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0).expect("valid time");
        // A local time in a DST gap is taken as the instant after the gap.
        DateTime::from_parts(date, time)
            .to_zoned(self.tz.clone())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    }

    /// The working intervals of one local date, as instants: kept once worked out (see
    /// [`Days`]).
    fn intervals(&self, date: Date) -> Cow<'_, [(Timestamp, Timestamp)]> {
        let year = usize::try_from(date.year() - DAYS_FROM_YEAR).ok();
        let Some(cell) = year.and_then(|y| self.days.years.get(y)) else {
            return Cow::Owned(self.work_out_intervals(date).collect());
        };
        let days = cell.get_or_init(|| {
            let first = date.first_of_year();
            (0..first.days_in_year())
                .map(|i| {
                    let day = first.checked_add(i64::from(i).days()).expect("in its year");
                    self.work_out_intervals(day).collect()
                })
                .collect()
        });
        let day = usize::try_from(date.day_of_year() - 1).expect("from 1");
        Cow::Borrowed(&days[day])
    }

    /// The working intervals of one local date, as instants, worked out.
    fn work_out_intervals(
        &self,
        date: Date,
    ) -> impl DoubleEndedIterator<Item = (Timestamp, Timestamp)> + '_ {
        let ranges: &[(u16, u16)] = if self.holidays.contains(&date) {
            &[]
        } else {
            &self.hours[weekday_index(date.weekday())]
        };
        ranges
            .iter()
            .map(move |&(a, b)| (self.instant(date, a), self.instant(date, b)))
    }

    fn is_working_day(&self, date: Date) -> bool {
        !self.holidays.contains(&date) && !self.hours[weekday_index(date.weekday())].is_empty()
    }

    /// The instant `work` of working time after `start`.
    pub fn add_working(&self, start: Timestamp, work: Duration) -> Timestamp {
        if work.is_zero() {
            return start;
        }
        let mut remaining = SignedDuration::try_from(work).unwrap_or(SignedDuration::MAX);
        let first = self.local_date(start);
        for offset in 0..MAX_DAYS {
            let Ok(date) = first.checked_add(offset.days()) else {
                break;
            };
            for &(a, b) in self.intervals(date).iter() {
                if b <= start {
                    continue;
                }
                let from = a.max(start);
                let available = b.duration_since(from);
                if remaining <= available {
                    return from.saturating_add(remaining).unwrap_or(Timestamp::MAX);
                }
                remaining -= available;
            }
        }
        Timestamp::MAX
    }

    /// The instant `work` of working time before `end`.
    pub fn sub_working(&self, end: Timestamp, work: Duration) -> Timestamp {
        if work.is_zero() {
            return end;
        }
        let mut remaining = SignedDuration::try_from(work).unwrap_or(SignedDuration::MAX);
        let last = self.local_date(end);
        for offset in 0..MAX_DAYS {
            let Ok(date) = last.checked_sub(offset.days()) else {
                break;
            };
            for &(a, b) in self.intervals(date).iter().rev() {
                if a >= end {
                    continue;
                }
                let to = b.min(end);
                let available = to.duration_since(a);
                if remaining <= available {
                    return to.saturating_sub(remaining).unwrap_or(Timestamp::MIN);
                }
                remaining -= available;
            }
        }
        Timestamp::MIN
    }

    /// `t` when it is working time, else the start of the next working range.
    pub fn next_working(&self, t: Timestamp) -> Timestamp {
        let first = self.local_date(t);
        for offset in 0..MAX_DAYS {
            let Ok(date) = first.checked_add(offset.days()) else {
                break;
            };
            for &(a, b) in self.intervals(date).iter() {
                if t < b {
                    return a.max(t);
                }
            }
        }
        Timestamp::MAX
    }

    /// The same local time `days` working days later, counted from the first working instant at
    /// or after `start` (a lead handed off on Saturday has all of Monday for `1d`), moved into
    /// that day's working hours (to its opening when earlier, its close when later, the next
    /// range when in a break). A result at a day's opening is the close of the working day
    /// before: that is the instant the working time was used up (Saturday + `1d` is due Monday
    /// at close, not Tuesday morning; as 13:00 + `4h` is 17:00, not 09:00 the next day).
    pub fn add_days(&self, start: Timestamp, days: u32) -> Timestamp {
        let due = self.add_days_to_opening(start, days);
        if days == 0 || due == Timestamp::MAX {
            return due;
        }
        // Only a clock that started at an opening (its own, or the next one, when it started
        // out of hours) ends at one: then the working time ran out at the close before. A due
        // time moved up to an opening because that day opens later is what it is.
        if !self.is_opening(self.next_working(start)) || !self.is_opening(due) {
            return due;
        }
        self.close_before(due).unwrap_or(due)
    }

    /// Whether `t` is the start of a working range (a day's opening, or the end of a break).
    fn is_opening(&self, t: Timestamp) -> bool {
        let date = t.to_zoned(self.tz.clone()).date();
        self.intervals(date).iter().any(|&(a, _)| a == t)
    }

    /// The end of the last working range that ends at or before `t`.
    fn close_before(&self, t: Timestamp) -> Option<Timestamp> {
        let mut day = t.to_zoned(self.tz.clone()).date();
        for _ in 0..MAX_DAYS {
            if let Some(close) = self
                .intervals(day)
                .iter()
                .map(|&(_, b)| b)
                .rfind(|b| *b <= t)
            {
                return Some(close);
            }
            day = day.yesterday().ok()?;
        }
        None
    }

    fn add_days_to_opening(&self, start: Timestamp, days: u32) -> Timestamp {
        if days == 0 {
            return start;
        }
        let start = self.next_working(start);
        if start == Timestamp::MAX {
            return start;
        }
        let local = start.to_zoned(self.tz.clone());
        let mut date = local.date();
        let mut counted = 0;
        for _ in 0..MAX_DAYS {
            let Ok(next) = date.tomorrow() else {
                return Timestamp::MAX;
            };
            date = next;
            if self.is_working_day(date) {
                counted += 1;
                if counted == days {
                    break;
                }
            }
        }
        if counted < days {
            return Timestamp::MAX;
        }
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        let ranges = &self.hours[weekday_index(date.weekday())];
        let moved = ranges
            .iter()
            .find(|&&(_, b)| minute < b)
            .map(|&(a, _)| minute.max(a))
            .unwrap_or_else(|| ranges.last().map_or(minute, |&(_, b)| b));
        if moved == minute {
            // Keep the seconds of the start when the time needs no moving.
            let time = local.time();
            DateTime::from_parts(date, time)
                .to_zoned(self.tz.clone())
                .map(|z| z.timestamp())
                .unwrap_or(Timestamp::MAX)
        } else {
            self.instant(date, moved)
        }
    }

    /// Working time between two instants (zero when `to` is not after `from`).
    pub fn working_between(&self, from: Timestamp, to: Timestamp) -> Duration {
        if to <= from {
            return Duration::ZERO;
        }
        let mut total = SignedDuration::ZERO;
        let first = self.local_date(from);
        let last = self.local_date(to);
        let mut date = first;
        for _ in 0..MAX_DAYS {
            for &(a, b) in self.intervals(date).iter() {
                let (a, b) = (a.max(from), b.min(to));
                if b > a {
                    total += b.duration_since(a);
                }
            }
            if date >= last {
                break;
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        Duration::try_from(total).unwrap_or(Duration::ZERO)
    }
}

fn weekday_index(w: Weekday) -> usize {
    (w.to_monday_zero_offset()) as usize
}

/// Adds an SLA duration in `calendar`, or around the clock without one.
pub fn add(calendar: Option<&Calendar>, start: Timestamp, d: SlaDuration) -> Timestamp {
    match calendar {
        Some(c) => {
            let after_days = c.add_days(start, d.days);
            c.add_working(after_days, d.time)
        }
        None => {
            let total = SignedDuration::try_from(d.nominal()).unwrap_or(SignedDuration::MAX);
            start.saturating_add(total).unwrap_or(Timestamp::MAX)
        }
    }
}

/// The first working instant at or after `t` (`t` itself without a calendar).
pub fn next_working(calendar: Option<&Calendar>, t: Timestamp) -> Timestamp {
    calendar.map_or(t, |c| c.next_working(t))
}

/// Subtracts working time (a reminder before a deadline); days count as 24 h without a calendar.
pub fn sub(calendar: Option<&Calendar>, end: Timestamp, d: SlaDuration) -> Timestamp {
    match calendar {
        Some(c) => {
            let before_time = c.sub_working(end, d.time);
            if d.days == 0 {
                before_time
            } else {
                // Days back: the same local time that many working days earlier.
                let mut t = before_time;
                for _ in 0..d.days {
                    t = previous_working_day(c, t);
                }
                t
            }
        }
        None => {
            let total = SignedDuration::try_from(d.nominal()).unwrap_or(SignedDuration::MAX);
            end.saturating_sub(total).unwrap_or(Timestamp::MIN)
        }
    }
}

fn previous_working_day(c: &Calendar, t: Timestamp) -> Timestamp {
    let local = t.to_zoned(c.tz.clone());
    let mut date = local.date();
    for _ in 0..MAX_DAYS {
        let Ok(prev) = date.yesterday() else {
            return Timestamp::MIN;
        };
        date = prev;
        if c.is_working_day(date) {
            return DateTime::from_parts(date, local.time())
                .to_zoned(c.tz.clone())
                .map(|z| z.timestamp())
                .unwrap_or(Timestamp::MIN);
        }
    }
    Timestamp::MIN
}

/// Working time between two instants, or wall time without a calendar.
pub fn between(calendar: Option<&Calendar>, from: Timestamp, to: Timestamp) -> Duration {
    match calendar {
        Some(c) => c.working_between(from, to),
        None if to > from => Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO),
        None => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn weekdays(hours: &str) -> BTreeMap<String, String> {
        ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| (d.to_string(), hours.to_string()))
            .collect()
    }

    fn cal(tz: &str, holidays: &[&str]) -> Calendar {
        let holidays: Vec<String> = holidays.iter().map(|s| s.to_string()).collect();
        Calendar::new("test", tz, &weekdays("09:00-17:00"), &holidays).unwrap()
    }

    /// A local time in `tz` as an instant.
    fn at(tz: &str, local: &str) -> Timestamp {
        local
            .parse::<DateTime>()
            .unwrap()
            .to_zoned(TimeZone::get(tz).unwrap())
            .unwrap()
            .timestamp()
    }

    fn d(s: &str) -> SlaDuration {
        s.parse().unwrap()
    }

    const NY: &str = "America/New_York";
    const BERLIN: &str = "Europe/Berlin";

    #[test]
    fn durations_parse_with_their_units_and_refuse_the_rest() {
        assert_eq!(
            d("4h"),
            SlaDuration {
                days: 0,
                time: Duration::from_secs(4 * 3600)
            }
        );
        assert_eq!(
            d("1d 4h 30m"),
            SlaDuration {
                days: 1,
                time: Duration::from_secs(4 * 3600 + 1800)
            }
        );
        assert_eq!(d("2days").days, 2);
        assert_eq!(d("250ms").time, Duration::from_millis(250));
        assert_eq!(d("90s").time, Duration::from_secs(90));
        for bad in ["", "soon", "4", "0h", "3w", "1.5h", "-1h"] {
            assert!(bad.parse::<SlaDuration>().is_err(), "{bad} parsed");
        }
        assert_eq!(d("1d 4h").to_string(), "1d 4h");
    }

    #[test]
    fn working_time_is_used_up_within_the_day() {
        let c = cal(NY, &[]);
        // Tuesday 2026-11-24, 13:00 + 4h = 17:00 the same day, not 09:00 the next.
        let start = at(NY, "2026-11-24T13:00");
        assert_eq!(add(Some(&c), start, d("4h")), at(NY, "2026-11-24T17:00"));
        assert_eq!(
            add(Some(&c), start, d("4h 1s")),
            at(NY, "2026-11-25T09:00:01")
        );
        // Started outside working hours: the clock runs from the next opening.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-24T07:00"), d("1h")),
            at(NY, "2026-11-24T10:00")
        );
    }

    #[test]
    fn friday_afternoon_plus_four_hours_is_monday_lunchtime() {
        let c = cal(NY, &[]);
        // Friday 2026-11-20 16:30.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-20T16:30"), d("4h")),
            at(NY, "2026-11-23T12:30")
        );
    }

    #[test]
    fn holidays_are_skipped() {
        // Thanksgiving, Thursday 2026-11-26.
        let c = cal(NY, &["2026-11-26"]);
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-25T15:00"), d("4h")),
            at(NY, "2026-11-27T11:00")
        );
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-25T15:00"), d("1d")),
            at(NY, "2026-11-27T15:00")
        );
    }

    #[test]
    fn days_keep_the_local_time_and_move_into_working_hours() {
        let c = cal(NY, &[]);
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-20T10:15:30"), d("1d")),
            at(NY, "2026-11-23T10:15:30")
        );
        // Outside working hours the days count from the next opening: handed off on Saturday
        // (morning or evening) or on Sunday night, `1d` is all of Monday, used up at its close.
        for start in ["2026-11-21T07:00", "2026-11-21T10:00", "2026-11-22T20:00"] {
            assert_eq!(
                add(Some(&c), at(NY, start), d("1d")),
                at(NY, "2026-11-23T17:00"),
                "{start}"
            );
        }
        // Handed off at the opening: the same, a whole working day.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-23T09:00"), d("1d")),
            at(NY, "2026-11-23T17:00")
        );
        // A second later, the same time next working day.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-23T09:00:01"), d("1d")),
            at(NY, "2026-11-24T09:00:01")
        );
        // Monday evening + 2d: Tuesday and Wednesday, up at Wednesday's close …
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-23T20:00"), d("2d")),
            at(NY, "2026-11-25T17:00")
        );
        // … and over a holiday and a weekend, Friday's close before a Monday.
        let thanksgiving = cal(NY, &["2026-11-26"]);
        assert_eq!(
            add(Some(&thanksgiving), at(NY, "2026-11-25T18:00"), d("1d")),
            at(NY, "2026-11-27T17:00")
        );
        assert_eq!(
            add(Some(&thanksgiving), at(NY, "2026-11-27T18:00"), d("1d")),
            at(NY, "2026-11-30T17:00")
        );
        // A day that opens later: a due time moved up to its opening is not a close.
        let mut hours = weekdays("09:00-17:00");
        hours.insert("mon".into(), "10:00-17:00".into());
        let late_monday = Calendar::new("x", NY, &hours, &[]).unwrap();
        assert_eq!(
            add(Some(&late_monday), at(NY, "2026-11-20T09:30"), d("1d")),
            at(NY, "2026-11-23T10:00")
        );
        // After a lunch break: a clock started at the reopening ends before the next lunch.
        let lunch = Calendar::new("x", NY, &weekdays("09:00-12:00, 13:00-17:00"), &[]).unwrap();
        assert_eq!(
            add(Some(&lunch), at(NY, "2026-11-23T13:00"), d("1d")),
            at(NY, "2026-11-24T12:00")
        );
        // A day whose hours are shorter: moved back to its close.
        let mut hours = weekdays("09:00-17:00");
        hours.insert("fri".into(), "09:00-13:00".into());
        let short_friday = Calendar::new("x", NY, &hours, &[]).unwrap();
        assert_eq!(
            add(Some(&short_friday), at(NY, "2026-11-19T15:00"), d("1d")),
            at(NY, "2026-11-20T13:00")
        );
        // Days, then hours.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-23T16:00"), d("1d 2h")),
            at(NY, "2026-11-25T10:00")
        );
    }

    #[test]
    fn a_dst_weekend_in_new_york() {
        // Clocks go forward on Sunday 2026-03-08: Friday 16:30 EST + 4h is Monday 12:30 EDT,
        // 16:30 UTC — an hour earlier in UTC than on a weekend without a change.
        let c = cal(NY, &[]);
        let due = add(Some(&c), at(NY, "2026-03-06T16:30"), d("4h"));
        assert_eq!(due, at(NY, "2026-03-09T12:30"));
        assert_eq!(due, "2026-03-09T16:30:00Z".parse::<Timestamp>().unwrap());
        // And back in the autumn (Sunday 2026-11-01): Monday 12:30 EST is 17:30 UTC.
        let due = add(Some(&c), at(NY, "2026-10-30T16:30"), d("4h"));
        assert_eq!(due, "2026-11-02T17:30:00Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn a_dst_weekend_in_berlin_around_the_clock() {
        // A calendar open all day, every day: 24 working hours from Saturday noon end on Sunday
        // 13:00 local when the night of 2026-03-29 is an hour short.
        let all: BTreeMap<String, String> = WEEKDAYS
            .iter()
            .map(|d| (d.to_string(), "00:00-24:00".to_string()))
            .collect();
        let c = Calendar::new("always", BERLIN, &all, &[]).unwrap();
        assert_eq!(
            add(Some(&c), at(BERLIN, "2026-03-28T12:00"), d("24h")),
            at(BERLIN, "2026-03-29T13:00")
        );
        // A working-day calendar across the same weekend.
        let c = cal(BERLIN, &[]);
        let due = add(Some(&c), at(BERLIN, "2026-03-27T16:30"), d("4h"));
        assert_eq!(due, at(BERLIN, "2026-03-30T12:30"));
        assert_eq!(due, "2026-03-30T10:30:00Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn subtracting_and_measuring_working_time() {
        let c = cal(NY, &[]);
        // A reminder 1h before Monday 09:30 is Friday 16:30.
        assert_eq!(
            sub(Some(&c), at(NY, "2026-11-23T09:30"), d("1h")),
            at(NY, "2026-11-20T16:30")
        );
        assert_eq!(
            c.working_between(at(NY, "2026-11-20T16:30"), at(NY, "2026-11-23T12:30")),
            Duration::from_secs(4 * 3600)
        );
        assert_eq!(
            between(None, at(NY, "2026-11-20T16:30"), at(NY, "2026-11-23T12:30")),
            Duration::from_secs(68 * 3600)
        );
    }

    #[test]
    fn around_the_clock_without_a_calendar() {
        let t: Timestamp = "2026-11-20T16:30:00Z".parse().unwrap();
        assert_eq!(
            add(None, t, d("1d 4h")),
            "2026-11-21T20:30:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn bad_calendars_name_every_problem() {
        let mut hours = weekdays("09:00-17:00");
        hours.insert("mon".into(), "17:00-09:00".into());
        hours.insert("funday".into(), "09:00-10:00".into());
        hours.insert("tue".into(), "09:00-12:00,11:00-13:00".into());
        hours.insert("wed".into(), "9am-5pm".into());
        let problems =
            Calendar::new("x", "Mars/Olympus", &hours, &["2026-13-01".into()]).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "time_zone",
                "hours.funday",
                "hours.mon",
                "hours.tue",
                "hours.wed",
                "holidays[0]"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn lunch_breaks_split_the_day() {
        let mut hours = weekdays("09:00-12:00, 13:00-17:00");
        hours.remove("sat");
        let c = Calendar::new("lunch", NY, &hours, &[]).unwrap();
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-24T11:00"), d("2h")),
            at(NY, "2026-11-24T14:00")
        );
        // Started in the break, the clock runs from the afternoon's start: a working day later
        // is the next morning's close.
        assert_eq!(
            add(Some(&c), at(NY, "2026-11-24T12:30"), d("1d")),
            at(NY, "2026-11-25T12:00")
        );
    }
}
