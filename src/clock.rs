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
