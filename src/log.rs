//! The command log on sled.
//!
//! ## What do we store?
//! One sled tree, `log`. Its keys are `seq`s (u64, big-endian, so key order is log order);
//! each value is a **frame**: the records of one committed batch (or of a 64 KiB slice of a
//! large one), keyed by the seq of its first record:
//!
//! ```text
//! 0xF5 ‖ count: u32 LE ‖ (len: u32 LE ‖ record) × count
//! ```
//!
//! Each record keeps its own format (version byte ‖ bincode ‖ CRC-32 over seq, version and
//! payload, see [`spg99_events::codec`]), so a record is checked on its own wherever it sits.
//! One sled key per batch instead of one per record matters: sled's cost per key (memory,
//! insert time) dominated the log's throughput, replay speed and memory (BENCHMARKS.md).
//! A value that does not start with `0xF5` is a single record (the first layout), still read.
//!
//! `seq` is ours, gapless from 1; sled's `generate_id()` is not used because it may skip
//! numbers. Nothing else is durable here: every read model is rebuilt from these records.
//!
//! ## When is a write durable?
//! [`Log::write`] writes a whole batch to sled's tree atomically — one `insert` of its frame, or
//! one `apply_batch` of its frames when it is larger than one — so that a reader and, after a
//! crash, the log hold all of a batch or none of it, and queues its frames for the
//! write-ahead file ([`crate::wal`]); [`Log::sync`] writes them there with one `pwrite` and
//! one `fdatasync` of a preallocated segment, and covers every batch written before it.
//! `fdatasync` is what asks the device to empty its volatile write cache; sled's own
//! `flush()` ends in `sync_file_range`, which does not, and costs a second wait per commit.
//!
//! sled itself is made durable by checkpoints (`flush()`, then `fdatasync` of its data file
//! and of any blob files it made), in the background whenever a WAL segment fills, and on a
//! clean stop; the segments a checkpoint covers are then deleted. [`Log::open`] puts back into
//! sled, before anything reads it, the frames that only the WAL held when the process stopped.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spg99_events::{decode_record, encode_record, Envelope, RecordError};

use crate::wal::Wal;

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage error in {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
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

/// The append-only, durable sequence of envelopes.
pub struct Log {
    dir: PathBuf,
    tree: sled::Tree,
    durable: Arc<Durable>,
    /// The background checkpoint, stopped (and joined) when the log is dropped, so that
    /// sled is closed by then.
    checkpointer: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some((thread, stop)) = self.checkpointer.take() {
            stop.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// What makes the log durable: the write-ahead file per commit, sled in the background.
struct Durable {
    dir: PathBuf,
    db: sled::Db,
    /// sled's data file, opened a second time so its data can be `fdatasync`ed.
    data_file: File,
    blobs: Mutex<BlobSync>,
    wal: Wal,
    checkpointing: Mutex<()>,
}

/// How often the background checkpoint looks for filled WAL segments.
const CHECKPOINT_POLL: Duration = Duration::from_millis(200);
/// sled's page cache (its default is 1 GiB). Readers of the log are the catch-up of event
/// streams and replays, both sequential over 64 KiB frames, and recent batches are also in
/// the committer's live feed; a small cache costs them little, while the default would keep
/// the whole log in memory.
const SLED_CACHE_BYTES: u64 = 2 << 20;

impl Durable {
    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> LogError {
        move |source| LogError::Io { path, source }
    }

    /// Makes sled durable, then deletes the WAL segments it now covers.
    fn checkpoint(&self) -> Result<()> {
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        // Segments filled before now hold only frames already applied to sled's tree (a frame
        // goes to the tree before its entry is queued for the WAL).
        let closed = self.wal.closed();
        self.db.flush().map_err(|source| LogError::Storage {
            path: self.dir.clone(),
            source,
        })?;
        self.data_file
            .sync_data()
            .map_err(self.io(self.dir.join("db")))?;
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_new()?;
        self.wal
            .remove(&closed)
            .map_err(self.io(self.dir.join("wal")))
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, putting back into sled what only the WAL held
    /// (after a crash). Does not read the records otherwise; see [`Log::head`] and
    /// [`Log::read_from`].
    pub fn open(dir: &Path) -> Result<Log> {
        let storage = |source| LogError::Storage {
            path: dir.to_path_buf(),
            source,
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            // Commits are made durable by the WAL; sled is flushed by checkpoints.
            .flush_every_ms(None)
            .open()
            .map_err(storage)?;
        let tree = db.open_tree("log").map_err(storage)?;
        db.flush().map_err(storage)?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(io(&data_path))?;
        data_file.sync_all().map_err(io(&data_path))?;
        // The directory entries of a new data dir must be durable too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;

        let wal_dir = dir.join("wal");
        let survivors = Wal::read_all(&wal_dir).map_err(io(&wal_dir))?;
        let mut head = tree_head(dir, &tree)?;
        let sled_head = head;
        for (first, frame) in survivors {
            let count = split_frame(&frame)
                .map_err(|reason| LogError::BadFrame {
                    first_seq: first,
                    reason,
                })?
                .len() as u64;
            if first + count.max(1) - 1 <= head {
                continue;
            }
            if first != head + 1 {
                return Err(LogError::Gap {
                    expected: head + 1,
                    found: first,
                });
            }
            tree.insert(first.to_be_bytes(), frame).map_err(storage)?;
            head = first + count - 1;
        }
        if head > sled_head {
            db.flush().map_err(storage)?;
            data_file.sync_data().map_err(io(&data_path))?;
            tracing::info!(
                from = sled_head + 1,
                to = head,
                "log records only the WAL held were put back"
            );
        }
        let wal = Wal::create(&wal_dir).map_err(io(&wal_dir))?;

        let durable = Arc::new(Durable {
            dir: dir.to_path_buf(),
            db,
            data_file,
            blobs: Mutex::new(BlobSync::new(dir.join("blobs"))),
            wal,
            checkpointing: Mutex::new(()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (background, stopping) = (durable.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("spg99-checkpoint".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    std::thread::park_timeout(CHECKPOINT_POLL);
                    if !background.wal.closed().is_empty() {
                        if let Err(e) = background.checkpoint() {
                            tracing::error!(error = %e, "checkpoint failed; the WAL keeps the log durable");
                        }
                    }
                }
            })
            .map_err(io(dir))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            tree,
            durable,
            checkpointer: Some((thread, stop)),
        })
    }

    fn storage(&self, source: sled::Error) -> LogError {
        LogError::Storage {
            path: self.dir.clone(),
            source,
        }
    }

    /// The `seq` of the last record; 0 when the log is empty.
    pub fn head(&self) -> Result<u64> {
        tree_head(&self.dir, &self.tree)
    }

    /// Writes a batch atomically but does not wait for the device: the records may be lost
    /// by a crash until the next [`Log::sync`] returns. Records written but not yet synced are
    /// visible to [`Log::read_from`], so readers that must only see durable events bound their
    /// reads by the durable head the committer publishes.
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
        if let [(first, frame)] = frames.as_slice() {
            // One frame (every batch below 64 KiB): a single insert is atomic by itself. A sled
            // batch is not needed, and it would cost a write of sled's own log on every commit:
            // sled 0.34 seals and writes its current I/O buffer (a `pwrite` and a
            // `sync_file_range` on its I/O threads) to open and to close every batch.
            self.tree
                .insert(first.to_be_bytes(), frame.as_slice())
                .map_err(|e| self.storage(e))?;
        } else {
            let mut batch = sled::Batch::default();
            for (first, frame) in &frames {
                batch.insert(&first.to_be_bytes(), frame.as_slice());
            }
            self.tree.apply_batch(batch).map_err(|e| self.storage(e))?;
        }
        // Only once the tree holds them: a checkpoint may then drop the WAL segment.
        for (first, frame) in &frames {
            self.durable.wal.append(*first, frame);
        }
        Ok(())
    }

    /// Makes everything written before this call durable on the device: one write and one
    /// `fdatasync` of the WAL.
    pub fn sync(&self) -> Result<()> {
        self.durable.wal.sync().map_err(|source| LogError::Io {
            path: self.dir.join("wal"),
            source,
        })
    }

    /// Makes sled itself durable and drops the WAL it covers (done in the background as WAL
    /// segments fill; call it on a clean stop, so that the next start has nothing to replay).
    pub fn checkpoint(&self) -> Result<()> {
        self.durable.checkpoint()
    }

    /// The key of the frame holding `seq` (or of the first frame after it).
    fn frame_key(&self, seq: u64) -> Result<[u8; 8]> {
        match self
            .tree
            .range(..=seq.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(|e| self.storage(e))?
        {
            Some((key, _)) => Ok(key_to_seq(&key)?.to_be_bytes()),
            None => Ok(seq.to_be_bytes()),
        }
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
    pub fn raw_records(&self) -> impl Iterator<Item = Result<sled::IVec>> + '_ {
        self.tree.iter().values().flat_map(move |v| {
            let parts: Vec<Result<sled::IVec>> = match v {
                Err(e) => vec![Err(self.storage(e))],
                Ok(value) => match split_frame(&value) {
                    Ok(ranges) => ranges
                        .into_iter()
                        .map(|r| Ok(value.subslice(r.start, r.len())))
                        .collect(),
                    Err(reason) => vec![Err(LogError::BadFrame {
                        first_seq: 0,
                        reason,
                    })],
                },
            };
            parts
        })
    }

    /// Every record from `from` (inclusive) on, in order, checking that seqs are gapless.
    /// Iteration stops at the first error, which is yielded.
    pub fn read_from(&self, from: u64) -> LogIter {
        let from = from.max(1);
        let (inner, failed) = match self.frame_key(from) {
            Ok(key) => (self.tree.range(key..), None),
            Err(e) => (self.tree.range(from.to_be_bytes()..), Some(e)),
        };
        LogIter {
            inner,
            pending: None,
            from,
            expected: None,
            failed: false,
            error: failed,
            dir: self.dir.clone(),
        }
    }
}

/// The `seq` of the tree's last record; 0 when it is empty.
fn tree_head(dir: &Path, tree: &sled::Tree) -> Result<u64> {
    match tree.last().map_err(|source| LogError::Storage {
        path: dir.to_path_buf(),
        source,
    })? {
        None => Ok(0),
        Some((key, value)) => {
            let first = key_to_seq(&key)?;
            let records = split_frame(&value).map_err(|reason| LogError::BadFrame {
                first_seq: first,
                reason,
            })?;
            Ok(first + records.len().max(1) as u64 - 1)
        }
    }
}

fn key_to_seq(key: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = key
        .try_into()
        .map_err(|_| LogError::BadKey { key: key.to_vec() })?;
    Ok(u64::from_be_bytes(arr))
}

/// Iterator over log records; see [`Log::read_from`].
pub struct LogIter {
    inner: sled::Iter,
    /// The frame being read: its bytes, first seq, record ranges, next index.
    pending: Option<(sled::IVec, u64, Vec<std::ops::Range<usize>>, usize)>,
    from: u64,
    /// The seq the next record must have, once the first was found.
    expected: Option<u64>,
    failed: bool,
    error: Option<LogError>,
    dir: PathBuf,
}

impl LogIter {
    fn next_frame(&mut self) -> Option<Result<()>> {
        let (key, value) = match self.inner.next()? {
            Ok(kv) => kv,
            Err(source) => {
                return Some(Err(LogError::Storage {
                    path: self.dir.clone(),
                    source,
                }))
            }
        };
        let first = match key_to_seq(&key) {
            Ok(s) => s,
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
        if let Some(e) = self.error.take() {
            self.failed = true;
            return Some(Err(e));
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

/// Syncs files that sled creates under `blobs/` (it writes them without `fsync`). One `stat`
/// per commit in the common case where the directory did not change.
struct BlobSync {
    dir: PathBuf,
    last_mtime: Option<std::time::SystemTime>,
    synced: HashSet<std::ffi::OsString>,
}

impl BlobSync {
    fn new(dir: PathBuf) -> Self {
        BlobSync {
            dir,
            last_mtime: None,
            synced: HashSet::new(),
        }
    }

    fn sync_new(&mut self) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        let mtime = match std::fs::metadata(&self.dir) {
            Ok(m) => m.modified().map_err(io(&self.dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        if self.last_mtime == Some(mtime) {
            return Ok(());
        }
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            if !self.synced.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => f.sync_all().map_err(io(&path))?,
                    // sled may have collected it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            present.insert(name);
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.synced = present;
        self.last_mtime = Some(mtime);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let log = Log::open(dir.path()).unwrap();
        log.write(&(1..=3).map(|s| env(s, 10)).collect::<Vec<_>>())
            .unwrap();
        log.write(&[env(4, 10)]).unwrap();
        // A large batch is cut into several frames, all written atomically.
        let big: Vec<Envelope> = (5..=400).map(|s| env(s, 1000)).collect();
        log.write(&big).unwrap();
        log.sync().unwrap();
        assert!(log.tree.len() > 3, "the large batch spans frames");
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
        let log = Log::open(dir.path()).unwrap();
        log.tree
            .insert(1u64.to_be_bytes(), encode_record(&env(1, 3)))
            .unwrap();
        log.write(&[env(2, 3), env(3, 3)]).unwrap();
        assert_eq!(log.head().unwrap(), 3);
        assert_eq!(seqs(&log, 1), vec![1, 2, 3]);
    }

    #[test]
    fn a_torn_frame_and_a_gap_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.write(&[env(1, 3), env(2, 3)]).unwrap();
        let mut torn = join_frame(&[encode_record(&env(3, 3)), encode_record(&env(4, 3))]);
        torn.truncate(torn.len() - 3);
        log.tree.insert(3u64.to_be_bytes(), torn).unwrap();
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
