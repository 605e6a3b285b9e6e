//! How a writer's archiving goes, read from files at each heartbeat (no query: it is read for
//! every writer, and a query forks a backend): PostgreSQL's `pg_wal/archive_status` (a
//! `.ready` file for each segment waiting to be archived, a `.done` for each one archived and
//! not yet recycled) and pgBackRest's asynchronous outcomes in its spool (`<segment>.error`,
//! or `global.error`, holding why a push failed).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spg99_wire::Archiving;

/// The newest and oldest modification times of the files in `dir` whose name ends with
/// `suffix`.
fn times(dir: &Path, suffix: &str) -> (Option<SystemTime>, Option<SystemTime>) {
    let mut newest = None;
    let mut oldest = None;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().ends_with(suffix) {
            continue;
        }
        let Ok(at) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        newest = newest.max(Some(at));
        oldest = Some(oldest.map_or(at, |o: SystemTime| o.min(at)));
    }
    (newest, oldest)
}

/// The newest error pgBackRest recorded in `outcomes`, with when, if any.
fn last_error(outcomes: &Path) -> Option<(SystemTime, String)> {
    std::fs::read_dir(outcomes)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".error"))
        .filter_map(|e| {
            let at = e.metadata().and_then(|m| m.modified()).ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            // The first line is pgBackRest's error code; the message follows.
            let message: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
            Some((at, message.join(" ")))
        })
        .max_by_key(|(at, _)| *at)
}

/// The archiving of the server on `data_dir` whose pushes record their outcomes in
/// `outcomes`, as of `now`; `archived_at` is the newest archive known before (a segment's
/// `.done` goes when the segment is recycled).
pub fn status(
    data_dir: &Path,
    outcomes: &Path,
    now: SystemTime,
    known: Option<SystemTime>,
) -> (Archiving, Option<SystemTime>) {
    let status_dir = data_dir.join("pg_wal").join("archive_status");
    let (done, _) = times(&status_dir, ".done");
    let (_, waiting_since) = times(&status_dir, ".ready");
    let archived = done.max(known);
    let failure = last_error(outcomes)
        .filter(|(at, _)| archived.is_none_or(|ok| *at > ok))
        .map(|(_, why)| {
            if why.is_empty() {
                "archiving fails".to_owned()
            } else {
                why
            }
        });
    let lag = waiting_since
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO);
    let archiving = Archiving {
        archived_at: archived
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| super::rfc3339(d.as_secs() as i64)),
        failure,
        lag_secs: lag.as_secs(),
    };
    (archiving, archived)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, at: SystemTime, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn a_failure_newer_than_the_last_archive_is_reported_with_the_lag() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let status_dir = data.join("pg_wal").join("archive_status");
        let outcomes = tmp.path().join("out");
        std::fs::create_dir_all(&status_dir).unwrap();
        std::fs::create_dir_all(&outcomes).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);

        touch(
            &status_dir.join("000000010000000000000001.done"),
            at(10),
            "",
        );
        let (a, known) = status(&data, &outcomes, at(12), None);
        assert_eq!(a.archived_at.as_deref(), Some("2027-01-15T08:00:10Z"));
        assert_eq!((a.failure, a.lag_secs), (None, 0));

        touch(
            &status_dir.join("000000010000000000000002.ready"),
            at(20),
            "",
        );
        touch(
            &outcomes.join("000000010000000000000002.error"),
            at(21),
            "103\nunable to write to the repository\n",
        );
        let (a, _) = status(&data, &outcomes, at(50), known);
        assert_eq!(
            a.failure.as_deref(),
            Some("unable to write to the repository")
        );
        assert_eq!(a.lag_secs, 30);

        // Once a later segment is archived, the old error is history; a recycled `.done`
        // does not take the archive time back.
        std::fs::remove_file(status_dir.join("000000010000000000000001.done")).unwrap();
        std::fs::remove_file(status_dir.join("000000010000000000000002.ready")).unwrap();
        touch(
            &status_dir.join("000000010000000000000002.done"),
            at(60),
            "",
        );
        let (a, known) = status(&data, &outcomes, at(61), known);
        assert_eq!((a.failure, a.lag_secs), (None, 0));
        std::fs::remove_file(status_dir.join("000000010000000000000002.done")).unwrap();
        let (a, _) = status(&data, &outcomes, at(70), known);
        assert_eq!(a.archived_at.as_deref(), Some("2027-01-15T08:01:00Z"));
    }
}
