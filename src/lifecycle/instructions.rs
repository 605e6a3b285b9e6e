//! What each worker must do now.

use spg99_projections::{Db, DbState, Retire, ScaleStage, State};
use uuid::Uuid;

use super::{Instruction, Op};

/// What a worker must do now, derived from the state alone (level-triggered: an instruction
/// is repeated until the report that settles it is recorded). The route adds each writer's
/// role verifier, which the state holds sealed.
pub fn instructions(state: &State, worker_id: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let instruction = |op, db: &Db, term, profile: Option<&str>| {
        let pg_user = state.tenants.get(&db.tenant).map(|t| t.pg_user.clone());
        let serves = matches!(op, Op::Start | Op::Prepare | Op::Promote | Op::UpdateRole);
        Instruction {
            op,
            db_id: db.id,
            writer_term: term,
            profile: profile.map(str::to_owned),
            timeline: Some(db.timeline.clone()),
            database: serves.then(|| db.name.to_string()),
            pg_user: pg_user.filter(|_| serves),
            verifier: None,
            credentials: None,
        }
    };
    let held = |db: Uuid| state.retiring.keys().any(|(_, d, _)| *d == db);
    for db in state.active_dbs() {
        if let Some(w) = db.writer.as_ref().filter(|w| w.worker_id == worker_id) {
            let current = state.tenants.get(&db.tenant).map_or(0, |t| t.credentials);
            match db.state {
                DbState::Starting => out.push(instruction(Op::Start, db, w.term, Some(&w.profile))),
                DbState::Stopping => out.push(instruction(Op::Stop, db, w.term, None)),
                // A password reset reaches the running writers' roles.
                DbState::Running if w.credentials < current => out.push(Instruction {
                    credentials: Some(current),
                    ..instruction(Op::UpdateRole, db, w.term, None)
                }),
                _ => {}
            }
        }
        if let Some(c) = db
            .scale
            .candidate
            .as_ref()
            .filter(|c| c.worker_id == worker_id)
        {
            match db.scale.stage {
                ScaleStage::PreparingCandidate => {
                    out.push(instruction(Op::Prepare, db, c.term, Some(&c.profile)))
                }
                ScaleStage::Cutover => {
                    out.push(instruction(Op::Promote, db, c.term, Some(&c.profile)))
                }
                _ => {}
            }
        }
        let gone = db.state == DbState::Deleting && db.writer.is_none() && !held(db.id);
        if gone && db.data_on.as_deref() == Some(worker_id) {
            out.push(instruction(Op::Destroy, db, 0, None));
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
        let timeline = state.dbs.get(db_id).map(|d| d.timeline.clone());
        out.push(Instruction {
            op,
            db_id: *db_id,
            writer_term: *term,
            profile: None,
            timeline,
            database: None,
            pg_user: None,
            verifier: None,
            credentials: None,
        });
    }
    let from = (worker_id.to_owned(), Uuid::nil());
    for ((w, db_id), timeline) in state.stale_copies.range(from..) {
        if w != worker_id {
            break;
        }
        out.push(Instruction {
            op: Op::Destroy,
            db_id: *db_id,
            writer_term: 0,
            profile: None,
            timeline: Some(timeline.clone()),
            database: None,
            pg_user: None,
            verifier: None,
            credentials: None,
        });
    }
    out
}
