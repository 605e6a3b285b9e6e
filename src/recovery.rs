//! Start-up: rebuild the read models from the newest valid snapshot and the log's tail.
//!
//! The tail record is checked first, so that a torn or corrupt end of the log is reported at
//! once, with its seq, rather than after a long replay. Then every record after the snapshot
//! (from 1 without one) is folded in; any gap or undecodable record stops the start with an
//! error naming it. A log that cannot be trusted is never served. (`spg99 verify` checks every
//! record, including those a snapshot covers.)

use std::path::Path;
use std::time::{Duration, Instant};

use spg99_projections::State;

use crate::log::{Log, Result};

pub struct Recovered {
    pub state: State,
    /// The seq of the snapshot started from, if any.
    pub snapshot: Option<u64>,
    /// Events replayed from the log.
    pub replayed: u64,
    pub elapsed: Duration,
}

/// Recovers the state of the log in `data_dir` (with snapshots when `use_snapshots`).
pub fn recover(log: &Log, data_dir: &Path, use_snapshots: bool) -> Result<Recovered> {
    let started = Instant::now();
    let head = log.head()?;
    if head > 0 {
        log.get(head)?;
    }
    if use_snapshots {
        for path in crate::snapshot::ahead_of(data_dir, head) {
            tracing::warn!(path = %path.display(), head, "snapshot is ahead of the log; skipped");
        }
    }
    let base = use_snapshots
        .then(|| crate::snapshot::load(data_dir, head))
        .flatten();
    let snapshot = base.as_ref().map(|s| s.last_seq);
    let (state, replayed) = replay(log, base.unwrap_or_default(), u64::MAX)?;
    Ok(Recovered {
        state,
        snapshot,
        replayed,
        elapsed: started.elapsed(),
    })
}

/// Folds the log's records after `state.last_seq`, up to `until` (inclusive), into `state`;
/// returns it and how many records were applied.
pub fn replay(log: &Log, mut state: State, until: u64) -> Result<(State, u64)> {
    let mut replayed = 0;
    for env in log.read_from(state.last_seq + 1) {
        let env = env?;
        if env.seq > until {
            break;
        }
        state.apply(&env);
        replayed += 1;
    }
    Ok((state, replayed))
}
