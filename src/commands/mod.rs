//! Commands and the one function that decides them.
//!
//! [`decide`] is where every business rule lives: it reads the state the command will be
//! applied to, and either rejects the command or returns the events that record it (and,
//! for the lifecycle's commands, an [`Answer`]). It reads no clock and draws no random
//! number: ids and secrets are made before the command is submitted, and the committer
//! stamps the time on the whole batch (the lifecycle reads that time from its [`Context`]).
//!
//! The rules are kept one file per family: `accounts` (the bootstrap, the service token,
//! accounts), `keys`, `tenants`, `dbs`; the lifecycle's (workers, leases, the
//! reconciler's steps) in [`crate::lifecycle`].
//!
//! Scope and permission checks are made here too, against the calling key as it is in that
//! state, so a key revoked a moment ago cannot slip a command in.

mod accounts;
mod dbs;
mod keys;
mod tenants;
#[cfg(test)]
mod tests;

use spg99_events::Permissions;
use spg99_events::{Actor, KeyScope, Sealed, SecretHash, Timestamp};
use spg99_projections::{ApiKey, State};
use uuid::Uuid;

use crate::catalog::Size;
use crate::decision::{forbidden, CommandMeta, Draft, Rejection, Subject};
use crate::domain::{AccountName, Email, ResourceName};
use crate::lifecycle::{self, Answer, Context, Lifecycle};

/// The scope asked for a new key.
#[derive(Debug, Clone)]
pub enum ScopeRequest {
    Global,
    Account,
    Tenant(ResourceName),
}

#[derive(Debug, Clone)]
pub enum Command {
    /// First start only: the platform's first global key.
    Bootstrap {
        key_id: String,
        secret_hash: SecretHash,
    },
    /// Set the internal service token (first start, or a new one given by the operator).
    SetServiceToken {
        secret_hash: SecretHash,
    },
    CreateAccount {
        account_id: Uuid,
        name: AccountName,
        email: Option<Email>,
    },
    /// Save the calling key's account contact.
    SetContact {
        email: Email,
        name: Option<String>,
    },
    /// Delete the calling key's account.
    DeleteAccount,
    IssueKey {
        account: Uuid,
        key_id: String,
        secret_hash: SecretHash,
        scope: ScopeRequest,
        permissions: Permissions,
        expires_at: Option<Timestamp>,
        name: Option<String>,
    },
    /// New secret for the calling key.
    RotateKey {
        secret_hash: SecretHash,
    },
    /// Revoke a key (the calling key when `None`).
    RevokeKey {
        key_id: Option<String>,
    },
    CreateTenant {
        tenant_id: Uuid,
        /// Required for global keys; account keys create in their own account.
        account: Option<Uuid>,
        name: ResourceName,
        pg_user: String,
        pg_password: Sealed,
        verifier: Sealed,
    },
    /// A new `pg_password` and verifier for the tenant (sealed for `tenant_id`: the tenant
    /// the name was found to be when they were made).
    ResetTenantPassword {
        tenant: ResourceName,
        tenant_id: Uuid,
        pg_password: Sealed,
        verifier: Sealed,
    },
    /// A tenant created before verifiers existed gets one (system only, at a start).
    SetTenantVerifier {
        tenant_id: Uuid,
        verifier: Sealed,
    },
    DeleteTenant {
        tenant: ResourceName,
        cascade: bool,
    },
    /// Create a database; with `parent`, a branch of that database as of `at` (none: now).
    CreateDb {
        db_id: Uuid,
        tenant: ResourceName,
        name: ResourceName,
        size: Size,
        timeline: String,
        parent: Option<ResourceName>,
        at: Option<Timestamp>,
        /// With high availability (a synchronous standby on another worker).
        ha: bool,
    },
    DeleteDb {
        tenant: ResourceName,
        db: ResourceName,
    },
    /// Restore a database in place to a point of its history (`time`, or `lsn`; neither:
    /// its newest), onto the new timeline `timeline`; what it holds now is kept as the new
    /// database `kept_db_id`.
    RestoreDb {
        tenant: ResourceName,
        db: ResourceName,
        time: Option<Timestamp>,
        lsn: Option<String>,
        timeline: String,
        kept_db_id: Uuid,
    },
    /// Reset a branch to its parent's data as it is now, onto the new timeline `timeline`;
    /// what it holds now is kept as the new database `kept_db_id`.
    ResetDb {
        tenant: ResourceName,
        db: ResourceName,
        timeline: String,
        kept_db_id: Uuid,
    },
    /// Turn high availability on or off (a standby on another worker while it runs).
    SetHa {
        tenant: ResourceName,
        db: ResourceName,
        enabled: bool,
    },
    /// Workers, the Gateway and the reconciler: see [`crate::lifecycle`].
    Lifecycle(Lifecycle),
}

/// Decides one command against `state`: its events, and what it answers besides them.
pub fn decide(
    state: &State,
    cx: &mut Context<'_>,
    meta: &CommandMeta,
    command: &Command,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let drafts = match command {
        Command::Bootstrap {
            key_id,
            secret_hash,
        } => accounts::bootstrap(state, key_id, secret_hash)?,
        Command::SetServiceToken { secret_hash } => accounts::set_service_token(state, secret_hash),
        Command::CreateAccount {
            account_id,
            name,
            email,
        } => accounts::create(state, meta, *account_id, name, email.as_ref())?,
        Command::SetContact { email, name } => accounts::set_contact(state, meta, email, name)?,
        Command::DeleteAccount => accounts::delete(state, meta)?,
        Command::IssueKey {
            account,
            key_id,
            secret_hash,
            scope,
            permissions,
            expires_at,
            name,
        } => keys::issue(
            state,
            meta,
            keys::Issue {
                account: *account,
                key_id,
                secret_hash,
                scope,
                permissions,
                expires_at: *expires_at,
                name,
            },
        )?,
        Command::RotateKey { secret_hash } => keys::rotate(state, meta, secret_hash)?,
        Command::RevokeKey { key_id } => keys::revoke(state, meta, key_id.as_deref())?,
        Command::CreateTenant {
            tenant_id,
            account,
            name,
            pg_user,
            pg_password,
            verifier,
        } => tenants::create(
            state,
            meta,
            tenants::Create {
                tenant_id: *tenant_id,
                account: *account,
                name,
                pg_user,
                pg_password,
                verifier,
            },
        )?,
        Command::ResetTenantPassword {
            tenant,
            tenant_id,
            pg_password,
            verifier,
        } => tenants::reset_password(state, meta, tenant, *tenant_id, pg_password, verifier)?,
        Command::SetTenantVerifier {
            tenant_id,
            verifier,
        } => tenants::set_verifier(state, meta, *tenant_id, verifier)?,
        Command::DeleteTenant { tenant, cascade } => {
            tenants::delete(state, meta, tenant, *cascade)?
        }
        Command::CreateDb {
            db_id,
            tenant,
            name,
            size,
            timeline,
            parent,
            at,
            ha,
        } => dbs::create(
            state,
            cx,
            meta,
            dbs::Create {
                db_id: *db_id,
                tenant,
                name,
                size,
                timeline,
                parent: parent.as_ref(),
                at: *at,
                ha: *ha,
            },
        )?,
        Command::DeleteDb { tenant, db } => dbs::delete(state, meta, tenant, db)?,
        Command::ResetDb {
            tenant,
            db,
            timeline,
            kept_db_id,
        } => dbs::reset(state, meta, tenant, db, timeline, *kept_db_id)?,
        Command::SetHa {
            tenant,
            db,
            enabled,
        } => dbs::set_ha(state, cx, meta, tenant, db, *enabled)?,
        Command::RestoreDb {
            tenant,
            db,
            time,
            lsn,
            timeline,
            kept_db_id,
        } => dbs::restore(
            state,
            cx,
            meta,
            dbs::Restore {
                tenant,
                db,
                time: *time,
                lsn: lsn.as_deref(),
                timeline,
                kept_db_id: *kept_db_id,
            },
        )?,
        Command::Lifecycle(command) => return lifecycle::decide(state, cx, meta, command),
    };
    Ok((drafts, Answer::None))
}

/// The live key behind an API call.
fn caller<'s>(state: &'s State, meta: &CommandMeta) -> Result<&'s ApiKey, Rejection> {
    match &meta.actor {
        Actor::ApiKey(id) => state
            .api_keys
            .get(id)
            .filter(|k| k.revoked_at.is_none())
            .map(|k| &**k)
            .ok_or(Rejection::CallerGone),
        Actor::Service | Actor::System => Err(forbidden(
            "api_key_required",
            "this operation is for API keys",
        )),
    }
}

/// The caller's own account, for account-scoped operations.
fn own_account(key: &ApiKey) -> Result<Uuid, Rejection> {
    match key.scope {
        KeyScope::Account(a) => Ok(a),
        _ => Err(forbidden(
            "account_key_required",
            "this operation needs a key with account scope",
        )),
    }
}

/// What an event about `key` concerns: its account, and its tenant for tenant keys.
fn key_subject(state: &State, key: &ApiKey) -> Subject {
    match key.tenant().and_then(|t| state.tenants.get(&t)) {
        Some(t) => Subject::tenant(t),
        None => Subject {
            account: key.account(),
            ..Subject::default()
        },
    }
}
