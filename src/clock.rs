//! Where the control plane gets the time from.
//!
//! Only the committer (which stamps each batch), request authentication (token expiry) and
//! the lifecycle's answers read it; projections never do.
//!
//! [`ManualClock`] stands still until it is moved (`SPG99_CLOCK=manual` and
//! `POST /internal/v1/clock/advance`), so that tests and demos drive idle timeouts, lease
//! expiry, deadlines and the autoscaler's windows without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

use spg99_events::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Moves a manual clock forward; `false` for clocks that cannot be moved.
    fn advance(&self, _micros: i64) -> bool {
        false
    }
}

/// A clock that stands still until advanced. Starts at the wall-clock time it was made.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_now() -> Self {
        ManualClock(AtomicI64::new(SystemClock.now().as_micros()))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::Acquire))
    }

    fn advance(&self, micros: i64) -> bool {
        self.0.fetch_add(micros.max(0), Ordering::AcqRel);
        true
    }
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(chrono::Utc::now().timestamp_micros())
    }
}

/// RFC 3339, UTC, microsecond precision: how every time is shown. RFC 3339 has four-digit
/// years only, so a time outside 0000-01-01 to 9999-12-31 (none that the API accepts or
/// derives) is shown as the nearest end of that range rather than in another format.
pub fn rfc3339(ts: Timestamp) -> String {
    /// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
    const FIRST: i64 = -62_167_219_200_000_000;
    const LAST: i64 = 253_402_300_799_999_999;
    chrono::DateTime::from_timestamp_micros(ts.as_micros().clamp(FIRST, LAST))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A time as RFC 3339 (any offset), to the microsecond; `None` for anything else.
pub fn parse_rfc3339(raw: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| Timestamp::from_micros(t.timestamp_micros()))
}
