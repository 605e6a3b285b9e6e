//! The log's frames in a sled tree, made durable per commit by a write-ahead file.
//!
//! One sled tree, `log`. Its keys are `seq`s (u64, big-endian, so key order is log order),
//! each value a frame (see [`super`]). `seq` is ours, gapless from 1; sled's `generate_id()` is
//! not used because it may skip numbers.
//!
//! ## When is a write durable?
//! [`Store::put`] writes a whole batch to sled's tree atomically — one `insert` of its frame, or
//! one `apply_batch` of its frames when it is larger than one — so that a reader and, after a
//! crash, the log hold all of a batch or none of it, and queues its frames for the
//! write-ahead file ([`crate::wal`]); [`Store::sync`] writes them there with one `pwrite` and
//! one `fdatasync` of a preallocated segment, and covers every batch written before it.
//! `fdatasync` is what asks the device to empty its volatile write cache; sled's own
//! `flush()` ends in `sync_file_range`, which does not, and costs a second wait per commit.
//!
//! sled itself is made durable by checkpoints (`flush()`, then `fdatasync` of its data file
//! and of any blob files it made), in the background whenever a WAL segment fills, and on a
//! clean stop; the segments a checkpoint covers are then deleted. [`SledStore::open`] puts back
//! into sled, before anything reads it, the frames that only the WAL held when the process
//! stopped.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{split_frame, Frame, Frames, LogError, Result, Store};
use crate::wal::Wal;

/// The log in a sled tree, made durable per commit by the write-ahead file.
pub struct SledStore {
    dir: PathBuf,
    pub(super) tree: sled::Tree,
    durable: Arc<Durable>,
    /// The background checkpoint, stopped (and joined) when the log is dropped, so that
    /// sled is closed by then.
    checkpointer: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Drop for SledStore {
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

impl SledStore {
    /// Opens (or creates) the log in `dir`, putting back into sled what only the WAL held
    /// (after a crash). Does not read the records otherwise.
    pub fn open(dir: &Path) -> Result<SledStore> {
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
        Ok(SledStore {
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
}

impl Store for SledStore {
    fn head(&self) -> Result<u64> {
        tree_head(&self.dir, &self.tree)
    }

    fn put(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
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

    fn sync(&self) -> Result<()> {
        self.durable.wal.sync().map_err(|source| LogError::Io {
            path: self.dir.join("wal"),
            source,
        })
    }

    fn checkpoint(&self) -> Result<()> {
        self.durable.checkpoint()
    }

    fn frames(&self, seq: u64) -> Frames {
        let dir = self.dir.clone();
        let start = match self.frame_key(seq) {
            Ok(key) => key,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(self.tree.range(start..).map(move |kv| {
            let (key, value) = kv.map_err(|source| LogError::Storage {
                path: dir.clone(),
                source,
            })?;
            Ok((key_to_seq(&key)?, Frame::Sled(value)))
        }))
    }
}

impl SledStore {
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
