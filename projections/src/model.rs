//! The materialized objects. Plain data: the service decides what they mean.

use serde::{Deserialize, Serialize};
use spg99_events::{KeyScope, Permissions, SecretHash, Timestamp};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub created_at: Timestamp,
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
}
