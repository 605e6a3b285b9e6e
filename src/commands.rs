//! Commands and the rules that decide them.
//!
//! `decide(state, meta, command)` is where every business rule lives: it reads the state the
//! command will be applied to, and either rejects the command or returns the events that
//! record it. It reads no clock and draws no random number: ids and secrets are made before
//! the command is submitted, and the committer stamps the time on the whole batch.

use spg99_events::{Actor, Event, KeyScope, Permissions, SecretHash};
use spg99_projections::State;
use uuid::Uuid;

use crate::domain::{AccountName, Email};

/// Who submits a command and on behalf of which request.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub actor: Actor,
    pub request_id: String,
}

#[derive(Debug, Clone)]
pub enum Command {
    /// First start only: the platform's first global key.
    Bootstrap {
        key_id: String,
        secret_hash: SecretHash,
    },
    /// Set the internal service token (first start, or a new one given by the operator).
    SetServiceToken { secret_hash: SecretHash },
    CreateAccount {
        account_id: Uuid,
        name: AccountName,
        email: Option<Email>,
    },
}

/// An event before the committer gives it a `seq` and a time.
#[derive(Debug, Clone)]
pub struct Draft {
    pub account: Option<Uuid>,
    pub tenant: Option<String>,
    pub db_id: Option<Uuid>,
    pub event: Event,
}

impl Draft {
    fn global(event: Event) -> Self {
        Draft {
            account: None,
            tenant: None,
            db_id: None,
            event,
        }
    }
}

/// Why a command was refused. Each maps to one stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the calling key no longer exists or was revoked")]
    CallerGone,
    #[error("this key's scope does not allow {action}")]
    OutOfScope { action: &'static str },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
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
                return Err(Rejection::Conflict {
                    code: "already_bootstrapped",
                    message: "the platform already has API keys".into(),
                });
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
            require_global(state, meta, "creating accounts")?;
            if state.accounts.contains_key(account_id) {
                return Err(Rejection::Conflict {
                    code: "account_exists",
                    message: format!("account {account_id} already exists"),
                });
            }
            Ok(vec![Draft {
                account: Some(*account_id),
                tenant: None,
                db_id: None,
                event: Event::AccountCreated {
                    account_id: *account_id,
                    name: name.as_str().to_owned(),
                    email: email.as_ref().map(|e| e.as_str().to_owned()),
                },
            }])
        }
    }
}

/// The caller must be a live global key (or the system itself).
fn require_global(
    state: &State,
    meta: &CommandMeta,
    action: &'static str,
) -> Result<(), Rejection> {
    match &meta.actor {
        Actor::System => Ok(()),
        Actor::Service => Err(Rejection::OutOfScope { action }),
        Actor::ApiKey(id) => {
            let key = state
                .api_keys
                .get(id)
                .filter(|k| k.revoked_at.is_none())
                .ok_or(Rejection::CallerGone)?;
            match key.scope {
                KeyScope::Global => Ok(()),
                _ => Err(Rejection::OutOfScope { action }),
            }
        }
    }
}
