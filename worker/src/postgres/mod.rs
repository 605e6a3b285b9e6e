//! `--compute postgres`: each database's writer is a PostgreSQL server of its own.
//!
//! - **Storage.** One data directory per database, named by its timeline, under
//!   `--storage-dir`; it outlives stops and restarts of the worker, and `destroy` removes it.
//!   A first start copies the worker's template cluster ([`cluster`]). Servers' logs go to
//!   `<storage>/logs/<timeline>.log`.
//! - **Processes.** As root, servers run as the `postgres` system user. Each listens on
//!   `--listen-host` and a port of `--port-range`; the administration socket is in
//!   `<storage>/run`. A server that exits by itself is found at the next heartbeat and
//!   reported. At its start the worker stops every server an earlier process of it left
//!   running (the control plane counts on none of them once this process registers), so no
//!   server outlives its worker for long, and two never run on one data directory
//!   (PostgreSQL's own `postmaster.pid` lock refuses the second anyway).
//! - **Handoff.** A database moves to another profile in place: `prepare` checks that its
//!   writer runs here and the profile exists; `promote` stops the writer with a fast shutdown
//!   (every committed transaction is in its data directory) and starts the same directory,
//!   on the same port, with the new profile's settings ([`settings`]). If the new server does
//!   not start, the old settings start again and `promote` fails: the old writer serves. An
//!   `abort` after a promote goes back to the old settings the same way.
//! - **Load.** At each heartbeat, each serving writer's CPU and client sessions
//!   ([`monitor`]), and, with high availability, its standbys ([`replication`]).
//! - **Standbys.** `prepare` with an upstream makes the database's directory a standby of the
//!   writer on another worker, from the repository; a `start` at the standby's term promotes
//!   it (a failover). `replicate` sets a writer's synchronous standby.

pub mod cluster;
pub mod monitor;
pub mod process;
pub mod replication;
pub mod settings;

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spg99_wire::profiles::{self, Profile};
use tracing::{info, warn};
use uuid::Uuid;

use crate::compute::{Compute, Exited, Measured, Result, Served, WriterSpec};
use crate::storage::{self, Engine, Target};
use cluster::Spares;
use monitor::Monitor;
use process::{Owner, Server, StartError};
use spg99_wire::storage::Storage;
use spg99_wire::{BackupTaken, Stored};

/// How long a writer waits for the standby it is told to wait for to become synchronous.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Ports tried in turn when others take them between their choice and the server's bind.
const PORT_ATTEMPTS: usize = 8;

/// The longest path a Unix socket may have (`sun_path`, with its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

/// Where PostgreSQL's programs are: `given`, else the newest `/usr/lib/postgresql/<v>/bin`,
/// else the `PATH`.
pub fn find_bin(given: Option<&Path>) -> Option<PathBuf> {
    let has = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = given {
        return has(dir).then(|| dir.to_owned());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| has(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(PathBuf::from)
        .find(|dir| has(dir))
}

/// Where the servers' data goes when the storage directory asked for is one the `postgres`
/// user cannot reach (a checkout under a root container's home, which is 0700): a directory
/// of the service's own under it, one per storage directory asked for.
pub const UNREACHABLE_FALLBACK: &str = "/var/lib/spg99";

/// The storage directory to use for `preferred`: itself where the servers' user can reach it
/// (or the worker is not root, and the servers run as the worker's own user); else
/// `/var/lib/spg99/compute-<hash of preferred>`, made for that user, with a symbolic link at
/// `preferred` (when nothing is there yet) so that the data is found from where it was asked
/// for. The same `preferred` gives the same place at every start.
pub fn reachable_storage(preferred: &Path) -> Result<PathBuf> {
    reachable(preferred, "compute", true)
}

/// The same choice for a storage repository's directory (`storage-<hash>`), made by the
/// worker that first uses it: nothing is made here, and no link (a repository is found
/// through the control plane's setting, not by its path).
pub fn reachable_repository(preferred: &Path) -> Result<PathBuf> {
    reachable(preferred, "storage", false)
}

fn reachable(preferred: &Path, kind: &str, make: bool) -> Result<PathBuf> {
    let Some(owner) = Owner::for_servers()? else {
        return Ok(preferred.to_owned());
    };
    std::fs::create_dir_all(preferred.parent().unwrap_or(Path::new("/")))
        .map_err(|e| format!("{}: {e}", preferred.display()))?;
    let absolute =
        std::path::absolute(preferred).map_err(|e| format!("{}: {e}", preferred.display()))?;
    // A link made at an earlier start leads to a reachable place already.
    let existing = absolute.canonicalize().ok();
    let reaches = |dir: &Path| owner.can_reach(dir).is_ok();
    match &existing {
        Some(dir) if reaches(dir) => return Ok(dir.clone()),
        None if absolute.parent().is_some_and(reaches) => return Ok(absolute),
        _ => {}
    }
    let parent = absolute.parent().map_or(absolute.clone(), Path::to_owned);
    let parent = parent.canonicalize().unwrap_or(parent);
    let name = absolute
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let fallback = Path::new(UNREACHABLE_FALLBACK).join(format!(
        "{kind}-{:016x}",
        fnv1a(parent.join(&name).as_os_str().as_encoded_bytes())
    ));
    std::fs::create_dir_all(UNREACHABLE_FALLBACK)
        .map_err(|e| format!("{UNREACHABLE_FALLBACK}: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    // Searchable by the servers' user, listable by root alone.
    std::fs::set_permissions(UNREACHABLE_FALLBACK, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("{UNREACHABLE_FALLBACK}: {e}"))?;
    if !make {
        return Ok(fallback);
    }
    std::fs::create_dir_all(&fallback).map_err(|e| format!("{}: {e}", fallback.display()))?;
    owner.can_reach(&fallback).map_err(|e| {
        format!(
            "{e}; nor can it reach {}, where the data would go instead",
            fallback.display()
        )
    })?;
    if existing.is_none() && std::fs::symlink_metadata(&absolute).is_err() {
        std::os::unix::fs::symlink(&fallback, &absolute).map_err(|e| {
            format!(
                "cannot link {} to {}: {e}",
                absolute.display(),
                fallback.display()
            )
        })?;
    }
    warn!(
        asked = %absolute.display(),
        used = %fallback.display(),
        "the postgres user cannot reach the storage directory asked for (a directory above it \
         is not searchable by it): the servers' data goes to a directory of the service's own"
    );
    Ok(fallback)
}

/// FNV-1a, 64 bits: a hash that never changes between builds (a data directory's storage
/// must be found again after an upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How the driver runs its servers.
#[derive(Debug, Clone)]
pub struct Config {
    pub bin: PathBuf,
    pub storage: PathBuf,
    /// Where servers listen; `advertise` is the host put in their `backend_addr`.
    pub listen_host: String,
    pub advertise_host: String,
    pub ports: (u16, u16),
    /// Data directories copied ahead of time, for fast first starts.
    pub spares: usize,
}

struct Running {
    term: u64,
    profile: String,
    server: Server,
    monitor: Monitor,
    /// The tenant's role (its sessions are the ones counted).
    pg_user: String,
    /// Its port, held for as long as it runs (an in-place restart keeps it).
    port: PortLease,
    /// When its WAL last reached the repository, as far as the worker saw.
    archived: Option<std::time::SystemTime>,
    /// A writer with high availability: what it sees of its standbys.
    repl: Option<replication::Sampler>,
}

/// How a server starts.
enum Launch<'a> {
    /// A writer: with no synchronous standby (a copy from elsewhere may name one), never as a
    /// standby.
    Writer,
    /// The same writer again on its own directory (a handoff): its settings as they are.
    Again,
    /// A standby streaming with this `primary_conninfo`.
    Standby(&'a str),
}

/// A port of the range, held by one server (or one about to start) until dropped.
struct PortLease {
    port: u16,
    taken: Arc<Mutex<BTreeSet<u16>>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        lock(&self.taken).remove(&self.port);
    }
}

/// One database on this worker. Its lock serializes the operations on it.
#[derive(Default)]
struct Slot {
    running: Option<Running>,
    /// A handoff's candidate prepared in place: (term, profile).
    candidate: Option<(u64, String)>,
    /// The writer a promote replaced, (term, profile): an abort goes back to it.
    previous: Option<(u64, String)>,
    /// A standby of the database's writer on another worker.
    standby: Option<Running>,
}

pub struct Postgres {
    config: Config,
    owner: Option<Owner>,
    run_dir: PathBuf,
    logs: PathBuf,
    spares: Arc<Spares>,
    slots: Mutex<HashMap<Uuid, Arc<Mutex<Slot>>>>,
    /// The ports its servers hold.
    ports: Arc<Mutex<BTreeSet<u16>>>,
    /// The repository (set at each registration), if the control plane gave one.
    storage: std::sync::RwLock<Option<Arc<Engine>>>,
    /// The timelines whose stanza this process made (or found) in the repository.
    stanzas: Mutex<std::collections::HashSet<String>>,
    /// The authentication file every server reads.
    hba: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn profile(name: &str) -> Result<&'static Profile> {
    profiles::profile(name).ok_or_else(|| format!("unknown profile {name:?}"))
}

/// The data directory name must be one path segment the control plane made.
fn timeline_ok(timeline: &str) -> Result<()> {
    let ok = !timeline.is_empty()
        && timeline.len() <= 64
        && timeline
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "timeline {timeline:?} is not a data directory name"
        ))
    }
}

impl Postgres {
    /// Prepares the storage, stops what an earlier process left running there, and makes the
    /// template cluster if there is none.
    pub fn new(config: Config) -> Result<Postgres> {
        let owner = Owner::for_servers()?;
        let storage = &config.storage;
        std::fs::create_dir_all(storage).map_err(|e| format!("{}: {e}", storage.display()))?;
        let storage = storage
            .canonicalize()
            .map_err(|e| format!("{}: {e}", storage.display()))?;
        let run_dir = storage.join("run");
        let logs = storage.join("logs");
        if run_dir.join(".s.PGSQL.65535").as_os_str().len() > SOCKET_PATH_MAX {
            return Err(format!(
                "the storage directory {} is too deep for a Unix socket's path (at most {} \
                 bytes with the socket's name); choose a shorter --storage-dir",
                storage.display(),
                SOCKET_PATH_MAX
            ));
        }
        for dir in [&run_dir, &logs] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if let Some(o) = owner {
            for dir in [&storage, &run_dir, &logs] {
                o.chown(dir)?;
            }
            o.can_reach(&storage)?;
        }
        use std::os::unix::fs::PermissionsExt;
        for dir in [&storage, &run_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let config = Config { storage, ..config };
        if let Some((low, high)) = ephemeral_overlap(config.ports) {
            warn!(
                "the port range {}-{} overlaps the kernel's range for outgoing connections \
                 ({low}-{high}, net.ipv4.ip_local_port_range): a port may be taken by a \
                 connection at any moment; choose --port-range outside it",
                config.ports.0, config.ports.1
            );
        }
        stop_leftovers(&config.storage);
        let ports = Arc::default();
        let port = lease_port(&config, &ports)?;
        let template = cluster::template(&config.bin, owner, &config.storage, &run_dir, port.port)?;
        drop(port);
        let hba = config.storage.join("pg_hba.conf");
        cluster::write_owned(&hba, cluster::HBA, owner)?;
        let spares = Spares::start(
            config.storage.join("spares"),
            template,
            owner,
            config.spares,
        )?;
        let driver = Postgres {
            owner,
            run_dir,
            logs,
            spares,
            slots: Mutex::new(HashMap::new()),
            ports,
            config,
            storage: Default::default(),
            stanzas: Default::default(),
            hba,
        };
        info!(
            storage = %driver.config.storage.display(),
            bin = %driver.config.bin.display(),
            "PostgreSQL compute ready"
        );
        Ok(driver)
    }

    /// The repository, if any.
    fn engine(&self) -> Option<Arc<Engine>> {
        self.storage
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn slot(&self, db_id: Uuid) -> Arc<Mutex<Slot>> {
        lock(&self.slots).entry(db_id).or_default().clone()
    }

    fn lease_port(&self) -> Result<PortLease> {
        lease_port(&self.config, &self.ports)
    }

    fn data_dir(&self, timeline: &str) -> PathBuf {
        self.config.storage.join(timeline)
    }

    /// Starts a server on the database's data directory (made from the template at its first
    /// start) with `profile`'s settings, on `port` if it can, else on another port of the
    /// range: a port another process took since it was chosen (the check binds it a moment
    /// before PostgreSQL does) is a reason to try another, not a failed start.
    fn launch(
        &self,
        timeline: &str,
        profile: &Profile,
        port: PortLease,
        how: &Launch<'_>,
    ) -> std::result::Result<(Server, PortLease), (String, PortLease)> {
        let mut port = port;
        let mut taken = Vec::new();
        loop {
            match self.launch_on(timeline, profile, port.port, how) {
                Ok(server) => return Ok((server, port)),
                Err(StartError::PortTaken(p)) if taken.len() < PORT_ATTEMPTS => {
                    warn!(
                        timeline,
                        port = p,
                        "another process took the port; trying another"
                    );
                    // Held until the start succeeds, so that the next choice skips it.
                    match self.lease_port() {
                        Ok(next) => taken.push(std::mem::replace(&mut port, next)),
                        Err(e) => return Err((e, port)),
                    }
                }
                Err(e) => return Err((e.into(), port)),
            }
        }
    }

    fn launch_on(
        &self,
        timeline: &str,
        profile: &Profile,
        port: u16,
        how: &Launch<'_>,
    ) -> std::result::Result<Server, StartError> {
        timeline_ok(timeline).map_err(StartError::Failed)?;
        let dir = self.data_dir(timeline);
        if !dir.exists() {
            let began = std::time::Instant::now();
            let spare = self.spares.take().map_err(StartError::Failed)?;
            cluster::place(&spare, &dir).map_err(StartError::Failed)?;
            tracing::debug!(
                timeline,
                ms = began.elapsed().as_secs_f64() * 1e3,
                "data directory made"
            );
        }
        let mut settings = settings::common();
        settings.extend(settings::for_profile(profile));
        settings.extend([
            ("listen_addresses", self.config.listen_host.clone()),
            (
                "unix_socket_directories",
                self.run_dir.display().to_string(),
            ),
            ("cluster_name", format!("spg99-{timeline}")),
            ("hba_file", self.hba.display().to_string()),
        ]);
        let failed = StartError::Failed;
        match how {
            Launch::Writer => {
                let _ = std::fs::remove_file(dir.join("standby.signal"));
                cluster::set_auto_conf(&dir, "synchronous_standby_names", None, self.owner)
                    .map_err(failed)?;
            }
            Launch::Again => {}
            Launch::Standby(conninfo) => {
                cluster::set_auto_conf(&dir, "synchronous_standby_names", None, self.owner)
                    .map_err(failed)?;
                settings.extend(settings::standby(conninfo));
            }
        }
        let storage = self.engine();
        let env = match &storage {
            Some(engine) => {
                // Its stanza exists before it archives anything (once per timeline and
                // process: a few milliseconds).
                if !lock(&self.stanzas).contains(timeline) {
                    engine
                        .stanza_create(timeline, &dir)
                        .map_err(StartError::Failed)?;
                    lock(&self.stanzas).insert(timeline.to_owned());
                }
                settings.extend(engine.archive_settings(timeline, &dir));
                engine.env()
            }
            None => vec![],
        };
        let log = self.logs.join(format!("{timeline}.log"));
        Server::start(
            &self.config.bin,
            self.owner,
            &dir,
            port,
            &settings,
            &env,
            &log,
        )
    }

    /// The role and database of `writer` on the server at `port`.
    fn admit(&self, port: u16, writer: &WriterSpec) -> Result<()> {
        let mut client = cluster::admin(&self.run_dir, port)?;
        cluster::admit(
            &mut client,
            &writer.database,
            &writer.pg_user,
            &writer.verifier,
        )
    }

    fn served(&self, port: u16) -> Served {
        Served {
            backend_addr: format!("{}:{port}", self.config.advertise_host),
            keeps_data: true,
        }
    }

    fn running(
        &self,
        term: u64,
        profile: &str,
        pg_user: &str,
        server: Server,
        port: PortLease,
    ) -> Running {
        let cluster = server
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let monitor = Monitor::new(server.child.id(), &format!("spg99-{cluster}"), pg_user);
        Running {
            term,
            profile: profile.to_owned(),
            server,
            monitor,
            pg_user: pg_user.to_owned(),
            port,
            archived: None,
            repl: None,
        }
    }

    /// Starts `writer` in `slot`, stopping whatever older writer still runs there.
    fn start_in(&self, slot: &mut Slot, writer: &WriterSpec) -> Result<Served> {
        if let Some(r) = slot.running.as_ref().filter(|r| r.term == writer.term) {
            return Ok(self.served(r.port.port));
        }
        if slot.standby.as_ref().is_some_and(|s| s.term == writer.term) {
            return self.promote_standby(slot, writer);
        }
        if writer.ha.is_some() {
            // A failover's start: only the standby may become the writer (a copy started
            // otherwise would lack what it did not replay, on the old writer's timeline).
            return Err("no standby of this term runs here to become the writer".into());
        }
        if let Some(old) = slot.running.take() {
            warn!(db_id = %writer.db_id, old_term = old.term, "stopping an older writer to start a newer one");
            old.server.stop()?;
        }
        let p = profile(&writer.profile)?;
        cluster::check_role(&writer.database, &writer.pg_user, &writer.verifier)?;
        let began = std::time::Instant::now();
        if let Some(from) = &writer.restore {
            let here = self.data_dir(&writer.timeline).join("PG_VERSION").exists();
            if let Some(parent) = from.parent {
                self.branch(&writer.timeline, parent, from)?;
            } else if !(from.unless_here && here) {
                self.restore(&writer.timeline, from)?;
            }
        }
        let (server, lease) = self
            .launch(&writer.timeline, p, self.lease_port()?, &Launch::Writer)
            .map_err(|(e, _)| e)?;
        let port = lease.port;
        let launched = began.elapsed();
        if let Err(e) = self.admit(port, writer) {
            let _ = server.stop();
            return Err(e);
        }
        tracing::debug!(
            db_id = %writer.db_id,
            launch_ms = launched.as_secs_f64() * 1e3,
            total_ms = began.elapsed().as_secs_f64() * 1e3,
            "writer started"
        );
        slot.running =
            Some(self.running(writer.term, &writer.profile, &writer.pg_user, server, lease));
        slot.candidate = None;
        slot.previous = None;
        Ok(self.served(port))
    }

    /// Stops `old` and starts its directory again on its port (another if that one was taken
    /// meanwhile) with `profile`, as `term`. On failure, nothing runs and the port comes back,
    /// for another start.
    fn restart(
        &self,
        old: Running,
        timeline: &str,
        term: u64,
        profile_name: &str,
    ) -> std::result::Result<Running, (String, PortLease)> {
        let Running {
            server,
            port,
            pg_user,
            ..
        } = old;
        if let Err(e) = server.stop() {
            return Err((e, port));
        }
        let p = match profile(profile_name) {
            Ok(p) => p,
            Err(e) => return Err((e, port)),
        };
        let (server, port) = self.launch(timeline, p, port, &Launch::Again)?;
        Ok(self.running(term, profile_name, &pg_user, server, port))
    }
}

/// A port of the range that no server of this worker holds and nothing else listens on.
fn lease_port(config: &Config, ports: &Arc<Mutex<BTreeSet<u16>>>) -> Result<PortLease> {
    let (low, high) = config.ports;
    let mut taken = lock(ports);
    let port = (low..=high)
        .filter(|p| !taken.contains(p))
        .find(|p| TcpListener::bind((config.listen_host.as_str(), *p)).is_ok())
        .ok_or_else(|| format!("no free port in {low}-{high}"))?;
    taken.insert(port);
    Ok(PortLease {
        port,
        taken: ports.clone(),
    })
}

/// The kernel's range of ports for outgoing connections, when `ports` overlaps it.
fn ephemeral_overlap(ports: (u16, u16)) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (low, high) = (it.next()??, it.next()??);
    (ports.0 <= high && ports.1 >= low).then_some((low, high))
}

/// Stops every server an earlier process of the worker left running in `storage`.
fn stop_leftovers(storage: &Path) {
    let Ok(entries) = std::fs::read_dir(storage) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Some(pid) = process::leftover(&dir) {
            warn!(dir = %dir.display(), pid, "stopping a server an earlier worker left running");
            process::stop_leftover(pid);
        }
    }
}

impl Compute for Postgres {
    fn start(&self, writer: &WriterSpec) -> Result<Served> {
        let slot = self.slot(writer.db_id);
        let mut slot = lock(&slot);
        self.start_in(&mut slot, writer)
    }

    fn set_storage(&self, settings: Option<&Storage>) -> Result<()> {
        let engine = match settings {
            Some(s) => Some(Arc::new(Engine::new(&self.config.storage, self.owner, s)?)),
            None => None,
        };
        *self.storage.write().unwrap_or_else(PoisonError::into_inner) = engine;
        Ok(())
    }

    fn stop(&self, db_id: Uuid, term: u64) -> Result<Option<Stored>> {
        let slot = self.slot(db_id);
        let mut slot = lock(&slot);
        if slot.running.as_ref().is_none_or(|r| r.term != term) {
            return Ok(None);
        }
        let r = slot.running.take().expect("checked");
        let stored = self.engine().map(|engine| self.archive_last(&r, &engine));
        r.server.stop()?;
        Ok(stored)
    }

    fn backup(&self, db_id: Uuid, term: u64) -> Result<BackupTaken> {
        let engine = self
            .engine()
            .ok_or("this worker keeps no data in a repository")?;
        // What the backup needs, read under the database's lock; the backup itself runs
        // without it (a stop meanwhile ends the server, and so the backup, which then fails).
        let (timeline, port) = {
            let slot = self.slot(db_id);
            let slot = lock(&slot);
            let r = slot
                .running
                .as_ref()
                .filter(|r| r.term == term)
                .ok_or("the writer of this term does not run here")?;
            (self.timeline_of(&slot)?, r.port.port)
        };
        let began = std::time::Instant::now();
        let taken = engine.backup(&timeline, &self.data_dir(&timeline), &self.run_dir, port);
        crate::metrics::get()
            .storage
            .get_or_create(&crate::metrics::Op { op: "backup" })
            .observe(began.elapsed().as_secs_f64());
        taken
    }

    fn purge(&self, timeline: &str) -> Result<()> {
        timeline_ok(timeline)?;
        let engine = self
            .engine()
            .ok_or("this worker keeps no data in a repository")?;
        engine.purge(timeline, &self.data_dir(timeline))?;
        lock(&self.stanzas).remove(timeline);
        Ok(())
    }

    fn prepare(&self, writer: &WriterSpec) -> Result<()> {
        let slot = self.slot(writer.db_id);
        let mut slot = lock(&slot);
        profile(&writer.profile)?;
        if let Some(upstream) = writer.ha.as_ref().and_then(|h| h.upstream.as_deref()) {
            return self.prepare_standby(&mut slot, writer, upstream);
        }
        if slot.running.is_none() {
            return Err(
                "no writer of this database runs on this worker: a handoff moves a database in \
                 place, on the worker that holds its data"
                    .into(),
            );
        }
        slot.candidate = Some((writer.term, writer.profile.clone()));
        Ok(())
    }

    fn promote(&self, writer: &WriterSpec) -> Result<Served> {
        let slot = self.slot(writer.db_id);
        let mut slot = lock(&slot);
        if let Some(r) = slot.running.as_ref().filter(|r| r.term == writer.term) {
            return Ok(self.served(r.port.port));
        }
        if slot.candidate.take().map(|c| c.0) != Some(writer.term) {
            return Err("no candidate prepared at this term".into());
        }
        let old = slot
            .running
            .take()
            .ok_or("the writer to hand off from no longer runs")?;
        let (old_term, old_profile) = (old.term, old.profile.clone());
        match self.restart(old, &writer.timeline, writer.term, &writer.profile) {
            Ok(r) => {
                let port = r.port.port;
                slot.running = Some(r);
                slot.previous = Some((old_term, old_profile));
                self.admit(port, writer)?;
                Ok(self.served(port))
            }
            Err((e, lease)) => {
                // The old settings again, on the same port, so that the old writer serves.
                let back = match profile(&old_profile) {
                    Ok(p) => self
                        .launch(&writer.timeline, p, lease, &Launch::Again)
                        .map_err(|(e, _)| e),
                    Err(e) => Err(e),
                };
                match back {
                    Ok((server, lease)) => {
                        slot.running = Some(self.running(
                            old_term,
                            &old_profile,
                            &writer.pg_user,
                            server,
                            lease,
                        ));
                        Err(format!(
                            "the {} settings did not start: {e}; the old writer serves again",
                            writer.profile
                        ))
                    }
                    Err(again) => Err(format!(
                        "the {} settings did not start: {e}; the old ones did not either: {again}",
                        writer.profile
                    )),
                }
            }
        }
    }

    fn abort(&self, db_id: Uuid, term: u64) -> Result<()> {
        let slot = self.slot(db_id);
        let mut slot = lock(&slot);
        if let Some(s) = slot.standby.take_if(|s| s.term == term) {
            s.server.stop()?;
            return Ok(());
        }
        if slot.candidate.as_ref().is_some_and(|c| c.0 == term) {
            slot.candidate = None;
        }
        let promoted = slot.running.as_ref().is_some_and(|r| r.term == term);
        if let (true, Some((old_term, old_profile))) = (promoted, slot.previous.take()) {
            let timeline = self.timeline_of(&slot)?;
            let r = slot.running.take().expect("checked");
            let back = self
                .restart(r, &timeline, old_term, &old_profile)
                .map_err(|(e, _)| e)?;
            slot.running = Some(back);
        }
        Ok(())
    }

    fn destroy(&self, db_id: Uuid, timeline: &str) -> Result<()> {
        timeline_ok(timeline)?;
        let slot = self.slot(db_id);
        let mut slot = lock(&slot);
        for r in [slot.running.take(), slot.standby.take()]
            .into_iter()
            .flatten()
        {
            r.server.stop()?;
        }
        let dir = self.data_dir(timeline);
        for path in [dir.clone(), dir.with_extension("partial")] {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
            }
        }
        let _ = std::fs::remove_file(self.logs.join(format!("{timeline}.log")));
        // A standby's password file, if it was one here.
        let _ = std::fs::remove_file(self.run_dir.join(format!("{timeline}.pgpass")));
        drop(slot);
        lock(&self.slots).remove(&db_id);
        info!(%db_id, timeline, "data removed");
        Ok(())
    }

    fn update_role(&self, writer: &WriterSpec) -> Result<()> {
        let slot = self.slot(writer.db_id);
        let slot = lock(&slot);
        let port = slot
            .running
            .as_ref()
            .filter(|r| r.term == writer.term)
            .map(|r| r.port.port)
            .ok_or("the writer of this term does not run here")?;
        self.admit(port, writer)
    }

    fn replicate(&self, writer: &WriterSpec) -> Result<()> {
        let ha = writer
            .ha
            .as_ref()
            .ok_or("the instruction says nothing of replication")?;
        let port = {
            let slot = self.slot(writer.db_id);
            let mut slot = lock(&slot);
            let r = slot
                .running
                .as_mut()
                .filter(|r| r.term == writer.term)
                .ok_or("the writer of this term does not run here")?;
            let port = r.port.port;
            r.repl
                .get_or_insert_with(|| replication::Sampler::start(self.run_dir.clone(), port));
            port
        };
        let mut client = cluster::admin(&self.run_dir, port)?;
        cluster::replicator(&mut client, &ha.replication_password)?;
        replication::set_sync(&mut client, ha.sync_standby_term, SYNC_WAIT)?;
        info!(
            db_id = %writer.db_id,
            writer_term = writer.term,
            standby_term = ?ha.sync_standby_term,
            "replication set"
        );
        Ok(())
    }

    fn load(&self, serving: &[(Uuid, u64)]) -> (Vec<Measured>, Vec<Exited>) {
        let mut measured = Vec::new();
        let mut exited = Vec::new();
        let engine = self.engine();
        for &(db_id, term) in serving {
            let slot = self.slot(db_id);
            // A database busy with an operation reports its load next time.
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let Some(r) = slot.running.as_mut().filter(|r| r.term == term) else {
                continue;
            };
            if let Some(reason) = r.server.exited() {
                slot.running = None;
                exited.push(Exited {
                    db_id,
                    term,
                    reason,
                });
                continue;
            }
            let vcpu = profile(&r.profile).map_or(1.0, |p| f64::from(p.vcpu));
            let (cpu, sessions) = r.monitor.sample(vcpu);
            let archive = engine.as_ref().map(|engine| {
                let timeline = r
                    .server
                    .dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                let (archiving, archived) = storage::archive::status(
                    &r.server.dir,
                    &engine.outcomes(&timeline),
                    std::time::SystemTime::now(),
                    r.archived,
                );
                r.archived = archived;
                archiving
            });
            measured.push(Measured {
                db_id,
                cpu,
                sessions,
                archive,
                replicas: r.repl.as_ref().map(|s| s.replicas()).unwrap_or_default(),
            });
        }
        (measured, exited)
    }

    /// The worker's shutdown: every writer stops as a stop does, its last WAL archived first
    /// when there is a repository (all of them side by side).
    fn stop_all(&self) {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        let engine = self.engine();
        std::thread::scope(|scope| {
            for slot in &slots {
                let engine = engine.clone();
                scope.spawn(move || {
                    let mut slot = lock(slot);
                    if let Some(r) = slot.running.take() {
                        if let Some(engine) = engine {
                            let stored = self.archive_last(&r, &engine);
                            if let Some(why) = stored.reason.filter(|_| !stored.complete) {
                                warn!(reason = %why, "a writer stopped before its last WAL was archived");
                            }
                        }
                        if let Err(e) = r.server.stop() {
                            warn!(error = %e, "stopping a writer");
                        }
                    }
                    if let Some(s) = slot.standby.take() {
                        if let Err(e) = s.server.stop() {
                            warn!(error = %e, "stopping a standby");
                        }
                    }
                    slot.candidate = None;
                    slot.previous = None;
                });
            }
        });
    }

    fn keeps_data(&self) -> bool {
        true
    }
}

impl Postgres {
    /// Makes `timeline`'s data directory from the repository: `from` as of its target, onto
    /// the copy already there (`--delta`: only what differs is fetched) or into an empty one.
    fn restore(&self, timeline: &str, from: &spg99_wire::RestoreFrom) -> Result<()> {
        self.restore_as(timeline, &from.timeline, &Target::of(from))
    }

    /// [`Postgres::restore`] of the timeline `from` to `target` (a standby's included).
    fn restore_as(&self, timeline: &str, from: &str, target: &Target) -> Result<()> {
        timeline_ok(timeline)?;
        timeline_ok(from)?;
        let engine = self
            .engine()
            .ok_or("the database is to be restored, and this worker has no repository")?;
        let dir = self.data_dir(timeline);
        let delta = dir.join("PG_VERSION").exists();
        if !delta {
            let _ = std::fs::remove_dir_all(&dir);
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(o) = self.owner {
                o.chown(&dir)?;
            }
        }
        let began = std::time::Instant::now();
        let restored = engine.restore(from, target, &dir, delta);
        crate::metrics::get()
            .storage
            .get_or_create(&crate::metrics::Op { op: "restore" })
            .observe(began.elapsed().as_secs_f64());
        info!(
            timeline,
            from,
            ?target,
            delta,
            ms = began.elapsed().as_secs_f64() * 1e3,
            "data directory restored from the repository"
        );
        restored
    }

    /// Makes a branch's data directory `timeline` from its parent (`parent`), whose newest
    /// copy is on this worker (`from.timeline`): with no point, a copy of it (reflinks where
    /// the filesystem shares blocks: the cost does not grow with its size), through the backup
    /// API while it serves, directly while it is stopped (its operations wait meanwhile);
    /// with a point, the parent's WAL up to now archived first (it serves here), then a
    /// restore from the repository.
    fn branch(&self, timeline: &str, parent: Uuid, from: &spg99_wire::RestoreFrom) -> Result<()> {
        timeline_ok(timeline)?;
        timeline_ok(&from.timeline)?;
        let slot = self.slot(parent);
        let slot = lock(&slot);
        let running = slot
            .running
            .as_ref()
            .filter(|_| self.timeline_of(&slot).ok().as_deref() == Some(from.timeline.as_str()));
        let repository = spg99_wire::RestoreFrom {
            parent: None,
            ..from.clone()
        };
        if from.time.is_some() || from.lsn.is_some() {
            if let Some(r) = running {
                let engine = self
                    .engine()
                    .ok_or("a branch at a point in time needs a repository")?;
                let mut client = cluster::admin(&self.run_dir, r.port.port)?;
                archive_now(&mut client, &engine)?;
            }
            drop(slot);
            return self.restore(timeline, &repository);
        }
        let source = self.data_dir(&from.timeline);
        if running.is_none() && !source.join("PG_VERSION").exists() {
            drop(slot);
            return self.restore(timeline, &repository);
        }
        let dir = self.data_dir(timeline);
        let _ = std::fs::remove_dir_all(&dir);
        let began = std::time::Instant::now();
        let made = match running {
            Some(r) => self.copy_serving(&source, &dir, r.port.port),
            None => cluster::copy_dir(&source, &dir, &[]),
        };
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot copy the parent's data: {e}"));
        }
        crate::metrics::get()
            .storage
            .get_or_create(&crate::metrics::Op { op: "branch_copy" })
            .observe(began.elapsed().as_secs_f64());
        info!(
            timeline,
            from = %from.timeline,
            serving = running.is_some(),
            ms = began.elapsed().as_secs_f64() * 1e3,
            "branch copied from its parent"
        );
        Ok(())
    }

    /// A copy of the serving server's data directory `source` (on `port`) into `dir` through
    /// the backup API, in one session: `pg_backup_start`, the files copied but the WAL,
    /// `pg_backup_stop`, its `backup_label` written, then the WAL from the backup's start,
    /// which reaches past its end. The copy's server replays it at its start and is
    /// consistent. A temporary replication slot of the session keeps that WAL from being
    /// recycled by a checkpoint until it is copied.
    fn copy_serving(&self, source: &Path, dir: &Path, port: u16) -> Result<()> {
        let sql = |e: postgres::Error| cluster::sql_error(&e);
        let mut client = cluster::admin(&self.run_dir, port)?;
        client
            .batch_execute(
                "SELECT pg_create_physical_replication_slot('spg99_branch_' || pg_backend_pid(), \
                 true, true); \
                 SELECT pg_backup_start('spg99 branch', true)",
            )
            .map_err(sql)?;
        let copied = cluster::copy_dir(
            source,
            dir,
            &["pg_wal", "postmaster.pid", "postmaster.opts"],
        );
        let stopped = client
            .query_one(
                "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)",
                &[],
            )
            .map_err(sql);
        copied?;
        let row = stopped?;
        let (label, map): (String, String) = (row.get(0), row.get(1));
        cluster::write_owned(&dir.join("backup_label"), &label, self.owner)?;
        if !map.is_empty() {
            cluster::write_owned(&dir.join("tablespace_map"), &map, self.owner)?;
        }
        // "START WAL LOCATION: 0/4000028 (file 000000010000000000000004)"
        let start = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
            .and_then(|l| l.split("(file ").nth(1))
            .map(|f| f.trim_end_matches(')').to_owned())
            .ok_or("the backup label names no start WAL file")?;
        cluster::copy_wal(&source.join("pg_wal"), &dir.join("pg_wal"), &start)?;
        drop(client);
        Ok(())
    }

    /// Before a writer stops, with a repository: no new transaction, its sessions ended, its
    /// current WAL segment switched and archived, so that the repository holds everything it
    /// wrote ("stop means stored"). A server's clean shutdown would not archive its last,
    /// partial segment. Bounded: past twice the archive timeout and thirty seconds more the stop
    /// goes on, said incomplete with the reason (the copy on this worker still holds it all).
    fn archive_last(&self, r: &Running, engine: &Engine) -> Stored {
        let incomplete = |reason: String| Stored {
            complete: false,
            recoverable_until: r
                .archived
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| storage::rfc3339(d.as_secs() as i64)),
            reason: Some(reason),
        };
        let mut client = match cluster::admin(&self.run_dir, r.port.port) {
            Ok(c) => c,
            Err(e) => return incomplete(e),
        };
        let sql = |e: postgres::Error| cluster::sql_error(&e);
        // New sessions of the tenant's role are read-only: a setting of the role's own, which
        // (unlike ALTER SYSTEM, below the command line's `default_transaction_read_only=off`)
        // takes effect; the next start's admission resets it. Then the tenant's sessions end
        // (not the administration's: a backup may be under way).
        // (One statement at a time: each in its own transaction.)
        let read_only = format!(
            "DO $spg99$ BEGIN
               EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', '{}');
             END $spg99$",
            r.pg_user.replace('\'', "''")
        );
        let quiet = client
            .batch_execute(&read_only)
            .and_then(|()| {
                client.batch_execute(
                    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
                       JOIN pg_roles r ON r.oid = a.usesysid
                      WHERE a.backend_type = 'client backend' AND NOT r.rolsuper",
                )
            })
            .map_err(sql);
        if let Err(e) = quiet {
            return incomplete(format!("cannot switch the WAL: {e}"));
        }
        match archive_now(&mut client, engine) {
            Ok(at) => Stored {
                complete: true,
                recoverable_until: Some(storage::rfc3339(at)),
                reason: None,
            },
            Err(e) => incomplete(e),
        }
    }

    /// Makes `writer.timeline` here a standby of the writer at `upstream`: from the repository
    /// (onto a copy already here, only what differs), streaming once it replayed what the
    /// repository holds.
    fn prepare_standby(&self, slot: &mut Slot, writer: &WriterSpec, upstream: &str) -> Result<()> {
        if slot.standby.as_ref().is_some_and(|s| s.term == writer.term) {
            return Ok(());
        }
        if let Some(old) = slot.standby.take() {
            old.server.stop()?;
        }
        if slot.running.is_some() {
            return Err("a writer of this database runs on this worker: no standby here".into());
        }
        let ha = writer.ha.as_ref().ok_or("no replication settings")?;
        let p = profile(&writer.profile)?;
        let began = std::time::Instant::now();
        self.restore_as(&writer.timeline, &writer.timeline, &Target::Standby)?;
        let passfile = replication::passfile(
            &self.run_dir.join(format!("{}.pgpass", writer.timeline)),
            upstream,
            &ha.replication_password,
            self.owner,
        )?;
        let conninfo = replication::conninfo(upstream, writer.term, &passfile)?;
        let (server, lease) = self
            .launch(
                &writer.timeline,
                p,
                self.lease_port()?,
                &Launch::Standby(&conninfo),
            )
            .map_err(|(e, _)| e)?;
        info!(
            db_id = %writer.db_id,
            standby_term = writer.term,
            %upstream,
            ms = began.elapsed().as_secs_f64() * 1e3,
            "standby started"
        );
        slot.standby =
            Some(self.running(writer.term, &writer.profile, &writer.pg_user, server, lease));
        Ok(())
    }

    /// A failover: the standby of `writer.term` becomes the writer, on its port.
    fn promote_standby(&self, slot: &mut Slot, writer: &WriterSpec) -> Result<Served> {
        cluster::check_role(&writer.database, &writer.pg_user, &writer.verifier)?;
        if let Some(old) = slot.running.take() {
            old.server.stop()?;
        }
        let mut s = slot.standby.take().expect("checked");
        let began = std::time::Instant::now();
        if let Err(e) = s.server.promote() {
            let _ = s.server.stop();
            return Err(format!("the standby did not promote: {e}"));
        }
        let port = s.port.port;
        if let Err(e) = self.admit(port, writer) {
            let _ = s.server.stop();
            return Err(e);
        }
        info!(
            db_id = %writer.db_id,
            writer_term = writer.term,
            ms = began.elapsed().as_secs_f64() * 1e3,
            "standby promoted"
        );
        s.pg_user = writer.pg_user.clone();
        slot.running = Some(s);
        slot.candidate = None;
        slot.previous = None;
        Ok(self.served(port))
    }

    /// The timeline a slot's running server serves (its data directory's name).
    fn timeline_of(&self, slot: &Slot) -> Result<String> {
        slot.running
            .as_ref()
            .and_then(|r| r.server.dir.file_name()?.to_str().map(str::to_owned))
            .ok_or_else(|| "no writer of this database runs here".to_owned())
    }
}

/// Makes the repository hold everything the server of `client` committed up to now: a
/// transaction of its own commits (a restore to any point up to now stops at a commit after
/// it: recovery to a time ends with an error if no commit follows it), its WAL segment is
/// switched, and the archiver is waited for. Bounded: twice the archive timeout and thirty
/// seconds more. Returns when the last segment reached the repository (seconds since the
/// epoch).
fn archive_now(client: &mut postgres::Client, engine: &Engine) -> Result<i64> {
    let sql = |e: postgres::Error| cluster::sql_error(&e);
    let segment: String = client
        .batch_execute(
            "BEGIN; SET LOCAL transaction_read_only = off; SELECT pg_current_xact_id(); COMMIT",
        )
        .and_then(|()| client.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]))
        .map(|row| row.get(0))
        .map_err(|e| format!("cannot switch the WAL: {}", sql(e)))?;
    let began = std::time::Instant::now();
    let patience = std::time::Duration::from_secs(engine.settings.archive_timeout_secs * 2 + 30);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''),
                        coalesce(extract(epoch from last_archived_time)::bigint, 0),
                        coalesce(last_failed_wal, '')
                   FROM pg_stat_archiver",
                &[],
            )
            .map_err(|e| format!("cannot read the archiver: {}", sql(e)))?;
        let (archived, at, failed): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        // Segment names order by timeline, then position.
        if !archived.is_empty() && archived >= segment {
            crate::metrics::get()
                .storage
                .get_or_create(&crate::metrics::Op {
                    op: "final_archive",
                })
                .observe(began.elapsed().as_secs_f64());
            return Ok(at);
        }
        if began.elapsed() > patience {
            let last = if failed.is_empty() {
                String::new()
            } else {
                format!("; the last push that failed was {failed}, see the worker's pgBackRest log")
            };
            return Err(format!(
                "the last WAL ({segment}) did not reach the repository within {} s{last}; \
                 the data is complete on this worker only",
                patience.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port another process took between its choice (the check binds it a moment before)
    /// and the server's own bind: a real PostgreSQL refuses it, and the driver starts the
    /// server on another port of its range instead of failing the start.
    #[test]
    fn a_port_taken_after_it_was_chosen_moves_the_server_to_another() {
        use std::os::unix::fs::PermissionsExt;
        let bin = find_bin(None).expect("PostgreSQL is installed (scripts/install-engines.sh)");
        let tmp = tempfile::tempdir().unwrap();
        // The postgres user must reach the storage (a temporary directory is 0700).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (low, high) = (31_500, 31_540);
        let driver = Postgres::new(Config {
            bin,
            storage: tmp.path().join("storage"),
            listen_host: "127.0.0.1".into(),
            advertise_host: "127.0.0.1".into(),
            ports: (low, high),
            spares: 0,
        })
        .unwrap();
        // Another process listens on a port of the range ...
        let held = (low..=high)
            .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .expect("a free port in the range");
        let taken = held.local_addr().unwrap().port();
        // ... that the driver chose just before (as if the check had run a moment earlier).
        lock(&driver.ports).insert(taken);
        let chosen = PortLease {
            port: taken,
            taken: driver.ports.clone(),
        };
        let p = profiles::profile("c0.25").unwrap();
        let refused = driver.launch_on("race", p, taken, &Launch::Writer).err();
        assert_eq!(refused, Some(StartError::PortTaken(taken)));
        let (server, lease) = driver
            .launch("race", p, chosen, &Launch::Writer)
            .map_err(|(e, _)| e)
            .expect("the server starts on another port");
        assert_ne!(lease.port, taken);
        assert!((low..=high).contains(&lease.port));
        assert!(std::net::TcpStream::connect(("127.0.0.1", lease.port)).is_ok());
        server.stop().unwrap();
        // Only the port the server holds stays taken.
        assert_eq!(*lock(&driver.ports), BTreeSet::from([lease.port]));
    }
}
