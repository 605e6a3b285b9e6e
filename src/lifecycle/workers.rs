//! Workers: registrations, heartbeats (the load they carry), and a worker declared lost
//! with everything it held.

use spg99_events::Event;
use spg99_projections::{DbState, State, Writer};
use spg99_wire::Code;

use super::autoscaler::load_change;
use super::{after, scale_failed, Answer, Context, Load};
use crate::catalog;
use crate::decision::{gone, invalid, Draft, Rejection, Subject};

/// The worker, registered and not lost; `worker_unknown` otherwise (it must register again).
pub fn live_worker<'s>(
    state: &'s State,
    worker_id: &str,
) -> Result<&'s spg99_projections::Worker, Rejection> {
    state
        .workers
        .get(worker_id)
        .map(|w| &**w)
        .filter(|w| w.lost_at.is_none())
        .ok_or_else(|| {
            gone(
                Code::WorkerUnknown.as_str(),
                format!(
                    "worker {worker_id:?} is not registered (or was declared lost): register again"
                ),
            )
        })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn register(
    state: &State,
    cx: &mut Context<'_>,
    id: &str,
    address: &str,
    capacity: u32,
    profiles: &[String],
    instance: &str,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        return Err(invalid("id", "1 to 64 letters, digits, '.', '_' or '-'"));
    }
    if address.is_empty() || address.len() > 255 {
        return Err(invalid("address", "host:port, at most 255 characters"));
    }
    if capacity == 0 || capacity > 100_000 {
        return Err(invalid("capacity", "between 1 and 100000 writers"));
    }
    if profiles.is_empty() {
        return Err(invalid(
            "profiles",
            "name at least one profile from the catalog",
        ));
    }
    if let Some(p) = profiles.iter().find(|p| catalog::profile(p).is_none()) {
        return Err(invalid(
            "profiles",
            format!("unknown profile {p:?} (GET /v2/sizes)"),
        ));
    }
    if instance.is_empty() || instance.len() > 128 {
        return Err(invalid("instance", "1 to 128 characters"));
    }
    let mut drafts = Vec::new();
    let unchanged = match state.workers.get(id) {
        Some(w) if w.lost_at.is_none() && w.instance != instance => {
            // The process restarted: whatever the old instance ran is gone.
            drafts.extend(lose_worker(
                state,
                cx,
                id,
                "the worker restarted (new instance)",
            ));
            false
        }
        Some(w) => {
            w.lost_at.is_none()
                && w.address == address
                && w.capacity == capacity
                && w.profiles == profiles
        }
        None => false,
    };
    cx.runtime.workers_seen.insert(id.to_owned(), cx.now);
    if !unchanged {
        drafts.push(Draft::global(Event::WorkerRegistered {
            worker_id: id.to_owned(),
            address: address.to_owned(),
            capacity,
            profiles: profiles.to_vec(),
            instance: instance.to_owned(),
        }));
    }
    let accepted = !drafts.is_empty();
    Ok((drafts, Answer::Accepted(accepted)))
}

/// A heartbeat: the worker is alive, and the load of each writer it serves.
pub(super) fn heartbeat(
    state: &State,
    cx: &mut Context<'_>,
    worker_id: &str,
    loads: &[Load],
) -> Result<Vec<Draft>, Rejection> {
    live_worker(state, worker_id)?;
    cx.runtime.workers_seen.insert(worker_id.to_owned(), cx.now);
    let mut drafts = Vec::new();
    for load in loads {
        let serves = state.dbs.get(&load.db_id).is_some_and(|d| {
            d.state == DbState::Running
                && d.live
                    .writer
                    .as_ref()
                    .is_some_and(|w| w.worker_id == worker_id)
        });
        if serves {
            cx.runtime
                .writer_load
                .insert(load.db_id, (load.cpu_milli, load.active_connections));
            drafts.extend(load_change(state, cx, load.db_id));
            drafts.extend(archive_change(state, cx, load));
            if let Some(db) = state.dbs.get(&load.db_id) {
                drafts.extend(super::ha::replication_change(state, cx, db, &load.replicas));
            }
        }
    }
    Ok(drafts)
}

/// A `db.archive_failed` when a serving writer's archiving starts failing or lags beyond
/// twice the archive timeout; a `db.archive_recovered` once it succeeds again within the
/// timeout. Transitions only: a heartbeat that changes nothing records nothing.
fn archive_change(state: &State, cx: &Context<'_>, load: &Load) -> Option<Draft> {
    let (archive, storage) = (load.archive.as_ref()?, cx.settings.storage.as_ref()?);
    let db = state.dbs.get(&load.db_id)?;
    let timeout = storage.archive_timeout_secs;
    let trouble = archive
        .failure
        .as_ref()
        .map(|f| format!("WAL archiving fails: {f}"))
        .or_else(|| {
            (archive.lag_secs > 2 * timeout).then(|| {
                format!(
                    "WAL archiving lags {} s behind (more than twice the archive timeout of {timeout} s)",
                    archive.lag_secs
                )
            })
        });
    let failing = db.stored().archive_failure.is_some();
    let event = match trouble {
        Some(reason) if !failing => Event::DbArchiveFailed {
            db_id: db.id,
            reason,
        },
        None if failing && archive.lag_secs <= timeout => {
            Event::DbArchiveRecovered { db_id: db.id }
        }
        _ => return None,
    };
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(Subject::db(t, db.id), event))
}

/// Everything a lost worker held: writers stop (or their start fails), handoffs that
/// needed it fail; then the worker itself is marked lost.
pub(super) fn lose_worker(
    state: &State,
    cx: &Context<'_>,
    worker_id: &str,
    reason: &str,
) -> Vec<Draft> {
    let cooldown_until = after(cx.now, cx.settings.autoscaler.cooldown);
    let mut drafts = Vec::new();
    for db in state.active_dbs() {
        let Some(t) = state.tenants.get(&db.tenant) else {
            continue;
        };
        let on = |w: &Option<Box<Writer>>| w.as_ref().is_some_and(|w| w.worker_id == worker_id);
        let writer_here = on(&db.live.writer);
        let candidate_here = on(&db.live.scale.candidate);
        let subject = Subject::db(t, db.id);
        if let Some(s) = db
            .ha()
            .standby
            .as_ref()
            .filter(|s| s.worker_id == worker_id)
        {
            drafts.push(Draft::new(
                subject.clone(),
                Event::DbStandbyLost {
                    db_id: db.id,
                    standby_term: s.term,
                    reason: format!("the standby's worker {worker_id} was lost ({reason})"),
                    retry_at: cx.now,
                },
            ));
        }
        if db.state == DbState::Deleting || !(writer_here || candidate_here) {
            continue;
        }
        if db.live.scale.stage.in_progress() {
            let why = if candidate_here {
                format!("the candidate's worker {worker_id} was lost ({reason}); the old writer keeps serving")
            } else {
                format!("the serving writer's worker {worker_id} was lost ({reason}) during the handoff")
            };
            drafts.push(scale_failed(subject.clone(), db.id, why, cooldown_until));
        }
        if writer_here {
            let why = format!("worker {worker_id} was lost ({reason})");
            if let Some(failover) = super::ha::fail_over(state, cx, db, &why) {
                drafts.push(Draft::new(subject, failover));
                continue;
            }
            let event = match db.state {
                DbState::Starting | DbState::Restoring => Event::DbStartFailed {
                    db_id: db.id,
                    reason: why,
                    give_up: false,
                    retire: false,
                },
                _ => Event::DbStopped {
                    db_id: db.id,
                    reason: why,
                    retire: false,
                },
            };
            drafts.push(Draft::new(subject, event));
        }
    }
    drafts.push(Draft::global(Event::WorkerLost {
        worker_id: worker_id.to_owned(),
        reason: reason.to_owned(),
    }));
    drafts
}
