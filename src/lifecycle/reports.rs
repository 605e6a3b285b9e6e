//! What workers report about their instructions: each report either moves a database (and
//! is recorded) or changes nothing (stale, repeated, or about another term).

use spg99_events::Event;
use spg99_projections::{DbState, ScaleStage, StandbyState, State, Writer};
use uuid::Uuid;

use std::time::Duration;

use super::{after, scale_failed, tenant_of, Context, Outcome, WorkerReport};
use crate::decision::{invalid, Draft, Rejection, Subject};

/// A failed backup is asked for again after this long.
const BACKUP_RETRY: Duration = Duration::from_secs(60);

pub(super) fn report(
    state: &State,
    cx: &mut Context<'_>,
    r: &WorkerReport,
) -> Result<Vec<Draft>, Rejection> {
    let (worker_id, db_id, term, outcome) =
        (r.worker_id.as_str(), r.db_id, r.writer_term, r.outcome);
    let (backend_addr, reason) = (r.backend_addr.as_deref(), r.reason.as_deref());
    let (keeps_data, credentials) = (r.keeps_data, r.credentials);
    if outcome == Outcome::Destroyed {
        return Ok(destroyed(state, worker_id, db_id).into_iter().collect());
    }
    let Some(db) = state.dbs.get(&db_id) else {
        return Ok(vec![]);
    };
    let t = tenant_of(state, db)?;
    let subject = Subject::db(t, db_id);
    let is = |w: &Option<Box<Writer>>| {
        w.as_ref()
            .is_some_and(|w| w.worker_id == worker_id && w.term == term)
    };
    let writer = is(&db.live.writer);
    let candidate = is(&db.live.scale.candidate);
    let ha = db.ha();
    let standby = is(&ha.standby);
    let retiring = state
        .retiring
        .contains_key(&(worker_id.to_owned(), db_id, term));
    let addr = || {
        backend_addr
            .filter(|a| !a.is_empty() && a.len() <= 255)
            .map(str::to_owned)
            .ok_or_else(|| invalid("backend_addr", "required with this outcome: host:port"))
    };
    let why = || {
        reason
            .unwrap_or("no reason given")
            .chars()
            .take(500)
            .collect::<String>()
    };
    let stage = db.live.scale.stage;
    // A writer that serves from this worker's own storage: the data is here from now on.
    let placed = || {
        (keeps_data && db.data_on.as_deref() != Some(worker_id)).then(|| {
            Draft::new(
                subject.clone(),
                Event::DbDataPlaced {
                    db_id,
                    worker_id: worker_id.to_owned(),
                },
            )
        })
    };
    let starting = matches!(db.state, DbState::Starting | DbState::Restoring);
    let event = match outcome {
        Outcome::Started if writer && starting => {
            let mut drafts = vec![Draft::new(
                subject.clone(),
                Event::DbStarted {
                    db_id,
                    backend_addr: addr()?,
                },
            )];
            if db.state == DbState::Restoring {
                drafts.push(Draft::new(subject.clone(), Event::DbRestored { db_id }));
            }
            if ha.failover_started_at.is_some() {
                drafts.push(Draft::new(
                    subject.clone(),
                    Event::DbPromoted {
                        db_id,
                        writer_term: term,
                        backend_addr: addr()?,
                    },
                ));
            }
            drafts.extend(placed());
            // The repository gets a backup of a timeline it has none of (a first start, a
            // restore): until then, only this worker's copy holds the data.
            let stores = cx.settings.storage.is_some() && keeps_data;
            if stores && db.stored().last_backup_at.is_none() {
                drafts.push(Draft::new(
                    subject.clone(),
                    Event::DbBackupRequested {
                        db_id,
                        writer_term: term,
                    },
                ));
            }
            return Ok(drafts);
        }
        // The serving writer stopped by itself (its server exited): the database is stopped,
        // and the next checkout starts it again.
        Outcome::Failed if writer && db.state == DbState::Running && !stage.in_progress() => {
            let reason = format!("the writer on {worker_id} stopped unexpectedly: {}", why());
            match super::ha::fail_over(state, cx, db, &reason) {
                Some(failover) => failover,
                None => Event::DbStopped {
                    db_id,
                    reason,
                    retire: false,
                },
            }
        }
        Outcome::Failed if standby => Event::DbStandbyLost {
            db_id,
            standby_term: term,
            reason: format!("the standby on {worker_id} failed: {}", why()),
            retry_at: after(cx.now, super::ha::RETRY),
        },
        Outcome::Prepared if standby && ha.progress == StandbyState::Building => {
            Event::DbStandbyStarted {
                db_id,
                standby_term: term,
            }
        }
        Outcome::Replicated
            if writer
                && db.state == DbState::Running
                && r.standby_term == ha.sync_wanted
                && ha.sync_applied != Some((term, r.standby_term)) =>
        {
            Event::DbReplicationSet {
                db_id,
                writer_term: term,
                standby_term: r.standby_term,
            }
        }
        Outcome::Failed if writer && starting => Event::DbStartFailed {
            db_id,
            reason: format!("the writer failed to start on {worker_id}: {}", why()),
            give_up: db.live.failed_starts + 1 >= cx.settings.max_failed_starts,
            retire: false,
        },
        Outcome::Failed if candidate && stage.in_progress() => {
            let phase = if stage == ScaleStage::Cutover {
                "promote"
            } else {
                "prepare"
            };
            return Ok(vec![scale_failed(
                subject,
                db_id,
                format!(
                    "the candidate on {worker_id} failed to {phase}: {}; the old writer keeps serving",
                    why()
                ),
                after(cx.now, cx.settings.autoscaler.cooldown),
            )]);
        }
        Outcome::Prepared if candidate && stage == ScaleStage::PreparingCandidate => {
            Event::DbScaleCutoverStarted {
                db_id,
                lease_control_epoch: db.lease_control_epoch + 1,
                deadline: after(cx.now, cx.settings.phase_deadline),
            }
        }
        Outcome::Promoted if candidate && stage == ScaleStage::Cutover => {
            let completed = Draft::new(
                subject.clone(),
                Event::DbScaleCompleted {
                    db_id,
                    backend_addr: addr()?,
                    cooldown_until: after(cx.now, cx.settings.autoscaler.cooldown),
                },
            );
            return Ok(std::iter::once(completed).chain(placed()).collect());
        }
        Outcome::Stopped if writer && db.state == DbState::Stopping => {
            let stopped = Draft::new(
                subject.clone(),
                Event::DbStopped {
                    db_id,
                    reason: "stopped after being idle".into(),
                    retire: false,
                },
            );
            let stored = r.stored.as_ref().map(|s| {
                Draft::new(
                    subject.clone(),
                    Event::DbStored {
                        db_id,
                        complete: s.complete,
                        recoverable_until: s.recoverable_until,
                        reason: s.reason.clone(),
                    },
                )
            });
            return Ok(std::iter::once(stopped).chain(stored).collect());
        }
        Outcome::BackedUp if writer && db.stored().backup_wanted == Some(term) => {
            let Some(b) = &r.backup else {
                return Err(invalid("backup", "required with this outcome"));
            };
            Event::DbBackupCompleted {
                db_id,
                timeline: db.timeline.to_string(),
                label: b.label.clone(),
                started_at: b.started_at,
                stopped_at: b.stopped_at,
                oldest_at: b.oldest_at,
                repository_bytes: b.repository_bytes,
            }
        }
        Outcome::BackupFailed if writer && db.stored().backup_wanted == Some(term) => {
            Event::DbBackupFailed {
                db_id,
                reason: why(),
                retry_at: after(cx.now, BACKUP_RETRY),
            }
        }
        Outcome::Purged if db.state == DbState::Deleting && db.stored().in_repository => {
            Event::DbPurged {
                db_id,
                timeline: db.timeline.to_string(),
            }
        }
        Outcome::RoleUpdated if writer && db.state == DbState::Running => {
            let had = db.live.writer.as_ref().map_or(0, |w| w.credentials);
            match credentials.filter(|c| *c > had && *c <= t.credentials) {
                Some(credentials) => Event::DbRoleUpdated {
                    db_id,
                    writer_term: term,
                    credentials,
                },
                None => return Ok(vec![]),
            }
        }
        Outcome::Stopped | Outcome::Aborted if retiring => Event::WriterRetired {
            db_id,
            worker_id: worker_id.to_owned(),
            writer_term: term,
        },
        _ => return Ok(vec![]),
    };
    Ok(vec![Draft::new(subject, event)])
}

/// A worker removed its copy of a database's data: the copy the database lives on, or one
/// left behind. A report about a copy nobody asked it to remove changes nothing.
fn destroyed(state: &State, worker_id: &str, db_id: Uuid) -> Option<Draft> {
    let db = state.dbs.get(&db_id);
    let stale = state
        .stale_copies
        .contains_key(&(worker_id.to_owned(), db_id));
    let deleting_here =
        db.is_some_and(|d| d.state == DbState::Deleting && d.data_on.as_deref() == Some(worker_id));
    if !stale && !deleting_here {
        return None;
    }
    let event = Event::DbDataDestroyed {
        db_id,
        worker_id: worker_id.to_owned(),
    };
    // A stale copy may outlive its database and tenant.
    Some(match db.and_then(|d| state.tenants.get(&d.tenant)) {
        Some(t) => Draft::new(Subject::db(t, db_id), event),
        None => Draft::global(event),
    })
}
