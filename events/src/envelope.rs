//! The envelope: what the log knows about every event besides the event itself.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;

/// Microseconds since the Unix epoch, UTC. Stamped by the committer when a batch is formed,
/// never read by a projection from a clock, so replay sees exactly the time the event got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// This time plus a number of seconds, saturating instead of overflowing.
    pub const fn plus_secs(self, secs: i64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A public API call, by the id of the key that made it.
    ApiKey(String),
    /// The Gateway or a worker, through the internal API with the service token.
    Service,
    /// The control plane itself: bootstrap, the reconciler.
    System,
}

/// One event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Position in the log: gapless, from 1. Also the SSE event id.
    pub seq: u64,
    pub at: Timestamp,
    pub actor: Actor,
    /// The request that caused it (the client's `X-Request-Id` or one generated for it).
    pub request_id: String,
    /// The account the event concerns, if any.
    pub account: Option<Uuid>,
    /// The tenant the event concerns, by name (as users know it; a name can be reused once
    /// its tenant is gone)...
    pub tenant: Option<String>,
    /// ...and by id (never reused).
    pub tenant_id: Option<Uuid>,
    /// The database the event concerns, if any.
    pub db_id: Option<Uuid>,
    pub event: Event,
}
