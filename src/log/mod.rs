//! The command log: the append-only, durable sequence of envelopes, on sled (the embedded
//! default, [`sled`]) or in a PostgreSQL database ([`postgres`]), the same records either way.
//!
//! ## What do we store?
//! **Frames**: the records of one committed batch (or of a 64 KiB slice of a large one), keyed
//! by the seq of its first record:
//!
//! ```text
//! 0xF5 ‖ count: u32 LE ‖ (len: u32 LE ‖ record) × count
//! ```
//!
//! Each record keeps its own format (version byte ‖ bincode ‖ CRC-32 over seq, version and
//! payload, see [`spg99_events::codec`]), so a record is checked on its own wherever it sits,
//! and every tool reads both stores. One key per batch instead of one per record matters:
//! sled's cost per key (memory, insert time) dominated the log's throughput, replay speed and
//! memory (BENCHMARKS.md). A value that does not start with `0xF5` is a single record (the
//! first layout), still read.
//!
//! `seq` is ours, gapless from 1. Nothing else is durable here: every read model is rebuilt
//! from these records.
//!
//! ## When is a write durable?
//! [`Log::write`] hands a batch's frames to the store, which keeps all of a batch or none of it;
//! [`Log::sync`] makes everything written before it durable (one `fdatasync` of the WAL on
//! sled, one transaction on PostgreSQL) — a group commit. Readers of what is durable bound
//! their reads by the durable head the committer publishes.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use spg99_events::{decode_record, encode_record, Envelope, RecordError};

pub mod postgres;
pub mod sled;

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage error in {path}: {source}")]
    Storage {
        path: PathBuf,
        source: ::sled::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("log record seq {seq} is unreadable: {source}")]
    BadRecord { seq: u64, source: RecordError },
    #[error("log key {key:?} is not an 8-byte seq")]
    BadKey { key: Vec<u8> },
    #[error("log has a gap: expected seq {expected}, found seq {found}")]
    Gap { expected: u64, found: u64 },
    #[error("log frame at seq {first_seq} is torn: {reason}")]
    BadFrame { first_seq: u64, reason: String },
    #[error("the log's database ({target}) failed: {reason}")]
    Postgres { target: String, reason: String },
    #[error("another writer (generation {theirs}) took the log over from generation {ours}: this one may not append")]
    Fenced { ours: i64, theirs: i64 },
    #[error("this log was opened for reading only")]
    ReadOnly,
}

const FRAME_MARK: u8 = 0xF5;
/// Frames are cut at about this size, well below the size at which sled moves a value into
/// a separate blob file.
const FRAME_TARGET: usize = 64 * 1024;

/// Builds a frame from encoded records.
pub fn join_frame<R: AsRef<[u8]>>(records: &[R]) -> Vec<u8> {
    let size: usize = records.iter().map(|r| r.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(5 + size);
    out.push(FRAME_MARK);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(r.as_ref());
    }
    out
}

/// The byte ranges of the records in a stored value (a frame, or one record of the first
/// layout); the reason when the frame is torn.
pub fn split_frame(value: &[u8]) -> Result<Vec<std::ops::Range<usize>>, String> {
    if value.first() != Some(&FRAME_MARK) {
        return Ok(std::iter::once(0..value.len()).collect());
    }
    let read_u32 = |at: usize| -> Result<usize, String> {
        value
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| format!("ends at byte {} inside a length", value.len()))
    };
    let count = read_u32(1)?;
    let mut at = 5;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = read_u32(at)?;
        at += 4;
        if at + len > value.len() {
            return Err(format!(
                "a record runs past the frame's end ({} bytes)",
                value.len()
            ));
        }
        out.push(at..at + len);
        at += len;
    }
    if at != value.len() {
        return Err(format!("{} bytes after the last record", value.len() - at));
    }
    Ok(out)
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// A stored frame's bytes: sled's own buffer, or what PostgreSQL sent.
pub enum Frame {
    Sled(::sled::IVec),
    Owned(Vec<u8>),
}

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Frame::Sled(v) => v,
            Frame::Owned(v) => v,
        }
    }
}

/// Stored frames in order, each with the seq of its first record.
pub type Frames = Box<dyn Iterator<Item = Result<(u64, Frame)>> + Send>;

/// Where the log keeps its frames. Both stores pass the same tests (`tests/it/log_stores.rs`).
pub trait Store: Send + Sync {
    /// The `seq` of the last record written; 0 when the log is empty.
    fn head(&self) -> Result<u64>;
    /// Writes the frames of one batch, atomically; durable after the next [`Store::sync`].
    fn put(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<()>;
    /// Makes every batch put before this call durable.
    fn sync(&self) -> Result<()>;
    /// Housekeeping on a clean stop (sled: a checkpoint, so the next start replays nothing).
    fn checkpoint(&self) -> Result<()>;
    /// The frames from the one holding `seq` (or the first after it) on.
    fn frames(&self, seq: u64) -> Frames;
    /// The log's own id, where it is not the data directory's (PostgreSQL).
    fn id(&self) -> Option<&str> {
        None
    }
    /// Whether other processes may share this log (and one of them lead it): PostgreSQL.
    /// A store only one process opens (sled locks its directory) is always led by it.
    fn shared(&self) -> bool {
        false
    }
    /// Tries to lead the log: take its lease, if it is free or already `bid`'s, with the next
    /// generation, and become its writer. Every earlier writer's appends are refused from then.
    fn lead(&self, _bid: &Bid) -> Result<Lead> {
        Ok(Lead::Ours)
    }
    /// Extends the lease of the term [`Store::lead`] began; false once another took it.
    fn renew(&self, _bid: &Bid) -> Result<bool> {
        Ok(true)
    }
    /// Ends this process's term: no more appends; the lease is given up for the next leader.
    fn resign(&self, _bid: &Bid) {}
    /// Waits up to `timeout` for another process to append (a wake-up, not a promise: callers
    /// read the log after it either way).
    fn wait(&self, timeout: std::time::Duration) {
        std::thread::sleep(timeout)
    }
}

/// What a process asks for when it tries to lead a shared log.
#[derive(Debug, Clone)]
pub struct Bid {
    /// This process's id, fresh at each start.
    pub holder: String,
    /// The URL at which it serves the API, for the others to pass writes to.
    pub address: String,
    /// How long a lease lasts unless renewed.
    pub ttl: std::time::Duration,
}

/// Who leads a log after [`Log::lead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lead {
    /// This process: it appends until its term ends.
    Ours,
    /// Another process, serving at `address`; `None` when the lease has lapsed and no one
    /// has taken it yet.
    Theirs { address: Option<String> },
}

/// The append-only, durable sequence of envelopes.
pub struct Log {
    store: Box<dyn Store>,
}

/// Which store a log is in, as `--log` says: a directory for sled, or `postgres://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sled(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    /// A PostgreSQL log, from a `postgres://` or `postgresql://` URL (what `--log` takes; a
    /// sled log is named by its data directory); why not, otherwise.
    pub fn postgres(url: &str) -> Result<Location, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Location::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "{url:?}: expected a postgres:// URL (a sled log is named by --data-dir)"
            ))
        }
    }
}

impl Log {
    /// Opens (or creates) the sled log in `dir`.
    pub fn open(dir: &Path) -> Result<Log> {
        Ok(Log::on(sled::SledStore::open(dir)?))
    }

    /// Opens the log at `at` to append (on PostgreSQL: as its writer at once, fencing any
    /// other, whatever the lease says: for tools on a log no replica serves) or, with `writer`
    /// false, only to read (a replica then asks to [`Log::lead`] it).
    pub fn at(at: &Location, writer: bool) -> Result<Log> {
        match at {
            Location::Sled(dir) => Log::open(dir),
            Location::Postgres(url) => Ok(Log::on(postgres::PgStore::connect(url, writer)?)),
        }
    }

    /// A log on `store`.
    pub fn on(store: impl Store + 'static) -> Log {
        Log {
            store: Box::new(store),
        }
    }

    /// The `seq` of the last record; 0 when the log is empty.
    pub fn head(&self) -> Result<u64> {
        self.store.head()
    }

    /// Where files derived from this log (snapshots) are kept under `data_dir`: the directory
    /// itself for its own sled log, a directory of the log's id for a log elsewhere, so that
    /// one data directory never mixes two logs' snapshots.
    pub fn local_dir(&self, data_dir: &Path) -> PathBuf {
        match self.store.id() {
            None => data_dir.to_path_buf(),
            Some(id) => data_dir.join(format!("log-{id}")),
        }
    }

    /// Writes a batch atomically but does not wait for the device: the records may be lost
    /// by a crash until the next [`Log::sync`] returns. Records written but not yet synced may
    /// be visible to [`Log::read_from`] (on sled), so readers that must only see durable events
    /// bound their reads by the durable head the committer publishes.
    pub fn write<'a>(&self, envs: impl IntoIterator<Item = &'a Envelope>) -> Result<()> {
        let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let (mut first, mut size) = (0, 0);
        for env in envs {
            if records.is_empty() {
                first = env.seq;
            }
            let record = encode_record(env);
            size += record.len() + 4;
            records.push(record);
            if size >= FRAME_TARGET {
                frames.push((first, join_frame(&records)));
                records.clear();
                size = 0;
            }
        }
        if !records.is_empty() {
            frames.push((first, join_frame(&records)));
        }
        if frames.is_empty() {
            return Ok(());
        }
        self.store.put(frames)
    }

    /// Makes everything written before this call durable.
    pub fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    /// Makes the store tidy for the next start (see [`Store::checkpoint`]); call it on a clean
    /// stop.
    pub fn checkpoint(&self) -> Result<()> {
        self.store.checkpoint()
    }

    /// Whether other processes share this log (see [`Store::shared`]).
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// See [`Store::lead`].
    pub fn lead(&self, bid: &Bid) -> Result<Lead> {
        self.store.lead(bid)
    }

    /// See [`Store::renew`].
    pub fn renew(&self, bid: &Bid) -> Result<bool> {
        self.store.renew(bid)
    }

    /// See [`Store::resign`].
    pub fn resign(&self, bid: &Bid) {
        self.store.resign(bid)
    }

    /// See [`Store::wait`].
    pub fn wait(&self, timeout: std::time::Duration) {
        self.store.wait(timeout)
    }

    /// Reads one record.
    pub fn get(&self, seq: u64) -> Result<Option<Envelope>> {
        match self.read_from(seq).next() {
            Some(Ok(env)) if env.seq == seq => Ok(Some(env)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Every stored record's bytes, in order, undecoded (for measuring the cost of decoding).
    pub fn raw_records(&self) -> impl Iterator<Item = Result<Frame>> + '_ {
        self.store.frames(1).flat_map(|item| {
            let parts: Vec<Result<Frame>> = match item {
                Err(e) => vec![Err(e)],
                Ok((first_seq, value)) => match split_frame(&value) {
                    Ok(ranges) => ranges
                        .into_iter()
                        .map(|r| {
                            Ok(match &value {
                                Frame::Sled(v) => Frame::Sled(v.subslice(r.start, r.len())),
                                Frame::Owned(v) => Frame::Owned(v[r].to_vec()),
                            })
                        })
                        .collect(),
                    Err(reason) => vec![Err(LogError::BadFrame { first_seq, reason })],
                },
            };
            parts
        })
    }

    /// Every record from `from` (inclusive) on, in order, checking that seqs are gapless.
    /// Iteration stops at the first error, which is yielded.
    pub fn read_from(&self, from: u64) -> LogIter {
        let from = from.max(1);
        LogIter {
            inner: self.store.frames(from),
            pending: None,
            from,
            expected: None,
            failed: false,
        }
    }
}

/// Iterator over log records; see [`Log::read_from`].
pub struct LogIter {
    inner: Frames,
    /// The frame being read: its bytes, first seq, record ranges, next index.
    pending: Option<(Frame, u64, Vec<std::ops::Range<usize>>, usize)>,
    from: u64,
    /// The seq the next record must have, once the first was found.
    expected: Option<u64>,
    failed: bool,
}

impl LogIter {
    fn next_frame(&mut self) -> Option<Result<()>> {
        let (first, value) = match self.inner.next()? {
            Ok(frame) => frame,
            Err(e) => return Some(Err(e)),
        };
        match split_frame(&value) {
            Ok(ranges) => {
                self.pending = Some((value, first, ranges, 0));
                Some(Ok(()))
            }
            Err(reason) => Some(Err(LogError::BadFrame {
                first_seq: first,
                reason,
            })),
        }
    }
}

impl Iterator for LogIter {
    type Item = Result<Envelope>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let (value, first, ranges, index) = match &mut self.pending {
                Some((v, f, r, i)) if *i < r.len() => (v, *f, r, i),
                _ => match self.next_frame()? {
                    Ok(()) => continue,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                },
            };
            let seq = first + *index as u64;
            let range = ranges[*index].clone();
            *index += 1;
            if seq < self.from {
                continue;
            }
            let expected = self.expected.unwrap_or(self.from);
            if seq != expected {
                self.failed = true;
                return Some(Err(LogError::Gap {
                    expected,
                    found: seq,
                }));
            }
            let result = decode_record(seq, &value[range])
                .map_err(|source| LogError::BadRecord { seq, source });
            match &result {
                Ok(_) => self.expected = Some(seq + 1),
                Err(_) => self.failed = true,
            }
            return Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Wal;

    /// The sled log in `dir`, and its tree to tamper with.
    fn open_sled(dir: &Path) -> (Log, ::sled::Tree) {
        let store = sled::SledStore::open(dir).unwrap();
        let tree = store.tree.clone();
        (Log::on(store), tree)
    }
    use spg99_events::{Actor, Event, Timestamp};

    fn env(seq: u64, name_len: usize) -> Envelope {
        Envelope {
            seq,
            at: Timestamp(seq as i64),
            actor: Actor::System,
            request_id: "r".into(),
            account: None,
            tenant: None,
            tenant_id: None,
            db_id: None,
            event: Event::AccountCreated {
                account_id: uuid::Uuid::from_u128(seq as u128),
                name: "n".repeat(name_len),
                email: None,
            },
        }
    }

    fn seqs(log: &Log, from: u64) -> Vec<u64> {
        log.read_from(from).map(|e| e.unwrap().seq).collect()
    }

    #[test]
    fn batches_become_frames_and_read_back_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (log, tree) = open_sled(dir.path());
        log.write(&(1..=3).map(|s| env(s, 10)).collect::<Vec<_>>())
            .unwrap();
        log.write(&[env(4, 10)]).unwrap();
        // A large batch is cut into several frames, all written atomically.
        let big: Vec<Envelope> = (5..=400).map(|s| env(s, 1000)).collect();
        log.write(&big).unwrap();
        log.sync().unwrap();
        assert!(tree.len() > 3, "the large batch spans frames");
        assert_eq!(log.head().unwrap(), 400);
        assert_eq!(seqs(&log, 1), (1..=400).collect::<Vec<_>>());
        assert_eq!(seqs(&log, 2), (2..=400).collect::<Vec<_>>());
        assert_eq!(seqs(&log, 399), vec![399, 400]);
        assert!(seqs(&log, 401).is_empty());
        assert_eq!(log.get(3).unwrap().unwrap().seq, 3);
        assert_eq!(log.get(250).unwrap().unwrap().seq, 250);
        assert!(log.get(401).unwrap().is_none());
        assert_eq!(log.raw_records().count(), 400);
    }

    #[test]
    fn frames_only_the_wal_held_are_put_back_when_the_log_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(dir.path()).unwrap();
            log.write(&(1..=3).map(|s| env(s, 10)).collect::<Vec<_>>())
                .unwrap();
            log.sync().unwrap();
            log.checkpoint().unwrap();
        }
        // What a crash leaves: frames 4-5 and 6 durable in the WAL, not in sled.
        let frame = |seqs: std::ops::RangeInclusive<u64>| {
            join_frame(&seqs.map(|s| encode_record(&env(s, 10))).collect::<Vec<_>>())
        };
        {
            let wal = Wal::create(&dir.path().join("wal")).unwrap();
            wal.append(2, &frame(2..=3)); // already in sled: skipped
            wal.append(4, &frame(4..=5));
            wal.append(6, &frame(6..=6));
            wal.sync().unwrap();
        }
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(seqs(&log, 1), (1..=6).collect::<Vec<_>>());
        assert!(Wal::read_all(&dir.path().join("wal")).unwrap().is_empty());
        drop(log);

        // A WAL that does not continue the log is refused, not glued on.
        {
            let wal = Wal::create(&dir.path().join("wal")).unwrap();
            wal.append(9, &frame(9..=9));
            wal.sync().unwrap();
        }
        let err = Log::open(dir.path()).err().expect("a gap");
        assert!(
            matches!(
                err,
                LogError::Gap {
                    expected: 7,
                    found: 9
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_record_of_the_first_layout_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (log, tree) = open_sled(dir.path());
        tree.insert(1u64.to_be_bytes(), encode_record(&env(1, 3)))
            .unwrap();
        log.write(&[env(2, 3), env(3, 3)]).unwrap();
        assert_eq!(log.head().unwrap(), 3);
        assert_eq!(seqs(&log, 1), vec![1, 2, 3]);
    }

    #[test]
    fn a_torn_frame_and_a_gap_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (log, tree) = open_sled(dir.path());
        log.write(&[env(1, 3), env(2, 3)]).unwrap();
        let mut torn = join_frame(&[encode_record(&env(3, 3)), encode_record(&env(4, 3))]);
        torn.truncate(torn.len() - 3);
        tree.insert(3u64.to_be_bytes(), torn).unwrap();
        let err = log.read_from(1).nth(2).unwrap().unwrap_err();
        assert!(
            matches!(err, LogError::BadFrame { first_seq: 3, .. }),
            "{err}"
        );
        assert!(log.head().is_err());

        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.write(&[env(1, 3)]).unwrap();
        log.write(&[env(3, 3)]).unwrap();
        let err = log.read_from(1).nth(1).unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Gap {
                    expected: 2,
                    found: 3
                }
            ),
            "{err}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A stored value nobody framed splits into ranges inside it, or is refused.
        #[test]
        fn any_value_splits_into_ranges_inside_it_or_is_refused(
            value in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            if let Ok(ranges) = split_frame(&value) {
                prop_assert!(ranges.iter().all(|r| r.start <= r.end && r.end <= value.len()));
            }
        }
    }
}
