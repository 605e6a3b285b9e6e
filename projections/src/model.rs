//! The materialized objects. Plain data: the service decides what they mean.

use serde::{Deserialize, Serialize};
use spg99_events::{KeyScope, Permissions, Sealed, SecretHash, Timestamp};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub contact_name: Option<String>,
    pub created_at: Timestamp,
    /// Deletion was asked for; the account disappears once its tenants are gone.
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub scope: KeyScope,
    pub permissions: Permissions,
    pub secret_hash: SecretHash,
    pub expires_at: Option<Timestamp>,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    /// The account the key belongs to; `None` for global keys.
    pub fn account(&self) -> Option<Uuid> {
        match self.scope {
            KeyScope::Global => None,
            KeyScope::Account(a) | KeyScope::Tenant { account: a, .. } => Some(a),
        }
    }

    /// The tenant the key is limited to, for tenant keys.
    pub fn tenant(&self) -> Option<Uuid> {
        match self.scope {
            KeyScope::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub account: Uuid,
    pub name: String,
    pub pg_user: String,
    pub pg_password: Sealed,
    pub created_at: Timestamp,
    /// Deletion was asked for; the tenant disappears once its databases are gone.
    pub deleting: bool,
}

/// A database's lifecycle state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Deleting,
    Failed,
}

impl DbState {
    pub fn as_str(self) -> &'static str {
        match self {
            DbState::Stopped => "stopped",
            DbState::Starting => "starting",
            DbState::Running => "running",
            DbState::Stopping => "stopping",
            DbState::Deleting => "deleting",
            DbState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Db {
    pub id: Uuid,
    pub tenant: Uuid,
    pub name: String,
    pub size: String,
    pub timeline: String,
    pub created_at: Timestamp,
    pub state: DbState,
}

/// The first answer to an idempotent request, kept for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub request_hash: [u8; 32],
    pub status: u16,
    pub body: Sealed,
    pub recorded_at: Timestamp,
}
