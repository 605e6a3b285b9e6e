//! Databases: creation and deletion (their lifecycle is [`crate::lifecycle`]'s).

use spg99_events::{Event, Timestamp};
use spg99_projections::{Db, DbState, State, Tenant};
use uuid::Uuid;

use super::caller;
use crate::access::{self, Permission};
use crate::catalog::{self, Size};
use crate::clock::rfc3339;
use crate::decision::{conflict, CommandMeta, Draft, Rejection, Subject};
use crate::domain::ResourceName;
use crate::lifecycle::{branch_worker, Context};

/// What a creation is asked to be: a new database, or, with `parent`, a branch of one.
pub(super) struct Create<'c> {
    pub db_id: Uuid,
    pub tenant: &'c ResourceName,
    pub name: &'c ResourceName,
    pub size: &'c Size,
    pub timeline: &'c str,
    pub parent: Option<&'c ResourceName>,
    pub at: Option<Timestamp>,
    pub ha: bool,
}

pub(super) fn create(
    state: &State,
    cx: &Context<'_>,
    meta: &CommandMeta,
    c: Create<'_>,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let t = access::tenant(state, key, c.tenant.as_str())?;
    access::require(key, Permission::CreateDb)?;
    if t.deleting {
        return Err(conflict(
            "tenant_deleting",
            format!("tenant {:?} is being deleted", t.name),
        ));
    }
    let name = c.name.as_str();
    if state.db_by_name(t.id, name).is_some() {
        return Err(conflict(
            "db_exists",
            format!("tenant {:?} already has a database named {name:?}", t.name),
        ));
    }
    if state.dbs.contains_key(&c.db_id) {
        return Err(conflict(
            "db_id_taken",
            "generated id already in use; retry",
        ));
    }
    if c.ha {
        ha_possible(cx)?;
    }
    let ha = c.ha.then(|| {
        Draft::new(
            Subject::db(t, c.db_id),
            Event::DbHaSet {
                db_id: c.db_id,
                enabled: true,
            },
        )
    });
    let Some(parent) = c.parent else {
        if c.at.is_some() {
            return Err(Rejection::Unprocessable {
                code: "at_without_parent",
                message: "`at` is the point of a branch's parent: give `parent` too".into(),
            });
        }
        let created = Draft::new(
            Subject::db(t, c.db_id),
            Event::DbCreated {
                db_id: c.db_id,
                tenant_id: t.id,
                name: name.to_owned(),
                size: c.size.name().to_owned(),
                timeline: c.timeline.to_owned(),
            },
        );
        return Ok(std::iter::once(created).chain(ha).collect());
    };
    let mut drafts = branch(state, cx, t, parent, c)?;
    drafts.extend(ha);
    Ok(drafts)
}

/// A branch of `parent`: created, and its first start placed where its data is made.
fn branch(
    state: &State,
    cx: &Context<'_>,
    t: &Tenant,
    parent: &ResourceName,
    c: Create<'_>,
) -> Result<Vec<Draft>, Rejection> {
    let p = state
        .db_by_name(t.id, parent.as_str())
        .ok_or(Rejection::NotFound {
            what: "parent database",
        })?;
    if p.state == DbState::Deleting {
        return Err(conflict(
            "db_deleting",
            format!("database {:?} is being deleted", p.name.as_str()),
        ));
    }
    let has_data = p.data_on.is_some() || p.restorable() || p.state != DbState::Stopped;
    let time = match c.at {
        Some(at) => history_point(p, cx, Some(at), "branched at")?,
        None => None,
    };
    let profile = catalog::profiles_of(c.size.name())
        .first()
        .copied()
        .ok_or_else(|| conflict("unknown_size", "the size is not in the catalog"))?;
    let branched = Event::DbBranched {
        db_id: c.db_id,
        tenant_id: t.id,
        name: c.name.as_str().to_owned(),
        size: c.size.name().to_owned(),
        timeline: c.timeline.to_owned(),
        parent_db_id: p.id,
        parent_timeline: has_data.then(|| p.timeline.to_string()),
        at: c.at.unwrap_or(cx.now),
        time,
    };
    let subject = || Subject::db(t, c.db_id);
    if !has_data {
        // Nothing to copy: the branch starts empty, like its parent, on its first connection.
        return Ok(vec![Draft::new(subject(), branched)]);
    }
    let worker = branch_worker(state, cx, p, profile)?;
    let deadline = Timestamp::from_micros(
        cx.now
            .as_micros()
            .saturating_add(cx.settings.restore_deadline.as_micros() as i64),
    );
    Ok(vec![
        Draft::new(subject(), branched),
        Draft::new(
            subject(),
            Event::DbStartRequested {
                db_id: c.db_id,
                worker_id: worker,
                profile: profile.to_owned(),
                writer_term: 1,
                deadline,
            },
        ),
    ])
}

/// Asks for a database's deletion (its writers stop, then the reconciler finishes it);
/// asking again changes nothing.
pub(super) fn delete(
    state: &State,
    meta: &CommandMeta,
    tenant: &ResourceName,
    db: &ResourceName,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let (t, d) = access::db(state, key, tenant.as_str(), db.as_str())?;
    access::require(key, Permission::Delete)?;
    if d.state == DbState::Deleting {
        return Ok(vec![]);
    }
    // The state kept by a restore under way is what that restore reads from the repository.
    let restoring = state.dbs_of(t.id).find(|o| {
        o.live
            .restore
            .as_ref()
            .is_some_and(|r| r.kept_db_id == d.id)
    });
    if let Some(o) = restoring {
        return Err(conflict(
            "restore_in_progress",
            format!(
                "database {:?} is being restored from the state {:?} keeps: delete it once the \
                 restore is done",
                o.name.as_str(),
                d.name.as_str()
            ),
        ));
    }
    // Likewise the data a branch's first start is making its own.
    let branching = state
        .dbs_of(t.id)
        .filter(|o| !matches!(o.state, DbState::Failed | DbState::Deleting))
        .find(|o| {
            o.unmade_branch().is_some_and(|b| b.parent_db_id == d.id)
                || o.live
                    .restore
                    .as_ref()
                    .is_some_and(|r| r.parent == Some(d.id))
        });
    if let Some(o) = branching {
        return Err(conflict(
            "branch_in_progress",
            format!(
                "branch {:?} is being made from database {:?}'s data: delete it once the \
                 branch has started",
                o.name.as_str(),
                d.name.as_str()
            ),
        ));
    }
    Ok(vec![Draft::new(
        Subject::db(t, d.id),
        Event::DbDeleteRequested { db_id: d.id },
    )])
}

/// What a restore is asked to be.
pub(super) struct Restore<'c> {
    pub tenant: &'c ResourceName,
    pub db: &'c ResourceName,
    pub time: Option<Timestamp>,
    pub lsn: Option<&'c str>,
    pub timeline: &'c str,
    pub kept_db_id: Uuid,
}

/// A restore in place: the database, stopped or running, serves its state as of a point
/// the repository holds (from its oldest backup on), on a new timeline; what it holds now
/// is kept as a new database of the tenant, `<name>_before_restore_<n>`.
pub(super) fn restore(
    state: &State,
    cx: &Context<'_>,
    meta: &CommandMeta,
    r: Restore<'_>,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let (t, d) = access::db(state, key, r.tenant.as_str(), r.db.as_str())?;
    access::require(key, Permission::Delete)?;
    match d.state {
        DbState::Deleting => {
            return Err(conflict(
                "db_deleting",
                format!("database {:?} is being deleted", d.name.as_str()),
            ))
        }
        DbState::Restoring => {
            return Err(conflict(
                "restore_in_progress",
                format!("database {:?} is being restored already", d.name.as_str()),
            ))
        }
        _ => {}
    }
    let time = history_point(d, cx, r.time, "restored to")?;
    // A point outside the history is refused whatever the database is doing; one inside
    // waits for the database to run or stop.
    let settled = matches!(d.state, DbState::Stopped | DbState::Running);
    if !settled || d.live.scale.stage.in_progress() {
        return Err(conflict(
            "db_busy",
            format!(
                "database {:?} is {} (or moving to another profile): restore it once it runs or \
                 stopped",
                d.name.as_str(),
                d.state.as_str()
            ),
        ));
    }
    if state.dbs.contains_key(&r.kept_db_id) {
        return Err(conflict(
            "db_id_taken",
            "generated id already in use; retry",
        ));
    }
    let kept_name = kept_name(state, t.id, d.name.as_str(), "restore");
    Ok(vec![Draft::new(
        Subject::db(t, d.id),
        Event::DbRestoreRequested {
            db_id: d.id,
            time,
            lsn: r.lsn.map(str::to_owned),
            timeline: r.timeline.to_owned(),
            kept_db_id: r.kept_db_id,
            kept_name,
        },
    )])
}

/// The point `at` of `d`'s history that a restore or a branch (`verb`: "restored to",
/// "branched at") asks for (none: an LSN, checked on the worker), once the repository holds a
/// backup of it: refused (422 `outside_history`) outside what the repository holds. A
/// stopped database's state at any point after its stop is its newest, asked for as that
/// (`None`): a recovery to a time after the last commit in the WAL would end with an error.
fn history_point(
    d: &Db,
    cx: &Context<'_>,
    at: Option<Timestamp>,
    verb: &str,
) -> Result<Option<Timestamp>, Rejection> {
    let Some(storage) = &cx.settings.storage else {
        return Err(conflict(
            "no_repository",
            format!(
                "this platform runs without a storage repository (--storage none): databases \
                 have no history to be {verb}"
            ),
        ));
    };
    let window = format!(
        "the repository keeps every point of the last {}",
        window_text(storage.history_window_secs)
    );
    let name = d.name.as_str();
    let Some(oldest) = d.stored().oldest_backup_at else {
        return Err(Rejection::Unprocessable {
            code: "outside_history",
            message: format!(
                "database {name:?} has no backup yet: its history starts at its first backup, \
                 seconds after its first start ({window})"
            ),
        });
    };
    if let Some(at) = at.filter(|at| *at < oldest || *at > cx.now) {
        return Err(Rejection::Unprocessable {
            code: "outside_history",
            message: format!(
                "{} is outside database {name:?}'s history: it can be {verb} any point from {} \
                 to now ({}); {window}",
                rfc3339(at),
                rfc3339(oldest),
                rfc3339(cx.now)
            ),
        });
    }
    Ok(at.filter(|at| {
        d.state != DbState::Stopped || d.stored().recoverable_until.is_none_or(|u| *at < u)
    }))
}

/// A branch's reset: it takes its parent's data as it is now, in place (a restore whose
/// source is the parent); what it holds now is kept as `<name>_before_reset_<n>`.
/// High availability needs a repository: a standby is made from it.
fn ha_possible(cx: &Context<'_>) -> Result<(), Rejection> {
    match cx.settings.storage {
        Some(_) => Ok(()),
        None => Err(conflict(
            "no_repository",
            "this platform runs without a storage repository (--storage none): a standby is \
             made from the repository, so high availability needs one",
        )),
    }
}

/// Turns high availability on or off: the reconciler builds the standby while the database
/// runs, or relaxes its writer and retires it. The same setting again changes nothing.
pub(super) fn set_ha(
    state: &State,
    cx: &Context<'_>,
    meta: &CommandMeta,
    tenant: &ResourceName,
    db: &ResourceName,
    enabled: bool,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let (t, d) = access::db(state, key, tenant.as_str(), db.as_str())?;
    // What creating it with `ha` takes.
    access::require(key, Permission::CreateDb)?;
    if d.state == DbState::Deleting {
        return Err(conflict(
            "db_deleting",
            format!("database {:?} is being deleted", d.name.as_str()),
        ));
    }
    if enabled {
        ha_possible(cx)?;
    }
    if d.ha().enabled == enabled {
        return Ok(vec![]);
    }
    Ok(vec![Draft::new(
        Subject::db(t, d.id),
        Event::DbHaSet {
            db_id: d.id,
            enabled,
        },
    )])
}

pub(super) fn reset(
    state: &State,
    meta: &CommandMeta,
    tenant: &ResourceName,
    db: &ResourceName,
    timeline: &str,
    kept_db_id: Uuid,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let (t, d) = access::db(state, key, tenant.as_str(), db.as_str())?;
    access::require(key, Permission::Delete)?;
    let name = d.name.as_str();
    let Some(branch) = d.branch.as_deref() else {
        return Err(conflict(
            "not_a_branch",
            format!("database {name:?} is no branch: it has no parent to take data from"),
        ));
    };
    let Some(parent) = state.dbs.get(&branch.parent_db_id) else {
        return Err(conflict(
            "parent_gone",
            format!("database {name:?}'s parent was deleted: there is nothing to reset it to"),
        ));
    };
    let settled = |s| matches!(s, DbState::Stopped | DbState::Running);
    for (which, x) in [("database", d), ("its parent", parent)] {
        if !settled(x.state) || x.live.scale.stage.in_progress() || x.unmade_branch().is_some() {
            return Err(conflict(
                "db_busy",
                format!(
                    "{which} {:?} is {} (or moving to another profile, or being made): reset \
                     once both run or stopped",
                    x.name.as_str(),
                    x.state.as_str()
                ),
            ));
        }
    }
    if parent.data_on.is_none() && !parent.restorable() && parent.state == DbState::Stopped {
        return Err(conflict(
            "parent_empty",
            format!(
                "database {name:?}'s parent {:?} never held data: there is nothing to reset to",
                parent.name.as_str()
            ),
        ));
    }
    if state.dbs.contains_key(&kept_db_id) {
        return Err(conflict(
            "db_id_taken",
            "generated id already in use; retry",
        ));
    }
    Ok(vec![Draft::new(
        Subject::db(t, d.id),
        Event::DbReset {
            db_id: d.id,
            timeline: timeline.to_owned(),
            parent_timeline: parent.timeline.to_string(),
            kept_db_id,
            kept_name: kept_name(state, t.id, name, "reset"),
        },
    )])
}

/// `<name>_before_<what>_<n>`, the first `n` from 1 that the tenant has no database of (the
/// name cut to fit the 63 characters of a name).
fn kept_name(state: &State, tenant: Uuid, name: &str, what: &str) -> String {
    (1u32..)
        .map(|n| {
            let suffix = format!("_before_{what}_{n}");
            let room = ResourceName::MAX_LEN - suffix.len();
            let base = name.get(..room.min(name.len())).unwrap_or(name);
            format!("{base}{suffix}")
        })
        .find(|candidate| state.db_by_name(tenant, candidate).is_none())
        .expect("a free name")
}

/// A history window as a person says it: `7 days`, `36 hours`, `90 minutes`.
fn window_text(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s % 86_400 == 0 => (s / 86_400, "day"),
        s if s % 3_600 == 0 => (s / 3_600, "hour"),
        s => (s / 60, "minute"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod window_tests {
    use super::window_text;

    #[test]
    fn a_window_reads_as_a_person_says_it() {
        assert_eq!(window_text(7 * 86_400), "7 days");
        assert_eq!(window_text(86_400), "1 day");
        assert_eq!(window_text(3_600), "1 hour");
        assert_eq!(window_text(36 * 3_600), "36 hours");
        assert_eq!(window_text(90 * 60), "90 minutes");
        assert_eq!(window_text(60), "1 minute");
    }
}
