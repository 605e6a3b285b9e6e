//! Data directories: the template cluster a worker makes once, the copy each database starts
//! from, and the administration a writer needs at each start (its role, its database).
//!
//! The template is `initdb` once (~0.4–1 s here), then started once to make the database
//! every copy renames (`spg99_app`) and to take `CONNECT` from `PUBLIC` on every database, and
//! stopped. A database's first start copies it (tens of milliseconds for its ~45 MB) instead of
//! running `initdb`, then syncs the filesystem, so that a crash cannot leave a half-written
//! cluster. Administration goes over the Unix socket, which lives in a directory only the
//! worker and the `postgres` user reach, with `trust` for the `postgres` role alone; clients
//! log in over TCP with SCRAM-SHA-256.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::postgres::process::{self, Owner, Server};

/// The database every copy starts with, renamed to the API's name at the first start.
pub const SEED_DB: &str = "spg99_app";
const READY_MARK: &str = "spg99-template.ready";

/// The role standbys stream from a writer as (its password is the control plane's, per
/// database).
pub const REPLICATOR: &str = "spg99_replicator";

/// What every server of a worker authenticates by (`hba_file`, one file for all: data
/// directories made by earlier versions, restored or copied, all take it).
pub const HBA: &str = "\
# SPG99: the worker administers over the Unix socket (in a directory only it and the postgres
# user reach); clients log in over TCP with SCRAM-SHA-256, each tenant's role to its database;
# standbys stream as spg99_replicator, with the password the control plane gives the database.
local   all           postgres                         trust
host    all           all                0.0.0.0/0     scram-sha-256
host    all           all                ::/0          scram-sha-256
host    replication   spg99_replicator   0.0.0.0/0     scram-sha-256
host    replication   spg99_replicator   ::/0          scram-sha-256
";

/// Sets `name` in `dir`'s `postgresql.auto.conf` (what ALTER SYSTEM writes) to `value`, or
/// removes it: before a server starts, so that it never starts with a setting a copy carried
/// from elsewhere (a backup's `synchronous_standby_names` would make every commit wait for a
/// standby that is not there).
pub fn set_auto_conf(
    dir: &Path,
    name: &str,
    value: Option<&str>,
    owner: Option<Owner>,
) -> Result<(), String> {
    let path = dir.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let names = |line: &str| {
        let l = line.trim_start();
        l.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !names(l))
        .map(str::to_owned)
        .collect();
    if let Some(v) = value {
        out.push(format!("{name} = '{}'", v.replace('\'', "''")));
    }
    let new = out.join("\n") + "\n";
    if new == text {
        return Ok(());
    }
    write_owned(&path, &new, owner)
}

/// A replication password is a token (it goes into SQL and a password file as it is).
pub fn password_ok(password: &str) -> Result<(), String> {
    match !password.is_empty() && password.bytes().all(|b| b.is_ascii_alphanumeric()) {
        true => Ok(()),
        false => Err("the replication password is not a token".into()),
    }
}

/// Makes the replication role log in with `password` (hex, from the control plane).
pub fn replicator(client: &mut postgres::Client, password: &str) -> Result<(), String> {
    password_ok(password)?;
    client
        .batch_execute(&format!(
            "DO $spg99$ BEGIN
               IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATOR}') THEN
                 ALTER ROLE {REPLICATOR} REPLICATION LOGIN PASSWORD '{password}';
               ELSE
                 CREATE ROLE {REPLICATOR} REPLICATION LOGIN PASSWORD '{password}';
               END IF;
             END $spg99$"
        ))
        .map_err(|e| format!("cannot set up the replication role: {}", sql_error(&e)))
}

/// Makes the template cluster under `storage` unless a complete one is there; its path.
pub fn template(
    bin: &Path,
    owner: Option<Owner>,
    storage: &Path,
    run_dir: &Path,
    port: u16,
) -> Result<PathBuf, String> {
    let dir = storage.join("template");
    if dir.join(READY_MARK).exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut initdb = process::command(&bin.join("initdb"), owner);
    initdb
        .arg("-D")
        .arg(&dir)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .args(["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]);
    process::run(initdb, "initdb")?;
    std::fs::write(dir.join("pg_hba.conf"), HBA).map_err(|e| format!("pg_hba.conf: {e}"))?;
    if let Some(o) = owner {
        o.chown(&dir.join("pg_hba.conf"))?;
    }
    let settings = vec![
        ("listen_addresses", String::new()),
        ("unix_socket_directories", run_dir.display().to_string()),
    ];
    let server = Server::start(
        bin,
        owner,
        &dir,
        port,
        &settings,
        &[],
        &storage.join("template.log"),
    )?;
    let setup = admin(run_dir, port).and_then(|mut c| {
        // FILE_COPY: the new database's files are copied, not written through the WAL, so
        // that the template's WAL stays nearly empty (and its copies small). The `postgres`
        // database goes: nobody but the worker connects to a server, and a quarter fewer
        // files make every copy faster. (CREATE and DROP DATABASE cannot share a batch, nor
        // a transaction, with anything.)
        c.batch_execute(&format!("CREATE DATABASE {SEED_DB} STRATEGY FILE_COPY"))
            .and_then(|()| c.batch_execute("DROP DATABASE postgres"))
            .and_then(|()| {
                c.batch_execute(&format!(
                    "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
                     REVOKE CONNECT ON DATABASE {SEED_DB} FROM PUBLIC;"
                ))
            })
            .map_err(|e| format!("cannot prepare the template: {}", sql_error(&e)))
    });
    let stopped = server.stop();
    setup?;
    stopped?;
    sync_fs(&dir)?;
    std::fs::write(dir.join(READY_MARK), b"").map_err(|e| format!("template mark: {e}"))?;
    Ok(dir)
}

/// Copies the template to `dir`, syncs it, and gives it to the servers' user. A half-made
/// copy (a crash during the copy) is made again.
pub fn copy_template(template: &Path, dir: &Path, owner: Option<Owner>) -> Result<(), String> {
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let began = std::time::Instant::now();
    copy_tree(template, &partial, owner).map_err(|e| format!("cannot copy the template: {e}"))?;
    let copied = began.elapsed();
    let _ = std::fs::remove_file(partial.join(READY_MARK));
    sync_fs(&partial)?;
    tracing::debug!(
        copy_ms = copied.as_secs_f64() * 1e3,
        sync_ms = (began.elapsed() - copied).as_secs_f64() * 1e3,
        "template copied"
    );
    place(&partial, dir)
}

/// Moves a complete data directory to `dir` (one filesystem: atomic) and makes the move
/// durable.
pub fn place(from: &Path, dir: &Path) -> Result<(), String> {
    std::fs::rename(from, dir).map_err(|e| format!("cannot place {}: {e}", dir.display()))?;
    for d in [dir.parent(), from.parent()].into_iter().flatten() {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Copies the directory `from` to `dir` (which must not exist) with `cp -a --reflink=auto`:
/// owners and modes kept, blocks shared where the filesystem can (XFS with reflinks,
/// btrfs), copied elsewhere. The entries of `from` named in `skip` are left out.
pub fn copy_dir(from: &Path, dir: &Path, skip: &[&str]) -> Result<(), String> {
    let meta = std::fs::metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        std::os::unix::fs::chown(dir, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let name = entry.file_name();
        if !skip.iter().any(|s| name == std::ffi::OsStr::new(s)) {
            sources.push(entry.path());
        }
    }
    if sources.is_empty() {
        return Ok(());
    }
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .args(&sources)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Copies the WAL a backup that started in segment `start` needs from `from` (a serving
/// server's `pg_wal`) to `to`: the timelines' history files and the segments from `start` on,
/// which the caller keeps from being recycled meanwhile (older ones may vanish while they are
/// listed, and are not needed). `archive_status` is made empty: what the server has yet to
/// archive is its own.
pub fn copy_wal(from: &Path, to: &Path, start: &str) -> Result<(), String> {
    let needed = |n: &str| n.ends_with(".history") || (n.len() == start.len() && n >= start);
    let skip: Vec<String> = std::fs::read_dir(from)
        .map_err(|e| format!("{}: {e}", from.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !needed(n))
        .collect();
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    copy_dir(from, to, &skip)?;
    let status = to.join("archive_status");
    std::fs::create_dir(&status).map_err(|e| format!("{}: {e}", status.display()))?;
    let meta = std::fs::metadata(to).map_err(|e| format!("{}: {e}", to.display()))?;
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&status, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| format!("{}: {e}", status.display()))
}

/// Writes `text` to `path`, owned by `owner`.
pub fn write_owned(path: &Path, text: &str, owner: Option<Owner>) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(o) = owner {
        o.chown(path)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(to, Some(o.uid), Some(o.gid))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst, owner)?;
        } else {
            // The WAL segment is mostly zeros after the template's shutdown; the rest is
            // catalog pages, copied inside the kernel.
            if from.ends_with("pg_wal") {
                copy_sparse(&src, &dst)?;
            } else {
                std::fs::copy(&src, &dst)?;
            }
            if let Some(o) = owner {
                std::os::unix::fs::chown(&dst, Some(o.uid), Some(o.gid))?;
            }
        }
    }
    Ok(())
}

/// Copies a file, leaving its all-zero 8 KiB pages (PostgreSQL's page size) as holes: they
/// read back as the same zeros, and are not written.
fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
    const PAGE: usize = 8192;
    let mut from = File::open(src)?;
    let meta = from.metadata()?;
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.permissions().mode())
        .open(dst)?;
    let mut buf = vec![0u8; 64 * PAGE];
    let mut at = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Each run of pages with data is one write.
        let pages: Vec<&[u8]> = buf[..n].chunks(PAGE).collect();
        let mut i = 0;
        while i < pages.len() {
            if pages[i].iter().all(|b| *b == 0) {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages.len() && pages[i].iter().any(|b| *b != 0) {
                i += 1;
            }
            let bytes = &buf[start * PAGE..(i * PAGE).min(n)];
            to.write_all_at(bytes, at + (start * PAGE) as u64)?;
        }
        at += n as u64;
    }
    to.set_len(meta.len())
}

/// Copies of the template, made by one thread of their own, synced, so that a database's
/// first start takes one (a rename) instead of copying ~35 MB while its client waits.
///
/// The copier keeps `keep` spares ready, and makes one more for every start that finds none.
/// One copier, not one per start: copies are bound by file creation and the filesystem's
/// journal; here 16 at once took 1 to 6 s each, 2 at once 0.7 to 1.1 s each, one after
/// another ~150 ms each.
pub struct Spares {
    dir: PathBuf,
    template: PathBuf,
    owner: Option<Owner>,
    keep: usize,
    pool: std::sync::Mutex<Pool>,
    /// Signalled when a spare is ready (or the copier failed).
    ready: std::sync::Condvar,
    /// Signalled when a spare is wanted.
    wanted: std::sync::Condvar,
}

/// Copier threads (see [`Spares`]).
const COPIERS: usize = 1;

#[derive(Default)]
struct Pool {
    ready: Vec<PathBuf>,
    /// Spares being made.
    making: usize,
    /// Starts waiting for a spare.
    waiting: usize,
    /// Why the last copy failed (starts waiting then fail with it).
    failed: Option<String>,
}

impl Spares {
    /// The spares under `dir` that are complete (half-made ones are removed), and the copier.
    pub fn start(
        dir: PathBuf,
        template: PathBuf,
        owner: Option<Owner>,
        keep: usize,
    ) -> Result<std::sync::Arc<Spares>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut ready = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "partial") {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                ready.push(path);
            }
        }
        let spares = std::sync::Arc::new(Spares {
            dir,
            template,
            owner,
            keep,
            pool: std::sync::Mutex::new(Pool {
                ready,
                ..Pool::default()
            }),
            ready: Default::default(),
            wanted: Default::default(),
        });
        for _ in 0..COPIERS {
            let copier = spares.clone();
            std::thread::Builder::new()
                .name("spg99-copier".into())
                .spawn(move || copier.run())
                .map_err(|e| format!("cannot start the copier: {e}"))?;
        }
        Ok(spares)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A spare: one ready, or the next one made.
    pub fn take(&self) -> Result<PathBuf, String> {
        let mut pool = self.pool();
        pool.waiting += 1;
        self.wanted.notify_one();
        loop {
            if let Some(spare) = pool.ready.pop() {
                pool.waiting -= 1;
                self.wanted.notify_one();
                return Ok(spare);
            }
            if let Some(e) = pool.failed.take() {
                pool.waiting -= 1;
                return Err(e);
            }
            pool = self.ready.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run(&self) {
        loop {
            {
                let mut pool = self.pool();
                while pool.ready.len() + pool.making >= self.keep + pool.waiting {
                    pool = self.wanted.wait(pool).unwrap_or_else(|p| p.into_inner());
                }
                pool.making += 1;
            }
            let mut name = [0u8; 8];
            let _ = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut name));
            let spare = self.dir.join(format!("{:016x}", u64::from_le_bytes(name)));
            let made = copy_template(&self.template, &spare, self.owner);
            let mut pool = self.pool();
            pool.making -= 1;
            match made {
                Ok(()) => pool.ready.push(spare),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make a spare data directory");
                    pool.failed = Some(e);
                    drop(pool);
                    self.ready.notify_all();
                    // Not again at once: a full disk stays full for a while.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            }
            drop(pool);
            self.ready.notify_all();
        }
    }
}

/// Everything written to the filesystem of `path` reaches the device.
fn sync_fs(path: &Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(format!(
            "cannot sync {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A session as `postgres` over the Unix socket in `run_dir`, in `template1`: the database
/// every server has besides the tenant's own, which it must not hold open (a first start
/// renames it).
pub fn admin(run_dir: &Path, port: u16) -> Result<postgres::Client, String> {
    postgres::Config::new()
        .host_path(run_dir)
        .port(port)
        .user("postgres")
        .dbname("template1")
        .application_name("spg99-worker")
        // The worker's own commits never wait for a standby: a writer whose standby is gone
        // still starts, stops and archives.
        .options("-c synchronous_commit=local")
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot reach postgres over its socket: {}", sql_error(&e)))
}

/// The server's own message for an error it sent, else the client's.
pub fn sql_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Whether an instruction says enough for [`admit`]: a database and a role named as the
/// control plane names them, and a verifier in PostgreSQL's form (none of which can hold a
/// quote: they go into the SQL as literals).
pub fn check_role(database: &str, pg_user: &str, verifier: &str) -> Result<(), String> {
    let name_like = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !name_like(database) || !name_like(pg_user) {
        return Err("the instruction names no valid role or database".into());
    }
    let scram_like = verifier.starts_with("SCRAM-SHA-256$")
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$:+/=-".contains(&b));
    if !scram_like {
        return Err("the instruction carries no SCRAM-SHA-256 verifier for the role".into());
    }
    Ok(())
}

/// Makes the tenant's role log in with its verifier and own the database named as the API
/// names it, which nobody else may connect to. Idempotent: run at every start, so that a
/// password reset reaches a stopped database when it next starts.
pub fn admit(
    client: &mut postgres::Client,
    database: &str,
    pg_user: &str,
    verifier: &str,
) -> Result<(), String> {
    check_role(database, pg_user, verifier)?;
    // One round trip. The values are checked above to hold no quote; format() quotes them
    // again where they become identifiers or literals.
    client
        .batch_execute(&format!(
            "DO $spg99$ BEGIN
               IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{pg_user}') THEN
                 EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', '{pg_user}', '{verifier}');
               ELSE
                 EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', '{pg_user}', '{verifier}');
               END IF;
               -- A stop that archived its last WAL left the role read-only: it writes again.
               EXECUTE format('ALTER ROLE %I RESET default_transaction_read_only', '{pg_user}');
               -- A cluster holds one database of its own: the template's ({SEED_DB}) at a
               -- first start, or one that went by another name (a copy kept by a restore).
               IF NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}') THEN
                 EXECUTE format('ALTER DATABASE %I RENAME TO %I',
                   (SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY oid LIMIT 1),
                   '{database}');
               END IF;
               EXECUTE format('ALTER DATABASE %I OWNER TO %I', '{database}', '{pg_user}');
               EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', '{database}');
               EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', '{database}', '{pg_user}');
             END $spg99$"
        ))
        .map_err(|e| format!("cannot set up the role and database: {}", sql_error(&e)))
}
