//! The internal API (`/internal/v1`) on the wire: what the Gateway and the workers send, and
//! what the control plane answers. The control plane's routes parse these types, the worker
//! agent and the Gateway send them: one definition, so the two sides cannot disagree. The
//! contract, with the state diagram, is `docs/lifecycle.md`.
//!
//! Requests refuse unknown fields (the control plane answers 400 naming the field); answers
//! accept them, so that a newer control plane can add fields without breaking older agents.
//!
//! [`client`] is the one client of the internal API, which both agents call it with; [`Code`]
//! names the error codes they act on, one definition for the side that answers them and the
//! sides that read them, so that a renamed code is a compile error, not a silent fallback.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod client;
pub mod metrics;
pub mod storage;

/// The compute profiles: a writer's CPU and memory. The control plane places writers by
/// profile and the autoscaler moves them between profiles; the worker runs each profile with
/// its PostgreSQL settings.
pub mod profiles {
    use serde::Serialize;

    #[derive(Debug, Clone, Copy, PartialEq, Serialize)]
    pub struct Profile {
        pub name: &'static str,
        pub vcpu: f32,
        pub memory_mib: u32,
    }

    pub const PROFILES: &[Profile] = &[
        Profile {
            name: "c0.25",
            vcpu: 0.25,
            memory_mib: 1024,
        },
        Profile {
            name: "c0.5",
            vcpu: 0.5,
            memory_mib: 2048,
        },
        Profile {
            name: "c1",
            vcpu: 1.0,
            memory_mib: 4096,
        },
        Profile {
            name: "c2",
            vcpu: 2.0,
            memory_mib: 8192,
        },
        Profile {
            name: "c4",
            vcpu: 4.0,
            memory_mib: 16384,
        },
        Profile {
            name: "c8",
            vcpu: 8.0,
            memory_mib: 32768,
        },
    ];

    impl Profile {
        /// PostgreSQL's `max_connections` on this profile: one per 10 MiB, at least 104.
        pub fn max_connections(&self) -> u32 {
            (self.memory_mib / 10).max(104)
        }

        /// Backend connections one Gateway's pooler keeps to a database on this profile at
        /// most: three quarters of `max_connections`, the rest for the session port.
        pub fn pool_size(&self) -> u32 {
            self.max_connections() * 3 / 4
        }
    }

    pub fn profile(name: &str) -> Option<&'static Profile> {
        PROFILES.iter().find(|p| p.name == name)
    }
}

// ---- workers ----

/// `POST /internal/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub id: String,
    /// Where the worker can be reached (informational; writers report their own address).
    pub address: String,
    /// How many writers (serving, candidate or being shut down) it can hold.
    pub capacity: u32,
    /// The compute profiles it runs.
    pub profiles: Vec<String>,
    /// Changes when the worker process restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub worker_id: String,
    pub heartbeat_interval_ms: u64,
    pub worker_timeout_ms: u64,
    /// The storage repository every database is kept in; `None`: data stays on the worker
    /// that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<storage::Storage>,
}

/// `POST /internal/v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub loads: Vec<Load>,
}

/// The load of one database a worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub db_id: Uuid,
    /// Fraction of the writer's profile in use (1.0 = all of its vCPUs).
    pub cpu: f64,
    /// Client sessions connected to the writer.
    #[serde(default)]
    pub active_connections: u32,
    /// With a repository: the writer's WAL archiving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archiving>,
    /// A writer with high availability: the standbys connected to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Replica>,
}

/// A standby streaming from a writer, as the writer sees it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// The standby's term (its application name is [`standby_name`] of it).
    pub standby_term: u64,
    /// `streaming`, `catchup`, `startup`, ...
    pub state: String,
    /// `sync`, `async`, `potential`, ...
    pub sync_state: String,
    /// How far the WAL it has flushed is behind the writer's.
    pub lag_bytes: u64,
    /// How long ago it last answered (milliseconds).
    pub reply_age_ms: u64,
}

/// The application name a standby of `term` connects to its writer with: what
/// `synchronous_standby_names` names.
pub fn standby_name(term: u64) -> String {
    format!("spg99_s{term}")
}

/// The term in a standby's application name.
pub fn standby_term(name: &str) -> Option<u64> {
    name.strip_prefix("spg99_s")?.parse().ok()
}

/// How a writer's WAL archiving goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archiving {
    /// When the last WAL segment reached the repository (RFC 3339); none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<String>,
    /// Why archiving fails, when its last attempt failed after its last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How long the oldest WAL not yet in the repository has waited (seconds).
    #[serde(default)]
    pub lag_secs: u64,
}

/// A worker's instructions (the answer to heartbeats and to instruction polls). `I` is
/// [`Instruction`]; an agent may read each as raw JSON first, so that one it does not
/// understand does not hide the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instructions<I = Instruction> {
    pub instructions: Vec<I>,
    /// Names this list: polling with it as `known` waits until the list changes.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Start the writer at this term on `profile`.
    Start,
    /// Stop the writer of this term (fast shutdown: every committed transaction stays).
    Stop,
    /// Prepare a candidate writer at this term on `profile` (a handoff).
    Prepare,
    /// Make the candidate of this term the writer.
    Promote,
    /// Drop the candidate of this term; the old writer keeps serving.
    Abort,
    /// Remove this worker's copy of the database's data (`timeline`).
    Destroy,
    /// Give the serving writer's role the tenant's current verifier (a password reset).
    UpdateRole,
    /// Take a full backup of the serving writer's data into the repository.
    Backup,
    /// Remove the database's data (`timeline`) from the repository.
    Purge,
    /// The serving writer's replication: standbys may connect (`ha`), and its commits wait
    /// for the one `ha.sync_standby_term` names (none: for none).
    Replicate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Prepare => "prepare",
            Op::Promote => "promote",
            Op::Abort => "abort",
            Op::Destroy => "destroy",
            Op::UpdateRole => "update_role",
            Op::Backup => "backup",
            Op::Purge => "purge",
            Op::Replicate => "replicate",
        }
    }
}

/// What a worker must do now. Level-triggered: listed until the report that settles it is
/// recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub op: Op,
    pub db_id: Uuid,
    /// The writer's term (0 for `destroy`, which is about data, not a writer).
    pub writer_term: u64,
    /// The compute profile (`start`, `prepare`, `promote`).
    #[serde(default)]
    pub profile: Option<String>,
    /// The database's data directory name on the worker's storage.
    #[serde(default)]
    pub timeline: Option<String>,
    /// The database's name, its owner's role, and that role's SCRAM-SHA-256 verifier
    /// (`start`, `prepare`, `promote`): the writer makes the role log in with it.
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub pg_user: Option<String>,
    #[serde(default)]
    pub verifier: Option<String>,
    /// `update_role`: which of the tenant's credentials the verifier is (reported back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<u64>,
    /// `backup`: which backup of the database it is (the how-many-th asked for): a second
    /// backup of the same writer is other work than the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u64>,
    /// `start`: make the data directory from the repository first (the newest data is
    /// elsewhere, or a point in the past is wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreFrom>,
    /// High availability: `replicate` (the writer's side), `prepare` of a standby (its side:
    /// `upstream` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSpec>,
}

/// What a writer or a standby needs to replicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSpec {
    /// The password of the role standbys log in to the writer with (`spg99_replicator`).
    pub replication_password: String,
    /// `replicate`: the standby the writer's commits wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_standby_term: Option<u64>,
    /// A standby's `prepare`: the writer it streams from (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// Where a start's data comes from in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFrom {
    /// The timeline (stanza) whose backups and WAL are restored.
    pub timeline: String,
    /// The point to recover to (RFC 3339), or an LSN (`X/Y`); neither: the newest archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// The copy on this worker is the newest: use it when it is there (and restore only
    /// when it is not: a disk replaced).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unless_here: bool,
    /// A branch's first start, on the worker holding the newest copy of its parent (this
    /// database, whose data `timeline` is): with no point, a copy of that data (through the
    /// backup API while the parent serves) instead of a restore; with a point, the parent's
    /// WAL up to now archived first (it serves here), then the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
}

/// What a worker reports about an instruction (or, `failed` for a serving writer, about a
/// writer that stopped by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Started,
    Stopped,
    Prepared,
    Promoted,
    Aborted,
    Destroyed,
    RoleUpdated,
    Failed,
    BackedUp,
    /// `backup` did not complete (the reason says why); the writer serves on.
    BackupFailed,
    Purged,
    /// `replicate` done: `standby_term` says which standby the commits wait for.
    Replicated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Stopped => "stopped",
            Outcome::Prepared => "prepared",
            Outcome::Promoted => "promoted",
            Outcome::Aborted => "aborted",
            Outcome::Destroyed => "destroyed",
            Outcome::RoleUpdated => "role_updated",
            Outcome::Failed => "failed",
            Outcome::BackedUp => "backed_up",
            Outcome::BackupFailed => "backup_failed",
            Outcome::Purged => "purged",
            Outcome::Replicated => "replicated",
        }
    }
}

/// `POST /internal/v1/workers/{id}/reports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub db_id: Uuid,
    pub writer_term: u64,
    pub outcome: Outcome,
    /// `started`, `promoted`: where the writer listens (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_addr: Option<String>,
    /// `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `started`, `promoted`: the writer keeps the database's data on this worker's own
    /// storage, so the database starts here again (and nowhere else) next time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keeps_data: bool,
    /// `role_updated`: the credentials the role has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<u64>,
    /// `stopped` (with a repository): how much of what the writer wrote is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Box<Stored>>,
    /// `backed_up`: the backup taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Box<BackupTaken>>,
    /// `replicated`: the standby the writer's commits wait for now (none: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_term: Option<u64>,
}

/// What a stopped writer left in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// Everything it wrote is there (its last WAL was archived before it stopped).
    pub complete: bool,
    /// The newest point the repository holds (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<String>,
    /// Why it is not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupTaken {
    pub label: String,
    /// When the backup began and when it became consistent (RFC 3339): a point at or after
    /// `stopped_at` can be restored from it.
    pub started_at: String,
    pub stopped_at: String,
    /// When the oldest backup the repository keeps of this timeline became consistent.
    pub oldest_at: String,
    /// The timeline's size in the repository: its backups and WAL.
    pub repository_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// `false` for a report that changed nothing (stale or repeated): nothing to do.
    pub accepted: bool,
}

// ---- Gateway ----

/// `POST /internal/v1/checkout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    pub pg_user: String,
    pub db: String,
    /// Wait up to this long (≤ 30 000 ms) for a stopped database to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// 200 to a checkout: a route to the running database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub db_id: Uuid,
    pub backend_addr: String,
    pub worker_id: String,
    pub lease_id: Uuid,
    pub lease_ttl_ms: u64,
    pub lease_control_epoch: u64,
    /// The writer's compute profile: what the Gateway sizes the database's pool by.
    #[serde(default)]
    pub profile: String,
}

/// 202 to a checkout: not running yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub db_id: Uuid,
    pub state: String,
    pub retry_after_ms: u64,
}

/// `POST /internal/v1/leases/{lease_id}/renew`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    pub active_connections: u32,
    pub lease_control_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    pub expires_at: String,
}

/// `POST /internal/v1/leases/{lease_id}/release`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Accepted as the contract has it; the lease's share of connections ends with it.
    #[serde(default)]
    pub active_connections: u32,
}

// ---- roles (the Gateway) ----

/// `GET /internal/v1/roles/{pg_user}`: a tenant's role and its SCRAM verifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub pg_user: String,
    pub tenant_id: Uuid,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub verifier: String,
}

/// `GET /internal/v1/roles/changes?after=SEQ&wait_ms=`: whether a role changed after `after`,
/// and the databases whose leases were fenced since (a restore, a cutover, a deletion: a
/// Gateway ends its leases on them at once instead of at its next renewal); `seq` to pass as
/// `after` next time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleChanges {
    pub seq: u64,
    pub changed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<Uuid>,
}

// ---- errors ----

/// The error codes of the internal API that the Gateway and the workers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 404: the worker is not registered (or was declared lost): register again.
    WorkerUnknown,
    /// 404: no tenant has this `pg_user`.
    UnknownPgUser,
    /// 404: the tenant has no such database.
    UnknownDb,
    /// 404: no tenant has this role.
    RoleNotFound,
    /// 404: no such lease (released, expired, or its database stopped).
    LeaseNotFound,
    /// 404: the lease was not renewed within its TTL.
    LeaseExpired,
    /// 409: the database is being deleted.
    DbDeleting,
    /// 409: the database failed (the message says why).
    DbFailed,
    /// 409: the lease was granted under another `lease_control_epoch` (a cutover).
    StaleEpoch,
    /// 503: checkouts are frozen for a cutover: retry after `Retry-After`.
    CheckoutsFrozen,
    /// 503: no worker is live at all.
    NoWorker,
    /// 503: no live worker has room (or runs the profile).
    NoCapacity,
    /// 503: the worker holding the database's data is not live.
    DataUnavailable,
}

impl Code {
    pub const ALL: [Code; 13] = [
        Code::WorkerUnknown,
        Code::UnknownPgUser,
        Code::UnknownDb,
        Code::RoleNotFound,
        Code::LeaseNotFound,
        Code::LeaseExpired,
        Code::DbDeleting,
        Code::DbFailed,
        Code::StaleEpoch,
        Code::CheckoutsFrozen,
        Code::NoWorker,
        Code::NoCapacity,
        Code::DataUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Code::WorkerUnknown => "worker_unknown",
            Code::UnknownPgUser => "unknown_pg_user",
            Code::UnknownDb => "unknown_db",
            Code::RoleNotFound => "role_not_found",
            Code::LeaseNotFound => "lease_not_found",
            Code::LeaseExpired => "lease_expired",
            Code::DbDeleting => "db_deleting",
            Code::DbFailed => "db_failed",
            Code::StaleEpoch => "stale_epoch",
            Code::CheckoutsFrozen => "checkouts_frozen",
            Code::NoWorker => "no_worker",
            Code::NoCapacity => "no_capacity",
            Code::DataUnavailable => "data_unavailable",
        }
    }

    /// The code a body names; `None` for one this build does not act on.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

/// Every error answer: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_an_unknown_one_as_none() {
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
        assert_eq!(Code::parse("a_code_from_a_newer_control_plane"), None);
    }
}
