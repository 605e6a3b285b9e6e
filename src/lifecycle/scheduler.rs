//! Which worker a writer goes to: the live worker with the most room that runs its profile.
//! No state of its own: it reads the state and the workers' last heartbeats.

use std::collections::BTreeMap;

use spg99_projections::{Db, DbState, State};
use spg99_wire::Code;

use super::{after, Context};
use crate::decision::{busy, conflict, Rejection};

/// How many writers each worker holds: serving or starting, candidates, and writers it still
/// has to shut down. Capacity is counted against this.
pub fn occupancy(state: &State) -> BTreeMap<&str, u32> {
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    for db in state.active_dbs() {
        for w in [&db.live.writer, &db.live.scale.candidate, &db.ha().standby]
            .into_iter()
            .flatten()
        {
            *used.entry(w.worker_id.as_str()).or_default() += 1;
        }
    }
    for (w, _, _) in state.retiring.keys() {
        *used.entry(w.as_str()).or_default() += 1;
    }
    used
}

/// Which workers a writer may go to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Placement<'a> {
    Anywhere,
    /// Any but this one (a candidate, away from the serving writer).
    Avoid(&'a str),
    /// This one only (the one holding the database's data).
    Only(&'a str),
}

/// The live worker with the most room that runs `profile`, among those `placement` allows;
/// ties go to the smallest id, so placement is deterministic.
pub(super) fn place(
    state: &State,
    cx: &Context<'_>,
    profile: &str,
    placement: Placement<'_>,
) -> Option<String> {
    let used = occupancy(state);
    let timeout = cx.settings.worker_timeout;
    let allowed = |id: &str| match placement {
        Placement::Anywhere => true,
        Placement::Avoid(other) => id != other,
        Placement::Only(one) => id == one,
    };
    state
        .workers
        .values()
        .filter(|w| w.lost_at.is_none() && allowed(&w.id))
        .filter(|w| w.profiles.iter().any(|p| p == profile))
        .filter(|w| {
            cx.runtime
                .workers_seen
                .get(&w.id)
                .is_some_and(|seen| after(*seen, timeout) > cx.now)
        })
        .filter_map(|w| {
            let free = w
                .capacity
                .saturating_sub(used.get(w.id.as_str()).copied().unwrap_or(0));
            (free > 0).then_some((free, &w.id))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, id)| id.clone())
}

/// Where a new branch of `parent` makes its data at its first start, for a `profile`
/// writer: on the worker of the parent's serving writer (a copy through the backup API, or,
/// for a point in the past, a restore once that worker has archived the parent's WAL up to
/// now); else on the worker holding the stopped parent's newest copy (a copy of it), if
/// it has room; else anywhere, from the repository.
pub fn branch_worker(
    state: &State,
    cx: &Context<'_>,
    parent: &Db,
    profile: &str,
) -> Result<String, Rejection> {
    let name = parent.name.as_str();
    match parent.state {
        DbState::Running if !parent.live.scale.stage.in_progress() => {
            let home = parent
                .live
                .writer
                .as_ref()
                .map(|w| w.worker_id.as_str())
                .unwrap_or_default();
            place(state, cx, profile, Placement::Only(home)).ok_or_else(|| {
                busy(
                    Code::NoCapacity.as_str(),
                    format!(
                        "the worker that runs database {name:?} ({home}) has no room for its \
                         branch now; retry shortly"
                    ),
                    2,
                )
            })
        }
        DbState::Stopped => {
            let home = parent.data_on.as_deref();
            if let Some(w) = home.and_then(|h| place(state, cx, profile, Placement::Only(h))) {
                return Ok(w);
            }
            match home {
                Some(home) if !parent.restorable() => Err(busy(
                    Code::DataUnavailable.as_str(),
                    format!(
                        "the worker that holds database {name:?}'s data ({home}) is not live or \
                         has no room for a branch, and the storage repository holds no backup \
                         of it yet; retry shortly"
                    ),
                    2,
                )),
                _ => super::leases::anywhere(state, cx, profile),
            }
        }
        _ => Err(conflict(
            "db_busy",
            format!(
                "database {name:?} is {} (or moving to another profile): branch it once it runs \
                 or stopped",
                parent.state.as_str()
            ),
        )),
    }
}
