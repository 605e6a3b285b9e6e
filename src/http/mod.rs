//! The HTTP surface: shared application state, the route table, and the pieces every handler
//! uses (errors, JSON bodies, the caller, request ids). Handlers themselves live in
//! [`crate::routes`] and stay thin: authenticate, parse, submit a command or read the state,
//! encode.

pub mod caller;
pub mod error;
pub mod json;
pub mod request_id;

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpResponse, HttpResponseBuilder};
use spg99_events::Timestamp;

use crate::clock::Clock;
use crate::committer::{CommitHandle, Shared};
use crate::routes;

pub use caller::Caller;
pub use error::ApiError;
pub use json::ApiJson;

/// What every handler can reach.
pub struct AppState {
    pub commits: CommitHandle,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
}

/// `X-Resource-Version`: the `seq` of the last event a response reflects.
pub const RESOURCE_VERSION: HeaderName = HeaderName::from_static("x-resource-version");

/// Starts a response that carries `X-Resource-Version: seq`.
pub fn at_version(mut res: HttpResponseBuilder, seq: u64) -> HttpResponseBuilder {
    res.insert_header((RESOURCE_VERSION, HeaderValue::from(seq)));
    res
}

/// RFC 3339, UTC, microsecond precision: how every time is shown.
pub fn rfc3339(ts: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(ts.as_micros())
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(routes::health::healthz))
        .route("/readyz", web::get().to(routes::health::readyz))
        .service(
            web::scope("/v2")
                .route("/accounts", web::post().to(routes::accounts::create))
                .route("/accounts/{account}", web::get().to(routes::accounts::get))
                .route("/admin/state", web::get().to(routes::admin::state)),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "route_not_found",
        "no such route (or method) on this server",
    ))
}
