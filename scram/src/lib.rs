//! SCRAM-SHA-256 (RFC 5802, RFC 7677) the way a password-less proxy needs it.
//!
//! - [`Verifier`]: what PostgreSQL stores for a role (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`,
//!   RFC 5803), derived once from the password by the control plane.
//! - [`Server`]: the server's side of the exchange against a verifier alone: it checks the
//!   client's proof and so recovers the client's `ClientKey`.
//! - [`Client`]: the client's side with keys instead of a password: with the recovered
//!   `ClientKey` (and the verifier's `ServerKey`) a proxy logs in to a backend whose role has
//!   the same verifier.
//!
//! ```text
//! SaltedPassword = Hi(password, salt, i)              ClientKey = HMAC(SaltedPassword, "Client Key")
//! StoredKey      = SHA-256(ClientKey)                 ServerKey = HMAC(SaltedPassword, "Server Key")
//! AuthMessage    = client-first-bare "," server-first "," client-final-without-proof
//! proof          = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! server's check: SHA-256(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey
//! ```
//!
//! Unknown users get [`Verifier::mock`]: a verifier that is stable per user name and that no
//! proof matches, so that the exchange looks the same as for a known user with a wrong
//! password. Comparisons of secrets are in constant time.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub type Key = [u8; 32];

/// The iteration count PostgreSQL uses by default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The SASL mechanism names.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// Equality that takes the same time wherever the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256 and one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// A role's SCRAM-SHA-256 secret as PostgreSQL stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Key,
    pub server_key: Key,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// The verifier of `password` (already SASLprep-normalized; the control plane's passwords
    /// are ASCII letters and digits, which it leaves as they are).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Verifier {
        let salted = hi(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// The `ClientKey` of `password` if it is this verifier's password (PBKDF2 with its salt
    /// and iterations, then `H(ClientKey) == StoredKey`, compared in constant time): for a
    /// client that sends its password in clear inside TLS, which then logs in to the backend
    /// with the key as a SCRAM client would.
    pub fn check_password(&self, password: &[u8]) -> Option<Key> {
        let salted = hi(password, &self.salt, self.iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        self.knows(&client_key).then_some(client_key)
    }

    /// Whether `client_key` is this verifier's `ClientKey` (constant time).
    pub fn knows(&self, client_key: &Key) -> bool {
        ct_eq(&sha256(client_key), &self.stored_key)
    }

    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let key = |k: &str| -> Option<Key> { B64.decode(k).ok()?.try_into().ok() };
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        Some(Verifier {
            iterations,
            salt: B64.decode(salt).ok().filter(|s| !s.is_empty())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A verifier for a user that does not exist: stable per `user` (so that two attempts look
    /// alike), derived from a secret of the server's, and matched by no proof.
    pub fn mock(secret: &[u8], user: &str) -> Verifier {
        let seed = hmac(secret, &[b"mock verifier\0", user.as_bytes()]);
        Verifier {
            iterations: DEFAULT_ITERATIONS,
            salt: seed[..16].to_vec(),
            stored_key: hmac(&seed, &[b"stored"]),
            server_key: hmac(&seed, &[b"server"]),
        }
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Why an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The message is not what SCRAM allows here.
    Malformed(&'static str),
    /// The proof does not match: a wrong password (or an unknown user).
    BadProof,
    /// The channel binding is missing, of another kind, or of another channel.
    ChannelBinding(&'static str),
    /// The nonce in the client's final message is not this exchange's.
    NonceMismatch,
    /// The server's signature does not match (client side): not the server it claims.
    BadServerSignature,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            Error::BadProof => f.write_str("the proof does not match"),
            Error::ChannelBinding(what) => write!(f, "channel binding: {what}"),
            Error::NonceMismatch => f.write_str("the nonce is not this exchange's"),
            Error::BadServerSignature => f.write_str("the server's signature does not match"),
        }
    }
}

impl std::error::Error for Error {}

/// What the server knows of the connection's channel, for `tls-server-end-point`
/// (RFC 5929: the hash of the server's certificate).
#[derive(Debug, Clone, Default)]
pub enum Channel {
    /// Not TLS: there is nothing to bind to.
    #[default]
    Plain,
    /// TLS, with the `tls-server-end-point` binding data.
    Tls { end_point: Vec<u8> },
}

/// The attribute `name=value` at the head of `s`, or `Malformed`.
fn attr<'a>(part: Option<&'a str>, name: char, what: &'static str) -> Result<&'a str, Error> {
    let part = part.ok_or(Error::Malformed(what))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(Error::Malformed(what));
    }
    Ok(&part[2..])
}

/// A nonce's characters: printable ASCII except ','.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The server's side of one exchange.
pub struct Server {
    verifier: Verifier,
    gs2_header: String,
    expect_binding: Option<Vec<u8>>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Server {
    /// Reads the client's first message for `mechanism` (the one the client chose) and
    /// answers with the server's first. `server_nonce` must be fresh and random.
    pub fn start(
        verifier: Verifier,
        mechanism: &str,
        client_first: &str,
        server_nonce: &str,
        channel: &Channel,
    ) -> Result<(Server, String), Error> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(Error::Malformed("unknown mechanism")),
        };
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = client_first.splitn(3, ',');
        let flag = parts.next().ok_or(Error::Malformed("no gs2 header"))?;
        let authzid = parts.next().ok_or(Error::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(Error::Malformed("no client-first-bare"))?;
        if !authzid.is_empty() {
            return Err(Error::Malformed(
                "authorization identities are not supported",
            ));
        }
        let expect_binding = match (flag, plus, channel) {
            ("p=tls-server-end-point", true, Channel::Tls { end_point }) => Some(end_point.clone()),
            (f, true, _) if f.starts_with("p=") => {
                return Err(Error::ChannelBinding(
                    "only tls-server-end-point over TLS is offered",
                ))
            }
            (_, true, _) => return Err(Error::ChannelBinding("SCRAM-SHA-256-PLUS needs p=")),
            ("n", false, _) => None,
            // The client can bind but believes the server cannot: over TLS, where the server
            // offers PLUS, that is a downgrade (RFC 5802 §6).
            ("y", false, Channel::Tls { .. }) => {
                return Err(Error::ChannelBinding("the server supports channel binding"))
            }
            ("y", false, Channel::Plain) => None,
            (f, false, _) if f.starts_with("p=") => {
                return Err(Error::ChannelBinding(
                    "channel binding needs SCRAM-SHA-256-PLUS",
                ))
            }
            _ => return Err(Error::Malformed("bad gs2 flag")),
        };
        let mut fields = bare.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(Error::Malformed("extensions are not supported"));
        }
        // PostgreSQL ignores the user name here; the startup message names the user.
        attr(first, 'n', "no user name")?;
        let client_nonce = attr(fields.next(), 'r', "no nonce")?;
        if !valid_nonce(client_nonce) || !valid_nonce(server_nonce) {
            return Err(Error::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let server = Server {
            gs2_header: format!("{flag},{authzid},"),
            verifier,
            expect_binding,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((server, server_first))
    }

    /// Checks the client's final message; on success, the `ClientKey` its proof reveals and
    /// the server's final message.
    pub fn finish(self, client_final: &str) -> Result<(Key, String), Error> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(Error::Malformed("no proof"))?;
        let mut fields = without_proof.split(',');
        let binding = attr(fields.next(), 'c', "no channel binding")?;
        let nonce = attr(fields.next(), 'r', "no nonce")?;
        let binding = B64
            .decode(binding)
            .map_err(|_| Error::Malformed("channel binding is not base64"))?;
        let mut expected = self.gs2_header.clone().into_bytes();
        if let Some(data) = &self.expect_binding {
            expected.extend_from_slice(data);
        }
        if !ct_eq(&binding, &expected) {
            return Err(Error::ChannelBinding("the binding is not this channel's"));
        }
        if !ct_eq(nonce.as_bytes(), self.nonce.as_bytes()) {
            return Err(Error::NonceMismatch);
        }
        let proof: Key = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::Malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &signature);
        if !ct_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(Error::BadProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok((client_key, format!("v={}", B64.encode(server_signature))))
    }
}

/// What a client needs to log in without the password: the `ClientKey` (its hash is the
/// role's `StoredKey`) and the `ServerKey` to check the server's signature.
#[derive(Clone)]
pub struct Keys {
    pub client_key: Key,
    pub server_key: Key,
}

/// The client's side of one exchange, with keys (no channel binding: the proxy's link to the
/// backend is its own).
pub struct Client {
    keys: Keys,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl Client {
    /// The client's first message (`n,,n=,r=<nonce>`); `nonce` must be fresh and random.
    pub fn start(keys: Keys, nonce: &str) -> (Client, String) {
        let bare = format!("n=,r={nonce}");
        let first = format!("n,,{bare}");
        let client = Client {
            keys,
            client_first_bare: bare,
            nonce: nonce.to_owned(),
            auth_message: None,
        };
        (client, first)
    }

    /// Reads the server's first message and answers with the client's final one.
    pub fn respond(&mut self, server_first: &str) -> Result<String, Error> {
        let mut fields = server_first.split(',');
        let nonce = attr(fields.next(), 'r', "no nonce")?;
        attr(fields.next(), 's', "no salt")?;
        attr(fields.next(), 'i', "no iteration count")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(Error::NonceMismatch);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&self.keys.client_key, &signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message.
    pub fn finish(self, server_final: &str) -> Result<(), Error> {
        let auth_message = self
            .auth_message
            .ok_or(Error::Malformed("final before first"))?;
        let v = attr(Some(server_final), 'v', "no server signature")?;
        let v = B64
            .decode(v)
            .map_err(|_| Error::Malformed("the signature is not base64"))?;
        let expected = hmac(&self.keys.server_key, &[auth_message.as_bytes()]);
        if ct_eq(&v, &expected) {
            Ok(())
        } else {
            Err(Error::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3.
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Verifier {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Verifier::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn a_password_in_clear_is_checked_against_the_verifier_and_yields_the_client_key() {
        let v = rfc_verifier();
        let key = v.check_password(b"pencil").expect("the right password");
        assert!(v.knows(&key));
        // The key it yields is the one a SCRAM exchange reveals.
        let (server, _) = Server::start(
            v.clone(),
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        assert_eq!(server.finish(CLIENT_FINAL).unwrap().0, key);
        // (Not "pencil\0": HMAC pads its key with zeros, so trailing NULs are the same key; a
        // password cannot hold a NUL in PostgreSQL's protocol, and the Gateway refuses one.)
        for wrong in [&b"Pencil"[..], b"pencil ", b"", b"pencil!"] {
            assert_eq!(v.check_password(wrong), None);
        }
        assert_eq!(
            Verifier::mock(b"secret", "user").check_password(b"pencil"),
            None
        );
    }

    #[test]
    fn the_server_checks_rfc_7677s_exchange_from_the_verifier_alone() {
        let v = rfc_verifier();
        let (server, first) = Server::start(
            v.clone(),
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        assert_eq!(first, SERVER_FIRST);
        let (client_key, last) = server.finish(CLIENT_FINAL).unwrap();
        assert_eq!(last, SERVER_FINAL);
        assert_eq!(sha256(&client_key), v.stored_key);
    }

    #[test]
    fn the_client_with_recovered_keys_produces_rfc_7677s_proof() {
        let v = rfc_verifier();
        let (server, _) = Server::start(
            v.clone(),
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        let (client_key, _) = server.finish(CLIENT_FINAL).unwrap();
        let keys = Keys {
            client_key,
            server_key: v.server_key,
        };
        let (mut client, first) = Client::start(keys, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        // The RFC's client named the user; the proof covers client-first-bare, so it differs
        // from the RFC's, but the server accepts it and its signature checks out.
        let fin = client.respond(SERVER_FIRST).unwrap();
        let (server, _) =
            Server::start(v, SCRAM_SHA_256, &first, SERVER_NONCE, &Channel::Plain).unwrap();
        let (_, server_final) = server.finish(&fin).unwrap();
        client.finish(&server_final).unwrap();
    }

    #[test]
    fn verifiers_print_and_parse_as_postgresql_stores_them() {
        let v = rfc_verifier();
        let s = v.to_string();
        assert!(
            s.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{s}"
        );
        assert_eq!(Verifier::parse(&s), Some(v));
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
        ] {
            assert!(Verifier::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let wrong = Verifier::derive(b"pencils", &salt, 4096);
        let (s, _) = Server::start(
            wrong,
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        assert_eq!(s.finish(CLIENT_FINAL).err(), Some(Error::BadProof));
        let mock = Verifier::mock(b"secret", "nobody");
        assert_eq!(mock, Verifier::mock(b"secret", "nobody"));
        assert_ne!(mock, Verifier::mock(b"secret", "somebody"));
        let (s, first) = Server::start(
            mock,
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        assert!(first.ends_with(",i=4096"));
        // The client's final must carry this exchange's nonce and salt-independent proof.
        assert_eq!(s.finish(CLIENT_FINAL).err(), Some(Error::BadProof));
    }

    #[test]
    fn channel_binding_is_checked_and_downgrades_refused() {
        let v = rfc_verifier();
        let tls = Channel::Tls {
            end_point: vec![7; 32],
        };
        // A client that binds to this channel.
        let first = "p=tls-server-end-point,,n=,r=abc";
        let (server, sf) =
            Server::start(v.clone(), SCRAM_SHA_256_PLUS, first, "def", &tls).unwrap();
        let nonce = sf.split(',').next().unwrap().trim_start_matches("r=");
        let mut cbind = b"p=tls-server-end-point,,".to_vec();
        cbind.extend_from_slice(&[7; 32]);
        let fin = format!(
            "c={},r={nonce},p={}",
            B64.encode(&cbind),
            B64.encode([0u8; 32])
        );
        // The binding matches; the (made-up) proof does not.
        assert_eq!(server.finish(&fin).err(), Some(Error::BadProof));
        // Another channel's data.
        let (server, _) = Server::start(v.clone(), SCRAM_SHA_256_PLUS, first, "def", &tls).unwrap();
        let mut other = b"p=tls-server-end-point,,".to_vec();
        other.extend_from_slice(&[8; 32]);
        let fin = format!(
            "c={},r={nonce},p={}",
            B64.encode(&other),
            B64.encode([0u8; 32])
        );
        assert!(matches!(server.finish(&fin), Err(Error::ChannelBinding(_))));
        // "y" over TLS: the client thinks the server cannot bind.
        assert!(matches!(
            Server::start(v.clone(), SCRAM_SHA_256, "y,,n=,r=abc", "def", &tls),
            Err(Error::ChannelBinding(_))
        ));
        // PLUS without TLS.
        assert!(Server::start(v, SCRAM_SHA_256_PLUS, first, "def", &Channel::Plain).is_err());
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let v = rfc_verifier();
        for first in [
            "",
            "n",
            "n,",
            "n,,",
            "n,,r=x",
            "n,a=b,n=u,r=x",
            "x,,n=u,r=x",
            "n,,m=1,n=u,r=x",
            "n,,n=u,r=a b",
        ] {
            let r = Server::start(
                v.clone(),
                SCRAM_SHA_256,
                first,
                SERVER_NONCE,
                &Channel::Plain,
            );
            assert!(r.is_err(), "{first:?}");
        }
        let (server, _) = Server::start(
            v,
            SCRAM_SHA_256,
            CLIENT_FIRST,
            SERVER_NONCE,
            &Channel::Plain,
        )
        .unwrap();
        assert!(server.finish("c=biws,r=x,p=!!").is_err());
    }
}

/// The SCRAM parsers against messages no client wrote: an answer or an error, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Derived once: 4096 PBKDF2 rounds per case would be most of the run.
    fn verifier() -> Verifier {
        static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
        V.get_or_init(|| Verifier::derive(b"pencil", b"salt-of-16-bytes", 4096))
            .clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_client_first_is_answered_or_refused(first in "\\PC{0,200}", plus: bool, tls: bool) {
            let channel = if tls { Channel::Tls { end_point: vec![7; 32] } } else { Channel::Plain };
            let mechanism = if plus { SCRAM_SHA_256_PLUS } else { SCRAM_SHA_256 };
            let _ = Server::start(verifier(), mechanism, &first, "servernonce", &channel);
        }

        #[test]
        fn any_client_final_after_a_good_first_is_refused_or_checked(
            last in "\\PC{0,300}",
            shaped in "c=[A-Za-z0-9+/=]{0,12},r=clientnonceservernonce,p=[A-Za-z0-9+/=]{0,60}",
        ) {
            for client_final in [last, shaped] {
                let (server, _) = Server::start(
                    verifier(),
                    SCRAM_SHA_256,
                    "n,,n=user,r=clientnonce",
                    "servernonce",
                    &Channel::Plain,
                )
                .unwrap();
                prop_assert!(server.finish(&client_final).is_err());
            }
        }

        #[test]
        fn any_stored_verifier_text_parses_or_is_refused(text in "\\PC{0,200}", shaped in "SCRAM-SHA-256\\$[0-9]{0,6}:[A-Za-z0-9+/=]{0,30}\\$[A-Za-z0-9+/=:]{0,100}") {
            let _ = Verifier::parse(&text);
            let _ = Verifier::parse(&shaped);
        }

        #[test]
        fn any_server_first_is_answered_or_refused(first in "\\PC{0,200}", shaped in "r=clientnonce[a-z]{0,8},s=[A-Za-z0-9+/=]{0,30},i=[0-9]{0,12}") {
            for server_first in [first, shaped] {
                let keys = Keys { client_key: [1; 32], server_key: [2; 32] };
                let (mut client, _) = Client::start(keys, "clientnonce");
                let _ = client.respond(&server_first);
            }
        }
    }
}
