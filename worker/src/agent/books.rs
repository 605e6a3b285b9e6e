//! The books of what this worker runs: the writers it hosts by (database, term), and the
//! work each listed instruction gave it. Pure: no I/O, no clock but the one passed in; the
//! loops in the parent module act on what it decides.
//!
//! A writer that becomes the serving one (started or promoted) fences every older term of
//! its database on this worker, so a database has at most one serving writer here; a later
//! `stop` of a fenced term is reported at once. A serving writer the driver finds dead is
//! reported `failed` (the control plane then marks its database stopped) and forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use spg99_wire::{BackupTaken, Instruction, Op, Outcome, Report, Stored};
use tracing::{info, warn};
use uuid::Uuid;

use super::Limits;
use crate::compute::{Served, WriterSpec};

/// A report whose instruction is still listed is sent again at most this often.
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// A reported instruction no longer listed is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);

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
pub(super) struct Key {
    pub db_id: Uuid,
    pub term: u64,
    pub op: Op,
    /// `update_role`: the credentials asked for (a second reset is other work).
    credentials: u64,
    /// `backup`: which backup (a second one of the same writer is other work).
    request: u64,
}

impl Key {
    fn of(instruction: &Instruction) -> Self {
        Key {
            db_id: instruction.db_id,
            term: instruction.writer_term,
            op: instruction.op,
            credentials: instruction.credentials.unwrap_or(0),
            request: instruction.request.unwrap_or(0),
        }
    }

    pub(super) fn writer(&self) -> (Uuid, u64) {
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
            stored: None,
            backup: None,
            standby_term: None,
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
pub(super) enum Plan {
    /// Nothing to do: the outcome is known already.
    Conclude(Report),
    Start(WriterSpec),
    Stop,
    Prepare(WriterSpec),
    Promote(WriterSpec),
    Abort,
    Destroy(String),
    UpdateRole(WriterSpec),
    Replicate(WriterSpec),
    Backup,
    Purge(String),
}

/// An instruction's work, run in its own thread.
#[derive(Debug, Clone)]
pub(super) struct Work {
    pub key: Key,
    pub epoch: u64,
    pub plan: Plan,
}

/// What to do about one listed instruction.
#[derive(Debug)]
pub(super) enum Action {
    Nothing,
    Run(Work),
    Resend(Report),
}

/// What the driver did with a piece of work.
#[derive(Debug, Clone)]
pub(super) enum Did {
    Nothing,
    /// A writer serves (a start, a promote).
    Served(Served),
    /// A writer stopped, leaving this in the repository.
    Stopped(Option<Stored>),
    BackedUp(BackupTaken),
}

pub(super) type Done = Result<Did, String>;

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
        restore: instruction.restore.clone(),
        ha: instruction.ha.clone().map(Box::new),
    }
}

/// The writers this worker hosts and the work instructions gave it; pure, no I/O.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Bumped by each registration; work begun under an older epoch is dropped.
    pub epoch: u64,
    writers: BTreeMap<(Uuid, u64), Hosted>,
    tasks: HashMap<Key, Task>,
    /// Instructions already logged as not understood.
    malformed: HashSet<String>,
    /// Reports of serving writers that stopped by themselves, not yet delivered.
    pub exits: Vec<Report>,
}

impl State {
    /// Drops everything (a new registration); returns how many writers were dropped.
    pub(super) fn reset(&mut self) -> usize {
        let dropped = self.writers.len();
        self.epoch += 1;
        self.writers.clear();
        self.tasks.clear();
        self.malformed.clear();
        self.exits.clear();
        dropped
    }

    /// The listed instructions this agent understands; the others are logged once.
    pub(super) fn parse(&mut self, raw: Vec<Value>) -> Vec<Instruction> {
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
    pub(super) fn begin(
        &mut self,
        limits: &Limits,
        instruction: &Instruction,
        now: Instant,
    ) -> Action {
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
                Err(report) => Plan::Conclude(*report),
            },
            (Op::Stop, Some(_), _) => Plan::Stop,
            (Op::Stop, None, _) => Plan::Conclude(key.report(Outcome::Stopped)),
            (Op::Prepare, Some(Role::Candidate | Role::Promoting | Role::Serving), _) => {
                Plan::Conclude(key.report(Outcome::Prepared))
            }
            (Op::Prepare, _, _) => match self.admit(limits, instruction, Role::Preparing) {
                Ok(()) => Plan::Prepare(spec(instruction)),
                Err(report) => Plan::Conclude(*report),
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
            (Op::Replicate, Some(Role::Serving), _) => Plan::Replicate(spec(instruction)),
            (Op::Replicate, _, _) => Plan::Conclude(key.failure("no serving writer at this term")),
            (Op::Backup, Some(Role::Serving), _) => Plan::Backup,
            (Op::Backup, _, _) => Plan::Conclude(Report {
                reason: Some("no serving writer at this term".into()),
                ..key.report(Outcome::BackupFailed)
            }),
            (Op::Purge, _, _) => Plan::Purge(instruction.timeline.clone().unwrap_or_default()),
        }
    }

    /// Takes a slot for a new writer or candidate, or says why not.
    fn admit(
        &mut self,
        limits: &Limits,
        instruction: &Instruction,
        role: Role,
    ) -> Result<(), Box<Report>> {
        let key = Key::of(instruction);
        if let Some(profile) = instruction.profile.as_deref() {
            if !limits.profiles.iter().any(|offered| offered == profile) {
                return Err(Box::new(
                    key.failure(format!("profile {profile} not offered here")),
                ));
            }
        }
        if !self.writers.contains_key(&key.writer()) && self.writers.len() >= limits.capacity {
            let reason = format!("worker at capacity ({} writers)", limits.capacity);
            return Err(Box::new(key.failure(reason)));
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
    pub(super) fn finish(&mut self, work: &Work, done: Done) -> (Option<Report>, bool) {
        let started = matches!(done, Ok(Did::Served(_)));
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
            (Plan::Start(_), Ok(Did::Served(served))) => {
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
            (Plan::Promote(_), Ok(Did::Served(served))) => {
                let report = key.served(Outcome::Promoted, &served);
                self.serve(writer, served);
                (report, false)
            }
            (Plan::Start(_) | Plan::Prepare(_) | Plan::Promote(_), Err(reason)) => {
                self.writers.remove(&writer);
                (key.failure(reason), false)
            }
            (Plan::Start(_) | Plan::Promote(_), Ok(_)) => {
                self.writers.remove(&writer);
                (key.failure("the writer did not say where it serves"), false)
            }
            (Plan::UpdateRole(_) | Plan::Replicate(_), Err(reason)) => {
                // The server serves on with the old role: no report (a failure from the serving
                // writer would read as its server gone); run again when listed again.
                tracing::warn!(db_id = %key.db_id, reason = %reason, "cannot update the role; will retry");
                self.tasks.remove(key);
                return (None, false);
            }
            (Plan::Stop | Plan::Abort | Plan::Destroy(_) | Plan::Purge(_), Err(reason)) => {
                // Not settled: run again when listed again.
                self.tasks.remove(key);
                return (Some(key.failure(reason)), false);
            }
            (Plan::Stop, Ok(did)) => {
                self.writers.remove(&writer);
                let stored = match did {
                    Did::Stopped(stored) => stored,
                    _ => None,
                };
                let report = Report {
                    stored: stored.map(Box::new),
                    ..key.report(Outcome::Stopped)
                };
                (report, false)
            }
            (Plan::Abort, Ok(_)) => (key.report(Outcome::Aborted), false),
            (Plan::Destroy(_), Ok(_)) => (key.report(Outcome::Destroyed), false),
            (Plan::Purge(_), Ok(_)) => (key.report(Outcome::Purged), false),
            (Plan::UpdateRole(_), Ok(_)) => (key.report(Outcome::RoleUpdated), false),
            (Plan::Replicate(spec), Ok(_)) => {
                let report = Report {
                    standby_term: spec.ha.as_ref().and_then(|h| h.sync_standby_term),
                    ..key.report(Outcome::Replicated)
                };
                (report, false)
            }
            (Plan::Backup, Ok(Did::BackedUp(backup))) => {
                let report = Report {
                    backup: Some(Box::new(backup)),
                    ..key.report(Outcome::BackedUp)
                };
                (report, false)
            }
            (Plan::Backup, done) => {
                let reason = done
                    .err()
                    .unwrap_or_else(|| "the backup said nothing of itself".into());
                let report = Report {
                    reason: Some(reason),
                    ..key.report(Outcome::BackupFailed)
                };
                (report, false)
            }
        };
        self.tasks.insert(*key, Task::Reporting(report.clone()));
        (Some(report), undo)
    }

    /// The report of `key` was sent (delivered or not: it goes again while listed).
    pub(super) fn reported(&mut self, key: &Key, epoch: u64, now: Instant) {
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
    pub(super) fn forget(&mut self, listed: &[Instruction], now: Instant) {
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
    pub(super) fn serving(&self) -> Vec<(Uuid, u64)> {
        self.writers
            .iter()
            .filter(|(_, hosted)| hosted.role == Role::Serving)
            .map(|(&writer, _)| writer)
            .collect()
    }

    /// A serving writer stopped by itself: forget it and report it.
    pub(super) fn exited(&mut self, db_id: Uuid, term: u64, reason: String) {
        if self.writers.remove(&(db_id, term)).is_some() {
            warn!(%db_id, writer_term = term, %reason, "writer stopped by itself");
            let key = Key {
                db_id,
                term,
                op: Op::Start,
                credentials: 0,
                request: 0,
            };
            self.exits.push(key.failure(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::Limits;

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
            request: None,
            restore: None,
            ha: None,
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
            Plan::Start(_) | Plan::Promote(_) => Did::Served(served()),
            _ => Did::Nothing,
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
        let (late, _) = state.finish(&prepare, Ok(Did::Nothing));
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
        assert_eq!(
            state.finish(&pending, Ok(Did::Served(served()))),
            (None, true)
        );
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
        let (report, _) = state.finish(&w, Ok(Did::Nothing));
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
            request: 0,
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
