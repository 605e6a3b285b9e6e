//! The single committer: the one place where the log grows.
//!
//! ```text
//! HTTP handlers ──submit──▶ [queue] ──▶ committer thread
//!                                        1. take every queued command (up to MAX_BATCH)
//!                                        2. decide each against the working state, in order,
//!                                           folding its events in so the next one sees them
//!                                        3. append all events as one batch, one flush+fdatasync
//!                                        4. fold the batch into the readers' state
//!                                        5. publish the batch to subscribers (never blocks)
//!                                        6. answer every caller
//! ```
//!
//! Two copies of the state exist on purpose. The committer's *working* state runs ahead of
//! the disk while a batch is being formed; the *readers'* state only ever holds durable
//! events, so no reader sees an event before it is on the device. Both are folded by the same
//! pure `apply`, so they are equal between batches.
//!
//! If the log cannot be written, nobody knows whether the failed batch reached the disk: the
//! committer stops accepting commands (every later one is refused as unavailable, and
//! `/readyz` says so) rather than guess. A restart recovers from the log, which is the truth.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use spg99_events::Envelope;
use spg99_projections::State;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::commands::{decide, Command, CommandMeta, Rejection};
use crate::log::Log;

/// Most commands in one batch; bounds the latency a single flush can add.
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
    #[error("the command log is not accepting writes")]
    Unavailable,
}

/// What the committer publishes for readers.
pub struct Shared {
    state: RwLock<State>,
    head: AtomicU64,
    feed: broadcast::Sender<Arc<[Envelope]>>,
    failed: AtomicBool,
}

impl Shared {
    /// The durable state. Hold the guard briefly: the committer waits for it after each batch.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The `seq` of the last durable event.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every batch committed from now on, in order. A receiver that falls more than
    /// `FEED_DEPTH` batches behind gets `Lagged` and must catch up from the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Envelope]>> {
        self.feed.subscribe()
    }

    /// False once a write to the log failed.
    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }
}

struct Submission {
    meta: CommandMeta,
    command: Command,
    reply: oneshot::Sender<Result<Vec<Envelope>, CommitError>>,
}

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

impl CommitHandle {
    /// Submits a command and waits until its events are durable and visible to readers.
    /// Returns the events it produced (none, for a command that changed nothing).
    pub async fn submit(
        &self,
        meta: CommandMeta,
        command: Command,
    ) -> Result<Vec<Envelope>, CommitError> {
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Submit(Submission {
            meta,
            command,
            reply,
        });
        self.tx
            .send(msg)
            .await
            .map_err(|_| CommitError::Unavailable)?;
        answer.await.unwrap_or(Err(CommitError::Unavailable))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// The running committer thread.
pub struct Committer {
    handle: CommitHandle,
    thread: Option<JoinHandle<Log>>,
}

impl Committer {
    /// Starts committing onto `log`, whose records `state` already reflects.
    pub fn start(log: Log, state: State, clock: Arc<dyn Clock>) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (feed, _) = broadcast::channel(FEED_DEPTH);
        let shared = Arc::new(Shared {
            head: AtomicU64::new(state.last_seq),
            state: RwLock::new(state.clone()),
            feed,
            failed: AtomicBool::new(false),
        });
        let worker = Worker {
            log,
            working: state,
            shared: shared.clone(),
            clock,
            rx,
        };
        let thread = std::thread::Builder::new()
            .name("spg99-committer".into())
            .spawn(move || worker.run())
            .expect("spawning the committer thread");
        Committer {
            handle: CommitHandle { tx, shared },
            thread: Some(thread),
        }
    }

    pub fn handle(&self) -> CommitHandle {
        self.handle.clone()
    }

    /// Commits what was queued before this call, stops, and gives the log back.
    pub async fn stop(mut self) -> Option<Log> {
        let _ = self.handle.tx.send(Msg::Stop).await;
        let thread = self.thread.take()?;
        tokio::task::spawn_blocking(move || thread.join().ok())
            .await
            .ok()
            .flatten()
    }
}

struct Worker {
    log: Log,
    working: State,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Msg>,
}

impl Worker {
    fn run(mut self) -> Log {
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
            self.commit(&mut batch);
        }
        self.log
    }

    fn commit(&mut self, batch: &mut Vec<Submission>) {
        if !self.shared.is_healthy() {
            for s in batch.drain(..) {
                let _ = s.reply.send(Err(CommitError::Unavailable));
            }
            return;
        }
        let now = self.clock.now();
        // Time never goes backwards in the log, even if the wall clock does.
        let at = self.working.last_at.map_or(now, |last| now.max(last));
        let mut envs: Vec<Envelope> = Vec::with_capacity(batch.len());
        // For each submission, the range of `envs` it produced, or why it was refused.
        let mut outcomes = Vec::with_capacity(batch.len());
        for s in batch.iter() {
            match decide(&self.working, &s.meta, &s.command) {
                Ok(drafts) => {
                    let start = envs.len();
                    for d in drafts {
                        let env = Envelope {
                            seq: self.working.last_seq + 1,
                            at,
                            actor: s.meta.actor.clone(),
                            request_id: s.meta.request_id.clone(),
                            account: d.account,
                            tenant: d.tenant,
                            db_id: d.db_id,
                            event: d.event,
                        };
                        self.working.apply(&env);
                        envs.push(env);
                    }
                    outcomes.push(Ok(start..envs.len()));
                }
                Err(rejection) => outcomes.push(Err(CommitError::Rejected(rejection))),
            }
        }

        if !envs.is_empty() {
            if let Err(e) = self.log.append(&envs) {
                tracing::error!(error = %e, "writing the command log failed; refusing further writes until restart");
                self.shared.failed.store(true, Ordering::Release);
                self.working = self.shared.read().clone();
                for s in batch.drain(..) {
                    let _ = s.reply.send(Err(CommitError::Unavailable));
                }
                return;
            }
            // Durable: now, and only now, readers may see it.
            {
                let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
                state.apply_all(&envs);
                self.shared.head.store(state.last_seq, Ordering::Release);
            }
        }

        let published: Arc<[Envelope]> = Arc::from(envs);
        if !published.is_empty() {
            // No receiver is fine; a full channel drops the oldest batch for laggards.
            let _ = self.shared.feed.send(published.clone());
        }
        for (s, outcome) in batch.drain(..).zip(outcomes) {
            let reply = outcome.map(|range| published[range].to_vec());
            let _ = s.reply.send(reply);
        }
    }
}
