//! `spg99 worker`: a simulated compute worker, driven by the control plane's internal API.
//!
//! A real worker host runs Postgres writers, and during a handoff candidate writers (replicas
//! catching up), on the control plane's orders. This agent plays that part without Postgres,
//! so that placement, handoffs, failures and autoscaling can be exercised end to end: it
//! registers, carries out instructions after configurable delays (`--start-delay-ms`,
//! `--prepare-delay-ms`, `--promote-delay-ms`, `--stop-delay-ms`), fails or dies on request
//! (`--fail-start`, `--fail-prepare`, `--die-mid-handoff`, which exits with status 3 on the
//! first `prepare`), reports every outcome, and heartbeats a synthetic load for each writer it
//! serves (`--cpu` or a repeating `--cpu-schedule`, and `--connections`). Every writer it runs
//! answers at `--address`. It hosts at most `--capacity` writers and candidates, of the
//! compute `--profiles` it offers, and runs until killed.
//!
//! ## Protocol
//! All calls go to `{--control-plane}/internal/v1/workers` with `Authorization: Bearer
//! $SPG99_SERVICE_TOKEN`. The agent registers (`POST /workers`, retried while the control
//! plane is unreachable or failing) with a fresh `instance` id per process, then runs two
//! loops: a long poll of `GET /workers/{id}/instructions?wait_ms=5000&known=<version>` (it
//! answers when the list differs from the version last seen), the fast path, and
//! `POST /workers/{id}/heartbeat` every `heartbeat_interval_ms` (or `--heartbeat-ms`) with one
//! load per serving writer. Both answer the pending instructions, and both are handled. An
//! outcome goes back by `POST /workers/{id}/reports`. When the control plane answers
//! `worker_unknown` (it declared this worker lost, or forgot it), the agent drops every writer
//! it holds and registers again.
//!
//! ## Level-triggered instructions
//! An instruction (`start`, `stop`, `prepare`, `promote`, `abort` of a database at a writer
//! term) is listed on every answer until the control plane has recorded its report. The agent
//! keys its work by (database, term, op): each instruction runs once, in its own thread (so a
//! slow start never holds up the others), and a report still listed after it was sent is sent
//! again (reports are idempotent on the control plane), at most once a second. A
//! registration starts a new epoch: work begun under an older one ends without a report.
//!
//! ## Bookkeeping
//! The agent holds writers by (database, term), each starting, serving, preparing, a
//! candidate or promoting; only serving writers have a load. A writer that becomes the
//! serving one (started or promoted) fences every older term of its database on this worker,
//! so a database has at most one serving writer here; a later `stop` of a fenced term is
//! reported at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::lifecycle::Outcome;

/// How long one instructions poll may wait on the control plane.
const POLL_WAIT: Duration = Duration::from_millis(5000);
/// The least time between two polls that brought nothing new, against a control plane that
/// answers at once while instructions are only pending (one without list versions).
const POLL_PAUSE: Duration = Duration::from_millis(200);
/// Connect timeout, and the whole-call timeout beyond a poll's wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
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
/// Exit status when the control plane refuses this worker; `--die-mid-handoff`'s status.
const EXIT_REFUSED: i32 = 1;
const EXIT_DIED: i32 = 3;

/// `spg99 worker`: the flags.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Base URL of the control plane, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SPG99_URL")]
    pub control_plane: String,
    /// This worker's id, stable across restarts of the same host.
    #[arg(long)]
    pub id: String,
    /// The service token the internal API expects (prefer the environment variable).
    #[arg(long, env = "SPG99_SERVICE_TOKEN", hide_env_values = true)]
    pub token: Token,
    /// The worker's Postgres listener: the backend address reported for every writer it runs.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub address: String,
    /// How many writers and candidates this worker can host at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// The compute profiles this worker offers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "c0.25,c0.5,c1,c2,c4,c8")]
    pub profiles: Vec<String>,
    /// Milliseconds a `start` takes before `started` is reported.
    #[arg(long, default_value_t = 0)]
    pub start_delay_ms: u64,
    /// Milliseconds a `prepare` takes (the candidate catching up) before `prepared`.
    #[arg(long, default_value_t = 0)]
    pub prepare_delay_ms: u64,
    /// Milliseconds a `promote` takes before `promoted`.
    #[arg(long, default_value_t = 0)]
    pub promote_delay_ms: u64,
    /// Milliseconds a `stop` of a running writer takes before `stopped`.
    #[arg(long, default_value_t = 0)]
    pub stop_delay_ms: u64,
    /// Report every `start` as failed ("simulated start failure").
    #[arg(long)]
    pub fail_start: bool,
    /// Report every `prepare` as failed ("simulated prepare failure").
    #[arg(long)]
    pub fail_prepare: bool,
    /// On the first `prepare`, exit at once with status 3 without reporting: a candidate's
    /// host dying mid-handoff.
    #[arg(long)]
    pub die_mid_handoff: bool,
    /// Synthetic CPU load of each serving writer, as a fraction of its profile (0.0 and up).
    #[arg(long, default_value_t = 0.1, value_parser = parse_cpu)]
    pub cpu: f64,
    /// A repeating CPU schedule of cpu:seconds steps, e.g. "0.9:30,0.1:60" (overrides --cpu;
    /// the clock starts with the process and is the same for every writer).
    #[arg(long, value_parser = CpuSchedule::parse)]
    pub cpu_schedule: Option<CpuSchedule>,
    /// Synthetic active connections of each serving writer.
    #[arg(long, default_value_t = 0)]
    pub connections: u32,
    /// Heartbeat every this many milliseconds instead of the control plane's suggestion.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: Option<u64>,
}

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
pub struct Token(String);

impl FromStr for Token {
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

/// A CPU value: a finite fraction, 0.0 or more.
fn parse_cpu(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(cpu) if cpu.is_finite() && cpu >= 0.0 => Ok(cpu),
        _ => Err(format!("`{raw}`: expected a CPU fraction, 0.0 or more")),
    }
}

/// `--cpu-schedule`: (cpu, seconds) steps, repeated for ever.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSchedule {
    steps: Vec<(f64, f64)>,
    period: f64,
}

impl CpuSchedule {
    /// `0.9:30,0.1:60` → 0.9 for 30 s, then 0.1 for 60 s, then again.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let steps = raw
            .split(',')
            .map(str::trim)
            .filter(|step| !step.is_empty())
            .map(Self::step)
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("expected cpu:seconds steps, e.g. 0.9:30,0.1:60".into());
        }
        let period = steps.iter().map(|(_, secs)| secs).sum();
        Ok(Self { steps, period })
    }

    fn step(raw: &str) -> Result<(f64, f64), String> {
        let (cpu, secs) = raw
            .split_once(':')
            .ok_or_else(|| format!("`{raw}`: expected cpu:seconds"))?;
        let cpu = parse_cpu(cpu)?;
        match secs.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Ok((cpu, secs)),
            _ => Err(format!("`{raw}`: seconds must be a positive number")),
        }
    }

    /// The CPU `elapsed` after the schedule began.
    pub fn at(&self, elapsed: Duration) -> f64 {
        let mut t = elapsed.as_secs_f64() % self.period;
        for &(cpu, secs) in &self.steps {
            if t < secs {
                return cpu;
            }
            t -= secs;
        }
        // Only rounding gets here: the end of the last step.
        self.steps.last().map_or(0.0, |&(cpu, _)| cpu)
    }
}

#[derive(Debug, Clone, Serialize)]
struct Registration {
    id: String,
    address: String,
    capacity: u32,
    profiles: Vec<String>,
    instance: Uuid,
}

#[derive(Debug, Deserialize)]
struct Registered {
    #[serde(default)]
    worker_id: String,
    #[serde(default)]
    heartbeat_interval_ms: u64,
    #[serde(default)]
    worker_timeout_ms: u64,
}

#[derive(Debug, Serialize)]
struct Heartbeat<'a> {
    loads: &'a [Load],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Load {
    db_id: Uuid,
    cpu: f64,
    active_connections: u32,
}

/// Instructions stay raw JSON until each is parsed on its own: one this agent does not
/// understand must not hide the others.
#[derive(Debug, Deserialize)]
struct Instructions {
    instructions: Vec<Value>,
    /// Names the list; polling with it as `known` waits until the list changes.
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Start,
    Stop,
    Prepare,
    Promote,
    Abort,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Prepare => "prepare",
            Op::Promote => "promote",
            Op::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Instruction {
    op: Op,
    db_id: Uuid,
    writer_term: u64,
    #[serde(default)]
    profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Report {
    db_id: Uuid,
    writer_term: u64,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReportAnswer {
    accepted: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
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
    fn new(base: &str, worker: &str, token: &Token) -> Self {
        let http = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build();
        Self {
            http,
            base: format!("{}/internal/v1/workers", base.trim_end_matches('/')),
            worker: worker.to_owned(),
            auth: format!("Bearer {}", token.0),
        }
    }

    fn register(&self, body: &Registration) -> Result<Registered, CallError> {
        self.post(&self.base, body)
    }

    fn heartbeat(&self, loads: &[Load]) -> Result<Vec<Value>, CallError> {
        let url = format!("{}/{}/heartbeat", self.base, self.worker);
        let answer: Instructions = self.post(&url, &Heartbeat { loads })?;
        Ok(answer.instructions)
    }

    /// The instructions, waiting up to `wait` for a list other than the `known` version.
    fn instructions(&self, wait: Duration, known: Option<&str>) -> Result<Instructions, CallError> {
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

/// How the simulated host behaves: the flags that shape outcomes.
#[derive(Debug, Clone)]
struct Sim {
    address: String,
    capacity: usize,
    profiles: Vec<String>,
    start_delay: Duration,
    prepare_delay: Duration,
    promote_delay: Duration,
    stop_delay: Duration,
    fail_start: bool,
    fail_prepare: bool,
    die_mid_handoff: bool,
}

impl Sim {
    fn from_args(args: &WorkerArgs) -> Self {
        Self {
            address: args.address.clone(),
            capacity: usize::try_from(args.capacity).unwrap_or(usize::MAX),
            profiles: args.profiles.clone(),
            start_delay: Duration::from_millis(args.start_delay_ms),
            prepare_delay: Duration::from_millis(args.prepare_delay_ms),
            promote_delay: Duration::from_millis(args.promote_delay_ms),
            stop_delay: Duration::from_millis(args.stop_delay_ms),
            fail_start: args.fail_start,
            fail_prepare: args.fail_prepare,
            die_mid_handoff: args.die_mid_handoff,
        }
    }

    /// The report of `outcome` for `key`; a serving writer's carries its backend address.
    fn report(&self, key: &Key, outcome: Outcome) -> Report {
        let serving = matches!(outcome, Outcome::Started | Outcome::Promoted);
        Report {
            db_id: key.db_id,
            writer_term: key.term,
            outcome,
            backend_addr: serving.then(|| self.address.clone()),
            reason: None,
        }
    }

    fn failure(&self, key: &Key, reason: impl Into<String>) -> Report {
        Report {
            reason: Some(reason.into()),
            ..self.report(key, Outcome::Failed)
        }
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
}

/// One instruction, as the control plane repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    db_id: Uuid,
    term: u64,
    op: Op,
}

impl Key {
    fn of(instruction: &Instruction) -> Self {
        Key {
            db_id: instruction.db_id,
            term: instruction.writer_term,
            op: instruction.op,
        }
    }

    fn writer(&self) -> (Uuid, u64) {
        (self.db_id, self.term)
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

/// What finishing an instruction takes, after its delay.
#[derive(Debug, Clone)]
enum Plan {
    /// Nothing to simulate: the outcome is known already.
    Conclude(Report),
    Start,
    Stop,
    Prepare,
    Promote,
}

/// An instruction's work, run in its own thread.
#[derive(Debug, Clone)]
struct Work {
    key: Key,
    epoch: u64,
    delay: Duration,
    plan: Plan,
}

/// What to do about one listed instruction.
#[derive(Debug)]
enum Action {
    Nothing,
    Run(Work),
    Resend(Report),
    /// `--die-mid-handoff` met a `prepare`.
    Die,
}

fn at_once(report: Report) -> (Duration, Plan) {
    (Duration::ZERO, Plan::Conclude(report))
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
}

impl State {
    /// Drops everything (a new registration); returns how many writers were dropped.
    fn reset(&mut self) -> usize {
        let dropped = self.writers.len();
        self.epoch += 1;
        self.writers.clear();
        self.tasks.clear();
        self.malformed.clear();
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
    fn begin(&mut self, sim: &Sim, instruction: &Instruction, now: Instant) -> Action {
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
        if key.op == Op::Prepare && sim.die_mid_handoff {
            return Action::Die;
        }
        info!(
            op = key.op.as_str(),
            db_id = %key.db_id,
            writer_term = key.term,
            profile = instruction.profile.as_deref().unwrap_or("-"),
            "instruction"
        );
        let (delay, plan) = self.plan(sim, instruction);
        self.tasks.insert(key, Task::Running);
        Action::Run(Work {
            key,
            epoch: self.epoch,
            delay,
            plan,
        })
    }

    /// What the instruction takes, and the writers it claims right away.
    fn plan(&mut self, sim: &Sim, instruction: &Instruction) -> (Duration, Plan) {
        let key = Key::of(instruction);
        let role = self.writers.get(&key.writer()).map(|h| h.role);
        match (key.op, role) {
            (Op::Start, Some(Role::Serving)) => at_once(sim.report(&key, Outcome::Started)),
            (Op::Start, _) => match self.admit(sim, instruction, Role::Starting) {
                Ok(()) => (sim.start_delay, Plan::Start),
                Err(report) => at_once(report),
            },
            (Op::Stop, Some(_)) => (sim.stop_delay, Plan::Stop),
            (Op::Stop, None) => at_once(sim.report(&key, Outcome::Stopped)),
            (Op::Prepare, Some(Role::Candidate | Role::Promoting | Role::Serving)) => {
                at_once(sim.report(&key, Outcome::Prepared))
            }
            (Op::Prepare, _) => match self.admit(sim, instruction, Role::Preparing) {
                Ok(()) => (sim.prepare_delay, Plan::Prepare),
                Err(report) => at_once(report),
            },
            (Op::Promote, Some(Role::Candidate)) => {
                self.set_role(key.writer(), Role::Promoting);
                (sim.promote_delay, Plan::Promote)
            }
            (Op::Promote, Some(Role::Serving)) => at_once(sim.report(&key, Outcome::Promoted)),
            (Op::Promote, _) => at_once(sim.failure(&key, "no prepared candidate at this term")),
            (Op::Abort, Some(Role::Preparing | Role::Candidate | Role::Promoting)) => {
                self.writers.remove(&key.writer());
                at_once(sim.report(&key, Outcome::Aborted))
            }
            (Op::Abort, other) => {
                if other.is_some() {
                    let (db_id, writer_term) = key.writer();
                    warn!(%db_id, writer_term, "abort of a writer that is no candidate: kept");
                }
                at_once(sim.report(&key, Outcome::Aborted))
            }
        }
    }

    /// Takes a slot for a new writer or candidate, or says why not.
    fn admit(&mut self, sim: &Sim, instruction: &Instruction, role: Role) -> Result<(), Report> {
        let key = Key::of(instruction);
        if let Some(profile) = instruction.profile.as_deref() {
            if !sim.profiles.iter().any(|offered| offered == profile) {
                return Err(sim.failure(&key, format!("profile {profile} not offered here")));
            }
        }
        if !self.writers.contains_key(&key.writer()) && self.writers.len() >= sim.capacity {
            let reason = format!("worker at capacity ({} writers)", sim.capacity);
            return Err(sim.failure(&key, reason));
        }
        let hosted = Hosted {
            profile: instruction.profile.clone(),
            role,
        };
        self.writers.insert(key.writer(), hosted);
        Ok(())
    }

    /// After the delay: the outcome to report, or `None` when a registration came between.
    fn finish(&mut self, sim: &Sim, work: &Work) -> Option<Report> {
        if work.epoch != self.epoch {
            return None;
        }
        let key = &work.key;
        let writer = key.writer();
        let role = self.writers.get(&writer).map(|h| h.role);
        let report = match &work.plan {
            Plan::Conclude(report) => report.clone(),
            Plan::Start if role != Some(Role::Starting) => {
                sim.failure(key, "writer stopped before it started")
            }
            Plan::Start if sim.fail_start => {
                self.writers.remove(&writer);
                sim.failure(key, "simulated start failure")
            }
            Plan::Start => {
                self.serve(writer);
                sim.report(key, Outcome::Started)
            }
            Plan::Stop => {
                self.writers.remove(&writer);
                sim.report(key, Outcome::Stopped)
            }
            Plan::Prepare if role != Some(Role::Preparing) => {
                sim.failure(key, "candidate aborted while preparing")
            }
            Plan::Prepare if sim.fail_prepare => {
                self.writers.remove(&writer);
                sim.failure(key, "simulated prepare failure")
            }
            Plan::Prepare => {
                self.set_role(writer, Role::Candidate);
                sim.report(key, Outcome::Prepared)
            }
            Plan::Promote if role != Some(Role::Promoting) => {
                sim.failure(key, "candidate aborted while promoting")
            }
            Plan::Promote => {
                self.serve(writer);
                sim.report(key, Outcome::Promoted)
            }
        };
        self.tasks.insert(*key, Task::Reporting(report.clone()));
        Some(report)
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
    fn serve(&mut self, (db_id, term): (Uuid, u64)) {
        self.writers.retain(|&(d, t), _| d != db_id || t >= term);
        if let Some(hosted) = self.writers.get_mut(&(db_id, term)) {
            hosted.role = Role::Serving;
            let profile = hosted.profile.as_deref().unwrap_or("-");
            info!(%db_id, writer_term = term, profile, "serving");
        }
    }

    fn set_role(&mut self, writer: (Uuid, u64), role: Role) {
        if let Some(hosted) = self.writers.get_mut(&writer) {
            hosted.role = role;
        }
    }

    /// The databases this worker serves, once each.
    fn serving(&self) -> Vec<Uuid> {
        let mut dbs: Vec<Uuid> = self
            .writers
            .iter()
            .filter(|(_, hosted)| hosted.role == Role::Serving)
            .map(|(&(db_id, _), _)| db_id)
            .collect();
        dbs.dedup();
        dbs
    }
}

/// The synthetic load of a serving writer.
#[derive(Debug)]
struct Synthetic {
    cpu: f64,
    schedule: Option<CpuSchedule>,
    connections: u32,
    since: Instant,
}

impl Synthetic {
    fn cpu(&self) -> f64 {
        match &self.schedule {
            Some(schedule) => schedule.at(self.since.elapsed()),
            None => self.cpu,
        }
    }
}

struct Agent {
    client: Client,
    sim: Sim,
    load: Synthetic,
    registration: Registration,
    heartbeat_override: Option<Duration>,
    heartbeat_ms: AtomicU64,
    state: Mutex<State>,
    /// Held while registering again, so that two loops told `worker_unknown` register once.
    registering: Mutex<()>,
}

impl Agent {
    fn new(args: WorkerArgs) -> Self {
        let registration = Registration {
            id: args.id.clone(),
            address: args.address.clone(),
            capacity: args.capacity,
            profiles: args.profiles.clone(),
            instance: Uuid::new_v4(),
        };
        Self {
            client: Client::new(&args.control_plane, &args.id, &args.token),
            sim: Sim::from_args(&args),
            load: Synthetic {
                cpu: args.cpu,
                schedule: args.cpu_schedule.clone(),
                connections: args.connections,
                since: Instant::now(),
            },
            registration,
            heartbeat_override: args.heartbeat_ms.map(Duration::from_millis),
            heartbeat_ms: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            registering: Mutex::new(()),
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

    /// Registers, retrying while the control plane is unreachable or failing; then drops
    /// whatever was held before.
    fn register(&self) -> Result<(), CallError> {
        let mut backoff = Backoff::new();
        let registered = loop {
            match self.client.register(&self.registration) {
                Ok(registered) => break registered,
                Err(e) if e.is_transient() => {
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
        if !registered.worker_id.is_empty() && registered.worker_id != self.registration.id {
            let worker_id = &registered.worker_id;
            warn!(%worker_id, "the control plane names this worker differently");
        }
        let dropped = self.state().reset();
        info!(
            worker_id = %self.registration.id,
            instance = %self.registration.instance,
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
            "the control plane does not know this worker: dropping every writer, registering again"
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
        loop {
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
    }

    /// Heartbeats with the serving writers' loads; returns only to end the agent.
    fn heartbeat_loop(self: &Arc<Self>) -> i32 {
        let mut backoff = Backoff::new();
        loop {
            let epoch = self.epoch();
            match self.client.heartbeat(&self.loads()) {
                Ok(list) => {
                    backoff.reset();
                    self.handle(list);
                    thread::sleep(self.heartbeat_interval());
                }
                Err(e) => {
                    if let Err(code) = self.recover("heartbeat", e, epoch, &mut backoff) {
                        return code;
                    }
                }
            }
        }
    }

    fn loads(&self) -> Vec<Load> {
        let cpu = self.load.cpu();
        self.state()
            .serving()
            .into_iter()
            .map(|db_id| Load {
                db_id,
                cpu,
                active_connections: self.load.connections,
            })
            .collect()
    }

    /// Acts on a listed set of instructions; returns how many were new.
    fn handle(self: &Arc<Self>, raw: Vec<Value>) -> usize {
        let now = Instant::now();
        let actions: Vec<Action> = {
            let mut state = self.state();
            let listed = state.parse(raw);
            let actions = listed
                .iter()
                .map(|instruction| state.begin(&self.sim, instruction, now))
                .collect();
            state.forget(&listed, now);
            actions
        };
        let mut fresh = 0;
        for action in actions {
            match action {
                Action::Nothing => {}
                Action::Die => die(),
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

    /// An instruction's work: its delay, its outcome, its report.
    fn execute(&self, work: Work) {
        thread::sleep(work.delay);
        let Some(report) = self.state().finish(&self.sim, &work) else {
            let (db_id, op) = (work.key.db_id, work.key.op.as_str());
            debug!(%db_id, op, "dropped: registered again meanwhile");
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
}

/// `--die-mid-handoff`: gone at once, nothing reported.
fn die() -> ! {
    error!("--die-mid-handoff: a prepare arrived; exiting with status {EXIT_DIED}");
    std::process::exit(EXIT_DIED)
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

/// `spg99 worker`: registers, then runs until killed; returns the exit status when the
/// control plane refuses this worker (1). `--die-mid-handoff` exits the process itself (3).
pub fn run(args: WorkerArgs) -> i32 {
    info!(
        id = %args.id,
        control_plane = %args.control_plane,
        address = %args.address,
        capacity = args.capacity,
        profiles = %args.profiles.join(","),
        "worker starting"
    );
    let agent = Arc::new(Agent::new(args));
    if let Err(e) = agent.register() {
        error!(error = %e, "cannot register");
        return EXIT_REFUSED;
    }
    // Each loop returns only to end the agent, with the exit status.
    let (exit, exited) = mpsc::channel();
    let poll = {
        let (agent, exit) = (Arc::clone(&agent), exit.clone());
        move || {
            let _ = exit.send(agent.poll_loop());
        }
    };
    let heartbeat = move || {
        let _ = exit.send(agent.heartbeat_loop());
    };
    if !spawn("spg99-poll", poll) || !spawn("spg99-heartbeat", heartbeat) {
        return EXIT_REFUSED;
    }
    exited.recv().unwrap_or(EXIT_REFUSED)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    fn sim() -> Sim {
        Sim {
            address: "10.0.0.7:6432".into(),
            capacity: 2,
            profiles: vec!["c1".into(), "c2".into()],
            start_delay: Duration::from_millis(30),
            prepare_delay: Duration::from_millis(40),
            promote_delay: Duration::from_millis(50),
            stop_delay: Duration::from_millis(60),
            fail_start: false,
            fail_prepare: false,
            die_mid_handoff: false,
        }
    }

    fn ins(op: Op, db_id: Uuid, writer_term: u64) -> Instruction {
        Instruction {
            op,
            db_id,
            writer_term,
            profile: Some("c1".into()),
        }
    }

    fn work(action: Action) -> Work {
        match action {
            Action::Run(work) => work,
            other => panic!("expected new work, got {other:?}"),
        }
    }

    /// Begins, finishes and reports one instruction; its report.
    fn complete(state: &mut State, sim: &Sim, instruction: &Instruction, now: Instant) -> Report {
        let work = work(state.begin(sim, instruction, now));
        let report = state.finish(sim, &work).expect("same epoch");
        state.reported(&work.key, work.epoch, now);
        report
    }

    #[test]
    fn a_start_runs_once_and_its_report_is_resent_while_listed() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let db = Uuid::new_v4();
        let start = ins(Op::Start, db, 1);

        let work = work(state.begin(&sim, &start, now));
        assert_eq!(work.delay, sim.start_delay);
        assert!(matches!(state.begin(&sim, &start, now), Action::Nothing));
        assert!(
            state.serving().is_empty(),
            "starting writers have no load yet"
        );

        let report = state.finish(&sim, &work).expect("same epoch");
        assert_eq!(report.outcome, Outcome::Started);
        assert_eq!(report.backend_addr.as_deref(), Some("10.0.0.7:6432"));
        assert_eq!(state.serving(), vec![db]);
        assert!(matches!(state.begin(&sim, &start, now), Action::Nothing));

        state.reported(&work.key, work.epoch, now);
        assert!(matches!(state.begin(&sim, &start, now), Action::Nothing));
        let later = now + RESEND_AFTER;
        match state.begin(&sim, &start, later) {
            Action::Resend(again) => assert_eq!(again, report),
            other => panic!("expected a resend, got {other:?}"),
        }
        assert!(matches!(state.begin(&sim, &start, later), Action::Nothing));
    }

    #[test]
    fn stop_of_a_writer_not_run_here_is_reported_at_once() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let work = work(state.begin(&sim, &ins(Op::Stop, Uuid::new_v4(), 4), now));
        assert_eq!(work.delay, Duration::ZERO);
        let report = state.finish(&sim, &work).expect("same epoch");
        assert_eq!(report.outcome, Outcome::Stopped);
        assert_eq!(report.backend_addr, None);
    }

    #[test]
    fn stop_of_a_running_writer_takes_the_stop_delay() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &sim, &ins(Op::Start, db, 1), now);
        let work = work(state.begin(&sim, &ins(Op::Stop, db, 1), now));
        assert_eq!(work.delay, sim.stop_delay);
        assert_eq!(state.serving(), vec![db], "serving until stopped");
        assert_eq!(
            state.finish(&sim, &work).map(|r| r.outcome),
            Some(Outcome::Stopped)
        );
        assert!(state.serving().is_empty());
    }

    #[test]
    fn a_handoff_on_one_worker_fences_the_old_term() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &sim, &ins(Op::Start, db, 1), now);

        let prepared = complete(&mut state, &sim, &ins(Op::Prepare, db, 2), now);
        assert_eq!(prepared.outcome, Outcome::Prepared);
        assert_eq!(state.serving(), vec![db], "a candidate has no load");

        let promote = work(state.begin(&sim, &ins(Op::Promote, db, 2), now));
        assert_eq!(promote.delay, sim.promote_delay);
        let promoted = state.finish(&sim, &promote).expect("same epoch");
        assert_eq!(promoted.outcome, Outcome::Promoted);
        assert_eq!(promoted.backend_addr.as_deref(), Some("10.0.0.7:6432"));
        assert_eq!(state.serving(), vec![db]);
        assert_eq!(state.writers.len(), 1, "term 1 fenced");

        let stop_old = work(state.begin(&sim, &ins(Op::Stop, db, 1), now));
        assert_eq!(stop_old.delay, Duration::ZERO);
    }

    #[test]
    fn promote_without_a_candidate_fails() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let report = complete(&mut state, &sim, &ins(Op::Promote, Uuid::new_v4(), 2), now);
        assert_eq!(report.outcome, Outcome::Failed);
    }

    #[test]
    fn abort_discards_a_preparing_candidate() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let db = Uuid::new_v4();
        let prepare = work(state.begin(&sim, &ins(Op::Prepare, db, 3), now));
        let aborted = complete(&mut state, &sim, &ins(Op::Abort, db, 3), now);
        assert_eq!(aborted.outcome, Outcome::Aborted);
        assert!(state.writers.is_empty());
        let late = state.finish(&sim, &prepare).expect("same epoch");
        assert_eq!(late.outcome, Outcome::Failed);
        assert!(state.writers.is_empty());
    }

    #[test]
    fn capacity_and_profiles_are_enforced() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        complete(&mut state, &sim, &ins(Op::Start, Uuid::new_v4(), 1), now);
        complete(&mut state, &sim, &ins(Op::Prepare, Uuid::new_v4(), 1), now);
        let full = complete(&mut state, &sim, &ins(Op::Start, Uuid::new_v4(), 1), now);
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
        let refused = complete(&mut state, &sim, &big, now);
        assert_eq!(refused.outcome, Outcome::Failed);
        assert!(state.writers.is_empty());
    }

    #[test]
    fn failure_injection() {
        let now = Instant::now();
        let sim = Sim {
            fail_start: true,
            fail_prepare: true,
            ..sim()
        };
        let mut state = State::default();
        let start = complete(&mut state, &sim, &ins(Op::Start, Uuid::new_v4(), 1), now);
        assert_eq!(start.reason.as_deref(), Some("simulated start failure"));
        let prepare = complete(&mut state, &sim, &ins(Op::Prepare, Uuid::new_v4(), 1), now);
        assert_eq!(prepare.reason.as_deref(), Some("simulated prepare failure"));
        assert!(state.writers.is_empty());

        let sim = Sim {
            die_mid_handoff: true,
            ..sim
        };
        let action = state.begin(&sim, &ins(Op::Prepare, Uuid::new_v4(), 2), now);
        assert!(matches!(action, Action::Die));
    }

    #[test]
    fn registering_again_drops_writers_and_work_in_progress() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let db = Uuid::new_v4();
        complete(&mut state, &sim, &ins(Op::Start, db, 1), now);
        let pending = work(state.begin(&sim, &ins(Op::Start, Uuid::new_v4(), 1), now));
        assert_eq!(state.reset(), 2);
        assert_eq!(state.finish(&sim, &pending), None);
        assert!(state.writers.is_empty() && state.tasks.is_empty());
        // The same instruction listed again after registering is new work.
        assert!(matches!(
            state.begin(&sim, &ins(Op::Start, db, 1), now),
            Action::Run(_)
        ));
    }

    #[test]
    fn reported_instructions_are_forgotten_once_unlisted_for_a_while() {
        let (sim, mut state, now) = (sim(), State::default(), Instant::now());
        let (kept, gone) = (
            ins(Op::Stop, Uuid::new_v4(), 1),
            ins(Op::Stop, Uuid::new_v4(), 1),
        );
        complete(&mut state, &sim, &kept, now);
        complete(&mut state, &sim, &gone, now);
        let running = ins(Op::Start, Uuid::new_v4(), 1);
        state.begin(&sim, &running, now);

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
        assert_eq!(
            parsed,
            vec![Instruction {
                op: Op::Start,
                db_id: db,
                writer_term: 7,
                profile: None
            }]
        );
        assert_eq!(state.malformed.len(), 2);
    }

    #[test]
    fn reports_serialize_as_the_protocol_says() {
        let sim = sim();
        let key = Key {
            db_id: Uuid::nil(),
            term: 9,
            op: Op::Start,
        };
        assert_eq!(
            serde_json::to_value(sim.report(&key, Outcome::Started)).unwrap(),
            json!({
                "db_id": Uuid::nil(),
                "writer_term": 9,
                "outcome": "started",
                "backend_addr": "10.0.0.7:6432"
            })
        );
        assert_eq!(
            serde_json::to_value(sim.failure(&key, "no")).unwrap(),
            json!({"db_id": Uuid::nil(), "writer_term": 9, "outcome": "failed", "reason": "no"})
        );
    }

    #[test]
    fn cpu_schedule_parses_and_repeats() {
        let schedule = CpuSchedule::parse("0.9:30, 0.1:60").unwrap();
        assert_eq!(schedule.at(Duration::ZERO), 0.9);
        assert_eq!(schedule.at(Duration::from_secs(29)), 0.9);
        assert_eq!(schedule.at(Duration::from_secs(30)), 0.1);
        assert_eq!(schedule.at(Duration::from_secs(89)), 0.1);
        assert_eq!(schedule.at(Duration::from_secs(90)), 0.9);
        assert_eq!(schedule.at(Duration::from_millis(120_500)), 0.1);
        assert_eq!(
            CpuSchedule::parse("1.5:0.5")
                .unwrap()
                .at(Duration::from_secs(7)),
            1.5
        );

        for bad in [
            "", ",", "0.9", "0.9:0", "-1:10", "x:10", "0.5:y", "NaN:3", "0.5:inf",
        ] {
            assert!(CpuSchedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    /// The required flags, then `extra`.
    fn parse(extra: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let required = ["--control-plane=http://cp", "--id=w1", "--token=secret"];
        let argv = ["spg99"].iter().chain(&required).chain(extra);
        Cli::try_parse_from(argv).map(|cli| cli.worker)
    }

    #[test]
    fn flags_have_their_defaults_and_are_checked() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.profiles, ["c0.25", "c0.5", "c1", "c2", "c4", "c8"]);
        assert_eq!(args.address, "127.0.0.1:6432");
        assert_eq!((args.capacity, args.connections), (64, 0));
        assert_eq!((args.cpu, args.heartbeat_ms), (0.1, None));
        assert!(args.cpu_schedule.is_none());
        assert!(!format!("{args:?}").contains("secret"));

        let args = parse(&["--profiles=c1,c2", "--cpu-schedule=0.9:30,0.1:60"]).unwrap();
        assert_eq!(args.profiles, ["c1", "c2"]);
        assert_eq!(args.cpu_schedule.map(|s| s.at(Duration::ZERO)), Some(0.9));

        for bad in [
            "--cpu=-1",
            "--capacity=0",
            "--heartbeat-ms=0",
            "--cpu-schedule=1",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} accepted");
        }
    }
}
