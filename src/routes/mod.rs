//! Route handlers, one module per resource. Each handler authenticates (via [`Caller`]),
//! parses its input into domain types, then either submits one command or reads the state.
//!
//! [`Caller`]: crate::http::Caller

pub mod accounts;
pub mod admin;
pub mod health;
