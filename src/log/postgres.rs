//! The command log on PostgreSQL: the same frames as on sled, one row each.
//!
//! ## What do we store?
//! ```text
//! spg99_log_schema (version, log_id)                       -- 2, and a random id
//! spg99_log_head   (seq, generation)                       -- one row
//! spg99_log_lease  (holder, address, generation, expires_at) -- one row: who leads
//! spg99_log        (first_seq PK, batch, frame)            -- a frame per row, as on sled
//! ```
//! `seq` is ours and gapless: the head row says where the log ends, and an append moves it in
//! the same statement that inserts the frames (`APPEND`). No sequence or serial is used:
//! their values are neither gapless nor in commit order. The schema is made on first use
//! (version 1, without the lease, is brought to 2 in place).
//!
//! ## Who may append?
//! One process at a time: the one whose `generation` the head row holds. A replica becomes
//! the leader by taking the lease row ([`Store::lead`]: only if it has lapsed, by the
//! database's clock, so the replicas' clocks do not matter) and, in the same transaction, the
//! next generation. It renews the lease while it leads. The lease only says who should
//! lead; the fence is the generation: every append checks, in its own statement, that the
//! head is still at the seq it expects and the generation still its own, so once another
//! process has taken the next generation, the old leader's appends are refused
//! ([`LogError::Fenced`]) and nothing it sends lands — whether it knows it lost the lease or
//! not (a process paused past its lease does not).
//!
//! ## When is a write durable?
//! [`Store::put`] only queues frames; [`Store::sync`] appends everything queued in one
//! statement — one group commit, durable as PostgreSQL's `COMMIT` is (its
//! `synchronous_commit` and, with replication, its synchronous standbys decide how). The same
//! statement notifies channel `spg99_log`, delivered at commit: the followers' wake-up
//! ([`Store::wait`]); they poll as well, so a lost notification only delays them.
//!
//! ## Ambiguous commits
//! If the connection fails while an append is in flight, it may or may not have committed. The
//! writer reconnects and reads back the first frame's row: if it holds this batch's id, the
//! batch committed; if there is no row, it did not and is appended again; a row with another
//! batch's id means another writer took the log over (fenced). Never a duplicate, never a
//! lost acknowledged command.

use std::sync::Mutex;
use std::time::Duration;

use ::postgres::{Client, Config, NoTls, Statement};

use super::{split_frame, Bid, Frame, Frames, Lead, LogError, Result, Store};

/// The schema this build makes and reads (1: without the lease; brought to 2 in place).
const SCHEMA_VERSION: i32 = 2;
/// Serializes the making of the schema among processes opening the log at once.
const SCHEMA_LOCK: i64 = 0x5350_4739_395f_4c47;
/// Frames read per query.
const PAGE: i64 = 64;
/// How often an append is tried again after its connection failed.
const RECONNECTS: u32 = 3;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spg99_log_schema (version integer NOT NULL, log_id text NOT NULL);
    CREATE TABLE IF NOT EXISTS spg99_log_head (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        seq bigint NOT NULL,
        generation bigint NOT NULL
    );
    INSERT INTO spg99_log_head (seq, generation) VALUES (0, 0) ON CONFLICT DO NOTHING;
    CREATE TABLE IF NOT EXISTS spg99_log (
        first_seq bigint PRIMARY KEY,
        batch bigint NOT NULL,
        frame bytea NOT NULL
    );
    -- Frames are bincode with checksums: compressing them buys little and costs every read.
    ALTER TABLE spg99_log ALTER COLUMN frame SET STORAGE EXTERNAL;
    CREATE TABLE IF NOT EXISTS spg99_log_lease (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        holder text NOT NULL,
        address text NOT NULL,
        generation bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO spg99_log_lease (holder, address, generation, expires_at)
        VALUES ('', '', 0, '-infinity') ON CONFLICT DO NOTHING;
";

/// The channel an append notifies.
const CHANNEL: &str = "spg99_log";

/// The log in a PostgreSQL database.
pub struct PgStore {
    config: Config,
    /// The URL without its password, for errors and logs.
    target: String,
    /// The writer's state while this process may append: opened as the writer, or leading.
    writer: Mutex<Option<Writer>>,
    /// The connection that renews the lease (apart from the writer's, so that a renewal
    /// never waits behind an append).
    lease: Mutex<Option<Client>>,
    /// The connection that listens for appends, once a follower waits.
    listener: Mutex<Option<Client>>,
    /// Frames put and not yet synced, in order. Apart from the writer's connection, so that
    /// the committer puts the next batch while an append is in flight.
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Idle connections for readers.
    readers: std::sync::Arc<Mutex<Vec<Client>>>,
    /// The log's id, made with its schema: local files derived from this log (snapshots) are
    /// kept apart from those of any other.
    id: String,
}

struct Writer {
    client: Client,
    /// [`APPEND`], prepared on `client`.
    append: Statement,
    generation: i64,
    /// The durable head: what the table's head row says, as this writer last moved it.
    durable: u64,
}

/// An append, one statement (so one round trip, and atomic by itself): moves the head from
/// `$3` to `$1` if the generation is still `$2`, inserts the frames only if it did, and then
/// notifies the followers (at commit). No row returned means another writer took the log over.
const APPEND: &str = "
    WITH moved AS (
        UPDATE spg99_log_head SET seq = $1 WHERE generation = $2 AND seq = $3 RETURNING seq
    ), inserted AS (
        INSERT INTO spg99_log (first_seq, batch, frame)
        SELECT f, $4, b FROM unnest($5::bigint[], $6::bytea[]) AS t(f, b)
        WHERE EXISTS (SELECT 1 FROM moved)
    )
    SELECT pg_notify('spg99_log', seq::text) FROM moved";

/// Takes the lease if it has lapsed (or is already `$1`'s); a row when taken.
const TAKE_LEASE: &str = "
    UPDATE spg99_log_lease
    SET holder = $1, address = $2, expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE expires_at < clock_timestamp() OR holder = $1
    RETURNING 1";

/// Renews the lease of `$1`'s term `$2`; no row once another process has taken it.
const RENEW_LEASE: &str = "
    UPDATE spg99_log_lease SET expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE holder = $1 AND generation = $2
    RETURNING 1";

impl PgStore {
    /// Connects to the log at `url`, making its schema on first use. As the `writer`, takes the
    /// next generation: from then on, appends of any earlier writer are refused.
    pub fn connect(url: &str, writer: bool) -> Result<PgStore> {
        let config: Config = url
            .parse()
            .map_err(|e: ::postgres::Error| LogError::Postgres {
                target: redact(url),
                reason: e.to_string(),
            })?;
        let mut store = PgStore {
            config,
            target: redact(url),
            writer: Mutex::new(None),
            lease: Mutex::new(None),
            listener: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            readers: Default::default(),
            id: String::new(),
        };
        let mut client = store.client()?;
        store.id = store.make_schema(&mut client)?;
        if writer {
            let row = client
                .query_one(
                    "UPDATE spg99_log_head SET generation = generation + 1 RETURNING seq, generation",
                    &[],
                )
                .map_err(|e| store.failed(&e))?;
            store.become_writer(client, row.get(1), row.get(0))?;
        } else {
            store.readers.lock().unwrap().push(client);
        }
        Ok(store)
    }

    /// From now on this process appends, as `generation`, after `head`.
    fn become_writer(&self, mut client: Client, generation: i64, head: i64) -> Result<()> {
        tracing::info!(log = %self.target, generation, head, "the log is ours to append to");
        let append = client.prepare(APPEND).map_err(|e| self.failed(&e))?;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Writer {
            client,
            append,
            generation,
            durable: head as u64,
        });
        Ok(())
    }

    /// The lease's connection, made if needed.
    fn lease_client(&self) -> Result<std::sync::MutexGuard<'_, Option<Client>>> {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.as_ref().is_none_or(Client::is_closed) {
            *lease = Some(self.client()?);
        }
        Ok(lease)
    }

    /// The generation this process appends as, if it does.
    fn term(&self) -> Option<i64> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.as_ref().map(|w| w.generation)
    }

    fn client(&self) -> Result<Client> {
        let mut config = self.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config
            .application_name("spg99-log")
            .connect(NoTls)
            .map_err(|e| self.failed(&e))
    }

    fn failed(&self, e: &::postgres::Error) -> LogError {
        LogError::Postgres {
            target: self.target.clone(),
            reason: match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => e.to_string(),
            },
        }
    }

    /// Makes the schema unless it is there; the log's id.
    fn make_schema(&self, client: &mut Client) -> Result<String> {
        let mut tx = client.transaction().map_err(|e| self.failed(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(|e| self.failed(&e))?;
        tx.batch_execute(SCHEMA).map_err(|e| self.failed(&e))?;
        let found = tx
            .query_opt("SELECT version, log_id FROM spg99_log_schema", &[])
            .map_err(|e| self.failed(&e))?;
        let id = match found {
            None => {
                let id = format!("{:016x}", random_i64() as u64);
                tx.execute(
                    "INSERT INTO spg99_log_schema (version, log_id) VALUES ($1, $2)",
                    &[&SCHEMA_VERSION, &id],
                )
                .map_err(|e| self.failed(&e))?;
                id
            }
            Some(row) if row.get::<_, i32>(0) == SCHEMA_VERSION => row.get(1),
            // Version 1 lacked only the lease, which the schema above has just made.
            Some(row) if row.get::<_, i32>(0) == 1 => {
                tx.execute(
                    "UPDATE spg99_log_schema SET version = $1",
                    &[&SCHEMA_VERSION],
                )
                .map_err(|e| self.failed(&e))?;
                row.get(1)
            }
            Some(row) => {
                return Err(LogError::Postgres {
                    target: self.target.clone(),
                    reason: format!(
                        "its schema is version {}; this build reads version {SCHEMA_VERSION}",
                        row.get::<_, i32>(0)
                    ),
                })
            }
        };
        tx.commit().map_err(|e| self.failed(&e))?;
        Ok(id)
    }

    fn writer(&self) -> Result<WriterGuard<'_>> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.is_some() {
            true => Ok(WriterGuard(guard)),
            false => Err(LogError::ReadOnly),
        }
    }

    /// Appends `frames` as one batch, ending at `head`.
    fn append(
        &self,
        w: &mut Writer,
        frames: &[(u64, Vec<u8>)],
        batch: i64,
        head: u64,
    ) -> std::result::Result<(), Failure> {
        let firsts: Vec<i64> = frames.iter().map(|(f, _)| *f as i64).collect();
        let bytes: Vec<&[u8]> = frames.iter().map(|(_, f)| f.as_slice()).collect();
        let moved = w.client.query(
            &w.append,
            &[
                &(head as i64),
                &w.generation,
                &(w.durable as i64),
                &batch,
                &firsts,
                &bytes,
            ],
        )?;
        if moved.is_empty() {
            return Err(Failure::Fenced(generation(&mut w.client)?));
        }
        Ok(())
    }

    /// Appends `frames` (ending at `head`) once, whatever happens to the connection: if it
    /// fails, reconnects and reads back whether the batch landed before sending it again.
    fn append_resolving(&self, w: &mut Writer, frames: &[(u64, Vec<u8>)], head: u64) -> Result<()> {
        let (first, batch) = (frames[0].0, random_i64());
        let fenced = |w: &Writer, theirs| LogError::Fenced {
            ours: w.generation,
            theirs,
        };
        let mut tries = 0;
        loop {
            let failure = match self.append(w, frames, batch, head) {
                Ok(()) => return Ok(()),
                Err(Failure::Fenced(theirs)) => return Err(fenced(w, theirs)),
                Err(Failure::Sql(e)) if !connection_lost(&w.client, &e) || tries >= RECONNECTS => {
                    return Err(self.failed(&e))
                }
                Err(Failure::Sql(e)) => e,
            };
            // The connection failed, perhaps during the commit.
            tries += 1;
            tracing::warn!(log = %self.target, error = %self.failed(&failure), "the log's connection failed during an append; reconnecting");
            std::thread::sleep(Duration::from_millis(100 << tries));
            let mut client = match self.client() {
                Ok(c) => c,
                Err(e) if tries < RECONNECTS => {
                    tracing::warn!(error = %e, "cannot reconnect yet");
                    continue;
                }
                Err(e) => return Err(e),
            };
            w.append = client.prepare(APPEND).map_err(|e| self.failed(&e))?;
            w.client = client;
            match self.landed(&mut w.client, first, batch)? {
                Some(true) => return Ok(()),
                Some(false) => {
                    let theirs = generation(&mut w.client).map_err(|e| self.failed(&e))?;
                    return Err(fenced(w, theirs));
                }
                None => continue,
            }
        }
    }

    /// After a failed connection: whether the batch whose first frame is at `first` landed.
    fn landed(&self, client: &mut Client, first: u64, batch: i64) -> Result<Option<bool>> {
        let row = client
            .query_opt(
                "SELECT batch FROM spg99_log WHERE first_seq = $1",
                &[&(first as i64)],
            )
            .map_err(|e| self.failed(&e))?;
        Ok(row.map(|r| r.get::<_, i64>(0) == batch))
    }
}

/// The writer, locked; only made while there is one.
struct WriterGuard<'a>(std::sync::MutexGuard<'a, Option<Writer>>);

impl std::ops::Deref for WriterGuard<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        self.0.as_ref().expect("a writer guard holds a writer")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        self.0.as_mut().expect("a writer guard holds a writer")
    }
}

/// Why an append did not land.
enum Failure {
    Fenced(i64),
    Sql(::postgres::Error),
}

impl From<::postgres::Error> for Failure {
    fn from(e: ::postgres::Error) -> Self {
        Failure::Sql(e)
    }
}

impl Store for PgStore {
    fn head(&self) -> Result<u64> {
        if let Ok(w) = self.writer() {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(last_seq(&pending).unwrap_or(w.durable));
        }
        let mut client = self.reader()?;
        let head = client
            .query_one("SELECT seq FROM spg99_log_head", &[])
            .map_err(|e| self.failed(&e))?
            .get::<_, i64>(0) as u64;
        self.readers.lock().unwrap().push(client);
        Ok(head)
    }

    fn put(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        if self.term().is_none() {
            return Err(LogError::ReadOnly);
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(frames);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // The connection first: a sync that finds nothing pending returns only once the
        // append in flight (which may hold its caller's batch) has ended.
        let mut w = self.writer()?;
        let frames = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(head) = last_seq(&frames) else {
            return Ok(());
        };
        match self.append_resolving(&mut w, &frames, head) {
            Ok(()) => {
                w.durable = head;
                Ok(())
            }
            Err(e) => {
                // Not durable: kept ahead of what was put since, for a later sync to try again
                // (or to be refused again: a fenced writer stays fenced).
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let later = std::mem::replace(&mut *pending, frames);
                pending.extend(later);
                Err(e)
            }
        }
    }

    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn shared(&self) -> bool {
        true
    }

    fn lead(&self, bid: &Bid) -> Result<Lead> {
        // On the lease's connection: followers ask every quarter of a lease.
        let mut lease = self.lease_client()?;
        let client = lease.as_mut().expect("made above");
        // A failed connection is made again next time (`lease_client`).
        let mut tx = client.transaction().map_err(|e| self.failed(&e))?;
        let ttl = bid.ttl.as_secs_f64();
        let taken = tx
            .query_opt(TAKE_LEASE, &[&bid.holder, &bid.address, &ttl])
            .map_err(|e| self.failed(&e))?;
        if taken.is_none() {
            let row = tx
                .query_one(
                    "SELECT address, expires_at > clock_timestamp() FROM spg99_log_lease",
                    &[],
                )
                .map_err(|e| self.failed(&e))?;
            let address = Some(row.get::<_, String>(0)).filter(|_| row.get(1));
            return Ok(Lead::Theirs { address });
        }
        let row = tx
            .query_one(
                "UPDATE spg99_log_head SET generation = generation + 1 RETURNING seq, generation",
                &[],
            )
            .map_err(|e| self.failed(&e))?;
        let (head, generation): (i64, i64) = (row.get(0), row.get(1));
        tx.execute("UPDATE spg99_log_lease SET generation = $1", &[&generation])
            .map_err(|e| self.failed(&e))?;
        tx.commit().map_err(|e| self.failed(&e))?;
        drop(lease);
        self.become_writer(self.client()?, generation, head)?;
        Ok(Lead::Ours)
    }

    fn renew(&self, bid: &Bid) -> Result<bool> {
        let Some(generation) = self.term() else {
            return Ok(false);
        };
        let mut lease = self.lease_client()?;
        let client = lease.as_mut().expect("made above");
        let ttl = bid.ttl.as_secs_f64();
        match client.query_opt(RENEW_LEASE, &[&bid.holder, &generation, &ttl]) {
            Ok(row) => Ok(row.is_some()),
            Err(e) => {
                *lease = None;
                Err(self.failed(&e))
            }
        }
    }

    fn resign(&self, bid: &Bid) {
        let Some(generation) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let generation = generation.generation;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Lapsed at once, so that the next leader need not wait for it.
        let released = self.lease_client().and_then(|mut lease| {
            lease
                .as_mut()
                .expect("made above")
                .execute(
                    "UPDATE spg99_log_lease SET expires_at = '-infinity' \
                     WHERE holder = $1 AND generation = $2",
                    &[&bid.holder, &generation],
                )
                .map_err(|e| self.failed(&e))
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, "cannot give the lease up; it lapses by itself");
        }
    }

    fn wait(&self, timeout: Duration) {
        let mut listener = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if listener.as_ref().is_none_or(Client::is_closed) {
            let listening = self.client().and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))
                    .map_err(|e| self.failed(&e))?;
                Ok(c)
            });
            match listening {
                Ok(c) => *listener = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for appends; polling");
                    drop(listener);
                    std::thread::sleep(timeout);
                    return;
                }
            }
        }
        use ::postgres::fallible_iterator::FallibleIterator;
        let failed = {
            let client = listener.as_mut().expect("made above");
            let mut notifications = client.notifications();
            let failed = notifications.timeout_iter(timeout).next().err();
            // Those that arrived meanwhile are covered by the read that follows.
            while let Ok(Some(_)) = notifications.iter().next() {}
            failed
        };
        if let Some(e) = failed {
            tracing::warn!(error = %self.failed(&e), "the appends' listener failed; polling");
            *listener = None;
        }
    }

    fn frames(&self, seq: u64) -> Frames {
        let client = match self.reader() {
            Ok(c) => c,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(Pages {
            client: Some(client),
            store_target: self.target.clone(),
            readers: self.readers.clone(),
            seq,
            started: false,
            page: std::collections::VecDeque::new(),
            done: false,
        })
    }
}

impl PgStore {
    /// An idle reader connection, or a new one.
    fn reader(&self) -> Result<Client> {
        let idle = self.readers.lock().unwrap().pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.client(),
        }
    }
}

/// Frames read a page at a time; the connection goes back to the idle ones when done.
struct Pages {
    client: Option<Client>,
    store_target: String,
    readers: std::sync::Arc<Mutex<Vec<Client>>>,
    /// Where the next page starts: a seq inside the first frame wanted, then a first_seq.
    seq: u64,
    started: bool,
    page: std::collections::VecDeque<(u64, Frame)>,
    done: bool,
}

impl Pages {
    fn fetch(&mut self) -> std::result::Result<(), ::postgres::Error> {
        let client = self.client.as_mut().expect("a client until done");
        let rows = if self.started {
            client.query(
                "SELECT first_seq, frame FROM spg99_log WHERE first_seq > $1 \
                 ORDER BY first_seq LIMIT $2",
                &[&(self.seq as i64), &PAGE],
            )?
        } else {
            // From the frame holding `seq`: the last one starting at or before it.
            client.query(
                "SELECT first_seq, frame FROM spg99_log WHERE first_seq >= \
                 COALESCE((SELECT max(first_seq) FROM spg99_log WHERE first_seq <= $1), $1) \
                 ORDER BY first_seq LIMIT $2",
                &[&(self.seq as i64), &PAGE],
            )?
        };
        self.started = true;
        if (rows.len() as i64) < PAGE {
            self.done = true;
        }
        for row in rows {
            let first = row.get::<_, i64>(0) as u64;
            self.seq = first;
            self.page.push_back((first, Frame::Owned(row.get(1))));
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(c) = self.client.take() {
            self.readers.lock().unwrap().push(c);
        }
    }
}

impl Iterator for Pages {
    type Item = Result<(u64, Frame)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(frame) = self.page.pop_front() {
                return Some(Ok(frame));
            }
            if self.done || self.client.is_none() {
                self.finish();
                return None;
            }
            if let Err(e) = self.fetch() {
                // A failed connection is not given back.
                self.client = None;
                return Some(Err(LogError::Postgres {
                    target: self.store_target.clone(),
                    reason: e.to_string(),
                }));
            }
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether `e` means the connection is gone (the append's outcome unknown), rather than a
/// refusal by the server: no answer at all, or the server ending the session (`57P0x`, an
/// administrator, a crash or a shutdown; `08xxx`, the connection itself). A terminated
/// session's error may arrive before the client notices the socket is closed.
fn connection_lost(client: &Client, e: &::postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            client.is_closed() || code.starts_with("57P0") || code.starts_with("08")
        }
    }
}

/// The generation of the log's writer as the head row says: the last to open it.
fn generation(client: &mut Client) -> std::result::Result<i64, ::postgres::Error> {
    Ok(client
        .query_one("SELECT generation FROM spg99_log_head", &[])?
        .get(0))
}

/// The last seq of pending frames.
fn last_seq(pending: &[(u64, Vec<u8>)]) -> Option<u64> {
    let (first, frame) = pending.last()?;
    let count = split_frame(frame).map(|r| r.len()).unwrap_or(1).max(1);
    Some(first + count as u64 - 1)
}

fn random_i64() -> i64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random generator is unavailable");
    i64::from_le_bytes(b)
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
