//! # SPG99 control plane
//!
//! An event-sourced control plane: every accepted command appends events to a durable log
//! on sled; read models are folds of that log; the log itself is what clients stream.
//!
//! ## Layout
//! - [`log`]: the command log, on sled or PostgreSQL — records, durability, reads, and on a
//!   shared log the lease that says which replica leads.
//! - [`committer`]: the single writer — batches commands, decides them, appends one batch per
//!   flush, publishes the durable result to readers and subscribers.
//! - [`decision`]: the vocabulary of decisions (who asks, what an event concerns, why a
//!   command is refused), a leaf that the three below share.
//! - [`commands`]: the commands and the one `decide` for all of them, with the rules of each
//!   family in a file of its own (accounts, keys, tenants, databases).
//! - [`access`]: scope and permission rules, shared by commands and read handlers.
//! - [`lifecycle`]: workers, Gateway checkouts and leases, the scheduler, the autoscaler, the
//!   reconciler's steps and the workers' instructions: the rules that start, stop and move
//!   databases, one module per responsibility.
//! - [`reconciler`]: the background loop that runs the lifecycle's time-driven steps.
//! - [`recovery`]: start-up replay of the log into the read models; [`snapshot`]: snapshots
//!   of them, written in the background, so that start-up replays only the tail.
//! - [`domain`]: validated values (names, e-mail addresses, ...); [`catalog`]: database sizes
//!   and compute profiles.
//! - [`secrets`]: the secret key that seals passwords and recorded answers in the log;
//!   [`credentials`]: tenants' passwords and their SCRAM verifiers.
//! - [`auth`]: token format, hashing and authentication; [`limits`]: abuse limits on it and
//!   on requests, tickets and streams per key.
//! - [`http`]: shared HTTP plumbing (errors, JSON bodies, caller, request ids, route table).
//! - [`routes`]: one module of handlers per resource.
//! - [`console`]: the web Console at `/console`, its assets compiled in.
//! - [`stream`]: `GET /v2/events`, the log as Server-Sent Events, per subscriber.
//! - [`server`]: `spg99 serve` — build and run the application; [`replica`]: leading or
//!   following a shared log (writes passed to the leader in [`http::forward`]).
//! - [`tools`]: `spg99 log dump|tail`, `rebuild`, `state --at`, `verify`, offline or online.
//! - [`client`]: `spg99 login`, `tenants`, `dbs`, `events`, ...: the client of API v2.
//! - [`cli`], [`telemetry`], [`clock`]: the command line, logging, and time.
//!
//! The event types live in the `spg99-events` crate and the read models in
//! `spg99-projections`; this crate depends on both, never the other way round.

pub mod access;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod committer;
pub mod console;
pub mod credentials;
pub mod decision;
pub mod domain;
pub mod heap;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod reconciler;
pub mod recovery;
pub mod replica;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod telemetry;
pub mod tools;
pub mod wal;
