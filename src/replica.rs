//! Replicas: several `spg99 serve` on one shared log (PostgreSQL), one leading it and the
//! others following it. A log only one process opens (sled) is always led by that process,
//! through the same steps.
//!
//! ```text
//!            ┌──────────── lease taken (the next generation) ────────────┐
//!            │                                                           ▼
//!   follower: wait for an append (NOTIFY, or          leader: catch up to the head, start the
//!   the poll), read the log from its head, fold       committer and the reconciler, renew the
//!   into its own projections, publish to readers;     lease every ttl/3
//!   every ttl/4, try to take the lease                           │
//!            ▲                                                   │ lease lost, or an append
//!            └─────────── step down: the committer stops; ◀──────┘ fenced, or no renewal
//!                         readers keep the durable state           for a whole ttl
//! ```
//!
//! A follower serves every read and the event stream from its own projections, which only
//! ever hold what the log holds; the HTTP layer passes writes to the leader
//! ([`crate::http::forward`]). The lease says who should lead; what keeps a deposed leader
//! from writing is the generation every append checks ([`crate::log::postgres`]), so a
//! leader that was paused past its lease and resumes has its first append refused, and steps
//! down. What a leader decided but could not append was never published to its readers, so
//! after stepping down it follows the log from its durable head like any follower.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::committer::{CommitHandle, Committer, Queue, Shared};
use crate::lifecycle::Settings;
use crate::log::{Bid, Lead, Log, LogError};
use crate::secrets::SecretBox;
use crate::server::{Config, StartError};

/// How long a follower waits for a notification before it reads the log anyway.
const POLL: Duration = Duration::from_millis(500);
/// Events a follower hands readers at a time while it catches up.
const CHUNK: usize = 4096;

/// This replica's part, as the HTTP layer reads it.
#[derive(Default)]
pub struct Role {
    /// The leader's URL, while another replica leads.
    leader: RwLock<Option<String>>,
    /// The last attempt to follow the log failed: reads may be stale.
    behind: AtomicBool,
}

impl Role {
    /// Where writes go while another replica leads; `None` if no one does right now (or this
    /// replica does: see [`Shared::is_leading`]).
    pub fn leader(&self) -> Option<String> {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, url: Option<String>) {
        *self.leader.write().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// False while this replica cannot read the log.
    pub fn in_sync(&self) -> bool {
        !self.behind.load(Ordering::Acquire)
    }
}

/// What a replica needs to lead a term.
pub struct Parts {
    pub log: Arc<Log>,
    pub commits: CommitHandle,
    pub clock: Arc<dyn Clock>,
    pub secrets: Arc<SecretBox>,
    pub settings: Arc<Settings>,
    pub config: Arc<Config>,
    pub bid: Bid,
    pub role: Arc<Role>,
}

/// The running replica: stop it last, after the API.
pub struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Leads if it can (a log of its own: always, and its first term has begun when this
    /// returns, so the API's first request finds the bootstrap done), then carries on in the
    /// background.
    pub async fn start(parts: Parts, queue: Queue) -> Result<Replica, StartError> {
        let mut supervisor = Supervisor {
            parts,
            queue: Some(queue),
            term: None,
        };
        supervisor.try_lead().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = actix_web::rt::spawn(supervisor.run(stopped));
        Ok(Replica { stop, task })
    }

    /// Stops following, or ends the term: what was queued is committed, the log checkpointed,
    /// and the lease given up so that another replica leads at once.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

struct Term {
    committer: Committer,
    reconciler: tokio::task::JoinHandle<()>,
    /// When the lease was last renewed (or taken).
    renewed: Instant,
}

struct Supervisor {
    parts: Parts,
    /// The commands' queue while no committer holds it.
    queue: Option<Queue>,
    term: Option<Term>,
}

/// Runs `f` on a blocking thread (the log's store may be a database whose client blocks).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a log call does not panic")
}

impl Supervisor {
    fn shared(&self) -> &Arc<Shared> {
        self.parts.commits.shared()
    }

    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let ttl = self.parts.bid.ttl;
        let mut tried = Instant::now();
        loop {
            if let Some(term) = &self.term {
                let renewed = term.renewed;
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => {}
                    _ = &mut stop => break,
                }
                if let Some(why) = self.keep_leading(renewed).await {
                    tracing::warn!("{why}: stepping down, following the log");
                    self.end_term().await;
                    tried = Instant::now();
                }
            } else {
                let log = self.parts.log.clone();
                tokio::select! {
                    _ = blocking(move || log.wait(POLL)) => {}
                    _ = &mut stop => break,
                }
                self.catch_up().await;
                if tried.elapsed() >= ttl / 4 {
                    tried = Instant::now();
                    if let Err(e) = self.try_lead().await {
                        tracing::warn!(error = %e, "cannot take the lead");
                    }
                }
            }
        }
        if let Some(term) = self.term.take() {
            term.reconciler.abort();
            term.committer.stop().await;
            let (log, bid) = (self.parts.log.clone(), self.parts.bid.clone());
            blocking(move || log.resign(&bid)).await;
        }
    }

    /// Why this replica must stop leading, if it must. A log of its own that failed is not
    /// left (nobody knows what its files hold: the committer refuses writes until a restart
    /// recovers); a shared one is, since what it holds is what the next term reads.
    async fn keep_leading(&mut self, renewed: Instant) -> Option<String> {
        if !self.parts.log.shared() {
            return None;
        }
        if self.shared().has_failed() {
            return Some("the log refused an append".into());
        }
        let (log, bid) = (self.parts.log.clone(), self.parts.bid.clone());
        match blocking(move || log.renew(&bid)).await {
            Ok(true) => {
                if let Some(term) = &mut self.term {
                    term.renewed = Instant::now();
                }
                None
            }
            Ok(false) => Some("another replica took the lease".into()),
            Err(e) if renewed.elapsed() >= self.parts.bid.ttl => Some(format!(
                "the lease could not be renewed for a whole term ({e})"
            )),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease yet");
                None
            }
        }
    }

    /// Takes the lead if the log's lease is free; follows whoever has it otherwise.
    async fn try_lead(&mut self) -> Result<(), StartError> {
        let (log, bid) = (self.parts.log.clone(), self.parts.bid.clone());
        match blocking(move || log.lead(&bid)).await? {
            Lead::Theirs { address } => {
                self.parts.role.set_leader(address);
                Ok(())
            }
            Lead::Ours => {
                // Fenced now: nothing lands after what this reads.
                self.catch_up().await;
                if !self.parts.role.in_sync() {
                    self.abandon().await;
                    return Err(StartError::Bootstrap(
                        "the log could not be read after taking the lead".into(),
                    ));
                }
                self.begin_term().await
            }
        }
    }

    async fn begin_term(&mut self) -> Result<(), StartError> {
        let p = &self.parts;
        // A manual clock (tests, demos) starts where the log's time is, not behind it.
        if let Some(last) = self.shared().read().last_at {
            let behind = last.as_micros() - p.clock.now().as_micros();
            if behind > 0 {
                p.clock.advance(behind);
            }
        }
        let queue = self.queue.take().expect("the queue, between terms");
        let committer = Committer::start(
            p.log.clone(),
            &p.commits,
            queue,
            p.clock.clone(),
            p.secrets.clone(),
            p.settings.clone(),
        );
        p.role.set_leader(None);
        tracing::info!(seq = self.shared().head(), "leading the log");
        let reconciler = actix_web::rt::spawn(crate::reconciler::run(
            p.commits.clone(),
            p.config.reconcile_interval,
        ));
        self.term = Some(Term {
            committer,
            reconciler,
            renewed: Instant::now(),
        });
        let p = &self.parts;
        if let Err(e) = crate::server::begin_term(&p.commits, &p.config, &p.secrets).await {
            self.end_term().await;
            return Err(e);
        }
        Ok(())
    }

    async fn end_term(&mut self) {
        if let Some(term) = self.term.take() {
            term.reconciler.abort();
            self.queue = Some(term.committer.step_down().await);
        }
        self.abandon().await;
    }

    /// Gives up a lead this replica holds or was about to use.
    async fn abandon(&mut self) {
        let (log, bid) = (self.parts.log.clone(), self.parts.bid.clone());
        blocking(move || log.resign(&bid)).await;
    }

    /// Reads what the log holds past the readers' state and hands it to them.
    async fn catch_up(&self) {
        let (log, shared) = (self.parts.log.clone(), self.shared().clone());
        let followed = blocking(move || follow(&log, &shared)).await;
        if let Err(e) = &followed {
            tracing::warn!(error = %e, "cannot follow the log; reads may be stale");
        }
        self.parts
            .role
            .behind
            .store(followed.is_err(), Ordering::Release);
    }
}

/// Folds the log's records past `shared`'s head into a copy of its state and publishes them,
/// a chunk at a time.
fn follow(log: &Log, shared: &Shared) -> Result<(), LogError> {
    let mut state = (*shared.read()).clone();
    let mut batch = Vec::new();
    let mut read = log.read_from(state.last_seq + 1);
    let result = loop {
        let env = match read.next() {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(env)) => env,
        };
        if env.seq != state.last_seq + 1 {
            break Err(LogError::Gap {
                expected: state.last_seq + 1,
                found: env.seq,
            });
        }
        state.apply(&env);
        batch.push(env);
        if batch.len() == CHUNK {
            shared.advance(state.clone(), std::mem::take(&mut batch));
        }
    };
    if !batch.is_empty() {
        shared.advance(state, batch);
    }
    result
}
