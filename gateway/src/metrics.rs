//! The Gateway's metrics (docs/metrics.md): connections, bytes relayed, authentication
//! failures, refusals by SQLSTATE, and how long connections wait for their database (the
//! checkout, a cold start included). One process-wide set; `spg99 gateway --metrics-listen`
//! serves it, `spg99 serve` adds the embedded Gateway's to its own `/metrics`.

use std::sync::atomic::AtomicI64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub sqlstate: String,
}

/// A database's pool on this Gateway (by id: no tenant's names in labels), and what is counted:
/// `clients`, `waiting`, `backends_in_use`, `backends_idle`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub db_id: String,
    pub state: &'static str,
}

/// How a `POST /sql` ended: `ok`, `query_error`, `bad_request`, `unauthorized`, `too_large`,
/// `rate_limited`, `timeout`, `unavailable`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<Outcome, Counter>,
    pub http_rows: Counter,
    pub http_bytes_out: Counter,
    pub websockets_open: Gauge<i64, AtomicI64>,
    pub pool: Family<PoolLabel, Gauge<i64, AtomicI64>>,
    pub pool_waits: Counter,
    pub statements_prepared: Counter,
    pub pinned: Counter,
    pub connections: Counter,
    pub open: Gauge<i64, AtomicI64>,
    pub auth_failures: Counter,
    pub refused: Family<Refusal, Counter>,
    pub bytes: Family<Direction, Counter>,
    pub checkout_wait: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_rows: Counter::default(),
            http_bytes_out: Counter::default(),
            websockets_open: Gauge::default(),
            pool: Family::default(),
            pool_waits: Counter::default(),
            statements_prepared: Counter::default(),
            pinned: Counter::default(),
            connections: Counter::default(),
            open: Gauge::default(),
            auth_failures: Counter::default(),
            refused: Family::default(),
            bytes: Family::default(),
            checkout_wait: Histogram::new(exponential_buckets(0.0005, 2.0, 17)),
        };
        let r = &mut registry;
        r.register(
            "spg99_gateway_connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        r.register(
            "spg99_gateway_connections_open",
            "Client connections open now",
            m.open.clone(),
        );
        r.register(
            "spg99_gateway_auth_failures",
            "Failed SCRAM authentications (wrong password, unknown user)",
            m.auth_failures.clone(),
        );
        r.register(
            "spg99_gateway_refusals",
            "Connections ended with an error, by SQLSTATE",
            m.refused.clone(),
        );
        r.register_with_unit(
            "spg99_gateway_relayed",
            "Bytes relayed between clients and their databases, counted when a connection ends",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register_with_unit(
            "spg99_gateway_checkout_wait",
            "How long a connection waited for its database's lease (a start included)",
            Unit::Seconds,
            m.checkout_wait.clone(),
        );
        r.register(
            "spg99_gateway_pool",
            "The pooler, per database: clients connected, clients waiting for a backend, \
             backends in use and idle",
            m.pool.clone(),
        );
        r.register(
            "spg99_gateway_pool_waits",
            "Times a pooled client found every backend of its database busy and waited",
            m.pool_waits.clone(),
        );
        r.register(
            "spg99_gateway_statements_prepared",
            "Statements the pooler prepared on a backend for a client (its own Parse, or again \
             on another backend)",
            m.statements_prepared.clone(),
        );
        r.register(
            "spg99_gateway_pool_pinned",
            "Pooled clients kept on one backend for the rest of their session (session state)",
            m.pinned.clone(),
        );
        r.register(
            "spg99_gateway_http_requests",
            "Requests to the HTTP front door (POST /sql, WebSocket upgrades refused), by outcome",
            m.http_requests.clone(),
        );
        r.register(
            "spg99_gateway_http_rows",
            "Rows answered by POST /sql",
            m.http_rows.clone(),
        );
        r.register_with_unit(
            "spg99_gateway_http_out",
            "Bytes of POST /sql answers (their JSON bodies)",
            Unit::Bytes,
            m.http_bytes_out.clone(),
        );
        r.register(
            "spg99_gateway_websockets_open",
            "WebSockets carrying PostgreSQL sessions open now",
            m.websockets_open.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A `POST /sql` ended so.
    pub fn http_outcome(&self, outcome: &'static str) {
        self.http_requests.get_or_create(&Outcome { outcome }).inc();
    }
}

pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Bytes relayed by a connection that ended.
pub fn relayed(client_to_database: u64, database_to_client: u64) {
    let bytes = &get().bytes;
    let count = |direction| bytes.get_or_create(&Direction { direction });
    count("client_to_database").inc_by(client_to_database);
    count("database_to_client").inc_by(database_to_client);
}

/// Every metric, for a scrape.
pub fn registry() -> &'static Registry {
    &get().registry
}
