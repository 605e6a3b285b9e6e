//! TLS: the certificate (given, or self-signed once and kept), the rustls configuration with
//! ALPN `postgresql` (PostgreSQL 17's direct TLS requires it), and the `tls-server-end-point`
//! channel binding data SCRAM-SHA-256-PLUS binds to (RFC 5929: a hash of the certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256, Sha384, Sha512};

pub const ALPN: &[u8] = b"postgresql";

/// The server's TLS setup.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// The same certificate for the HTTP front door (ALPN `http/1.1`).
    pub http: Arc<rustls::ServerConfig>,
    /// `tls-server-end-point` channel binding data.
    pub end_point: Vec<u8>,
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--tls-cert` and `--tls-key` (PEM).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for `names`, made on first start and kept in `dir`.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

impl Tls {
    pub fn load(source: &Source) -> Result<Tls, String> {
        let (cert_path, key_path) = match source {
            Source::Files { cert, key } => (cert.clone(), key.clone()),
            Source::SelfSigned { dir, names } => self_signed(dir, names)?,
        };
        let (config, leaf) = server_config(&cert_path, &key_path, &[ALPN])?;
        let (http, _) = server_config(&cert_path, &key_path, &[b"http/1.1"])?;
        Ok(Tls {
            config,
            http,
            end_point: end_point(leaf.as_ref()),
        })
    }
}

/// A rustls server setup from a PEM certificate chain and key, offering `alpn`; also the
/// leaf certificate. (The control plane's HTTP API uses it too.)
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ServerConfig>, CertificateDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read the key {}: {e}", key_path.display()))?;
    let leaf = certs
        .first()
        .cloned()
        .ok_or_else(|| format!("{} holds no certificate", cert_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS setup: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), leaf))
}

/// The kept self-signed certificate and key in `dir`, made if missing (the key 0600).
fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("gateway.crt");
    let key = dir.join("gateway.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "made a self-signed certificate for the Gateway");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// RFC 5929 §4.1: the certificate's hash with its signature's hash function, SHA-256 for
/// MD5 and SHA-1 (and for anything not recognized).
pub fn end_point(der: &[u8]) -> Vec<u8> {
    // OIDs (DER content bytes) of signature algorithms using SHA-384 and SHA-512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    match signature_oid(der) {
        Some(oid) if SHA384.contains(&oid) => Sha384::digest(der).to_vec(),
        Some(oid) if SHA512.contains(&oid) => Sha512::digest(der).to_vec(),
        _ => Sha256::digest(der).to_vec(),
    }
}

/// One DER TLV at the head of `b`: (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`: the
/// algorithm's OID.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = tlv(der)?;
    let (_, _tbs, rest) = tlv(cert)?;
    let (_, algorithm, _) = tlv(rest)?;
    let (tag, oid, _) = tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("spg99-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let source = Source::SelfSigned {
            dir: dir.clone(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let first = Tls::load(&source).unwrap();
        let again = Tls::load(&source).unwrap();
        assert_eq!(first.end_point, again.end_point, "the same certificate");
        assert_eq!(
            first.end_point.len(),
            32,
            "ECDSA P-256 with SHA-256: SHA-256"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("gateway.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let der = CertificateDer::pem_file_iter(dir.join("gateway.crt"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            signature_oid(der.as_ref()),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
