//! `Caller`: the authenticated principal of a request, with what a command needs to know
//! about who sent it.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, Ready};
use spg99_events::{Actor, KeyScope};
use spg99_projections::ApiKey;

use crate::auth::{authenticate, Principal};
use crate::commands::CommandMeta;
use crate::http::error::ApiError;
use crate::http::request_id::RequestId;
use crate::http::AppState;

pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
}

impl Caller {
    /// The metadata a command submitted on behalf of this caller carries into the log.
    pub fn meta(&self) -> CommandMeta {
        CommandMeta {
            actor: match &self.principal {
                Principal::Key(k) => Actor::ApiKey(k.id.clone()),
                Principal::Service => Actor::Service,
            },
            request_id: self.request_id.clone(),
        }
    }

    /// The calling API key; the service token has no business on the public API.
    pub fn key(&self) -> Result<&ApiKey, ApiError> {
        match &self.principal {
            Principal::Key(k) => Ok(k),
            Principal::Service => Err(ApiError::forbidden(
                "api_key_required",
                "the service token is for the internal API; use an API key",
            )),
        }
    }

    pub fn is_global(&self) -> bool {
        matches!(&self.principal, Principal::Key(k) if k.scope == KeyScope::Global)
    }

    /// The internal API: the service token, or a global key (operators).
    pub fn require_internal(&self) -> Result<(), ApiError> {
        if self.is_global() || matches!(self.principal, Principal::Service) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "service_token_required",
                "the internal API is for the Gateway and the workers: use the service token",
            ))
        }
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

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered on the app");
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let now = app.clock.now();
        let principal = authenticate(&app.shared.read(), header, now);
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        ready(
            principal
                .map(|principal| Caller {
                    principal,
                    request_id,
                })
                .map_err(ApiError::from),
        )
    }
}
