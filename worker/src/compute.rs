//! The compute driver: what runs a database's writer. The agent ([`crate::agent`]) speaks
//! the control plane's protocol and keeps the books (which writer is at which term, what was
//! reported); a [`Compute`] does the work: [`crate::postgres`] runs PostgreSQL,
//! [`crate::simulated`] pretends, with delays and failures on request.
//!
//! Calls for one database never overlap: the agent runs each instruction in its own thread,
//! but a driver serializes the calls that touch the same database.

use spg99_wire::storage::Storage;
use spg99_wire::{Archiving, BackupTaken, HaSpec, Replica, RestoreFrom, Stored};
use uuid::Uuid;

/// A writer to start, prepare or promote: everything the instruction says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSpec {
    pub db_id: Uuid,
    pub term: u64,
    pub profile: String,
    /// The data directory's name on the worker's storage.
    pub timeline: String,
    /// The database's name, its owner's role, and the role's SCRAM-SHA-256 verifier.
    pub database: String,
    pub pg_user: String,
    pub verifier: String,
    /// Make the data directory from the repository first.
    pub restore: Option<RestoreFrom>,
    /// High availability: a standby to prepare (`upstream` set), a writer's replication.
    pub ha: Option<Box<HaSpec>>,
}

/// A writer that serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Where clients (the Gateway) reach it: `host:port`.
    pub backend_addr: String,
    /// Its data lives on this worker's own storage.
    pub keeps_data: bool,
}

/// What a driver measured of one serving writer.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub db_id: Uuid,
    /// Fraction of the profile's vCPUs in use.
    pub cpu: f64,
    pub sessions: u32,
    /// With a repository: how its archiving goes.
    pub archive: Option<Archiving>,
    /// With high availability: its standbys.
    pub replicas: Vec<Replica>,
}

/// A serving writer that stopped by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub db_id: Uuid,
    pub term: u64,
    pub reason: String,
}

pub type Result<T> = std::result::Result<T, String>;

pub trait Compute: Send + Sync + 'static {
    /// Keeps data in `storage`'s repository from now on (`None`: in none); set at each
    /// registration. An error: the repository cannot be used.
    fn set_storage(&self, storage: Option<&Storage>) -> Result<()> {
        let _ = storage;
        Ok(())
    }
    /// Starts the writer; `Ok` once it accepts connections.
    fn start(&self, writer: &WriterSpec) -> Result<Served>;
    /// Stops the writer of `term` (nothing if that term no longer runs here), keeping every
    /// committed transaction; with a repository, its last WAL archived first (what it left
    /// there).
    fn stop(&self, db_id: Uuid, term: u64) -> Result<Option<Stored>>;
    /// A full backup of the serving writer of `term` into the repository.
    fn backup(&self, db_id: Uuid, term: u64) -> Result<BackupTaken> {
        let _ = (db_id, term);
        Err("this worker keeps no data in a repository".into())
    }
    /// Removes the timeline's data from the repository.
    fn purge(&self, timeline: &str) -> Result<()> {
        let _ = timeline;
        Err("this worker keeps no data in a repository".into())
    }
    /// Prepares a candidate writer for a handoff to `writer.profile`; with `writer.ha`'s
    /// `upstream`, a standby streaming from that writer (a start at its term promotes it).
    fn prepare(&self, writer: &WriterSpec) -> Result<()>;
    /// Makes the prepared candidate the writer. On failure the old writer serves again.
    fn promote(&self, writer: &WriterSpec) -> Result<Served>;
    /// Sets the serving writer's replication as `writer.ha` says: standbys may log in, and
    /// its commits wait for the standby named (once it confirms every earlier commit).
    fn replicate(&self, writer: &WriterSpec) -> Result<()> {
        let _ = writer;
        Err("this worker runs no standbys".into())
    }
    /// Drops the candidate of `term`; the old writer keeps (or goes back to) serving.
    fn abort(&self, db_id: Uuid, term: u64) -> Result<()>;
    /// Removes this worker's copy of the database's data.
    fn destroy(&self, db_id: Uuid, timeline: &str) -> Result<()>;
    /// Gives the serving writer's role `writer.verifier` (a password reset).
    fn update_role(&self, writer: &WriterSpec) -> Result<()>;
    /// The load of each serving writer (`db_id`, `term`); those found dead come back as
    /// exits and are no longer served.
    fn load(&self, serving: &[(Uuid, u64)]) -> (Vec<Measured>, Vec<Exited>);
    /// Stops every writer (the control plane no longer counts on any of them).
    fn stop_all(&self);
    /// Whether writers keep their data on this worker's storage.
    fn keeps_data(&self) -> bool;
}
