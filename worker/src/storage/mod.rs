//! Storage outside the worker: every database's data kept in a repository by pgBackRest, so
//! that the worker's own copy is a cache.
//!
//! - **One stanza per timeline.** A database's data directory is named by its timeline, and
//!   so is its stanza: a restore to a point in the past makes a new timeline (a new stanza),
//!   and the old one stays with the database that keeps the state from before.
//! - **Continuous archiving.** Every writer archives its WAL with `archive-push` (asynchronous:
//!   segments go in batches, in parallel, zstd-compressed), at least every `archive_timeout`
//!   while it writes ([`Engine::archive_settings`]).
//! - **Stop means stored** (the driver's part): before a writer stops, its last WAL is
//!   switched and archived, so that a stopped database is entirely in the repository.
//! - **Backups** on the control plane's instruction (a database's first start, then by
//!   policy), full ones; retention keeps the history window (by whole days: pgBackRest's time
//!   retention counts days).
//! - **Restores**: the newest point (a database whose newest copy is elsewhere, or lost) or a
//!   point in time, onto an empty directory or a stale copy (`--delta`: only what differs).
//!
//! Every pgBackRest command is built here and nowhere else, runs as the servers' user (the
//! repository's files are theirs), and is logged with its duration. The keys of an object
//! store come from the worker's environment (`SPG99_STORAGE_ACCESS_KEY`,
//! `SPG99_STORAGE_SECRET_KEY`) and go to pgBackRest (and to the servers, whose archiving
//! calls it) by environment only: never into a file or a command line.

pub mod archive;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use spg99_wire::storage::{Repository, Storage};
use spg99_wire::{BackupTaken, RestoreFrom};
use tracing::{info, warn};

use crate::postgres::process::{self, Owner};

/// The pgBackRest program.
const PGBACKREST: &str = "pgbackrest";

/// pgBackRest set up for one worker and one repository.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The configuration file (repository, compression, paths; no key).
    config: PathBuf,
    /// Where asynchronous archiving queues its work (and writes each segment's outcome).
    spool: PathBuf,
    owner: Option<Owner>,
    /// The object store's keys, for pgBackRest's environment.
    keys: Option<(String, String)>,
    pub settings: Storage,
}

/// A point to restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The newest point the repository holds.
    Newest,
    /// A time, RFC 3339.
    Time(String),
    /// An LSN, `X/Y`.
    Lsn(String),
    /// A standby: it replays everything the repository holds, then streams from its writer,
    /// and never ends recovery by itself.
    Standby,
}

impl Target {
    pub fn of(restore: &RestoreFrom) -> Target {
        match (&restore.time, &restore.lsn) {
            (Some(t), _) => Target::Time(t.clone()),
            (None, Some(l)) => Target::Lsn(l.clone()),
            (None, None) => Target::Newest,
        }
    }
}

/// A stanza's name is its timeline's (the data directory's name, checked by the driver).
fn stanza(timeline: &str) -> String {
    format!("--stanza={timeline}")
}

/// The options that name `timeline`'s stanza and the server it is taken from: its data
/// directory, and how to reach it (the worker's administration socket, as `postgres`, in
/// `template1`: the servers hold no `postgres` database).
fn server(timeline: &str, data_dir: &Path, socket: &Path, port: u16) -> Vec<String> {
    vec![
        stanza(timeline),
        format!("--pg1-path={}", data_dir.display()),
        format!("--pg1-socket-path={}", socket.display()),
        format!("--pg1-port={port}"),
        "--pg1-user=postgres".into(),
        "--pg1-database=template1".into(),
    ]
}

impl Engine {
    /// Sets pgBackRest up under `dir` (the worker's storage) for `settings`' repository: its
    /// configuration, log, lock and spool directories, and, for a directory repository, the
    /// directory itself; then checks that the repository answers.
    pub fn new(dir: &Path, owner: Option<Owner>, settings: &Storage) -> Result<Engine, String> {
        let repository = Repository::parse(&settings.repository)?;
        let base = dir.join("pgbackrest");
        let (log, lock, spool) = (base.join("log"), base.join("lock"), base.join("spool"));
        for d in [&base, &log, &lock, &spool] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            if let Some(o) = owner {
                o.chown(d)?;
            }
        }
        // Backups are kept by whole days; a part of a day keeps a whole one.
        let days = settings.history_window_secs.div_ceil(86_400).max(1);
        let mut lines = vec![
            "[global]".to_owned(),
            format!("log-path={}", log.display()),
            format!("lock-path={}", lock.display()),
            format!("spool-path={}", spool.display()),
            "log-level-console=warn".into(),
            "log-level-stderr=error".into(),
            "log-level-file=info".into(),
            "compress-type=zst".into(),
            "process-max=2".into(),
            "archive-async=y".into(),
            "start-fast=y".into(),
            "repo1-retention-full-type=time".into(),
            format!("repo1-retention-full={days}"),
        ];
        let mut keys = None;
        match &repository {
            Repository::Posix(path) => {
                std::fs::create_dir_all(path)
                    .map_err(|e| format!("the storage repository {}: {e}", path.display()))?;
                if let Some(o) = owner {
                    o.chown(path)?;
                    o.can_reach(path)?;
                }
                lines.push("repo1-type=posix".into());
                lines.push(format!("repo1-path={}", path.display()));
            }
            Repository::S3(s3) => {
                let key = |name: &str| {
                    std::env::var(name)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            format!("an S3 repository needs {name} in the worker's environment")
                        })
                };
                keys = Some((
                    key("SPG99_STORAGE_ACCESS_KEY")?,
                    key("SPG99_STORAGE_SECRET_KEY")?,
                ));
                lines.extend([
                    "repo1-type=s3".into(),
                    format!("repo1-path={}", s3.prefix),
                    format!("repo1-s3-bucket={}", s3.bucket),
                    format!("repo1-s3-endpoint={}", s3.host),
                    format!("repo1-storage-port={}", s3.port),
                    format!("repo1-s3-region={}", s3.region),
                    "repo1-s3-uri-style=path".into(),
                ]);
                if let Some(ca) = &s3.ca {
                    lines.push(format!("repo1-storage-ca-file={}", ca.display()));
                }
            }
        }
        let config = base.join("pgbackrest.conf");
        std::fs::write(&config, lines.join("\n") + "\n")
            .map_err(|e| format!("{}: {e}", config.display()))?;
        if let Some(o) = owner {
            o.chown(&config)?;
        }
        let engine = Engine {
            config,
            spool,
            owner,
            keys,
            settings: settings.clone(),
        };
        engine
            .run("check the repository", &["repo-ls"])
            .map_err(|e| format!("the storage repository cannot be used: {e}"))?;
        Ok(engine)
    }

    /// The environment pgBackRest needs beyond its configuration: the object store's keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match &self.keys {
            Some((key, secret)) => vec![
                ("PGBACKREST_REPO1_S3_KEY", key.clone()),
                ("PGBACKREST_REPO1_S3_KEY_SECRET", secret.clone()),
            ],
            None => vec![],
        }
    }

    /// The settings that make a server on `data_dir` archive its WAL into `timeline`'s stanza.
    pub fn archive_settings(&self, timeline: &str, data_dir: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("archive_mode", "on".into()),
            (
                "archive_command",
                format!(
                    "{PGBACKREST} --config={} {} --pg1-path={} archive-push %p",
                    self.config.display(),
                    stanza(timeline),
                    data_dir.display()
                ),
            ),
            (
                "archive_timeout",
                format!("{}s", self.settings.archive_timeout_secs),
            ),
            ("wal_level", "replica".into()),
        ]
    }

    /// Where asynchronous archiving records each segment's outcome for `timeline`.
    pub fn outcomes(&self, timeline: &str) -> PathBuf {
        self.spool.join("archive").join(timeline).join("out")
    }

    /// Makes `timeline`'s stanza (nothing if it is there) from the data directory alone
    /// (`--no-online`: milliseconds, against most of a second through the server), before
    /// its server archives anything into it.
    pub fn stanza_create(&self, timeline: &str, data_dir: &Path) -> Result<(), String> {
        self.run(
            "stanza-create",
            &[
                stanza(timeline),
                format!("--pg1-path={}", data_dir.display()),
                "--no-online".into(),
                "stanza-create".into(),
            ],
        )
        .map(|_| ())
    }

    /// A full backup of the server on `data_dir` (expiring what the window no longer needs).
    pub fn backup(
        &self,
        timeline: &str,
        data_dir: &Path,
        socket: &Path,
        port: u16,
    ) -> Result<BackupTaken, String> {
        let mut args = server(timeline, data_dir, socket, port);
        args.extend(["--type=full".into(), "backup".into()]);
        self.run("backup", &args)?;
        self.newest_backup(timeline)
    }

    /// The newest backup of `timeline`, the oldest kept, and the timeline's size.
    fn newest_backup(&self, timeline: &str) -> Result<BackupTaken, String> {
        let out = self.run("info", &[&stanza(timeline), "--output=json", "info"])?;
        let info: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("pgbackrest info: {e}"))?;
        let backups = info
            .get(0)
            .and_then(|s| s.get("backup"))
            .and_then(|b| b.as_array())
            .filter(|b| !b.is_empty())
            .ok_or("pgbackrest info lists no backup")?;
        // pgBackRest keeps whole seconds, and picks a backup for a point in time only if it
        // stopped strictly before that point's second: a backup serves points from the
        // second after its stop.
        let time = |b: &serde_json::Value, end: &str| {
            b["timestamp"][end]
                .as_i64()
                .map(|t| rfc3339(if end == "stop" { t + 1 } else { t }))
                .ok_or_else(|| format!("pgbackrest info: no timestamp {end}"))
        };
        let newest = backups.last().expect("not empty");
        Ok(BackupTaken {
            label: newest["label"].as_str().unwrap_or_default().to_owned(),
            started_at: time(newest, "start")?,
            stopped_at: time(newest, "stop")?,
            oldest_at: time(&backups[0], "stop")?,
            repository_bytes: self.size(timeline)?,
        })
    }

    /// The bytes `timeline` holds in the repository: its backups and its archived WAL.
    pub fn size(&self, timeline: &str) -> Result<u64, String> {
        let mut total = 0;
        for area in ["archive", "backup"] {
            let out = self.run(
                "repo-ls",
                &[
                    "--output=json",
                    "--recurse",
                    "repo-ls",
                    &format!("{area}/{timeline}"),
                ],
            )?;
            let files: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("pgbackrest repo-ls: {e}"))?;
            total += files
                .as_object()
                .map(|o| o.values().filter_map(|f| f["size"].as_u64()).sum::<u64>())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Makes `data_dir` hold `from`'s data as of `target` (onto what is there, copying only
    /// what differs, when `delta`); the server started on it then replays WAL from the
    /// repository up to the target and promotes itself.
    pub fn restore(
        &self,
        from: &str,
        target: &Target,
        data_dir: &Path,
        delta: bool,
    ) -> Result<(), String> {
        let mut args = vec![stanza(from), format!("--pg1-path={}", data_dir.display())];
        if delta {
            args.push("--delta".into());
        }
        match target {
            Target::Newest => {}
            Target::Standby => args.push("--type=standby".into()),
            Target::Time(t) => args.extend([
                "--type=time".into(),
                format!("--target={}", recovery_time(t)?),
                "--target-action=promote".into(),
            ]),
            Target::Lsn(l) => args.extend([
                "--type=lsn".into(),
                format!("--target={l}"),
                "--target-action=promote".into(),
            ]),
        }
        // The copy archives into a stanza of its own (set when its server starts), never into
        // the one it comes from.
        args.push("--archive-mode=off".into());
        args.push("restore".into());
        self.run("restore", &args).map(|_| ())
    }

    /// Removes `timeline`'s stanza from the repository, with every backup and WAL segment
    /// (`data_dir`: where its server would run on this worker, which must not run).
    pub fn purge(&self, timeline: &str, data_dir: &Path) -> Result<(), String> {
        let s = stanza(timeline);
        // `stanza-delete` wants the stanza stopped first (no archiving or backup may start).
        self.run("stop", &[s.as_str(), "stop"])?;
        let deleted = self.run(
            "stanza-delete",
            &[
                s.clone(),
                format!("--pg1-path={}", data_dir.display()),
                "--force".into(),
                "stanza-delete".into(),
            ],
        );
        let _ = self.run("start", &[s.as_str(), "start"]);
        deleted.map(|_| ())
    }

    /// Runs pgBackRest with `args` as the servers' user; its standard output, or why it
    /// failed. Logged with its duration.
    fn run<S: AsRef<str>>(&self, what: &str, args: &[S]) -> Result<String, String> {
        let began = Instant::now();
        let mut cmd: Command = process::command(Path::new(PGBACKREST), self.owner);
        cmd.arg(format!("--config={}", self.config.display()))
            .args(args.iter().map(AsRef::as_ref))
            .envs(self.env());
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run pgbackrest (is it installed?): {e}"))?;
        let ms = began.elapsed().as_secs_f64() * 1e3;
        let stanza = args
            .iter()
            .find_map(|a| a.as_ref().strip_prefix("--stanza="))
            .unwrap_or("-");
        if out.status.success() {
            info!(command = what, stanza, ms, "pgbackrest");
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let err = if err.is_empty() {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        } else {
            err
        };
        warn!(command = what, stanza, ms, error = %err, "pgbackrest failed");
        Err(format!("pgbackrest {what}: {err}"))
    }
}

/// An RFC 3339 time as PostgreSQL's `recovery_target_time` and pgBackRest's backup choice
/// both read it: `YYYY-MM-DD HH:MM:SS.ffffff+00`.
fn recovery_time(rfc3339: &str) -> Result<String, String> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map_err(|e| format!("the restore's time {rfc3339:?}: {e}"))?;
    Ok(t.with_timezone(&chrono::Utc)
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string())
}

/// Seconds since the epoch, as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_time_is_written_as_postgresql_reads_it() {
        assert_eq!(
            recovery_time("2026-12-04T18:15:17.123456Z").unwrap(),
            "2026-12-04 18:15:17.123456+00"
        );
        assert_eq!(
            recovery_time("2026-12-04T20:15:17+02:00").unwrap(),
            "2026-12-04 18:15:17.000000+00"
        );
        assert!(recovery_time("yesterday").is_err());
    }

    #[test]
    fn times_are_written_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
    }
}
