//! A tenant's PostgreSQL credentials: the `pg_password` the API shows, and the SCRAM-SHA-256
//! verifier derived from it, from which writers make the tenant's role and the Gateway checks
//! clients without ever holding the password. Both are sealed in the log.
//!
//! Passwords are 32 random letters and digits (190 bits), so the verifier's iteration count
//! adds nothing against guessing; it is PostgreSQL's default (4096) all the same, so that
//! every client library accepts it.

use spg99_events::Sealed;
use spg99_scram::{Verifier, DEFAULT_ITERATIONS};
use uuid::Uuid;

use crate::auth::random_alphanumeric;
use crate::secrets::{SecretBox, SecretError};

const PASSWORD_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// A new random password.
pub fn new_password() -> String {
    random_alphanumeric(PASSWORD_LEN)
}

/// The verifier of `password`, with a fresh random salt.
pub fn verifier_of(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).expect("the operating system's random generator is unavailable");
    Verifier::derive(password.as_bytes(), &salt, DEFAULT_ITERATIONS).to_string()
}

/// What a tenant's verifier is sealed to: not its password's owner (the tenant id), so that
/// neither sealed value can stand in for the other.
fn verifier_owner(tenant_id: Uuid) -> Vec<u8> {
    [b"verifier\0".as_slice(), tenant_id.as_bytes()].concat()
}

/// `password` and its verifier, sealed for `tenant_id`.
pub fn seal(secrets: &SecretBox, tenant_id: Uuid, password: &str) -> (Sealed, Sealed) {
    let verifier = verifier_of(password);
    (
        secrets.seal(tenant_id.as_bytes(), password.as_bytes()),
        seal_verifier(secrets, tenant_id, &verifier),
    )
}

pub fn seal_verifier(secrets: &SecretBox, tenant_id: Uuid, verifier: &str) -> Sealed {
    secrets.seal(&verifier_owner(tenant_id), verifier.as_bytes())
}

pub fn open_password(
    secrets: &SecretBox,
    tenant_id: Uuid,
    sealed: &Sealed,
) -> Result<String, SecretError> {
    secrets.open_string(tenant_id.as_bytes(), sealed)
}

pub fn open_verifier(
    secrets: &SecretBox,
    tenant_id: Uuid,
    sealed: &Sealed,
) -> Result<String, SecretError> {
    secrets.open_string(&verifier_owner(tenant_id), sealed)
}

/// The password a database's standbys log in to its writer with: derived from the key, never
/// stored (the same on every replica of the control plane, and in every instruction list).
pub fn replication_password(secrets: &SecretBox, db_id: Uuid) -> String {
    let mut purpose = b"spg99 replication\0".to_vec();
    purpose.extend_from_slice(db_id.as_bytes());
    crate::auth::hex(&secrets.derive(&purpose))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_checks_its_password_and_its_seal_is_not_the_passwords() {
        let password = new_password();
        assert_eq!(password.len(), 32);
        let v = Verifier::parse(&verifier_of(&password)).unwrap();
        assert_eq!(
            v,
            Verifier::derive(password.as_bytes(), &v.salt, v.iterations)
        );
        assert_eq!(v.iterations, 4096);
        assert_ne!(
            Verifier::parse(&verifier_of(&password)).unwrap().salt,
            v.salt
        );

        let secrets = SecretBox::from_key([7; 32]);
        let t = Uuid::new_v4();
        let (pw, ver) = seal(&secrets, t, &password);
        assert_eq!(open_password(&secrets, t, &pw).unwrap(), password);
        assert!(open_verifier(&secrets, t, &ver)
            .unwrap()
            .starts_with("SCRAM-SHA-256$4096:"));
        assert!(
            open_verifier(&secrets, t, &pw).is_err(),
            "a password is no verifier"
        );
        assert!(
            open_password(&secrets, t, &ver).is_err(),
            "a verifier is no password"
        );
    }
}
