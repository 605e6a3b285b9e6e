//! Databases: creation and deletion (their lifecycle is [`crate::lifecycle`]'s).

use spg99_events::Event;
use spg99_projections::{DbState, State};
use uuid::Uuid;

use super::caller;
use crate::access::{self, Permission};
use crate::catalog::Size;
use crate::decision::{conflict, CommandMeta, Draft, Rejection, Subject};
use crate::domain::ResourceName;

pub(super) fn create(
    state: &State,
    meta: &CommandMeta,
    db_id: Uuid,
    tenant: &ResourceName,
    name: &ResourceName,
    size: &Size,
    timeline: &str,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let t = access::tenant(state, key, tenant.as_str())?;
    access::require(key, Permission::CreateDb)?;
    if t.deleting {
        return Err(conflict(
            "tenant_deleting",
            format!("tenant {:?} is being deleted", t.name),
        ));
    }
    if state.db_by_name(t.id, name.as_str()).is_some() {
        return Err(conflict(
            "db_exists",
            format!(
                "tenant {:?} already has a database named {:?}",
                t.name,
                name.as_str()
            ),
        ));
    }
    if state.dbs.contains_key(&db_id) {
        return Err(conflict(
            "db_id_taken",
            "generated id already in use; retry",
        ));
    }
    Ok(vec![Draft::new(
        Subject::db(t, db_id),
        Event::DbCreated {
            db_id,
            tenant_id: t.id,
            name: name.as_str().to_owned(),
            size: size.name().to_owned(),
            timeline: timeline.to_owned(),
        },
    )])
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
    Ok(vec![Draft::new(
        Subject::db(t, d.id),
        Event::DbDeleteRequested { db_id: d.id },
    )])
}
