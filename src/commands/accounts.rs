//! The platform's bootstrap and service token, and accounts.

use spg99_events::{Actor, Event, KeyScope, Permissions, SecretHash};
use spg99_projections::State;
use uuid::Uuid;

use super::{caller, own_account};
use crate::access::{self, Permission};
use crate::decision::{conflict, forbidden, CommandMeta, Draft, Rejection};
use crate::domain::{AccountName, Email};

/// First start only: the platform's first global key.
pub(super) fn bootstrap(
    state: &State,
    key_id: &str,
    secret_hash: &SecretHash,
) -> Result<Vec<Draft>, Rejection> {
    if !state.api_keys.is_empty() {
        return Err(conflict(
            "already_bootstrapped",
            "the platform already has API keys",
        ));
    }
    Ok(vec![Draft::global(Event::ApiKeyIssued {
        key_id: key_id.to_owned(),
        scope: KeyScope::Global,
        permissions: Permissions::ALL,
        secret_hash: *secret_hash,
        expires_at: None,
        name: Some("bootstrap".into()),
    })])
}

pub(super) fn set_service_token(state: &State, secret_hash: &SecretHash) -> Vec<Draft> {
    if state.service_token == Some(*secret_hash) {
        return vec![];
    }
    vec![Draft::global(Event::ServiceTokenSet {
        secret_hash: *secret_hash,
    })]
}

pub(super) fn create(
    state: &State,
    meta: &CommandMeta,
    account_id: Uuid,
    name: &AccountName,
    email: Option<&Email>,
) -> Result<Vec<Draft>, Rejection> {
    if meta.actor != Actor::System && caller(state, meta)?.scope != KeyScope::Global {
        return Err(forbidden(
            "global_key_required",
            "this operation needs a key with global scope",
        ));
    }
    if state.accounts.contains_key(&account_id) {
        return Err(conflict(
            "account_exists",
            format!("account {account_id} already exists"),
        ));
    }
    Ok(vec![Draft::account(
        account_id,
        Event::AccountCreated {
            account_id,
            name: name.as_str().to_owned(),
            email: email.map(|e| e.as_str().to_owned()),
        },
    )])
}

/// Saves the calling key's account contact.
pub(super) fn set_contact(
    state: &State,
    meta: &CommandMeta,
    email: &Email,
    name: &Option<String>,
) -> Result<Vec<Draft>, Rejection> {
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

/// Deletes the calling key's account.
pub(super) fn delete(state: &State, meta: &CommandMeta) -> Result<Vec<Draft>, Rejection> {
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

/// The account, existing and not being deleted.
pub(super) fn live_account(state: &State, account: Uuid) -> Result<(), Rejection> {
    match state.accounts.get(&account) {
        None => Err(Rejection::NotFound { what: "account" }),
        Some(a) if a.deleting => Err(conflict("account_deleting", "the account is being deleted")),
        Some(_) => Ok(()),
    }
}
