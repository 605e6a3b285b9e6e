//! What each worker must do now.

use spg99_projections::{Db, DbState, Retire, ScaleStage, StandbyState, State};
use spg99_wire::{HaSpec, RestoreFrom};
use uuid::Uuid;

use super::{Instruction, Op};
use crate::clock::rfc3339;

/// What a worker must do now, derived from the state alone (level-triggered: an instruction
/// is repeated until the report that settles it is recorded). The route adds each writer's
/// role verifier, which the state holds sealed, and the replication password (`ha`).
pub fn instructions(state: &State, worker_id: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let instruction = |op, db: &Db, term, profile: Option<&str>| {
        let pg_user = state.tenants.get(&db.tenant).map(|t| t.pg_user.to_string());
        let serves = matches!(op, Op::Start | Op::Prepare | Op::Promote | Op::UpdateRole);
        Instruction {
            op,
            db_id: db.id,
            writer_term: term,
            profile: profile.map(str::to_owned),
            timeline: Some(db.timeline.to_string()),
            database: serves.then(|| db.name.to_string()),
            pg_user: pg_user.filter(|_| serves),
            verifier: None,
            credentials: None,
            request: None,
            restore: None,
            ha: None,
        }
    };
    let ha_spec = |sync_standby_term, upstream| {
        Some(HaSpec {
            replication_password: String::new(),
            sync_standby_term,
            upstream,
        })
    };
    let bare = |op, db_id: Uuid, term, timeline: Option<String>| Instruction {
        op,
        db_id,
        writer_term: term,
        profile: None,
        timeline,
        database: None,
        pg_user: None,
        verifier: None,
        credentials: None,
        request: None,
        restore: None,
        ha: None,
    };
    let held = |db: Uuid| state.retiring.keys().any(|(_, d, _)| *d == db);
    for db in state.active_dbs() {
        if let Some(w) = db.live.writer.as_ref().filter(|w| w.worker_id == worker_id) {
            let current = state.tenants.get(&db.tenant).map_or(0, |t| t.credentials);
            let ha = db.ha();
            match db.state {
                // A failover: the standby here starts as the writer (and nothing else does).
                DbState::Starting if ha.failover_started_at.is_some() => out.push(Instruction {
                    ha: ha_spec(None, None),
                    ..instruction(Op::Start, db, w.term, Some(&w.profile))
                }),
                DbState::Starting | DbState::Restoring => out.push(Instruction {
                    restore: restore_from(state, db, worker_id),
                    ..instruction(Op::Start, db, w.term, Some(&w.profile))
                }),
                DbState::Stopping => out.push(instruction(Op::Stop, db, w.term, None)),
                // A password reset reaches the running writers' roles.
                DbState::Running if w.credentials < current => out.push(Instruction {
                    credentials: Some(current),
                    ..instruction(Op::UpdateRole, db, w.term, None)
                }),
                _ => {}
            }
            // Its replication as the control plane wants it, until it confirms.
            let replicates = (ha.enabled || ha.standby.is_some())
                && db.state == DbState::Running
                && w.backend_addr.is_some()
                && ha.sync_applied != Some((w.term, ha.sync_wanted));
            if replicates {
                out.push(Instruction {
                    request: Some(ha.sync_changes),
                    ha: ha_spec(ha.sync_wanted, None),
                    ..instruction(Op::Replicate, db, w.term, None)
                });
            }
            if db.state == DbState::Running && db.stored().backup_wanted == Some(w.term) {
                out.push(Instruction {
                    request: Some(db.stored().backups_asked),
                    ..instruction(Op::Backup, db, w.term, None)
                });
            }
        }
        if let Some(c) = db
            .live
            .scale
            .candidate
            .as_ref()
            .filter(|c| c.worker_id == worker_id)
        {
            match db.live.scale.stage {
                ScaleStage::PreparingCandidate => {
                    out.push(instruction(Op::Prepare, db, c.term, Some(&c.profile)))
                }
                ScaleStage::Cutover => {
                    out.push(instruction(Op::Promote, db, c.term, Some(&c.profile)))
                }
                _ => {}
            }
        }
        let ha = db.ha();
        if let Some(s) = ha.standby.as_ref().filter(|s| s.worker_id == worker_id) {
            let upstream = db.live.writer.as_ref().and_then(|w| w.backend_addr.clone());
            if let (StandbyState::Building, Some(upstream)) = (ha.progress, upstream) {
                out.push(Instruction {
                    ha: ha_spec(None, Some(upstream)),
                    ..instruction(Op::Prepare, db, s.term, Some(&s.profile))
                });
            }
        }
        let gone = db.state == DbState::Deleting && db.live.writer.is_none() && !held(db.id);
        if gone && db.data_on.as_deref() == Some(worker_id) {
            out.push(instruction(Op::Destroy, db, 0, None));
        }
        if gone && db.stored().in_repository && purger(state, db) == Some(worker_id) {
            out.push(instruction(Op::Purge, db, 0, None));
        }
    }
    let from = (worker_id.to_owned(), Uuid::nil(), 0);
    for ((w, db_id, term), how) in state.retiring.range(from..) {
        if w != worker_id {
            break;
        }
        let op = match how {
            Retire::Stop => Op::Stop,
            Retire::Abort => Op::Abort,
        };
        let timeline = state.dbs.get(db_id).map(|d| d.timeline.to_string());
        out.push(bare(op, *db_id, *term, timeline));
    }
    let from = (worker_id.to_owned(), Uuid::nil());
    for ((w, db_id), timeline) in state.stale_copies.range(from..) {
        if w != worker_id {
            break;
        }
        // Never under a writer this worker runs of that database (a start from the
        // repository onto the stale copy refreshes it instead).
        let writes_here = state.dbs.get(db_id).is_some_and(|d| {
            [&d.live.writer, &d.ha().standby]
                .into_iter()
                .flatten()
                .any(|w| w.worker_id == worker_id)
                || d.data_on.as_deref() == Some(worker_id)
        });
        if !writes_here {
            out.push(bare(Op::Destroy, *db_id, 0, Some(timeline.clone())));
        }
    }
    out
}

/// Where a start on `worker_id` makes its data from: the point a restore asked for; else,
/// once the repository holds the database, its newest point, unless this worker holds the
/// newest copy (then only if that copy is missing: a disk replaced). A copy here that is not
/// the newest (the database moved meanwhile) is never served: the restore refreshes it.
fn restore_from(state: &State, db: &Db, worker_id: &str) -> Option<RestoreFrom> {
    // A parent's data (a branch's, a reset's), from the newest copy of it when that is on
    // this worker.
    let parent_here = |parent: Uuid, timeline: &str| {
        state
            .dbs
            .get(&parent)
            .filter(|p| {
                p.timeline == timeline
                    && match &p.live.writer {
                        Some(w) => w.worker_id == worker_id && p.state == DbState::Running,
                        None => p.data_on.as_deref() == Some(worker_id),
                    }
            })
            .map(|p| p.id)
    };
    if let Some(r) = &db.live.restore {
        return Some(RestoreFrom {
            timeline: r.from_timeline.clone(),
            time: r.time.map(rfc3339),
            lsn: r.lsn.clone(),
            unless_here: false,
            parent: r.parent.and_then(|p| parent_here(p, &r.from_timeline)),
        });
    }
    if let Some(b) = db.unmade_branch() {
        return b.parent_timeline.as_ref().map(|timeline| RestoreFrom {
            timeline: timeline.clone(),
            time: b.time.map(rfc3339),
            lsn: None,
            unless_here: false,
            parent: parent_here(b.parent_db_id, timeline),
        });
    }
    db.restorable().then(|| RestoreFrom {
        timeline: db.timeline.to_string(),
        time: None,
        lsn: None,
        unless_here: db.data_on.as_deref() == Some(worker_id),
        parent: None,
    })
}

/// The worker that removes a deleted database's timeline from the repository: the one that
/// held its data if it is live, else the live worker (keeping data) with the smallest id.
pub(super) fn purger<'s>(state: &'s State, db: &Db) -> Option<&'s str> {
    let live = |id: &str| {
        state
            .workers
            .get(id)
            .is_some_and(|w| w.lost_at.is_none() && w.keeps_data)
    };
    if let Some(home) = db.data_on.as_deref().filter(|h| live(h)) {
        return state.workers.get(home).map(|w| w.id.as_str());
    }
    state
        .workers
        .values()
        .find(|w| w.lost_at.is_none() && w.keeps_data)
        .map(|w| w.id.as_str())
}
