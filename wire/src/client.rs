//! The HTTP client the Gateway and the workers reach the internal API with: plain HTTP, or
//! HTTPS trusting the public roots or, with `--control-plane-ca`, the authorities in a PEM
//! file (a control plane with a private CA or a self-signed certificate).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// `builder` finished, trusting the authorities in `ca` (PEM) for HTTPS when given.
pub fn agent(builder: ureq::AgentBuilder, ca: Option<&Path>) -> Result<ureq::Agent, String> {
    let Some(ca) = ca else {
        return Ok(builder.build());
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect())
        .map_err(|e| format!("cannot read the authority {}: {e}", ca.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(builder.tls_config(Arc::new(config)).build())
}
