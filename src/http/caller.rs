//! Who sent a request, as handlers take it: [`Caller`] on the public API (an API key; the
//! service token is refused there), [`Internal`] on the internal API (the service token or a
//! global key), [`Service`] on the internal routes that serve credentials (the service token
//! only). Each is an extractor, so that a request with the wrong kind of credential is
//! refused before anything else of it is read.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, Ready};
use spg99_events::{Actor, KeyScope};
use spg99_projections::ApiKey;

use crate::auth::{authenticate, Principal};
use crate::decision::CommandMeta;
use crate::http::error::ApiError;
use crate::http::request_id::RequestId;
use crate::http::AppState;

/// The caller of a public route: always an API key.
pub struct Caller {
    pub key: Arc<ApiKey>,
    pub request_id: String,
}

/// The caller of an internal route: the service token, or a global key (operators).
pub struct Internal {
    pub principal: Principal,
    pub request_id: String,
}

/// The caller of an internal route that serves secrets (roles' verifiers): the service token
/// only.
pub struct Service;

impl Caller {
    /// The metadata a command submitted on behalf of this caller carries into the log.
    pub fn meta(&self) -> CommandMeta {
        CommandMeta {
            actor: Actor::ApiKey(self.key.id.clone()),
            request_id: self.request_id.clone(),
        }
    }

    pub fn is_global(&self) -> bool {
        self.key.scope == KeyScope::Global
    }

    /// Global-only operations: any other caller is told which key it needs.
    pub fn require_global(&self) -> Result<(), ApiError> {
        if self.is_global() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "global_key_required",
                "this operation needs a key with global scope",
            ))
        }
    }
}

impl Internal {
    pub fn meta(&self) -> CommandMeta {
        CommandMeta {
            actor: match &self.principal {
                Principal::Key(k) => Actor::ApiKey(k.id.clone()),
                Principal::Service => Actor::Service,
            },
            request_id: self.request_id.clone(),
        }
    }
}

/// The authenticated principal of `req` and its request id.
fn principal(req: &HttpRequest) -> Result<(Principal, String), ApiError> {
    let app = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered on the app");
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let addr = req.peer_addr().map(|a| a.ip());
    let principal = app.limits.authenticate(addr, header, || {
        authenticate(
            &app.shared.read(),
            header,
            app.clock.now(),
            Some(&app.local_service),
        )
    })?;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    Ok((principal, request_id))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            principal(req).and_then(|(principal, request_id)| match principal {
                Principal::Key(key) => Ok(Caller { key, request_id }),
                Principal::Service => Err(ApiError::forbidden(
                    "api_key_required",
                    "the service token is for the internal API; use an API key",
                )),
            }),
        )
    }
}

impl FromRequest for Internal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(principal(req).and_then(|(principal, request_id)| {
            let allowed = match &principal {
                Principal::Service => true,
                Principal::Key(k) => k.scope == KeyScope::Global,
            };
            if allowed {
                Ok(Internal {
                    principal,
                    request_id,
                })
            } else {
                Err(ApiError::forbidden(
                    "service_token_required",
                    "the internal API is for the Gateway and the workers: use the service token",
                ))
            }
        }))
    }
}

impl FromRequest for Service {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(principal(req).and_then(|(principal, _)| match principal {
            Principal::Service => Ok(Service),
            Principal::Key(_) => Err(ApiError::forbidden(
                "service_token_required",
                "this route serves credentials: only the service token may call it",
            )),
        }))
    }
}
