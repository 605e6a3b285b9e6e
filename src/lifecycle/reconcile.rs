//! The decisions only time makes, one [`Step`] at a time: leases not renewed, workers
//! silent, phases past their deadline, databases idle, loads sustained, deletions whose
//! writers are all gone.

use std::collections::BTreeSet;

use spg99_events::{Event, Timestamp};
use spg99_projections::{Db, DbState, ScaleStage, State};
use uuid::Uuid;

use super::autoscaler::autoscale;
use super::leases::anywhere;
use super::workers::lose_worker;
use super::{after, scale_failed, start_limit, Context};
use crate::catalog;
use crate::decision::{Draft, Subject};

/// The reconciler's steps, in the order it runs them. Each sees the effects of the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ExpireLeases,
    LoseWorkers,
    Deadlines,
    /// With a repository: the backups the policy wants (before idle stops, which wait for
    /// them: a database due for its backup gets it before it stops).
    Backups,
    IdleStops,
    Autoscale,
    /// With a repository: restores to place.
    Restores,
    FinishDeletions,
    Standbys,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::ExpireLeases,
        Step::LoseWorkers,
        Step::Deadlines,
        Step::Backups,
        Step::IdleStops,
        Step::Autoscale,
        Step::Restores,
        Step::FinishDeletions,
        Step::Standbys,
    ];
}

pub(super) fn reconcile(state: &State, cx: &mut Context<'_>, step: Step) -> Vec<Draft> {
    let now = cx.now;
    let settings = cx.settings;
    let mut drafts = Vec::new();
    let db_subject = |db: &Db| state.tenants.get(&db.tenant).map(|t| Subject::db(t, db.id));
    match step {
        Step::ExpireLeases => {
            // The soft state of what is gone goes with it.
            cx.runtime
                .leases
                .retain(|id, _| state.leases.contains_key(id));
            cx.runtime.writer_load.retain(|db, _| {
                state
                    .dbs
                    .get(db)
                    .is_some_and(|d| d.state == DbState::Running)
            });
            for lease in state.leases.values() {
                let expired = cx
                    .runtime
                    .leases
                    .get(&lease.id)
                    .is_none_or(|(until, _)| *until <= now);
                if !expired {
                    continue;
                }
                cx.runtime.leases.remove(&lease.id);
                if let Some(subject) = state.dbs.get(&lease.db_id).and_then(|d| db_subject(d)) {
                    drafts.push(Draft::new(
                        subject,
                        Event::LeaseExpired { lease_id: lease.id },
                    ));
                }
            }
        }
        Step::LoseWorkers => {
            // A worker holding a writer or a standby of a database with high availability is
            // given up sooner: its database fails over meanwhile.
            let ha: std::collections::HashSet<&str> = state
                .active_dbs()
                .filter(|d| d.ha().enabled)
                .flat_map(|d| [&d.live.writer, &d.ha().standby])
                .flatten()
                .map(|w| w.worker_id.as_str())
                .collect();
            for w in state.workers.values().filter(|w| w.lost_at.is_none()) {
                let timeout = match ha.contains(w.id.as_str()) {
                    true => settings.ha_worker_timeout.min(settings.worker_timeout),
                    false => settings.worker_timeout,
                };
                let silent = cx
                    .runtime
                    .workers_seen
                    .get(&w.id)
                    .is_none_or(|seen| after(*seen, timeout) <= now);
                if silent {
                    cx.runtime.workers_seen.remove(&w.id);
                    let reason = match timeout.subsec_millis() {
                        0 => format!("no heartbeat for {} s", timeout.as_secs()),
                        _ => format!("no heartbeat for {} ms", timeout.as_millis()),
                    };
                    // One worker per command keeps each loss's events together; a database
                    // touched by two lost workers is handled by the first.
                    drafts.extend(lose_worker(state, cx, &w.id, &reason));
                    break;
                }
            }
        }
        Step::Deadlines => {
            let limit = settings.phase_deadline.as_secs();
            for db in state.active_dbs() {
                let Some(subject) = db_subject(db) else {
                    continue;
                };
                let past = |d: Option<Timestamp>| d.is_some_and(|d| d <= now);
                if db.live.scale.stage.in_progress() && past(db.live.scale.phase_deadline_at) {
                    let why = if db.live.scale.stage == ScaleStage::Cutover {
                        format!("the candidate did not confirm the cutover within {limit} s; the old writer keeps serving")
                    } else {
                        format!("the candidate was not ready within {limit} s; the old writer keeps serving")
                    };
                    let cooldown = after(now, settings.autoscaler.cooldown);
                    drafts.push(scale_failed(subject, db.id, why, cooldown));
                    continue;
                }
                if !past(db.live.phase_deadline_at) {
                    continue;
                }
                let event = match db.state {
                    DbState::Starting | DbState::Restoring => Event::DbStartFailed {
                        db_id: db.id,
                        reason: format!(
                            "the worker did not start the writer within {} s",
                            db.live.writer.as_ref().map_or(limit, |w| start_limit(
                                settings,
                                db,
                                &w.worker_id
                            )
                            .as_secs())
                        ),
                        give_up: db.live.failed_starts + 1 >= settings.max_failed_starts,
                        retire: true,
                    },
                    DbState::Stopping => Event::DbStopped {
                        db_id: db.id,
                        reason: format!("the worker did not confirm the stop within {limit} s"),
                        retire: true,
                    },
                    _ => continue,
                };
                drafts.push(Draft::new(subject, event));
            }
        }
        Step::IdleStops => {
            for db in state.active_dbs() {
                // Not while a backup is under way: a database stopped before its first backup
                // completes could not be restored anywhere else.
                let idle = db.state == DbState::Running
                    && db.live.leases.is_empty()
                    && !db.live.scale.stage.in_progress()
                    && db.stored().backup_wanted.is_none()
                    && db
                        .live
                        .idle_since
                        .is_some_and(|since| after(since, settings.idle_timeout) <= now);
                if let (true, Some(subject)) = (idle, db_subject(db)) {
                    drafts.push(Draft::new(
                        subject,
                        Event::DbStopRequested {
                            db_id: db.id,
                            reason: format!(
                                "no connection for {} s",
                                settings.idle_timeout.as_secs()
                            ),
                            deadline: after(now, settings.phase_deadline),
                        },
                    ));
                }
            }
        }
        Step::Autoscale => {
            for db in state.active_dbs() {
                if let Some(draft) = autoscale(state, cx, db) {
                    drafts.push(draft);
                }
            }
        }
        Step::Backups => {
            if settings.storage.is_some() {
                drafts.extend(
                    state
                        .active_dbs()
                        .filter_map(|db| backup_due(state, now, db)),
                );
            }
        }
        Step::Restores => {
            for db in state.active_dbs() {
                if let Some(draft) = place_restore(state, cx, db) {
                    drafts.push(draft);
                }
            }
        }
        Step::FinishDeletions => drafts = finish_deletions(state),
        Step::Standbys => drafts = super::ha::standbys(state, cx),
    }
    drafts
}

/// A running database keeping its data on a repository gets a full backup once a day (and,
/// after one failed, again once its retry time came).
const BACKUP_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A `db.backup_requested` for `db` if the backup policy wants one now.
fn backup_due(state: &State, now: Timestamp, db: &Db) -> Option<Draft> {
    let writer = db.live.writer.as_ref()?;
    let s = db.stored();
    let keeps_data = db.data_on.as_deref() == Some(writer.worker_id.as_str());
    let due = s
        .last_backup_at
        .is_none_or(|last| after(last, BACKUP_EVERY) <= now)
        && s.backup_retry_at.is_none_or(|retry| retry <= now);
    if db.state != DbState::Running || !keeps_data || s.backup_wanted.is_some() || !due {
        return None;
    }
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db.id),
        Event::DbBackupRequested {
            db_id: db.id,
            writer_term: writer.term,
        },
    ))
}

/// A restore waiting for its writer gets one, once its old writer has stopped (its last WAL
/// archived, so that the state kept aside is whole in the repository).
fn place_restore(state: &State, cx: &Context<'_>, db: &Db) -> Option<Draft> {
    if db.state != DbState::Restoring || db.live.writer.is_some() {
        return None;
    }
    if state.retiring.keys().any(|(_, d, _)| *d == db.id) {
        return None;
    }
    let profile = *catalog::profiles_of(&db.size).first()?;
    // A reset goes where its parent's data is (or waits while the parent starts or stops).
    let parent = db.live.restore.as_ref().and_then(|r| r.parent);
    let worker = match parent.and_then(|p| state.dbs.get(&p)) {
        Some(p) => super::branch_worker(state, cx, p, profile).ok()?,
        None => anywhere(state, cx, profile).ok()?,
    };
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db.id),
        Event::DbRestoreStarted {
            db_id: db.id,
            deadline: after(cx.now, start_limit(cx.settings, db, &worker)),
            worker_id: worker,
            profile: profile.to_owned(),
            writer_term: db.writer_term + 1,
        },
    ))
}

/// Databases in `deleting` whose writers are all confirmed gone are removed; then tenants in
/// `deleting` with nothing left; then accounts in `deleting` with nothing left.
fn finish_deletions(state: &State) -> Vec<Draft> {
    let mut drafts = Vec::new();
    let held = |db: Uuid| state.retiring.keys().any(|(_, d, _)| *d == db);
    // Its data is still on a live worker, which is told to remove it (`destroy`); a lost
    // worker's copy is left for it to remove when it comes back (`stale_copies`).
    let data_kept = |d: &Db| {
        d.data_on
            .as_deref()
            .and_then(|w| state.workers.get(w))
            .is_some_and(|w| w.lost_at.is_none())
    };
    let mut removed = BTreeSet::new();
    for d in state.active_dbs().filter(|d| d.state == DbState::Deleting) {
        let Some(t) = state.tenants.get(&d.tenant) else {
            continue;
        };
        // And what the repository holds of it is removed first (by a live worker that keeps
        // data; until one is live, the deletion waits).
        if !held(d.id) && !data_kept(d) && !d.stored().in_repository {
            removed.insert(d.id);
            drafts.push(Draft::new(
                Subject::db(t, d.id),
                Event::DbDeleted { db_id: d.id },
            ));
        }
    }
    let empty = |t: Uuid| state.dbs_of(t).all(|d| removed.contains(&d.id));
    for t in state.tenants.values().filter(|t| t.deleting && empty(t.id)) {
        drafts.push(Draft::new(
            Subject::tenant(t),
            Event::TenantDeleted { tenant_id: t.id },
        ));
    }
    for a in state.accounts.values().filter(|a| a.deleting) {
        let gone = state
            .tenants
            .values()
            .filter(|t| t.account == a.id)
            .all(|t| t.deleting && empty(t.id));
        if gone {
            drafts.push(Draft::account(
                a.id,
                Event::AccountDeleted { account_id: a.id },
            ));
        }
    }
    drafts
}
