//! The single committer: the one place where the log grows.
//!
//! Two threads form a pipeline:
//!
//! ```text
//! HTTP handlers ─submit─▶ [queue] ─▶ decider ─────────────────────────▶ syncer
//!                                    take every queued command;         one fdatasync for every
//!                                    decide each against the working    batch written so far, then:
//!                                    state, in order, folding its       hand readers the state as
//!                                    events in so the next one sees     of the last of them, publish
//!                                    them; write the batch (not yet     to subscribers (never
//!                                    durable); clone the state (O(1))   blocks), answer every caller
//! ```
//!
//! While the device syncs one group of batches, the next ones are decided and written, so CPU
//! work overlaps the device wait and many commands share one sync (group commit). Order is
//! kept end to end: seqs are assigned by the decider, batches are written in that order, and a
//! sync covers every batch written before it. (A third thread for sled writes was measured
//! and was slower on two cores: see BENCHMARKS.md.) When there is nothing to overlap with —
//! the syncer holds no batch and no command is queued, as with a lone client — the decider
//! syncs and answers the batch itself: one thread hand-off less on the commit path, and under
//! load the pipeline is as above.
//!
//! Two versions of the state exist on purpose. The decider's *working* state runs ahead of the
//! disk; the *readers'* state only ever holds durable events, so no reader sees an event
//! before it is on the device. The state is made of persistent maps: after each batch the
//! decider clones its working state (a few pointers) and sends the clone with the batch; once
//! the batch is durable that clone becomes the readers' state. The two versions share every
//! node they have in common, so the memory of one state, plus what the batches in flight
//! changed, serves both, and nothing is folded twice. Every answer,
//! rejections included, is sent only after all earlier batches are durable, so a client is
//! never told "conflict" because of an event that a crash could still take back.
//!
//! If the log cannot be written or synced, nobody knows what reached the disk: the committer
//! stops accepting commands (every later one is refused as unavailable, and `/readyz` says
//! so) rather than guess. A restart recovers from the log, which is the truth.
//!
//! A panic while a command is decided (its rules, the fold of its events, the rendering of
//! an answer recorded with it) is a defect, not a reason to stop: the command is answered 500
//! `internal_error` (logged with its request id), nothing of it is written, and the decider
//! restarts from the durable state. The batches before it are made durable first (they were
//! decided before the panic), so the working state becomes exactly the readers' one; the
//! commands decided in the same batch before it are answered 503 `committer_restarting`
//! (retry, with the same Idempotency-Key), those after it are decided afresh. A panic
//! anywhere else (writing or syncing the log) leaves what reached the disk unknown: it fails
//! the committer like a failed write (503 `committer_failed`), until a restart.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, RwLock};
use std::thread::JoinHandle;

use spg99_events::{Actor, Envelope, Event, Timestamp};
use spg99_projections::State;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::commands::{decide, Command};
use crate::decision::{CommandMeta, Rejection, Subject};
use crate::lifecycle::{Answer, Context, Runtime, Settings};
use crate::log::Log;
use crate::secrets::SecretBox;

/// Most commands in one batch; bounds the latency a single batch can add.
const MAX_BATCH: usize = 4096;
/// Commands that may wait for the committer before submitters wait for room.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Batches kept for subscribers that fall behind; past that they read the log instead.
const FEED_DEPTH: usize = 1024;

/// Why a command did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The service is shutting down.
    #[error("the command log is not accepting writes")]
    Unavailable,
    /// A write or sync of the log failed: the committer has stopped for good (until a
    /// restart recovers from what is durable, or, on a shared log, until this replica has
    /// followed the log again). The refused command may or may not be there.
    #[error("the command log's storage failed")]
    LogFailed,
    /// This replica does not lead the log (writes go to the one that does).
    #[error("this replica does not lead the log")]
    NotLeader,
    /// The command panicked while it was decided (a defect): nothing of it was written.
    #[error("the command failed inside the control plane")]
    Panicked,
    /// Decided in a batch with a command that panicked: not written; the committer restarted
    /// from the durable state and takes it again.
    #[error("the committer restarted; repeat the command")]
    Restarting,
    /// A panic outside a decision (writing or syncing the log): the committer has stopped,
    /// like after a failed write.
    #[error("the committer failed")]
    CommitterFailed,
}

/// An answer to a request, rendered as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Renders the answer to a command from the state right after it and its events (used for
/// commands whose answer is recorded with them: an `Idempotency-Key`'s).
pub type Render = Box<dyn FnOnce(&State, &[Envelope]) -> Rendered + Send>;

/// An `Idempotency-Key` and the request it came with.
pub struct Idempotency {
    pub key: String,
    /// Hash of the request (method, path, body): the same key with another request is refused.
    pub request_hash: [u8; 32],
}

/// A command with how to answer it.
pub struct Request {
    pub meta: CommandMeta,
    pub command: Command,
    /// Renders the answer from the state right after the command, before any later command
    /// (so that, say, a deletion answers `deleting` even if the reconciler finishes it at once).
    pub render: Render,
    pub idempotency: Option<Idempotency>,
}

/// The durable events one command produced.
#[derive(Debug, Clone)]
pub struct Committed {
    batch: Arc<[Envelope]>,
    range: Range<usize>,
    /// The rendered answer, for commands submitted as a [`Request`].
    pub response: Option<Rendered>,
    /// True when this is a retry answered from the record of the first request.
    pub replayed: bool,
    /// What a lifecycle command answers besides its events.
    pub answer: Answer,
}

impl Committed {
    pub fn events(&self) -> &[Envelope] {
        &self.batch[self.range.clone()]
    }

    /// The seq of the command's last event; `None` when the command changed nothing.
    pub fn last_seq(&self) -> Option<u64> {
        self.events().last().map(|e| e.seq)
    }
}

/// What the committer (or, on a replica that follows, the follower) publishes for readers.
pub struct Shared {
    state: RwLock<Arc<State>>,
    head: AtomicU64,
    feed: broadcast::Sender<Arc<[Envelope]>>,
    /// Why writes are refused: [`Health`] as a number.
    health: AtomicU8,
    /// A committer runs here and takes commands.
    leading: AtomicBool,
}

/// Whether the committer takes writes, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Restarting from the durable state after a command panicked (a moment).
    Restarting,
    /// A write or sync of the log failed.
    LogFailed,
    /// A panic outside a decision (writing or syncing the log).
    CommitterFailed,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Healthy,
            1 => Health::Restarting,
            2 => Health::LogFailed,
            _ => Health::CommitterFailed,
        }
    }

    /// What a write is refused with in this state.
    fn refusal(self) -> CommitError {
        match self {
            Health::CommitterFailed => CommitError::CommitterFailed,
            _ => CommitError::LogFailed,
        }
    }
}

impl Shared {
    /// Readers' view of `state`, the log's durable content up to its `last_seq`.
    pub fn new(state: State) -> Arc<Shared> {
        let (feed, _) = broadcast::channel(FEED_DEPTH);
        Arc::new(Shared {
            head: AtomicU64::new(state.last_seq),
            state: RwLock::new(Arc::new(state)),
            feed,
            health: AtomicU8::new(Health::Healthy as u8),
            leading: AtomicBool::new(false),
        })
    }

    /// Hands readers `state`, which holds every event up to its `last_seq` and is durable.
    fn set_state(&self, state: State) {
        let head = state.last_seq;
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(state),
        );
        self.head.store(head, Ordering::Release);
        // What only the old version held is freed here, outside the lock.
        drop(old);
    }

    /// A follower's step: `state` now holds `batch`, durable events read from the log.
    pub fn advance(&self, state: State, batch: Vec<Envelope>) {
        self.set_state(state);
        if !batch.is_empty() {
            let _ = self.feed.send(Arc::from(batch));
        }
    }

    /// Whether a committer runs here and takes commands.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Writes may be accepted again: a new term, or none (a follower).
    fn heal(&self) {
        self.health.store(Health::Healthy as u8, Ordering::Release);
    }

    /// The durable state, as of now: a version that later commits leave as it is. Holding it
    /// blocks no one; it keeps alive only the nodes that later versions no longer share.
    pub fn read(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The `seq` of the last durable event. Records above it may exist in the log but are
    /// not yet durable and must not be shown.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every batch made durable from now on, in order. A receiver that falls more than
    /// `FEED_DEPTH` batches behind gets `Lagged` and must catch up from the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Envelope]>> {
        self.feed.subscribe()
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Whether writes stopped for good (until a restart, or a new term on a shared log).
    pub fn has_failed(&self) -> bool {
        matches!(self.health(), Health::LogFailed | Health::CommitterFailed)
    }

    fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(%error, "{what} the command log failed; refusing further writes until restart (on a shared log: until this replica leads it again)");
        self.health
            .store(Health::LogFailed as u8, Ordering::Release);
    }

    /// A panic outside a decision: what reached the log is unknown, as after a failed write.
    fn fail_by_panic(&self, what: &str, panic: &(dyn std::any::Any + Send)) {
        tracing::error!(
            panic = panic_message(panic),
            "the committer panicked {what}; refusing further writes until restart (on a shared \
             log: until this replica leads it again)"
        );
        self.health
            .store(Health::CommitterFailed as u8, Ordering::Release);
    }
}

type Reply = oneshot::Sender<Result<Committed, CommitError>>;

struct Submission {
    meta: CommandMeta,
    command: Command,
    render: Option<Render>,
    idempotency: Option<Idempotency>,
    reply: Reply,
}

/// What the decider settled for one submission.
struct Outcome {
    range: Range<usize>,
    response: Option<Rendered>,
    replayed: bool,
    answer: Answer,
}

// Queued by value: boxing would cost one more allocation per command.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Submit(Submission),
    Stop,
}

/// Submits commands; cheap to clone.
#[derive(Clone)]
pub struct CommitHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

/// The commands submitted, for the committer of each term to take in turn.
pub struct Queue(mpsc::Receiver<Msg>);

/// A handle to submit commands on, publishing into `shared`, and the queue they wait in.
pub fn channel(shared: Arc<Shared>) -> (CommitHandle, Queue) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    (CommitHandle { tx, shared }, Queue(rx))
}

impl CommitHandle {
    /// Submits a command and waits until its events are durable and visible to readers.
    pub async fn submit(
        &self,
        meta: CommandMeta,
        command: Command,
    ) -> Result<Committed, CommitError> {
        self.send(meta, command, None, None).await
    }

    /// Submits a command with its renderer and, optionally, an `Idempotency-Key`: a retry with
    /// the same key and request gets the first answer (even after a restart: the record is in
    /// the log); the same key with another request is refused.
    pub async fn execute(&self, request: Request) -> Result<Committed, CommitError> {
        let Request {
            meta,
            command,
            render,
            idempotency,
        } = request;
        self.send(meta, command, Some(render), idempotency).await
    }

    async fn send(
        &self,
        meta: CommandMeta,
        command: Command,
        render: Option<Render>,
        idempotency: Option<Idempotency>,
    ) -> Result<Committed, CommitError> {
        if !self.shared.is_leading() {
            return Err(CommitError::NotLeader);
        }
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Submit(Submission {
            meta,
            command,
            render,
            idempotency,
            reply,
        });
        self.tx
            .send(msg)
            .await
            .map_err(|_| CommitError::Unavailable)?;
        let answered = answer.await.unwrap_or(Err(CommitError::Unavailable));
        crate::metrics::get()
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        answered
    }

    /// Commands waiting for the committer.
    pub fn queued(&self) -> usize {
        QUEUE_DEPTH - self.tx.capacity()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// The running committer threads: one term of leading the log.
pub struct Committer {
    handle: CommitHandle,
    decider: JoinHandle<Queue>,
    syncer: JoinHandle<()>,
    log: Arc<Log>,
}

impl Committer {
    /// Starts committing onto `log`, whose records the state `handle` publishes already
    /// reflects, taking commands from `queue`.
    pub fn start(
        log: Arc<Log>,
        handle: &CommitHandle,
        queue: Queue,
        clock: Arc<dyn Clock>,
        secrets: Arc<SecretBox>,
        settings: Arc<Settings>,
    ) -> Committer {
        let shared = handle.shared.clone();
        let state = (*shared.read()).clone();
        shared.heal();
        let (to_syncer, written) = std_mpsc::channel();
        let unsettled = Arc::new(AtomicUsize::new(0));
        let decider = Decider {
            log: log.clone(),
            secrets,
            runtime: Runtime::recovered(&state, clock.now(), &settings),
            settings,
            working: state,
            shared: shared.clone(),
            clock,
            rx: queue.0,
            to_syncer,
            unsettled: unsettled.clone(),
        };
        let syncer = Syncer {
            log: log.clone(),
            shared: shared.clone(),
            rx: written,
            unsettled,
        };
        fn spawn<T: Send + 'static>(
            name: &str,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> JoinHandle<T> {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .expect("spawning a committer thread")
        }
        shared.leading.store(true, Ordering::Release);
        Committer {
            handle: handle.clone(),
            decider: spawn("spg99-decider", move || decider.run()),
            syncer: spawn("spg99-syncer", move || syncer.run()),
            log,
        }
    }

    /// A committer of a log that nothing else writes, starting from `state`: the readers'
    /// view, the queue and the (only) term at once.
    pub fn alone(
        log: Arc<Log>,
        state: State,
        clock: Arc<dyn Clock>,
        secrets: Arc<SecretBox>,
        settings: Arc<Settings>,
    ) -> Committer {
        let (handle, queue) = channel(Shared::new(state));
        Committer::start(log, &handle, queue, clock, secrets, settings)
    }

    pub fn handle(&self) -> CommitHandle {
        self.handle.clone()
    }

    /// Commits what was queued before this call and stops the threads; the queue, for the
    /// next term.
    async fn end(self) -> Queue {
        let _ = self.handle.tx.send(Msg::Stop).await;
        let (decider, syncer) = (self.decider, self.syncer);
        let queue = tokio::task::spawn_blocking(move || {
            let queue = decider.join();
            let _ = syncer.join();
            queue
        })
        .await;
        match queue {
            Ok(Ok(queue)) => queue,
            // Panics are caught inside the threads; this is the last line of defence, and the
            // commands the lost queue held are answered as unavailable.
            _ => {
                tracing::error!("a committer thread ended by a panic");
                Queue(mpsc::channel(1).1)
            }
        }
    }

    /// Ends the term (the log is another's now): what was queued is answered, by the log's
    /// refusal or as not led here, and readers keep the durable state. The queue, for the
    /// next term.
    pub async fn step_down(self) -> Queue {
        let shared = self.handle.shared.clone();
        shared.leading.store(false, Ordering::Release);
        let mut queue = self.end().await;
        while let Ok(msg) = queue.0.try_recv() {
            if let Msg::Submit(s) = msg {
                let _ = s.reply.send(Err(CommitError::NotLeader));
            }
        }
        shared.heal();
        queue
    }

    /// Commits what was queued before this call, stops the threads, and checkpoints the
    /// log so that the next start has nothing to replay.
    pub async fn stop(self) {
        self.handle.shared.leading.store(false, Ordering::Release);
        let log = self.log.clone();
        drop(self.end().await);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = log.checkpoint() {
                tracing::warn!(error = %e, "final checkpoint failed; the next start replays the WAL");
            }
        })
        .await;
    }
}

/// A batch written to the log but not yet known to be durable.
struct Decided {
    envs: Vec<Envelope>,
    /// The working state right after the batch, when it wrote anything.
    state: Option<State>,
    /// Each caller with what its command produced, or why it was refused.
    replies: Vec<(Reply, Result<Outcome, CommitError>)>,
}

/// Answers callers whose commands cannot be committed: the log (or the committer) failed.
fn refuse(shared: &Shared, replies: Vec<(Reply, Result<Outcome, CommitError>)>) {
    for (reply, _) in replies {
        let _ = reply.send(Err(shared.health().refusal()));
    }
}

/// What a panic said, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

struct Decider {
    log: Arc<Log>,
    secrets: Arc<SecretBox>,
    working: State,
    /// The lifecycle's soft state (lease renewals, heartbeats); see [`crate::lifecycle`].
    runtime: Runtime,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Msg>,
    to_syncer: std_mpsc::Sender<Decided>,
    /// Batches handed to the syncer and not yet settled.
    unsettled: Arc<AtomicUsize>,
}

impl Decider {
    /// Decides until told to stop; the queue, for the next term.
    fn run(mut self) -> Queue {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        while !stopping {
            match self.rx.blocking_recv() {
                None | Some(Msg::Stop) => break,
                Some(Msg::Submit(s)) => batch.push(s),
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Msg::Submit(s)) => batch.push(s),
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(written) = self.decide_and_write(&mut batch) {
                // Nothing to overlap the device wait with (no batch in the syncer's hands, no
                // command waiting): syncing here saves the hand-off to the syncer and back. Only
                // this thread gives the syncer work, so nothing it settles can come after this.
                if self.unsettled.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
                    settle_guarded(&self.log, &self.shared, vec![written]);
                    continue;
                }
                self.unsettled.fetch_add(1, Ordering::AcqRel);
                if self.to_syncer.send(written).is_err() {
                    break;
                }
            }
        }
        // Dropping `to_syncer` lets the syncer finish what was written, then stop.
        Queue(self.rx)
    }

    fn decide_and_write(&mut self, batch: &mut Vec<Submission>) -> Option<Decided> {
        if self.shared.has_failed() {
            let refusal = self.shared.health().refusal();
            for s in batch.drain(..) {
                let _ = s.reply.send(Err(refusal.clone()));
            }
            return None;
        }
        crate::metrics::get()
            .batch_commands
            .observe(batch.len() as f64);
        let now = self.clock.now();
        // Time never goes backwards in the log, even if the wall clock does.
        let at = self.working.last_at.map_or(now, |last| now.max(last));
        let mut envs: Vec<Envelope> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut queued = std::mem::take(batch).into_iter();
        while let Some(Submission {
            meta,
            command,
            render,
            idempotency,
            reply,
        }) = queued.next()
        {
            let request_id = meta.request_id.clone();
            let decided = catch_unwind(AssertUnwindSafe(|| {
                self.decide_one(meta, command, render, idempotency, at, &mut envs)
            }));
            match decided {
                Ok(outcome) => replies.push((reply, outcome)),
                Err(panic) => {
                    tracing::error!(
                        request_id,
                        panic = panic_message(&*panic),
                        "a command panicked while it was decided; nothing of it is written, \
                         and the committer restarts from the durable state"
                    );
                    let _ = reply.send(Err(CommitError::Panicked));
                    for (reply, _) in replies {
                        let _ = reply.send(Err(CommitError::Restarting));
                    }
                    self.restart();
                    // What came after it is decided afresh, against the durable state.
                    batch.extend(queued);
                    return if batch.is_empty() {
                        None
                    } else {
                        self.decide_and_write(batch)
                    };
                }
            }
        }
        let mut state = None;
        if !envs.is_empty() {
            let written = catch_unwind(AssertUnwindSafe(|| self.log.write(&envs)));
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.shared.fail("writing", &e);
                    refuse(&self.shared, replies);
                    return None;
                }
                Err(panic) => {
                    self.shared.fail_by_panic("writing the log", &*panic);
                    refuse(&self.shared, replies);
                    return None;
                }
            }
            state = Some(self.working.clone());
        }
        Some(Decided {
            envs,
            state,
            replies,
        })
    }

    /// After a command panicked: the batches decided before it are made durable (they are
    /// sound), and the working state becomes the readers' one, which holds exactly them.
    /// Readiness says so meanwhile.
    fn restart(&mut self) {
        self.shared
            .health
            .store(Health::Restarting as u8, Ordering::Release);
        while self.unsettled.load(Ordering::Acquire) > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.working = (*self.shared.read()).clone();
        // A failed write while it waited stays a failure.
        let _ = self.shared.health.compare_exchange(
            Health::Restarting as u8,
            Health::Healthy as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

impl Decider {
    /// Decides one submission, appending its events to `envs` and folding them into the
    /// working state.
    fn decide_one(
        &mut self,
        meta: CommandMeta,
        command: Command,
        render: Option<Render>,
        idempotency: Option<Idempotency>,
        at: Timestamp,
        envs: &mut Vec<Envelope>,
    ) -> Result<Outcome, CommitError> {
        // A defect injected in tests built with `--features failpoints`
        // (FAILPOINTS=committer-decide=panic): a request whose id starts with `panic-` panics
        // here, after an earlier command of its batch may have been folded in.
        fail::fail_point!(
            "committer-decide",
            meta.request_id.starts_with("panic-"),
            |_| Err(CommitError::Unavailable)
        );
        let start = envs.len();
        let record = match (idempotency, &meta.actor) {
            (Some(idem), Actor::ApiKey(key_id)) => {
                let slot = (key_id.clone(), idem.key.clone());
                match self.working.idempotency.get(&slot) {
                    Some(first) if first.request_hash == idem.request_hash => {
                        let body = self
                            .secrets
                            .open(&idempotency_owner(&slot), &first.body)
                            .map_err(|e| {
                                tracing::error!(error = %e, "a recorded answer does not open");
                                CommitError::Unavailable
                            })?;
                        return Ok(Outcome {
                            range: start..start,
                            response: Some(Rendered {
                                status: first.status,
                                body,
                            }),
                            replayed: true,
                            answer: Answer::None,
                        });
                    }
                    Some(_) => {
                        return Err(CommitError::Rejected(Rejection::Conflict {
                            code: "idempotency_key_reused",
                            message: "this Idempotency-Key was used with a different request"
                                .into(),
                        }))
                    }
                    None => Some((slot, idem)),
                }
            }
            _ => None,
        };
        let mut cx = Context {
            runtime: &mut self.runtime,
            settings: &self.settings,
            now: at,
        };
        let (drafts, answer) = decide(&self.working, &mut cx, &meta, &command)?;
        let mut last = Subject::default();
        for d in drafts {
            last = d.subject.clone();
            self.push(meta_env(&meta, at, d.subject, d.event), envs);
        }
        let response = render.map(|render| render(&self.working, &envs[start..]));
        if let (Some((slot, idem)), Some(rendered)) = (record, &response) {
            let body = self.secrets.seal(&idempotency_owner(&slot), &rendered.body);
            let event = Event::IdempotentResponseRecorded {
                key_id: slot.0,
                idempotency_key: slot.1,
                request_hash: idem.request_hash,
                status: rendered.status,
                body,
            };
            self.push(meta_env(&meta, at, last, event), envs);
        }
        Ok(Outcome {
            range: start..envs.len(),
            response,
            replayed: false,
            answer,
        })
    }
}

impl Decider {
    /// Numbers an event, folds it into the working state, and adds it to the batch.
    fn push(&mut self, mut env: Envelope, envs: &mut Vec<Envelope>) {
        env.seq = self.working.last_seq + 1;
        self.working.apply(&env);
        envs.push(env);
    }
}

/// An envelope for an event of the command `meta` describes; `seq` is set by `push`.
fn meta_env(meta: &CommandMeta, at: Timestamp, subject: Subject, event: Event) -> Envelope {
    Envelope {
        seq: 0,
        at,
        actor: meta.actor.clone(),
        request_id: meta.request_id.clone(),
        account: subject.account,
        tenant: subject.tenant,
        tenant_id: subject.tenant_id,
        db_id: subject.db_id,
        event,
    }
}

/// What a recorded answer is sealed to: its key id and idempotency key.
fn idempotency_owner(slot: &(String, String)) -> Vec<u8> {
    format!("idempotency\0{}\0{}", slot.0, slot.1).into_bytes()
}

struct Syncer {
    log: Arc<Log>,
    shared: Arc<Shared>,
    rx: std_mpsc::Receiver<Decided>,
    unsettled: Arc<AtomicUsize>,
}

impl Syncer {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let mut group = vec![first];
            group.extend(self.rx.try_iter());
            let n = group.len();
            settle_guarded(&self.log, &self.shared, group);
            self.unsettled.fetch_sub(n, Ordering::Release);
        }
    }
}

/// [`settle`], with a panic inside it failing the committer: whether the group reached the
/// disk is unknown then. The failure is recorded before its callers are answered (with it),
/// so that none of them can see the service ready after its write went unanswered.
fn settle_guarded(log: &Log, shared: &Shared, mut group: Vec<Decided>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| settle(log, shared, &mut group))) {
        shared.fail_by_panic("syncing the log", &*panic);
        group
            .iter_mut()
            .for_each(|d| refuse(shared, std::mem::take(&mut d.replies)));
    }
}

/// Makes a group of written batches durable with one sync, then hands readers the state as of
/// the last of them, publishes them to subscribers and answers every caller, in order. Each
/// batch's replies leave `group` as they are answered.
fn settle(log: &Log, shared: &Shared, group: &mut [Decided]) {
    // A defect injected in tests built with `--features failpoints`
    // (FAILPOINTS=committer-sync=panic): a batch with a request whose id starts with
    // `panic-sync-` panics here, written and not yet synced.
    fail::fail_point!(
        "committer-sync",
        group.iter().any(|d| d
            .envs
            .iter()
            .any(|e| e.request_id.starts_with("panic-sync-"))),
        |_| ()
    );
    let wrote = group.iter().any(|w| w.state.is_some());
    let metrics = crate::metrics::get();
    if wrote {
        let started = std::time::Instant::now();
        if let Err(e) = log.sync() {
            shared.fail("syncing", &e);
        }
        metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    if shared.has_failed() {
        group
            .iter_mut()
            .for_each(|d| refuse(shared, std::mem::take(&mut d.replies)));
        return;
    }
    if let Some(state) = group.iter_mut().rev().find_map(|w| w.state.take()) {
        // Durable: now, and only now, readers may see it.
        shared.set_state(state);
    }
    for w in group {
        let batch: Arc<[Envelope]> = Arc::from(std::mem::take(&mut w.envs));
        if !batch.is_empty() {
            metrics.appended(&batch);
            // No receiver is fine; a full channel drops the oldest batch for laggards.
            let _ = shared.feed.send(batch.clone());
        }
        for (reply, outcome) in std::mem::take(&mut w.replies) {
            let answer = outcome.map(|o| Committed {
                batch: batch.clone(),
                range: o.range,
                response: o.response,
                replayed: o.replayed,
                answer: o.answer,
            });
            let _ = reply.send(answer);
        }
    }
}
