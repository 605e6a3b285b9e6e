//! The Gateway's leases: a checkout (which starts a stopped database), renewals and
//! releases. Renewals only move the soft state ([`super::Runtime`]); grants, releases and
//! expiries are events.

use spg99_events::Event;
use spg99_projections::{Db, DbState, State};
use spg99_wire::Code;
use uuid::Uuid;

use super::autoscaler::load_change;
use super::scheduler::{place, Placement};
use super::{after, start_limit, tenant_of, Answer, Context};
use crate::catalog;
use crate::decision::{busy, conflict, gone, Draft, Rejection, Subject};

/// A lease that exists and has not run out; one that ran out is gone even before the
/// reconciler records its expiry.
fn live_lease<'s>(
    state: &'s State,
    cx: &Context<'_>,
    lease_id: Uuid,
) -> Result<(&'s spg99_projections::Lease, &'s Db), Rejection> {
    let lease = state.leases.get(&lease_id).ok_or_else(|| {
        gone(
            Code::LeaseNotFound.as_str(),
            "no such lease (released, expired, or its database stopped)",
        )
    })?;
    let expired = cx
        .runtime
        .leases
        .get(&lease_id)
        .is_none_or(|(until, _)| *until <= cx.now);
    if expired {
        return Err(gone(
            Code::LeaseExpired.as_str(),
            "the lease was not renewed within its TTL: check out again",
        ));
    }
    let db = state
        .dbs
        .get(&lease.db_id)
        .ok_or_else(|| gone(Code::LeaseNotFound.as_str(), "the lease's database is gone"))?;
    Ok((lease, db))
}

pub(super) fn checkout(
    state: &State,
    cx: &mut Context<'_>,
    pg_user: &str,
    db_name: &str,
    lease_id: Uuid,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let t = state
        .tenants_by_pg_user
        .get(pg_user)
        .and_then(|id| state.tenants.get(id))
        .ok_or_else(|| {
            gone(
                Code::UnknownPgUser.as_str(),
                format!("no tenant has pg_user {pg_user:?}"),
            )
        })?;
    let db = state.db_by_name(t.id, db_name).ok_or_else(|| {
        gone(
            Code::UnknownDb.as_str(),
            format!("tenant {:?} has no database {db_name:?}", t.name),
        )
    })?;
    let pending = |db: &Db, state| Answer::Pending {
        db_id: db.id,
        state,
    };
    match db.state {
        DbState::Deleting => Err(conflict(
            Code::DbDeleting.as_str(),
            format!("database {db_name:?} is being deleted"),
        )),
        DbState::Failed => Err(conflict(
            Code::DbFailed.as_str(),
            format!(
                "database {db_name:?} failed: {}",
                db.live
                    .failure_reason
                    .as_deref()
                    .unwrap_or("unknown reason")
            ),
        )),
        _ if db.live.freeze_new_checkouts => Err(busy(
            Code::CheckoutsFrozen.as_str(),
            format!("database {db_name:?} is moving to another compute profile; retry in a moment"),
            1,
        )),
        DbState::Running => {
            let writer = db.live.writer.as_ref().ok_or_else(|| {
                conflict("no_writer", "the database has no serving writer; retry")
            })?;
            let backend_addr = writer.backend_addr.clone().unwrap_or_default();
            if state.leases.contains_key(&lease_id) {
                return Err(conflict(
                    "lease_id_taken",
                    "generated lease id already in use; retry",
                ));
            }
            let ttl_ms = cx.settings.lease_ttl.as_millis() as u64;
            cx.runtime
                .leases
                .insert(lease_id, (after(cx.now, cx.settings.lease_ttl), 0));
            let drafts = vec![Draft::new(
                Subject::db(t, db.id),
                Event::LeaseGranted {
                    lease_id,
                    db_id: db.id,
                    lease_control_epoch: db.lease_control_epoch,
                    ttl_ms,
                },
            )];
            Ok((
                drafts,
                Answer::Lease {
                    db_id: db.id,
                    backend_addr,
                    worker_id: writer.worker_id.clone(),
                    lease_id,
                    lease_ttl_ms: ttl_ms,
                    lease_control_epoch: db.lease_control_epoch,
                    profile: writer.profile.clone(),
                },
            ))
        }
        DbState::Stopped => {
            let profile = catalog::profiles_of(&db.size)
                .first()
                .copied()
                .ok_or_else(|| {
                    conflict("unknown_size", "the database's size is not in the catalog")
                })?;
            let worker = match db.data_on.as_deref() {
                // Its newest copy is on this worker: it resumes there when it can; elsewhere,
                // from the repository, when the repository holds it.
                Some(home) => match place(state, cx, profile, Placement::Only(home)) {
                    Some(worker) => worker,
                    None if db.restorable() => anywhere(state, cx, profile)?,
                    None => {
                        return Err(busy(
                            Code::DataUnavailable.as_str(),
                            format!(
                                "the worker that holds database {db_name:?}'s data ({home}) is \
                                 not live or has no room for it, and the storage repository \
                                 holds no backup of it yet; retry shortly"
                            ),
                            2,
                        ))
                    }
                },
                None => anywhere(state, cx, profile)?,
            };
            let deadline = after(cx.now, start_limit(cx.settings, db, &worker));
            let drafts = vec![Draft::new(
                Subject::db(t, db.id),
                Event::DbStartRequested {
                    db_id: db.id,
                    worker_id: worker,
                    profile: profile.to_owned(),
                    writer_term: db.writer_term + 1,
                    deadline,
                },
            )];
            Ok((drafts, pending(db, DbState::Starting)))
        }
        DbState::Starting | DbState::Stopping | DbState::Restoring => {
            Ok((vec![], pending(db, db.state)))
        }
    }
}

/// A renewal of a live lease granted under the database's current epoch.
pub(super) fn renew(
    state: &State,
    cx: &mut Context<'_>,
    lease_id: Uuid,
    lease_control_epoch: u64,
    active_connections: u32,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let (lease, db) = live_lease(state, cx, lease_id)?;
    if lease.epoch != db.lease_control_epoch {
        return Err(conflict(
            Code::StaleEpoch.as_str(),
            format!(
                "this lease was granted under lease_control_epoch {}; the database moved \
                 to epoch {} (a handoff): release it and check out again",
                lease.epoch, db.lease_control_epoch
            ),
        ));
    }
    if lease_control_epoch != db.lease_control_epoch {
        return Err(conflict(
            Code::StaleEpoch.as_str(),
            format!(
                "lease_control_epoch {lease_control_epoch} is not the database's current \
                 epoch {}: check out again",
                db.lease_control_epoch
            ),
        ));
    }
    let expires_at = after(cx.now, cx.settings.lease_ttl);
    cx.runtime
        .leases
        .insert(lease_id, (expires_at, active_connections));
    let drafts = load_change(state, cx, db.id).into_iter().collect();
    Ok((drafts, Answer::Renewed { expires_at }))
}

/// The end of a lease: its share of the database's connections goes with it.
pub(super) fn release(
    state: &State,
    cx: &mut Context<'_>,
    lease_id: Uuid,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let (lease, db) = live_lease(state, cx, lease_id)?;
    let t = tenant_of(state, db)?;
    cx.runtime.leases.remove(&lease_id);
    let last = !db
        .live
        .leases
        .iter()
        .any(|l| cx.runtime.leases.contains_key(l));
    if let Some((_, conns)) = cx.runtime.writer_load.get_mut(&db.id).filter(|_| last) {
        // The writer's count is as old as its last heartbeat, and the last lease going
        // means its sessions went with it; its next heartbeat says otherwise if not.
        *conns = 0;
    }
    let mut drafts = vec![Draft::new(
        Subject::db(t, db.id),
        Event::LeaseReleased { lease_id: lease.id },
    )];
    drafts.extend(load_change(state, cx, db.id));
    Ok((drafts, Answer::Accepted(true)))
}

/// The live worker with the most room for a `profile` writer, or why there is none.
pub(super) fn anywhere(
    state: &State,
    cx: &Context<'_>,
    profile: &str,
) -> Result<String, Rejection> {
    place(state, cx, profile, Placement::Anywhere).ok_or_else(|| {
        if state.workers.values().all(|w| w.lost_at.is_some()) {
            busy(
                Code::NoWorker.as_str(),
                "no worker is live to run databases (none has registered, or every one was \
                 lost): start one (`spg99 worker`, or `spg99 serve` with its local worker)",
                2,
            )
        } else {
            busy(
                Code::NoCapacity.as_str(),
                format!("no live worker has room for a {profile} writer; retry shortly"),
                2,
            )
        }
    })
}
