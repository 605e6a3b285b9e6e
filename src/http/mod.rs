//! The HTTP surface: shared application state, the route table, and the pieces every handler
//! uses (errors, JSON bodies, the caller, request ids). Handlers themselves live in
//! [`crate::routes`] and stay thin: authenticate, parse, submit a command or read the state,
//! encode.

pub mod caller;
pub mod error;
pub mod json;
pub mod mutation;
pub mod openapi;
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
    /// The log, for event streams catching up.
    pub log: Arc<crate::log::Log>,
    pub tickets: routes::events::Tickets,
    /// The data directory (snapshots live there).
    pub data_dir: std::path::PathBuf,
    /// Host (and port) of the Gateway, for `dsn_template`.
    pub gateway_host: String,
    pub settings: Arc<crate::lifecycle::Settings>,
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
    use routes::{accounts, admin, billing, dbs, events, health, internal, keys, sizes, tenants};
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
    // One resource per path, static paths first, and the tenant's routes under one scope:
    // the router tries resources in order and matches dynamic ones with a regex each, so
    // this order keeps the common describe path cheap.
    .service(
        web::scope("/v2")
            .service(resource("/account/profile").get(accounts::profile))
            .service(resource("/account/contact").post(accounts::contact))
            .service(resource("/account/delete").post(accounts::delete))
            .service(resource("/billing/summary").get(billing::summary))
            .service(resource("/api-keys/me").get(keys::me))
            .service(resource("/api-keys/rotate").post(keys::rotate))
            .service(resource("/api-keys/revoke").post(keys::revoke))
            .service(resource("/sizes").get(sizes::list))
            .service(resource("/openapi.json").get(openapi::serve))
            .service(resource("/events").get(events::stream))
            .service(resource("/events/tickets").post(events::ticket))
            .service(resource("/admin/state").get(admin::state))
            .service(resource("/admin/log").get(admin::log))
            .service(resource("/admin/verify").get(admin::verify))
            .service(resource("/accounts").post(accounts::create))
            .service(
                resource("/tenants")
                    .post(tenants::create)
                    .get(tenants::list),
            )
            .service(
                web::scope("/tenants/{tenant}")
                    .service(resource("/dbs/{db}").get(dbs::get).delete(dbs::delete))
                    .service(resource("/dbs").post(dbs::create).get(dbs::list))
                    .service(resource("/credentials").get(tenants::credentials))
                    .service(resource("/dbs/{db}/{action}").post(dbs::manual_lifecycle))
                    .service(resource("").get(tenants::get).delete(tenants::delete)),
            )
            .service(resource("/dbs/{id}").get(dbs::get_by_id))
            .service(resource("/accounts/{account}").get(accounts::get))
            .service(resource("/accounts/{account}/api-keys").post(keys::issue)),
    )
    .service(
        web::scope("/internal/v1")
            .service(resource("/checkout").post(internal::checkout))
            .service(resource("/leases/{lease_id}/renew").post(internal::renew))
            .service(resource("/leases/{lease_id}/release").post(internal::release))
            .service(
                resource("/workers")
                    .post(internal::register)
                    .get(internal::list_workers),
            )
            .service(resource("/workers/{id}/heartbeat").post(internal::heartbeat))
            .service(resource("/workers/{id}/instructions").get(internal::instructions))
            .service(resource("/workers/{id}/reports").post(internal::report))
            .service(resource("/reconcile").post(internal::reconcile))
            .service(resource("/clock/advance").post(internal::advance_clock)),
    )
    .default_service(web::to(not_found));
}

/// A resource whose unknown methods get a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    ))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "route_not_found",
        "no such route (or method) on this server",
    ))
}
