//! The reconciler: a background loop that carries out what the log asked for but no request
//! finishes by itself. For now: deletions. A deletion request (`db.delete_requested`,
//! `tenant.delete_requested`, `account.delete_requested`) leaves the object in `deleting`;
//! the reconciler removes it once nothing holds it (databases first, then their tenant, then
//! the account), as events with actor `system`.
//!
//! It wakes when a batch holding a deletion request is published (and once at start, for
//! requests recovered from the log), so an idle platform costs nothing.

use std::time::Duration;

use spg99_events::{Actor, Event};
use tokio::sync::broadcast::error::RecvError;

use crate::commands::{Command, CommandMeta};
use crate::committer::{CommitError, CommitHandle};

/// Pause between a deletion request and its completion, so that bursts share one command.
const SETTLE: Duration = Duration::from_millis(50);

fn asks_for_deletion(event: &Event) -> bool {
    matches!(
        event,
        Event::DbDeleteRequested { .. }
            | Event::TenantDeleteRequested { .. }
            | Event::AccountDeleteRequested { .. }
    )
}

/// Runs until the committer stops.
pub async fn run(commits: CommitHandle) {
    let mut feed = commits.shared().subscribe();
    let mut pending = true;
    loop {
        if pending {
            tokio::time::sleep(SETTLE).await;
            let meta = CommandMeta {
                actor: Actor::System,
                request_id: format!("reconciler-{}", uuid::Uuid::new_v4().simple()),
            };
            match commits.submit(meta, Command::FinishDeletions).await {
                Ok(_) => {}
                Err(CommitError::Unavailable) => return,
                Err(e) => tracing::warn!(error = %e, "finishing deletions was refused"),
            }
        }
        match feed.recv().await {
            Ok(batch) => pending = batch.iter().any(|e| asks_for_deletion(&e.event)),
            Err(RecvError::Lagged(_)) => pending = true,
            Err(RecvError::Closed) => return,
        }
    }
}
