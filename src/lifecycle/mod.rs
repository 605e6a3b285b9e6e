//! The database lifecycle: workers, Gateway checkouts and leases, the reconciler's steps and
//! the autoscaler. Every rule that moves a database between `stopped`, `starting`,
//! `running` and `stopping`, or through a handoff, is decided here, one room per
//! responsibility (as a storage controller splits its scheduler, heartbeater and reconciler):
//!
//! - `workers`: registrations, heartbeats, a worker declared lost;
//! - `reports`: what workers report about their instructions;
//! - `leases`: the Gateway's checkouts, renewals and releases;
//! - `scheduler`: which worker a writer goes to (no state of its own);
//! - `autoscaler`: load bands and the handoffs they call for;
//! - `ha`: standbys (placement, readiness from heartbeats, relaxing) and failovers;
//! - `reconcile`: the steps only time decides;
//! - `instructions`: what each worker must do now, derived from the state.
//!
//! [`crate::commands::decide`] hands these commands to [`decide`], which, like it, reads the
//! state the command will be applied to and returns the events that record it. Two things
//! are added for the lifecycle:
//!
//! - `now`, the time the committer stamps on the batch (from the clock the server was given,
//!   which tests can control), because leases, deadlines and idle timers are about time;
//! - [`Runtime`], the soft state that is *not* logged: when each lease was last renewed and
//!   with how many connections, when each worker last heartbeated, and the CPU it reported.
//!   Renewals and heartbeats are frequent; writing an event for each would fill the log with
//!   noise, so only transitions are events (granted, released, expired, worker lost, load
//!   band crossed). After a restart the soft state is rebuilt from the log with one period of
//!   grace: every live lease is good for one more TTL, every live worker for one more
//!   worker timeout.
//!
//! The decisions that only time makes (a lease not renewed, a worker silent, a phase past its
//! deadline, a database idle, a load sustained) are made by the reconciler's steps
//! ([`Step`]), submitted as commands with actor `system`.

mod autoscaler;
mod ha;
mod instructions;
mod leases;
mod reconcile;
mod reports;
mod scheduler;
mod workers;

use std::collections::HashMap;
use std::time::Duration;

use spg99_events::{Actor, Event, Timestamp};
use spg99_projections::{Db, DbState, State, Tenant};
use uuid::Uuid;

use crate::decision::{forbidden, CommandMeta, Draft, Rejection, Subject};
pub use autoscaler::{Autoscaler, HYSTERESIS_MILLI};
pub use instructions::instructions;
pub use reconcile::Step;
pub use scheduler::{branch_worker, occupancy};
pub use spg99_wire::{Instruction, Op, Outcome};
pub use workers::live_worker;

/// The lifecycle's tunables. Defaults are the documented production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A lease not renewed for this long expires.
    pub lease_ttl: Duration,
    /// A running database with no lease for this long is stopped.
    pub idle_timeout: Duration,
    /// A worker silent for this long is declared lost.
    pub worker_timeout: Duration,
    /// ...or this long, if it holds a writer or a standby of a database with high
    /// availability (its failover waits for it).
    pub ha_worker_timeout: Duration,
    /// A standby its writer has not seen streaming for this long is given up (commits stop
    /// waiting for it).
    pub standby_timeout: Duration,
    /// How often workers are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// Each phase (start, stop, prepare candidate, cutover) must finish within this.
    pub phase_deadline: Duration,
    /// A start that restores from the repository must finish within this.
    pub restore_deadline: Duration,
    /// Starts that may fail in a row before the database goes `failed`.
    pub max_failed_starts: u32,
    pub autoscaler: Autoscaler,
    /// The storage repository databases are kept in (handed to workers as they register);
    /// `None`: each database's data stays on the worker that serves it.
    pub storage: Option<spg99_wire::storage::Storage>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_ttl: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            worker_timeout: Duration::from_secs(15),
            ha_worker_timeout: Duration::from_millis(1500),
            standby_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(5),
            phase_deadline: Duration::from_secs(60),
            restore_deadline: Duration::from_secs(1800),
            max_failed_starts: 3,
            autoscaler: Autoscaler::default(),
            storage: None,
        }
    }
}

/// What a database's writer reports about its load.
#[derive(Debug, Clone)]
pub struct Load {
    pub db_id: Uuid,
    pub cpu_milli: u32,
    pub active_connections: u32,
    /// With a repository: how the writer's archiving goes.
    pub archive: Option<ArchiveLoad>,
    /// With high availability: its standbys.
    pub replicas: Vec<spg99_wire::Replica>,
}

/// A writer's archiving, as its heartbeat says (see [`spg99_wire::Archiving`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveLoad {
    pub archived_at: Option<Timestamp>,
    pub failure: Option<String>,
    pub lag_secs: u64,
}

/// What a worker reports about an instruction.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub worker_id: String,
    pub db_id: Uuid,
    pub writer_term: u64,
    pub outcome: Outcome,
    pub backend_addr: Option<String>,
    pub reason: Option<String>,
    /// The writer keeps the database's data on the worker's own storage.
    pub keeps_data: bool,
    /// `role_updated`: the tenant's credentials the role has now.
    pub credentials: Option<u64>,
    /// `stopped`: what the writer left in the storage repository.
    pub stored: Option<StoredReport>,
    /// `backed_up`: the backup.
    pub backup: Option<BackupReport>,
    /// `replicated`: the standby the writer's commits wait for.
    pub standby_term: Option<u64>,
}

/// What a stopped writer left in the repository (see [`spg99_wire::Stored`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub complete: bool,
    pub recoverable_until: Option<Timestamp>,
    pub reason: Option<String>,
}

/// A backup in the repository (see [`spg99_wire::BackupTaken`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupReport {
    pub label: String,
    pub started_at: Timestamp,
    pub stopped_at: Timestamp,
    pub oldest_at: Timestamp,
    pub repository_bytes: u64,
}

#[derive(Debug, Clone)]
pub enum Lifecycle {
    RegisterWorker {
        id: String,
        address: String,
        capacity: u32,
        profiles: Vec<String>,
        instance: String,
    },
    Heartbeat {
        worker_id: String,
        loads: Vec<Load>,
    },
    Report(Box<WorkerReport>),
    Checkout {
        pg_user: String,
        db: String,
        lease_id: Uuid,
    },
    Renew {
        lease_id: Uuid,
        lease_control_epoch: u64,
        active_connections: u32,
    },
    /// The connection count a release carries is not needed: the lease's share ends with it.
    Release {
        lease_id: Uuid,
    },
    Reconcile(Step),
}

/// What a lifecycle command answers, beyond its events.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    None,
    /// A report or registration: `false` when it changed nothing (stale or repeated).
    Accepted(bool),
    /// A route to a running database.
    Lease {
        db_id: Uuid,
        backend_addr: String,
        worker_id: String,
        lease_id: Uuid,
        lease_ttl_ms: u64,
        lease_control_epoch: u64,
        profile: String,
    },
    /// Not running yet.
    Pending {
        db_id: Uuid,
        state: DbState,
    },
    Renewed {
        expires_at: Timestamp,
    },
}

/// The soft state of the lifecycle: not in the log, rebuilt with grace after a restart.
#[derive(Debug, Default)]
pub struct Runtime {
    /// Per lease: when it expires unless renewed, and the connections last reported on it.
    pub(super) leases: HashMap<Uuid, (Timestamp, u32)>,
    /// Per worker: the last heartbeat (or registration).
    pub(super) workers_seen: HashMap<String, Timestamp>,
    /// Per database: the CPU and connections its writer last reported.
    pub(super) writer_load: HashMap<Uuid, (u32, u32)>,
    /// Per database: when its writer last saw its standby (term) streaming.
    pub(super) standby_seen: HashMap<Uuid, (u64, Timestamp)>,
}

impl Runtime {
    /// The soft state after a restart: every live lease and worker gets one period of grace
    /// from `now`.
    pub fn recovered(state: &State, now: Timestamp, settings: &Settings) -> Runtime {
        let lease_until = after(now, settings.lease_ttl);
        Runtime {
            leases: state
                .leases
                .keys()
                .map(|id| (*id, (lease_until, 0)))
                .collect(),
            workers_seen: state
                .workers
                .values()
                .filter(|w| w.lost_at.is_none())
                .map(|w| (w.id.clone(), now))
                .collect(),
            writer_load: HashMap::new(),
            standby_seen: HashMap::new(),
        }
    }
}

pub(super) fn after(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_micros(t.as_micros().saturating_add(d.as_micros() as i64))
}

/// How long a start of `db` on `worker_id` may take: a start that first restores the
/// database from the repository (a point in time asked for, or a worker without its newest
/// copy) gets the restore deadline, as the copy takes as long as the database's size asks.
pub(super) fn start_limit(settings: &Settings, db: &Db, worker_id: &str) -> Duration {
    let restores = db.live.restore.is_some()
        || db.unmade_branch().is_some()
        || (db.restorable() && db.data_on.as_deref() != Some(worker_id));
    match restores {
        true => settings.restore_deadline,
        false => settings.phase_deadline,
    }
}

/// Everything a lifecycle decision reads besides the state.
pub struct Context<'a> {
    pub runtime: &'a mut Runtime,
    pub settings: &'a Settings,
    pub now: Timestamp,
}

/// Decides one lifecycle command.
pub fn decide(
    state: &State,
    cx: &mut Context<'_>,
    meta: &CommandMeta,
    command: &Lifecycle,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    match (&meta.actor, command) {
        (Actor::System, Lifecycle::Reconcile(step)) => {
            Ok((reconcile::reconcile(state, cx, *step), Answer::None))
        }
        (_, Lifecycle::Reconcile(_)) => Err(forbidden(
            "system_only",
            "only the reconciler runs reconciliation steps",
        )),
        (
            _,
            Lifecycle::RegisterWorker {
                id,
                address,
                capacity,
                profiles,
                instance,
            },
        ) => workers::register(state, cx, id, address, *capacity, profiles, instance),
        (_, Lifecycle::Heartbeat { worker_id, loads }) => Ok((
            workers::heartbeat(state, cx, worker_id, loads)?,
            Answer::None,
        )),
        (_, Lifecycle::Report(r)) => {
            live_worker(state, &r.worker_id)?;
            let drafts = reports::report(state, cx, r)?;
            let accepted = !drafts.is_empty();
            Ok((drafts, Answer::Accepted(accepted)))
        }
        (
            _,
            Lifecycle::Checkout {
                pg_user,
                db,
                lease_id,
            },
        ) => leases::checkout(state, cx, pg_user, db, *lease_id),
        (
            _,
            Lifecycle::Renew {
                lease_id,
                lease_control_epoch,
                active_connections,
            },
        ) => leases::renew(
            state,
            cx,
            *lease_id,
            *lease_control_epoch,
            *active_connections,
        ),
        (_, Lifecycle::Release { lease_id }) => leases::release(state, cx, *lease_id),
    }
}

pub(super) fn tenant_of<'s>(state: &'s State, db: &Db) -> Result<&'s Tenant, Rejection> {
    state
        .tenants
        .get(&db.tenant)
        .map(|t| &**t)
        .ok_or(Rejection::NotFound { what: "tenant" })
}

pub(super) fn scale_failed(
    subject: Subject,
    db_id: Uuid,
    reason: String,
    cooldown_until: Timestamp,
) -> Draft {
    Draft::new(
        subject,
        Event::DbScaleFailed {
            db_id,
            reason,
            cooldown_until,
        },
    )
}
