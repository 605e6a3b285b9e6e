//! The worker's metrics (docs/metrics.md): each instruction's work by operation (a start's
//! time is a cold start on this host: a cluster made or resumed and PostgreSQL listening),
//! reports by outcome, heartbeats, the writers it serves, and with a repository its storage
//! work (backups, restores, a stop's final archive) and how archiving goes. One process-wide set;
//! `spg99 worker --metrics-listen` serves it, `spg99 serve` adds the local worker's to its own
//! `/metrics`.

use std::sync::atomic::AtomicI64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result {
    pub result: &'static str,
}

fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub operations: Family<Op, Histogram, fn() -> Histogram>,
    pub reports: Family<Outcome, Counter>,
    pub heartbeats: Family<Result, Counter>,
    pub writers: Gauge<i64, AtomicI64>,
    /// With a repository: backups, restores and a stop's final archive, by operation.
    pub storage: Family<Op, Histogram, fn() -> Histogram>,
    /// Writers whose archiving fails, as of the last heartbeat.
    pub archive_failing: Gauge<i64, AtomicI64>,
    /// The longest any writer's WAL has waited for the repository (seconds).
    pub archive_lag: Gauge<i64, AtomicI64>,
    /// Standbys streaming from this worker's writers, as of the last heartbeat.
    pub standbys_streaming: Gauge<i64, AtomicI64>,
    /// The farthest any of them is behind its writer (bytes of WAL not yet flushed there).
    pub replication_lag: Gauge<i64, AtomicI64>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            operations: Family::new_with_constructor(durations),
            reports: Family::default(),
            heartbeats: Family::default(),
            writers: Gauge::default(),
            storage: Family::new_with_constructor(durations),
            archive_failing: Gauge::default(),
            archive_lag: Gauge::default(),
            standbys_streaming: Gauge::default(),
            replication_lag: Gauge::default(),
        };
        let r = &mut registry;
        r.register_with_unit(
            "spg99_worker_operation_duration",
            "Time of each instruction's work, by operation (start, stop, prepare, promote, ...)",
            Unit::Seconds,
            m.operations.clone(),
        );
        r.register(
            "spg99_worker_reports",
            "Reports sent to the control plane, by outcome",
            m.reports.clone(),
        );
        r.register(
            "spg99_worker_heartbeats",
            "Heartbeats, by result (ok, failed)",
            m.heartbeats.clone(),
        );
        r.register(
            "spg99_worker_writers",
            "Writers this worker serves, as of its last heartbeat",
            m.writers.clone(),
        );
        r.register_with_unit(
            "spg99_worker_storage_duration",
            "Time of the repository's work, by operation (backup, restore, final_archive: a stop's last WAL)",
            Unit::Seconds,
            m.storage.clone(),
        );
        r.register(
            "spg99_worker_archive_failing",
            "Writers whose WAL archiving fails, as of the last heartbeat",
            m.archive_failing.clone(),
        );
        r.register_with_unit(
            "spg99_worker_archive_lag",
            "The longest time any writer's WAL has waited for the repository, as of the last heartbeat",
            Unit::Seconds,
            m.archive_lag.clone(),
        );
        r.register(
            "spg99_worker_standbys_streaming",
            "Standbys streaming from this worker's writers, as of the last heartbeat",
            m.standbys_streaming.clone(),
        );
        r.register_with_unit(
            "spg99_worker_replication_lag",
            "The farthest any standby of this worker's writers is behind (WAL not yet flushed there), as of the last heartbeat",
            Unit::Bytes,
            m.replication_lag.clone(),
        );
        Metrics { registry, ..m }
    }
}

pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Every metric, for a scrape.
pub fn registry() -> &'static Registry {
    &get().registry
}
