//! Tenants and their PostgreSQL credentials.

use spg99_events::{Actor, Event, KeyScope, Sealed};
use spg99_projections::{DbState, State};
use uuid::Uuid;

use super::accounts::live_account;
use super::caller;
use crate::access::{self, Permission};
use crate::decision::{conflict, forbidden, CommandMeta, Draft, Rejection, Subject};
use crate::domain::ResourceName;

/// What a new tenant is asked to be.
pub(super) struct Create<'c> {
    pub tenant_id: Uuid,
    /// Required for global keys; account keys create in their own account.
    pub account: Option<Uuid>,
    pub name: &'c ResourceName,
    pub pg_user: &'c str,
    pub pg_password: &'c Sealed,
    pub verifier: &'c Sealed,
}

pub(super) fn create(
    state: &State,
    meta: &CommandMeta,
    new: Create<'_>,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let account = match (key.scope, new.account) {
        (KeyScope::Global, Some(a)) => a,
        (KeyScope::Global, None) => {
            return Err(Rejection::Invalid {
                field: "account",
                message: "a global key must name the account the tenant belongs to".into(),
            })
        }
        (KeyScope::Account(a), None) => a,
        (KeyScope::Account(a), Some(b)) if a == b => a,
        (KeyScope::Account(_), Some(_)) => return Err(Rejection::NotFound { what: "account" }),
        (KeyScope::Tenant { .. }, _) => {
            return Err(forbidden(
                "tenant_key_cannot_create_tenants",
                "tenant-scoped keys cannot create tenants",
            ))
        }
    };
    if !state.accounts.contains_key(&account) {
        return Err(Rejection::NotFound { what: "account" });
    }
    access::require(key, Permission::CreateTenant)?;
    live_account(state, account)?;
    let name = new.name.as_str();
    if state.tenants_by_name.contains_key(name) {
        return Err(conflict(
            "tenant_exists",
            format!("a tenant named {name:?} already exists"),
        ));
    }
    if state.tenants_by_pg_user.contains_key(new.pg_user)
        || state.tenants.contains_key(&new.tenant_id)
    {
        return Err(conflict(
            "tenant_id_taken",
            "generated id already in use; retry",
        ));
    }
    let subject = Subject {
        account: Some(account),
        tenant: Some(name.to_owned()),
        tenant_id: Some(new.tenant_id),
        db_id: None,
    };
    Ok(vec![
        Draft::new(
            subject.clone(),
            Event::TenantCreated {
                tenant_id: new.tenant_id,
                account_id: account,
                name: name.to_owned(),
                pg_user: new.pg_user.to_owned(),
                pg_password: new.pg_password.clone(),
            },
        ),
        Draft::new(
            subject,
            Event::TenantVerifierSet {
                tenant_id: new.tenant_id,
                verifier: new.verifier.clone(),
            },
        ),
    ])
}

/// A new `pg_password` and verifier for the tenant (sealed for `tenant_id`: the tenant the
/// name was found to be when they were made).
pub(super) fn reset_password(
    state: &State,
    meta: &CommandMeta,
    tenant: &ResourceName,
    tenant_id: Uuid,
    pg_password: &Sealed,
    verifier: &Sealed,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let t = access::tenant(state, key, tenant.as_str())?;
    if t.id != tenant_id {
        return Err(Rejection::NotFound { what: "tenant" });
    }
    access::require(key, Permission::CreateTenant)?;
    if t.deleting {
        return Err(conflict(
            "tenant_deleting",
            format!("tenant {:?} is being deleted", t.name),
        ));
    }
    Ok(vec![Draft::new(
        Subject::tenant(t),
        Event::TenantPasswordReset {
            tenant_id: t.id,
            pg_password: pg_password.clone(),
            verifier: verifier.clone(),
        },
    )])
}

/// A tenant created before verifiers existed gets one (system only, at a start).
pub(super) fn set_verifier(
    state: &State,
    meta: &CommandMeta,
    tenant_id: Uuid,
    verifier: &Sealed,
) -> Result<Vec<Draft>, Rejection> {
    if meta.actor != Actor::System {
        return Err(forbidden(
            "system_only",
            "only the control plane itself gives old tenants their verifier",
        ));
    }
    match state.tenants.get(&tenant_id) {
        Some(t) if t.verifier.is_none() => Ok(vec![Draft::new(
            Subject::tenant(t),
            Event::TenantVerifierSet {
                tenant_id,
                verifier: verifier.clone(),
            },
        )]),
        _ => Ok(vec![]),
    }
}

/// Deletes a tenant: refused while it has databases, unless `cascade`.
pub(super) fn delete(
    state: &State,
    meta: &CommandMeta,
    tenant: &ResourceName,
    cascade: bool,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let t = access::tenant(state, key, tenant.as_str())?;
    access::require(key, Permission::Delete)?;
    if t.deleting {
        return Ok(vec![]);
    }
    let live = state
        .dbs_of(t.id)
        .filter(|d| d.state != DbState::Deleting)
        .count();
    if live > 0 && !cascade {
        return Err(conflict(
            "tenant_has_databases",
            format!(
                "tenant {:?} still has {live} database(s); delete them first or pass ?cascade=true",
                t.name
            ),
        ));
    }
    Ok(vec![Draft::new(
        Subject::tenant(t),
        Event::TenantDeleteRequested { tenant_id: t.id },
    )])
}
