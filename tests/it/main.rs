//! Integration tests: the real `spg99` binary, a real data directory, real HTTP.

mod api_rules;
mod api_scenario;
mod authz_matrix;
mod bootstrap;
mod browser;
mod chaos;
mod cli;
mod committer;
mod compute;
mod conformance;
mod console;
mod crash;
#[cfg(feature = "failpoints")]
mod defects;
mod durability;
mod events;
mod faults;
mod gateway;
mod helpers;
mod http_basics;
mod lab;
mod layout;
mod lifecycle;
mod lifecycle_props;
mod limits;
mod log_integrity;
mod log_stores;
mod metrics;
mod openapi;
mod pgtls;
mod replicas;
mod restart;
mod storage;
mod tooling;
mod worker_agent;
