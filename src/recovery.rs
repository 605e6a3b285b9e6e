//! Start-up: rebuild the read models from the newest valid snapshot and the log's tail.
//!
//! The tail record is checked first, so that a torn or corrupt end of the log is reported at
//! once, with its seq, rather than after a long replay. Then every record after the snapshot
//! (from 1 without one) is folded in; any gap or undecodable record stops the start with an
//! error naming it. A log that cannot be trusted is never served. (`spg99 verify` checks every
//! record, including those a snapshot covers.)

use std::path::Path;
use std::time::{Duration, Instant};

use spg99_events::Envelope;
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

/// Records handed from the reading thread to the folding one at a time.
const CHUNK: usize = 1024;

/// Folds the log's records after `state.last_seq`, up to `until` (inclusive), into `state`;
/// returns it and how many records were applied.
///
/// Two stages: a thread of its own reads, checks and decodes the records (and frees the ones
/// folded: it allocated them, and a free of another thread's allocation takes that thread's
/// arena lock) while this one folds them, so that on two cores or more replay runs at the
/// speed of the slower stage, the decoding. The order and the checks are the reader's; the
/// first error it meets ends the replay with that error, as before.
pub fn replay(log: &Log, mut state: State, until: u64) -> Result<(State, u64)> {
    let from = state.last_seq + 1;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Result<Envelope>>>(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<Result<Envelope>>>();
        std::thread::Builder::new()
            .name("spg99-replay-read".into())
            .spawn_scoped(scope, move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                for env in log.read_from(from) {
                    if chunk.is_empty() {
                        // Folded records are freed here, by the thread that allocated them.
                        done_rx.try_iter().for_each(drop);
                    }
                    let last = env.as_ref().map_or(true, |e| e.seq >= until);
                    chunk.push(env);
                    if last || chunk.len() == CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        // A closed channel: the folding side stopped (an error, or `until`).
                        if tx.send(full).is_err() || last {
                            return;
                        }
                    }
                }
                let _ = tx.send(chunk);
            })
            .expect("spawning the replay's reader");
        let mut replayed = 0;
        for mut chunk in rx {
            for i in 0..chunk.len() {
                let env = match &chunk[i] {
                    Ok(env) => env,
                    Err(_) => return Err(chunk.swap_remove(i).expect_err("an error")),
                };
                if env.seq > until {
                    return Ok((state, replayed));
                }
                state.apply(env);
                replayed += 1;
            }
            let _ = done_tx.send(chunk);
        }
        Ok((state, replayed))
    })
}
