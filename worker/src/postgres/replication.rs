//! Streaming replication between a writer and its standby on another worker: what the standby
//! connects with, and what the writer's side sees of it.
//!
//! The standby is made from the repository (`pgbackrest restore --type=standby`), replays the
//! archived WAL, then streams the rest from the writer as `spg99_replicator` (a password the
//! control plane derives per database, kept in a 0600 password file, never on a command
//! line), under the application name `spg99_s<term>`. The writer's commits wait for it only
//! once the control plane names it in `synchronous_standby_names` (set with ALTER SYSTEM and a
//! reload, never on the command line, which would override it). A [`Sampler`] reads
//! `pg_stat_replication` on the writer a few times a second, off the heartbeat's path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spg99_wire::Replica;

use super::cluster;
use super::process::Owner;

/// How often the writer's replication is read.
const EVERY: Duration = Duration::from_millis(200);
/// A reading older than this is not reported (the writer does not answer).
const FRESH: Duration = Duration::from_millis(1500);

/// The host and port of a writer's address (`host:port`, `[v6]:port`).
fn host_port(upstream: &str) -> Result<(&str, &str), String> {
    let (host, port) = upstream
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| format!("the writer's address {upstream:?} is not host:port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// The `primary_conninfo` of a standby of `term` streaming from `upstream` (`host:port`),
/// its password in `passfile`.
pub fn conninfo(upstream: &str, term: u64, passfile: &Path) -> Result<String, String> {
    let (host, port) = host_port(upstream)?;
    let ok = |v: &str| !v.contains(['\'', '\\', ' ']);
    if !ok(host) || !ok(&passfile.display().to_string()) {
        return Err("the writer's address or the password file holds a quote or a space".into());
    }
    Ok(format!(
        "host={host} port={port} user={} passfile={} application_name={} connect_timeout=2 \
         keepalives_idle=2 keepalives_interval=1 keepalives_count=2",
        cluster::REPLICATOR,
        passfile.display(),
        spg99_wire::standby_name(term)
    ))
}

/// Writes the password file a standby logs in to its writer with (0600, the servers' user's).
pub fn passfile(
    path: &Path,
    upstream: &str,
    password: &str,
    owner: Option<Owner>,
) -> Result<PathBuf, String> {
    cluster::password_ok(password)?;
    let (host, port) = host_port(upstream)?;
    let line = format!(
        "{}:{port}:replication:{}:{password}\n",
        host.replace(':', "\\:"),
        cluster::REPLICATOR
    );
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(o) = owner {
        o.chown(path)?;
    }
    Ok(path.to_owned())
}

/// The standbys as read, and when.
type Sample = Arc<Mutex<Option<(Instant, Vec<Replica>)>>>;

/// Reads a writer's `pg_stat_replication` in a thread of its own until dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    sample: Sample,
}

impl Sampler {
    pub fn start(run_dir: PathBuf, port: u16) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let sample = Arc::new(Mutex::new(None));
        let (s, out) = (stop.clone(), sample.clone());
        std::thread::Builder::new()
            .name(format!("replication-{port}"))
            .spawn(move || {
                let mut client: Option<postgres::Client> = None;
                while !s.load(Ordering::Relaxed) {
                    if client.is_none() {
                        client = cluster::admin(&run_dir, port).ok();
                    }
                    if let Some(c) = client.as_mut() {
                        match read(c) {
                            Ok(replicas) => {
                                *super::lock(&out) = Some((Instant::now(), replicas));
                            }
                            Err(_) => client = None,
                        }
                    }
                    std::thread::sleep(EVERY);
                }
            })
            .expect("a thread");
        Sampler { stop, sample }
    }

    /// The standbys as last read, if that was recent.
    pub fn replicas(&self) -> Vec<Replica> {
        match &*super::lock(&self.sample) {
            Some((at, r)) if at.elapsed() < FRESH => r.clone(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read(c: &mut postgres::Client) -> Result<Vec<Replica>, postgres::Error> {
    let rows = c.query(
        "SELECT application_name, coalesce(state, ''), coalesce(sync_state, ''),
                coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), 0)::int8,
                coalesce((extract(epoch FROM clock_timestamp() - reply_time) * 1000)::int8, 0)
           FROM pg_stat_replication",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            Some(Replica {
                standby_term: spg99_wire::standby_term(&name)?,
                state: r.get(1),
                sync_state: r.get(2),
                lag_bytes: r.get::<_, i64>(3).max(0) as u64,
                reply_age_ms: r.get::<_, i64>(4).max(0) as u64,
            })
        })
        .collect())
}

/// Sets the writer's `synchronous_standby_names` to the standby of `term` (none: commits
/// wait for none), and, for a standby, waits until it is synchronous and holds every commit
/// made before: from then on, every acknowledged commit is on both.
pub fn set_sync(c: &mut postgres::Client, term: Option<u64>, wait: Duration) -> Result<(), String> {
    let sql = |e: postgres::Error| cluster::sql_error(&e);
    match term {
        Some(t) => c.batch_execute(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '\"{}\"'",
            spg99_wire::standby_name(t)
        )),
        None => c.batch_execute("ALTER SYSTEM RESET synchronous_standby_names"),
    }
    .map_err(sql)?;
    c.batch_execute("SELECT pg_reload_conf()").map_err(sql)?;
    let Some(t) = term else {
        return Ok(());
    };
    let name = spg99_wire::standby_name(t);
    let began = Instant::now();
    let mut lsn: Option<String> = None;
    loop {
        let row = c
            .query_opt(
                "SELECT sync_state = 'sync',
                        coalesce(pg_wal_lsn_diff(flush_lsn, coalesce($2::text, '0/0')::pg_lsn) >= 0, false),
                        pg_current_wal_lsn()::text
                   FROM pg_stat_replication WHERE application_name = $1",
                &[&name, &lsn],
            )
            .map_err(sql)?;
        if let Some(row) = row {
            let (sync, caught_up, now): (bool, bool, String) = (row.get(0), row.get(1), row.get(2));
            match (sync, &lsn) {
                (true, Some(_)) if caught_up => return Ok(()),
                // Synchronous from now on: what was committed before is waited for.
                (true, None) => lsn = Some(now),
                _ => {}
            }
        }
        if began.elapsed() > wait {
            return Err(format!(
                "the standby {name} did not become synchronous within {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
