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
    /// Inline, like a database's name (no heap string for a name of up to 23 bytes).
    pub name: SmolStr,
    pub pg_user: SmolStr,
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
    /// Being restored to a point of its history: the old writer stops, a new one makes its
    /// data from the repository and serves.
    Restoring,
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
            DbState::Restoring => "restoring",
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
    pub timeline: Timeline,
    pub created_at: Timestamp,
    pub state: DbState,
    /// The highest writer term handed out: every start and every candidate gets the next.
    pub writer_term: u64,
    /// Leases granted under an older epoch are refused on renewal (fencing).
    pub lease_control_epoch: u64,
    /// What changes while it starts, serves and stops (its writer, leases, load, deadlines);
    /// kept out of line, and only while it differs from a database at rest.
    pub live: Live,
    /// The worker whose own storage holds the database's data: it starts there, and only
    /// there. `None` until a worker that keeps data has served it (simulated compute keeps
    /// none, so its databases start wherever there is room).
    pub data_on: Option<Box<str>>,
    /// What the storage repository holds of it; `None` until a writer on a repository serves
    /// it (boxed: a record without one pays a pointer).
    pub storage: Option<Box<Storage>>,
    /// The last restore done.
    pub last_restore: Option<Box<Restore>>,
    /// What it is a branch of (`None`: no branch).
    pub branch: Option<Box<Branch>>,
    /// High availability: turned on, its standby (`None`: never turned on).
    pub ha: Option<Box<Ha>>,
}

impl Db {
    /// A database just created, stopped, with no data yet.
    pub fn new(
        id: Uuid,
        tenant: Uuid,
        name: &str,
        size: &str,
        timeline: &str,
        at: Timestamp,
    ) -> Db {
        Db {
            id,
            tenant,
            name: SmolStr::new(name),
            size: SmolStr::new(size),
            timeline: Timeline::new(timeline),
            created_at: at,
            state: DbState::Stopped,
            writer_term: 0,
            lease_control_epoch: 1,
            live: Live::default(),
            data_on: None,
            storage: None,
            last_restore: None,
            branch: None,
            ha: None,
        }
    }

    /// Its high availability (never turned on: the default, off).
    pub fn ha(&self) -> &Ha {
        static OFF: Ha = Ha {
            enabled: false,
            standby: None,
            progress: StandbyState::None,
            standby_deadline_at: None,
            sync_wanted: None,
            sync_applied: None,
            sync_changes: 0,
            unprotected_reason: None,
            retry_at: None,
            failovers: 0,
            failover_started_at: None,
            last_failover_at: None,
        };
        self.ha.as_deref().unwrap_or(&OFF)
    }

    /// A branch whose data its first start has not made yet: what it is made from.
    pub fn unmade_branch(&self) -> Option<&Branch> {
        self.branch.as_deref().filter(|b| b.made_at.is_none())
    }

    /// What the repository holds of it (nothing known: the default).
    pub fn stored(&self) -> &Storage {
        static NONE: Storage = Storage {
            in_repository: false,
            backup_wanted: None,
            backups_asked: 0,
            backup_retry_at: None,
            last_backup_at: None,
            oldest_backup_at: None,
            bytes: 0,
            bytes_since: None,
            recoverable_until: None,
            archive_failure: None,
            warning: None,
        };
        self.storage.as_deref().unwrap_or(&NONE)
    }

    /// Whether a worker without its newest copy can make it from the repository: the
    /// repository holds a backup of its timeline.
    pub fn restorable(&self) -> bool {
        self.stored().last_backup_at.is_some()
    }
}

/// A database's timeline: the name of its history in the storage repository. The API makes
/// them of 32 lowercase hexadecimal digits, kept here as their 16 bytes (no heap string per
/// database); any other text as itself. Shown, compared and encoded as the text.
#[derive(Clone, PartialEq, Eq)]
pub enum Timeline {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl Timeline {
    pub fn new(text: &str) -> Timeline {
        match Timeline::hex(text) {
            Some(bytes) => Timeline::Hex(bytes),
            None => Timeline::Text(text.into()),
        }
    }

    /// The 16 bytes `text` spells in 32 lowercase hexadecimal digits, if it does.
    fn hex(text: &str) -> Option<[u8; 16]> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let b = text.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, out) in bytes.iter_mut().enumerate() {
            *out = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
        }
        Some(bytes)
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timeline::Hex(bytes) => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut text = [0u8; 32];
                for (i, b) in bytes.iter().enumerate() {
                    text[2 * i] = DIGITS[usize::from(b >> 4)];
                    text[2 * i + 1] = DIGITS[usize::from(b & 15)];
                }
                f.write_str(std::str::from_utf8(&text).expect("hexadecimal digits"))
            }
            Timeline::Text(text) => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl PartialEq<str> for Timeline {
    fn eq(&self, other: &str) -> bool {
        match self {
            Timeline::Hex(bytes) => Timeline::hex(other) == Some(*bytes),
            Timeline::Text(text) => **text == *other,
        }
    }
}

impl PartialEq<&str> for Timeline {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<String> for Timeline {
    fn eq(&self, other: &String) -> bool {
        *self == **other
    }
}

impl Serialize for Timeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Timeline::new(&String::deserialize(d)?))
    }
}

/// What of a database changes while it starts, serves and stops. A database at rest (most of
/// them) holds none of it: [`Live`] keeps it boxed only while it differs from [`Lifecycle::REST`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// The writer placed for this database (starting, serving or stopping); `None` when
    /// no compute holds it.
    pub writer: Option<Box<Writer>>,
    /// Deadline of the start or stop in progress.
    pub phase_started_at: Option<Timestamp>,
    pub phase_deadline_at: Option<Timestamp>,
    /// Starts that failed in a row; reset by a successful start.
    pub failed_starts: u32,
    /// Why the database is `failed`, or why its last start failed.
    pub failure_reason: Option<String>,
    pub scale: Scale,
    pub freeze_new_checkouts: bool,
    pub autoscale_cooldown_until: Option<Timestamp>,
    /// The Gateway's leases on this database.
    pub leases: BTreeSet<Uuid>,
    /// Running with no lease since then; `None` while leased or not running.
    pub idle_since: Option<Timestamp>,
    /// The last recorded load.
    pub cpu_milli: u32,
    pub active_connections: u32,
    /// When the serving writer started serving on its current profile (billing).
    pub running_since: Option<Timestamp>,
    /// The load band of the recorded load, and since when (the autoscaler's window).
    pub load_band: LoadBand,
    pub load_band_since: Timestamp,
    /// The restore in progress (state `restoring`).
    pub restore: Option<Box<Restore>>,
}

impl Lifecycle {
    /// A database at rest: no writer, no lease, nothing in progress.
    pub const REST: Lifecycle = Lifecycle {
        writer: None,
        phase_started_at: None,
        phase_deadline_at: None,
        failed_starts: 0,
        failure_reason: None,
        scale: Scale::STABLE,
        freeze_new_checkouts: false,
        autoscale_cooldown_until: None,
        leases: BTreeSet::new(),
        idle_since: None,
        cpu_milli: 0,
        active_connections: 0,
        running_since: None,
        load_band: LoadBand::Low,
        load_band_since: Timestamp(0),
        restore: None,
    };
}

/// Fields most records hold at one resting value, kept out of line: [`OutOfLine`] boxes them
/// only while they differ from [`AtRest::rest`].
pub trait AtRest: Clone + PartialEq + 'static {
    /// The value most records hold.
    fn rest() -> &'static Self;
}

/// `T`'s fields, in a box only while they differ from [`AtRest::rest`] (a record without the
/// box pays a pointer). Reads see the fields through `Deref` (at rest: the shared value);
/// changing one through `DerefMut` makes the box, and [`OutOfLine::settle`] drops it once they
/// are back at rest. Compares, encodes and decodes as the fields themselves: whether a box is
/// held is not part of the state.
#[derive(Clone)]
pub struct OutOfLine<T>(Option<Box<T>>);

impl<T> Default for OutOfLine<T> {
    fn default() -> Self {
        OutOfLine(None)
    }
}

impl<T: AtRest> OutOfLine<T> {
    pub fn new(fields: T) -> Self {
        let mut out = OutOfLine(Some(Box::new(fields)));
        out.settle();
        out
    }

    /// Drops the box if the fields are at rest again.
    pub fn settle(&mut self) {
        if self.needs_settling() {
            self.0 = None;
        }
    }

    /// Whether [`OutOfLine::settle`] would drop something.
    pub fn needs_settling(&self) -> bool {
        self.0.as_deref() == Some(T::rest())
    }
}

impl<T: AtRest> std::ops::Deref for OutOfLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::rest())
    }
}

impl<T: AtRest> std::ops::DerefMut for OutOfLine<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(|| Box::new(T::rest().clone()))
    }
}

impl<T: AtRest> PartialEq for OutOfLine<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: AtRest + Eq> Eq for OutOfLine<T> {}

impl<T: AtRest + std::fmt::Debug> std::fmt::Debug for OutOfLine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: AtRest + Serialize> Serialize for OutOfLine<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: AtRest + Deserialize<'de>> Deserialize<'de> for OutOfLine<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(OutOfLine::new)
    }
}

impl AtRest for Lifecycle {
    fn rest() -> &'static Lifecycle {
        static REST: Lifecycle = Lifecycle::REST;
        &REST
    }
}

/// A database's [`Lifecycle`], boxed only while it is not at rest: a stopped database's
/// record is 14 fields (~170 bytes) smaller.
pub type Live = OutOfLine<Lifecycle>;

/// A database's high availability: a synchronous standby on another worker, and what the
/// writer confirmed of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ha {
    pub enabled: bool,
    /// The standby placed (its term is its application name's: `spg99_s<term>`).
    pub standby: Option<Box<Writer>>,
    /// How far the standby got (up to streaming: whether it is synchronous follows from
    /// what the writer confirmed, [`Ha::standby_state`]).
    pub progress: StandbyState,
    /// When the standby being built must stream by.
    pub standby_deadline_at: Option<Timestamp>,
    /// The standby (term) the writer's commits are to wait for.
    pub sync_wanted: Option<u64>,
    /// What the writer confirmed: (its term, the standby its commits wait for).
    pub sync_applied: Option<(u64, Option<u64>)>,
    /// Bumped at each change of `sync_wanted`: each is other work for the writer.
    pub sync_changes: u64,
    /// Why the database is not protected (`None` while it is, or HA is off).
    pub unprotected_reason: Option<String>,
    /// No standby is built before this (one was just given up).
    pub retry_at: Option<Timestamp>,
    pub failovers: u64,
    /// The failover under way (its standby starting as the writer) began then.
    pub failover_started_at: Option<Timestamp>,
    pub last_failover_at: Option<Timestamp>,
}

impl Ha {
    /// Every commit the writer acknowledges is on the standby too: the writer confirmed the
    /// standby the control plane wants, and nothing asked to relax since.
    pub fn protected(&self, writer_term: u64) -> bool {
        let standby = self.standby.as_ref().map(|s| s.term);
        standby.is_some()
            && self.sync_wanted == standby
            && self.sync_applied == Some((writer_term, standby))
    }

    /// Where the standby stands: `Sync` once the writer confirmed waiting for the standby
    /// the control plane wants.
    pub fn standby_state(&self) -> StandbyState {
        let standby = self.standby.as_ref().map(|s| s.term);
        let confirmed = self.sync_applied.map(|(_, s)| s) == Some(standby);
        match self.progress {
            StandbyState::Streaming
                if standby.is_some() && self.sync_wanted == standby && confirmed =>
            {
                StandbyState::Sync
            }
            progress => progress,
        }
    }
}

/// Where a standby stands, as `standby_state` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StandbyState {
    #[default]
    None,
    /// Being made from the repository.
    Building,
    /// Its server runs, catching up with the writer.
    CatchingUp,
    /// Streaming; the writer is asked to wait for it.
    Streaming,
    /// The writer waits for it at every commit.
    Sync,
}

impl StandbyState {
    pub fn as_str(self) -> &'static str {
        match self {
            StandbyState::None => "none",
            StandbyState::Building => "building",
            StandbyState::CatchingUp => "catching_up",
            StandbyState::Streaming => "streaming",
            StandbyState::Sync => "sync",
        }
    }
}

/// What the storage repository holds of a database's current timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// Its timeline may be there (a backup was asked for, so its stanza was made): deleting
    /// the database removes it from there too.
    pub in_repository: bool,
    /// A backup of the writer of this term is wanted (listed to its worker until reported).
    /// Void once that writer no longer serves: the policy asks again of the next one.
    pub backup_wanted: Option<u64>,
    /// How many backups were asked for (each one's number tells it from the others).
    pub backups_asked: u64,
    /// After a failed backup, none is asked for again before this.
    pub backup_retry_at: Option<Timestamp>,
    /// When the newest backup became consistent.
    pub last_backup_at: Option<Timestamp>,
    /// When the oldest backup kept became consistent: the earliest restorable point.
    pub oldest_backup_at: Option<Timestamp>,
    /// The timeline's size in the repository, as last measured (a backup), and since when
    /// it is billed at that size.
    pub bytes: u64,
    pub bytes_since: Option<Timestamp>,
    /// The newest point the repository holds, as last reported (a stop, a backup).
    pub recoverable_until: Option<Timestamp>,
    /// Why archiving fails now (the serving writer's heartbeats say so).
    pub archive_failure: Option<String>,
    /// Why the repository may not hold everything: a stop that could not archive its last
    /// WAL, a backup that failed. Cleared by the next complete stop or backup.
    pub warning: Option<String>,
}

/// A restore: the database's new timeline is made from `from_timeline` as of `time` (or
/// `lsn`; neither: its newest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub from_timeline: String,
    /// A branch's reset: the parent whose data `from_timeline` is (copied from its worker
    /// when its newest copy is there).
    pub parent: Option<Uuid>,
    pub time: Option<Timestamp>,
    pub lsn: Option<String>,
    /// The database that keeps the state from before.
    pub kept_db_id: Uuid,
    pub requested_at: Timestamp,
    /// When its writer first served (the restore done).
    pub restored_at: Option<Timestamp>,
}

/// What a branch is made from: its parent's data as of `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub parent_db_id: Uuid,
    /// The parent's timeline when branched (`None`: it held no data).
    pub parent_timeline: Option<String>,
    /// The point the branch has the parent's data as of (the request, if none was given).
    pub at: Timestamp,
    /// The point its first start restores from the repository (a point in the past); `None`:
    /// the parent's data as it is at that start.
    pub time: Option<Timestamp>,
    /// When its first start made its data (and it served).
    pub made_at: Option<Timestamp>,
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
/// record). Changes go through [`Scale::edit`].
pub type Scale = OutOfLine<Handoff>;

impl AtRest for Handoff {
    fn rest() -> &'static Handoff {
        /// What a stable database's handoff holds.
        static STABLE: Handoff = Handoff {
            stage: ScaleStage::Stable,
            target_profile: None,
            candidate: None,
            phase_started_at: None,
            phase_deadline_at: None,
            failure_reason: None,
        };
        &STABLE
    }
}

impl Scale {
    /// A stable database's: no handoff.
    pub const STABLE: Scale = OutOfLine(None);

    /// The fields, to change; call [`OutOfLine::settle`] after, or use
    /// [`Scale::take_candidate`].
    pub fn edit(&mut self) -> &mut Handoff {
        self
    }

    pub fn take_candidate(&mut self) -> Option<Box<Writer>> {
        let candidate = self.0.as_mut().and_then(|h| h.candidate.take());
        self.settle();
        candidate
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
    /// It keeps databases' data on its own storage (one did: a `db.data_placed` named it).
    pub keeps_data: bool,
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
    /// Byte-microseconds of the database in the storage repository.
    pub storage_byte_micros: u128,
}

/// The first answer to an idempotent request, kept for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub request_hash: [u8; 32],
    pub status: u16,
    pub body: Sealed,
    pub recorded_at: Timestamp,
}
