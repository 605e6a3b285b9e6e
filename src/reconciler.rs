//! The reconciler: a background loop that carries out what the log asked for but no request
//! finishes by itself, and what only the passing of time decides. Each pass runs the
//! lifecycle's steps in order ([`Step::ALL`]): expire leases not renewed, declare silent
//! workers lost, fail phases past their deadline, stop idle databases, run the autoscaler,
//! finish deletions. Every step is a command with actor `system`, decided against the state
//! the steps before it left, so everything it decides is an event in the log.
//!
//! A pass runs every `interval`, at once when a deletion is requested (so that deletions
//! finish promptly), and on demand when a manual clock is advanced ([`pass`]). A pass that
//! finds nothing to do writes nothing. Silent workers are also looked for every
//! [`LOSSES_EVERY`] between passes: a database with high availability fails over once its
//! writer's worker is lost, so that moment is not left to wait for the next pass.

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
/// How often silent workers are looked for between passes.
const LOSSES_EVERY: Duration = Duration::from_millis(200);

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
    let mut losses = tokio::time::interval(LOSSES_EVERY.min(interval));
    losses.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = losses.tick() => {
                if step(&commits, Step::LoseWorkers, &request_id()).await.is_err() {
                    return;
                }
                continue;
            }
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

fn request_id() -> String {
    format!("reconciler-{}", uuid::Uuid::new_v4().simple())
}

/// One pass of every step. Fails only when the log stopped accepting writes.
pub async fn pass(commits: &CommitHandle) -> Result<(), CommitError> {
    let request_id = request_id();
    for s in Step::ALL {
        step(commits, s, &request_id).await?;
    }
    Ok(())
}

/// One step (losing workers: again while it finds one, up to [`MAX_LOSSES_PER_PASS`]).
async fn step(commits: &CommitHandle, step: Step, request_id: &str) -> Result<(), CommitError> {
    let repeats = if step == Step::LoseWorkers {
        MAX_LOSSES_PER_PASS
    } else {
        1
    };
    for _ in 0..repeats {
        let meta = CommandMeta {
            actor: Actor::System,
            request_id: request_id.to_owned(),
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
    Ok(())
}
