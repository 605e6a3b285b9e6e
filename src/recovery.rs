//! Start-up: rebuild the read models from the log.
//!
//! The tail record is checked first, so that a torn or corrupt end of the log is reported at
//! once, with its seq, rather than after a long replay. Then every record from 1 is folded
//! into a fresh state; any gap or undecodable record stops the start with an error naming it.
//! A log that cannot be trusted is never served.

use std::time::{Duration, Instant};

use spg99_projections::State;

use crate::log::{Log, Result};

pub struct Recovered {
    pub state: State,
    /// Events replayed from the log.
    pub replayed: u64,
    pub elapsed: Duration,
}

pub fn recover(log: &Log) -> Result<Recovered> {
    let started = Instant::now();
    let head = log.head()?;
    if head > 0 {
        log.get(head)?;
    }
    let mut state = State::default();
    let mut replayed = 0;
    for env in log.read_from(1) {
        state.apply(&env?);
        replayed += 1;
    }
    Ok(Recovered {
        state,
        replayed,
        elapsed: started.elapsed(),
    })
}
