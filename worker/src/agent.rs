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
//! candidate or promoting; only serving writers have a load. A writer that becomes the
//! serving one (started or promoted) fences every older term of its database on this worker,
//! so a database has at most one serving writer here; a later `stop` of a fenced term is
//! reported at once. A serving writer the driver finds dead is reported `failed` (the
//! control plane then marks its database stopped) and forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spg99_wire::{
    ErrorBody, Heartbeat, Instruction, Instructions, Load, Op, Outcome, Register, Registered,
    Report, ReportAnswer,
};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::compute::{Compute, Served, WriterSpec};

/// How long one instructions poll may wait on the control plane.
const POLL_WAIT: Duration = Duration::from_millis(5000);
/// The least time between two polls that brought nothing new, against a control plane that
/// answers at once while instructions are only pending (one without list versions).
const POLL_PAUSE: Duration = Duration::from_millis(200);
/// Connect timeout, and the whole-call timeout beyond a poll's wait.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of unreachable or failing calls: 200 ms, doubling up to 2 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts to deliver a report before waiting for its instruction to be listed again.
const REPORT_ATTEMPTS: u32 = 4;
/// A report whose instruction is still listed is sent again at most this often.
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// A reported instruction no longer listed is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);
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

/// Why a call to the control plane did not succeed.
#[derive(Debug)]
enum CallError {
    /// Unreachable, timed out, 5xx, 408 or 429: worth retrying.
    Transient(String),
    /// 404 `worker_unknown`: register again.
    WorkerUnknown,
    /// Any other refusal.
    Refused { status: u16, message: String },
    /// A 200 whose body is not what the protocol says.
    Protocol(String),
}

impl CallError {
    fn from_status(status: u16, response: ureq::Response) -> Self {
        let text = response.into_string().unwrap_or_default();
        let detail = serde_json::from_str::<ErrorBody>(&text)
            .ok()
            .map(|b| b.error);
        match detail {
            Some(d) if status == 404 && d.code == "worker_unknown" => CallError::WorkerUnknown,
            _ if status >= 500 || status == 408 || status == 429 => {
                CallError::Transient(format!("{status}: {text}"))
            }
            Some(d) => CallError::Refused {
                status,
                message: format!("{}: {}", d.code, d.message),
            },
            None => CallError::Refused {
                status,
                message: text,
            },
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, CallError::Transient(_))
    }

    /// The token or the worker is refused: nothing this process can fix by retrying.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            CallError::Refused {
                status: 401 | 403,
                ..
            }
        )
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transient(e) => write!(f, "control plane unreachable or failing: {e}"),
            CallError::WorkerUnknown => f.write_str("the control plane does not know this worker"),
            CallError::Refused { status, message } => write!(f, "refused ({status}): {message}"),
            CallError::Protocol(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// Blocking calls to `{base}/internal/v1/workers`.
struct Client {
    http: ureq::Agent,
    base: String,
    worker: String,
    auth: String,
}

impl Client {
    fn new(http: ureq::Agent, base: &str, worker: &str, token: &Token) -> Self {
        Self {
            http,
            base: format!("{}/internal/v1/workers", base.trim_end_matches('/')),
            worker: worker.to_owned(),
            auth: format!("Bearer {}", token.0),
        }
    }

    fn register(&self, body: &Register) -> Result<Registered, CallError> {
        self.post(&self.base, body)
    }

    fn heartbeat(&self, loads: Vec<Load>) -> Result<Vec<Value>, CallError> {
        let url = format!("{}/{}/heartbeat", self.base, self.worker);
        let answer: Instructions<Value> = self.post(&url, &Heartbeat { loads })?;
        Ok(answer.instructions)
    }

    /// The instructions, waiting up to `wait` for a list other than the `known` version.
    fn instructions(
        &self,
        wait: Duration,
        known: Option<&str>,
    ) -> Result<Instructions<Value>, CallError> {
        let url = format!("{}/{}/instructions", self.base, self.worker);
        let mut request = self
            .http
            .get(&url)
            .query("wait_ms", &wait.as_millis().to_string())
            .timeout(wait + CALL_TIMEOUT)
            .set("Authorization", &self.auth);
        if let Some(known) = known {
            request = request.query("known", known);
        }
        Self::answer(request.call())
    }

    /// Whether the control plane accepted the report (false: stale, which is fine).
    fn report(&self, report: &Report) -> Result<bool, CallError> {
        let url = format!("{}/{}/reports", self.base, self.worker);
        let answer: ReportAnswer = self.post(&url, report)?;
        Ok(answer.accepted)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T, CallError> {
        let request = self.http.post(url).set("Authorization", &self.auth);
        Self::answer(request.send_json(body))
    }

    fn answer<T: DeserializeOwned>(
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, CallError> {
        match result {
            Ok(response) => response.into_json().map_err(|e| {
                // A body that is not the expected JSON, or one that could not be read.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    CallError::Protocol(e.to_string())
                } else {
                    CallError::Transient(e.to_string())
                }
            }),
            Err(ureq::Error::Status(status, response)) => {
                Err(CallError::from_status(status, response))
            }
            Err(ureq::Error::Transport(e)) => Err(CallError::Transient(e.to_string())),
        }
    }
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

/// What a hosted writer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Starting,
    Serving,
    Preparing,
    Candidate,
    Promoting,
}

#[derive(Debug, Clone)]
struct Hosted {
    profile: Option<String>,
    role: Role,
    /// Where it serves, once it does.
    served: Option<Served>,
}

/// One instruction, as the control plane repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    db_id: Uuid,
    term: u64,
    op: Op,
    /// `update_role`: the credentials asked for (a second reset is other work).
    credentials: u64,
}

impl Key {
    fn of(instruction: &Instruction) -> Self {
        Key {
            db_id: instruction.db_id,
            term: instruction.writer_term,
            op: instruction.op,
            credentials: instruction.credentials.unwrap_or(0),
        }
    }

    fn writer(&self) -> (Uuid, u64) {
        (self.db_id, self.term)
    }

    fn report(&self, outcome: Outcome) -> Report {
        Report {
            db_id: self.db_id,
            writer_term: self.term,
            outcome,
            backend_addr: None,
            reason: None,
            keeps_data: false,
            credentials: (outcome == Outcome::RoleUpdated).then_some(self.credentials),
        }
    }

    fn served(&self, outcome: Outcome, served: &Served) -> Report {
        Report {
            backend_addr: Some(served.backend_addr.clone()),
            keeps_data: served.keeps_data,
            ..self.report(outcome)
        }
    }

    fn failure(&self, reason: impl Into<String>) -> Report {
        Report {
            reason: Some(reason.into()),
            ..self.report(Outcome::Failed)
        }
    }
}

/// Where an instruction's work stands.
#[derive(Debug, Clone)]
enum Task {
    Running,
    /// Done, its report on the way.
    Reporting(Report),
    /// Done, its report last sent `at`.
    Reported {
        report: Report,
        at: Instant,
    },
}

/// What finishing an instruction takes.
#[derive(Debug, Clone)]
enum Plan {
    /// Nothing to do: the outcome is known already.
    Conclude(Report),
    Start(WriterSpec),
    Stop,
    Prepare(WriterSpec),
    Promote(WriterSpec),
    Abort,
    Destroy(String),
    UpdateRole(WriterSpec),
}

/// An instruction's work, run in its own thread.
#[derive(Debug, Clone)]
struct Work {
    key: Key,
    epoch: u64,
    plan: Plan,
}

/// What to do about one listed instruction.
#[derive(Debug)]
enum Action {
    Nothing,
    Run(Work),
    Resend(Report),
}

/// What the driver did with a piece of work.
type Done = Result<Option<Served>, String>;

/// The writer the instruction describes (empty where it says nothing: the driver refuses
/// what it cannot run).
fn spec(instruction: &Instruction) -> WriterSpec {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    WriterSpec {
        db_id: instruction.db_id,
        term: instruction.writer_term,
        profile: text(&instruction.profile),
        timeline: text(&instruction.timeline),
        database: text(&instruction.database),
        pg_user: text(&instruction.pg_user),
        verifier: text(&instruction.verifier),
    }
}

/// The writers this worker hosts and the work instructions gave it; pure, no I/O.
#[derive(Debug, Default)]
struct State {
    /// Bumped by each registration; work begun under an older epoch is dropped.
    epoch: u64,
    writers: BTreeMap<(Uuid, u64), Hosted>,
    tasks: HashMap<Key, Task>,
    /// Instructions already logged as not understood.
    malformed: HashSet<String>,
    /// Reports of serving writers that stopped by themselves, not yet delivered.
    exits: Vec<Report>,
}

impl State {
    /// Drops everything (a new registration); returns how many writers were dropped.
    fn reset(&mut self) -> usize {
        let dropped = self.writers.len();
        self.epoch += 1;
        self.writers.clear();
        self.tasks.clear();
        self.malformed.clear();
        self.exits.clear();
        dropped
    }

    /// The listed instructions this agent understands; the others are logged once.
    fn parse(&mut self, raw: Vec<Value>) -> Vec<Instruction> {
        raw.into_iter()
            .filter_map(|value| match Instruction::deserialize(&value) {
                Ok(instruction) => Some(instruction),
                Err(e) => {
                    let text = value.to_string();
                    if self.malformed.insert(text.clone()) {
                        warn!(instruction = %text, error = %e, "instruction not understood");
                    }
                    None
                }
            })
            .collect()
    }

    /// Takes note of a listed instruction: new work, a report to send again, or nothing.
    fn begin(&mut self, limits: &Limits, instruction: &Instruction, now: Instant) -> Action {
        let key = Key::of(instruction);
        match self.tasks.get_mut(&key) {
            Some(Task::Running | Task::Reporting(_)) => return Action::Nothing,
            Some(Task::Reported { report, at }) => {
                if now.saturating_duration_since(*at) < RESEND_AFTER {
                    return Action::Nothing;
                }
                *at = now;
                return Action::Resend(report.clone());
            }
            None => {}
        }
        info!(
            op = key.op.as_str(),
            db_id = %key.db_id,
            writer_term = key.term,
            profile = instruction.profile.as_deref().unwrap_or("-"),
            "instruction"
        );
        let plan = self.plan(limits, instruction);
        self.tasks.insert(key, Task::Running);
        Action::Run(Work {
            key,
            epoch: self.epoch,
            plan,
        })
    }

    /// What the instruction takes, and the writers it claims right away.
    fn plan(&mut self, limits: &Limits, instruction: &Instruction) -> Plan {
        let key = Key::of(instruction);
        let hosted = self.writers.get(&key.writer());
        let role = hosted.map(|h| h.role);
        let served = hosted.and_then(|h| h.served.clone());
        match (key.op, role, served) {
            (Op::Start, Some(Role::Serving), Some(s)) => {
                Plan::Conclude(key.served(Outcome::Started, &s))
            }
            (Op::Start, _, _) => match self.admit(limits, instruction, Role::Starting) {
                Ok(()) => Plan::Start(spec(instruction)),
                Err(report) => Plan::Conclude(report),
            },
            (Op::Stop, Some(_), _) => Plan::Stop,
            (Op::Stop, None, _) => Plan::Conclude(key.report(Outcome::Stopped)),
            (Op::Prepare, Some(Role::Candidate | Role::Promoting | Role::Serving), _) => {
                Plan::Conclude(key.report(Outcome::Prepared))
            }
            (Op::Prepare, _, _) => match self.admit(limits, instruction, Role::Preparing) {
                Ok(()) => Plan::Prepare(spec(instruction)),
                Err(report) => Plan::Conclude(report),
            },
            (Op::Promote, Some(Role::Candidate), _) => {
                self.set_role(key.writer(), Role::Promoting);
                Plan::Promote(spec(instruction))
            }
            (Op::Promote, Some(Role::Serving), Some(s)) => {
                Plan::Conclude(key.served(Outcome::Promoted, &s))
            }
            (Op::Promote, _, _) => {
                Plan::Conclude(key.failure("no prepared candidate at this term"))
            }
            (Op::Abort, Some(Role::Preparing | Role::Candidate | Role::Promoting), _) => {
                self.writers.remove(&key.writer());
                Plan::Abort
            }
            (Op::Abort, other, _) => {
                if other.is_some() {
                    let (db_id, writer_term) = key.writer();
                    warn!(%db_id, writer_term, "abort of a writer that is no candidate: kept");
                }
                Plan::Conclude(key.report(Outcome::Aborted))
            }
            (Op::Destroy, _, _) => Plan::Destroy(instruction.timeline.clone().unwrap_or_default()),
            (Op::UpdateRole, Some(Role::Serving), _) => Plan::UpdateRole(spec(instruction)),
            (Op::UpdateRole, _, _) => Plan::Conclude(key.failure("no serving writer at this term")),
        }
    }

    /// Takes a slot for a new writer or candidate, or says why not.
    fn admit(
        &mut self,
        limits: &Limits,
        instruction: &Instruction,
        role: Role,
    ) -> Result<(), Report> {
        let key = Key::of(instruction);
        if let Some(profile) = instruction.profile.as_deref() {
            if !limits.profiles.iter().any(|offered| offered == profile) {
                return Err(key.failure(format!("profile {profile} not offered here")));
            }
        }
        if !self.writers.contains_key(&key.writer()) && self.writers.len() >= limits.capacity {
            let reason = format!("worker at capacity ({} writers)", limits.capacity);
            return Err(key.failure(reason));
        }
        let hosted = Hosted {
            profile: instruction.profile.clone(),
            role,
            served: None,
        };
        self.writers.insert(key.writer(), hosted);
        Ok(())
    }

    /// After the driver's work: the outcome to report (`None` when a registration came
    /// between), and whether a writer it started is unwanted and must be stopped again.
    fn finish(&mut self, work: &Work, done: Done) -> (Option<Report>, bool) {
        let started = matches!(done, Ok(Some(_)));
        if work.epoch != self.epoch {
            return (None, started);
        }
        let key = &work.key;
        let writer = key.writer();
        let role = self.writers.get(&writer).map(|h| h.role);
        let (report, undo) = match (&work.plan, done) {
            (Plan::Conclude(report), _) => (report.clone(), false),
            (Plan::Start(_), _) if role != Some(Role::Starting) => {
                (key.failure("writer stopped before it started"), started)
            }
            (Plan::Start(_), Ok(Some(served))) => {
                let report = key.served(Outcome::Started, &served);
                self.serve(writer, served);
                (report, false)
            }
            (Plan::Prepare(_), _) if role != Some(Role::Preparing) => {
                (key.failure("candidate aborted while preparing"), false)
            }
            (Plan::Prepare(_), Ok(_)) => {
                self.set_role(writer, Role::Candidate);
                (key.report(Outcome::Prepared), false)
            }
            (Plan::Promote(_), _) if role != Some(Role::Promoting) => {
                (key.failure("candidate aborted while promoting"), false)
            }
            (Plan::Promote(_), Ok(Some(served))) => {
                let report = key.served(Outcome::Promoted, &served);
                self.serve(writer, served);
                (report, false)
            }
            (Plan::Start(_) | Plan::Prepare(_) | Plan::Promote(_), Err(reason)) => {
                self.writers.remove(&writer);
                (key.failure(reason), false)
            }
            (Plan::Start(_) | Plan::Promote(_), Ok(None)) => {
                self.writers.remove(&writer);
                (key.failure("the writer did not say where it serves"), false)
            }
            (Plan::UpdateRole(_), Err(reason)) => {
                // The server serves on with the old role: no report (a failure from the serving
                // writer would read as its server gone); run again when listed again.
                tracing::warn!(db_id = %key.db_id, reason = %reason, "cannot update the role; will retry");
                self.tasks.remove(key);
                return (None, false);
            }
            (Plan::Stop | Plan::Abort | Plan::Destroy(_), Err(reason)) => {
                // Not settled: run again when listed again.
                self.tasks.remove(key);
                return (Some(key.failure(reason)), false);
            }
            (Plan::Stop, Ok(_)) => {
                self.writers.remove(&writer);
                (key.report(Outcome::Stopped), false)
            }
            (Plan::Abort, Ok(_)) => (key.report(Outcome::Aborted), false),
            (Plan::Destroy(_), Ok(_)) => (key.report(Outcome::Destroyed), false),
            (Plan::UpdateRole(_), Ok(_)) => (key.report(Outcome::RoleUpdated), false),
        };
        self.tasks.insert(*key, Task::Reporting(report.clone()));
        (Some(report), undo)
    }

    /// The report of `key` was sent (delivered or not: it goes again while listed).
    fn reported(&mut self, key: &Key, epoch: u64, now: Instant) {
        if epoch != self.epoch {
            return;
        }
        if let Some(task) = self.tasks.get_mut(key) {
            if let Task::Reporting(report) = task {
                let report = report.clone();
                *task = Task::Reported { report, at: now };
            }
        }
    }

    /// Forgets reported instructions no longer listed for a while (a slower answer may still
    /// list one just reported, which must not run it again).
    fn forget(&mut self, listed: &[Instruction], now: Instant) {
        let listed: HashSet<Key> = listed.iter().map(Key::of).collect();
        self.tasks.retain(|key, task| match task {
            Task::Reported { at, .. } => {
                listed.contains(key) || now.saturating_duration_since(*at) < FORGET_AFTER
            }
            Task::Running | Task::Reporting(_) => true,
        });
    }

    /// Makes `writer` the serving one, fencing the older terms of its database.
    fn serve(&mut self, (db_id, term): (Uuid, u64), served: Served) {
        self.writers.retain(|&(d, t), _| d != db_id || t >= term);
        if let Some(hosted) = self.writers.get_mut(&(db_id, term)) {
            hosted.role = Role::Serving;
            hosted.served = Some(served);
            let profile = hosted.profile.as_deref().unwrap_or("-");
            info!(%db_id, writer_term = term, profile, "serving");
        }
    }

    fn set_role(&mut self, writer: (Uuid, u64), role: Role) {
        if let Some(hosted) = self.writers.get_mut(&writer) {
            hosted.role = role;
        }
    }

    /// The serving writers, by (database, term).
    fn serving(&self) -> Vec<(Uuid, u64)> {
        self.writers
            .iter()
            .filter(|(_, hosted)| hosted.role == Role::Serving)
            .map(|(&writer, _)| writer)
            .collect()
    }

    /// A serving writer stopped by itself: forget it and report it.
    fn exited(&mut self, db_id: Uuid, term: u64, reason: String) {
        if self.writers.remove(&(db_id, term)).is_some() {
            warn!(%db_id, writer_term = term, %reason, "writer stopped by itself");
            let key = Key {
                db_id,
                term,
                op: Op::Start,
                credentials: 0,
            };
            self.exits.push(key.failure(reason));
        }
    }
}

/// The agent: the protocol's loops around one compute driver.
pub struct Agent {
    client: Client,
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
            client: Client::new(
                config.http,
                &config.control_plane,
                &config.id,
                &config.token,
            ),
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
    fn register(&self) -> Result<(), CallError> {
        let mut backoff = Backoff::new();
        let registered = loop {
            match self.client.register(&self.registration) {
                Ok(registered) => break registered,
                Err(e) if e.is_transient() && !self.stopped() => {
                    warn!(error = %e, "cannot register yet; retrying");
                    backoff.sleep();
                }
                Err(e) => return Err(e),
            }
        };
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
    fn reregister(&self, seen_epoch: u64) -> Result<(), CallError> {
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
            CallError::WorkerUnknown => self.reregister(seen_epoch).map_err(|e| {
                error!(error = %e, "cannot register again");
                EXIT_REFUSED
            }),
            e if e.is_fatal() => {
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
            match self.client.instructions(POLL_WAIT, known.as_deref()) {
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
            let result = |result| {
                m.heartbeats
                    .get_or_create(&crate::metrics::Result { result })
                    .inc()
            };
            match self.client.heartbeat(loads) {
                Ok(list) => {
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
            })
            .collect()
    }

    /// Delivers the reports of writers that stopped by themselves; those not delivered go
    /// with the next heartbeat.
    fn report_exits(&self) {
        let exits = std::mem::take(&mut self.state().exits);
        let mut kept = Vec::new();
        for report in exits {
            if self.client.report(&report).is_err() {
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
            Plan::Conclude(_) => Ok(None),
            Plan::Start(w) => c.start(w).map(Some),
            Plan::Stop => c.stop(db_id, term).map(|()| None),
            Plan::Prepare(w) => c.prepare(w).map(|()| None),
            Plan::Promote(w) => c.promote(w).map(Some),
            Plan::Abort => c.abort(db_id, term).map(|()| None),
            Plan::Destroy(timeline) => c.destroy(db_id, timeline).map(|()| None),
            Plan::UpdateRole(w) => c.update_role(w).map(|()| None),
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
            match self.client.report(report) {
                Ok(accepted) => {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits() -> Limits {
        Limits {
            capacity: 2,
            profiles: vec!["c1".into(), "c2".into()],
        }
    }

    fn served() -> Served {
        Served {
            backend_addr: "10.0.0.7:6432".into(),
            keeps_data: true,
        }
    }

    fn ins(op: Op, db_id: Uuid, writer_term: u64) -> Instruction {
        Instruction {
            op,
            db_id,
            writer_term,
            profile: Some("c1".into()),
            timeline: Some("t1".into()),
            database: Some("app".into()),
            pg_user: Some("u_1".into()),
            verifier: Some("SCRAM-SHA-256$...".into()),
            credentials: None,
        }
    }

    fn work(action: Action) -> Work {
        match action {
            Action::Run(work) => work,
            other => panic!("expected new work, got {other:?}"),
        }
    }

    /// What a driver that always succeeds answers to `plan`.
    fn success(plan: &Plan) -> Done {
        Ok(match plan {
            Plan::Start(_) | Plan::Promote(_) => Some(served()),
            _ => None,
        })
    }

    /// Begins, finishes (the driver succeeding) and reports one instruction; its report.
    fn complete(state: &mut State, instruction: &Instruction, now: Instant) -> Report {
        let work = work(state.begin(&limits(), instruction, now));
        let done = success(&work.plan);
        let (report, undo) = state.finish(&work, done);
        assert!(!undo);
        state.reported(&work.key, work.epoch, now);
        report.expect("same epoch")
    }

    #[test]
    fn a_start_runs_once_and_its_report_is_resent_while_listed() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        let start = ins(Op::Start, db, 1);

        let w = work(state.begin(&limits(), &start, now));
        match &w.plan {
            Plan::Start(spec) => {
                assert_eq!(
                    (spec.timeline.as_str(), spec.database.as_str()),
                    ("t1", "app")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state.begin(&limits(), &start, now),
            Action::Nothing
        ));
        let (report, _) = state.finish(&w, success(&w.plan));
        let report = report.unwrap();
        assert_eq!(report.outcome, Outcome::Started);
        assert_eq!(report.backend_addr.as_deref(), Some("10.0.0.7:6432"));
        assert!(report.keeps_data);
        state.reported(&w.key, w.epoch, now);
        assert!(matches!(
            state.begin(&limits(), &start, now),
            Action::Nothing
        ));
        match state.begin(&limits(), &start, now + RESEND_AFTER) {
            Action::Resend(again) => assert_eq!(again, report),
            other => panic!("{other:?}"),
        }
        assert_eq!(state.serving(), vec![(db, 1)]);
    }

    #[test]
    fn a_handoff_on_one_worker_fences_the_old_term() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &ins(Op::Start, db, 1), now);

        let prepared = complete(&mut state, &ins(Op::Prepare, db, 2), now);
        assert_eq!(prepared.outcome, Outcome::Prepared);
        assert_eq!(state.serving(), vec![(db, 1)], "a candidate has no load");

        let promoted = complete(&mut state, &ins(Op::Promote, db, 2), now);
        assert_eq!(promoted.outcome, Outcome::Promoted);
        assert_eq!(state.serving(), vec![(db, 2)]);
        assert_eq!(state.writers.len(), 1, "term 1 fenced");

        let stop_old = work(state.begin(&limits(), &ins(Op::Stop, db, 1), now));
        assert!(matches!(stop_old.plan, Plan::Conclude(ref r) if r.outcome == Outcome::Stopped));
    }

    #[test]
    fn promote_without_a_candidate_fails() {
        let (mut state, now) = (State::default(), Instant::now());
        let report = complete(&mut state, &ins(Op::Promote, Uuid::new_v4(), 2), now);
        assert_eq!(report.outcome, Outcome::Failed);
    }

    #[test]
    fn abort_discards_a_preparing_candidate() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        let prepare = work(state.begin(&limits(), &ins(Op::Prepare, db, 3), now));
        let aborted = complete(&mut state, &ins(Op::Abort, db, 3), now);
        assert_eq!(aborted.outcome, Outcome::Aborted);
        assert!(state.writers.is_empty());
        let (late, _) = state.finish(&prepare, Ok(None));
        assert_eq!(late.unwrap().outcome, Outcome::Failed);
        assert!(state.writers.is_empty());
    }

    #[test]
    fn capacity_and_profiles_are_enforced() {
        let (mut state, now) = (State::default(), Instant::now());
        complete(&mut state, &ins(Op::Start, Uuid::new_v4(), 1), now);
        complete(&mut state, &ins(Op::Prepare, Uuid::new_v4(), 1), now);
        let full = complete(&mut state, &ins(Op::Start, Uuid::new_v4(), 1), now);
        assert_eq!(full.outcome, Outcome::Failed);
        assert_eq!(
            full.reason.as_deref(),
            Some("worker at capacity (2 writers)")
        );

        let mut state = State::default();
        let big = Instruction {
            profile: Some("c8".into()),
            ..ins(Op::Start, Uuid::new_v4(), 1)
        };
        let refused = complete(&mut state, &big, now);
        assert_eq!(refused.outcome, Outcome::Failed);
        assert!(state.writers.is_empty());
    }

    #[test]
    fn a_driver_failure_is_reported_and_a_failed_stop_runs_again() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        let start = work(state.begin(&limits(), &ins(Op::Start, db, 1), now));
        let (report, _) = state.finish(&start, Err("initdb failed".into()));
        assert_eq!(report.unwrap().reason.as_deref(), Some("initdb failed"));
        assert!(state.writers.is_empty());

        complete(&mut state, &ins(Op::Start, db, 2), now);
        let stop = ins(Op::Stop, db, 2);
        let w = work(state.begin(&limits(), &stop, now));
        let (report, _) = state.finish(&w, Err("busy".into()));
        assert_eq!(report.unwrap().outcome, Outcome::Failed);
        assert!(
            matches!(state.begin(&limits(), &stop, now), Action::Run(_)),
            "retried"
        );
    }

    #[test]
    fn a_start_that_finishes_after_a_registration_is_undone() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &ins(Op::Start, db, 1), now);
        let pending = work(state.begin(&limits(), &ins(Op::Start, Uuid::new_v4(), 1), now));
        assert_eq!(state.reset(), 2);
        assert_eq!(state.finish(&pending, Ok(Some(served()))), (None, true));
        assert!(state.writers.is_empty() && state.tasks.is_empty());
        // The same instruction listed again after registering is new work.
        assert!(matches!(
            state.begin(&limits(), &ins(Op::Start, db, 1), now),
            Action::Run(_)
        ));
    }

    #[test]
    fn a_writer_that_stops_by_itself_is_reported_once() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &ins(Op::Start, db, 4), now);
        state.exited(db, 4, "postgres exited: signal 9".into());
        state.exited(db, 4, "again".into());
        assert_eq!(state.exits.len(), 1);
        assert_eq!(state.exits[0].outcome, Outcome::Failed);
        assert_eq!(state.exits[0].writer_term, 4);
        assert!(state.serving().is_empty());
    }

    #[test]
    fn a_role_update_is_keyed_by_its_credentials_and_reports_them() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &ins(Op::Start, db, 1), now);
        let first = Instruction {
            credentials: Some(1),
            ..ins(Op::UpdateRole, db, 1)
        };
        let report = complete(&mut state, &first, now);
        assert_eq!(
            (report.outcome, report.credentials),
            (Outcome::RoleUpdated, Some(1))
        );
        let second = Instruction {
            credentials: Some(2),
            ..first
        };
        assert!(
            matches!(state.begin(&limits(), &second, now), Action::Run(_)),
            "a second reset is new work"
        );
        let nobody = complete(
            &mut state,
            &Instruction {
                credentials: Some(1),
                ..ins(Op::UpdateRole, db, 9)
            },
            now,
        );
        assert_eq!(nobody.outcome, Outcome::Failed);
    }

    #[test]
    fn destroy_is_keyed_by_database_and_reported() {
        let (mut state, now) = (State::default(), Instant::now());
        let db = Uuid::new_v4();
        let destroy = Instruction {
            writer_term: 0,
            ..ins(Op::Destroy, db, 0)
        };
        let w = work(state.begin(&limits(), &destroy, now));
        assert!(matches!(&w.plan, Plan::Destroy(t) if t == "t1"));
        let (report, _) = state.finish(&w, Ok(None));
        assert_eq!(report.unwrap().outcome, Outcome::Destroyed);
    }

    #[test]
    fn reported_instructions_are_forgotten_once_unlisted_for_a_while() {
        let (mut state, now) = (State::default(), Instant::now());
        let (kept, gone) = (
            ins(Op::Stop, Uuid::new_v4(), 1),
            ins(Op::Stop, Uuid::new_v4(), 1),
        );
        complete(&mut state, &kept, now);
        complete(&mut state, &gone, now);
        let running = ins(Op::Start, Uuid::new_v4(), 1);
        state.begin(&limits(), &running, now);

        state.forget(&[], now);
        assert_eq!(state.tasks.len(), 3, "too recent to forget");
        state.forget(std::slice::from_ref(&kept), now + FORGET_AFTER);
        assert!(state.tasks.contains_key(&Key::of(&kept)));
        assert!(state.tasks.contains_key(&Key::of(&running)));
        assert!(!state.tasks.contains_key(&Key::of(&gone)));
    }

    #[test]
    fn instructions_not_understood_are_skipped() {
        let mut state = State::default();
        let db = Uuid::new_v4();
        let raw = vec![
            json!({"op": "start", "db_id": db, "writer_term": 7, "profile": null}),
            json!({"op": "reboot", "db_id": db, "writer_term": 7, "profile": null}),
            json!({"op": "stop", "db_id": "not-a-uuid", "writer_term": 7}),
        ];
        let parsed = state.parse(raw);
        assert_eq!(parsed.len(), 1);
        assert_eq!((parsed[0].op, parsed[0].writer_term), (Op::Start, 7));
        assert_eq!(state.malformed.len(), 2);
    }

    #[test]
    fn reports_serialize_as_the_protocol_says() {
        let key = Key {
            db_id: Uuid::nil(),
            term: 9,
            op: Op::Start,
            credentials: 0,
        };
        assert_eq!(
            serde_json::to_value(key.served(Outcome::Started, &served())).unwrap(),
            json!({
                "db_id": Uuid::nil(),
                "writer_term": 9,
                "outcome": "started",
                "backend_addr": "10.0.0.7:6432",
                "keeps_data": true,
            })
        );
        assert_eq!(
            serde_json::to_value(key.failure("no")).unwrap(),
            json!({"db_id": Uuid::nil(), "writer_term": 9, "outcome": "failed", "reason": "no"})
        );
    }
}
