//! The command log on sled.
//!
//! ## What do we store?
//! One sled tree, `log`, mapping `seq` (u64, big-endian, so key order is log order) to one
//! record (see [`spg99_events::codec`]). `seq` is ours, gapless from 1; sled's
//! `generate_id()` is not used because it may skip numbers. Nothing else is durable here:
//! every read model is rebuilt from these records at start.
//!
//! ## When is a write durable?
//! [`Log::write`] writes a whole batch with one `apply_batch` (atomic: after a crash the log
//! holds all of a batch or none of it); [`Log::sync`] then calls `flush()`, then `fdatasync`
//! of sled's data file, and covers every batch written before it.
//! The last step matters: sled 0.34's `flush()` ends in `sync_file_range`, which pushes pages
//! to the device but does not ask the device to empty its volatile write cache, and does not
//! persist file metadata. `fdatasync` does both. Sled writes values too large for a segment
//! into separate files under `blobs/` without syncing them; those are synced here too when
//! they appear, with their directory.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use spg99_events::{decode_record, encode_record, Envelope, RecordError};

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
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// The append-only, durable sequence of envelopes.
pub struct Log {
    dir: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file, opened a second time so its data can be `fdatasync`ed.
    data_file: File,
    blobs: Mutex<BlobSync>,
}

impl Log {
    /// Opens (or creates) the log in `dir`. Does not read the records; see [`Log::head`] and
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
            // We flush when a batch commits; a background flusher would only compete.
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
        let blobs = Mutex::new(BlobSync::new(dir.join("blobs")));
        Ok(Log {
            dir: dir.to_path_buf(),
            db,
            tree,
            data_file,
            blobs,
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
        match self.tree.last().map_err(|e| self.storage(e))? {
            None => Ok(0),
            Some((key, _)) => key_to_seq(&key),
        }
    }

    /// Writes a batch atomically but does not wait for the device: the records may be lost
    /// by a crash until the next [`Log::sync`] returns. Records written but not yet synced are
    /// visible to [`Log::read_from`], so readers that must only see durable events bound their
    /// reads by the durable head the committer publishes.
    pub fn write<'a>(&self, envs: impl IntoIterator<Item = &'a Envelope>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for env in envs {
            batch.insert(&env.seq.to_be_bytes(), encode_record(env));
        }
        self.tree.apply_batch(batch).map_err(|e| self.storage(e))
    }

    /// Makes everything written before this call durable on the device.
    pub fn sync(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.storage(e))?;
        self.data_file.sync_data().map_err(|source| LogError::Io {
            path: self.dir.join("db"),
            source,
        })?;
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_new()
    }

    /// Reads one record.
    pub fn get(&self, seq: u64) -> Result<Option<Envelope>> {
        match self
            .tree
            .get(seq.to_be_bytes())
            .map_err(|e| self.storage(e))?
        {
            None => Ok(None),
            Some(bytes) => decode_record(seq, &bytes)
                .map(Some)
                .map_err(|source| LogError::BadRecord { seq, source }),
        }
    }

    /// Every stored record's bytes, in order, undecoded (for measuring the cost of decoding).
    pub fn raw_records(&self) -> impl Iterator<Item = Result<sled::IVec>> + '_ {
        self.tree
            .iter()
            .values()
            .map(move |v| v.map_err(|e| self.storage(e)))
    }

    /// Every record from `from` (inclusive) on, in order, checking that seqs are gapless.
    /// Iteration stops at the first error, which is yielded.
    pub fn read_from(&self, from: u64) -> LogIter {
        LogIter {
            inner: self.tree.range(from.max(1).to_be_bytes()..),
            expected: from.max(1),
            failed: false,
            dir: self.dir.clone(),
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
    expected: u64,
    failed: bool,
    dir: PathBuf,
}

impl Iterator for LogIter {
    type Item = Result<Envelope>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        let result = item
            .map_err(|source| LogError::Storage {
                path: self.dir.clone(),
                source,
            })
            .and_then(|(key, value)| {
                let seq = key_to_seq(&key)?;
                if seq != self.expected {
                    return Err(LogError::Gap {
                        expected: self.expected,
                        found: seq,
                    });
                }
                decode_record(seq, &value).map_err(|source| LogError::BadRecord { seq, source })
            });
        match &result {
            Ok(_) => self.expected += 1,
            Err(_) => self.failed = true,
        }
        Some(result)
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
