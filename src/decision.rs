//! The vocabulary of decisions, shared by every command family and the lifecycle: who
//! asks ([`CommandMeta`]), what an event will concern ([`Subject`]), an event before the
//! committer numbers it ([`Draft`]), and why a command is refused ([`Rejection`]).
//!
//! A leaf: it imports nothing else of this crate, so that `access`, `commands` and
//! `lifecycle` can all speak it without importing each other.

use spg99_events::{Actor, Event};
use spg99_projections::Tenant;
use uuid::Uuid;

/// Who submits a command and on behalf of which request.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub actor: Actor,
    pub request_id: String,
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
            tenant: Some(t.name.to_string()),
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
    /// Well formed, but not something that can be done (422 with its own code).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
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

pub(crate) fn gone(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Gone {
        code,
        message: message.into(),
    }
}

pub(crate) fn busy(
    code: &'static str,
    message: impl Into<String>,
    retry_after_secs: u32,
) -> Rejection {
    Rejection::Busy {
        code,
        message: message.into(),
        retry_after_secs,
    }
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field,
        message: message.into(),
    }
}
