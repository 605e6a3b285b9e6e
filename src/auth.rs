//! Tokens and authentication.
//!
//! An API token is `spg99_<key_id>_<secret>`: `key_id` is 16 lowercase hex digits (public, it
//! names the key), `secret` is 48 lowercase hex digits (192 random bits). The prefix makes a
//! leaked token easy to find with grep or a secret scanner. The service token is
//! `spg99_svc_<secret>`. Only SHA-256 of a secret is ever stored; a plain hash is enough
//! because secrets are long and random, not chosen by people. Hashes are compared in constant
//! time.

use sha2::{Digest, Sha256};
use spg99_events::{SecretHash, Timestamp};
use std::sync::Arc;

use spg99_projections::{ApiKey, State};

const PREFIX: &str = "spg99_";
const SERVICE_ID: &str = "svc";
const KEY_ID_LEN: usize = 16;
const SECRET_LEN: usize = 48;

/// A parsed token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    key_id: String,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({PREFIX}{}_…)", self.key_id)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `n` random bytes as lowercase hex, from the operating system's generator.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random generator is unavailable");
    hex(&buf)
}

/// `len` random characters from `[A-Za-z0-9]` (no character needs escaping in a URL).
pub fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).expect("the operating system's random generator is unavailable");
        // Bytes below 248 (= 4 * 62) map evenly onto the alphabet; the rest are dropped.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(*b % 62) as usize] as char);
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Token {
    /// A new API key token with a fresh key id and secret.
    pub fn generate_api_key() -> Token {
        Token {
            key_id: random_hex(KEY_ID_LEN / 2),
            secret: random_hex(SECRET_LEN / 2),
        }
    }

    /// A new secret for an existing key id (rotation).
    pub fn with_new_secret(key_id: &str) -> Token {
        Token {
            key_id: key_id.to_owned(),
            secret: random_hex(SECRET_LEN / 2),
        }
    }

    /// A new service token.
    pub fn generate_service() -> Token {
        Token {
            key_id: SERVICE_ID.into(),
            secret: random_hex(SECRET_LEN / 2),
        }
    }

    /// The service token made from `seed` (the same seed, the same token).
    pub fn service_from(seed: &[u8; 32]) -> Token {
        Token {
            key_id: SERVICE_ID.into(),
            secret: hex(&seed[..SECRET_LEN / 2]),
        }
    }

    /// Parses either kind of token; `None` when it has not the token shape.
    pub fn parse(raw: &str) -> Option<Token> {
        let rest = raw.strip_prefix(PREFIX)?;
        let (key_id, secret) = rest.split_once('_')?;
        let id_ok = key_id == SERVICE_ID || is_lower_hex(key_id, KEY_ID_LEN);
        (id_ok && is_lower_hex(secret, SECRET_LEN)).then(|| Token {
            key_id: key_id.into(),
            secret: secret.into(),
        })
    }

    pub fn is_service(&self) -> bool {
        self.key_id == SERVICE_ID
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret_hash(&self) -> SecretHash {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// The full token, to be shown to its owner exactly once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.key_id, self.secret)
    }
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Key(Arc<ApiKey>),
    Service,
}

/// Why a request is not authenticated. Each is a 401 with its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
    Expired,
    Revoked,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "token_revoked",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "send the API key as 'Authorization: Bearer spg99_…'",
            AuthError::Invalid => "the token is malformed, unknown, or its secret is wrong",
            AuthError::Expired => "the token has expired; issue a new key",
            AuthError::Revoked => "the token was revoked",
        }
    }
}

/// Checks an `Authorization` header value against the state at time `now`. `local` is the
/// hash of a service token known to this process alone (its embedded Gateway and worker use
/// it), accepted beside the one in the log.
/// The token of an `Authorization: Bearer <token>` header's value.
pub fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
}

pub fn authenticate(
    state: &State,
    header: Option<&str>,
    now: Timestamp,
    local: Option<&SecretHash>,
) -> Result<Principal, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let raw = bearer(header).ok_or(AuthError::Invalid)?;
    let token = Token::parse(raw).ok_or(AuthError::Invalid)?;
    let given = token.secret_hash();
    if token.is_service() {
        let stored = state.service_token.iter().chain(local);
        let mut matched = false;
        for hash in stored {
            matched |= hashes_equal(hash, &given);
        }
        return if matched {
            Ok(Principal::Service)
        } else {
            Err(AuthError::Invalid)
        };
    }
    let key = state
        .api_keys
        .get(token.key_id())
        .ok_or(AuthError::Invalid)?;
    if !hashes_equal(&key.secret_hash, &given) {
        return Err(AuthError::Invalid);
    }
    check_key(key, now)?;
    Ok(Principal::Key(key.clone()))
}

/// Whether a key whose secret was proven (by token or by ticket) may act at time `now`.
pub fn check_key(key: &ApiKey, now: Timestamp) -> Result<(), AuthError> {
    if key.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if key.expires_at.is_some_and(|exp| exp <= now) {
        return Err(AuthError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let t = Token::generate_api_key();
        let shown = t.reveal();
        assert!(shown.starts_with("spg99_"));
        assert_eq!(Token::parse(&shown), Some(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        let s = Token::generate_service();
        assert!(Token::parse(&s.reveal()).unwrap().is_service());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = Token::generate_api_key().reveal();
        for bad in [
            "",
            "spg99_",
            "spg99__",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replace("spg99_", "spg98_"),
            "spg99_0123456789abcdef_zz",
            "spg99_svc_",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }
}
