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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spg99_events::{Envelope, Event, SecretHash, Timestamp};
use uuid::Uuid;

pub use model::{Account, ApiKey, Db, DbState, IdempotentResponse, Tenant};

/// How long the answer to an idempotent request is kept for retries (24 h, in microseconds),
/// measured in event time so that replay prunes exactly as the live state did.
pub const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Everything the control plane knows, as of `last_seq`.
///
/// Ordered maps, so that encoding the state (for the fingerprint, and for snapshots) is
/// deterministic. The `*_by_*` maps are indexes, derived from the others by `apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The `seq` of the last event applied; 0 for the empty log.
    pub last_seq: u64,
    /// The time of the last event applied.
    pub last_at: Option<Timestamp>,
    pub accounts: BTreeMap<Uuid, Account>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub service_token: Option<SecretHash>,
    pub tenants: BTreeMap<Uuid, Tenant>,
    /// Tenant names are unique across the platform.
    pub tenants_by_name: BTreeMap<String, Uuid>,
    /// `pg_user`s are unique across the platform: the Gateway finds a tenant by it.
    pub tenants_by_pg_user: BTreeMap<String, Uuid>,
    pub dbs: BTreeMap<Uuid, Db>,
    /// Database names are unique within a tenant; ordered by tenant, then name.
    pub dbs_by_name: BTreeMap<(Uuid, String), Uuid>,
    /// First answers to idempotent requests, by (key id, idempotency key).
    pub idempotency: BTreeMap<(String, String), IdempotentResponse>,
    /// The same entries by time recorded, for expiry.
    idempotency_by_time: BTreeSet<(Timestamp, String, String)>,
}

/// How many objects of each kind the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub accounts: usize,
    pub api_keys: usize,
    pub tenants: usize,
    pub dbs: usize,
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
        let at = env.at;
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
                        contact_name: None,
                        created_at: at,
                        deleting: false,
                    },
                );
            }
            Event::AccountContactSet {
                account_id,
                email,
                name,
            } => {
                if let Some(a) = self.accounts.get_mut(account_id) {
                    a.email = Some(email.clone());
                    a.contact_name = name.clone();
                }
            }
            Event::AccountDeleteRequested { account_id } => {
                if let Some(a) = self.accounts.get_mut(account_id) {
                    a.deleting = true;
                }
                for key in self.api_keys.values_mut() {
                    if key.account() == Some(*account_id) && key.revoked_at.is_none() {
                        key.revoked_at = Some(at);
                    }
                }
                for t in self.tenants_of(*account_id) {
                    self.mark_tenant_deleting(t);
                }
            }
            Event::AccountDeleted { account_id } => {
                for t in self.tenants_of(*account_id) {
                    self.remove_tenant(t);
                }
                self.api_keys
                    .retain(|_, k| k.account() != Some(*account_id));
                self.accounts.remove(account_id);
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
                        created_at: at,
                        revoked_at: None,
                    },
                );
            }
            Event::ApiKeyRotated {
                key_id,
                secret_hash,
            } => {
                if let Some(k) = self.api_keys.get_mut(key_id) {
                    k.secret_hash = *secret_hash;
                }
            }
            Event::ApiKeyRevoked { key_id } => {
                if let Some(k) = self.api_keys.get_mut(key_id) {
                    k.revoked_at.get_or_insert(at);
                }
            }
            Event::ServiceTokenSet { secret_hash } => {
                self.service_token = Some(*secret_hash);
            }
            Event::TenantCreated {
                tenant_id,
                account_id,
                name,
                pg_user,
                pg_password,
            } => {
                self.tenants_by_name.insert(name.clone(), *tenant_id);
                self.tenants_by_pg_user.insert(pg_user.clone(), *tenant_id);
                self.tenants.insert(
                    *tenant_id,
                    Tenant {
                        id: *tenant_id,
                        account: *account_id,
                        name: name.clone(),
                        pg_user: pg_user.clone(),
                        pg_password: pg_password.clone(),
                        created_at: at,
                        deleting: false,
                    },
                );
            }
            Event::TenantDeleteRequested { tenant_id } => self.mark_tenant_deleting(*tenant_id),
            Event::TenantDeleted { tenant_id } => self.remove_tenant(*tenant_id),
            Event::DbCreated {
                db_id,
                tenant_id,
                name,
                size,
                timeline,
            } => {
                self.dbs_by_name.insert((*tenant_id, name.clone()), *db_id);
                self.dbs.insert(
                    *db_id,
                    Db {
                        id: *db_id,
                        tenant: *tenant_id,
                        name: name.clone(),
                        size: size.clone(),
                        timeline: timeline.clone(),
                        created_at: at,
                        state: DbState::Stopped,
                    },
                );
            }
            Event::DbDeleteRequested { db_id } => {
                if let Some(db) = self.dbs.get_mut(db_id) {
                    db.state = DbState::Deleting;
                }
            }
            Event::DbDeleted { db_id } => self.remove_db(*db_id),
            Event::IdempotentResponseRecorded {
                key_id,
                idempotency_key,
                request_hash,
                status,
                body,
            } => {
                let key = (key_id.clone(), idempotency_key.clone());
                self.idempotency_by_time
                    .insert((at, key.0.clone(), key.1.clone()));
                self.idempotency.insert(
                    key,
                    IdempotentResponse {
                        request_hash: *request_hash,
                        status: *status,
                        body: body.clone(),
                        recorded_at: at,
                    },
                );
            }
        }
        self.expire_idempotency(at);
    }

    /// The ids of an account's tenants.
    fn tenants_of(&self, account: Uuid) -> Vec<Uuid> {
        self.tenants
            .values()
            .filter(|t| t.account == account)
            .map(|t| t.id)
            .collect()
    }

    fn mark_tenant_deleting(&mut self, tenant: Uuid) {
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.deleting = true;
        }
        for db in self.dbs.values_mut().filter(|d| d.tenant == tenant) {
            db.state = DbState::Deleting;
        }
    }

    fn remove_tenant(&mut self, tenant: Uuid) {
        let dbs: Vec<Uuid> = self.dbs_of(tenant).map(|d| d.id).collect();
        for db in dbs {
            self.remove_db(db);
        }
        if let Some(t) = self.tenants.remove(&tenant) {
            self.tenants_by_name.remove(&t.name);
            self.tenants_by_pg_user.remove(&t.pg_user);
        }
        self.api_keys.retain(|_, k| k.tenant() != Some(tenant));
    }

    fn remove_db(&mut self, db: Uuid) {
        if let Some(d) = self.dbs.remove(&db) {
            self.dbs_by_name.remove(&(d.tenant, d.name));
        }
    }

    fn expire_idempotency(&mut self, now: Timestamp) {
        let horizon = Timestamp(now.0.saturating_sub(IDEMPOTENCY_TTL_MICROS));
        while let Some(first) = self.idempotency_by_time.first() {
            if first.0 >= horizon {
                break;
            }
            let (_, key_id, idem) = self.idempotency_by_time.pop_first().expect("non-empty");
            self.idempotency.remove(&(key_id, idem));
        }
    }

    /// Folds a sequence of events.
    pub fn apply_all<'a>(&mut self, envs: impl IntoIterator<Item = &'a Envelope>) {
        for env in envs {
            self.apply(env);
        }
    }

    /// The tenant called `name`.
    pub fn tenant_by_name(&self, name: &str) -> Option<&Tenant> {
        self.tenants_by_name
            .get(name)
            .and_then(|id| self.tenants.get(id))
    }

    /// The databases of a tenant, by name.
    pub fn dbs_of(&self, tenant: Uuid) -> impl Iterator<Item = &Db> + '_ {
        self.dbs_by_name
            .range((tenant, String::new())..)
            .take_while(move |((t, _), _)| *t == tenant)
            .filter_map(|(_, id)| self.dbs.get(id))
    }

    /// The database `name` of a tenant.
    pub fn db_by_name(&self, tenant: Uuid, name: &str) -> Option<&Db> {
        self.dbs_by_name
            .get(&(tenant, name.to_owned()))
            .and_then(|id| self.dbs.get(id))
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
            tenants: self.tenants.len(),
            dbs: self.dbs.len(),
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
            tenant_id: None,
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
                api_keys: 1,
                tenants: 0,
                dbs: 0,
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
