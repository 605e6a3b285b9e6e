//! # SPG99 projections
//!
//! The read models of the control plane, folded from the log. [`State::apply`] is the only way
//! state changes: it reads no clock, draws no random number and does no I/O. Everything it
//! needs (time, ids, hashes) is inside the event, so replaying the same log always gives the
//! same state, and [`State::fingerprint`] proves it byte for byte.
//!
//! ## Layout
//! - [`model`]: the materialized objects (accounts, API keys, ...).
//! - this file: [`State`], `apply`, and the fingerprint.
//!
//! `apply` holds no business rules: the service decided, before the event was written, that it
//! may happen. An event that refers to something missing is applied as far as it can be and
//! never panics, so a log is always replayable.

pub mod billing;
pub mod model;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spg99_events::{Envelope, Event, LoadBand, SecretHash, Timestamp};
use uuid::Uuid;

pub use model::{
    Account, ApiKey, Branch, Db, DbState, Ha, Handoff, IdempotentResponse, Lease, Lifecycle, Live,
    Restore, Retire, Scale, ScaleStage, SmolStr, StandbyState, Storage, Tenant, Timeline, Usage,
    Worker, Writer,
};

/// How long the answer to an idempotent request is kept for retries (24 h, in microseconds),
/// measured in event time so that replay prunes exactly as the live state did.
pub const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;

/// The usage row of `db` in `period`, made with the names as they are now.
fn usage_row<'u>(
    usage: &'u mut Map<(Uuid, u32, Uuid), Usage>,
    tenant: &Tenant,
    period: u32,
    db: &Db,
) -> &'u mut Usage {
    usage
        .entry((tenant.account, period, db.id))
        .or_insert_with(|| Usage {
            tenant_id: tenant.id,
            tenant: tenant.name.to_string(),
            db: db.name.to_string(),
            ..Usage::default()
        })
}

/// An ordered map with structural sharing: a clone costs O(1), and a change to either copy
/// copies only the nodes on the way to what changed (16 entries per node).
pub type Map<K, V> = imbl::OrdMap<K, V>;
/// The set of [`Map`].
pub type Set<K> = imbl::OrdSet<K>;

/// Everything the control plane knows, as of `last_seq`.
///
/// Ordered maps, so that encoding the state (for the fingerprint, and for snapshots) is
/// deterministic. The `*_by_*` maps are indexes, derived from the others by `apply`.
///
/// Persistent maps, so that a clone is cheap: the committer keeps one working state that runs
/// ahead of the disk and hands readers a clone of it once durable; both share what they have in
/// common. Records are behind `Arc`, so a copied node copies pointers; a record is copied only
/// when it changes while another version still holds it (`Arc::make_mut`). An `Arc` encodes as
/// its record: the encoding (snapshots, fingerprint) is that of the plain maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The `seq` of the last event applied; 0 for the empty log.
    pub last_seq: u64,
    /// The time of the last event applied.
    pub last_at: Option<Timestamp>,
    pub accounts: Map<Uuid, Arc<Account>>,
    pub api_keys: Map<String, Arc<ApiKey>>,
    pub service_token: Option<SecretHash>,
    pub tenants: Map<Uuid, Arc<Tenant>>,
    /// Tenant names are unique across the platform.
    pub tenants_by_name: Map<SmolStr, Uuid>,
    /// `pg_user`s are unique across the platform: the Gateway finds a tenant by it.
    pub tenants_by_pg_user: Map<SmolStr, Uuid>,
    pub dbs: Map<Uuid, Arc<Db>>,
    /// Database names are unique within a tenant: (tenant, [`name_hash`] of the name, database).
    /// A hash, not the name, so that an entry is 40 bytes whatever the name; a lookup checks
    /// the names of the (almost always one) databases under a hash.
    dbs_by_name: Set<(Uuid, u64, Uuid)>,
    /// First answers to idempotent requests, by (key id, idempotency key).
    pub idempotency: Map<(String, String), Arc<IdempotentResponse>>,
    /// The same entries by time recorded, for expiry.
    idempotency_by_time: Set<(Timestamp, String, String)>,
    /// Compute hosts, by id, lost ones included until they register again.
    pub workers: Map<String, Arc<Worker>>,
    pub leases: Map<Uuid, Lease>,
    /// Writers that no longer serve and that their worker must still shut down, by
    /// (worker, database, term).
    pub retiring: Map<(String, Uuid, u64), Retire>,
    /// Copies of databases' data that their worker must still remove, by (worker, database),
    /// with the copy's timeline: left behind when the data moved to another worker, or when
    /// a database was deleted while the worker holding it was lost.
    pub stale_copies: Map<(String, Uuid), String>,
    /// Compute used, by (account, billing period, database); see [`billing`].
    pub usage: Map<(Uuid, u32, Uuid), Usage>,
    /// The databases the lifecycle has work with: a writer or candidate placed, or being
    /// deleted. An index of `dbs`, so that the reconciler's steps and the workers'
    /// instructions cost what is moving, not how many databases exist.
    active: Set<Uuid>,
}

/// The hash a database's name is indexed by: FNV-1a, 64 bits. Fixed, not seeded: the index is
/// part of the state's encoding (snapshots, fingerprints), the same in every process.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The record under `key`, to change: copied first if another version of the state holds it.
/// A function of the one map, so that other fields of the state stay free to borrow.
fn edit<'m, K: Ord + Clone, V: Clone>(map: &'m mut Map<K, Arc<V>>, key: &K) -> Option<&'m mut V> {
    map.get_mut(key).map(Arc::make_mut)
}

/// Keeps the records `keep` says yes to.
fn retain<K: Ord + Clone, V>(map: &mut Map<K, Arc<V>>, keep: impl Fn(&V) -> bool) {
    let gone: Vec<K> = map
        .iter()
        .filter(|(_, v)| !keep(v))
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        map.remove(&key);
    }
}

/// A writer starts serving the database at `at`: its run (billed) and its load window begin.
fn serve_from(db: &mut Db, at: Timestamp) {
    db.live.running_since = Some(at);
    db.live.load_band = LoadBand::Normal;
    db.live.load_band_since = at;
}

/// How many objects of each kind the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub accounts: usize,
    pub api_keys: usize,
    pub tenants: usize,
    pub dbs: usize,
    pub workers: usize,
    pub leases: usize,
}

impl State {
    /// Folds one event into the state. Events must come in `seq` order; an event at or below
    /// `last_seq` was already applied and is ignored, which makes replay idempotent.
    pub fn apply(&mut self, env: &Envelope) {
        if env.seq <= self.last_seq {
            return;
        }
        self.last_seq = env.seq;
        self.last_at = Some(env.at);
        let at = env.at;
        match &env.event {
            Event::AccountCreated {
                account_id,
                name,
                email,
            } => {
                self.accounts.insert(
                    *account_id,
                    Arc::new(Account {
                        id: *account_id,
                        name: name.clone(),
                        email: email.clone(),
                        contact_name: None,
                        created_at: at,
                        deleting: false,
                    }),
                );
            }
            Event::AccountContactSet {
                account_id,
                email,
                name,
            } => {
                if let Some(a) = edit(&mut self.accounts, account_id) {
                    a.email = Some(email.clone());
                    a.contact_name = name.clone();
                }
            }
            Event::AccountDeleteRequested { account_id } => {
                if let Some(a) = edit(&mut self.accounts, account_id) {
                    a.deleting = true;
                }
                let keys: Vec<String> = self
                    .api_keys
                    .values()
                    .filter(|k| k.account() == Some(*account_id) && k.revoked_at.is_none())
                    .map(|k| k.id.clone())
                    .collect();
                for key in keys {
                    if let Some(k) = edit(&mut self.api_keys, &key) {
                        k.revoked_at = Some(at);
                    }
                }
                for t in self.tenants_of(*account_id) {
                    self.mark_tenant_deleting(t, at);
                }
            }
            Event::AccountDeleted { account_id } => {
                for t in self.tenants_of(*account_id) {
                    self.remove_tenant(t, at);
                }
                retain(&mut self.api_keys, |k| k.account() != Some(*account_id));
                self.accounts.remove(account_id);
            }
            Event::ApiKeyIssued {
                key_id,
                scope,
                permissions,
                secret_hash,
                expires_at,
                name,
            } => {
                self.api_keys.insert(
                    key_id.clone(),
                    Arc::new(ApiKey {
                        id: key_id.clone(),
                        scope: *scope,
                        permissions: *permissions,
                        secret_hash: *secret_hash,
                        expires_at: *expires_at,
                        name: name.clone(),
                        created_at: at,
                        revoked_at: None,
                    }),
                );
            }
            Event::ApiKeyRotated {
                key_id,
                secret_hash,
            } => {
                if let Some(k) = edit(&mut self.api_keys, key_id) {
                    k.secret_hash = *secret_hash;
                }
            }
            Event::ApiKeyRevoked { key_id } => {
                if let Some(k) = edit(&mut self.api_keys, key_id) {
                    k.revoked_at.get_or_insert(at);
                }
            }
            Event::ServiceTokenSet { secret_hash } => {
                self.service_token = Some(*secret_hash);
            }
            Event::TenantCreated {
                tenant_id,
                account_id,
                name,
                pg_user,
                pg_password,
            } => {
                self.tenants_by_name.insert(SmolStr::new(name), *tenant_id);
                self.tenants_by_pg_user
                    .insert(SmolStr::new(pg_user), *tenant_id);
                self.tenants.insert(
                    *tenant_id,
                    Arc::new(Tenant {
                        id: *tenant_id,
                        account: *account_id,
                        name: SmolStr::new(name),
                        pg_user: SmolStr::new(pg_user),
                        pg_password: pg_password.clone(),
                        verifier: None,
                        credentials: 0,
                        created_at: at,
                        deleting: false,
                    }),
                );
            }
            Event::TenantVerifierSet {
                tenant_id,
                verifier,
            } => {
                if let Some(t) = edit(&mut self.tenants, tenant_id) {
                    t.verifier = Some(verifier.clone());
                }
            }
            Event::TenantPasswordReset {
                tenant_id,
                pg_password,
                verifier,
            } => {
                if let Some(t) = edit(&mut self.tenants, tenant_id) {
                    t.pg_password = pg_password.clone();
                    t.verifier = Some(verifier.clone());
                    t.credentials += 1;
                }
            }
            Event::TenantDeleteRequested { tenant_id } => self.mark_tenant_deleting(*tenant_id, at),
            Event::TenantDeleted { tenant_id } => self.remove_tenant(*tenant_id, at),
            Event::DbCreated {
                db_id,
                tenant_id,
                name,
                size,
                timeline,
            } => self.add_db(Db::new(*db_id, *tenant_id, name, size, timeline, at)),
            Event::DbBranched {
                db_id,
                tenant_id,
                name,
                size,
                timeline,
                parent_db_id,
                parent_timeline,
                at: point,
                time,
            } => {
                let mut db = Db::new(*db_id, *tenant_id, name, size, timeline, at);
                db.branch = Some(Box::new(Branch {
                    parent_db_id: *parent_db_id,
                    parent_timeline: parent_timeline.clone(),
                    at: *point,
                    time: *time,
                    made_at: parent_timeline.is_none().then_some(at),
                }));
                self.add_db(db);
            }
            Event::DbDeleteRequested { db_id } => self.mark_db_deleting(*db_id, at),
            Event::DbDeleted { db_id } => self.remove_db(*db_id, at),
            Event::IdempotentResponseRecorded {
                key_id,
                idempotency_key,
                request_hash,
                status,
                body,
            } => {
                let key = (key_id.clone(), idempotency_key.clone());
                self.idempotency_by_time
                    .insert((at, key.0.clone(), key.1.clone()));
                self.idempotency.insert(
                    key,
                    Arc::new(IdempotentResponse {
                        request_hash: *request_hash,
                        status: *status,
                        body: body.clone(),
                        recorded_at: at,
                    }),
                );
            }
            Event::WorkerRegistered {
                worker_id,
                address,
                capacity,
                profiles,
                instance,
            } => {
                let keeps_data = self.workers.get(worker_id).is_some_and(|w| w.keeps_data);
                self.workers.insert(
                    worker_id.clone(),
                    Arc::new(Worker {
                        id: worker_id.clone(),
                        address: address.clone(),
                        capacity: *capacity,
                        profiles: profiles.clone(),
                        instance: instance.clone(),
                        registered_at: at,
                        lost_at: None,
                        keeps_data,
                    }),
                );
            }
            Event::WorkerLost { worker_id, .. } => {
                if let Some(w) = edit(&mut self.workers, worker_id) {
                    w.lost_at = Some(at);
                }
                let gone: Vec<_> = self
                    .retiring
                    .keys()
                    .filter(|(w, _, _)| w == worker_id)
                    .cloned()
                    .collect();
                for key in gone {
                    self.retiring.remove(&key);
                }
            }
            Event::DbStartRequested {
                db_id,
                worker_id,
                profile,
                writer_term,
                deadline,
            } => {
                let credentials = self.credentials_of(*db_id);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.state = DbState::Starting;
                    db.live.writer = Some(Box::new(Writer {
                        worker_id: worker_id.clone(),
                        profile: profile.clone(),
                        term: *writer_term,
                        backend_addr: None,
                        credentials,
                    }));
                    db.writer_term = *writer_term;
                    db.live.phase_started_at = Some(at);
                    db.live.phase_deadline_at = Some(*deadline);
                    db.live.idle_since = None;
                }
            }
            Event::DbStarted {
                db_id,
                backend_addr,
            } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    if let Some(w) = db.live.writer.as_mut() {
                        w.backend_addr = Some(backend_addr.clone());
                    }
                    db.state = DbState::Running;
                    if let Some(b) = db.branch.as_mut().filter(|b| b.made_at.is_none()) {
                        b.made_at = Some(at);
                    }
                    if let Some(mut done) = db.live.restore.take() {
                        done.restored_at = Some(at);
                        db.last_restore = Some(done);
                    }
                    db.live.phase_started_at = None;
                    db.live.phase_deadline_at = None;
                    db.live.failed_starts = 0;
                    db.live.failure_reason = None;
                    db.live.idle_since = db.live.leases.is_empty().then_some(at);
                    db.live.cpu_milli = 0;
                    db.live.active_connections = 0;
                    serve_from(db, at);
                }
            }
            Event::DbStartFailed {
                db_id,
                reason,
                give_up,
                retire,
            } => {
                self.drop_writer(*db_id, at, *retire);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.live.failed_starts += 1;
                    db.live.failure_reason = Some(reason.clone());
                    db.state = if *give_up {
                        DbState::Failed
                    } else if db.live.restore.is_some() {
                        // The restore is tried again (its new timeline has no data elsewhere).
                        DbState::Restoring
                    } else {
                        DbState::Stopped
                    };
                }
            }
            Event::DbStopRequested {
                db_id, deadline, ..
            } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.state = DbState::Stopping;
                    db.live.phase_started_at = Some(at);
                    db.live.phase_deadline_at = Some(*deadline);
                    db.live.idle_since = None;
                }
            }
            Event::DbStopped { db_id, retire, .. } => {
                self.drop_writer(*db_id, at, *retire);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.state = DbState::Stopped;
                }
            }
            Event::LeaseGranted {
                lease_id,
                db_id,
                lease_control_epoch,
                ttl_ms,
            } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.live.leases.insert(*lease_id);
                    db.live.idle_since = None;
                    self.leases.insert(
                        *lease_id,
                        Lease {
                            id: *lease_id,
                            db_id: *db_id,
                            epoch: *lease_control_epoch,
                            ttl_ms: *ttl_ms,
                            granted_at: at,
                        },
                    );
                }
            }
            Event::LeaseReleased { lease_id } | Event::LeaseExpired { lease_id } => {
                self.end_lease(*lease_id, at)
            }
            Event::DbLoadChanged {
                db_id,
                cpu_milli,
                active_connections,
                band,
            } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.live.cpu_milli = *cpu_milli;
                    db.live.active_connections = *active_connections;
                    // A database is idle when nothing uses it: no lease and no session, the
                    // direct ones its writer reports included.
                    if *active_connections > 0 {
                        db.live.idle_since = None;
                    } else if db.state == DbState::Running && db.live.leases.is_empty() {
                        db.live.idle_since.get_or_insert(at);
                    }
                    if db.live.load_band != *band {
                        db.live.load_band = *band;
                        db.live.load_band_since = at;
                    }
                }
            }
            Event::DbScaleStarted {
                db_id,
                target_profile,
                candidate_worker_id,
                candidate_writer_term,
                deadline,
            } => {
                let credentials = self.credentials_of(*db_id);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.writer_term = *candidate_writer_term;
                    db.live.scale = Scale::new(Handoff {
                        stage: ScaleStage::PreparingCandidate,
                        target_profile: Some(target_profile.clone()),
                        candidate: Some(Box::new(Writer {
                            worker_id: candidate_worker_id.clone(),
                            profile: target_profile.clone(),
                            term: *candidate_writer_term,
                            backend_addr: None,
                            credentials,
                        })),
                        phase_started_at: Some(at),
                        phase_deadline_at: Some(*deadline),
                        failure_reason: None,
                    });
                }
            }
            Event::DbScaleCutoverStarted {
                db_id,
                lease_control_epoch,
                deadline,
            } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    let handoff = db.live.scale.edit();
                    handoff.stage = ScaleStage::Cutover;
                    handoff.phase_started_at = Some(at);
                    handoff.phase_deadline_at = Some(*deadline);
                    db.live.freeze_new_checkouts = true;
                    db.lease_control_epoch = *lease_control_epoch;
                }
            }
            Event::DbScaleCompleted {
                db_id,
                backend_addr,
                cooldown_until,
            } => {
                let candidate =
                    edit(&mut self.dbs, db_id).and_then(|db| db.live.scale.take_candidate());
                if let Some(mut candidate) = candidate {
                    // The old writer's run ends here; its leases stay until they are released
                    // or expire, and renewals under the old epoch are refused.
                    self.bill(*db_id, at);
                    candidate.backend_addr = Some(backend_addr.clone());
                    let old =
                        edit(&mut self.dbs, db_id).and_then(|db| db.live.writer.replace(candidate));
                    if let Some(old) = old {
                        self.retire(*old, *db_id, Retire::Stop);
                    }
                    if let Some(db) = edit(&mut self.dbs, db_id) {
                        // A backup asked of the old writer will not come.
                        if let Some(s) = db.storage.as_mut() {
                            s.backup_wanted = None;
                        }
                        db.live.scale = Scale::default();
                        db.live.freeze_new_checkouts = false;
                        db.live.autoscale_cooldown_until = Some(*cooldown_until);
                        serve_from(db, at);
                    }
                }
            }
            Event::DbScaleFailed {
                db_id,
                reason,
                cooldown_until,
            } => {
                self.fail_scale(*db_id, reason.clone());
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.live.autoscale_cooldown_until = Some(*cooldown_until);
                    db.live.load_band_since = at;
                }
            }
            Event::WriterRetired {
                db_id,
                worker_id,
                writer_term,
            } => {
                self.retiring
                    .remove(&(worker_id.clone(), *db_id, *writer_term));
            }
            Event::DbDataPlaced { db_id, worker_id } => {
                self.stale_copies.remove(&(worker_id.clone(), *db_id));
                if let Some(w) = edit(&mut self.workers, worker_id) {
                    w.keeps_data = true;
                }
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    if let Some(old) = db.data_on.replace(worker_id.as_str().into()) {
                        if *old != **worker_id {
                            self.stale_copies
                                .insert((old.into(), *db_id), db.timeline.to_string());
                        }
                    }
                }
            }
            Event::DbRoleUpdated {
                db_id,
                writer_term,
                credentials,
            } => {
                let writer = edit(&mut self.dbs, db_id).and_then(|d| d.live.writer.as_mut());
                if let Some(w) = writer.filter(|w| w.term == *writer_term) {
                    w.credentials = w.credentials.max(*credentials);
                }
            }
            Event::DbDataDestroyed { db_id, worker_id } => {
                self.stale_copies.remove(&(worker_id.clone(), *db_id));
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    if db.data_on.as_deref() == Some(worker_id.as_str()) {
                        db.data_on = None;
                    }
                }
            }
            Event::DbBackupRequested { db_id, writer_term } => {
                if let Some(s) = self.storage_of(*db_id) {
                    s.in_repository = true;
                    s.backup_wanted = Some(*writer_term);
                    s.backups_asked += 1;
                }
            }
            Event::DbBackupCompleted {
                db_id,
                stopped_at,
                oldest_at,
                repository_bytes,
                ..
            } => {
                self.bill_storage(*db_id, at);
                if let Some(s) = self.storage_of(*db_id) {
                    s.in_repository = true;
                    s.backup_wanted = None;
                    s.backup_retry_at = None;
                    s.last_backup_at = Some(*stopped_at);
                    s.oldest_backup_at = Some(*oldest_at);
                    s.bytes = *repository_bytes;
                    s.recoverable_until = s.recoverable_until.max(Some(*stopped_at));
                    s.warning = None;
                }
            }
            Event::DbBackupFailed {
                db_id,
                reason,
                retry_at,
            } => {
                if let Some(s) = self.storage_of(*db_id) {
                    s.backup_wanted = None;
                    s.backup_retry_at = Some(*retry_at);
                    s.warning = Some(format!("the last backup failed: {reason}"));
                }
            }
            Event::DbStored {
                db_id,
                complete,
                recoverable_until,
                reason,
            } => {
                if let Some(s) = self.storage_of(*db_id) {
                    s.recoverable_until = s.recoverable_until.max(*recoverable_until);
                    s.warning = (!complete).then(|| {
                        reason
                            .clone()
                            .unwrap_or_else(|| "the last stop did not archive everything".into())
                    });
                }
            }
            Event::DbArchiveFailed { db_id, reason } => {
                if let Some(s) = self.storage_of(*db_id) {
                    s.archive_failure = Some(reason.clone());
                }
            }
            Event::DbArchiveRecovered { db_id } => {
                if let Some(s) = self.storage_of(*db_id) {
                    s.archive_failure = None;
                }
            }
            Event::DbRestoreRequested {
                db_id,
                time,
                lsn,
                timeline,
                kept_db_id,
                kept_name,
            } => self.start_restore(at, *db_id, time, lsn, timeline, *kept_db_id, kept_name),
            Event::DbReset {
                db_id,
                timeline,
                parent_timeline,
                kept_db_id,
                kept_name,
            } => {
                self.start_restore(at, *db_id, &None, &None, timeline, *kept_db_id, kept_name);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    let parent = db.branch.as_ref().map(|b| b.parent_db_id);
                    if let Some(r) = db.live.restore.as_mut() {
                        r.from_timeline = parent_timeline.clone();
                        r.parent = parent;
                    }
                    if let Some(b) = db.branch.as_mut() {
                        b.parent_timeline = Some(parent_timeline.clone());
                        b.at = at;
                        b.time = None;
                    }
                }
            }
            Event::DbRestoreStarted {
                db_id,
                worker_id,
                profile,
                writer_term,
                deadline,
            } => {
                let credentials = self.credentials_of(*db_id);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.live.writer = Some(Box::new(Writer {
                        worker_id: worker_id.clone(),
                        profile: profile.clone(),
                        term: *writer_term,
                        backend_addr: None,
                        credentials,
                    }));
                    db.writer_term = *writer_term;
                    db.live.phase_started_at = Some(at);
                    db.live.phase_deadline_at = Some(*deadline);
                }
            }
            Event::DbRestored { .. } => {}
            Event::DbHaSet { db_id, enabled } => {
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    let ha = db.ha.get_or_insert_with(Default::default);
                    ha.enabled = *enabled;
                    ha.retry_at = None;
                    if !*enabled {
                        ha.unprotected_reason = None;
                    }
                }
            }
            Event::DbStandbyRequested {
                db_id,
                worker_id,
                profile,
                standby_term,
                deadline,
            } => {
                let credentials = self.credentials_of(*db_id);
                if let Some(db) = edit(&mut self.dbs, db_id) {
                    db.writer_term = db.writer_term.max(*standby_term);
                    let ha = db.ha.get_or_insert_with(Default::default);
                    ha.standby = Some(Box::new(Writer {
                        worker_id: worker_id.clone(),
                        profile: profile.clone(),
                        term: *standby_term,
                        backend_addr: None,
                        credentials,
                    }));
                    ha.progress = StandbyState::Building;
                    ha.standby_deadline_at = Some(*deadline);
                }
            }
            Event::DbStandbyStarted {
                db_id,
                standby_term,
            } => {
                if let Some(ha) = self.ha_of(*db_id, *standby_term) {
                    ha.progress = StandbyState::CatchingUp;
                }
            }
            Event::DbStandbyReady {
                db_id,
                standby_term,
                ..
            } => {
                if let Some(ha) = self.ha_of(*db_id, *standby_term) {
                    ha.progress = StandbyState::Streaming;
                    ha.standby_deadline_at = None;
                    ha.sync_wanted = Some(*standby_term);
                    ha.sync_changes += 1;
                }
            }
            Event::DbReplicationSet {
                db_id,
                writer_term,
                standby_term,
            } => {
                if let Some(ha) = edit(&mut self.dbs, db_id).and_then(|d| d.ha.as_deref_mut()) {
                    ha.sync_applied = Some((*writer_term, *standby_term));
                    if ha.standby_state() == StandbyState::Sync {
                        ha.unprotected_reason = None;
                    }
                }
            }
            Event::DbUnprotected { db_id, reason } => {
                if let Some(ha) = edit(&mut self.dbs, db_id).and_then(|d| d.ha.as_deref_mut()) {
                    if ha.sync_wanted.take().is_some() {
                        ha.sync_changes += 1;
                    }
                    ha.unprotected_reason = Some(reason.clone());
                }
            }
            Event::DbStandbyLost {
                db_id,
                standby_term,
                reason,
                retry_at,
            } => {
                if self.ha_of(*db_id, *standby_term).is_some() {
                    self.drop_standby(*db_id, Some(reason.clone()));
                    if let Some(ha) = edit(&mut self.dbs, db_id).and_then(|d| d.ha.as_deref_mut()) {
                        ha.retry_at = Some(*retry_at);
                    }
                }
            }
            Event::DbFailoverStarted {
                db_id,
                old_writer_term,
                standby_term,
                lease_control_epoch,
                deadline,
                reason,
                ..
            } => {
                let old = self.dbs.get(db_id).and_then(|d| d.live.writer.as_ref());
                let standby = match old.is_some_and(|w| w.term == *old_writer_term) {
                    true => self
                        .ha_of(*db_id, *standby_term)
                        .and_then(|ha| ha.standby.take()),
                    false => None,
                };
                if let Some(standby) = standby {
                    self.drop_writer(*db_id, at, true);
                    if let Some(db) = edit(&mut self.dbs, db_id) {
                        db.live.writer = Some(standby);
                        db.state = DbState::Starting;
                        db.live.phase_started_at = Some(at);
                        db.live.phase_deadline_at = Some(*deadline);
                        db.lease_control_epoch = *lease_control_epoch;
                        let ha = db.ha.get_or_insert_with(Default::default);
                        ha.failovers += 1;
                        ha.failover_started_at = Some(at);
                        ha.unprotected_reason = Some(format!(
                            "failing over: its standby becomes the writer ({reason})"
                        ));
                    }
                }
            }
            Event::DbPromoted { db_id, .. } => {
                if let Some(ha) = edit(&mut self.dbs, db_id).and_then(|d| d.ha.as_deref_mut()) {
                    ha.failover_started_at = None;
                    ha.last_failover_at = Some(at);
                }
            }
            Event::DbPurged { db_id, .. } => {
                self.bill_storage(*db_id, at);
                if let Some(s) = self.storage_of(*db_id) {
                    *s = Storage::default();
                }
            }
        }
        if let Some(db) = env.db_id {
            self.reindex(db);
        }
        self.expire_idempotency(at);
    }

    /// The current credentials' number of the database's tenant (0 if it has none).
    fn credentials_of(&self, db_id: Uuid) -> u64 {
        self.dbs
            .get(&db_id)
            .and_then(|d| self.tenants.get(&d.tenant))
            .map_or(0, |t| t.credentials)
    }

    /// Keeps [`State::active`] in step with one database.
    fn reindex(&mut self, db_id: Uuid) {
        // Back at rest: its lifecycle's box goes.
        if self
            .dbs
            .get(&db_id)
            .is_some_and(|d| d.live.needs_settling())
        {
            if let Some(db) = edit(&mut self.dbs, &db_id) {
                db.live.settle();
            }
        }
        let active = self.dbs.get(&db_id).is_some_and(|d| {
            d.live.writer.is_some()
                || d.live.scale.candidate.is_some()
                || matches!(d.state, DbState::Deleting | DbState::Restoring)
        });
        if active {
            self.active.insert(db_id);
        } else {
            self.active.remove(&db_id);
        }
    }

    /// The databases with a writer or candidate placed, or being deleted.
    pub fn active_dbs(&self) -> impl Iterator<Item = &Db> + '_ {
        self.active
            .iter()
            .filter_map(|id| self.dbs.get(id).map(|d| &**d))
    }

    /// The database's writer is gone (stopped, failed, replaced or deleted): its run
    /// interval is billed, its leases end, and, with `retire`, its worker (if alive) is told
    /// to shut it down.
    fn drop_writer(&mut self, db_id: Uuid, at: Timestamp, retire: bool) {
        self.bill(db_id, at);
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let writer = db.live.writer.take();
        if let Some(s) = db.storage.as_mut() {
            s.backup_wanted = None;
        }
        if let Some(ha) = db.ha.as_deref_mut() {
            // What the old writer confirmed is void for the next one, and a failover's start
            // (this writer) is over: the next start is an ordinary one.
            ha.sync_applied = None;
            ha.failover_started_at = None;
        }
        db.live.phase_started_at = None;
        db.live.phase_deadline_at = None;
        db.live.idle_since = None;
        db.live.cpu_milli = 0;
        db.live.active_connections = 0;
        db.live.load_band = Lifecycle::REST.load_band;
        db.live.load_band_since = Lifecycle::REST.load_band_since;
        for lease in std::mem::take(&mut db.live.leases) {
            self.leases.remove(&lease);
        }
        if let (Some(w), true) = (writer, retire) {
            self.retire(*w, db_id, Retire::Stop);
        }
        // A standby follows its writer: with none, it goes too.
        self.drop_standby(db_id, None);
    }

    /// The database's HA record if `standby_term` is its standby's.
    fn ha_of(&mut self, db_id: Uuid, standby_term: u64) -> Option<&mut Ha> {
        edit(&mut self.dbs, &db_id)
            .and_then(|d| d.ha.as_deref_mut())
            .filter(|ha| ha.standby.as_ref().is_some_and(|s| s.term == standby_term))
    }

    /// The database's standby is given up: its worker shuts it down and removes its copy,
    /// commits no longer wait for it; `reason` says why the database is not protected.
    fn drop_standby(&mut self, db_id: Uuid, reason: Option<String>) {
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let timeline = db.timeline.to_string();
        let Some(ha) = db.ha.as_deref_mut() else {
            return;
        };
        let standby = ha.standby.take();
        ha.progress = StandbyState::None;
        ha.standby_deadline_at = None;
        if ha.sync_wanted.take().is_some() {
            ha.sync_changes += 1;
        }
        ha.unprotected_reason = reason;
        if let Some(s) = standby {
            self.stale_copies
                .insert((s.worker_id.clone(), db_id), timeline);
            self.retire(*s, db_id, Retire::Abort);
        }
    }

    /// Asks the worker of a writer that no longer serves to shut it down, unless that
    /// worker is lost (then nothing runs there any more).
    fn retire(&mut self, writer: Writer, db_id: Uuid, how: Retire) {
        let alive = self
            .workers
            .get(&writer.worker_id)
            .is_some_and(|w| w.lost_at.is_none());
        if alive {
            self.retiring
                .insert((writer.worker_id, db_id, writer.term), how);
        }
    }

    /// Ends a handoff in `FAILED`: the candidate is discarded, checkouts are unfrozen.
    fn fail_scale(&mut self, db_id: Uuid, reason: String) {
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let candidate = db.live.scale.take_candidate();
        db.live.scale = Scale::new(Handoff {
            stage: ScaleStage::Failed,
            failure_reason: Some(reason),
            ..Handoff::default()
        });
        db.live.freeze_new_checkouts = false;
        if let Some(c) = candidate {
            self.retire(*c, db_id, Retire::Abort);
        }
    }

    fn end_lease(&mut self, lease_id: Uuid, at: Timestamp) {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return;
        };
        if let Some(db) = edit(&mut self.dbs, &lease.db_id) {
            db.live.leases.remove(&lease_id);
            if db.live.leases.is_empty()
                && db.state == DbState::Running
                && db.live.active_connections == 0
            {
                db.live.idle_since = Some(at);
            }
        }
    }

    /// The database's storage record, to change (made if it had none).
    fn storage_of(&mut self, db_id: Uuid) -> Option<&mut Storage> {
        let db = edit(&mut self.dbs, &db_id)?;
        Some(db.storage.get_or_insert_with(Default::default))
    }

    /// Adds the database's size in the repository since it was last billed to the usage,
    /// split at billing period boundaries.
    fn bill_storage(&mut self, db_id: Uuid, at: Timestamp) {
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let Some(s) = db.storage.as_mut() else {
            return;
        };
        let (since, bytes) = (s.bytes_since.replace(at), s.bytes);
        let (Some(since), true) = (since, bytes > 0) else {
            return;
        };
        let Some(tenant) = self.tenants.get(&db.tenant) else {
            return;
        };
        for (period, micros) in billing::split(since, at) {
            usage_row(&mut self.usage, tenant, period, db).storage_byte_micros +=
                u128::from(bytes) * micros.max(0) as u128;
        }
    }

    /// A restore begins: the state the database has now goes to a new database (the kept
    /// copy: the same timeline, its copy, what the repository holds of it); the database
    /// gets the new timeline with nothing in it yet, its writer (if any) is retired and its
    /// leases fenced (a new epoch), and it waits in `restoring` for its restore's writer.
    #[allow(clippy::too_many_arguments)]
    fn start_restore(
        &mut self,
        at: Timestamp,
        db_id: Uuid,
        time: &Option<Timestamp>,
        lsn: &Option<String>,
        timeline: &str,
        kept_db_id: Uuid,
        kept_name: &str,
    ) {
        self.bill_storage(db_id, at);
        self.drop_writer(db_id, at, true);
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let kept_name = SmolStr::new(kept_name);
        // A new database with the data (its copy, what the repository holds) of this one.
        let mut kept = Db {
            data_on: db.data_on.clone(),
            storage: db.storage.clone(),
            ..Db::new(
                kept_db_id,
                db.tenant,
                &kept_name,
                &db.size,
                &db.timeline.to_string(),
                at,
            )
        };
        if let Some(s) = kept.storage.as_mut() {
            s.backup_wanted = None;
            s.archive_failure = None;
        }
        let from_timeline = std::mem::replace(&mut db.timeline, Timeline::new(timeline));
        db.data_on = None;
        db.storage = None;
        db.live.restore = Some(Box::new(Restore {
            from_timeline: from_timeline.to_string(),
            parent: None,
            time: *time,
            lsn: lsn.clone(),
            kept_db_id,
            requested_at: at,
            restored_at: None,
        }));
        db.state = DbState::Restoring;
        db.lease_control_epoch += 1;
        db.live.failed_starts = 0;
        db.live.failure_reason = None;
        let tenant = db.tenant;
        self.dbs_by_name
            .insert((tenant, name_hash(&kept_name), kept_db_id));
        self.dbs.insert(kept_db_id, Arc::new(kept));
        self.reindex(kept_db_id);
    }

    /// Adds the serving writer's run since `running_since` to the usage, split at billing
    /// period boundaries.
    fn bill(&mut self, db_id: Uuid, at: Timestamp) {
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        let (Some(since), Some(writer)) = (db.live.running_since.take(), db.live.writer.as_ref())
        else {
            return;
        };
        let Some(tenant) = self.tenants.get(&db.tenant) else {
            return;
        };
        for (period, micros) in billing::split(since, at) {
            let row = usage_row(&mut self.usage, tenant, period, db);
            *row.by_profile.entry(writer.profile.clone()).or_default() += micros;
        }
    }

    /// Deletion asked for: the writer and any candidate are retired, leases end, the
    /// handoff (if any) is abandoned.
    fn mark_db_deleting(&mut self, db_id: Uuid, at: Timestamp) {
        self.drop_writer(db_id, at, true);
        let Some(db) = edit(&mut self.dbs, &db_id) else {
            return;
        };
        db.state = DbState::Deleting;
        let candidate = db.live.scale.take_candidate();
        db.live.scale = Scale::default();
        db.live.freeze_new_checkouts = false;
        if let Some(c) = candidate {
            self.retire(*c, db_id, Retire::Abort);
        }
        self.reindex(db_id);
    }

    /// The ids of an account's tenants.
    fn tenants_of(&self, account: Uuid) -> Vec<Uuid> {
        self.tenants
            .values()
            .filter(|t| t.account == account)
            .map(|t| t.id)
            .collect()
    }

    fn mark_tenant_deleting(&mut self, tenant: Uuid, at: Timestamp) {
        if let Some(t) = edit(&mut self.tenants, &tenant) {
            t.deleting = true;
        }
        let dbs: Vec<Uuid> = self.dbs_of(tenant).map(|d| d.id).collect();
        for db in dbs {
            self.mark_db_deleting(db, at);
        }
    }

    fn remove_tenant(&mut self, tenant: Uuid, at: Timestamp) {
        let dbs: Vec<Uuid> = self.dbs_of(tenant).map(|d| d.id).collect();
        for db in dbs {
            self.remove_db(db, at);
        }
        if let Some(t) = self.tenants.remove(&tenant) {
            self.tenants_by_name.remove(&t.name);
            self.tenants_by_pg_user.remove(&t.pg_user);
        }
        retain(&mut self.api_keys, |k| k.tenant() != Some(tenant));
    }

    fn add_db(&mut self, db: Db) {
        self.dbs_by_name
            .insert((db.tenant, name_hash(&db.name), db.id));
        self.dbs.insert(db.id, Arc::new(db));
    }

    fn remove_db(&mut self, db: Uuid, at: Timestamp) {
        self.bill_storage(db, at);
        self.active.remove(&db);
        if let Some(d) = self.dbs.remove(&db) {
            self.dbs_by_name
                .remove(&(d.tenant, name_hash(&d.name), d.id));
            // Removed while the worker holding its data was lost: the copy waits for it.
            if let Some(worker) = &d.data_on {
                self.stale_copies
                    .insert((worker.to_string(), db), d.timeline.to_string());
            }
            for lease in &d.live.leases {
                self.leases.remove(lease);
            }
        }
    }

    fn expire_idempotency(&mut self, now: Timestamp) {
        let horizon = Timestamp(now.0.saturating_sub(IDEMPOTENCY_TTL_MICROS));
        while let Some(first) = self.idempotency_by_time.get_min() {
            if first.0 >= horizon {
                break;
            }
            let (_, key_id, idem) = self.idempotency_by_time.remove_min().expect("non-empty");
            self.idempotency.remove(&(key_id, idem));
        }
    }

    /// Folds a sequence of events.
    pub fn apply_all<'a>(&mut self, envs: impl IntoIterator<Item = &'a Envelope>) {
        for env in envs {
            self.apply(env);
        }
    }

    /// The tenant called `name`.
    pub fn tenant_by_name(&self, name: &str) -> Option<&Tenant> {
        self.tenants_by_name
            .get(name)
            .and_then(|id| self.tenants.get(id))
            .map(|t| &**t)
    }

    /// The databases of a tenant, by name.
    pub fn dbs_of(&self, tenant: Uuid) -> impl Iterator<Item = &Db> + '_ {
        let mut dbs: Vec<&Db> = self
            .dbs_by_name
            .range((tenant, 0, Uuid::nil())..=(tenant, u64::MAX, Uuid::max()))
            .filter_map(|(_, _, id)| self.dbs.get(id).map(|d| &**d))
            .collect();
        dbs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        dbs.into_iter()
    }

    /// The database `name` of a tenant.
    pub fn db_by_name(&self, tenant: Uuid, name: &str) -> Option<&Db> {
        let hash = name_hash(name);
        self.dbs_by_name
            .range((tenant, hash, Uuid::nil())..=(tenant, hash, Uuid::max()))
            .filter_map(|(_, _, id)| self.dbs.get(id))
            .find(|d| d.name == name)
            .map(|d| &**d)
    }

    /// SHA-256 of the canonical encoding of the whole state, hex. Two states are equal exactly
    /// when their fingerprints are.
    pub fn fingerprint(&self) -> String {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding the state into memory cannot fail");
        let digest = Sha256::digest(&bytes);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            accounts: self.accounts.len(),
            api_keys: self.api_keys.len(),
            tenants: self.tenants.len(),
            dbs: self.dbs.len(),
            workers: self.workers.len(),
            leases: self.leases.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg99_events::{Actor, KeyScope, Permissions, Sealed};

    fn env(seq: u64, event: Event) -> Envelope {
        Envelope {
            seq,
            at: Timestamp(seq as i64 * 1_000),
            actor: Actor::System,
            request_id: format!("r{seq}"),
            account: None,
            tenant: None,
            tenant_id: None,
            db_id: None,
            event,
        }
    }

    fn scenario() -> Vec<Envelope> {
        let a = Uuid::from_u128(1);
        vec![
            env(
                1,
                Event::ApiKeyIssued {
                    key_id: "k1".into(),
                    scope: KeyScope::Global,
                    permissions: Permissions::ALL,
                    secret_hash: [3; 32],
                    expires_at: None,
                    name: Some("bootstrap".into()),
                },
            ),
            env(
                2,
                Event::AccountCreated {
                    account_id: a,
                    name: "acme".into(),
                    email: None,
                },
            ),
            env(
                3,
                Event::ServiceTokenSet {
                    secret_hash: [4; 32],
                },
            ),
        ]
    }

    #[test]
    fn given_a_log_when_replayed_twice_then_the_fingerprints_match() {
        let log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        let mut b = State::default();
        b.apply_all(&log);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.last_seq, 3);
        assert_eq!(
            a.counts(),
            Counts {
                accounts: 1,
                api_keys: 1,
                tenants: 0,
                dbs: 0,
                workers: 0,
                leases: 0,
            }
        );
    }

    #[test]
    fn given_an_applied_event_when_it_comes_again_then_nothing_changes() {
        let log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        let before = a.fingerprint();
        a.apply_all(&log);
        assert_eq!(before, a.fingerprint());
    }

    #[test]
    fn given_a_clone_when_the_original_moves_on_then_the_clone_stays_as_it_was() {
        let log = scenario();
        let mut live = State::default();
        live.apply_all(&log[..2]);
        let version = live.clone();
        let before = version.fingerprint();
        live.apply_all(&log[2..]);
        let account = Uuid::from_u128(1);
        live.apply(&env(
            4,
            Event::AccountContactSet {
                account_id: account,
                email: "ops@acme.test".into(),
                name: None,
            },
        ));
        assert_eq!(version.fingerprint(), before);
        assert_eq!(version.accounts[&account].email, None);
        assert_eq!(
            live.accounts[&account].email.as_deref(),
            Some("ops@acme.test")
        );
        let mut replayed = State::default();
        replayed.apply_all(&log[..2]);
        assert_eq!(version, replayed);
    }

    #[test]
    fn a_handoff_is_boxed_only_while_it_is_not_stable_and_encodes_as_its_fields() {
        fn encode<T: Serialize>(v: &T) -> Vec<u8> {
            bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
        }
        let candidate = Writer {
            worker_id: "w1".into(),
            profile: "L2".into(),
            term: 3,
            backend_addr: None,
            credentials: 0,
        };
        let handoff = Handoff {
            stage: ScaleStage::PreparingCandidate,
            target_profile: Some("L2".into()),
            candidate: Some(Box::new(candidate)),
            phase_started_at: Some(Timestamp(5)),
            phase_deadline_at: Some(Timestamp(9)),
            failure_reason: None,
        };
        let mut scale = Scale::new(handoff.clone());
        assert_eq!(encode(&scale), encode(&handoff));
        assert_eq!(scale.stage, ScaleStage::PreparingCandidate);
        let decoded: (Scale, usize) =
            bincode::serde::decode_from_slice(&encode(&scale), bincode::config::standard())
                .unwrap();
        assert_eq!(decoded.0, scale);

        // Back to a stable database's fields: no box, equal to the default, same encoding.
        assert!(scale.take_candidate().is_some());
        *scale.edit() = Handoff::default();
        scale.settle();
        assert_eq!(scale, Scale::default());
        assert_eq!(encode(&scale), encode(&Handoff::default()));
        assert!(std::mem::size_of::<Scale>() <= 8);
    }

    #[test]
    fn a_database_at_rest_holds_no_lifecycle_box_and_names_and_timelines_are_compact() {
        fn encode<T: Serialize>(v: &T) -> Vec<u8> {
            bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
        }
        let (account, tenant) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (db, other) = (Uuid::from_u128(3), Uuid::from_u128(4));
        let hex = "00ff112233445566778899aabbccddee";
        let mut s = State::default();
        let mut seq = 0;
        let mut step = |s: &mut State, event: Event| {
            seq += 1;
            s.apply(&Envelope {
                db_id: Some(db),
                ..env(seq, event)
            });
        };
        step(&mut s, scenario()[1].event.clone());
        step(
            &mut s,
            Event::TenantCreated {
                tenant_id: tenant,
                account_id: account,
                name: "acme".into(),
                pg_user: "u_0123456789abcdef".into(),
                pg_password: Sealed(vec![1; 40]),
            },
        );
        for (id, name, timeline) in [(db, "zeta", hex), (other, "alpha", "tl-1")] {
            step(
                &mut s,
                Event::DbCreated {
                    db_id: id,
                    tenant_id: tenant,
                    name: name.into(),
                    size: "L1".into(),
                    timeline: timeline.into(),
                },
            );
        }
        // Timelines: hexadecimal ones as their bytes, any other as text; shown as given.
        assert!(matches!(s.dbs[&db].timeline, Timeline::Hex(_)));
        assert_eq!(s.dbs[&db].timeline.to_string(), hex);
        assert_eq!(s.dbs[&other].timeline, "tl-1");
        assert_eq!(encode(&s.dbs[&db].timeline), encode(&hex));
        // Names: found through their hash, listed in name order.
        assert_eq!(s.db_by_name(tenant, "zeta").map(|d| d.id), Some(db));
        assert!(s.db_by_name(tenant, "zet").is_none());
        let names: Vec<&str> = s.dbs_of(tenant).map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);

        // At rest: no box, the fields read as at rest, and encoded as those fields.
        let at_rest = s.dbs[&db].clone();
        assert_eq!(at_rest.live, Live::default());
        assert!(at_rest.live.writer.is_none());
        assert_eq!(encode(&at_rest.live), encode(&Lifecycle::REST));
        step(
            &mut s,
            Event::DbStartRequested {
                db_id: db,
                worker_id: "w1".into(),
                profile: "L1".into(),
                writer_term: 1,
                deadline: Timestamp(9_000_000),
            },
        );
        assert!(s.dbs[&db].live.writer.is_some());
        assert_ne!(s.dbs[&db].live, Live::default());
        let decoded: (Db, usize) =
            bincode::serde::decode_from_slice(&encode(&*s.dbs[&db]), bincode::config::standard())
                .unwrap();
        assert_eq!(decoded.0, *s.dbs[&db]);
        step(
            &mut s,
            Event::DbStopped {
                db_id: db,
                reason: "idle".into(),
                retire: false,
            },
        );
        // Back at rest: the box is gone, and the record is what it was before the start but
        // for its writer term.
        assert_eq!(s.dbs[&db].live, Live::default());
        assert_eq!(s.dbs[&db].writer_term, 1);
        assert_eq!(
            Db {
                writer_term: 0,
                ..(*s.dbs[&db]).clone()
            },
            *at_rest
        );
    }

    #[test]
    fn given_different_logs_then_fingerprints_differ() {
        let mut log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        log.truncate(2);
        let mut b = State::default();
        b.apply_all(&log);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
