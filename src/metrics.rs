//! `GET /metrics`: the control plane's metrics in the Prometheus text format (OpenMetrics),
//! on the Prometheus project's own client. Names and units follow Prometheus' conventions
//! (`_seconds`, `_total`); no label carries tenant data: routes are their patterns
//! (`/v2/tenants/{tenant}/dbs`), event types and states are the platform's own words.
//! docs/metrics.md lists every metric with what it measures.
//!
//! Counters and histograms are updated where the work is done (the committer, the HTTP
//! layer, the event stream), on one process-wide set; gauges of the state (databases by state,
//! leases, workers, the queue) are read from it when scraped. In a replica, the commit metrics
//! move on the leader only.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use spg99_events::{Envelope, Event, Timestamp};
use spg99_projections::{DbState, State};

pub use spg99_wire::metrics::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub method: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answered {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Type {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InState {
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the control plane.
pub struct Metrics {
    registry: Registry,
    pub commit_seconds: Histogram,
    pub batch_commands: Histogram,
    pub sync_seconds: Histogram,
    appended: Family<Type, Counter>,
    handoffs: Family<Outcome, Counter>,
    cold_starts: Histogram,
    pub http_requests: Family<Answered, Counter>,
    pub http_seconds: Histograms<Route>,
    pub subscribers: Gauge<i64, AtomicI64>,
    pub catching_up: Gauge<i64, AtomicI64>,
    queue: Gauge<i64, AtomicI64>,
    databases: Family<InState, Gauge<i64, AtomicI64>>,
    leases: Gauge<i64, AtomicI64>,
    /// The databases' size in the storage repository, as last measured.
    storage_bytes: Gauge<i64, AtomicI64>,
    /// Databases whose repository may not hold everything (`storage_warning`).
    storage_warnings: Gauge<i64, AtomicI64>,
    /// Databases that are branches of another.
    branches: Gauge<i64, AtomicI64>,
    /// Running databases with high availability that are not protected now.
    unprotected: Gauge<i64, AtomicI64>,
    workers: Gauge<i64, AtomicI64>,
    leading: Gauge<i64, AtomicI64>,
    head: Gauge<i64, AtomicI64>,
    /// When each database's start was asked for (log time), until it started or failed.
    starting: Mutex<HashMap<uuid::Uuid, Timestamp>>,
    /// From a failover's start to its standby serving as the writer (log time).
    failovers: Histogram,
    /// When each failover under way began.
    failing_over: Mutex<HashMap<uuid::Uuid, Timestamp>>,
}

/// Latencies from 50 µs to about 26 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            commit_seconds: latency(),
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            sync_seconds: latency(),
            appended: Family::default(),
            handoffs: Family::default(),
            cold_starts: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency),
            subscribers: Gauge::default(),
            catching_up: Gauge::default(),
            queue: Gauge::default(),
            databases: Family::default(),
            leases: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_warnings: Gauge::default(),
            branches: Gauge::default(),
            unprotected: Gauge::default(),
            workers: Gauge::default(),
            leading: Gauge::default(),
            head: Gauge::default(),
            starting: Mutex::default(),
            failovers: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            failing_over: Mutex::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register_with_unit(
            "spg99_commit_duration",
            "From a command's submission to its answer, its events durable",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register(
            "spg99_commit_batch_commands",
            "Commands decided in one batch of the committer",
            m.batch_commands.clone(),
        );
        r.register_with_unit(
            "spg99_log_sync_duration",
            "One sync of the log: fdatasync on sled, the append's commit on PostgreSQL",
            Unit::Seconds,
            m.sync_seconds.clone(),
        );
        r.register(
            "spg99_log_events_appended",
            "Events made durable in the log by this process, by type",
            m.appended.clone(),
        );
        r.register(
            "spg99_handoffs",
            "Handoffs (a writer moved to another profile) ended, by outcome",
            m.handoffs.clone(),
        );
        r.register_with_unit(
            "spg99_cold_start_duration",
            "From a database's start being asked for to its writer serving (log time)",
            Unit::Seconds,
            m.cold_starts.clone(),
        );
        r.register_with_unit(
            "spg99_failover_duration",
            "From a writer declared lost (or gone) to its standby serving as the writer (log time); \
             failovers are counted by spg99_log_events_appended{type=\"db.failover_started\"}",
            Unit::Seconds,
            m.failovers.clone(),
        );
        r.register(
            "spg99_http_requests",
            "HTTP requests answered, by method, route pattern and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "spg99_http_request_duration",
            "HTTP request handling time, by method and route pattern",
            Unit::Seconds,
            m.http_seconds.clone(),
        );
        r.register(
            "spg99_event_stream_subscribers",
            "Event-stream (SSE) subscribers connected",
            m.subscribers.clone(),
        );
        r.register(
            "spg99_event_stream_catching_up",
            "Event-stream subscribers reading from the log rather than the live feed",
            m.catching_up.clone(),
        );
        r.register(
            "spg99_committer_queue_depth",
            "Commands waiting for the committer",
            m.queue.clone(),
        );
        r.register(
            "spg99_databases",
            "Databases, by lifecycle state",
            m.databases.clone(),
        );
        r.register("spg99_leases", "Gateway leases held", m.leases.clone());
        r.register_with_unit(
            "spg99_storage",
            "The databases' size in the storage repository (backups and WAL), as last measured",
            Unit::Bytes,
            m.storage_bytes.clone(),
        );
        r.register(
            "spg99_storage_warnings",
            "Databases whose storage repository may not hold everything (storage_warning set)",
            m.storage_warnings.clone(),
        );
        r.register(
            "spg99_branches",
            "Databases that are branches of another (their parent may be gone)",
            m.branches.clone(),
        );
        r.register(
            "spg99_databases_unprotected",
            "Running databases with high availability whose commits do not wait for a standby now",
            m.unprotected.clone(),
        );
        r.register(
            "spg99_workers",
            "Workers registered and not lost",
            m.workers.clone(),
        );
        r.register(
            "spg99_replica_leading",
            "1 while this process leads the log (always, on a log of its own)",
            m.leading.clone(),
        );
        r.register(
            "spg99_log_head_seq",
            "The seq of the last durable event this process has",
            m.head.clone(),
        );
        Metrics { registry, ..m }
    }

    /// What a batch made durable: counts by type, handoffs ended, cold starts.
    pub fn appended(&self, batch: &[Envelope]) {
        for env in batch {
            self.appended
                .get_or_create(&Type {
                    r#type: env.event.type_name(),
                })
                .inc();
            match &env.event {
                Event::DbScaleCompleted { .. } => self.handoff("completed"),
                Event::DbScaleFailed { .. } => self.handoff("failed"),
                Event::DbStartRequested { db_id, .. } => {
                    self.lock_starting().insert(*db_id, env.at);
                }
                Event::DbStarted { db_id, .. } => {
                    if let Some(asked) = self.lock_starting().remove(db_id) {
                        let micros = (env.at.as_micros() - asked.as_micros()).max(0);
                        self.cold_starts.observe(micros as f64 / 1e6);
                    }
                }
                Event::DbStartFailed { db_id, .. } | Event::DbDeleted { db_id, .. } => {
                    self.lock_starting().remove(db_id);
                    self.lock(&self.failing_over).remove(db_id);
                }
                Event::DbFailoverStarted { db_id, .. } => {
                    self.lock(&self.failing_over).insert(*db_id, env.at);
                }
                Event::DbPromoted { db_id, .. } => {
                    if let Some(began) = self.lock(&self.failing_over).remove(db_id) {
                        let micros = (env.at.as_micros() - began.as_micros()).max(0);
                        self.failovers.observe(micros as f64 / 1e6);
                    }
                }
                _ => {}
            }
        }
    }

    fn lock_starting(&self) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, Timestamp>> {
        self.lock(&self.starting)
    }

    fn lock<'m>(
        &self,
        m: &'m Mutex<HashMap<uuid::Uuid, Timestamp>>,
    ) -> std::sync::MutexGuard<'m, HashMap<uuid::Uuid, Timestamp>> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handoff(&self, outcome: &'static str) {
        self.handoffs.get_or_create(&Outcome { outcome }).inc();
    }

    /// The text of a scrape, with the gauges read from `state` first, then `more` (the
    /// embedded Gateway's and worker's).
    pub fn render(
        &self,
        state: &State,
        queued: usize,
        leading: bool,
        more: &[&Registry],
    ) -> String {
        let mut counts: HashMap<&'static str, i64> = [
            DbState::Stopped,
            DbState::Starting,
            DbState::Running,
            DbState::Stopping,
            DbState::Deleting,
            DbState::Failed,
            DbState::Restoring,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let (mut bytes, mut warnings, mut branches, mut unprotected) = (0u64, 0i64, 0i64, 0i64);
        for d in state.dbs.values() {
            *counts.entry(d.state.as_str()).or_default() += 1;
            branches += i64::from(d.branch.is_some());
            let writer = d.live.writer.as_ref().map_or(0, |w| w.term);
            let ha = d.ha();
            unprotected +=
                i64::from(ha.enabled && d.state == DbState::Running && !ha.protected(writer));
            let s = d.stored();
            bytes = bytes.saturating_add(s.bytes);
            warnings += i64::from(s.archive_failure.is_some() || s.warning.is_some());
        }
        self.storage_bytes.set(bytes.min(i64::MAX as u64) as i64);
        self.storage_warnings.set(warnings);
        self.branches.set(branches);
        self.unprotected.set(unprotected);
        for (state, n) in counts {
            self.databases.get_or_create(&InState { state }).set(n);
        }
        self.leases.set(state.leases.len() as i64);
        let live = state
            .workers
            .values()
            .filter(|w| w.lost_at.is_none())
            .count();
        self.workers.set(live as i64);
        self.queue.set(queued as i64);
        self.leading.set(i64::from(leading));
        self.head.set(state.last_seq as i64);
        let mut all = vec![&self.registry];
        all.extend_from_slice(more);
        spg99_wire::metrics::text(&all)
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
