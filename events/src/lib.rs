//! # SPG99 events
//!
//! The vocabulary of the command log: what can happen on the platform, the envelope every
//! event travels in, and the byte format of one log record.
//!
//! ## Layout
//! - [`event`]: the event types, past tense, one variant per fact.
//! - [`envelope`]: `seq`, time, actor, request id and the ids an event concerns.
//! - [`codec`]: a record is `version byte ‖ bincode(envelope) ‖ crc32`; decoding reports torn,
//!   foreign or corrupt records as errors, never panics.
//!
//! These types are the log's own: plain structs and enums that bincode's serde mode encodes
//! without surprises (no `#[serde(tag)]`, `flatten`, `untagged` or skipped fields). The JSON
//! that the API shows is built from them by the service, not derived from them.

pub mod codec;
pub mod envelope;
pub mod event;

pub use codec::{decode_record, encode_record, RecordError, FORMAT_VERSION};
pub use envelope::{Actor, Envelope, Timestamp};
pub use event::{Event, KeyScope, LoadBand, Permissions, Sealed, SecretHash};
