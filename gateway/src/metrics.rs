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

pub struct Metrics {
    registry: Registry,
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
