//! Route handlers, one module per resource. Each handler authenticates (via [`Caller`]),
//! parses its input into domain types, then either submits one command (with a renderer for
//! its answer) or reads the state.
//!
//! [`Caller`]: crate::http::Caller

pub mod accounts;
pub mod admin;
pub mod billing;
pub mod dbs;
pub mod events;
pub mod health;
pub mod internal;
pub mod keys;
pub mod schema_diff;
pub mod sizes;
pub mod tenants;
