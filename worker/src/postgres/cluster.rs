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

pub const HBA: &str = "\
# SPG99: the worker administers over the Unix socket (in a directory only it and the postgres
# user reach); clients log in over TCP with SCRAM-SHA-256, each tenant's role to its database.
local   all   postgres                 trust
host    all   all        0.0.0.0/0     scram-sha-256
host    all   all        ::/0          scram-sha-256
";

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
        &storage.join("template.log"),
    )?;
    let setup = admin(run_dir, port, "postgres").and_then(|mut c| {
        // CREATE DATABASE cannot share a transaction (nor a batch) with anything.
        c.batch_execute(&format!("CREATE DATABASE {SEED_DB}"))
            .and_then(|()| {
                c.batch_execute(&format!(
                    "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
                     REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
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

/// Copies the template to `dir` (a database's first start), syncs it, and gives it to the
/// servers' user. A half-made copy (a crash during the copy) is made again.
pub fn copy_template(template: &Path, dir: &Path, owner: Option<Owner>) -> Result<(), String> {
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    copy_tree(template, &partial, owner).map_err(|e| format!("cannot copy the template: {e}"))?;
    let _ = std::fs::remove_file(partial.join(READY_MARK));
    sync_fs(&partial)?;
    std::fs::rename(&partial, dir).map_err(|e| format!("cannot place {}: {e}", dir.display()))?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", parent.display()))
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
            std::fs::copy(&src, &dst)?;
            if let Some(o) = owner {
                std::os::unix::fs::chown(&dst, Some(o.uid), Some(o.gid))?;
            }
        }
    }
    Ok(())
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

/// A session as `postgres` over the Unix socket in `run_dir`.
pub fn admin(run_dir: &Path, port: u16, dbname: &str) -> Result<postgres::Client, String> {
    postgres::Config::new()
        .host_path(run_dir)
        .port(port)
        .user("postgres")
        .dbname(dbname)
        .application_name("spg99-worker")
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

/// `"name"`: an identifier, quoted (names the API accepts hold no quote).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether an instruction says enough for [`admit`]: a database, a role, and a verifier in
/// PostgreSQL's form (which holds no quote: it goes into the SQL as a literal).
pub fn check_role(database: &str, pg_user: &str, verifier: &str) -> Result<(), String> {
    let scram_like = verifier.starts_with("SCRAM-SHA-256$")
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$:+/=-".contains(&b));
    if !scram_like {
        return Err("the instruction carries no SCRAM-SHA-256 verifier for the role".into());
    }
    if pg_user.is_empty() || database.is_empty() {
        return Err("the instruction names no role or database".into());
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
    let sql_err =
        |e: postgres::Error| format!("cannot set up the role and database: {}", sql_error(&e));
    check_role(database, pg_user, verifier)?;
    let role = ident(pg_user);
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&pg_user])
        .map_err(sql_err)?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    client
        .batch_execute(&format!("{verb} ROLE {role} LOGIN PASSWORD '{verifier}'"))
        .map_err(sql_err)?;
    let has = |client: &mut postgres::Client, name: &str| -> Result<bool, String> {
        Ok(client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .map_err(sql_err)?
            .is_some())
    };
    if !has(client, database)? {
        client
            .batch_execute(&format!(
                "ALTER DATABASE {SEED_DB} RENAME TO {}",
                ident(database)
            ))
            .map_err(sql_err)?;
    }
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} OWNER TO {role}; REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {db} TO {role}",
            db = ident(database)
        ))
        .map_err(sql_err)
}
