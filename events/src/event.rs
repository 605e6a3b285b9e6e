//! The events: every fact the control plane records, past tense.
//!
//! Adding a variant is backwards compatible for the codec only at the end of the enum
//! (bincode encodes the variant index); changing a variant's fields needs a new format
//! version and an upcaster in [`crate::codec`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Timestamp;

/// SHA-256 of a token's secret part. The secret itself is never stored.
pub type SecretHash = [u8; 32];

/// What a key may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyScope {
    /// Everything on the platform.
    Global,
    /// One account and everything in it.
    Account(Uuid),
    /// One tenant of one account.
    Tenant { account: Uuid, tenant: Uuid },
}

/// What a key may do inside its scope. Reading needs no flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Permissions {
    pub can_create_tenant: bool,
    pub can_create_db: bool,
    pub can_scale: bool,
    pub can_delete: bool,
}

impl Permissions {
    pub const ALL: Permissions = Permissions {
        can_create_tenant: true,
        can_create_db: true,
        can_scale: true,
        can_delete: true,
    };

    /// True when every flag set here is also set in `other`.
    pub fn is_subset_of(&self, other: &Permissions) -> bool {
        (!self.can_create_tenant || other.can_create_tenant)
            && (!self.can_create_db || other.can_create_db)
            && (!self.can_scale || other.can_scale)
            && (!self.can_delete || other.can_delete)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An account was opened.
    AccountCreated {
        account_id: Uuid,
        name: String,
        email: Option<String>,
    },
    /// An API key was issued. `secret_hash` is the SHA-256 of the token's secret.
    ApiKeyIssued {
        key_id: String,
        scope: KeyScope,
        permissions: Permissions,
        secret_hash: SecretHash,
        expires_at: Option<Timestamp>,
        name: Option<String>,
    },
    /// The token that the Gateway and the workers use was set (first start, or changed by
    /// `SPG99_SERVICE_TOKEN`).
    ServiceTokenSet { secret_hash: SecretHash },
    /// The account's contact was saved.
    AccountContactSet {
        account_id: Uuid,
        email: String,
        name: Option<String>,
    },
    /// The account's deletion was asked for: its keys stop working at once, its tenants and
    /// databases go `deleting`.
    AccountDeleteRequested { account_id: Uuid },
    /// The account is gone, with everything in it.
    AccountDeleted { account_id: Uuid },
    /// The key got a new secret; the old one no longer authenticates.
    ApiKeyRotated {
        key_id: String,
        secret_hash: SecretHash,
    },
    /// The key was revoked.
    ApiKeyRevoked { key_id: String },
    /// A tenant was created. `pg_password` is sealed (see [`Sealed`]).
    TenantCreated {
        tenant_id: Uuid,
        account_id: Uuid,
        name: String,
        pg_user: String,
        pg_password: Sealed,
    },
    /// The tenant's deletion was asked for; with `cascade`, its databases go `deleting` too.
    TenantDeleteRequested { tenant_id: Uuid },
    /// The tenant is gone.
    TenantDeleted { tenant_id: Uuid },
    /// A database was created, stopped; it starts on its first connection.
    DbCreated {
        db_id: Uuid,
        tenant_id: Uuid,
        name: String,
        size: String,
        timeline: String,
    },
    /// The database's deletion was asked for.
    DbDeleteRequested { db_id: Uuid },
    /// The database is gone.
    DbDeleted { db_id: Uuid },
    /// The answer to a mutating request sent with an `Idempotency-Key`, kept so that a retry
    /// gets the same answer. The body is sealed: it may hold a token or a password.
    IdempotentResponseRecorded {
        key_id: String,
        idempotency_key: String,
        request_hash: [u8; 32],
        status: u16,
        body: Sealed,
    },
    /// A worker (compute host) registered, or registered again after a restart (a new
    /// `instance`) or after it was declared lost.
    WorkerRegistered {
        worker_id: String,
        address: String,
        capacity: u32,
        profiles: Vec<String>,
        instance: String,
    },
    /// A worker stopped heartbeating (or came back as a new instance): whatever it ran is gone.
    WorkerLost { worker_id: String, reason: String },
    /// A stopped database was placed on a worker, which is told to start its writer.
    DbStartRequested {
        db_id: Uuid,
        worker_id: String,
        profile: String,
        writer_term: u64,
        deadline: Timestamp,
    },
    /// The writer reported it serves: the database is `running`.
    DbStarted { db_id: Uuid, backend_addr: String },
    /// The writer did not start (the worker said so, or the deadline passed). With
    /// `give_up`, the database goes `failed`; otherwise back to `stopped`. With `retire`, the
    /// worker may still hold it and is told to shut it down.
    DbStartFailed {
        db_id: Uuid,
        reason: String,
        give_up: bool,
        retire: bool,
    },
    /// The writer is told to stop (idle past the timeout).
    DbStopRequested {
        db_id: Uuid,
        reason: String,
        deadline: Timestamp,
    },
    /// The writer is gone: it reported stopped, its worker was lost, or its stop timed out
    /// (then, with `retire`, its worker is told to shut it down until it confirms).
    DbStopped {
        db_id: Uuid,
        reason: String,
        retire: bool,
    },
    /// The Gateway got a route to a running database.
    LeaseGranted {
        lease_id: Uuid,
        db_id: Uuid,
        lease_control_epoch: u64,
        ttl_ms: u64,
    },
    /// The Gateway gave the lease back.
    LeaseReleased { lease_id: Uuid },
    /// The lease was not renewed within its TTL.
    LeaseExpired { lease_id: Uuid },
    /// The database's load moved to another band (CPU against the autoscaler's thresholds) or
    /// its connection count to or from zero, or to double or half. Steady load writes nothing.
    DbLoadChanged {
        db_id: Uuid,
        cpu_milli: u32,
        active_connections: u32,
        band: LoadBand,
    },
    /// The autoscaler started a handoff: a candidate writer is being prepared.
    DbScaleStarted {
        db_id: Uuid,
        target_profile: String,
        candidate_worker_id: String,
        candidate_writer_term: u64,
        deadline: Timestamp,
    },
    /// The candidate is ready: new checkouts are frozen, the lease epoch moves on, and the
    /// candidate is told to take over.
    DbScaleCutoverStarted {
        db_id: Uuid,
        lease_control_epoch: u64,
        deadline: Timestamp,
    },
    /// The candidate serves: it is the writer now; checkouts are unfrozen.
    DbScaleCompleted {
        db_id: Uuid,
        backend_addr: String,
        cooldown_until: Timestamp,
    },
    /// The handoff failed: the old writer still serves, checkouts are unfrozen, the
    /// candidate is discarded.
    DbScaleFailed {
        db_id: Uuid,
        reason: String,
        cooldown_until: Timestamp,
    },
    /// A writer that no longer serves (replaced, discarded, or of a deleted database) is
    /// confirmed gone by its worker.
    WriterRetired {
        db_id: Uuid,
        worker_id: String,
        writer_term: u64,
    },
    /// The tenant's role got its SCRAM-SHA-256 verifier (sealed, like the password), from
    /// which writers make the role and the Gateway authenticates clients. New tenants get it
    /// with `tenant.created`; tenants older than verifiers get it once, at a start.
    TenantVerifierSet { tenant_id: Uuid, verifier: Sealed },
    /// The tenant's `pg_password` was reset: a new password and its verifier (both sealed).
    TenantPasswordReset {
        tenant_id: Uuid,
        pg_password: Sealed,
        verifier: Sealed,
    },
    /// The database's data now lives on this worker's own storage (its first start there, or
    /// a handoff onto it): it starts there, and only there, from now on.
    DbDataPlaced { db_id: Uuid, worker_id: String },
    /// A worker removed its copy of the database's data (the database was deleted, or the
    /// copy was left behind by a move).
    DbDataDestroyed { db_id: Uuid, worker_id: String },
    /// The serving writer's role has the tenant's credentials numbered `credentials` (after a
    /// password reset).
    DbRoleUpdated {
        db_id: Uuid,
        writer_term: u64,
        credentials: u64,
    },
    /// A full backup of the serving writer (of `writer_term`) into the storage repository is
    /// wanted: its first start there, or the backup policy.
    DbBackupRequested { db_id: Uuid, writer_term: u64 },
    /// A backup of the database's timeline reached the repository: every point from
    /// `stopped_at` on can be restored from it; the oldest backup kept became consistent at
    /// `oldest_at`; the timeline holds `repository_bytes` there.
    DbBackupCompleted {
        db_id: Uuid,
        timeline: String,
        label: String,
        started_at: Timestamp,
        stopped_at: Timestamp,
        oldest_at: Timestamp,
        repository_bytes: u64,
    },
    /// A backup did not complete; another is asked for from `retry_at`.
    DbBackupFailed {
        db_id: Uuid,
        reason: String,
        retry_at: Timestamp,
    },
    /// What a writer that stopped left in the repository: everything it wrote (`complete`),
    /// up to `recoverable_until`; or not, and why (the worker's copy holds the rest).
    DbStored {
        db_id: Uuid,
        complete: bool,
        recoverable_until: Option<Timestamp>,
        reason: Option<String>,
    },
    /// The serving writer's WAL archiving fails, or lags beyond twice the archive timeout.
    DbArchiveFailed { db_id: Uuid, reason: String },
    /// Its archiving caught up again.
    DbArchiveRecovered { db_id: Uuid },
    /// A restore was asked for: the database will serve its state as of `time` (or `lsn`;
    /// neither: its newest) on the new timeline `timeline`, under the same name and id; the
    /// state it has now is kept as a new database, `kept_db_id` called `kept_name`.
    DbRestoreRequested {
        db_id: Uuid,
        time: Option<Timestamp>,
        lsn: Option<String>,
        timeline: String,
        kept_db_id: Uuid,
        kept_name: String,
    },
    /// The restore's writer is placed: it makes its data from the repository, then serves.
    DbRestoreStarted {
        db_id: Uuid,
        worker_id: String,
        profile: String,
        writer_term: u64,
        deadline: Timestamp,
    },
    /// The restored database serves.
    DbRestored { db_id: Uuid },
    /// The database's timeline was removed from the repository.
    DbPurged { db_id: Uuid, timeline: String },
    /// A branch was created: a new database, stopped, with the data of `parent_db_id` (of the
    /// same tenant) as of `at`. Its first start makes that data: from `parent_timeline` in
    /// the repository as of `time` (a point in the past), or, with no `time`, as the parent
    /// is at that start (a copy of the parent on its worker, else its newest point in the
    /// repository). No `parent_timeline`: the parent never held data, and the branch starts
    /// empty like it.
    DbBranched {
        db_id: Uuid,
        tenant_id: Uuid,
        name: String,
        size: String,
        timeline: String,
        parent_db_id: Uuid,
        parent_timeline: Option<String>,
        at: Timestamp,
        time: Option<Timestamp>,
    },
    /// A branch's reset: it takes its parent's data as it is now, on the new timeline
    /// `timeline`, under the same name and id (a restore whose source is the parent's
    /// `parent_timeline`); the state it has now is kept as a new database, `kept_db_id` called
    /// `kept_name`.
    DbReset {
        db_id: Uuid,
        timeline: String,
        parent_timeline: String,
        kept_db_id: Uuid,
        kept_name: String,
    },
    /// High availability turned on or off: with it, a running database keeps a synchronous
    /// standby on another worker.
    DbHaSet { db_id: Uuid, enabled: bool },
    /// A standby of the database is being built on `worker_id` (from the repository, then
    /// streaming from the writer), at `standby_term`, due to stream by `deadline`.
    DbStandbyRequested {
        db_id: Uuid,
        worker_id: String,
        profile: String,
        standby_term: u64,
        deadline: Timestamp,
    },
    /// The standby's server runs, replaying what the repository holds, and connects to the
    /// writer.
    DbStandbyStarted { db_id: Uuid, standby_term: u64 },
    /// The writer streams to the standby, close behind: commits are to wait for it from now
    /// on (once the writer confirms, `db.replication_set`).
    DbStandbyReady {
        db_id: Uuid,
        standby_term: u64,
        lag_bytes: u64,
    },
    /// The writer of `writer_term` confirmed which standby its commits wait for
    /// (`standby_term`; none: they wait for none). Naming the standby the control plane
    /// wants, the database is protected: every commit acknowledged since is on both.
    DbReplicationSet {
        db_id: Uuid,
        writer_term: u64,
        standby_term: Option<u64>,
    },
    /// Commits are no longer to wait for a standby: why (the database is not protected).
    DbUnprotected { db_id: Uuid, reason: String },
    /// The standby is given up (its worker lost, it stopped streaming, HA turned off): it is
    /// shut down, commits no longer wait for it, and no new one is built before `retry_at`.
    DbStandbyLost {
        db_id: Uuid,
        standby_term: u64,
        reason: String,
        retry_at: Timestamp,
    },
    /// The writer of `old_writer_term` is lost; its synchronous standby on `worker_id`
    /// becomes the writer (a start at `standby_term`, due by `deadline`). Leases of the old
    /// writer end (`lease_control_epoch`).
    DbFailoverStarted {
        db_id: Uuid,
        old_writer_term: u64,
        worker_id: String,
        standby_term: u64,
        lease_control_epoch: u64,
        deadline: Timestamp,
        reason: String,
    },
    /// The standby promoted by a failover serves as the writer.
    DbPromoted {
        db_id: Uuid,
        writer_term: u64,
        backend_addr: String,
    },
}

/// A database's load against the autoscaler's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoadBand {
    Low,
    Normal,
    High,
}

impl LoadBand {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBand::Low => "low",
            LoadBand::Normal => "normal",
            LoadBand::High => "high",
        }
    }
}

/// Bytes encrypted with the control plane's secret key (XChaCha20-Poly1305; nonce first).
/// The key is kept outside the log, so the log alone does not reveal the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(pub Vec<u8>);

impl Event {
    /// Every event type name, as [`Event::type_name`] gives them.
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "account.created",
        "api_key.issued",
        "service_token.set",
        "account.contact_set",
        "account.delete_requested",
        "account.deleted",
        "api_key.rotated",
        "api_key.revoked",
        "tenant.created",
        "tenant.delete_requested",
        "tenant.deleted",
        "db.created",
        "db.delete_requested",
        "db.deleted",
        "idempotency.recorded",
        "worker.registered",
        "worker.lost",
        "db.start_requested",
        "db.started",
        "db.start_failed",
        "db.stop_requested",
        "db.stopped",
        "lease.granted",
        "lease.released",
        "lease.expired",
        "db.load_changed",
        "db.scale_started",
        "db.scale_cutover_started",
        "db.scale_completed",
        "db.scale_failed",
        "writer.retired",
        "tenant.verifier_set",
        "tenant.password_reset",
        "db.data_placed",
        "db.data_destroyed",
        "db.role_updated",
        "db.backup_requested",
        "db.backup_completed",
        "db.backup_failed",
        "db.stored",
        "db.archive_failed",
        "db.archive_recovered",
        "db.restore_requested",
        "db.restore_started",
        "db.restored",
        "db.purged",
        "db.branched",
        "db.reset",
        "db.ha_set",
        "db.standby_requested",
        "db.standby_started",
        "db.standby_ready",
        "db.replication_set",
        "db.unprotected",
        "db.standby_lost",
        "db.failover_started",
        "db.promoted",
    ];

    /// The dotted, past-tense name of the event, as the SSE `event:` field shows it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::AccountCreated { .. } => "account.created",
            Event::ApiKeyIssued { .. } => "api_key.issued",
            Event::ServiceTokenSet { .. } => "service_token.set",
            Event::AccountContactSet { .. } => "account.contact_set",
            Event::AccountDeleteRequested { .. } => "account.delete_requested",
            Event::AccountDeleted { .. } => "account.deleted",
            Event::ApiKeyRotated { .. } => "api_key.rotated",
            Event::ApiKeyRevoked { .. } => "api_key.revoked",
            Event::TenantCreated { .. } => "tenant.created",
            Event::TenantDeleteRequested { .. } => "tenant.delete_requested",
            Event::TenantDeleted { .. } => "tenant.deleted",
            Event::DbCreated { .. } => "db.created",
            Event::DbDeleteRequested { .. } => "db.delete_requested",
            Event::DbDeleted { .. } => "db.deleted",
            Event::IdempotentResponseRecorded { .. } => "idempotency.recorded",
            Event::WorkerRegistered { .. } => "worker.registered",
            Event::WorkerLost { .. } => "worker.lost",
            Event::DbStartRequested { .. } => "db.start_requested",
            Event::DbStarted { .. } => "db.started",
            Event::DbStartFailed { .. } => "db.start_failed",
            Event::DbStopRequested { .. } => "db.stop_requested",
            Event::DbStopped { .. } => "db.stopped",
            Event::LeaseGranted { .. } => "lease.granted",
            Event::LeaseReleased { .. } => "lease.released",
            Event::LeaseExpired { .. } => "lease.expired",
            Event::DbLoadChanged { .. } => "db.load_changed",
            Event::DbScaleStarted { .. } => "db.scale_started",
            Event::DbScaleCutoverStarted { .. } => "db.scale_cutover_started",
            Event::DbScaleCompleted { .. } => "db.scale_completed",
            Event::DbScaleFailed { .. } => "db.scale_failed",
            Event::WriterRetired { .. } => "writer.retired",
            Event::TenantVerifierSet { .. } => "tenant.verifier_set",
            Event::TenantPasswordReset { .. } => "tenant.password_reset",
            Event::DbDataPlaced { .. } => "db.data_placed",
            Event::DbDataDestroyed { .. } => "db.data_destroyed",
            Event::DbRoleUpdated { .. } => "db.role_updated",
            Event::DbBackupRequested { .. } => "db.backup_requested",
            Event::DbBackupCompleted { .. } => "db.backup_completed",
            Event::DbBackupFailed { .. } => "db.backup_failed",
            Event::DbStored { .. } => "db.stored",
            Event::DbArchiveFailed { .. } => "db.archive_failed",
            Event::DbArchiveRecovered { .. } => "db.archive_recovered",
            Event::DbRestoreRequested { .. } => "db.restore_requested",
            Event::DbRestoreStarted { .. } => "db.restore_started",
            Event::DbRestored { .. } => "db.restored",
            Event::DbPurged { .. } => "db.purged",
            Event::DbBranched { .. } => "db.branched",
            Event::DbReset { .. } => "db.reset",
            Event::DbHaSet { .. } => "db.ha_set",
            Event::DbStandbyRequested { .. } => "db.standby_requested",
            Event::DbStandbyStarted { .. } => "db.standby_started",
            Event::DbStandbyReady { .. } => "db.standby_ready",
            Event::DbReplicationSet { .. } => "db.replication_set",
            Event::DbUnprotected { .. } => "db.unprotected",
            Event::DbStandbyLost { .. } => "db.standby_lost",
            Event::DbFailoverStarted { .. } => "db.failover_started",
            Event::DbPromoted { .. } => "db.promoted",
        }
    }
}
