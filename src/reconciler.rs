//! The reconciler: a background loop that carries out what the log asked for but no request
//! finishes by itself, and what only the passing of time decides. Each pass runs the
//! lifecycle's steps in order ([`Step::ALL`]): expire leases not renewed, declare silent
//! workers lost, fail phases past their deadline, stop idle databases, run the autoscaler,
//! finish deletions. Every step is a command with actor `system`, decided against the state
//! the steps before it left, so everything it decides is an event in the log.
//!
//! A pass runs every `interval`, at once when a deletion is requested (so that deletions
//! finish promptly), and on demand when a manual clock is advanced ([`pass`]). A pass that
//! finds nothing to do writes nothing.

use std::time::Duration;

use spg99_events::{Actor, Event};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::MissedTickBehavior;

use crate::commands::Command;
use crate::committer::{CommitError, CommitHandle};
use crate::decision::CommandMeta;
use crate::lifecycle::{Lifecycle, Step};

/// Pause between a deletion request and its pass, so that bursts share one pass.
const SETTLE: Duration = Duration::from_millis(50);
/// Most workers declared lost in one pass (one command each).
const MAX_LOSSES_PER_PASS: usize = 64;

/// Deletion requests, and writers confirmed gone (which may let a deletion finish).
fn moves_a_deletion(event: &Event) -> bool {
    matches!(
        event,
        Event::DbDeleteRequested { .. }
            | Event::TenantDeleteRequested { .. }
            | Event::AccountDeleteRequested { .. }
            | Event::WriterRetired { .. }
    )
}

/// Runs until the committer stops.
pub async fn run(commits: CommitHandle, interval: Duration) {
    let mut feed = commits.shared().subscribe();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            got = feed.recv() => match got {
                Ok(batch) if batch.iter().any(|e| moves_a_deletion(&e.event)) => {
                    tokio::time::sleep(SETTLE).await;
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
        if pass(&commits).await.is_err() {
            return;
        }
    }
}

/// One pass of every step. Fails only when the log stopped accepting writes.
pub async fn pass(commits: &CommitHandle) -> Result<(), CommitError> {
    let request_id = format!("reconciler-{}", uuid::Uuid::new_v4().simple());
    for step in Step::ALL {
        let repeats = if step == Step::LoseWorkers {
            MAX_LOSSES_PER_PASS
        } else {
            1
        };
        for _ in 0..repeats {
            let meta = CommandMeta {
                actor: Actor::System,
                request_id: request_id.clone(),
            };
            match commits
                .submit(meta, Command::Lifecycle(Lifecycle::Reconcile(step)))
                .await
            {
                Ok(done) if !done.events().is_empty() => continue,
                Ok(_) => break,
                Err(CommitError::Unavailable) => return Err(CommitError::Unavailable),
                Err(e) => {
                    tracing::warn!(error = %e, ?step, "a reconciler step was refused");
                    break;
                }
            }
        }
    }
    Ok(())
}
