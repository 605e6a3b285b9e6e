//! Passwords sent in clear inside TLS (a WebSocket's PasswordMessage, the connection string of
//! a `POST /sql`), checked against the role's verifier: PBKDF2 with its salt and iterations,
//! then `H(ClientKey) == StoredKey` ([`spg99_scram::Verifier::check_password`]), on a blocking
//! thread (4096 rounds take about a millisecond and a half of CPU).
//!
//! A serverless client sends its password with every request, so a good one is remembered:
//! by a keyed hash of the user, the verifier's salt and the password (a secret of the
//! process's own, so the cache holds nothing to guess passwords from offline faster than the
//! verifier itself), mapped to the `ClientKey` it yielded, and accepted again only while the
//! role's current verifier still knows that key (a password reset ends it). Never the
//! password itself, never a failed one.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use spg99_scram::{Key, Verifier};

/// Good passwords remembered at most; past them, the memory starts again.
const REMEMBERED: usize = 10_000;

pub struct Passwords {
    secret: [u8; 32],
    good: Mutex<HashMap<[u8; 32], Key>>,
}

impl Default for Passwords {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .expect("the operating system's random generator is unavailable");
        Passwords {
            secret,
            good: Mutex::new(HashMap::new()),
        }
    }
}

impl Passwords {
    /// The `ClientKey` of `password` if it is `user`'s (by `verifier`); `None` for a wrong one,
    /// or one holding a NUL (PostgreSQL's protocol cannot carry it).
    pub async fn check(&self, user: &str, verifier: &Verifier, password: &[u8]) -> Option<Key> {
        if password.contains(&0) {
            return None;
        }
        let tag: [u8; 32] = Sha256::new()
            .chain_update(self.secret)
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(&verifier.salt)
            .chain_update([0])
            .chain_update(password)
            .finalize()
            .into();
        let remembered = crate::lock(&self.good).get(&tag).copied();
        if let Some(key) = remembered {
            if verifier.knows(&key) {
                return Some(key);
            }
        }
        let (v, pw) = (verifier.clone(), password.to_vec());
        let key = tokio::task::spawn_blocking(move || v.check_password(&pw))
            .await
            .ok()
            .flatten()?;
        let mut good = crate::lock(&self.good);
        if good.len() >= REMEMBERED {
            good.clear();
        }
        good.insert(tag, key);
        Some(key)
    }
}
