//! The pooler's backend connections: one pool per database (its PostgreSQL user and name) on
//! this Gateway, of at most its writer's profile's pool size
//! ([`spg99_wire::profiles::Profile::pool_size`]).
//!
//! A client takes a backend for a transaction and gives it back at its end. A backend is
//! opened with the startup parameters of the client it was opened for (`application_name`,
//! `options`, ...) and serves only clients that gave the same ones, so that no client sees
//! another's settings; an idle backend of other parameters is closed to make room. When every
//! backend is busy, clients wait in the order they came, for at most the pool timeout. Backends
//! of a lease whose writer was retired are closed, never reused. When the last client of a
//! database leaves, its idle backends close, so that the database can stop when idle.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::leases::{Held, Ticket};
use crate::pgwire::Frames;
use crate::session::{error, End, Gateway, Login};

/// A client's startup parameters for its backends, sorted.
pub type Settings = Arc<Vec<(String, String)>>;

/// A statement as a client's Parse defines it: its text and parameter types (the Parse
/// message's body after the name).
pub type Def = Arc<[u8]>;

/// Statements prepared on a backend at most; past them the least recently used is closed.
pub const STATEMENTS_PER_BACKEND: usize = 512;

/// One backend connection.
pub struct Conn {
    pub stream: TcpStream,
    /// What was read from it and not yet handled.
    pub frames: Frames,
    pub held: Arc<Held>,
    /// Becomes `true` when `held`'s connections must close.
    pub closed: tokio::sync::watch::Receiver<bool>,
    pub settings: Settings,
    pub backend_addr: String,
    pub pid: u32,
    pub secret: u32,
    /// The statements prepared on it, by definition: the name it has there, and when it was
    /// last used.
    pub statements: HashMap<Def, (String, u64)>,
    uses: u64,
    named: u64,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        held: Arc<Held>,
        settings: Settings,
        backend_addr: String,
        pid: u32,
        secret: u32,
    ) -> Conn {
        Conn {
            stream,
            frames: Frames::default(),
            closed: held.subscribe_closed(),
            held,
            settings,
            backend_addr,
            pid,
            secret,
            statements: HashMap::new(),
            uses: 0,
            named: 0,
        }
    }

    /// The backend's name for `def`, if it has it (then it counts as used now).
    pub fn statement(&mut self, def: &Def) -> Option<String> {
        self.uses += 1;
        let uses = self.uses;
        self.statements.get_mut(def).map(|(name, used)| {
            *used = uses;
            name.clone()
        })
    }

    /// Names a new statement for `def`; with it, the statement it replaces when the backend
    /// holds as many as it may (the least recently used), to be closed there.
    pub fn add_statement(&mut self, def: Def) -> (String, Option<String>) {
        let evicted = if self.statements.len() >= STATEMENTS_PER_BACKEND {
            let oldest = self
                .statements
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d.clone());
            oldest
                .and_then(|d| self.statements.remove(&d))
                .map(|(n, _)| n)
        } else {
            None
        };
        self.named += 1;
        self.uses += 1;
        let name = format!("spg99_{}", self.named);
        self.statements.insert(def, (name.clone(), self.uses));
        (name, evicted)
    }

    /// Whether it can serve a client of `settings` on the lease `held`: the same parameters
    /// and the same lease.
    fn matches(&self, settings: &Settings, held: &Arc<Held>) -> bool {
        Arc::ptr_eq(&self.held, held) && self.settings == *settings
    }

    /// Nothing to read and not closed: an idle backend that says something (its server shut
    /// down, or it was terminated) is no longer fit.
    fn quiet(&self) -> bool {
        let mut b = [0u8; 1];
        !self.held.is_closed()
            && self.frames.is_empty()
            && matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// What a client waiting for a backend is handed.
enum Grant {
    /// An idle backend.
    Conn(Conn),
    /// Room to open one.
    Open,
}

/// What a client gets from [`Pool::take`].
pub enum Taken {
    Conn(Conn),
    /// Room to open a backend: open it, then [`Pool::opened`] or, if that failed,
    /// [`Pool::lost`].
    Open,
}

#[derive(Default)]
struct State {
    size: usize,
    /// The lease the size was taken from (its address).
    sized_by: usize,
    /// Backends open (idle, busy, or being opened).
    open: usize,
    idle: Vec<Conn>,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    /// What a backend of these startup parameters said at its login (its ParameterStatus
    /// messages), for the clients that connect with them.
    greetings: HashMap<Settings, Arc<Vec<u8>>>,
    clients: usize,
    gauges: Option<Gauges>,
}

/// The pool's gauges, once its database's id is known.
struct Gauges {
    clients: Gauge<i64, AtomicI64>,
    waiting: Gauge<i64, AtomicI64>,
    idle: Gauge<i64, AtomicI64>,
    in_use: Gauge<i64, AtomicI64>,
}

pub struct Pool {
    state: Mutex<State>,
}

/// A client connected to a pool; the pool counts it until it is dropped.
pub struct Member {
    pool: Arc<Pool>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut st = crate::lock(&self.pool.state);
        st.clients -= 1;
        if st.clients == 0 {
            let closed = st.idle.len();
            st.idle.clear();
            st.open -= closed;
        }
        report(&st);
    }
}

/// The pool timed out: every backend stayed busy.
pub struct Busy {
    pub size: usize,
}

impl Pool {
    /// Counts a client in.
    pub fn join(self: &Arc<Self>) -> Member {
        let mut st = crate::lock(&self.state);
        st.clients += 1;
        report(&st);
        Member { pool: self.clone() }
    }

    pub fn greeting(&self, settings: &Settings) -> Option<Arc<Vec<u8>>> {
        crate::lock(&self.state).greetings.get(settings).cloned()
    }

    /// A backend for a client of `settings` on the lease `held`: an idle one that fits, or room
    /// to open one, waiting up to `timeout` behind the clients that came first.
    pub async fn take(
        &self,
        settings: &Settings,
        held: &Arc<Held>,
        timeout: Duration,
    ) -> Result<Taken, Busy> {
        let rx = {
            let mut st = crate::lock(&self.state);
            if st.sized_by != Arc::as_ptr(held) as usize {
                st.sized_by = Arc::as_ptr(held) as usize;
                let (db_id, profile) = held.db();
                st.gauges
                    .get_or_insert_with(|| Gauges::new(&db_id.to_string()));
                st.size = spg99_wire::profiles::profile(&profile)
                    .unwrap_or(&spg99_wire::profiles::PROFILES[0])
                    .pool_size() as usize;
            }
            // The most recently used backend that fits; one found closed or talking (its server
            // shut down, say) is dropped on the way.
            let mut taken = None;
            while let Some(i) = st.idle.iter().rposition(|c| c.matches(settings, held)) {
                let c = st.idle.swap_remove(i);
                if c.quiet() {
                    taken = Some(Taken::Conn(c));
                    break;
                }
                st.open -= 1;
            }
            if taken.is_none() {
                if st.open < st.size {
                    st.open += 1;
                    taken = Some(Taken::Open);
                } else if !st.idle.is_empty() {
                    // Another client's parameters, or a retired writer's: closed, its room taken.
                    st.idle.remove(0);
                    taken = Some(Taken::Open);
                }
            }
            if let Some(t) = taken {
                report(&st);
                return Ok(t);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            crate::metrics::get().pool_waits.inc();
            report(&st);
            rx
        };
        let mut rx = rx;
        let granted = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(granted) => granted.ok(),
            Err(_) => {
                // What was handed over as the time ran out is taken all the same.
                rx.close();
                rx.try_recv().ok()
            }
        };
        let mut st = crate::lock(&self.state);
        st.waiters.retain(|w| !w.is_closed());
        report(&st);
        let size = st.size;
        drop(st);
        match granted {
            Some(Grant::Conn(c)) if c.matches(settings, held) && c.quiet() => Ok(Taken::Conn(c)),
            // Not this client's kind: closed, its room taken.
            Some(Grant::Conn(_) | Grant::Open) => Ok(Taken::Open),
            None => Err(Busy { size }),
        }
    }

    /// A backend opened in the room [`Pool::take`] gave, with what it said at its login.
    pub fn opened(&self, settings: &Settings, greeting: Vec<u8>) {
        let mut st = crate::lock(&self.state);
        st.greetings
            .entry(settings.clone())
            .or_insert_with(|| Arc::new(greeting));
    }

    /// Gives a backend back: to the first waiting client, else to the idle ones.
    pub fn give_back(&self, mut conn: Conn) {
        let mut st = crate::lock(&self.state);
        while let Some(w) = st.waiters.pop_front() {
            match w.send(Grant::Conn(conn)) {
                Ok(()) => {
                    report(&st);
                    return;
                }
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Open) => unreachable!("sent a backend"),
            }
        }
        if st.clients == 0 {
            st.open -= 1;
        } else {
            st.idle.push(conn);
        }
        report(&st);
    }

    /// A backend closed, or one that could not be opened: its room goes to the first waiting
    /// client.
    pub fn lost(&self) {
        let mut st = crate::lock(&self.state);
        while let Some(w) = st.waiters.pop_front() {
            if w.send(Grant::Open).is_ok() {
                report(&st);
                return;
            }
        }
        st.open -= 1;
        report(&st);
    }
}

impl Gauges {
    fn new(db_id: &str) -> Gauges {
        let m = crate::metrics::get();
        let gauge = |state: &'static str| {
            m.pool
                .get_or_create(&crate::metrics::PoolLabel {
                    db_id: db_id.to_owned(),
                    state,
                })
                .clone()
        };
        Gauges {
            clients: gauge("clients"),
            waiting: gauge("waiting"),
            idle: gauge("backends_idle"),
            in_use: gauge("backends_in_use"),
        }
    }
}

/// The pool's gauges.
fn report(st: &State) {
    let Some(g) = &st.gauges else { return };
    g.clients.set(st.clients as i64);
    g.waiting.set(st.waiters.len() as i64);
    g.idle.set(st.idle.len() as i64);
    g.in_use.set((st.open - st.idle.len()) as i64);
}

/// Every database's pool on this Gateway.
pub struct Pools {
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
    /// How long a client waits for a backend at most.
    pub timeout: Duration,
    /// How long a client may hold a backend inside a transaction without a word.
    pub idle_in_transaction: Duration,
}

impl Pools {
    pub fn new(timeout: Duration, idle_in_transaction: Duration) -> Pools {
        Pools {
            pools: Mutex::new(HashMap::new()),
            timeout,
            idle_in_transaction,
        }
    }

    /// The pool of `user`'s database `db`.
    pub fn get(&self, user: &str, db: &str) -> Arc<Pool> {
        crate::lock(&self.pools)
            .entry((user.to_owned(), db.to_owned()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    state: Mutex::new(State::default()),
                })
            })
            .clone()
    }
}

/// A backend of `pool` for `who`, on the lease `held`: an idle one, or one opened (logged in
/// through `ticket`, which it takes or refreshes as [`crate::backend::login`] does), waiting
/// up to the pool timeout; `Err(Busy)` inside when every one stayed busy that long.
pub(crate) async fn checkout(
    gw: &Gateway,
    who: &Login,
    pool: &Pool,
    settings: &Settings,
    held: &Arc<Held>,
    ticket: &mut Option<Ticket>,
) -> Result<Result<Conn, Busy>, End> {
    match pool.take(settings, held, gw.pools.timeout).await {
        Err(busy) => Ok(Err(busy)),
        Ok(Taken::Conn(c)) => Ok(Ok(c)),
        Ok(Taken::Open) => match crate::backend::login(gw, who, settings, ticket).await {
            Ok((stream, ready, backend_addr)) => {
                if ready.status != *b"I" {
                    pool.lost();
                    return Err(error("08006", "a new backend is not idle"));
                }
                pool.opened(settings, ready.said.0);
                let held = ticket
                    .as_ref()
                    .expect("a login holds a ticket")
                    .held
                    .clone();
                Ok(Ok(Conn::new(
                    stream,
                    held,
                    settings.clone(),
                    backend_addr,
                    ready.pid,
                    ready.secret,
                )))
            }
            Err(e) => {
                pool.lost();
                Err(e)
            }
        },
    }
}
