//! Who may see and do what: the scope and permission rules, shared by command decisions and
//! read handlers so that both answer the same way.
//!
//! - Outside its scope a resource does not exist for a key: `NotFound` (404), never 403, so
//!   that existence does not leak.
//! - Inside its scope, a missing permission flag is `MissingPermission` (403) naming it.

use spg99_events::{KeyScope, Permissions};
use spg99_projections::{ApiKey, Db, State, Tenant};
use uuid::Uuid;

use crate::decision::Rejection;

/// A permission flag, by its API name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    CreateTenant,
    CreateDb,
    Scale,
    Delete,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::CreateTenant => "can_create_tenant",
            Permission::CreateDb => "can_create_db",
            Permission::Scale => "can_scale",
            Permission::Delete => "can_delete",
        }
    }

    fn held_in(self, p: &Permissions) -> bool {
        match self {
            Permission::CreateTenant => p.can_create_tenant,
            Permission::CreateDb => p.can_create_db,
            Permission::Scale => p.can_scale,
            Permission::Delete => p.can_delete,
        }
    }
}

/// The first flag set in `wanted` but not in `held`.
pub fn first_missing(wanted: &Permissions, held: &Permissions) -> Option<Permission> {
    [
        Permission::CreateTenant,
        Permission::CreateDb,
        Permission::Scale,
        Permission::Delete,
    ]
    .into_iter()
    .find(|p| p.held_in(wanted) && !p.held_in(held))
}

pub fn require(key: &ApiKey, permission: Permission) -> Result<(), Rejection> {
    if permission.held_in(&key.permissions) {
        Ok(())
    } else {
        Err(Rejection::MissingPermission {
            permission: permission.name(),
        })
    }
}

/// Whether `key` can see `tenant`.
pub fn sees_tenant(key: &ApiKey, tenant: &Tenant) -> bool {
    match key.scope {
        KeyScope::Global => true,
        KeyScope::Account(a) => tenant.account == a,
        KeyScope::Tenant { tenant: t, .. } => tenant.id == t,
    }
}

/// Whether `key` can see account `account` (its own, or any for a global key).
pub fn sees_account(key: &ApiKey, account: Uuid) -> bool {
    match key.scope {
        KeyScope::Global => true,
        _ => key.account() == Some(account),
    }
}

/// The tenant called `name`, if `key` can see it.
pub fn tenant<'s>(state: &'s State, key: &ApiKey, name: &str) -> Result<&'s Tenant, Rejection> {
    state
        .tenant_by_name(name)
        .filter(|t| sees_tenant(key, t))
        .ok_or(Rejection::NotFound { what: "tenant" })
}

/// The database `db` of tenant `tenant`, if `key` can see it.
pub fn db<'s>(
    state: &'s State,
    key: &ApiKey,
    tenant_name: &str,
    db_name: &str,
) -> Result<(&'s Tenant, &'s Db), Rejection> {
    let t = tenant(state, key, tenant_name)?;
    let d = state
        .db_by_name(t.id, db_name)
        .ok_or(Rejection::NotFound { what: "database" })?;
    Ok((t, d))
}

/// The database with internal id `id`, if `key` can see it.
pub fn db_by_id<'s>(
    state: &'s State,
    key: &ApiKey,
    id: Uuid,
) -> Result<(&'s Tenant, &'s Db), Rejection> {
    state
        .dbs
        .get(&id)
        .and_then(|d| state.tenants.get(&d.tenant).map(|t| (&**t, &**d)))
        .filter(|(t, _)| sees_tenant(key, t))
        .ok_or(Rejection::NotFound { what: "database" })
}

/// Whether `caller` may revoke `target`: a global key any key, an account key the keys of
/// its account it could have issued itself, any key itself.
pub fn may_manage(caller: &ApiKey, target: &ApiKey) -> bool {
    if caller.id == target.id {
        return true;
    }
    match caller.scope {
        KeyScope::Global => true,
        KeyScope::Account(a) => {
            target.account() == Some(a)
                && target.scope != KeyScope::Global
                && target.permissions.is_subset_of(&caller.permissions)
        }
        KeyScope::Tenant { .. } => false,
    }
}
