//! The pooled relay: a client holds a backend from the first message of a transaction to its
//! end (a ReadyForQuery that says idle, with nothing more of the client's in flight), then the
//! backend goes back to its database's pool ([`crate::pool`]).
//!
//! The relay reads both sides message by message and knows, for every message it passed to the
//! backend, which answer ends it, so that it can:
//! - keep each client's named prepared statements its own: a Parse is prepared on the backend
//!   under a name of the pooler's (`spg99_N`, shared by every client that prepares the same
//!   text and types on that backend), Bind and Describe are rewritten to it, and a statement
//!   the serving backend lacks (prepared in an earlier transaction, on another one) is prepared
//!   there first, its ParseComplete kept from the client. Close and `DEALLOCATE` forget the
//!   client's name (the backend keeps the statement for the next client, up to
//!   [`crate::pool::STATEMENTS_PER_BACKEND`]). A client's own name taken twice is `42P05`, as
//!   PostgreSQL says it; an unknown one reaches the backend, which says `26000`.
//! - answer in order what it answered itself (a ParseComplete for a statement the backend had,
//!   a CloseComplete), and drop those answers after an error, up to the Sync, as PostgreSQL
//!   skips the messages;
//! - keep on its backend for the rest of its session a client whose SQL leaves state in the
//!   session ([`crate::sql::session_state`]), or whose backend reported a setting changed;
//! - give a backend back clean: a client gone inside a transaction has it rolled back first
//!   (or, with an answer still on its way, the backend is closed, which rolls it back).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::backend;
use crate::cancel::{Registration, Target};
use crate::leases::Ticket;
use crate::pgwire::{Frames, Message, Out};
use crate::pool::{Busy, Conn, Def, Member, Pool, Settings};
use crate::session::{error, End, Gateway, Login, Stream};
use crate::sql;

/// The longest message a pooled client may send (PostgreSQL's own bound is 1 GB).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 20;
/// The longest message read from a backend.
const MAX_BACKEND_MESSAGE: usize = 1 << 30;
/// What a client hears of a transaction that was on a backend now lost.
const LOST: &str = "the connection to the database's server was lost (the database moved or restarted) inside this transaction: it was rolled back unless its COMMIT had reached the server; retry it";

/// Named statements one client may hold at most.
pub const STATEMENTS_PER_CLIENT: usize = 10_000;

/// What a message passed to the backend is, by the answer that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or a FunctionCall: everything up to its ReadyForQuery.
    Query,
}

impl Kind {
    fn ended_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => matches!(tag, b'1' | b'E'),
            Kind::Bind => matches!(tag, b'2' | b'E'),
            Kind::Describe => matches!(tag, b'T' | b'n' | b'E'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's' | b'E'),
            Kind::Close => matches!(tag, b'3' | b'E'),
            Kind::Sync | Kind::Query => tag == b'Z',
        }
    }
}

/// What the relay does to reverse a change of its books when PostgreSQL skipped the message
/// that made it (an earlier error).
#[derive(Debug, Clone)]
enum Undo {
    /// The backend did not prepare it.
    Backend(Def),
    /// The client's name was not made.
    Client(String),
    /// The client's name was not closed.
    Restore(String, Def),
}

/// An answer awaited, in order.
#[derive(Debug)]
enum Expect {
    /// The backend's, for the client (`swallow`: for the pooler itself, but for an error).
    Backend {
        kind: Kind,
        swallow: bool,
        undo: Vec<Undo>,
        /// A simple query that ends the transaction (COMMIT, ROLLBACK).
        ends: Option<sql::TransactionEnd>,
    },
    /// The pooler's own answer (`ready`: followed by a ReadyForQuery).
    Own {
        bytes: Vec<u8>,
        ready: bool,
        undo: Vec<Undo>,
    },
}

struct Relay<'a, S: Stream> {
    gw: &'a Gateway,
    who: &'a Login,
    pool: Arc<Pool>,
    settings: Settings,
    ticket: Option<Ticket>,
    registration: Registration<'a>,
    /// The client's named statements.
    statements: HashMap<String, Def>,
    conn: Option<Conn>,
    expect: VecDeque<Expect>,
    /// Messages are skipped up to the next Sync (an error in the extended protocol).
    skipping: bool,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// Why the client keeps its backend to the end of its session.
    pinned: Option<&'static str>,
    /// The backend was lost inside the client's transaction: until the client ends it, every
    /// request fails (a COMMIT too: nothing of it was kept), as in an aborted transaction.
    lost: bool,
    to_client: Out,
    to_backend: Out,
    client_in: ReadHalf<&'a mut S>,
    client_out: WriteHalf<&'a mut S>,
    frames: Frames,
}

/// Serves a client of the pooler to its end.
pub(crate) async fn serve<S: Stream>(gw: &Gateway, client: &mut S, who: Login) -> Result<(), End> {
    let pool = gw.pools.get(&who.user, &who.database);
    let member: Member = pool.join();
    let mut settings = who.forwarded.clone();
    settings.sort();
    let settings: Settings = Arc::new(settings);
    let (client_in, client_out) = tokio::io::split(client);
    let mut relay = Relay {
        gw,
        who: &who,
        pool,
        settings,
        ticket: None,
        registration: gw.cancels.register(None),
        statements: HashMap::new(),
        conn: None,
        expect: VecDeque::new(),
        skipping: false,
        status: b'I',
        pinned: None,
        lost: false,
        to_client: Out::default(),
        to_backend: Out::default(),
        client_in,
        client_out,
        frames: Frames::default(),
    };
    let ended = relay.greet().await;
    let ended = match ended {
        Ok(()) => relay.run().await,
        Err(e) => Err(e),
    };
    relay.end().await;
    drop(relay);
    drop(member);
    ended.and(Err(End::Quiet))
}

impl<'a, S: Stream> Relay<'a, S> {
    /// What the client hears after authenticating: its backends' parameters (from the first
    /// backend of its kind: the database starts now if it is stopped), its cancel key, and
    /// ReadyForQuery.
    async fn greet(&mut self) -> Result<(), End> {
        let greeting = match self.pool.greeting(&self.settings) {
            Some(g) => g,
            None => {
                if let Err(busy) = self.take().await? {
                    return Err(error("53300", self.busy(&busy)));
                }
                self.give_back().await;
                self.pool.greeting(&self.settings).unwrap_or_default()
            }
        };
        self.route().await?;
        let mut out = Out(greeting.as_ref().clone());
        out.backend_key(self.registration.pid, self.registration.secret)
            .put(b'Z', b"I");
        out.send(&mut self.client_out).await?;
        Ok(())
    }

    /// The database's lease for this client (counted in its active connections), taken again
    /// after its writer was retired.
    async fn route(&mut self) -> Result<(), End> {
        if self.ticket.as_ref().is_some_and(|t| *t.closed.borrow()) {
            self.ticket = None;
        }
        if self.ticket.is_none() {
            let deadline = std::time::Instant::now() + self.gw.leases.connect_timeout();
            let t = self
                .gw
                .leases
                .acquire(&self.who.user, &self.who.database, deadline)
                .await
                .map_err(|e| backend::no_route(self.gw, self.who, e))?;
            self.ticket = Some(t);
        }
        Ok(())
    }

    /// A backend from the pool (opened if there is room), by the pool timeout; `Err(Busy)`
    /// inside when every one stayed busy that long.
    async fn take(&mut self) -> Result<Result<(), Busy>, End> {
        self.route().await?;
        let held = self.ticket.as_ref().unwrap().held.clone();
        let conn = match crate::pool::checkout(
            self.gw,
            self.who,
            &self.pool,
            &self.settings,
            &held,
            &mut self.ticket,
        )
        .await?
        {
            Ok(c) => c,
            Err(busy) => return Ok(Err(busy)),
        };
        self.registration
            .set(Some(Target {
                backend_addr: conn.backend_addr.clone(),
                pid: conn.pid,
                secret: conn.secret,
            }))
            .await;
        self.conn = Some(conn);
        Ok(Ok(()))
    }

    /// What a client hears when every backend of its pool stayed busy for the pool timeout.
    fn busy(&self, busy: &Busy) -> String {
        format!(
            "every one of the {} pooled connections to database \"{}\" stayed busy for {} s (the pool timeout); retry, or hold transactions for less time",
            busy.size,
            self.who.database,
            self.gw.pools.timeout.as_secs()
        )
    }

    /// The backend goes back to the pool (no cancel of this client's reaches it from now).
    async fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.registration.set(None).await;
            self.pool.give_back(conn);
        }
    }

    /// The backend is closed (PostgreSQL rolls back what it had open).
    async fn drop_backend(&mut self) {
        if self.conn.take().is_some() {
            self.registration.set(None).await;
            self.pool.lost();
        }
    }

    async fn run(&mut self) -> Result<(), End> {
        loop {
            let in_transaction = self.expect.is_empty() && matches!(self.status, b'T' | b'E');
            let idle_limit = self.gw.pools.idle_in_transaction;
            let event = match self.conn.as_mut() {
                None => {
                    // An idle client follows its database to a new writer at once, so that
                    // the new lease counts it (describe's active_connections).
                    let retired = async {
                        match self.ticket.as_mut() {
                            Some(t) => {
                                let _ = t.closed.wait_for(|c| *c).await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        n = self.frames.fill(&mut self.client_in) => Event::Client(n),
                        _ = retired => Event::Retired,
                    }
                }
                Some(conn) => {
                    let idle_in_transaction = async {
                        match in_transaction {
                            true => tokio::time::sleep(idle_limit).await,
                            false => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        n = self.frames.fill(&mut self.client_in) => Event::Client(n),
                        n = conn.frames.fill(&mut conn.stream) => Event::Backend(n),
                        _ = conn.closed.wait_for(|c| *c) => Event::Backend(Ok(0)),
                        _ = idle_in_transaction => Event::IdleInTransaction,
                    }
                }
            };
            match event {
                Event::Client(Ok(0) | Err(_)) => return Ok(()),
                Event::Client(Ok(_)) => {
                    while let Some(m) = self
                        .frames
                        .next(MAX_CLIENT_MESSAGE)
                        .map_err(|_| error("08P01", "a message longer than the pooler takes"))?
                    {
                        if !self.client_said(m).await? {
                            return Ok(());
                        }
                    }
                }
                Event::Backend(Ok(0) | Err(_)) => self.backend_lost().await?,
                Event::Backend(Ok(_)) => {
                    // Handled where they were read, without a copy of each.
                    let mut frames = std::mem::take(&mut self.conn.as_mut().unwrap().frames);
                    let read = loop {
                        match frames.next_raw(MAX_BACKEND_MESSAGE) {
                            Ok(Some(raw)) => self.backend_said(raw),
                            Ok(None) => break true,
                            Err(_) => break false,
                        }
                    };
                    frames.consume();
                    self.conn.as_mut().unwrap().frames = frames;
                    if !read {
                        self.backend_lost().await?;
                    }
                }
                Event::Retired => self.route().await?,
                Event::IdleInTransaction => {
                    return Err(error(
                        "25P03",
                        format!(
                            "terminating connection due to idle-in-transaction timeout: the pooled port lets a transaction wait {} s at most for its client",
                            idle_limit.as_secs()
                        ),
                    ));
                }
            }
            if let Some(conn) = self.conn.as_mut() {
                if !self.to_backend.0.is_empty() {
                    let sent = conn.stream.write_all(&self.to_backend.0).await;
                    self.to_backend.0.clear();
                    if sent.is_err() {
                        self.backend_lost().await?;
                    }
                }
            }
            if !self.to_client.0.is_empty() {
                self.to_client.send(&mut self.client_out).await?;
            }
            let done = self.conn.as_ref().is_some_and(|c| c.frames.is_empty())
                && self.expect.is_empty()
                && self.status == b'I'
                && !self.skipping
                && self.pinned.is_none();
            if done {
                self.give_back().await;
            }
        }
    }

    /// One message of the client's; `false` when it said goodbye.
    async fn client_said(&mut self, m: Message) -> Result<bool, End> {
        match m.tag {
            b'X' => return Ok(false),
            b'P' | b'B' | b'D' | b'C' | b'E' | b'S' | b'H' | b'd' | b'c' | b'f' | b'Q' | b'F' => {}
            other => {
                return Err(error(
                    "08P01",
                    format!("invalid frontend message type {}", other as char),
                ))
            }
        }
        if self.skipping && m.tag != b'S' {
            // PostgreSQL skips these too.
            return Ok(true);
        }
        if self.skipping && self.conn.is_none() {
            // A Sync after a backend was lost: answered here.
            self.skipping = false;
            self.to_client.put(b'Z', &[self.status]);
            return Ok(true);
        }
        if self.lost {
            // The transaction this message belongs to is gone with its backend.
            let text = match m.tag {
                b'Q' => query_text(&m.body),
                b'P' => cstr(&m.body).and_then(|(_, def)| query_text(def)),
                _ => None,
            };
            let end = text.and_then(|t| sql::transaction_end(&sql::read(t)));
            if end == Some(sql::TransactionEnd::Rollback) {
                // What it asks is done: answered by a backend with no transaction.
                self.lost = false;
                self.status = b'I';
            } else {
                if end == Some(sql::TransactionEnd::Commit) {
                    self.lost = false;
                    self.status = b'I';
                }
                self.to_client.error_of("ERROR", "08006", LOST);
                if matches!(m.tag, b'Q' | b'F' | b'S') {
                    self.to_client.put(b'Z', &[self.status]);
                } else {
                    self.skipping = true;
                }
                return Ok(true);
            }
        }
        if self.conn.is_none() {
            if let Err(busy) = self.take().await? {
                // The request fails; the client goes on, as after any error.
                self.to_client.error_of("ERROR", "53300", &self.busy(&busy));
                if matches!(m.tag, b'Q' | b'F' | b'S') {
                    self.to_client.put(b'Z', b"I");
                } else {
                    self.skipping = true;
                }
                return Ok(true);
            }
        }
        match m.tag {
            b'P' => self.parse(m),
            b'B' => self.bind(m),
            b'D' => self.describe(m),
            b'C' => self.close(m),
            b'E' => self.forward(&m, Kind::Execute),
            b'S' => {
                self.skipping = false;
                self.forward(&m, Kind::Sync);
            }
            b'H' | b'd' | b'c' | b'f' => {
                self.to_backend.raw(&m);
            }
            b'Q' => self.query(m),
            // A FunctionCall: answered up to its ReadyForQuery.
            _ => self.forward(&m, Kind::Query),
        }
        Ok(true)
    }

    fn forward(&mut self, m: &Message, kind: Kind) {
        self.to_backend.raw(m);
        self.awaits(kind, false, Vec::new());
    }

    fn awaits(&mut self, kind: Kind, swallow: bool, undo: Vec<Undo>) {
        self.awaits_end(kind, swallow, undo, None);
    }

    fn awaits_end(
        &mut self,
        kind: Kind,
        swallow: bool,
        undo: Vec<Undo>,
        ends: Option<sql::TransactionEnd>,
    ) {
        self.expect.push_back(Expect::Backend {
            kind,
            swallow,
            undo,
            ends,
        });
    }

    /// An answer of the pooler's own, in its turn.
    fn own(&mut self, bytes: Vec<u8>, ready: bool, undo: Vec<Undo>) {
        self.expect.push_back(Expect::Own { bytes, ready, undo });
        self.answer_own();
    }

    /// The pooler's own answers now due.
    fn answer_own(&mut self) {
        while let Some(Expect::Own { .. }) = self.expect.front() {
            let Some(Expect::Own { bytes, ready, .. }) = self.expect.pop_front() else {
                unreachable!()
            };
            self.to_client.0.extend_from_slice(&bytes);
            if ready {
                self.to_client.put(b'Z', &[self.status]);
            }
        }
    }

    /// An error of the pooler's own for the client's message: then, as PostgreSQL does, the
    /// client's messages are skipped up to its Sync.
    fn refuse(&mut self, code: &str, message: &str) {
        let mut e = Out::default();
        e.error_of("ERROR", code, message);
        self.skipping = true;
        self.own(e.0, false, Vec::new());
    }

    fn pin(&mut self, why: &'static str) {
        if self.pinned.is_none() {
            self.pinned = Some(why);
            crate::metrics::get().pinned.inc();
            tracing::debug!(db = %self.who.database, why, "a pooled client keeps its backend to the end of its session");
        }
    }

    /// The backend's name for `def`, prepared there first if it lacks it (its answer kept
    /// from the client).
    fn ensure(&mut self, def: &Def) -> String {
        let conn = self.conn.as_mut().unwrap();
        if let Some(name) = conn.statement(def) {
            return name;
        }
        let (name, evicted) = conn.add_statement(def.clone());
        self.prepare_on_backend(&name, def, evicted);
        self.awaits(Kind::Parse, true, vec![Undo::Backend(def.clone())]);
        name
    }

    fn prepare_on_backend(&mut self, name: &str, def: &Def, evicted: Option<String>) {
        if let Some(old) = evicted {
            let mut body = vec![b'S'];
            body.extend_from_slice(old.as_bytes());
            body.push(0);
            self.to_backend.put(b'C', &body);
            self.awaits(Kind::Close, true, Vec::new());
        }
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(def);
        self.to_backend.put(b'P', &body);
        crate::metrics::get().statements_prepared.inc();
    }

    fn parse(&mut self, m: Message) {
        let Some((name, def)) = cstr(&m.body) else {
            return self.forward(&m, Kind::Parse);
        };
        if let Some(why) = query_text(def).and_then(|t| sql::session_state(&sql::read(t))) {
            self.pin(why);
        }
        if name.is_empty() {
            return self.forward(&m, Kind::Parse);
        }
        if self.statements.contains_key(&name) {
            return self.refuse(
                "42P05",
                &format!("prepared statement \"{name}\" already exists"),
            );
        }
        if self.statements.len() >= STATEMENTS_PER_CLIENT {
            return self.refuse(
                "53400",
                &format!("a pooled client may hold {STATEMENTS_PER_CLIENT} prepared statements at most; close some"),
            );
        }
        let def: Def = Arc::from(def);
        self.statements.insert(name.clone(), def.clone());
        let conn = self.conn.as_mut().unwrap();
        if conn.statement(&def).is_some() {
            let mut done = Out::default();
            done.put(b'1', &[]);
            return self.own(done.0, false, vec![Undo::Client(name)]);
        }
        let (server, evicted) = conn.add_statement(def.clone());
        self.prepare_on_backend(&server, &def, evicted);
        self.awaits(
            Kind::Parse,
            false,
            vec![Undo::Backend(def), Undo::Client(name)],
        );
    }

    fn bind(&mut self, m: Message) {
        let named = cstr(&m.body).and_then(|(portal, rest)| {
            let (stmt, rest) = cstr(rest)?;
            Some((portal, stmt, rest))
        });
        match named {
            Some((portal, stmt, rest)) if self.statements.contains_key(&stmt) => {
                let def = self.statements[&stmt].clone();
                let server = self.ensure(&def);
                let mut body = portal.into_bytes();
                body.push(0);
                body.extend_from_slice(server.as_bytes());
                body.push(0);
                body.extend_from_slice(rest);
                self.to_backend.put(b'B', &body);
                self.awaits(Kind::Bind, false, Vec::new());
            }
            _ => self.forward(&m, Kind::Bind),
        }
    }

    fn describe(&mut self, m: Message) {
        match statement_named(&m.body) {
            Some(name) if self.statements.contains_key(&name) => {
                let def = self.statements[&name].clone();
                let server = self.ensure(&def);
                let mut body = vec![b'S'];
                body.extend_from_slice(server.as_bytes());
                body.push(0);
                self.to_backend.put(b'D', &body);
                self.awaits(Kind::Describe, false, Vec::new());
            }
            _ => self.forward(&m, Kind::Describe),
        }
    }

    fn close(&mut self, m: Message) {
        match statement_named(&m.body) {
            Some(name) if !name.is_empty() => {
                // Closing a statement that does not exist is no error in PostgreSQL either.
                let undo = match self.statements.remove(&name) {
                    Some(def) => vec![Undo::Restore(name, def)],
                    None => Vec::new(),
                };
                let mut done = Out::default();
                done.put(b'3', &[]);
                self.own(done.0, false, undo);
            }
            _ => self.forward(&m, Kind::Close),
        }
    }

    fn query(&mut self, m: Message) {
        let text = sql::read(query_text(&m.body).unwrap_or(""));
        if self.status != b'E' {
            if let Some(d) = sql::deallocate(&text) {
                let (tag, undo) = match d {
                    sql::Deallocate::All => {
                        let all = std::mem::take(&mut self.statements);
                        let undo = all.into_iter().map(|(n, d)| Undo::Restore(n, d)).collect();
                        ("DEALLOCATE ALL", undo)
                    }
                    sql::Deallocate::Name(name) => match self.statements.remove(&name) {
                        Some(def) => ("DEALLOCATE", vec![Undo::Restore(name, def)]),
                        // Not the client's protocol-level statement: PostgreSQL's to answer.
                        None => return self.forward(&m, Kind::Query),
                    },
                };
                let mut done = Out::default();
                let mut body = tag.as_bytes().to_vec();
                body.push(0);
                done.put(b'C', &body);
                return self.own(done.0, true, undo);
            }
        }
        if let Some(why) = sql::session_state(&text) {
            self.pin(why);
        }
        if sql::discards_all(&text) {
            // Every statement of the session goes, the backend's and the client's.
            self.statements.clear();
            if let Some(conn) = self.conn.as_mut() {
                conn.statements.clear();
            }
        }
        self.to_backend.raw(&m);
        let ends = sql::transaction_end(&text);
        self.awaits_end(Kind::Query, false, Vec::new(), ends);
    }

    /// One message of the backend's: `raw`, its tag, length and body.
    fn backend_said(&mut self, raw: &[u8]) {
        let (tag, body) = (raw[0], &raw[5..]);
        match tag {
            b'S' => {
                self.to_client.0.extend_from_slice(raw);
                self.pin("a setting reported changed");
                return;
            }
            b'N' | b'A' => {
                self.to_client.0.extend_from_slice(raw);
                return;
            }
            _ => {}
        }
        let Some(Expect::Backend { kind, swallow, .. }) = self.expect.front() else {
            if tag != b'E' {
                // Nothing awaited (COPY data, say): the client's.
                self.to_client.0.extend_from_slice(raw);
            }
            return;
        };
        let (kind, swallow) = (*kind, *swallow);
        if tag == b'E' {
            // A backend's FATAL (its server shutting down, say) ends the backend, not the
            // pooled client's connection: the client hears an ERROR (or, between its requests,
            // its next request hears that its transaction is gone).
            self.to_client.put(b'E', &to_error(body));
        } else if !swallow {
            self.to_client.0.extend_from_slice(raw);
        }
        if tag == b'Z' {
            self.status = body.first().copied().unwrap_or(b'I');
        }
        if !kind.ended_by(tag) {
            return;
        }
        let done = self.expect.pop_front();
        if tag == b'E' && !matches!(kind, Kind::Query | Kind::Sync) {
            // PostgreSQL skips every message up to the Sync: nothing comes for them.
            self.undo(done);
            loop {
                match self.expect.front() {
                    Some(Expect::Backend {
                        kind: Kind::Sync, ..
                    }) => break,
                    Some(_) => {
                        let skipped = self.expect.pop_front();
                        self.undo(skipped);
                    }
                    None => {
                        self.skipping = true;
                        break;
                    }
                }
            }
        }
        self.answer_own();
    }

    fn undo(&mut self, e: Option<Expect>) {
        let undo = match e {
            Some(Expect::Backend { undo, .. } | Expect::Own { undo, .. }) => undo,
            None => return,
        };
        for u in undo {
            match u {
                Undo::Backend(def) => {
                    if let Some(conn) = self.conn.as_mut() {
                        conn.statements.remove(&def);
                    }
                }
                Undo::Client(name) => {
                    self.statements.remove(&name);
                }
                Undo::Restore(name, def) => {
                    self.statements.insert(name, def);
                }
            }
        }
    }

    /// The backend is gone (its server stopped, its writer retired). A client whose session
    /// state was on it cannot go on; any other hears that its transaction is lost and goes on
    /// with its next one, on a backend of the database's new writer.
    async fn backend_lost(&mut self) -> Result<(), End> {
        self.drop_backend().await;
        self.to_backend.0.clear();
        if let Some(why) = self.pinned {
            return Err(error(
                "08006",
                format!("the connection to the database's server was lost, and this pooled session's state ({why}) with it"),
            ));
        }
        // Every request in flight (up to a Sync, or a Query) hears that it failed, and gets its
        // ReadyForQuery; messages after the last Sync are skipped up to the client's. A client
        // that was inside a transaction stays in it, failed, until it ends it: its COMMIT must
        // not reach a backend that knows nothing of the transaction (which would answer it
        // with success).
        let mut in_transaction = self.status != b'I';
        let mut open = false;
        while let Some(e) = self.expect.pop_front() {
            match &e {
                Expect::Backend {
                    kind: Kind::Sync | Kind::Query,
                    ends,
                    ..
                } => {
                    if ends.is_some() {
                        in_transaction = false;
                    }
                    self.to_client.error_of("ERROR", "08006", LOST);
                    self.to_client
                        .put(b'Z', if in_transaction { b"E" } else { b"I" });
                    open = false;
                }
                _ => open = true,
            }
            self.undo(Some(e));
        }
        if open && !self.skipping {
            self.to_client.error_of("ERROR", "08006", LOST);
            self.skipping = true;
        }
        self.lost = in_transaction;
        self.status = if in_transaction { b'E' } else { b'I' };
        Ok(())
    }

    /// The client is gone: its backend goes back rolled back, or closed.
    async fn end(&mut self) {
        let clean = match self.conn.as_ref() {
            None => return,
            Some(c) => self.expect.is_empty() && c.frames.is_empty() && self.pinned.is_none(),
        };
        if !clean {
            // A query still running would run on to its end (PostgreSQL notices its client
            // gone only when it writes): cancelled, then the connection closed.
            if let Some(c) = self.conn.as_ref().filter(|_| !self.expect.is_empty()) {
                crate::cancel::send(&Target {
                    backend_addr: c.backend_addr.clone(),
                    pid: c.pid,
                    secret: c.secret,
                })
                .await;
            }
            return self.drop_backend().await;
        }
        if self.status != b'I' {
            let conn = self.conn.as_mut().unwrap();
            let rolled = tokio::time::timeout(Duration::from_secs(5), rollback(conn)).await;
            if !matches!(rolled, Ok(Ok(true))) {
                return self.drop_backend().await;
            }
        }
        self.give_back().await;
    }
}

/// Rolls back what `conn` has open; whether it is idle after.
async fn rollback(conn: &mut Conn) -> std::io::Result<bool> {
    let mut out = Out::default();
    out.put(b'Q', b"ROLLBACK\0");
    out.send(&mut conn.stream).await?;
    loop {
        while let Some(m) = conn.frames.next(MAX_BACKEND_MESSAGE)? {
            if m.tag == b'Z' {
                return Ok(m.body.first() == Some(&b'I'));
            }
        }
        if conn.frames.fill(&mut conn.stream).await? == 0 {
            return Ok(false);
        }
    }
}

enum Event {
    Client(std::io::Result<usize>),
    /// The client holds no backend and its lease's writer was retired.
    Retired,
    Backend(std::io::Result<usize>),
    IdleInTransaction,
}

/// An ErrorResponse's body with its severity FATAL or PANIC made ERROR.
fn to_error(error: &[u8]) -> Vec<u8> {
    let fatal = |v: &[u8]| v == b"FATAL" || v == b"PANIC";
    let mut body = Vec::with_capacity(error.len());
    for field in error.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        match field.split_first() {
            Some((code @ (b'S' | b'V'), value)) if fatal(value) => {
                body.push(*code);
                body.extend_from_slice(b"ERROR");
            }
            _ => body.extend_from_slice(field),
        }
        body.push(0);
    }
    body.push(0);
    body
}

/// A NUL-terminated string at the start of `b`, and what follows it.
/// The statement a Describe's or Close's body names (`S` and its name), if it names one (not a
/// portal).
fn statement_named(body: &[u8]) -> Option<String> {
    match body.split_first() {
        Some((b'S', rest)) => cstr(rest).map(|(n, _)| n),
        _ => None,
    }
}

fn cstr(b: &[u8]) -> Option<(String, &[u8])> {
    let nul = b.iter().position(|c| *c == 0)?;
    let s = std::str::from_utf8(&b[..nul]).ok()?.to_owned();
    Some((s, &b[nul + 1..]))
}

/// The SQL text at the start of a Parse's definition or a Query's body.
fn query_text(b: &[u8]) -> Option<&str> {
    let nul = b.iter().position(|c| *c == 0)?;
    std::str::from_utf8(&b[..nul]).ok()
}
