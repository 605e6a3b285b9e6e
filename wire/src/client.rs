//! The client the Gateway and the workers reach the internal API with: [`agent`] sets up the
//! HTTP client (plain HTTP, or HTTPS trusting the public roots or, with
//! `--control-plane-ca`, the authorities in a PEM file), and [`Internal`] calls the routes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    Checkout, Code, ErrorBody, Heartbeat, Instructions, Lease, Pending, Register, Registered,
    Release, Renew, Renewed, Report, ReportAnswer, Role, RoleChanges,
};

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

/// A call with no deadline of its own (a wait) may take this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A POST that fails within this long for want of an answer is sent once more, on a new
/// connection (when it may be repeated): a kept-alive connection the control plane closed
/// just as the request went out fails like that, and ureq resends only idempotent methods.
const STALE_CONNECTION: Duration = Duration::from_millis(100);

/// Why a call to the internal API did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No answer: unreachable, timed out, cut, or an answer that could not be read.
    Unreachable(String),
    /// An error answer: its status, its code when this build acts on it, its message, and
    /// `Retry-After` when given.
    Refused {
        status: u16,
        code: Option<Code>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A success whose body is not what the protocol says.
    Protocol(String),
}

impl CallError {
    /// Worth retrying: no answer, or a 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Unreachable(_) => true,
            CallError::Refused { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            CallError::Protocol(_) => false,
        }
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            CallError::Refused { code, .. } => *code,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn refused(status: u16, response: ureq::Response) -> CallError {
        let retry_after = response
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.into_string().unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => match Code::parse(&body.error.code) {
                Some(code) => (Some(code), body.error.message),
                // A code this build does not act on stays in the message, for the logs.
                None => (None, format!("{}: {}", body.error.code, body.error.message)),
            },
            Err(_) => (None, text),
        };
        CallError::Refused {
            status,
            code,
            message,
            retry_after,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "control plane unreachable: {e}"),
            CallError::Refused {
                status,
                code: Some(code),
                message,
                ..
            } => write!(f, "refused ({status} {}): {message}", code.as_str()),
            CallError::Refused {
                status, message, ..
            } => write!(f, "refused ({status}): {message}"),
            CallError::Protocol(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// What a checkout answered, when it answered with a route or a wait.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckedOut {
    /// 200: a route to the running database.
    Lease(Lease),
    /// 202: not running yet.
    Pending(Pending),
}

/// The internal API (`{control plane}/internal/v1`), called with the service token: blocking
/// calls, one method per route, each answering the route's type or a [`CallError`].
pub struct Internal {
    http: ureq::Agent,
    base: String,
    auth: String,
}

type Answered = Result<(u16, ureq::Response), CallError>;

fn answered(result: Result<ureq::Response, ureq::Error>) -> Answered {
    match result {
        Ok(response) => Ok((response.status(), response)),
        Err(ureq::Error::Status(status, response)) => Err(CallError::refused(status, response)),
        Err(ureq::Error::Transport(e)) => Err(CallError::Unreachable(e.to_string())),
    }
}

fn json<T: DeserializeOwned>(response: ureq::Response) -> Result<T, CallError> {
    response.into_json().map_err(|e| {
        // A body that is not the expected JSON, or one that could not be read.
        if e.kind() == std::io::ErrorKind::InvalidData {
            CallError::Protocol(e.to_string())
        } else {
            CallError::Unreachable(e.to_string())
        }
    })
}

impl Internal {
    pub fn new(http: ureq::Agent, control_plane: &str, token: &str) -> Internal {
        Internal {
            http,
            base: format!("{}/internal/v1", control_plane.trim_end_matches('/')),
            auth: format!("Bearer {token}"),
        }
    }

    fn get(&self, path: &str, timeout: Duration) -> ureq::Request {
        self.http
            .get(&format!("{}{path}", self.base))
            .timeout(timeout)
            .set("Authorization", &self.auth)
    }

    /// A POST; one that `repeats` safely is sent once more when it fails at once for want of
    /// an answer (see [`STALE_CONNECTION`]).
    fn post(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
        repeats: bool,
    ) -> Answered {
        let send = || {
            answered(
                self.http
                    .post(&format!("{}{path}", self.base))
                    .timeout(timeout)
                    .set("Authorization", &self.auth)
                    .send_json(body),
            )
        };
        let began = Instant::now();
        match send() {
            Err(CallError::Unreachable(_)) if repeats && began.elapsed() < STALE_CONNECTION => {
                send()
            }
            done => done,
        }
    }

    // ---- workers ----

    /// `POST /workers`.
    pub fn register(&self, body: &Register) -> Result<Registered, CallError> {
        json(self.post("/workers", body, CALL_TIMEOUT, true)?.1)
    }

    /// `POST /workers/{id}/heartbeat`: the instructions, each as raw JSON (so that one the
    /// worker does not understand does not hide the others).
    pub fn heartbeat(
        &self,
        worker: &str,
        body: &Heartbeat,
    ) -> Result<Instructions<serde_json::Value>, CallError> {
        json(
            self.post(
                &format!("/workers/{worker}/heartbeat"),
                body,
                CALL_TIMEOUT,
                true,
            )?
            .1,
        )
    }

    /// `GET /workers/{id}/instructions`, waiting up to `wait` for a list other than the
    /// `known` version.
    pub fn instructions(
        &self,
        worker: &str,
        wait: Duration,
        known: Option<&str>,
    ) -> Result<Instructions<serde_json::Value>, CallError> {
        let mut request = self
            .get(
                &format!("/workers/{worker}/instructions"),
                wait + CALL_TIMEOUT,
            )
            .query("wait_ms", &wait.as_millis().to_string());
        if let Some(known) = known {
            request = request.query("known", known);
        }
        json(answered(request.call())?.1)
    }

    /// `POST /workers/{id}/reports`.
    pub fn report(&self, worker: &str, body: &Report) -> Result<ReportAnswer, CallError> {
        json(
            self.post(
                &format!("/workers/{worker}/reports"),
                body,
                CALL_TIMEOUT,
                true,
            )?
            .1,
        )
    }

    // ---- the Gateway ----

    /// `GET /roles/{pg_user}`; `None` for a user no tenant has.
    pub fn role(&self, pg_user: &str) -> Result<Option<Role>, CallError> {
        match answered(self.get(&format!("/roles/{pg_user}"), CALL_TIMEOUT).call()) {
            Ok((_, response)) => json(response).map(Some),
            Err(e) if e.code() == Some(Code::RoleNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /roles/changes`, waiting up to `wait` for a change after `after`.
    pub fn role_changes(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<RoleChanges, CallError> {
        let mut request = self
            .get("/roles/changes", wait + CALL_TIMEOUT)
            .query("wait_ms", &wait.as_millis().to_string());
        if let Some(after) = after {
            request = request.query("after", &after.to_string());
        }
        json(answered(request.call())?.1)
    }

    /// `POST /checkout`, which waits up to the body's `wait_ms` for a start.
    pub fn checkout(&self, body: &Checkout) -> Result<CheckedOut, CallError> {
        let wait = Duration::from_millis(body.wait_ms.unwrap_or(0));
        let (status, response) = self.post("/checkout", body, wait + CALL_TIMEOUT, false)?;
        match status {
            202 => json(response).map(CheckedOut::Pending),
            _ => json(response).map(CheckedOut::Lease),
        }
    }

    /// `POST /leases/{id}/renew`.
    pub fn renew(&self, lease: Uuid, body: &Renew) -> Result<Renewed, CallError> {
        json(
            self.post(&format!("/leases/{lease}/renew"), body, CALL_TIMEOUT, true)?
                .1,
        )
    }

    /// `POST /leases/{id}/release`.
    pub fn release(&self, lease: Uuid) -> Result<(), CallError> {
        self.post(
            &format!("/leases/{lease}/release"),
            &Release::default(),
            CALL_TIMEOUT,
            true,
        )
        .map(|_| ())
    }
}
