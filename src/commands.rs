//! Commands and the rules that decide them.
//!
//! `decide(state, meta, command)` is where every business rule lives: it reads the state the
//! command will be applied to, and either rejects the command or returns the events that
//! record it. It reads no clock and draws no random number: ids and secrets are made before
//! the command is submitted, and the committer stamps the time on the whole batch.
//!
//! Scope and permission checks are made here too, against the calling key as it is in that
//! state, so a key revoked a moment ago cannot slip a command in.

use spg99_events::{Actor, Event, KeyScope, Permissions, Sealed, SecretHash, Timestamp};
use spg99_projections::{ApiKey, DbState, State, Tenant};
use uuid::Uuid;

use crate::access::{self, Permission};
use crate::catalog::Size;
use crate::domain::{AccountName, Email, ResourceName};

/// Who submits a command and on behalf of which request.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub actor: Actor,
    pub request_id: String,
}

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
    CreateDb {
        db_id: Uuid,
        tenant: ResourceName,
        name: ResourceName,
        size: Size,
        timeline: String,
    },
    DeleteDb {
        tenant: ResourceName,
        db: ResourceName,
    },
    /// Workers, the Gateway and the reconciler: see [`crate::lifecycle`].
    Lifecycle(crate::lifecycle::Lifecycle),
}

/// What an event concerns: the envelope's account, tenant and database.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub account: Option<Uuid>,
    pub tenant: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub db_id: Option<Uuid>,
}

impl Subject {
    pub(crate) fn account(account: Uuid) -> Self {
        Subject {
            account: Some(account),
            ..Subject::default()
        }
    }

    pub(crate) fn tenant(t: &Tenant) -> Self {
        Subject {
            account: Some(t.account),
            tenant: Some(t.name.clone()),
            tenant_id: Some(t.id),
            db_id: None,
        }
    }

    pub(crate) fn db(t: &Tenant, db_id: Uuid) -> Self {
        Subject {
            db_id: Some(db_id),
            ..Subject::tenant(t)
        }
    }
}

/// An event before the committer gives it a `seq` and a time.
#[derive(Debug, Clone)]
pub struct Draft {
    pub subject: Subject,
    pub event: Event,
}

impl Draft {
    pub(crate) fn new(subject: Subject, event: Event) -> Self {
        Draft { subject, event }
    }

    pub(crate) fn global(event: Event) -> Self {
        Draft::new(Subject::default(), event)
    }

    pub(crate) fn account(account: Uuid, event: Event) -> Self {
        Draft::new(Subject::account(account), event)
    }
}

/// Why a command was refused. Each maps to one stable API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the calling key no longer exists or was revoked")]
    CallerGone,
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("this key lacks the permission {permission}")]
    MissingPermission { permission: &'static str },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Not found, with a code more precise than `not_found` (an expired lease, an unknown
    /// worker), so that the caller knows what to do next.
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    /// Not now: retry after a while (checkouts frozen by a handoff, no worker free).
    #[error("{message}")]
    Busy {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
}

pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Forbidden {
        code,
        message: message.into(),
    }
}

pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Conflict {
        code,
        message: message.into(),
    }
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

/// Decides one command against `state`.
pub fn decide(
    state: &State,
    meta: &CommandMeta,
    command: &Command,
) -> Result<Vec<Draft>, Rejection> {
    match command {
        Command::Bootstrap {
            key_id,
            secret_hash,
        } => {
            if !state.api_keys.is_empty() {
                return Err(conflict(
                    "already_bootstrapped",
                    "the platform already has API keys",
                ));
            }
            Ok(vec![Draft::global(Event::ApiKeyIssued {
                key_id: key_id.clone(),
                scope: KeyScope::Global,
                permissions: Permissions::ALL,
                secret_hash: *secret_hash,
                expires_at: None,
                name: Some("bootstrap".into()),
            })])
        }
        Command::SetServiceToken { secret_hash } => {
            if state.service_token == Some(*secret_hash) {
                return Ok(vec![]);
            }
            Ok(vec![Draft::global(Event::ServiceTokenSet {
                secret_hash: *secret_hash,
            })])
        }
        Command::CreateAccount {
            account_id,
            name,
            email,
        } => {
            if meta.actor != Actor::System && caller(state, meta)?.scope != KeyScope::Global {
                return Err(forbidden(
                    "global_key_required",
                    "this operation needs a key with global scope",
                ));
            }
            if state.accounts.contains_key(account_id) {
                return Err(conflict(
                    "account_exists",
                    format!("account {account_id} already exists"),
                ));
            }
            Ok(vec![Draft::account(
                *account_id,
                Event::AccountCreated {
                    account_id: *account_id,
                    name: name.as_str().to_owned(),
                    email: email.as_ref().map(|e| e.as_str().to_owned()),
                },
            )])
        }
        Command::SetContact { email, name } => {
            let account = own_account(caller(state, meta)?)?;
            live_account(state, account)?;
            Ok(vec![Draft::account(
                account,
                Event::AccountContactSet {
                    account_id: account,
                    email: email.as_str().to_owned(),
                    name: name.clone(),
                },
            )])
        }
        Command::DeleteAccount => {
            let key = caller(state, meta)?;
            let account = own_account(key)?;
            access::require(key, Permission::Delete)?;
            Ok(vec![Draft::account(
                account,
                Event::AccountDeleteRequested {
                    account_id: account,
                },
            )])
        }
        Command::IssueKey {
            account,
            key_id,
            secret_hash,
            scope,
            permissions,
            expires_at,
            name,
        } => {
            let key = caller(state, meta)?;
            if matches!(key.scope, KeyScope::Tenant { .. }) {
                return Err(forbidden(
                    "tenant_key_cannot_issue",
                    "tenant-scoped keys cannot issue keys",
                ));
            }
            if !access::sees_account(key, *account) {
                return Err(Rejection::NotFound { what: "account" });
            }
            live_account(state, *account)?;
            let (scope, subject) = match scope {
                ScopeRequest::Global if key.scope == KeyScope::Global => {
                    (KeyScope::Global, Subject::account(*account))
                }
                ScopeRequest::Global => {
                    return Err(forbidden(
                        "scope_escalation",
                        "a key can only issue keys of its own scope or narrower",
                    ))
                }
                ScopeRequest::Account => (KeyScope::Account(*account), Subject::account(*account)),
                ScopeRequest::Tenant(name) => {
                    let t = access::tenant(state, key, name.as_str())?;
                    if t.account != *account {
                        return Err(Rejection::NotFound { what: "tenant" });
                    }
                    (
                        KeyScope::Tenant {
                            account: *account,
                            tenant: t.id,
                        },
                        Subject::tenant(t),
                    )
                }
            };
            if let Some(p) = access::first_missing(permissions, &key.permissions) {
                return Err(forbidden(
                    "permission_escalation",
                    format!(
                        "a key can only issue keys with permissions it holds itself; it lacks {}",
                        p.name()
                    ),
                ));
            }
            if let Some(limit) = key.expires_at {
                if expires_at.is_none_or(|e| e > limit) {
                    return Err(Rejection::Invalid {
                        field: "expires_at",
                        message: "must be set, and not later than the calling key's own expiry"
                            .into(),
                    });
                }
            }
            if state.api_keys.contains_key(key_id) {
                return Err(conflict("key_exists", "key id already in use; retry"));
            }
            Ok(vec![Draft::new(
                subject,
                Event::ApiKeyIssued {
                    key_id: key_id.clone(),
                    scope,
                    permissions: *permissions,
                    secret_hash: *secret_hash,
                    expires_at: *expires_at,
                    name: name.clone(),
                },
            )])
        }
        Command::RotateKey { secret_hash } => {
            let key = caller(state, meta)?;
            Ok(vec![Draft::new(
                key_subject(state, key),
                Event::ApiKeyRotated {
                    key_id: key.id.clone(),
                    secret_hash: *secret_hash,
                },
            )])
        }
        Command::RevokeKey { key_id } => {
            let key = caller(state, meta)?;
            let target = match key_id {
                None => key,
                Some(id) => state
                    .api_keys
                    .get(id)
                    .filter(|t| access::may_manage(key, t))
                    .ok_or(Rejection::NotFound { what: "api key" })?,
            };
            if target.revoked_at.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![Draft::new(
                key_subject(state, target),
                Event::ApiKeyRevoked {
                    key_id: target.id.clone(),
                },
            )])
        }
        Command::CreateTenant {
            tenant_id,
            account,
            name,
            pg_user,
            pg_password,
            verifier,
        } => {
            let key = caller(state, meta)?;
            let account = match (key.scope, account) {
                (KeyScope::Global, Some(a)) => *a,
                (KeyScope::Global, None) => {
                    return Err(Rejection::Invalid {
                        field: "account",
                        message: "a global key must name the account the tenant belongs to".into(),
                    })
                }
                (KeyScope::Account(a), None) => a,
                (KeyScope::Account(a), Some(b)) if a == *b => a,
                (KeyScope::Account(_), Some(_)) => {
                    return Err(Rejection::NotFound { what: "account" })
                }
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
            if state.tenants_by_name.contains_key(name.as_str()) {
                return Err(conflict(
                    "tenant_exists",
                    format!("a tenant named {:?} already exists", name.as_str()),
                ));
            }
            if state.tenants_by_pg_user.contains_key(pg_user)
                || state.tenants.contains_key(tenant_id)
            {
                return Err(conflict(
                    "tenant_id_taken",
                    "generated id already in use; retry",
                ));
            }
            let subject = Subject {
                account: Some(account),
                tenant: Some(name.as_str().to_owned()),
                tenant_id: Some(*tenant_id),
                db_id: None,
            };
            Ok(vec![
                Draft::new(
                    subject.clone(),
                    Event::TenantCreated {
                        tenant_id: *tenant_id,
                        account_id: account,
                        name: name.as_str().to_owned(),
                        pg_user: pg_user.clone(),
                        pg_password: pg_password.clone(),
                    },
                ),
                Draft::new(
                    subject,
                    Event::TenantVerifierSet {
                        tenant_id: *tenant_id,
                        verifier: verifier.clone(),
                    },
                ),
            ])
        }
        Command::ResetTenantPassword {
            tenant,
            tenant_id,
            pg_password,
            verifier,
        } => {
            let key = caller(state, meta)?;
            let t = access::tenant(state, key, tenant.as_str())?;
            if t.id != *tenant_id {
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
        Command::SetTenantVerifier {
            tenant_id,
            verifier,
        } => {
            if meta.actor != Actor::System {
                return Err(forbidden(
                    "system_only",
                    "only the control plane itself gives old tenants their verifier",
                ));
            }
            match state.tenants.get(tenant_id) {
                Some(t) if t.verifier.is_none() => Ok(vec![Draft::new(
                    Subject::tenant(t),
                    Event::TenantVerifierSet {
                        tenant_id: *tenant_id,
                        verifier: verifier.clone(),
                    },
                )]),
                _ => Ok(vec![]),
            }
        }
        Command::DeleteTenant { tenant, cascade } => {
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
        Command::CreateDb {
            db_id,
            tenant,
            name,
            size,
            timeline,
        } => {
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
            if state.dbs.contains_key(db_id) {
                return Err(conflict(
                    "db_id_taken",
                    "generated id already in use; retry",
                ));
            }
            Ok(vec![Draft::new(
                Subject::db(t, *db_id),
                Event::DbCreated {
                    db_id: *db_id,
                    tenant_id: t.id,
                    name: name.as_str().to_owned(),
                    size: size.name().to_owned(),
                    timeline: timeline.clone(),
                },
            )])
        }
        Command::DeleteDb { tenant, db } => {
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
        Command::Lifecycle(_) => Err(forbidden(
            "lifecycle_command",
            "lifecycle commands are decided by crate::lifecycle",
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

fn live_account(state: &State, account: Uuid) -> Result<(), Rejection> {
    match state.accounts.get(&account) {
        None => Err(Rejection::NotFound { what: "account" }),
        Some(a) if a.deleting => Err(conflict("account_deleting", "the account is being deleted")),
        Some(_) => Ok(()),
    }
}
