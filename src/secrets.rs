//! The secret key that seals what the log must keep but never show: tenant passwords and the
//! answers to idempotent requests (which can hold a token).
//!
//! The key is kept outside the log: `SPG99_SECRET_KEY` (64 hex digits) when set, otherwise the
//! file `secret.key` in the data directory, created with mode 0600 on the first start. The log
//! alone (a backup, a copy sent for an audit) does not reveal a password; the log and the key
//! together rebuild everything. For stronger separation give the key by environment from a
//! secret manager and keep it out of the data directory.
//!
//! Sealing is XChaCha20-Poly1305 with a random 24-byte nonce stored in front of the
//! ciphertext, and the owning object's id as associated data, so that a sealed value moved to
//! another object does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use spg99_events::Sealed;

use crate::auth::hex;

const NONCE_LEN: usize = 24;
pub const KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("SPG99_SECRET_KEY must be 64 hex digits (32 bytes)")]
    BadEnvKey,
    #[error("{path} must hold 64 hex digits (32 bytes)")]
    BadKeyFile { path: PathBuf },
    #[error("cannot use the secret key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a sealed value does not open with this secret key (wrong key, or damaged value)")]
    WrongKey,
}

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    /// A digest of the key, from which [`SecretBox::derive`] makes others.
    root: [u8; 32],
}

fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> SecretBox {
        use sha2::Digest;
        SecretBox {
            cipher: XChaCha20Poly1305::new(&key.into()),
            root: sha2::Sha256::new()
                .chain_update(b"spg99 derived secrets\0")
                .chain_update(key)
                .finalize()
                .into(),
        }
    }

    /// A secret for `purpose`, the same wherever the key is the same (and nothing about the
    /// key can be learnt from it).
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::new()
            .chain_update(self.root)
            .chain_update(purpose)
            .finalize()
            .into()
    }

    /// The key from `env_key` if given, else from the data directory's key file, which is
    /// created (0600) when missing.
    pub fn load(data_dir: &Path, env_key: Option<&str>) -> Result<SecretBox, SecretError> {
        if let Some(k) = env_key {
            return parse_hex_key(k)
                .map(SecretBox::from_key)
                .ok_or(SecretError::BadEnvKey);
        }
        let path = data_dir.join(KEY_FILE);
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_hex_key(&text)
                .map(SecretBox::from_key)
                .ok_or_else(|| SecretError::BadKeyFile { path: path.clone() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(format!("{}\n", hex(&key)).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(io)?;
                std::fs::File::open(data_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
                Ok(SecretBox::from_key(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Encrypts `plaintext`, bound to `owner` (the id of the object it belongs to).
    pub fn seal(&self, owner: &[u8], plaintext: &[u8]) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: owner,
                },
            )
            .expect("encryption into memory cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Sealed(out)
    }

    /// Decrypts a value sealed for `owner`.
    pub fn open(&self, owner: &[u8], sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        if sealed.0.len() < NONCE_LEN {
            return Err(SecretError::WrongKey);
        }
        let (nonce, ct) = sealed.0.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: owner,
                },
            )
            .map_err(|_| SecretError::WrongKey)
    }

    pub fn open_string(&self, owner: &[u8], sealed: &Sealed) -> Result<String, SecretError> {
        String::from_utf8(self.open(owner, sealed)?).map_err(|_| SecretError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_key() {
        let a = SecretBox::from_key([1; 32]);
        let s = a.seal(b"tenant-1", b"hunter2");
        assert!(!s.0.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open(b"tenant-1", &s).unwrap(), b"hunter2");
        assert!(a.open(b"tenant-2", &s).is_err());
        assert!(SecretBox::from_key([2; 32]).open(b"tenant-1", &s).is_err());
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = a.seal(b"x", b"y");
        let b = SecretBox::load(dir.path(), None).unwrap();
        assert_eq!(b.open(b"x", &s).unwrap(), b"y");
        assert!(matches!(
            SecretBox::load(dir.path(), Some("short")),
            Err(SecretError::BadEnvKey)
        ));
    }
}
