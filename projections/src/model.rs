//! The materialized objects. Plain data: the service decides what they mean.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
pub use smol_str::SmolStr;
use spg99_events::{KeyScope, LoadBand, Permissions, Sealed, SecretHash, Timestamp};
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
    /// The role's SCRAM-SHA-256 verifier, sealed; `None` only for a tenant created before
    /// verifiers existed, until the start that gives it one.
    pub verifier: Option<Sealed>,
    /// Which credentials are current: 0 at creation, one more at each password reset.
    pub credentials: u64,
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
    /// Inline up to 23 bytes (see [`SmolStr`]): no heap string per database for a name or a
    /// profile of the usual length.
    pub name: SmolStr,
    pub size: SmolStr,
    pub timeline: String,
    pub created_at: Timestamp,
    pub state: DbState,
    /// The writer placed for this database (starting, serving or stopping); `None` when
    /// no compute holds it.
    ///
    /// Boxed, like the handoff's candidate: most databases have neither, and a `Writer` inline
    /// is 88 bytes of every database's record (a box encodes as what it holds).
    pub writer: Option<Box<Writer>>,
    /// The highest writer term handed out: every start and every candidate gets the next.
    pub writer_term: u64,
    /// Deadline of the start or stop in progress.
    pub phase_started_at: Option<Timestamp>,
    pub phase_deadline_at: Option<Timestamp>,
    /// Starts that failed in a row; reset by a successful start.
    pub failed_starts: u32,
    /// Why the database is `failed`, or why its last start failed.
    pub failure_reason: Option<String>,
    pub scale: Scale,
    pub freeze_new_checkouts: bool,
    /// Leases granted under an older epoch are refused on renewal (fencing).
    pub lease_control_epoch: u64,
    pub autoscale_cooldown_until: Option<Timestamp>,
    /// The Gateway's leases on this database.
    pub leases: BTreeSet<Uuid>,
    /// Running with no lease since then; `None` while leased or not running.
    pub idle_since: Option<Timestamp>,
    /// The last recorded load.
    pub cpu_milli: u32,
    pub active_connections: u32,
    pub load_band: LoadBand,
    pub load_band_since: Timestamp,
    /// When the serving writer started serving on its current profile (billing).
    pub running_since: Option<Timestamp>,
    /// The worker whose own storage holds the database's data: it starts there, and only
    /// there. `None` until a worker that keeps data has served it (simulated compute keeps
    /// none, so its databases start wherever there is room).
    pub data_on: Option<String>,
}

/// The writer of a database on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub worker_id: String,
    pub profile: String,
    pub term: u64,
    /// Set once it serves.
    pub backend_addr: Option<String>,
    /// The tenant's credentials its role has (see [`Tenant::credentials`]).
    pub credentials: u64,
}

/// The handoff of a database to another profile: [`Handoff`]'s fields, kept in a box only while
/// they differ from a stable database's (most databases never have one: 88 bytes less of each
/// record). Reads see the fields through `Deref`; changes go through [`Scale::edit`]. Compares,
/// encodes and decodes as the fields themselves, so snapshots did not change.
#[derive(Clone, Default)]
pub struct Scale(Option<Box<Handoff>>);

/// What a stable database's handoff holds.
static STABLE: Handoff = Handoff {
    stage: ScaleStage::Stable,
    target_profile: None,
    candidate: None,
    phase_started_at: None,
    phase_deadline_at: None,
    failure_reason: None,
};

impl Scale {
    pub fn new(handoff: Handoff) -> Scale {
        let mut scale = Scale(Some(Box::new(handoff)));
        scale.settle();
        scale
    }

    /// The fields, to change; call [`Scale::settle`] after, or use [`Scale::take_candidate`].
    pub fn edit(&mut self) -> &mut Handoff {
        self.0.get_or_insert_with(|| Box::new(Handoff::default()))
    }

    /// Drops the box once the fields are a stable database's again.
    pub fn settle(&mut self) {
        if self.0.as_deref() == Some(&STABLE) {
            self.0 = None;
        }
    }

    pub fn take_candidate(&mut self) -> Option<Box<Writer>> {
        let candidate = self.0.as_mut().and_then(|h| h.candidate.take());
        self.settle();
        candidate
    }
}

impl std::ops::Deref for Scale {
    type Target = Handoff;

    fn deref(&self) -> &Handoff {
        self.0.as_deref().unwrap_or(&STABLE)
    }
}

impl PartialEq for Scale {
    fn eq(&self, other: &Scale) -> bool {
        **self == **other
    }
}

impl Eq for Scale {}

impl std::fmt::Debug for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Scale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scale, D::Error> {
        Handoff::deserialize(d).map(Scale::new)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub stage: ScaleStage,
    pub target_profile: Option<String>,
    pub candidate: Option<Box<Writer>>,
    pub phase_started_at: Option<Timestamp>,
    pub phase_deadline_at: Option<Timestamp>,
    pub failure_reason: Option<String>,
}

/// The handoff stage, as `scale_state` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleStage {
    #[default]
    Stable,
    PreparingCandidate,
    Cutover,
    Failed,
}

impl ScaleStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleStage::Stable => "STABLE",
            ScaleStage::PreparingCandidate => "PREPARING_CANDIDATE",
            ScaleStage::Cutover => "CUTOVER",
            ScaleStage::Failed => "FAILED",
        }
    }

    /// A handoff is under way.
    pub fn in_progress(self) -> bool {
        matches!(self, ScaleStage::PreparingCandidate | ScaleStage::Cutover)
    }
}

/// A compute host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub address: String,
    /// How many writers (serving, candidate or retiring) it can hold.
    pub capacity: u32,
    pub profiles: Vec<String>,
    /// Changes when the worker process restarts.
    pub instance: String,
    pub registered_at: Timestamp,
    /// Declared lost: it holds nothing and gets no work until it registers again.
    pub lost_at: Option<Timestamp>,
}

/// A Gateway's route to a running database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: Uuid,
    pub db_id: Uuid,
    pub epoch: u64,
    pub ttl_ms: u64,
    pub granted_at: Timestamp,
}

/// Why a writer that no longer serves must still be shut down by its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retire {
    /// A writer that served (replaced by a handoff, or its database deleted): `stop`.
    Stop,
    /// A candidate that never served: `abort`.
    Abort,
}

/// Compute used by one database in one billing period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tenant_id: Uuid,
    /// Names as they were (the database may be gone, a name reused).
    pub tenant: String,
    pub db: String,
    /// Microseconds of serving writer, by profile.
    pub by_profile: BTreeMap<String, i64>,
}

/// The first answer to an idempotent request, kept for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub request_hash: [u8; 32],
    pub status: u16,
    pub body: Sealed,
    pub recorded_at: Timestamp,
}
