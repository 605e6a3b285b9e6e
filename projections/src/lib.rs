//! # SPG99 projections
//!
//! The read models of the control plane, folded from the log. [`State::apply`] is the only way
//! state changes: it reads no clock, draws no random number and does no I/O. Everything it
//! needs (time, ids, hashes) is inside the event, so replaying the same log always gives the
//! same state, and [`State::fingerprint`] proves it byte for byte.
//!
//! ## Layout
//! - [`model`]: the materialized objects (accounts, API keys, ...).
//! - this file: [`State`], `apply`, and the fingerprint.
//!
//! `apply` holds no business rules: the service decided, before the event was written, that it
//! may happen. An event that refers to something missing is applied as far as it can be and
//! never panics, so a log is always replayable.

pub mod model;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spg99_events::{Envelope, Event, SecretHash, Timestamp};
use uuid::Uuid;

pub use model::{Account, ApiKey};

/// Everything the control plane knows, as of `last_seq`.
///
/// Ordered maps, so that encoding the state (for the fingerprint, and for snapshots) is
/// deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The `seq` of the last event applied; 0 for the empty log.
    pub last_seq: u64,
    /// The time of the last event applied.
    pub last_at: Option<Timestamp>,
    pub accounts: BTreeMap<Uuid, Account>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub service_token: Option<SecretHash>,
}

/// How many objects of each kind the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub accounts: usize,
    pub api_keys: usize,
}

impl State {
    /// Folds one event into the state. Events must come in `seq` order; an event at or below
    /// `last_seq` was already applied and is ignored, which makes replay idempotent.
    pub fn apply(&mut self, env: &Envelope) {
        if env.seq <= self.last_seq {
            return;
        }
        self.last_seq = env.seq;
        self.last_at = Some(env.at);
        match &env.event {
            Event::AccountCreated {
                account_id,
                name,
                email,
            } => {
                self.accounts.insert(
                    *account_id,
                    Account {
                        id: *account_id,
                        name: name.clone(),
                        email: email.clone(),
                        created_at: env.at,
                    },
                );
            }
            Event::ApiKeyIssued {
                key_id,
                scope,
                permissions,
                secret_hash,
                expires_at,
                name,
            } => {
                self.api_keys.insert(
                    key_id.clone(),
                    ApiKey {
                        id: key_id.clone(),
                        scope: *scope,
                        permissions: *permissions,
                        secret_hash: *secret_hash,
                        expires_at: *expires_at,
                        name: name.clone(),
                        created_at: env.at,
                        revoked_at: None,
                    },
                );
            }
            Event::ServiceTokenSet { secret_hash } => {
                self.service_token = Some(*secret_hash);
            }
        }
    }

    /// Folds a sequence of events.
    pub fn apply_all<'a>(&mut self, envs: impl IntoIterator<Item = &'a Envelope>) {
        for env in envs {
            self.apply(env);
        }
    }

    /// SHA-256 of the canonical encoding of the whole state, hex. Two states are equal exactly
    /// when their fingerprints are.
    pub fn fingerprint(&self) -> String {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding the state into memory cannot fail");
        let digest = Sha256::digest(&bytes);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            accounts: self.accounts.len(),
            api_keys: self.api_keys.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg99_events::{Actor, KeyScope, Permissions};

    fn env(seq: u64, event: Event) -> Envelope {
        Envelope {
            seq,
            at: Timestamp(seq as i64 * 1_000),
            actor: Actor::System,
            request_id: format!("r{seq}"),
            account: None,
            tenant: None,
            db_id: None,
            event,
        }
    }

    fn scenario() -> Vec<Envelope> {
        let a = Uuid::from_u128(1);
        vec![
            env(
                1,
                Event::ApiKeyIssued {
                    key_id: "k1".into(),
                    scope: KeyScope::Global,
                    permissions: Permissions::ALL,
                    secret_hash: [3; 32],
                    expires_at: None,
                    name: Some("bootstrap".into()),
                },
            ),
            env(
                2,
                Event::AccountCreated {
                    account_id: a,
                    name: "acme".into(),
                    email: None,
                },
            ),
            env(
                3,
                Event::ServiceTokenSet {
                    secret_hash: [4; 32],
                },
            ),
        ]
    }

    #[test]
    fn given_a_log_when_replayed_twice_then_the_fingerprints_match() {
        let log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        let mut b = State::default();
        b.apply_all(&log);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.last_seq, 3);
        assert_eq!(
            a.counts(),
            Counts {
                accounts: 1,
                api_keys: 1
            }
        );
    }

    #[test]
    fn given_an_applied_event_when_it_comes_again_then_nothing_changes() {
        let log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        let before = a.fingerprint();
        a.apply_all(&log);
        assert_eq!(before, a.fingerprint());
    }

    #[test]
    fn given_different_logs_then_fingerprints_differ() {
        let mut log = scenario();
        let mut a = State::default();
        a.apply_all(&log);
        log.truncate(2);
        let mut b = State::default();
        b.apply_all(&log);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
