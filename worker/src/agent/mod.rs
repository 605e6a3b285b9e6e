//! The worker agent: the control plane's protocol, and the books of what this worker runs.
//!
//! ## Protocol
//! All calls go to `{--control-plane}/internal/v1/workers` with `Authorization: Bearer
//! $SPG99_SERVICE_TOKEN`. The agent registers (`POST /workers`, retried while the control
//! plane is unreachable or failing) with a fresh `instance` id per process, then runs two
//! loops: a long poll of `GET /workers/{id}/instructions?wait_ms=5000&known=<version>` (it
//! answers when the list differs from the version last seen), the fast path, and
//! `POST /workers/{id}/heartbeat` every `heartbeat_interval_ms` (or `--heartbeat-ms`) with the
//! load of each serving writer. Both answer the pending instructions, and both are handled. An
//! outcome goes back by `POST /workers/{id}/reports`. When the control plane answers
//! `worker_unknown` (it declared this worker lost, or forgot it), the agent stops every writer
//! it holds and registers again.
//!
//! ## Level-triggered instructions
//! An instruction (`start`, `stop`, `prepare`, `promote`, `abort` of a database at a writer
//! term, or `destroy` of a database's data) is listed on every answer until the control plane
//! has recorded its report. The agent keys its work by (database, term, op): each instruction
//! runs once, in its own thread (so a slow start never holds up the others), and a report
//! still listed after it was sent is sent again (reports are idempotent on the control plane),
//! at most once a second. A `stop`, `abort` or `destroy` that failed runs again when listed
//! again. A registration starts a new epoch: work begun under an older one ends without a
//! report (and a writer it started is stopped).
//!
//! ## Bookkeeping
//! The agent holds writers by (database, term), each starting, serving, preparing, a
//! candidate or promoting; only serving writers have a load. The books are `books`, a pure
//! state machine; this module runs the loops around it and the compute driver, and calls the
//! control plane through the internal API's one client ([`spg99_wire::client::Internal`]).

mod books;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spg99_wire::client::{CallError, Internal};
use spg99_wire::{Code, Heartbeat, Load, Register, Report};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::compute::Compute;
use books::{Action, Did, Done, Plan, State, Work};

/// How long one instructions poll may wait on the control plane.
const POLL_WAIT: Duration = Duration::from_millis(5000);
/// The least time between two polls that brought nothing new, against a control plane that
/// answers at once while instructions are only pending (one without list versions).
const POLL_PAUSE: Duration = Duration::from_millis(200);
/// Connect timeout, and the whole-call timeout beyond a poll's wait.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub use spg99_wire::client::CALL_TIMEOUT;
/// Retries of unreachable or failing calls: 200 ms, doubling up to 2 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts to deliver a report before waiting for its instruction to be listed again.
const REPORT_ATTEMPTS: u32 = 4;
/// Heartbeat interval when the control plane suggests none, and the shortest one used.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Exit status when the control plane refuses this worker.
pub const EXIT_REFUSED: i32 = 1;

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
pub struct Token(pub String);

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// What this worker offers: how many writers, of which profiles.
#[derive(Debug, Clone)]
pub struct Limits {
    pub capacity: usize,
    pub profiles: Vec<String>,
}

/// Waits between retries: 200 ms, doubling up to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_FIRST)
    }

    fn sleep(&mut self) {
        thread::sleep(self.0);
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_FIRST;
    }
}

/// The agent: the protocol's loops around one compute driver.
pub struct Agent {
    client: Internal,
    /// This worker's id, as registered.
    id: String,
    compute: Arc<dyn Compute>,
    limits: Limits,
    registration: Register,
    heartbeat_override: Option<Duration>,
    heartbeat_ms: AtomicU64,
    state: Mutex<State>,
    /// Held while registering again, so that two loops told `worker_unknown` register once.
    registering: Mutex<()>,
    /// Set to end the loops (the embedding process is shutting down).
    stopping: AtomicBool,
}

/// What the agent needs to run.
pub struct Config {
    /// The HTTP client for the control plane (its timeouts and TLS trust set).
    pub http: ureq::Agent,
    pub control_plane: String,
    pub id: String,
    pub token: Token,
    /// The address registered (where the worker can be reached).
    pub address: String,
    pub limits: Limits,
    pub heartbeat: Option<Duration>,
}

impl Agent {
    pub fn new(config: Config, compute: Arc<dyn Compute>) -> Self {
        let registration = Register {
            id: config.id.clone(),
            address: config.address,
            capacity: u32::try_from(config.limits.capacity).unwrap_or(u32::MAX),
            profiles: config.limits.profiles.clone(),
            instance: Some(Uuid::new_v4().to_string()),
        };
        Self {
            client: Internal::new(config.http, &config.control_plane, &config.token.0),
            id: config.id,
            compute,
            limits: config.limits,
            registration,
            heartbeat_override: config.heartbeat,
            heartbeat_ms: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            registering: Mutex::new(()),
            stopping: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn epoch(&self) -> u64 {
        self.state().epoch
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Registers, retrying while the control plane is unreachable or failing; then drops
    /// whatever was held before (the control plane counts on none of it any more).
    fn register(&self) -> Result<(), String> {
        let mut backoff = Backoff::new();
        let registered = loop {
            match self.client.register(&self.registration) {
                Ok(registered) => break registered,
                Err(e) if e.is_transient() && !self.stopped() => {
                    warn!(error = %e, "cannot register yet; retrying");
                    backoff.sleep();
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        // A repository that cannot be used is said at once: no database may start here
        // without one where the data could be kept.
        self.compute
            .set_storage(registered.storage.as_ref())
            .map_err(|e| format!("the storage repository: {e}"))?;
        let suggested = match registered.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        let interval = self
            .heartbeat_override
            .unwrap_or(suggested)
            .max(MIN_HEARTBEAT);
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(interval_ms, Ordering::Relaxed);
        if registered.worker_timeout_ms != 0 && interval_ms >= registered.worker_timeout_ms {
            warn!(
                heartbeat_ms = interval_ms,
                worker_timeout_ms = registered.worker_timeout_ms,
                "heartbeats slower than the worker timeout: the control plane will lose this worker"
            );
        }
        if registered.worker_id != self.registration.id {
            let worker_id = &registered.worker_id;
            warn!(%worker_id, "the control plane names this worker differently");
        }
        let dropped = self.state().reset();
        self.compute.stop_all();
        info!(
            worker_id = %self.registration.id,
            instance = self.registration.instance.as_deref().unwrap_or("-"),
            heartbeat_ms = interval_ms,
            worker_timeout_ms = registered.worker_timeout_ms,
            dropped,
            "registered"
        );
        Ok(())
    }

    /// Registers again after `worker_unknown` to a call made in `seen_epoch`, unless another
    /// loop did so meanwhile.
    fn reregister(&self, seen_epoch: u64) -> Result<(), String> {
        let _one_at_a_time = self
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.epoch() != seen_epoch {
            return Ok(());
        }
        warn!(
            "the control plane does not know this worker: stopping every writer, registering again"
        );
        self.register()
    }

    /// After a failed call in `seen_epoch`: carry on (having registered again or waited), or
    /// the exit status that ends the agent.
    fn recover(
        &self,
        call: &str,
        e: CallError,
        seen_epoch: u64,
        backoff: &mut Backoff,
    ) -> Result<(), i32> {
        match e {
            e if e.code() == Some(Code::WorkerUnknown) => {
                self.reregister(seen_epoch).map_err(|e| {
                    error!(error = %e, "cannot register again");
                    EXIT_REFUSED
                })
            }
            // The token or the worker is refused: nothing this process can fix by retrying.
            e if matches!(e.status(), Some(401 | 403)) => {
                error!(call, error = %e, "the control plane refuses this worker");
                Err(EXIT_REFUSED)
            }
            // Stopping: a call cut short by the control plane stopping too is expected.
            e if self.stopped() => {
                debug!(call, error = %e, "call failed while stopping");
                Ok(())
            }
            e => {
                warn!(call, error = %e, "call failed; retrying");
                backoff.sleep();
                Ok(())
            }
        }
    }

    /// The long poll of instructions, the fast path; returns only to end the agent.
    fn poll_loop(self: &Arc<Self>) -> i32 {
        let mut backoff = Backoff::new();
        let mut known: Option<String> = None;
        while !self.stopped() {
            let epoch = self.epoch();
            let began = Instant::now();
            match self
                .client
                .instructions(&self.id, POLL_WAIT, known.as_deref())
            {
                Ok(answer) => {
                    backoff.reset();
                    let fresh = self.handle(answer.instructions);
                    // A control plane that names its lists waits for a change itself; one
                    // that does not answers at once while anything is pending.
                    known = answer.version;
                    if fresh == 0 && known.is_none() {
                        thread::sleep(POLL_PAUSE.saturating_sub(began.elapsed()));
                    }
                }
                Err(e) => {
                    if let Err(code) = self.recover("instructions", e, epoch, &mut backoff) {
                        return code;
                    }
                }
            }
        }
        0
    }

    /// Heartbeats with the serving writers' loads, and reports the writers that stopped by
    /// themselves; returns only to end the agent.
    fn heartbeat_loop(self: &Arc<Self>) -> i32 {
        let mut backoff = Backoff::new();
        while !self.stopped() {
            let epoch = self.epoch();
            let loads = self.loads();
            let m = crate::metrics::get();
            m.writers.set(loads.len() as i64);
            let archiving = loads.iter().filter_map(|l| l.archive.as_ref());
            let (failing, lag) = archiving.fold((0, 0), |(f, lag), a| {
                (f + i64::from(a.failure.is_some()), lag.max(a.lag_secs))
            });
            m.archive_failing.set(failing);
            m.archive_lag.set(lag as i64);
            let replicas = loads.iter().flat_map(|l| &l.replicas);
            let (streaming, lag) = replicas.fold((0, 0), |(n, lag), r| {
                (n + i64::from(r.state == "streaming"), lag.max(r.lag_bytes))
            });
            m.standbys_streaming.set(streaming);
            m.replication_lag.set(lag as i64);
            let result = |result| {
                m.heartbeats
                    .get_or_create(&crate::metrics::Result { result })
                    .inc()
            };
            match self.client.heartbeat(&self.id, &Heartbeat { loads }) {
                Ok(answer) => {
                    let list: Vec<Value> = answer.instructions;
                    result("ok");
                    backoff.reset();
                    self.report_exits();
                    self.handle(list);
                    thread::sleep(self.heartbeat_interval());
                }
                Err(e) => {
                    result("failed");
                    if let Err(code) = self.recover("heartbeat", e, epoch, &mut backoff) {
                        return code;
                    }
                }
            }
        }
        0
    }

    fn loads(&self) -> Vec<Load> {
        let serving = self.state().serving();
        let (measured, exited) = self.compute.load(&serving);
        if !exited.is_empty() {
            let mut state = self.state();
            for e in exited {
                state.exited(e.db_id, e.term, e.reason);
            }
        }
        measured
            .into_iter()
            .map(|m| Load {
                db_id: m.db_id,
                cpu: m.cpu,
                active_connections: m.sessions,
                archive: m.archive,
                replicas: m.replicas,
            })
            .collect()
    }

    /// Delivers the reports of writers that stopped by themselves; those not delivered go
    /// with the next heartbeat.
    fn report_exits(&self) {
        let exits = std::mem::take(&mut self.state().exits);
        let mut kept = Vec::new();
        for report in exits {
            if self.client.report(&self.id, &report).is_err() {
                kept.push(report);
            }
        }
        self.state().exits.extend(kept);
    }

    /// Acts on a listed set of instructions; returns how many were new.
    fn handle(self: &Arc<Self>, raw: Vec<Value>) -> usize {
        let now = Instant::now();
        let actions: Vec<Action> = {
            let mut state = self.state();
            let listed = state.parse(raw);
            let actions = listed
                .iter()
                .map(|instruction| state.begin(&self.limits, instruction, now))
                .collect();
            state.forget(&listed, now);
            actions
        };
        let mut fresh = 0;
        for action in actions {
            match action {
                Action::Nothing => {}
                Action::Run(work) => {
                    fresh += 1;
                    self.spawn_work(work);
                }
                Action::Resend(report) => {
                    let agent = Arc::clone(self);
                    spawn("spg99-resend", move || agent.deliver(&report));
                }
            }
        }
        fresh
    }

    fn spawn_work(self: &Arc<Self>, work: Work) {
        let agent = Arc::clone(self);
        let moved = work.clone();
        if !spawn("spg99-instruction", move || agent.execute(moved)) {
            self.execute(work);
        }
    }

    /// An instruction's work: the driver's part, its outcome, its report.
    fn execute(&self, work: Work) {
        let c = &self.compute;
        let (db_id, term) = work.key.writer();
        let began = Instant::now();
        let done: Done = match &work.plan {
            Plan::Conclude(_) => Ok(Did::Nothing),
            Plan::Start(w) => c.start(w).map(Did::Served),
            Plan::Stop => c.stop(db_id, term).map(Did::Stopped),
            Plan::Prepare(w) => c.prepare(w).map(|()| Did::Nothing),
            Plan::Promote(w) => c.promote(w).map(Did::Served),
            Plan::Abort => c.abort(db_id, term).map(|()| Did::Nothing),
            Plan::Destroy(timeline) => c.destroy(db_id, timeline).map(|()| Did::Nothing),
            Plan::UpdateRole(w) => c.update_role(w).map(|()| Did::Nothing),
            Plan::Replicate(w) => c.replicate(w).map(|()| Did::Nothing),
            Plan::Backup => c.backup(db_id, term).map(Did::BackedUp),
            Plan::Purge(timeline) => c.purge(timeline).map(|()| Did::Nothing),
        };
        if !matches!(work.plan, Plan::Conclude(_)) {
            crate::metrics::get()
                .operations
                .get_or_create(&crate::metrics::Op {
                    op: work.key.op.as_str(),
                })
                .observe(began.elapsed().as_secs_f64());
        }
        let (report, undo) = self.state().finish(&work, done);
        if undo {
            debug!(%db_id, writer_term = term, "stopping a writer started for nothing");
            if let Err(e) = c.stop(db_id, term) {
                warn!(%db_id, error = %e, "cannot stop a writer started for nothing");
            }
        }
        let Some(report) = report else {
            debug!(%db_id, op = work.key.op.as_str(), "dropped: registered again meanwhile");
            return;
        };
        self.deliver(&report);
        self.state().reported(&work.key, work.epoch, Instant::now());
    }

    /// Sends a report, retrying transient failures a few times.
    fn deliver(&self, report: &Report) {
        let mut backoff = Backoff::new();
        for attempt in 1..=REPORT_ATTEMPTS {
            match self.client.report(&self.id, report) {
                Ok(answer) => {
                    let accepted = answer.accepted;
                    crate::metrics::get()
                        .reports
                        .get_or_create(&crate::metrics::Outcome {
                            outcome: report.outcome.as_str(),
                        })
                        .inc();
                    info!(
                        db_id = %report.db_id,
                        writer_term = report.writer_term,
                        outcome = report.outcome.as_str(),
                        reason = report.reason.as_deref().unwrap_or("-"),
                        accepted,
                        "reported"
                    );
                    return;
                }
                Err(e) if e.is_transient() && attempt < REPORT_ATTEMPTS => {
                    warn!(error = %e, attempt, "report failed; retrying");
                    backoff.sleep();
                }
                Err(e) => {
                    warn!(
                        db_id = %report.db_id,
                        outcome = report.outcome.as_str(),
                        error = %e,
                        "report not delivered; it goes again while its instruction is listed"
                    );
                    return;
                }
            }
        }
    }

    /// Ends the loops and stops every writer (the process is shutting down).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.compute.stop_all();
    }
}

/// Runs `f` in a named thread; false if no thread could be made.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match thread::Builder::new().name(name.to_owned()).spawn(f) {
        Ok(_) => true,
        Err(e) => {
            error!(error = %e, "cannot start a thread");
            false
        }
    }
}

/// Registers, then runs the agent's loops in threads of their own; the receiver gets the
/// exit status when one of them ends the agent (the control plane refused this worker).
pub fn start(agent: &Arc<Agent>) -> Result<std::sync::mpsc::Receiver<i32>, i32> {
    if let Err(e) = agent.register() {
        error!(error = %e, "cannot register");
        return Err(EXIT_REFUSED);
    }
    let (exit, exited) = std::sync::mpsc::channel();
    let poll = {
        let (agent, exit) = (Arc::clone(agent), exit.clone());
        move || {
            let _ = exit.send(agent.poll_loop());
        }
    };
    let heartbeat = {
        let agent = Arc::clone(agent);
        move || {
            let _ = exit.send(agent.heartbeat_loop());
        }
    };
    if !spawn("spg99-poll", poll) || !spawn("spg99-heartbeat", heartbeat) {
        return Err(EXIT_REFUSED);
    }
    Ok(exited)
}
