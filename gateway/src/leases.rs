//! One lease per database per Gateway, shared by every connection to that database.
//!
//! The first connection checks out (which starts a stopped database, waiting up to the connect
//! timeout; a frozen one is held and asked again after `Retry-After`); later ones join its
//! lease. A renewer renews it every third of its TTL with the live connection count, and about
//! half a second after that count changes (so describe's `active_connections` follows). When
//! the last connection closes, the lease is released. A renewal refused with `stale_epoch` (a
//! cutover moved the database to a new writer) closes the connections to the retired writer;
//! a lease that is gone while the writer is unchanged (the control plane restarted and let it
//! expire, say) is taken again without touching the connections. A connection joins a lease
//! the control plane confirmed within the last second, or renews it first: after a cutover it
//! checks out the new writer rather than join the retired one's lease (and be closed with it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spg99_wire as wire;
use tokio::sync::{watch, Notify};

use crate::control::{Checkout, Control, Renewal};

/// Why a connection gets no route to its database.
#[derive(Debug, Clone, PartialEq)]
pub enum NoRoute {
    UnknownUser,
    UnknownDb,
    /// Deleting, failed, or not started in time: the message says which.
    Unavailable(String),
    /// The control plane could not be reached.
    ControlPlane(String),
}

/// A database's lease and the connections on it.
pub struct Held {
    lease: Mutex<wire::Lease>,
    connections: AtomicU32,
    /// Set to `true` to close every connection on this lease (its writer was retired).
    closed: watch::Sender<bool>,
    /// Wakes the renewer when `connections` changed.
    changed: Notify,
    /// Set once the lease is released (or given up): it is released once.
    ended: AtomicBool,
    /// When the control plane last confirmed the lease (its checkout, or a renewal).
    confirmed: Mutex<Instant>,
}

impl Held {
    pub fn backend_addr(&self) -> String {
        crate::lock(&self.lease).backend_addr.clone()
    }

    /// The database's id and its writer's compute profile.
    pub fn db(&self) -> (uuid::Uuid, String) {
        let l = crate::lock(&self.lease);
        (l.db_id, l.profile.clone())
    }

    /// Becomes `true` when its connections must close.
    pub fn subscribe_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Whether its connections must close (its writer was retired, or the lease is gone).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

type Key = (String, String);

/// How long after a change in its connection count a lease reports it.
const REPORT_AFTER: Duration = Duration::from_millis(500);

/// A connection joins a lease the control plane confirmed at most this long ago; an older one
/// is renewed first. Without it, a connection arriving after a cutover (a reset, a restore, a
/// handoff) and before the renewer's next turn would join the retired writer's lease, reach
/// whatever listens at its address, and be closed when the renewal is refused.
const CONFIRMED_WITHIN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Slot {
    held: tokio::sync::Mutex<Option<Arc<Held>>>,
}

pub struct Leases {
    control: Arc<Control>,
    connect_timeout: Duration,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

/// A connection's share of a lease: dropping it ends the share (and, for the last one, the
/// lease).
pub struct Ticket {
    leases: Arc<Leases>,
    pub key: Key,
    pub held: Arc<Held>,
    /// Becomes `true` when the connection must close.
    pub closed: watch::Receiver<bool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.held.changed.notify_one();
        if self.held.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (leases, key, held) = (self.leases.clone(), self.key.clone(), self.held.clone());
            tokio::spawn(async move { leases.release_if_unused(&key, &held).await });
        }
    }
}

impl Leases {
    pub fn new(control: Arc<Control>, connect_timeout: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            control,
            connect_timeout,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let mut slots = crate::lock(&self.slots);
        // A defect injected in tests built with `--features failpoints`
        // (FAILPOINTS=gateway-slot=panic): a connection to a database named `panic` panics here,
        // holding the lock, which the next connections must still take.
        fail::fail_point!("gateway-slot", key.1 == "panic", |_| Arc::default());
        slots.entry(key.clone()).or_default().clone()
    }

    /// A route to `db` for `pg_user`: the database's lease, checked out if this Gateway holds
    /// none, by `deadline` (connections queued behind one checkout each keep their own).
    pub async fn acquire(
        self: &Arc<Self>,
        pg_user: &str,
        db: &str,
        deadline: Instant,
    ) -> Result<Ticket, NoRoute> {
        let key = (pg_user.to_owned(), db.to_owned());
        let slot = self.slot(&key);
        let routed = self.route(&key, &slot, deadline).await;
        drop(slot);
        if routed.is_err() {
            self.drop_slot_if_idle(&key);
        }
        let h = routed?;
        h.connections.fetch_add(1, Ordering::AcqRel);
        h.changed.notify_one();
        Ok(Ticket {
            leases: self.clone(),
            key,
            closed: h.closed.subscribe(),
            held: h,
        })
    }

    /// The slot's live lease, or a new one.
    async fn route(
        self: &Arc<Self>,
        key: &Key,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Arc<Held>, NoRoute> {
        let (pg_user, db) = (&key.0, &key.1);
        let mut held = tokio::time::timeout_at(deadline.into(), slot.held.lock())
            .await
            .map_err(|_| self.not_in_time(db, None))?;
        let mut live = held.as_ref().filter(|h| !*h.closed.borrow()).cloned();
        if let Some(h) = live.clone() {
            let stale = crate::lock(&h.confirmed).elapsed() > CONFIRMED_WITHIN;
            if stale && !self.confirm(&h).await {
                // Its writer was retired: its connections close, this one checks out afresh.
                self.end(&h).await;
                *held = None;
                live = None;
            }
        }
        Ok(match live {
            Some(h) => h,
            None => {
                let waited = Instant::now();
                let lease = self.checkout(pg_user, db, deadline).await;
                crate::metrics::get()
                    .checkout_wait
                    .observe(waited.elapsed().as_secs_f64());
                let lease = lease?;
                let (closed, _) = watch::channel(false);
                let h = Arc::new(Held {
                    lease: Mutex::new(lease),
                    connections: AtomicU32::new(0),
                    closed,
                    changed: Notify::new(),
                    ended: AtomicBool::new(false),
                    confirmed: Mutex::new(Instant::now()),
                });
                tokio::spawn(self.clone().renew(key.clone(), h.clone()));
                *held = Some(h.clone());
                h
            }
        })
    }

    /// Forgets `key`'s slot when nothing holds or waits on it, so that the slots stay those of
    /// databases in use (a client naming made-up databases adds none).
    fn drop_slot_if_idle(&self, key: &Key) {
        let mut slots = crate::lock(&self.slots);
        let idle = slots.get(key).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.held.try_lock().is_ok_and(|h| h.is_none())
        });
        if idle {
            slots.remove(key);
        }
    }

    /// The database did not run in time; `why`, the control plane's last reason.
    fn not_in_time(&self, db: &str, why: Option<String>) -> NoRoute {
        let secs = self.connect_timeout.as_secs();
        NoRoute::Unavailable(match why {
            Some(why) => {
                format!("database \"{db}\" did not become available within {secs} s: {why}")
            }
            None => format!("database \"{db}\" did not become available within {secs} s; retry"),
        })
    }

    /// Checks out, waiting for a start and through a freeze, until `deadline`.
    async fn checkout(
        &self,
        pg_user: &str,
        db: &str,
        deadline: Instant,
    ) -> Result<wire::Lease, NoRoute> {
        let mut busy = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(Duration::from_secs(30));
            let mut unreachable = None;
            let pause = match self.control.checkout(pg_user, db, wait).await {
                Checkout::Lease(lease) => return Ok(lease),
                Checkout::UnknownUser => return Err(NoRoute::UnknownUser),
                Checkout::UnknownDb => return Err(NoRoute::UnknownDb),
                Checkout::Refused { message } => return Err(NoRoute::Unavailable(message)),
                Checkout::Pending { retry_after } => retry_after.min(Duration::from_millis(50)),
                Checkout::Busy {
                    retry_after,
                    message,
                } => {
                    busy = Some(message).filter(|m| !m.is_empty());
                    retry_after
                }
                Checkout::Transient(e) => {
                    unreachable = Some(e);
                    Duration::from_millis(200)
                }
            };
            if Instant::now() + pause >= deadline {
                return Err(match unreachable {
                    Some(e) => NoRoute::ControlPlane(e),
                    None => self.not_in_time(db, busy),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews `held` every third of its TTL while it has connections, and soon after its
    /// connection count changed.
    async fn renew(self: Arc<Self>, key: Key, held: Arc<Held>) {
        let mut reported = 0;
        let mut renewed = Instant::now();
        loop {
            let (lease_id, epoch, ttl) = {
                let l = crate::lock(&held.lease);
                (l.lease_id, l.lease_control_epoch, l.lease_ttl_ms)
            };
            let due = renewed + Duration::from_millis((ttl / 3).max(50));
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = held.changed.notified() => {
                    // A burst of connections settles into one report.
                    tokio::time::sleep(REPORT_AFTER).await;
                    if held.connections.load(Ordering::Acquire) == reported {
                        continue;
                    }
                }
            }
            if *held.closed.borrow() {
                return;
            }
            let connections = held.connections.load(Ordering::Acquire);
            renewed = Instant::now();
            match self.control.renew(lease_id, epoch, connections).await {
                Renewal::Renewed => {
                    reported = connections;
                    *crate::lock(&held.confirmed) = renewed;
                }
                Renewal::Transient(_) => {}
                Renewal::StaleEpoch => {
                    tracing::info!(db = %key.1, "the database moved to a new writer: closing connections to the old one");
                    // Closed first: forgetting may wait for a checkout under way.
                    self.end(&held).await;
                    self.forget(&key, &held).await;
                    return;
                }
                Renewal::Gone => {
                    // The lease expired (a control plane restart, a pause): take one again;
                    // the connections stay if they reach the same writer.
                    let old = crate::lock(&held.lease).clone();
                    match self.control.checkout(&key.0, &key.1, Duration::ZERO).await {
                        Checkout::Lease(new)
                            if new.backend_addr == old.backend_addr
                                && new.lease_control_epoch == old.lease_control_epoch =>
                        {
                            *crate::lock(&held.lease) = new;
                            *crate::lock(&held.confirmed) = renewed;
                        }
                        Checkout::Busy { .. }
                        | Checkout::Transient(_)
                        | Checkout::Pending { .. } => {}
                        answer => {
                            if let Checkout::Lease(new) = answer {
                                // Another writer's: not this lease's connections' to use.
                                self.control.release(new.lease_id).await;
                            }
                            // A new writer (or none): the old lease is gone already.
                            held.ended.store(true, Ordering::Release);
                            let _ = held.closed.send_replace(true);
                            self.forget(&key, &held).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Renews `held` now, before a connection joins it: `false` when its writer was retired
    /// (a renewal refused with `stale_epoch`). Any other answer lets the connection join, and
    /// leaves the lease to its renewer.
    async fn confirm(&self, held: &Held) -> bool {
        let (lease_id, epoch) = {
            let l = crate::lock(&held.lease);
            (l.lease_id, l.lease_control_epoch)
        };
        let asked = Instant::now();
        let connections = held.connections.load(Ordering::Acquire);
        match self.control.renew(lease_id, epoch, connections).await {
            Renewal::StaleEpoch => false,
            Renewal::Renewed => {
                *crate::lock(&held.confirmed) = asked;
                true
            }
            Renewal::Transient(_) | Renewal::Gone => true,
        }
    }

    /// Stops routing new connections through `held` (its backend could not be reached: the
    /// writer may have moved); the next connection checks out afresh. Its own connections
    /// stay, and its lease goes with the last of them.
    pub async fn forget(&self, key: &Key, held: &Arc<Held>) {
        let slot = self.slot(key);
        let mut current = slot.held.lock().await;
        if current.as_ref().is_some_and(|h| Arc::ptr_eq(h, held)) {
            *current = None;
        }
    }

    /// Closes every connection on `held` and releases its lease, once.
    async fn end(&self, held: &Held) {
        let _ = held.closed.send_replace(true);
        if !held.ended.swap(true, Ordering::AcqRel) {
            let lease_id = crate::lock(&held.lease).lease_id;
            self.control.release(lease_id).await;
        }
    }

    /// Ends `held` if its last connection is gone and no new one joined meanwhile.
    async fn release_if_unused(&self, key: &Key, held: &Arc<Held>) {
        let slot = self.slot(key);
        let mut current = slot.held.lock().await;
        if held.connections.load(Ordering::Acquire) != 0 {
            return;
        }
        if current.as_ref().is_some_and(|h| Arc::ptr_eq(h, held)) {
            *current = None;
        }
        drop(current);
        drop(slot);
        self.drop_slot_if_idle(key);
        self.end(held).await;
    }

    /// Ends the leases on the databases `fenced` (a restore, a cutover, a deletion moved them
    /// away from the writer their leases route to): their connections close, and the next
    /// connection checks out afresh, at once rather than at the lease's next renewal.
    pub async fn fence(&self, fenced: &[uuid::Uuid]) {
        let slots: Vec<Arc<Slot>> = crate::lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let mut current = slot.held.lock().await;
            let hit = current
                .as_ref()
                .is_some_and(|h| fenced.contains(&crate::lock(&h.lease).db_id));
            if let Some(h) = current.take_if(|_| hit) {
                drop(current);
                tracing::info!(db_id = %crate::lock(&h.lease).db_id, "the database's leases were fenced: closing its connections");
                self.end(&h).await;
            }
        }
    }

    /// Ends every lease this Gateway routes through (their connections close, the control
    /// plane hears each release): at shutdown, so that its databases need not wait a TTL.
    pub async fn end_all(&self) {
        let slots: Vec<Arc<Slot>> = crate::lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let held = slot.held.lock().await.take();
            if let Some(h) = held {
                self.end(&h).await;
            }
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}
