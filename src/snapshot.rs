//! Snapshots of the read models, so that start-up replays only the log's tail.
//!
//! A snapshot is a file `snapshots/<seq>.snap` in the data directory:
//!
//! ```text
//! "SPG99SNP" ‖ version: u8 ‖ seq: u64 LE ‖ bincode 2 of State ‖ crc32 (of all before it), LE
//! ```
//!
//! The state's encoding is the same canonical one the fingerprint hashes, so a snapshot's
//! fingerprint can be compared with a replay's. Snapshots are an optimisation, never a
//! source of truth: one that is torn, corrupt, of another version or ahead of the log is
//! skipped with a warning, and start-up falls back to an older one or to a full replay.
//!
//! The snapshotter is a background task that takes the readers' current version of the state
//! (a version no later commit changes: the maps are persistent, so holding it blocks no one and
//! costs only what later versions stop sharing), encodes it on a blocking thread and writes the
//! bytes. It writes every `every_events` events or `every` time, whichever comes first, to a
//! temporary file that is synced and then renamed, and keeps the newest two.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg99_projections::State;

use crate::committer::Shared;

const MAGIC: &[u8; 8] = b"SPG99SNP";
/// The encoding of [`State`]: bumped whenever its shape changes, so that a snapshot of an
/// older shape is skipped (and the log replayed) rather than misread. 2: the lifecycle
/// (workers, leases, writers, handoffs, usage). 3: tenants' verifiers, where each database's
/// data lives, and stale copies. 4: which credentials a tenant and each writer's role have.
/// 5: storage and restores. 6: the last restore done. 7: branches. 8: resets.
const VERSION: u8 = 10;
const KEEP: usize = 2;
pub const DIR: &str = "snapshots";

/// When to write a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub every_events: u64,
    pub every: Duration,
}

fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// Encodes `state` as a snapshot file's bytes.
pub fn encode(state: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&state.last_seq.to_le_bytes());
    bincode::serde::encode_into_std_write(state, &mut out, bincode::config::standard())
        .expect("encoding the state into memory cannot fail");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot file's bytes; the reason when it cannot be trusted.
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let header = MAGIC.len() + 1 + 8;
    if bytes.len() < header + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a snapshot file".into());
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(format!(
            "snapshot format version {version}, this build reads {VERSION}"
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let seq = u64::from_le_bytes(body[MAGIC.len() + 1..header].try_into().expect("8 bytes"));
    let (state, used): (State, usize) =
        bincode::serde::decode_from_slice(&body[header..], bincode::config::standard())
            .map_err(|e| format!("payload does not decode: {e}"))?;
    if used != body.len() - header || state.last_seq != seq {
        return Err("payload does not match its header".into());
    }
    Ok(state)
}

/// Snapshot files, newest first, with their seq.
fn list(data_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(snapshot_dir(data_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let seq = path
                .file_name()?
                .to_str()?
                .strip_suffix(".snap")?
                .parse()
                .ok()?;
            Some((seq, path))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// The newest valid snapshot at or below `max_seq`; invalid ones are skipped with a warning.
/// Newer ones are skipped in silence: asking for an older point of the log is normal (time
/// travel); a snapshot ahead of the log's head is what start-up warns of ([`ahead_of`]).
pub fn load(data_dir: &Path, max_seq: u64) -> Option<State> {
    for (seq, path) in list(data_dir) {
        if seq > max_seq {
            continue;
        }
        let result = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b));
        match result {
            Ok(state) => return Some(state),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "snapshot cannot be trusted; skipped")
            }
        }
    }
    None
}

/// Snapshots of seqs past `head`: they describe a log longer than this one (a log restored
/// from an older copy, say), and are never used.
pub fn ahead_of(data_dir: &Path, head: u64) -> Vec<PathBuf> {
    list(data_dir)
        .into_iter()
        .filter(|(seq, _)| *seq > head)
        .map(|(_, path)| path)
        .collect()
}

/// Writes a snapshot durably and keeps only the newest few.
pub fn write(data_dir: &Path, state: &State) -> std::io::Result<PathBuf> {
    write_encoded(data_dir, state.last_seq, &encode(state))
}

/// Writes the encoded snapshot of the state at `seq` durably and keeps only the newest few.
fn write_encoded(data_dir: &Path, seq: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = snapshot_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{seq:020}.snap"));
    let tmp = dir.join(format!("{seq:020}.snap.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(&dir)?.sync_all()?;
    for (_, old) in list(data_dir).into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// The snapshotter: follows the log from `state` and writes snapshots by `policy`.
pub async fn run(shared: Arc<Shared>, data_dir: PathBuf, policy: Policy, mut last_written: u64) {
    use tokio::sync::broadcast::error::RecvError;
    // Woken by each durable batch (only to look at the head: nothing of it is kept), or by
    // the time limit.
    let mut feed = shared.subscribe();
    let mut since = Instant::now();
    loop {
        tokio::select! {
            batch = feed.recv() => if let Err(RecvError::Closed) = batch { return },
            _ = tokio::time::sleep(policy.every) => {}
        }
        let pending = shared.head().saturating_sub(last_written);
        let due =
            pending >= policy.every_events || (pending > 0 && since.elapsed() >= policy.every);
        if !due {
            continue;
        }
        let state = shared.read();
        let seq = state.last_seq;
        let dir = data_dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let bytes = encode(&state);
            let encoding = began.elapsed();
            drop(state);
            write_encoded(&dir, seq, &bytes).map(|path| (path, encoding))
        })
        .await;
        let Ok(result) = written else { return };
        match result {
            Ok((path, encoding)) => {
                tracing::info!(seq, path = %path.display(), encode_ms = encoding.as_millis() as u64, "snapshot written");
                last_written = seq;
            }
            Err(e) => tracing::warn!(error = %e, "snapshot not written"),
        }
        since = Instant::now();
    }
}
