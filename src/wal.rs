//! The write-ahead file in front of sled: what makes a committed batch durable.
//!
//! A batch's frames go to sled's tree (in memory, readable at once) and, as entries, to this
//! file; a commit writes the pending entries with one `pwrite` and makes them durable with one
//! `fdatasync`. sled is made durable later, in the background ([`crate::log`]'s checkpoint),
//! and the WAL segments it then covers are deleted. At start-up the entries sled had not made
//! durable yet are put back into it before anything reads the log.
//!
//! Why not sled's own `flush()` per commit: it waits for its write-back with
//! `sync_file_range`, and the `fdatasync` that must follow (for the device's cache) also
//! commits file metadata, because sled's file grows. Two disk waits and a journal commit per
//! group; here, one `fdatasync` of data only.
//!
//! ## Layout
//! `wal/<id: 16 hex digits>.wal`, segments of [`SEGMENT_SIZE`] bytes, zero-filled when made
//! (so that writing them changes no metadata), filled with entries:
//!
//! ```text
//! len: u32 LE ‖ crc32(payload): u32 LE ‖ payload = first_seq: u64 LE ‖ frame
//! ```
//!
//! A zero length ends a segment; so does an entry whose checksum does not hold (a write torn
//! by a crash, never acknowledged).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The size of a segment. A spare is prepared in the background once the active one is half
/// full, so rotation does not wait for the zero-filling.
pub const SEGMENT_SIZE: u64 = 16 << 20;
const HEADER: usize = 8;
/// Longest a rotation waits for a spare segment still being made.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One zero-filled segment file.
struct Segment {
    id: u64,
    file: File,
    size: u64,
}

impl Segment {
    /// Makes a segment of at least `size` bytes, zero-filled and durable, directory included.
    fn make(dir: &Path, id: u64, size: u64) -> std::io::Result<Segment> {
        let size = size.max(SEGMENT_SIZE);
        let path = segment_path(dir, id);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Segment { id, file, size })
    }
}

/// The segment being written (made at the first commit, so that opening the log to read it
/// writes nothing), and those filled since the last checkpoint.
struct Active {
    segment: Option<Segment>,
    offset: u64,
    closed: Vec<u64>,
    next_id: u64,
    spare_asked: bool,
}

pub struct Wal {
    dir: PathBuf,
    /// Entries appended since the last sync, in order.
    pending: Mutex<Vec<u8>>,
    active: Mutex<Active>,
    spare: Arc<Mutex<Option<std::io::Result<Segment>>>>,
}

impl Wal {
    /// Every entry that survives in `dir`, oldest first: `(first_seq, frame)`.
    pub fn read_all(dir: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for id in segment_ids(dir)? {
            let bytes = std::fs::read(segment_path(dir, id))?;
            let mut at = 0;
            while at + HEADER <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
                let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4"));
                let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
                    break;
                };
                if len < 8 || crc32fast::hash(payload) != crc {
                    break;
                }
                let first = u64::from_le_bytes(payload[..8].try_into().expect("8"));
                out.push((first, payload[8..].to_vec()));
                at += HEADER + len;
            }
        }
        Ok(out)
    }

    /// Deletes every segment in `dir` (their entries are in sled, durably); the next sync
    /// starts a fresh one.
    pub fn create(dir: &Path) -> std::io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let old = segment_ids(dir)?;
        let next = old.last().map_or(0, |id| id + 1);
        for id in old {
            std::fs::remove_file(segment_path(dir, id))?;
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            pending: Mutex::new(Vec::new()),
            active: Mutex::new(Active {
                segment: None,
                offset: 0,
                closed: Vec::new(),
                next_id: next,
                spare_asked: false,
            }),
            spare: Arc::new(Mutex::new(None)),
        })
    }

    /// Queues one frame, for the next [`Wal::sync`].
    pub fn append(&self, first_seq: u64, frame: &[u8]) {
        let seq = first_seq.to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq);
        crc.update(frame);
        let mut pending = lock(&self.pending);
        pending.extend_from_slice(&((seq.len() + frame.len()) as u32).to_le_bytes());
        pending.extend_from_slice(&crc.finalize().to_le_bytes());
        pending.extend_from_slice(&seq);
        pending.extend_from_slice(frame);
    }

    /// Writes what was appended before this call and waits until the device holds it.
    pub fn sync(&self) -> std::io::Result<()> {
        let bytes = std::mem::take(&mut *lock(&self.pending));
        if bytes.is_empty() {
            return Ok(());
        }
        let mut active = lock(&self.active);
        let offset = active.offset;
        let fits = |s: &Segment| offset + bytes.len() as u64 <= s.size;
        if !active.segment.as_ref().is_some_and(fits) {
            self.rotate(&mut active, bytes.len() as u64)?;
        }
        let Active {
            segment, offset, ..
        } = &mut *active;
        let segment = segment.as_ref().expect("a segment after rotating");
        segment.file.write_all_at(&bytes, *offset)?;
        *offset += bytes.len() as u64;
        segment.file.sync_data()?;
        let half_full = *offset > segment.size / 2;
        if !active.spare_asked && half_full {
            active.spare_asked = true;
            self.prepare_spare(active.next_id);
        }
        Ok(())
    }

    /// Moves on to the spare segment (or a new one, if the spare is not ready); the first
    /// time, makes the first segment.
    fn rotate(&self, active: &mut Active, need: u64) -> std::io::Result<()> {
        if active.spare_asked {
            // It was asked for half a segment ago; if it is still being made, wait for it
            // rather than make the same file twice.
            let asked = std::time::Instant::now();
            while lock(&self.spare).is_none() && asked.elapsed() < SPARE_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let spare = lock(&self.spare)
            .take()
            .and_then(Result::ok)
            .filter(|s| s.id == active.next_id && s.size >= need);
        let segment = match spare {
            Some(s) => s,
            None => {
                // An unused spare (failed, or too small) must not linger under this id.
                let _ = std::fs::remove_file(segment_path(&self.dir, active.next_id));
                Segment::make(&self.dir, active.next_id, need)?
            }
        };
        if let Some(old) = active.segment.replace(segment) {
            active.closed.push(old.id);
        }
        active.offset = 0;
        active.next_id += 1;
        active.spare_asked = false;
        Ok(())
    }

    fn prepare_spare(&self, id: u64) {
        let (dir, slot) = (self.dir.clone(), self.spare.clone());
        std::thread::Builder::new()
            .name("spg99-wal-spare".into())
            .spawn(move || {
                let made = Segment::make(&dir, id, SEGMENT_SIZE);
                *lock(&slot) = Some(made);
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::warn!(error = %e, "no thread to prepare a WAL segment"));
    }

    /// The segments filled so far: once sled is durable, they are no longer needed.
    pub fn closed(&self) -> Vec<u64> {
        lock(&self.active).closed.clone()
    }

    /// Deletes segments returned by [`Wal::closed`] (their entries are durable in sled).
    pub fn remove(&self, ids: &[u64]) -> std::io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            match std::fs::remove_file(segment_path(&self.dir, *id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        lock(&self.active).closed.retain(|id| !ids.contains(id));
        sync_dir(&self.dir)
    }
}

fn segment_ids(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name
                    .strip_suffix(".wal")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    ids.push(id);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_entries_survive_and_a_torn_tail_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = Wal::create(&dir).unwrap();
        wal.append(1, b"one");
        wal.append(2, b"two");
        wal.sync().unwrap();
        wal.append(3, b"three");
        wal.sync().unwrap();
        // A torn write: a header promising more than was written.
        let path = segment_path(&dir, 0);
        let file = File::options().write(true).open(&path).unwrap();
        let end = (3 * HEADER + 8 * 3 + 3 + 3 + 5) as u64;
        file.write_all_at(&[50, 0, 0, 0, 1, 2, 3, 4, 9], end)
            .unwrap();
        drop(wal);
        let entries = Wal::read_all(&dir).unwrap();
        let got: Vec<(u64, &[u8])> = entries.iter().map(|(s, f)| (*s, f.as_slice())).collect();
        assert_eq!(got, vec![(1, &b"one"[..]), (2, b"two"), (3, b"three")]);
    }

    #[test]
    fn a_full_segment_rotates_and_closed_ones_can_be_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = Wal::create(&dir).unwrap();
        let frame = vec![7u8; 1 << 20];
        for seq in 0..20 {
            wal.append(seq, &frame);
            wal.sync().unwrap();
        }
        let closed = wal.closed();
        assert_eq!(closed, vec![0]);
        assert_eq!(Wal::read_all(&dir).unwrap().len(), 20);
        wal.remove(&closed).unwrap();
        assert!(wal.closed().is_empty());
        let left = Wal::read_all(&dir).unwrap();
        assert_eq!(left.first().map(|e| e.0), Some(15));
        // A new start keeps nothing of the old segments.
        drop(wal);
        let again = Wal::create(&dir).unwrap();
        again.sync().unwrap();
        assert!(Wal::read_all(&dir).unwrap().is_empty());
    }
}

/// Replay against segments nobody wrote: whatever a segment holds, reading gives back only
/// entries whose checksum holds, stopping at the first that does not, and never panics.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn any_segment_reads_as_its_good_prefix(
            good in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..5),
            garbage in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let wal = Wal::create(&dir).unwrap();
            for (i, frame) in good.iter().enumerate() {
                wal.append(i as u64 + 1, frame);
            }
            wal.sync().unwrap();
            drop(wal);
            // Whatever follows the good entries: a torn or foreign tail.
            let end: usize = good.iter().map(|f| HEADER + 8 + f.len()).sum();
            // (With no good entry nothing was synced, and the segment is made here.)
            let file = File::options().write(true).create(true).truncate(false).open(segment_path(&dir, 0)).unwrap();
            file.write_all_at(&garbage, end as u64).unwrap();
            let read = Wal::read_all(&dir).unwrap();
            prop_assert!(read.len() >= good.len());
            for (i, frame) in good.iter().enumerate() {
                prop_assert_eq!(&read[i], &(i as u64 + 1, frame.clone()));
            }
        }

        #[test]
        fn any_file_is_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(segment_path(tmp.path(), 0), &bytes).unwrap();
            let _ = Wal::read_all(tmp.path()).unwrap();
        }
    }
}
