//! The database lifecycle: workers, Gateway checkouts and leases, the reconciler's steps and
//! the autoscaler. Every rule that moves a database between `stopped`, `starting`,
//! `running` and `stopping`, or through a handoff, is decided here.
//!
//! Like [`crate::commands::decide`], [`decide`] reads the state the command will be applied
//! to and returns the events that record it. Two things are added for the lifecycle:
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use spg99_events::{Actor, Event, LoadBand, Timestamp};
use spg99_projections::{Db, DbState, Retire, ScaleStage, State, Tenant, Writer};
use uuid::Uuid;

use crate::catalog;
use crate::commands::{conflict, CommandMeta, Draft, Rejection, Subject};
pub use spg99_wire::{Instruction, Op, Outcome};

/// The lifecycle's tunables. Defaults are the documented production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A lease not renewed for this long expires.
    pub lease_ttl: Duration,
    /// A running database with no lease for this long is stopped.
    pub idle_timeout: Duration,
    /// A worker silent for this long is declared lost.
    pub worker_timeout: Duration,
    /// How often workers are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// Each phase (start, stop, prepare candidate, cutover) must finish within this.
    pub phase_deadline: Duration,
    /// Starts that may fail in a row before the database goes `failed`.
    pub max_failed_starts: u32,
    pub autoscaler: Autoscaler,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_ttl: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            worker_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            phase_deadline: Duration::from_secs(60),
            max_failed_starts: 3,
            autoscaler: Autoscaler::default(),
        }
    }
}

/// The autoscaler's policy. CPU is the fraction of the writer's profile in use, in
/// thousandths (1000 = the whole profile).
#[derive(Debug, Clone)]
pub struct Autoscaler {
    /// At or above this, the load is `high`.
    pub high_cpu_milli: u32,
    /// At or below this, the load is `low`.
    pub low_cpu_milli: u32,
    /// `high` this long moves the writer one profile up (within the size).
    pub up_sustain: Duration,
    /// `low` this long moves it one profile down.
    pub down_sustain: Duration,
    /// No new handoff for this long after one ends (completed or failed).
    pub cooldown: Duration,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Autoscaler {
            high_cpu_milli: 800,
            low_cpu_milli: 200,
            up_sustain: Duration::from_secs(60),
            down_sustain: Duration::from_secs(300),
            cooldown: Duration::from_secs(300),
        }
    }
}

/// How far past a threshold the load must come back to leave its band (thousandths).
pub const HYSTERESIS_MILLI: u32 = 50;

impl Autoscaler {
    /// The band of a CPU reading, given the band the database is in: entering `high` takes
    /// the high threshold, leaving it takes [`HYSTERESIS_MILLI`] less (and the other way
    /// round for `low`), so that a load hovering at a threshold does not flap.
    pub fn band(&self, current: LoadBand, cpu_milli: u32) -> LoadBand {
        let (high, low) = match current {
            LoadBand::High => (
                self.high_cpu_milli.saturating_sub(HYSTERESIS_MILLI),
                self.low_cpu_milli,
            ),
            LoadBand::Low => (self.high_cpu_milli, self.low_cpu_milli + HYSTERESIS_MILLI),
            LoadBand::Normal => (self.high_cpu_milli, self.low_cpu_milli),
        };
        if cpu_milli >= high {
            LoadBand::High
        } else if cpu_milli <= low {
            LoadBand::Low
        } else {
            LoadBand::Normal
        }
    }
}

/// What a database's writer reports about its load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub db_id: Uuid,
    pub cpu_milli: u32,
    pub active_connections: u32,
}

/// The reconciler's steps, in the order it runs them. Each sees the effects of the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ExpireLeases,
    LoseWorkers,
    Deadlines,
    IdleStops,
    Autoscale,
    FinishDeletions,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::ExpireLeases,
        Step::LoseWorkers,
        Step::Deadlines,
        Step::IdleStops,
        Step::Autoscale,
        Step::FinishDeletions,
    ];
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
    Report {
        worker_id: String,
        db_id: Uuid,
        writer_term: u64,
        outcome: Outcome,
        backend_addr: Option<String>,
        reason: Option<String>,
        /// The writer keeps the database's data on the worker's own storage.
        keeps_data: bool,
        /// `role_updated`: the tenant's credentials the role has now.
        credentials: Option<u64>,
    },
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
    leases: HashMap<Uuid, (Timestamp, u32)>,
    /// Per worker: the last heartbeat (or registration).
    workers_seen: HashMap<String, Timestamp>,
    /// Per database: the CPU and connections its writer last reported.
    writer_load: HashMap<Uuid, (u32, u32)>,
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
        }
    }
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_micros(t.as_micros().saturating_add(d.as_micros() as i64))
}

/// Everything a lifecycle decision reads besides the state.
pub struct Context<'a> {
    pub runtime: &'a mut Runtime,
    pub settings: &'a Settings,
    pub now: Timestamp,
}

fn gone(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Gone {
        code,
        message: message.into(),
    }
}

fn busy(code: &'static str, message: impl Into<String>, retry_after_secs: u32) -> Rejection {
    Rejection::Busy {
        code,
        message: message.into(),
        retry_after_secs,
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field,
        message: message.into(),
    }
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
            Ok((reconcile(state, cx, *step), Answer::None))
        }
        (_, Lifecycle::Reconcile(_)) => Err(Rejection::Forbidden {
            code: "system_only",
            message: "only the reconciler runs reconciliation steps".into(),
        }),
        (
            _,
            Lifecycle::RegisterWorker {
                id,
                address,
                capacity,
                profiles,
                instance,
            },
        ) => register(state, cx, id, address, *capacity, profiles, instance),
        (_, Lifecycle::Heartbeat { worker_id, loads }) => {
            live_worker(state, worker_id)?;
            cx.runtime.workers_seen.insert(worker_id.clone(), cx.now);
            let mut drafts = Vec::new();
            for load in loads {
                let serves = state.dbs.get(&load.db_id).is_some_and(|d| {
                    d.state == DbState::Running
                        && d.writer.as_ref().is_some_and(|w| &w.worker_id == worker_id)
                });
                if serves {
                    cx.runtime
                        .writer_load
                        .insert(load.db_id, (load.cpu_milli, load.active_connections));
                    drafts.extend(load_change(state, cx, load.db_id));
                }
            }
            Ok((drafts, Answer::None))
        }
        (
            _,
            Lifecycle::Report {
                worker_id,
                db_id,
                writer_term,
                outcome,
                backend_addr,
                reason,
                keeps_data,
                credentials,
            },
        ) => {
            live_worker(state, worker_id)?;
            let drafts = report(
                state,
                cx,
                worker_id,
                *db_id,
                *writer_term,
                *outcome,
                backend_addr.as_deref(),
                reason.as_deref(),
                *keeps_data,
                *credentials,
            )?;
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
        ) => checkout(state, cx, pg_user, db, *lease_id),
        (
            _,
            Lifecycle::Renew {
                lease_id,
                lease_control_epoch,
                active_connections,
            },
        ) => {
            let (lease, db) = live_lease(state, cx, *lease_id)?;
            if lease.epoch != db.lease_control_epoch {
                return Err(conflict(
                    "stale_epoch",
                    format!(
                        "this lease was granted under lease_control_epoch {}; the database moved \
                         to epoch {} (a handoff): release it and check out again",
                        lease.epoch, db.lease_control_epoch
                    ),
                ));
            }
            if *lease_control_epoch != db.lease_control_epoch {
                return Err(conflict(
                    "stale_epoch",
                    format!(
                        "lease_control_epoch {lease_control_epoch} is not the database's current \
                         epoch {}: check out again",
                        db.lease_control_epoch
                    ),
                ));
            }
            let expires_at = after(cx.now, cx.settings.lease_ttl);
            cx.runtime
                .leases
                .insert(*lease_id, (expires_at, *active_connections));
            let drafts = load_change(state, cx, db.id).into_iter().collect();
            Ok((drafts, Answer::Renewed { expires_at }))
        }
        (_, Lifecycle::Release { lease_id }) => {
            let (lease, db) = live_lease(state, cx, *lease_id)?;
            let t = tenant_of(state, db)?;
            cx.runtime.leases.remove(lease_id);
            let last = !db.leases.iter().any(|l| cx.runtime.leases.contains_key(l));
            if let Some((_, conns)) = cx.runtime.writer_load.get_mut(&db.id).filter(|_| last) {
                // The writer's count is as old as its last heartbeat, and the last lease going
                // means its sessions went with it; its next heartbeat says otherwise if not.
                *conns = 0;
            }
            let mut drafts = vec![Draft::new(
                Subject::db(t, db.id),
                Event::LeaseReleased { lease_id: lease.id },
            )];
            drafts.extend(load_change(state, cx, db.id));
            Ok((drafts, Answer::Accepted(true)))
        }
    }
}

fn tenant_of<'s>(state: &'s State, db: &Db) -> Result<&'s Tenant, Rejection> {
    state
        .tenants
        .get(&db.tenant)
        .map(|t| &**t)
        .ok_or(Rejection::NotFound { what: "tenant" })
}

/// The worker, registered and not lost; `worker_unknown` otherwise (it must register again).
pub fn live_worker<'s>(
    state: &'s State,
    worker_id: &str,
) -> Result<&'s spg99_projections::Worker, Rejection> {
    state
        .workers
        .get(worker_id)
        .map(|w| &**w)
        .filter(|w| w.lost_at.is_none())
        .ok_or_else(|| {
            gone(
                "worker_unknown",
                format!(
                    "worker {worker_id:?} is not registered (or was declared lost): register again"
                ),
            )
        })
}

/// A lease that exists and has not run out; one that ran out is gone even before the
/// reconciler records its expiry.
fn live_lease<'s>(
    state: &'s State,
    cx: &Context<'_>,
    lease_id: Uuid,
) -> Result<(&'s spg99_projections::Lease, &'s Db), Rejection> {
    let lease = state.leases.get(&lease_id).ok_or_else(|| {
        gone(
            "lease_not_found",
            "no such lease (released, expired, or its database stopped)",
        )
    })?;
    let expired = cx
        .runtime
        .leases
        .get(&lease_id)
        .is_none_or(|(until, _)| *until <= cx.now);
    if expired {
        return Err(gone(
            "lease_expired",
            "the lease was not renewed within its TTL: check out again",
        ));
    }
    let db = state
        .dbs
        .get(&lease.db_id)
        .ok_or_else(|| gone("lease_not_found", "the lease's database is gone"))?;
    Ok((lease, db))
}

#[allow(clippy::too_many_arguments)]
fn register(
    state: &State,
    cx: &mut Context<'_>,
    id: &str,
    address: &str,
    capacity: u32,
    profiles: &[String],
    instance: &str,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        return Err(invalid("id", "1 to 64 letters, digits, '.', '_' or '-'"));
    }
    if address.is_empty() || address.len() > 255 {
        return Err(invalid("address", "host:port, at most 255 characters"));
    }
    if capacity == 0 || capacity > 100_000 {
        return Err(invalid("capacity", "between 1 and 100000 writers"));
    }
    if profiles.is_empty() {
        return Err(invalid(
            "profiles",
            "name at least one profile from the catalog",
        ));
    }
    if let Some(p) = profiles.iter().find(|p| catalog::profile(p).is_none()) {
        return Err(invalid(
            "profiles",
            format!("unknown profile {p:?} (GET /v2/sizes)"),
        ));
    }
    if instance.is_empty() || instance.len() > 128 {
        return Err(invalid("instance", "1 to 128 characters"));
    }
    let mut drafts = Vec::new();
    let unchanged = match state.workers.get(id) {
        Some(w) if w.lost_at.is_none() && w.instance != instance => {
            // The process restarted: whatever the old instance ran is gone.
            drafts.extend(lose_worker(
                state,
                cx,
                id,
                "the worker restarted (new instance)",
            ));
            false
        }
        Some(w) => {
            w.lost_at.is_none()
                && w.address == address
                && w.capacity == capacity
                && w.profiles == profiles
        }
        None => false,
    };
    cx.runtime.workers_seen.insert(id.to_owned(), cx.now);
    if !unchanged {
        drafts.push(Draft::global(Event::WorkerRegistered {
            worker_id: id.to_owned(),
            address: address.to_owned(),
            capacity,
            profiles: profiles.to_vec(),
            instance: instance.to_owned(),
        }));
    }
    let accepted = !drafts.is_empty();
    Ok((drafts, Answer::Accepted(accepted)))
}

/// Everything a lost worker held: writers stop (or their start fails), handoffs that
/// needed it fail; then the worker itself is marked lost.
fn lose_worker(state: &State, cx: &Context<'_>, worker_id: &str, reason: &str) -> Vec<Draft> {
    let cooldown_until = after(cx.now, cx.settings.autoscaler.cooldown);
    let mut drafts = Vec::new();
    for db in state.active_dbs() {
        let Some(t) = state.tenants.get(&db.tenant) else {
            continue;
        };
        let on = |w: &Option<Box<Writer>>| w.as_ref().is_some_and(|w| w.worker_id == worker_id);
        let writer_here = on(&db.writer);
        let candidate_here = on(&db.scale.candidate);
        if db.state == DbState::Deleting || !(writer_here || candidate_here) {
            continue;
        }
        let subject = Subject::db(t, db.id);
        if db.scale.stage.in_progress() {
            let why = if candidate_here {
                format!("the candidate's worker {worker_id} was lost ({reason}); the old writer keeps serving")
            } else {
                format!("the serving writer's worker {worker_id} was lost ({reason}) during the handoff")
            };
            drafts.push(scale_failed(subject.clone(), db.id, why, cooldown_until));
        }
        if writer_here {
            let why = format!("worker {worker_id} was lost ({reason})");
            let event = match db.state {
                DbState::Starting => Event::DbStartFailed {
                    db_id: db.id,
                    reason: why,
                    give_up: false,
                    retire: false,
                },
                _ => Event::DbStopped {
                    db_id: db.id,
                    reason: why,
                    retire: false,
                },
            };
            drafts.push(Draft::new(subject, event));
        }
    }
    drafts.push(Draft::global(Event::WorkerLost {
        worker_id: worker_id.to_owned(),
        reason: reason.to_owned(),
    }));
    drafts
}

fn scale_failed(subject: Subject, db_id: Uuid, reason: String, cooldown_until: Timestamp) -> Draft {
    Draft::new(
        subject,
        Event::DbScaleFailed {
            db_id,
            reason,
            cooldown_until,
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    state: &State,
    cx: &mut Context<'_>,
    worker_id: &str,
    db_id: Uuid,
    term: u64,
    outcome: Outcome,
    backend_addr: Option<&str>,
    reason: Option<&str>,
    keeps_data: bool,
    credentials: Option<u64>,
) -> Result<Vec<Draft>, Rejection> {
    if outcome == Outcome::Destroyed {
        return Ok(destroyed(state, worker_id, db_id).into_iter().collect());
    }
    let Some(db) = state.dbs.get(&db_id) else {
        return Ok(vec![]);
    };
    let t = tenant_of(state, db)?;
    let subject = Subject::db(t, db_id);
    let is = |w: &Option<Box<Writer>>| {
        w.as_ref()
            .is_some_and(|w| w.worker_id == worker_id && w.term == term)
    };
    let writer = is(&db.writer);
    let candidate = is(&db.scale.candidate);
    let retiring = state
        .retiring
        .contains_key(&(worker_id.to_owned(), db_id, term));
    let addr = || {
        backend_addr
            .filter(|a| !a.is_empty() && a.len() <= 255)
            .map(str::to_owned)
            .ok_or_else(|| invalid("backend_addr", "required with this outcome: host:port"))
    };
    let why = || {
        reason
            .unwrap_or("no reason given")
            .chars()
            .take(500)
            .collect::<String>()
    };
    let stage = db.scale.stage;
    // A writer that serves from this worker's own storage: the data is here from now on.
    let placed = || {
        (keeps_data && db.data_on.as_deref() != Some(worker_id)).then(|| {
            Draft::new(
                subject.clone(),
                Event::DbDataPlaced {
                    db_id,
                    worker_id: worker_id.to_owned(),
                },
            )
        })
    };
    let event = match outcome {
        Outcome::Started if writer && db.state == DbState::Starting => {
            let started = Draft::new(
                subject.clone(),
                Event::DbStarted {
                    db_id,
                    backend_addr: addr()?,
                },
            );
            return Ok(std::iter::once(started).chain(placed()).collect());
        }
        // The serving writer stopped by itself (its server exited): the database is stopped,
        // and the next checkout starts it again.
        Outcome::Failed if writer && db.state == DbState::Running && !stage.in_progress() => {
            Event::DbStopped {
                db_id,
                reason: format!("the writer on {worker_id} stopped unexpectedly: {}", why()),
                retire: false,
            }
        }
        Outcome::Failed if writer && db.state == DbState::Starting => Event::DbStartFailed {
            db_id,
            reason: format!("the writer failed to start on {worker_id}: {}", why()),
            give_up: db.failed_starts + 1 >= cx.settings.max_failed_starts,
            retire: false,
        },
        Outcome::Failed if candidate && stage.in_progress() => {
            let phase = if stage == ScaleStage::Cutover {
                "promote"
            } else {
                "prepare"
            };
            return Ok(vec![scale_failed(
                subject,
                db_id,
                format!(
                    "the candidate on {worker_id} failed to {phase}: {}; the old writer keeps serving",
                    why()
                ),
                after(cx.now, cx.settings.autoscaler.cooldown),
            )]);
        }
        Outcome::Prepared if candidate && stage == ScaleStage::PreparingCandidate => {
            Event::DbScaleCutoverStarted {
                db_id,
                lease_control_epoch: db.lease_control_epoch + 1,
                deadline: after(cx.now, cx.settings.phase_deadline),
            }
        }
        Outcome::Promoted if candidate && stage == ScaleStage::Cutover => {
            let completed = Draft::new(
                subject.clone(),
                Event::DbScaleCompleted {
                    db_id,
                    backend_addr: addr()?,
                    cooldown_until: after(cx.now, cx.settings.autoscaler.cooldown),
                },
            );
            return Ok(std::iter::once(completed).chain(placed()).collect());
        }
        Outcome::Stopped if writer && db.state == DbState::Stopping => Event::DbStopped {
            db_id,
            reason: "stopped after being idle".into(),
            retire: false,
        },
        Outcome::RoleUpdated if writer && db.state == DbState::Running => {
            let had = db.writer.as_ref().map_or(0, |w| w.credentials);
            match credentials.filter(|c| *c > had && *c <= t.credentials) {
                Some(credentials) => Event::DbRoleUpdated {
                    db_id,
                    writer_term: term,
                    credentials,
                },
                None => return Ok(vec![]),
            }
        }
        Outcome::Stopped | Outcome::Aborted if retiring => Event::WriterRetired {
            db_id,
            worker_id: worker_id.to_owned(),
            writer_term: term,
        },
        _ => return Ok(vec![]),
    };
    Ok(vec![Draft::new(subject, event)])
}

/// A worker removed its copy of a database's data: the copy the database lives on, or one
/// left behind. A report about a copy nobody asked it to remove changes nothing.
fn destroyed(state: &State, worker_id: &str, db_id: Uuid) -> Option<Draft> {
    let db = state.dbs.get(&db_id);
    let stale = state
        .stale_copies
        .contains_key(&(worker_id.to_owned(), db_id));
    let deleting_here =
        db.is_some_and(|d| d.state == DbState::Deleting && d.data_on.as_deref() == Some(worker_id));
    if !stale && !deleting_here {
        return None;
    }
    let event = Event::DbDataDestroyed {
        db_id,
        worker_id: worker_id.to_owned(),
    };
    // A stale copy may outlive its database and tenant.
    Some(match db.and_then(|d| state.tenants.get(&d.tenant)) {
        Some(t) => Draft::new(Subject::db(t, db_id), event),
        None => Draft::global(event),
    })
}

fn checkout(
    state: &State,
    cx: &mut Context<'_>,
    pg_user: &str,
    db_name: &str,
    lease_id: Uuid,
) -> Result<(Vec<Draft>, Answer), Rejection> {
    let t = state
        .tenants_by_pg_user
        .get(pg_user)
        .and_then(|id| state.tenants.get(id))
        .ok_or_else(|| {
            gone(
                "unknown_pg_user",
                format!("no tenant has pg_user {pg_user:?}"),
            )
        })?;
    let db = state.db_by_name(t.id, db_name).ok_or_else(|| {
        gone(
            "unknown_db",
            format!("tenant {:?} has no database {db_name:?}", t.name),
        )
    })?;
    let pending = |db: &Db, state| Answer::Pending {
        db_id: db.id,
        state,
    };
    match db.state {
        DbState::Deleting => Err(conflict(
            "db_deleting",
            format!("database {db_name:?} is being deleted"),
        )),
        DbState::Failed => Err(conflict(
            "db_failed",
            format!(
                "database {db_name:?} failed: {}",
                db.failure_reason.as_deref().unwrap_or("unknown reason")
            ),
        )),
        _ if db.freeze_new_checkouts => Err(busy(
            "checkouts_frozen",
            format!("database {db_name:?} is moving to another compute profile; retry in a moment"),
            1,
        )),
        DbState::Running => {
            let writer = db.writer.as_ref().ok_or_else(|| {
                conflict("no_writer", "the database has no serving writer; retry")
            })?;
            let backend_addr = writer.backend_addr.clone().unwrap_or_default();
            if state.leases.contains_key(&lease_id) {
                return Err(conflict(
                    "lease_id_taken",
                    "generated lease id already in use; retry",
                ));
            }
            let ttl_ms = cx.settings.lease_ttl.as_millis() as u64;
            cx.runtime
                .leases
                .insert(lease_id, (after(cx.now, cx.settings.lease_ttl), 0));
            let drafts = vec![Draft::new(
                Subject::db(t, db.id),
                Event::LeaseGranted {
                    lease_id,
                    db_id: db.id,
                    lease_control_epoch: db.lease_control_epoch,
                    ttl_ms,
                },
            )];
            Ok((
                drafts,
                Answer::Lease {
                    db_id: db.id,
                    backend_addr,
                    worker_id: writer.worker_id.clone(),
                    lease_id,
                    lease_ttl_ms: ttl_ms,
                    lease_control_epoch: db.lease_control_epoch,
                },
            ))
        }
        DbState::Stopped => {
            let profile = catalog::profiles_of(&db.size)
                .first()
                .copied()
                .ok_or_else(|| {
                    conflict("unknown_size", "the database's size is not in the catalog")
                })?;
            let worker = match db.data_on.as_deref() {
                // Its data lives on one worker's own storage: it starts there or not at all.
                Some(home) => {
                    place(state, cx, profile, Placement::Only(home)).ok_or_else(|| {
                        busy(
                            "data_unavailable",
                            format!(
                            "the worker that holds database {db_name:?}'s data ({home}) is not \
                             live or has no room for it; retry shortly"
                        ),
                            2,
                        )
                    })?
                }
                None => place(state, cx, profile, Placement::Anywhere).ok_or_else(|| {
                    if state.workers.values().all(|w| w.lost_at.is_some()) {
                        busy(
                            "no_worker",
                            "no worker is live to run databases (none has registered, or every \
                             one was lost): start one (`spg99 worker`, or `spg99 serve` with its \
                             local worker)",
                            2,
                        )
                    } else {
                        busy(
                            "no_capacity",
                            format!(
                                "no live worker has room for a {profile} writer; retry shortly"
                            ),
                            2,
                        )
                    }
                })?,
            };
            let drafts = vec![Draft::new(
                Subject::db(t, db.id),
                Event::DbStartRequested {
                    db_id: db.id,
                    worker_id: worker,
                    profile: profile.to_owned(),
                    writer_term: db.writer_term + 1,
                    deadline: after(cx.now, cx.settings.phase_deadline),
                },
            )];
            Ok((drafts, pending(db, DbState::Starting)))
        }
        DbState::Starting | DbState::Stopping => Ok((vec![], pending(db, db.state))),
    }
}

/// How many writers each worker holds: serving or starting, candidates, and writers it still
/// has to shut down. Capacity is counted against this.
pub fn occupancy(state: &State) -> BTreeMap<&str, u32> {
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    for db in state.active_dbs() {
        for w in [&db.writer, &db.scale.candidate].into_iter().flatten() {
            *used.entry(w.worker_id.as_str()).or_default() += 1;
        }
    }
    for (w, _, _) in state.retiring.keys() {
        *used.entry(w.as_str()).or_default() += 1;
    }
    used
}

/// Which workers a writer may go to.
#[derive(Debug, Clone, Copy)]
enum Placement<'a> {
    Anywhere,
    /// Any but this one (a candidate, away from the serving writer).
    Avoid(&'a str),
    /// This one only (the one holding the database's data).
    Only(&'a str),
}

/// The live worker with the most room that runs `profile`, among those `placement` allows;
/// ties go to the smallest id, so placement is deterministic.
fn place(
    state: &State,
    cx: &Context<'_>,
    profile: &str,
    placement: Placement<'_>,
) -> Option<String> {
    let used = occupancy(state);
    let timeout = cx.settings.worker_timeout;
    let allowed = |id: &str| match placement {
        Placement::Anywhere => true,
        Placement::Avoid(other) => id != other,
        Placement::Only(one) => id == one,
    };
    state
        .workers
        .values()
        .filter(|w| w.lost_at.is_none() && allowed(&w.id))
        .filter(|w| w.profiles.iter().any(|p| p == profile))
        .filter(|w| {
            cx.runtime
                .workers_seen
                .get(&w.id)
                .is_some_and(|seen| after(*seen, timeout) > cx.now)
        })
        .filter_map(|w| {
            let free = w
                .capacity
                .saturating_sub(used.get(w.id.as_str()).copied().unwrap_or(0));
            (free > 0).then_some((free, &w.id))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, id)| id.clone())
}

/// Whether a connection count moved enough from the one recorded to be recorded again: any
/// change while either is below [`EXACT_CONNECTIONS`], else a change of a tenth or more. So
/// describe's count is exact for small numbers and within 10 % for large ones, and a busy
/// database's churn does not fill the log.
fn connections_moved(recorded: u32, now: u32) -> bool {
    if recorded.min(now) < EXACT_CONNECTIONS {
        return recorded != now;
    }
    now.abs_diff(recorded).saturating_mul(10) >= recorded
}

/// Below this many connections, every change is recorded.
const EXACT_CONNECTIONS: u32 = 32;

/// A `db.load_changed` event if the database's load left its band, or its connection count
/// moved enough (see [`connections_moved`]).
fn load_change(state: &State, cx: &Context<'_>, db_id: Uuid) -> Option<Draft> {
    let db = state
        .dbs
        .get(&db_id)
        .filter(|d| d.state == DbState::Running)?;
    let gateway: u32 = db
        .leases
        .iter()
        .filter_map(|l| cx.runtime.leases.get(l))
        .map(|(_, n)| *n)
        .sum();
    let (cpu, writer_conns) = cx
        .runtime
        .writer_load
        .get(&db_id)
        .copied()
        .unwrap_or((db.cpu_milli, 0));
    let conns = gateway.max(writer_conns);
    let band = cx.settings.autoscaler.band(db.load_band, cpu);
    if band == db.load_band && !connections_moved(db.active_connections, conns) {
        return None;
    }
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db_id),
        Event::DbLoadChanged {
            db_id,
            cpu_milli: cpu,
            active_connections: conns,
            band,
        },
    ))
}

fn reconcile(state: &State, cx: &mut Context<'_>, step: Step) -> Vec<Draft> {
    let now = cx.now;
    let settings = cx.settings;
    let mut drafts = Vec::new();
    let db_subject = |db: &Db| state.tenants.get(&db.tenant).map(|t| Subject::db(t, db.id));
    match step {
        Step::ExpireLeases => {
            // The soft state of what is gone goes with it.
            cx.runtime
                .leases
                .retain(|id, _| state.leases.contains_key(id));
            cx.runtime.writer_load.retain(|db, _| {
                state
                    .dbs
                    .get(db)
                    .is_some_and(|d| d.state == DbState::Running)
            });
            for lease in state.leases.values() {
                let expired = cx
                    .runtime
                    .leases
                    .get(&lease.id)
                    .is_none_or(|(until, _)| *until <= now);
                if !expired {
                    continue;
                }
                cx.runtime.leases.remove(&lease.id);
                if let Some(subject) = state.dbs.get(&lease.db_id).and_then(|d| db_subject(d)) {
                    drafts.push(Draft::new(
                        subject,
                        Event::LeaseExpired { lease_id: lease.id },
                    ));
                }
            }
        }
        Step::LoseWorkers => {
            for w in state.workers.values().filter(|w| w.lost_at.is_none()) {
                let silent = cx
                    .runtime
                    .workers_seen
                    .get(&w.id)
                    .is_none_or(|seen| after(*seen, settings.worker_timeout) <= now);
                if silent {
                    cx.runtime.workers_seen.remove(&w.id);
                    let reason =
                        format!("no heartbeat for {} s", settings.worker_timeout.as_secs());
                    // One worker per command keeps each loss's events together; a database
                    // touched by two lost workers is handled by the first.
                    drafts.extend(lose_worker(state, cx, &w.id, &reason));
                    break;
                }
            }
        }
        Step::Deadlines => {
            let limit = settings.phase_deadline.as_secs();
            for db in state.active_dbs() {
                let Some(subject) = db_subject(db) else {
                    continue;
                };
                let past = |d: Option<Timestamp>| d.is_some_and(|d| d <= now);
                if db.scale.stage.in_progress() && past(db.scale.phase_deadline_at) {
                    let why = if db.scale.stage == ScaleStage::Cutover {
                        format!("the candidate did not confirm the cutover within {limit} s; the old writer keeps serving")
                    } else {
                        format!("the candidate was not ready within {limit} s; the old writer keeps serving")
                    };
                    let cooldown = after(now, settings.autoscaler.cooldown);
                    drafts.push(scale_failed(subject, db.id, why, cooldown));
                    continue;
                }
                if !past(db.phase_deadline_at) {
                    continue;
                }
                let event = match db.state {
                    DbState::Starting => Event::DbStartFailed {
                        db_id: db.id,
                        reason: format!("the worker did not start the writer within {limit} s"),
                        give_up: db.failed_starts + 1 >= settings.max_failed_starts,
                        retire: true,
                    },
                    DbState::Stopping => Event::DbStopped {
                        db_id: db.id,
                        reason: format!("the worker did not confirm the stop within {limit} s"),
                        retire: true,
                    },
                    _ => continue,
                };
                drafts.push(Draft::new(subject, event));
            }
        }
        Step::IdleStops => {
            for db in state.active_dbs() {
                let idle = db.state == DbState::Running
                    && db.leases.is_empty()
                    && !db.scale.stage.in_progress()
                    && db
                        .idle_since
                        .is_some_and(|since| after(since, settings.idle_timeout) <= now);
                if let (true, Some(subject)) = (idle, db_subject(db)) {
                    drafts.push(Draft::new(
                        subject,
                        Event::DbStopRequested {
                            db_id: db.id,
                            reason: format!(
                                "no connection for {} s",
                                settings.idle_timeout.as_secs()
                            ),
                            deadline: after(now, settings.phase_deadline),
                        },
                    ));
                }
            }
        }
        Step::Autoscale => {
            for db in state.active_dbs() {
                if let Some(draft) = autoscale(state, cx, db) {
                    drafts.push(draft);
                }
            }
        }
        Step::FinishDeletions => drafts = finish_deletions(state),
    }
    drafts
}

/// One handoff decision for one database: a sustained high load moves it a profile up, a
/// sustained low load a profile down, within its size, outside the cooldown.
fn autoscale(state: &State, cx: &Context<'_>, db: &Db) -> Option<Draft> {
    let policy = &cx.settings.autoscaler;
    let now = cx.now;
    let writer = db.writer.as_ref()?;
    let steady = db.state == DbState::Running && !db.scale.stage.in_progress();
    let cooled = db.autoscale_cooldown_until.is_none_or(|c| c <= now);
    if !steady || !cooled {
        return None;
    }
    let profiles = catalog::profiles_of(&db.size);
    let at = profiles.iter().position(|p| *p == writer.profile)?;
    let target = match db.load_band {
        LoadBand::High if after(db.load_band_since, policy.up_sustain) <= now => {
            profiles.get(at + 1)?
        }
        LoadBand::Low if after(db.load_band_since, policy.down_sustain) <= now && at > 0 => {
            profiles.get(at - 1)?
        }
        _ => return None,
    };
    let candidate = match db.data_on.as_deref() {
        // The data is on this worker's own storage: the candidate takes it over in place.
        Some(home) => place(state, cx, target, Placement::Only(home))?,
        None => place(state, cx, target, Placement::Avoid(&writer.worker_id))
            .or_else(|| place(state, cx, target, Placement::Anywhere))?,
    };
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db.id),
        Event::DbScaleStarted {
            db_id: db.id,
            target_profile: (*target).to_owned(),
            candidate_worker_id: candidate,
            candidate_writer_term: db.writer_term + 1,
            deadline: after(now, cx.settings.phase_deadline),
        },
    ))
}

/// Databases in `deleting` whose writers are all confirmed gone are removed; then tenants in
/// `deleting` with nothing left; then accounts in `deleting` with nothing left.
fn finish_deletions(state: &State) -> Vec<Draft> {
    let mut drafts = Vec::new();
    let held = |db: Uuid| state.retiring.keys().any(|(_, d, _)| *d == db);
    // Its data is still on a live worker, which is told to remove it (`destroy`); a lost
    // worker's copy is left for it to remove when it comes back (`stale_copies`).
    let data_kept = |d: &Db| {
        d.data_on
            .as_ref()
            .and_then(|w| state.workers.get(w))
            .is_some_and(|w| w.lost_at.is_none())
    };
    let mut removed = BTreeSet::new();
    for d in state.active_dbs().filter(|d| d.state == DbState::Deleting) {
        let Some(t) = state.tenants.get(&d.tenant) else {
            continue;
        };
        if !held(d.id) && !data_kept(d) {
            removed.insert(d.id);
            drafts.push(Draft::new(
                Subject::db(t, d.id),
                Event::DbDeleted { db_id: d.id },
            ));
        }
    }
    let empty = |t: Uuid| state.dbs_of(t).all(|d| removed.contains(&d.id));
    for t in state.tenants.values().filter(|t| t.deleting && empty(t.id)) {
        drafts.push(Draft::new(
            Subject::tenant(t),
            Event::TenantDeleted { tenant_id: t.id },
        ));
    }
    for a in state.accounts.values().filter(|a| a.deleting) {
        let gone = state
            .tenants
            .values()
            .filter(|t| t.account == a.id)
            .all(|t| t.deleting && empty(t.id));
        if gone {
            drafts.push(Draft::account(
                a.id,
                Event::AccountDeleted { account_id: a.id },
            ));
        }
    }
    drafts
}

/// What a worker must do now, derived from the state alone (level-triggered: an instruction
/// is repeated until the report that settles it is recorded). The route adds each writer's
/// role verifier, which the state holds sealed.
pub fn instructions(state: &State, worker_id: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let instruction = |op, db: &Db, term, profile: Option<&str>| {
        let pg_user = state.tenants.get(&db.tenant).map(|t| t.pg_user.clone());
        let serves = matches!(op, Op::Start | Op::Prepare | Op::Promote | Op::UpdateRole);
        Instruction {
            op,
            db_id: db.id,
            writer_term: term,
            profile: profile.map(str::to_owned),
            timeline: Some(db.timeline.clone()),
            database: serves.then(|| db.name.to_string()),
            pg_user: pg_user.filter(|_| serves),
            verifier: None,
            credentials: None,
        }
    };
    let held = |db: Uuid| state.retiring.keys().any(|(_, d, _)| *d == db);
    for db in state.active_dbs() {
        if let Some(w) = db.writer.as_ref().filter(|w| w.worker_id == worker_id) {
            let current = state.tenants.get(&db.tenant).map_or(0, |t| t.credentials);
            match db.state {
                DbState::Starting => out.push(instruction(Op::Start, db, w.term, Some(&w.profile))),
                DbState::Stopping => out.push(instruction(Op::Stop, db, w.term, None)),
                // A password reset reaches the running writers' roles.
                DbState::Running if w.credentials < current => out.push(Instruction {
                    credentials: Some(current),
                    ..instruction(Op::UpdateRole, db, w.term, None)
                }),
                _ => {}
            }
        }
        if let Some(c) = db
            .scale
            .candidate
            .as_ref()
            .filter(|c| c.worker_id == worker_id)
        {
            match db.scale.stage {
                ScaleStage::PreparingCandidate => {
                    out.push(instruction(Op::Prepare, db, c.term, Some(&c.profile)))
                }
                ScaleStage::Cutover => {
                    out.push(instruction(Op::Promote, db, c.term, Some(&c.profile)))
                }
                _ => {}
            }
        }
        let gone = db.state == DbState::Deleting && db.writer.is_none() && !held(db.id);
        if gone && db.data_on.as_deref() == Some(worker_id) {
            out.push(instruction(Op::Destroy, db, 0, None));
        }
    }
    let from = (worker_id.to_owned(), Uuid::nil(), 0);
    for ((w, db_id, term), how) in state.retiring.range(from..) {
        if w != worker_id {
            break;
        }
        let op = match how {
            Retire::Stop => Op::Stop,
            Retire::Abort => Op::Abort,
        };
        let timeline = state.dbs.get(db_id).map(|d| d.timeline.clone());
        out.push(Instruction {
            op,
            db_id: *db_id,
            writer_term: *term,
            profile: None,
            timeline,
            database: None,
            pg_user: None,
            verifier: None,
            credentials: None,
        });
    }
    let from = (worker_id.to_owned(), Uuid::nil());
    for ((w, db_id), timeline) in state.stale_copies.range(from..) {
        if w != worker_id {
            break;
        }
        out.push(Instruction {
            op: Op::Destroy,
            db_id: *db_id,
            writer_term: 0,
            profile: None,
            timeline: Some(timeline.clone()),
            database: None,
            pg_user: None,
            verifier: None,
            credentials: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_hovering_at_a_threshold_keeps_its_band() {
        let policy = Autoscaler::default();
        assert_eq!(policy.band(LoadBand::Normal, 800), LoadBand::High);
        assert_eq!(policy.band(LoadBand::Normal, 799), LoadBand::Normal);
        assert_eq!(policy.band(LoadBand::High, 760), LoadBand::High);
        assert_eq!(policy.band(LoadBand::High, 749), LoadBand::Normal);
        assert_eq!(policy.band(LoadBand::Normal, 200), LoadBand::Low);
        assert_eq!(policy.band(LoadBand::Low, 240), LoadBand::Low);
        assert_eq!(policy.band(LoadBand::Low, 251), LoadBand::Normal);
    }

    #[test]
    fn connection_counts_are_exact_when_small_and_within_a_tenth_when_large() {
        assert!(connections_moved(0, 1) && connections_moved(5, 0) && connections_moved(3, 4));
        assert!(connections_moved(31, 32) && connections_moved(32, 31));
        assert!(
            !connections_moved(7, 7) && !connections_moved(32, 35) && !connections_moved(100, 91)
        );
        assert!(
            connections_moved(100, 90) && connections_moved(100, 110) && connections_moved(40, 0)
        );
    }
}
