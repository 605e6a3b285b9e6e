//! A bare PostgreSQL, the baseline the compute and Gateway benchmarks measure against: a copy
//! of the worker's template cluster, started by hand as the worker would (as the `postgres`
//! user when run as root), its readiness polled every 2 ms.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spg99_worker::postgres::process::{command, Owner};

/// The port bare servers listen on: outside the benchmarks' worker range (29000-29899) and
/// below the kernel's ephemeral range, where an outgoing connection can hold it.
pub const PORT: u16 = 29900;

pub struct Bare {
    pub dir: PathBuf,
    /// `postgres` options: the port, loopback, the socket in `dir`, and the extra settings.
    pub opts: Vec<String>,
    pub owner: Option<Owner>,
    pub pg_bin: PathBuf,
    /// Extra environment of the server (what its `restore_command` needs).
    pub env: Vec<(&'static str, String)>,
    server: Option<Child>,
}

impl Bare {
    /// Copies `template` to `dir` (not started); `settings` become `-c name=value`.
    pub fn copy_of(template: &Path, dir: &Path, settings: &[(&str, String)]) -> Bare {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = std::fs::remove_file(dir.join("spg99-template.ready"));
        Bare::at(dir, settings)
    }

    /// The data directory `dir` as it is (not started); `settings` become `-c name=value`.
    pub fn at(dir: &Path, settings: &[(&str, String)]) -> Bare {
        let mut opts: Vec<String> = vec![
            "-p".into(),
            PORT.to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("unix_socket_directories={}", dir.display()),
        ];
        for (k, v) in settings {
            opts.push("-c".into());
            opts.push(format!("{k}={v}"));
        }
        Bare {
            dir: dir.to_owned(),
            opts,
            owner: Owner::for_servers().unwrap(),
            pg_bin: spg99_worker::postgres::find_bin(None).expect("PostgreSQL is installed"),
            env: Vec::new(),
            server: None,
        }
    }

    /// A program of PostgreSQL's, run as the servers' user.
    pub fn program(&self, name: &str) -> Command {
        command(&self.pg_bin.join(name), self.owner)
    }

    /// Starts `postgres` and polls `postmaster.pid` every 2 ms until it says `ready`.
    pub fn start(&mut self) {
        let mut child = self
            .program("postgres")
            .arg("-D")
            .arg(&self.dir)
            .args(&self.opts)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its log, read only if it exits at start (a full pipe is drained by that reader).
        let stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
            text
        });
        let began = Instant::now();
        loop {
            let ready = std::fs::read_to_string(self.dir.join("postmaster.pid"))
                .map(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                panic!(
                    "postgres exited at start: {}",
                    log.join().unwrap_or_default()
                );
            }
            assert!(
                began.elapsed() < Duration::from_secs(300),
                "postgres never got ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        self.server = Some(child);
    }

    /// A session as the `postgres` superuser over the Unix socket (no authentication).
    pub async fn superuser(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(PORT)
            .user("postgres")
            .dbname("template1")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Starts it and reads the first row of `SELECT 1` over its socket: µs from `began`. Then
    /// it is stopped and its directory removed.
    pub async fn first_row(mut self, began: Instant) -> u64 {
        self.start();
        self.superuser()
            .await
            .query_one("SELECT 1", &[])
            .await
            .unwrap();
        let took = began.elapsed().as_micros() as u64;
        self.stop();
        std::fs::remove_dir_all(&self.dir).unwrap();
        took
    }

    /// A fast shutdown, waited for.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        while self.dir.join("postmaster.pid").exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.stop();
    }
}
