//! High availability: a running database with `ha` keeps a synchronous standby on another
//! worker, and when its writer's worker is lost the standby becomes the writer.
//!
//! The rules, each a decision recorded as an event:
//!
//! - **Build.** Once the writer is set up to replicate (`db.replication_set` at its term) and
//!   the repository holds a backup, a standby is placed on another live worker with room
//!   (`db.standby_requested`, at the next writer term: its application name); its worker makes
//!   it from the repository and starts it (`db.standby_started`).
//! - **Protect.** When the writer's heartbeat shows it streaming close behind
//!   (`db.standby_ready`), the writer is told to wait for it at every commit; its confirmation
//!   (`db.replication_set` naming it, given only once the standby holds every earlier commit)
//!   makes the database protected. Never before it streams: commits would hang.
//! - **Relax.** A standby that stops streaming (absent from the writer's heartbeats, or not
//!   answering, for `--standby-timeout-ms`), whose worker is lost, or that HA no longer wants is
//!   given up (`db.standby_lost`): commits stop waiting for it at once (the writer is told
//!   to; the decision comes first, so the standby is never promoted after it), and a new one
//!   is built on a worker with room.
//! - **Fail over.** The writer's worker lost (or its server gone) while the database is
//!   protected: `db.failover_started` ends the old writer's leases (a new epoch: the Gateway
//!   drops its connections), and the standby starts as the writer at its own term (its worker
//!   promotes it); `db.started` and `db.promoted` follow. The old writer's commits wait for a
//!   standby that no longer streams to it: none is acknowledged after the promotion, and the
//!   worker that comes back is told to stop it; its copy is stale and removed.

use std::time::Duration;

use spg99_events::Event;
use spg99_projections::{Db, DbState, StandbyState, State};
use spg99_wire::Replica;

use super::scheduler::{place, Placement};
use super::{after, Context};
use crate::decision::{Draft, Subject};

/// A standby given up (or failed) is not built again for this long.
pub(super) const RETRY: Duration = Duration::from_secs(30);
/// A standby this close behind its writer can be waited for without a stall.
pub(super) const READY_LAG_BYTES: u64 = 16 << 20;

/// `Step::Standbys`: standbys to build, to give up, and databases that cannot have one.
pub(super) fn standbys(state: &State, cx: &mut Context<'_>) -> Vec<Draft> {
    let mut drafts = Vec::new();
    for db in state.active_dbs() {
        let Some(t) = state.tenants.get(&db.tenant) else {
            continue;
        };
        if let Some(event) = next(state, cx, db) {
            drafts.push(Draft::new(Subject::db(t, db.id), event));
        }
    }
    drafts
}

fn next(state: &State, cx: &mut Context<'_>, db: &Db) -> Option<Event> {
    let (ha, now) = (db.ha(), cx.now);
    let writer = db.live.writer.as_ref()?;
    if let Some(s) = &ha.standby {
        let lost = |reason: String, retry: Duration| Event::DbStandbyLost {
            db_id: db.id,
            standby_term: s.term,
            reason,
            retry_at: after(now, retry),
        };
        if !ha.enabled {
            // Commits stop waiting for it first; then it goes.
            if ha.sync_wanted.is_some() {
                return Some(Event::DbUnprotected {
                    db_id: db.id,
                    reason: "high availability was turned off".into(),
                });
            }
            let relaxed = ha.sync_applied.is_none_or(|(_, s)| s.is_none());
            return relaxed
                .then(|| lost("high availability was turned off".into(), Duration::ZERO));
        }
        return match ha.progress {
            StandbyState::Building | StandbyState::CatchingUp
                if ha.standby_deadline_at.is_some_and(|d| d <= now) =>
            {
                Some(lost(
                    "the standby did not stream from the writer within its deadline".into(),
                    RETRY,
                ))
            }
            StandbyState::Streaming => {
                let timeout = cx.settings.standby_timeout;
                let seen = *cx
                    .runtime
                    .standby_seen
                    .entry(db.id)
                    .or_insert((s.term, now));
                let silent = seen.0 != s.term || after(seen.1, timeout) <= now;
                silent.then(|| {
                    lost(
                        format!(
                            "the writer has not seen the standby stream for {} ms",
                            timeout.as_millis()
                        ),
                        Duration::ZERO,
                    )
                })
            }
            _ => None,
        };
    }
    let serving = db.state == DbState::Running
        && writer.backend_addr.is_some()
        && !db.live.freeze_new_checkouts
        && !db.live.scale.stage.in_progress();
    // The writer is set up for replication first (the role standbys log in as).
    let ready = ha.sync_applied.map(|a| a.0) == Some(writer.term);
    if !ha.enabled || !serving || !ready || ha.retry_at.is_some_and(|r| r > now) {
        return None;
    }
    let unprotected = |reason: &str| {
        (ha.unprotected_reason.as_deref() != Some(reason)).then(|| Event::DbUnprotected {
            db_id: db.id,
            reason: reason.to_owned(),
        })
    };
    if !db.restorable() {
        return unprotected(
            "a standby is made from a backup, and the repository holds none of it yet",
        );
    }
    match place(
        state,
        cx,
        &writer.profile,
        Placement::Avoid(&writer.worker_id),
    ) {
        Some(worker_id) => Some(Event::DbStandbyRequested {
            db_id: db.id,
            worker_id,
            profile: writer.profile.clone(),
            standby_term: db.writer_term + 1,
            deadline: after(now, cx.settings.restore_deadline),
        }),
        None => unprotected("no other live worker has room for a standby"),
    }
}

/// What a writer's heartbeat says of its standby: `db.standby_ready` once it streams close
/// behind; the moment it was last seen streaming, for [`next`].
pub(super) fn replication_change(
    state: &State,
    cx: &mut Context<'_>,
    db: &Db,
    replicas: &[Replica],
) -> Option<Draft> {
    let ha = db.ha();
    let s = ha.standby.as_ref()?;
    let timeout = cx.settings.standby_timeout.as_millis() as u64;
    let r = replicas.iter().find(|r| {
        r.standby_term == s.term && r.state == "streaming" && r.reply_age_ms <= timeout
    })?;
    cx.runtime.standby_seen.insert(db.id, (s.term, cx.now));
    let ready = ha.progress == StandbyState::CatchingUp && r.lag_bytes <= READY_LAG_BYTES;
    let t = state.tenants.get(&db.tenant)?;
    ready.then(|| {
        Draft::new(
            Subject::db(t, db.id),
            Event::DbStandbyReady {
                db_id: db.id,
                standby_term: s.term,
                lag_bytes: r.lag_bytes,
            },
        )
    })
}

/// The writer is gone (`reason`): a failover to its standby if the database is protected
/// and the standby's worker is live; `None` otherwise (the writer stops as without HA).
pub(super) fn fail_over(state: &State, cx: &Context<'_>, db: &Db, reason: &str) -> Option<Event> {
    let writer = db.live.writer.as_ref()?;
    let ha = db.ha();
    let standby = ha.standby.as_ref()?;
    let live = state
        .workers
        .get(&standby.worker_id)
        .is_some_and(|w| w.lost_at.is_none() && standby.worker_id != writer.worker_id);
    let protected = ha.enabled && ha.protected(writer.term);
    (db.state == DbState::Running && !db.live.scale.stage.in_progress() && protected && live).then(
        || Event::DbFailoverStarted {
            db_id: db.id,
            old_writer_term: writer.term,
            worker_id: standby.worker_id.clone(),
            standby_term: standby.term,
            lease_control_epoch: db.lease_control_epoch + 1,
            deadline: after(cx.now, cx.settings.phase_deadline),
            reason: reason.to_owned(),
        },
    )
}
