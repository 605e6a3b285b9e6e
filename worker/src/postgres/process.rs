//! PostgreSQL server processes: started as the `postgres` system user when the worker runs
//! as root (PostgreSQL refuses root), waited for the way `pg_ctl` does (the status line of
//! `postmaster.pid`, here every 2 ms instead of pg_ctl's 100 ms), stopped with a fast
//! shutdown (SIGINT: sessions end, every committed transaction stays), and found again after
//! a restart of the worker.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections, and to shut down fast before it is
/// told to stop at once.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The same for a server that first recovers from the repository (`recovery.signal`): it
/// accepts connections once it has replayed the WAL up to its target, which takes as long as
/// there is WAL (the control plane's restore deadline bounds the whole start).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1800);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

/// The system user the servers run as: the worker's own, or `postgres` when it is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// `postgres` from `/etc/passwd` when running as root; `None` (the current user)
    /// otherwise.
    pub fn for_servers() -> Result<Option<Owner>, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let passwd =
            std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
        passwd
            .lines()
            .find_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() > 3 && f[0] == "postgres").then(|| {
                    Some(Owner {
                        uid: f[2].parse().ok()?,
                        gid: f[3].parse().ok()?,
                    })
                })
            })
            .flatten()
            .map(Some)
            .ok_or_else(|| {
                "running as root, but there is no `postgres` system user to run PostgreSQL as \
                 (PostgreSQL refuses root): install Debian's postgresql package, or run the \
                 worker as another user"
                    .to_owned()
            })
    }

    /// Gives `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<(), String> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| format!("cannot give {} to the postgres user: {e}", path.display()))
    }

    /// Whether this user can reach `dir` (every directory above it searchable by it).
    pub fn can_reach(&self, dir: &Path) -> Result<(), String> {
        let mut at = PathBuf::new();
        for part in dir.components() {
            at.push(part);
            let meta = std::fs::metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
            let mode = meta.mode();
            let searchable = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(format!(
                    "the postgres user cannot reach {}: {} is not searchable by it (chmod o+x it, \
                     or choose a storage directory it can reach)",
                    dir.display(),
                    at.display()
                ));
            }
        }
        Ok(())
    }
}

/// A command run as `owner` (or as the worker's user).
pub fn command(program: &Path, owner: Option<Owner>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(o) = owner {
        cmd.uid(o.uid).gid(o.gid);
    }
    cmd.env("LC_ALL", "C.UTF-8").stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; its output on failure.
pub fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// A started server, until it is stopped.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    log: PathBuf,
    /// Where this run's lines begin in `log` (the log is appended to across runs).
    log_from: u64,
}

/// Why a server did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// Another process listens on the port now (it was free when it was chosen): not a
    /// failure of the server, a reason to choose another port.
    PortTaken(u16),
    Failed(String),
}

impl From<StartError> for String {
    fn from(e: StartError) -> String {
        match e {
            StartError::PortTaken(port) => {
                format!("postgres could not listen on port {port}: another process took it")
            }
            StartError::Failed(why) => why,
        }
    }
}

impl Server {
    /// Starts `postgres` on `dir` with `settings` (`-c name=value`), its stderr appended to
    /// `log`, and waits until it accepts connections.
    pub fn start(
        bin: &Path,
        owner: Option<Owner>,
        dir: &Path,
        port: u16,
        settings: &[(&str, String)],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Server, StartError> {
        let failed = StartError::Failed;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| failed(format!("cannot open the server log {}: {e}", log.display())))?;
        let log_from = out.metadata().map_or(0, |m| m.len());
        let mut cmd = command(&bin.join("postgres"), owner);
        cmd.arg("-D").arg(dir).arg("-p").arg(port.to_string());
        for (name, value) in settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let err = out
            .try_clone()
            .map_err(|e| failed(format!("cannot share the server log: {e}")))?;
        cmd.stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot start postgres: {e}")))?;
        let mut server = Server {
            child,
            dir: dir.to_owned(),
            port,
            log: log.to_owned(),
            log_from,
        };
        // A standby (`standby.signal`) is up once it replays: with `hot_standby` off it never
        // says `ready` before it is promoted.
        let standby = dir.join("standby.signal").exists();
        match server.wait_ready(standby) {
            Ok(()) => Ok(server),
            Err(e) => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                Err(e)
            }
        }
    }

    /// Polls `postmaster.pid`'s status line (what `pg_ctl -w` reads) until it says `ready`
    /// (or, for a `standby`, `standby`).
    fn wait_ready(&mut self, standby: bool) -> Result<(), StartError> {
        let pid_file = self.dir.join("postmaster.pid");
        let recovering = standby || self.dir.join("recovery.signal").exists();
        let limit = match recovering {
            true => RECOVERY_TIMEOUT,
            false => READY_TIMEOUT,
        };
        let began = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| StartError::Failed(format!("cannot watch postgres: {e}")))?
            {
                if self.this_run().contains("Address already in use") {
                    return Err(StartError::PortTaken(self.port));
                }
                return Err(StartError::Failed(format!(
                    "postgres exited before it was ready ({}): {}",
                    describe(status),
                    self.log_tail()
                )));
            }
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = text.lines().collect();
                let ours = lines.first().and_then(|l| l.trim().parse::<u32>().ok())
                    == Some(self.child.id());
                let status = lines.get(7).map(|l| l.trim());
                if ours && (status == Some("ready") || (standby && status == Some("standby"))) {
                    return Ok(());
                }
            }
            if began.elapsed() > limit {
                return Err(StartError::Failed(format!(
                    "postgres did not accept connections within {} s: {}",
                    limit.as_secs(),
                    self.log_tail()
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Promotes a standby (what `pg_ctl promote` does: the `promote` file, then SIGUSR1 to
    /// the postmaster) and waits until it accepts connections as a writer.
    pub fn promote(&mut self) -> Result<(), String> {
        let signal_file = self.dir.join("promote");
        std::fs::write(&signal_file, b"").map_err(|e| format!("{}: {e}", signal_file.display()))?;
        signal(self.child.id() as libc::pid_t, libc::SIGUSR1);
        self.wait_ready(false).map_err(String::from)
    }

    /// Whether it still runs; why not, when it exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!(
                "postgres exited ({}): {}",
                describe(status),
                self.log_tail()
            )),
            Err(e) => Some(format!("postgres cannot be watched: {e}")),
        }
    }

    /// A fast shutdown: sessions end, every committed transaction stays (a shutdown
    /// checkpoint); an immediate one if the fast one does not end in time.
    pub fn stop(mut self) -> Result<(), String> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pid = self.child.id() as libc::pid_t;
        signal(pid, libc::SIGINT);
        let began = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if began.elapsed() < STOP_TIMEOUT => thread::sleep(POLL),
                Ok(None) => {
                    signal(pid, libc::SIGQUIT);
                    let _ = self.child.wait();
                    return Err(format!(
                        "postgres did not shut down within {} s; stopped at once",
                        STOP_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => return Err(format!("cannot watch postgres: {e}")),
            }
        }
    }

    /// What this run wrote to the server's log.
    fn this_run(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f
                .seek(SeekFrom::Start(self.log_from))
                .and_then(|_| f.read_to_end(&mut text));
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The last lines of this run's log, for error messages.
    fn log_tail(&self) -> String {
        let text = self.this_run();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        tail.join(" | ")
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (_, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; a pid that is gone yields ESRCH, ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A server left running on `dir` by an earlier process of the worker: its pid, if it is a
/// live postgres.
pub fn leftover(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let program = cmdline.split(|b| *b == 0).next()?;
    (program.ends_with(b"postgres") && alive(pid)).then_some(pid)
}

/// Whether `pid` runs (a zombie, which an init that does not reap would keep, does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Stops a server that is not this process's child (fast, then immediate).
pub fn stop_leftover(pid: u32) {
    let alive = || alive(pid);
    signal(pid as libc::pid_t, libc::SIGINT);
    let began = Instant::now();
    while alive() && began.elapsed() < STOP_TIMEOUT {
        thread::sleep(Duration::from_millis(5));
    }
    if alive() {
        signal(pid as libc::pid_t, libc::SIGQUIT);
        while alive() && began.elapsed() < STOP_TIMEOUT * 2 {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A PostgreSQL server of its own, in `dir`, on a free loopback port, trusting local
/// connections as user `postgres` (for a log's database in tests and benchmarks): `initdb`,
/// then a start with production durability (`fsync` on). Its URL is
/// `postgres://postgres@127.0.0.1:<port>/postgres`.
pub fn scratch(dir: &Path) -> Result<Server, String> {
    use std::os::unix::fs::PermissionsExt;
    let bin = super::find_bin(None)
        .ok_or("PostgreSQL's programs are not installed (scripts/install-engines.sh)")?;
    let owner = Owner::for_servers()?;
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    let data = dir.join("pg");
    std::fs::create_dir_all(&data).map_err(io)?;
    if let Some(o) = owner {
        o.chown(dir)?;
        o.chown(&data)?;
    }
    let mut initdb = command(&bin.join("initdb"), owner);
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(initdb, "initdb")?;
    let settings = vec![
        ("listen_addresses", "127.0.0.1".to_string()),
        ("unix_socket_directories", dir.display().to_string()),
        ("fsync", "on".to_string()),
    ];
    // Below the kernel's ephemeral range (32768-60999 by default), where an outgoing
    // connection may take a port that looked free; one taken all the same means another try.
    let (low, span) = (30_000u32, 2_700u32);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    let mut last = String::from("every port tried is in use");
    for attempt in 0..32u32 {
        let port = (low + seed.wrapping_add(attempt * 97) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        match Server::start(
            &bin,
            owner,
            &data,
            port,
            &settings,
            &[],
            &dir.join("pg.log"),
        ) {
            Ok(server) => return Ok(server),
            Err(e @ StartError::PortTaken(_)) => last = e.into(),
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("no free port for a scratch server: {last}"))
}
