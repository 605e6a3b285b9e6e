//! The HTTP surface: shared application state, the route table, and the pieces every handler
//! uses (errors, JSON bodies, the caller, request ids). Handlers themselves live in
//! [`crate::routes`] and stay thin: authenticate, parse, submit a command or read the state,
//! encode.

pub mod caller;
pub mod error;
pub mod json;
pub mod mutation;
pub mod page;
pub mod request_id;

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpResponse, HttpResponseBuilder};
use spg99_events::Timestamp;

use crate::clock::Clock;
use crate::committer::{CommitHandle, Shared};
use crate::routes;
use crate::secrets::SecretBox;

pub use caller::Caller;
pub use error::ApiError;
pub use json::ApiJson;

/// What every handler can reach.
pub struct AppState {
    pub commits: CommitHandle,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    pub secrets: Arc<SecretBox>,
    /// Host (and port) of the Gateway, for `dsn_template`.
    pub gateway_host: String,
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
    use routes::{accounts, admin, dbs, health, keys, sizes, tenants};
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::bad_request("invalid_query", format!("query string: {e}")).into()
    }))
    .app_data(
        web::PathConfig::default().error_handler(|e, _| {
            ApiError::bad_request("invalid_path", format!("path: {e}")).into()
        }),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .service(
        web::scope("/v2")
            .route("/accounts", web::post().to(accounts::create))
            .route("/accounts/{account}", web::get().to(accounts::get))
            .route("/accounts/{account}/api-keys", web::post().to(keys::issue))
            .route("/account/profile", web::get().to(accounts::profile))
            .route("/account/contact", web::post().to(accounts::contact))
            .route("/account/delete", web::post().to(accounts::delete))
            .route("/api-keys/me", web::get().to(keys::me))
            .route("/api-keys/rotate", web::post().to(keys::rotate))
            .route("/api-keys/revoke", web::post().to(keys::revoke))
            .route("/tenants", web::post().to(tenants::create))
            .route("/tenants", web::get().to(tenants::list))
            .route("/tenants/{tenant}", web::get().to(tenants::get))
            .route("/tenants/{tenant}", web::delete().to(tenants::delete))
            .route(
                "/tenants/{tenant}/credentials",
                web::get().to(tenants::credentials),
            )
            .route("/tenants/{tenant}/dbs", web::post().to(dbs::create))
            .route("/tenants/{tenant}/dbs", web::get().to(dbs::list))
            .route("/tenants/{tenant}/dbs/{db}", web::get().to(dbs::get))
            .route("/tenants/{tenant}/dbs/{db}", web::delete().to(dbs::delete))
            .route(
                "/tenants/{tenant}/dbs/{db}/{action}",
                web::post().to(dbs::manual_lifecycle),
            )
            .route("/dbs/{id}", web::get().to(dbs::get_by_id))
            .route("/sizes", web::get().to(sizes::list))
            .route("/admin/state", web::get().to(admin::state)),
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
