//! Each compute profile's PostgreSQL settings, and the ones every writer shares.
//!
//! | profile | vCPU | memory | shared_buffers | effective_cache_size | work_mem | maintenance_work_mem | max_connections | max_parallel_workers |
//! |---|---|---|---|---|---|---|---|---|
//! | c0.25 | 0.25 | 1 GiB | 256 MB | 768 MB | 4 MB | 64 MB | 104 | 1 |
//! | c0.5 | 0.5 | 2 GiB | 512 MB | 1536 MB | 8 MB | 128 MB | 204 | 1 |
//! | c1 | 1 | 4 GiB | 1 GB | 3 GB | 16 MB | 256 MB | 409 | 1 |
//! | c2 | 2 | 8 GiB | 2 GB | 6 GB | 32 MB | 512 MB | 819 | 2 |
//! | c4 | 4 | 16 GiB | 4 GB | 12 GB | 64 MB | 1 GB | 1638 | 4 |
//! | c8 | 8 | 32 GiB | 8 GB | 24 GB | 128 MB | 2 GB | 3276 | 8 |
//!
//! The rules behind the table: a quarter of the memory for `shared_buffers` and three
//! quarters for `effective_cache_size` (PostgreSQL's own tuning advice), `work_mem` a 256th,
//! `maintenance_work_mem` a 16th (at most 2 GB), and `max_connections` one per 10 MiB (at
//! least 104), which is close to what Neon gives the same sizes. `shared_buffers` and
//! `max_connections` take effect only at a start: a database moves to another profile by a
//! restart with the new settings (the handoff).

use spg99_wire::profiles::Profile;

/// `(name, value)` settings for a writer on `profile`.
pub fn for_profile(profile: &Profile) -> Vec<(&'static str, String)> {
    let mib = u64::from(profile.memory_mib);
    let mb = |v: u64| format!("{v}MB");
    let vcpu = f64::from(profile.vcpu);
    let parallel = (vcpu.floor() as u64).max(1);
    vec![
        ("shared_buffers", mb(mib / 4)),
        ("effective_cache_size", mb(mib * 3 / 4)),
        ("work_mem", mb((mib / 256).max(4))),
        ("maintenance_work_mem", mb((mib / 16).min(2048))),
        ("max_connections", profile.max_connections().to_string()),
        ("max_worker_processes", (parallel + 8).to_string()),
        ("max_parallel_workers", parallel.to_string()),
        (
            "max_parallel_workers_per_gather",
            (parallel / 2).to_string(),
        ),
    ]
}

/// What a standby runs with besides a writer's settings: where it streams from, and how
/// often it answers (the writer's view of it, which the control plane reads, stays fresh).
pub fn standby(conninfo: &str) -> Vec<(&'static str, String)> {
    vec![
        ("primary_conninfo", conninfo.to_owned()),
        ("wal_receiver_status_interval", "1s".into()),
        ("wal_retrieve_retry_interval", "500ms".into()),
    ]
}

/// What every writer runs with, whatever its profile.
pub fn common() -> Vec<(&'static str, String)> {
    [
        // Durability as PostgreSQL ships it: every commit waits for its WAL on the device.
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        ("password_encryption", "scram-sha-256"),
        // The worker reads the server's log from its stderr; no collector process.
        ("logging_collector", "off"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
        ("huge_pages", "off"),
        ("unix_socket_permissions", "0700"),
        // The worker counts a tenant's sessions by the backends' process titles.
        ("update_process_title", "on"),
        // Data directories stopped by an earlier version kept `default_transaction_read_only
        // = on` in postgresql.auto.conf (ALTER SYSTEM, which this overrides): they write
        // again. A stop now makes the tenant's role read-only instead (a role's setting is
        // above the command line), and admission resets it.
        ("default_transaction_read_only", "off"),
        // A server is never a standby here: a restore's recovery takes no connection (and its
        // `postmaster.pid` does not say `ready`) until it has promoted itself.
        ("hot_standby", "off"),
        // A writer's shutdown waits for its standbys to have its last WAL: a standby that
        // hangs holds it up this long at most.
        ("wal_sender_timeout", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg99_wire::profiles::{profile, PROFILES};

    #[test]
    fn every_profile_has_the_documented_settings() {
        let get = |p: &str, k: &str| {
            for_profile(profile(p).unwrap())
                .into_iter()
                .find(|(name, _)| *name == k)
                .unwrap()
                .1
        };
        assert_eq!(get("c0.25", "shared_buffers"), "256MB");
        assert_eq!(get("c0.25", "max_connections"), "104");
        assert_eq!(get("c1", "shared_buffers"), "1024MB");
        assert_eq!(get("c1", "work_mem"), "16MB");
        assert_eq!(get("c8", "maintenance_work_mem"), "2048MB");
        assert_eq!(get("c8", "max_connections"), "3276");
        // Bigger profiles never get less of anything.
        for w in PROFILES.windows(2) {
            let (a, b) = (for_profile(&w[0]), for_profile(&w[1]));
            for ((k, x), (_, y)) in a.iter().zip(&b) {
                let n = |v: &str| v.trim_end_matches("MB").parse::<u64>().unwrap();
                assert!(n(x) <= n(y), "{k}: {x} then {y}");
            }
        }
    }
}
