//! API keys: issue, rotate, revoke.

use spg99_events::{Event, KeyScope, Permissions, SecretHash, Timestamp};
use spg99_projections::State;
use uuid::Uuid;

use super::accounts::live_account;
use super::{caller, key_subject, ScopeRequest};
use crate::access;
use crate::decision::{conflict, forbidden, CommandMeta, Draft, Rejection, Subject};

/// What a new key is asked to be.
pub(super) struct Issue<'c> {
    pub account: Uuid,
    pub key_id: &'c str,
    pub secret_hash: &'c SecretHash,
    pub scope: &'c ScopeRequest,
    pub permissions: &'c Permissions,
    pub expires_at: Option<Timestamp>,
    pub name: &'c Option<String>,
}

/// A key issues keys of its own scope or narrower, with permissions it holds, expiring no
/// later than itself; tenant keys issue none.
pub(super) fn issue(
    state: &State,
    meta: &CommandMeta,
    new: Issue<'_>,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    let account = new.account;
    if matches!(key.scope, KeyScope::Tenant { .. }) {
        return Err(forbidden(
            "tenant_key_cannot_issue",
            "tenant-scoped keys cannot issue keys",
        ));
    }
    if !access::sees_account(key, account) {
        return Err(Rejection::NotFound { what: "account" });
    }
    live_account(state, account)?;
    let (scope, subject) = match new.scope {
        ScopeRequest::Global if key.scope == KeyScope::Global => {
            (KeyScope::Global, Subject::account(account))
        }
        ScopeRequest::Global => {
            return Err(forbidden(
                "scope_escalation",
                "a key can only issue keys of its own scope or narrower",
            ))
        }
        ScopeRequest::Account => (KeyScope::Account(account), Subject::account(account)),
        ScopeRequest::Tenant(name) => {
            let t = access::tenant(state, key, name.as_str())?;
            if t.account != account {
                return Err(Rejection::NotFound { what: "tenant" });
            }
            (
                KeyScope::Tenant {
                    account,
                    tenant: t.id,
                },
                Subject::tenant(t),
            )
        }
    };
    if let Some(p) = access::first_missing(new.permissions, &key.permissions) {
        return Err(forbidden(
            "permission_escalation",
            format!(
                "a key can only issue keys with permissions it holds itself; it lacks {}",
                p.name()
            ),
        ));
    }
    if let Some(limit) = key.expires_at {
        if new.expires_at.is_none_or(|e| e > limit) {
            return Err(Rejection::Invalid {
                field: "expires_at",
                message: "must be set, and not later than the calling key's own expiry".into(),
            });
        }
    }
    if state.api_keys.contains_key(new.key_id) {
        return Err(conflict("key_exists", "key id already in use; retry"));
    }
    Ok(vec![Draft::new(
        subject,
        Event::ApiKeyIssued {
            key_id: new.key_id.to_owned(),
            scope,
            permissions: *new.permissions,
            secret_hash: *new.secret_hash,
            expires_at: new.expires_at,
            name: new.name.clone(),
        },
    )])
}

/// A new secret for the calling key.
pub(super) fn rotate(
    state: &State,
    meta: &CommandMeta,
    secret_hash: &SecretHash,
) -> Result<Vec<Draft>, Rejection> {
    let key = caller(state, meta)?;
    Ok(vec![Draft::new(
        key_subject(state, key),
        Event::ApiKeyRotated {
            key_id: key.id.clone(),
            secret_hash: *secret_hash,
        },
    )])
}

/// Revokes a key the caller may manage (itself when `key_id` is `None`); revoking a revoked
/// key changes nothing.
pub(super) fn revoke(
    state: &State,
    meta: &CommandMeta,
    key_id: Option<&str>,
) -> Result<Vec<Draft>, Rejection> {
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
