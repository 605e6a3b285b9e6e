//! Billing periods: calendar months, UTC, numbered from January 1970 (period 0).
//!
//! Computed from event times only (no clock, no time-zone database), so replay bills exactly
//! what the live state billed.

use spg99_events::Timestamp;

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// The period holding `ts`.
pub fn period_of(ts: Timestamp) -> u32 {
    let (y, m, _) = civil_from_days(ts.as_micros().div_euclid(MICROS_PER_DAY));
    ((y - 1970) * 12 + (m as i64 - 1)).max(0) as u32
}

/// The first instant of a period.
pub fn period_start(period: u32) -> Timestamp {
    let y = 1970 + i64::from(period / 12);
    let m = period % 12 + 1;
    Timestamp::from_micros(days_from_civil(y, m, 1) * MICROS_PER_DAY)
}

/// `YYYY-MM` of a period.
pub fn period_name(period: u32) -> String {
    format!("{:04}-{:02}", 1970 + period / 12, period % 12 + 1)
}

/// The interval `[from, to)` cut at period boundaries: microseconds per period.
pub fn split(from: Timestamp, to: Timestamp) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let period = period_of(start);
        let end = period_start(period + 1).min(to);
        out.push((period, end.as_micros() - start.as_micros()));
        start = end;
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(days: i64, secs: i64) -> Timestamp {
        Timestamp::from_micros(days * MICROS_PER_DAY + secs * 1_000_000)
    }

    #[test]
    fn periods_are_calendar_months() {
        assert_eq!(period_of(ts(0, 0)), 0);
        // 2026-11-24 is day 20_781.
        assert_eq!(days_from_civil(2026, 11, 24), 20_781);
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        let p = period_of(ts(20_781, 3600));
        assert_eq!(period_name(p), "2026-11");
        assert_eq!(period_start(p), ts(days_from_civil(2026, 11, 1), 0));
        assert_eq!(
            period_name(period_of(ts(days_from_civil(2024, 2, 29), 0))),
            "2024-02"
        );
    }

    #[test]
    fn an_interval_across_a_month_end_is_split_there() {
        let end_of_nov = days_from_civil(2026, 12, 1);
        let parts = split(ts(end_of_nov, -10), ts(end_of_nov, 5));
        let nov = period_of(ts(end_of_nov, -1));
        assert_eq!(parts, vec![(nov, 10_000_000), (nov + 1, 5_000_000)]);
        assert_eq!(split(ts(5, 0), ts(5, 0)), vec![]);
    }
}
