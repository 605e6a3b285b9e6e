//! The HTTP surface: shared application state, the route table, and the pieces every handler
//! uses (errors, JSON bodies, the caller, request ids). Handlers themselves live in
//! [`crate::routes`] and stay thin: authenticate, parse, submit a command or read the state,
//! encode.

pub mod caller;
pub mod error;
pub mod forward;
pub mod front;
pub mod json;
pub mod mutation;
pub mod openapi;
pub mod page;
pub mod request_id;

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{guard, web, HttpResponse, HttpResponseBuilder, ResponseError};

use crate::clock::Clock;
use crate::committer::{CommitHandle, Shared};
use crate::routes;
use crate::secrets::SecretBox;

pub use caller::{Caller, Internal, Service};
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
    pub limits: crate::limits::Limits,
    /// Where this log's snapshots live: the data directory, or a directory in it of the
    /// log's own (see `Log::local_dir`).
    pub snapshots_dir: std::path::PathBuf,
    /// Hosts (and ports) of the Gateway's session port and pooler, for `dsn_template` and
    /// `pooled_dsn_template`.
    pub hosts: crate::routes::tenants::Hosts,
    pub settings: Arc<crate::lifecycle::Settings>,
    /// The hash of this process's own service token (its embedded Gateway's and worker's).
    pub local_service: spg99_events::SecretHash,
    /// Whether this replica leads the log, and where the leader is if not.
    pub role: Arc<crate::replica::Role>,
    /// The embedded Gateway's and worker's metrics, in the text format, for `/metrics`.
    pub more_metrics: Vec<fn() -> &'static prometheus_client::registry::Registry>,
    /// When each running writer's WAL last reached the storage repository, as its worker's
    /// last heartbeat said: shown as `recoverable_until`, never decided on (not in the log:
    /// one event per archived segment would fill it; a replica that follows shows the last
    /// recorded point instead).
    pub archived: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, spg99_events::Timestamp>>,
    /// Per database: its newest standby's term and how far behind it is, as its writer's
    /// heartbeats last said.
    pub replication_lag: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (u64, u64)>>,
}

impl AppState {
    /// The standby lag of a database as its writer last said: (standby term, bytes).
    pub fn lag_of(&self, db: uuid::Uuid) -> Option<(u64, u64)> {
        let lag = self
            .replication_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        lag.get(&db).copied()
    }

    /// When the database's running writer last archived, if its heartbeats said.
    pub fn archived_at(&self, db_id: uuid::Uuid) -> Option<spg99_events::Timestamp> {
        let archived = self.archived.lock().unwrap_or_else(|p| p.into_inner());
        archived.get(&db_id).copied()
    }
}

/// `X-Resource-Version`: the `seq` of the last event a response reflects.
pub const RESOURCE_VERSION: HeaderName = HeaderName::from_static("x-resource-version");

/// Starts a response that carries `X-Resource-Version: seq`.
pub fn at_version(mut res: HttpResponseBuilder, seq: u64) -> HttpResponseBuilder {
    res.insert_header((RESOURCE_VERSION, HeaderValue::from(seq)));
    res
}

pub use crate::clock::rfc3339;

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use routes::{
        accounts, admin, billing, dbs, events, health, internal, keys, schema_diff, sizes, tenants,
    };
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::bad_request("invalid_query", format!("query string: {e}")).into()
    }))
    .app_data(
        web::PathConfig::default().error_handler(|e, _| {
            ApiError::bad_request("invalid_path", format!("path: {e}")).into()
        }),
    )
    .service(Methods::at("", "/healthz").get(health::healthz).done())
    .service(Methods::at("", "/readyz").get(health::readyz).done())
    .service(Methods::at("", "/metrics").get(health::metrics).done())
    // One resource per path, static paths first, and the tenant's routes under one scope:
    // the router tries resources in order and matches dynamic ones with a regex each, so
    // this order keeps the common describe path cheap.
    .service(
        web::scope("/v2")
            .service(
                Methods::at("/v2", "/account/profile")
                    .get(accounts::profile)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/account/contact")
                    .post(accounts::contact)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/account/delete")
                    .post(accounts::delete)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/billing/summary")
                    .get(billing::summary)
                    .done(),
            )
            .service(Methods::at("/v2", "/api-keys/me").get(keys::me).done())
            .service(
                Methods::at("/v2", "/api-keys/rotate")
                    .post(keys::rotate)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/api-keys/revoke")
                    .post(keys::revoke)
                    .done(),
            )
            .service(Methods::at("/v2", "/sizes").get(sizes::list).done())
            .service(
                Methods::at("/v2", "/openapi.json")
                    .get(openapi::serve)
                    .done(),
            )
            .service(Methods::at("/v2", "/events").get(events::stream).done())
            .service(
                Methods::at("/v2", "/events/tickets")
                    .post(events::ticket)
                    .done(),
            )
            .service(Methods::at("/v2", "/admin/state").get(admin::state).done())
            .service(Methods::at("/v2", "/admin/log").get(admin::log).done())
            .service(
                Methods::at("/v2", "/admin/verify")
                    .get(admin::verify)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/accounts")
                    .get(accounts::list)
                    .post(accounts::create)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/tenants")
                    .get(tenants::list)
                    .post(tenants::create)
                    .done(),
            )
            .service(
                web::scope("/tenants/{tenant}")
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}")
                            .get(dbs::get)
                            .delete(dbs::delete)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs")
                            .get(dbs::list)
                            .post(dbs::create)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/credentials")
                            .get(tenants::credentials)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/credentials/reset")
                            .post(tenants::reset_credentials)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}/restore")
                            .post(dbs::restore)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}/schema-diff")
                            .get(schema_diff::schema_diff)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}/reset")
                            .post(dbs::reset)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}/ha")
                            .post(dbs::set_ha)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "/dbs/{db}/{action}")
                            .post(dbs::manual_lifecycle)
                            .done(),
                    )
                    .service(
                        Methods::at("/v2/tenants/{tenant}", "")
                            .get(tenants::get)
                            .delete(tenants::delete)
                            .done(),
                    ),
            )
            .service(Methods::at("/v2", "/dbs/{id}").get(dbs::get_by_id).done())
            .service(
                Methods::at("/v2", "/accounts/{account}")
                    .get(accounts::get)
                    .done(),
            )
            .service(
                Methods::at("/v2", "/accounts/{account}/api-keys")
                    .get(keys::list)
                    .post(keys::issue)
                    .done(),
            ),
    )
    .service(
        web::scope("/internal/v1")
            .service(
                Methods::at("/internal/v1", "/checkout")
                    .post(internal::checkout)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/leases/{lease_id}/renew")
                    .post(internal::renew)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/leases/{lease_id}/release")
                    .post(internal::release)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/workers")
                    .get(internal::list_workers)
                    .post(internal::register)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/workers/{id}/heartbeat")
                    .post(internal::heartbeat)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/workers/{id}/instructions")
                    .get(internal::instructions)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/workers/{id}/reports")
                    .post(internal::report)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/roles/changes")
                    .get(internal::role_changes)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/roles/{pg_user}")
                    .get(internal::role)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/reconcile")
                    .post(internal::reconcile)
                    .done(),
            )
            .service(
                Methods::at("/internal/v1", "/clock/advance")
                    .post(internal::advance_clock)
                    .done(),
            ),
    )
    .configure(crate::console::configure)
    .default_service(web::to(not_found));
}

/// One path and the methods it takes. `HEAD` is answered wherever `GET` is (the server sends
/// the head of the GET answer without its body, RFC 9110 §9.3.2); any other method gets a
/// JSON 405 with the `Allow` header RFC 9110 §15.5.6 requires.
struct Methods {
    resource: actix_web::Resource,
    allow: Vec<&'static str>,
}

/// A route's pattern (`/v2/tenants/{tenant}/dbs`), kept on its resource so that the request's
/// metrics name it without matching the path again.
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// One `&'static str` per distinct pattern (each worker's app is configured with the same).
fn intern(pattern: String) -> &'static str {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    match seen.iter().find(|s| **s == pattern) {
        Some(s) => s,
        None => {
            let s: &'static str = Box::leak(pattern.into_boxed_str());
            seen.push(s);
            s
        }
    }
}

impl Methods {
    /// The resource at `path`, inside the scope whose pattern is `scope`.
    fn at(scope: &str, path: &str) -> Self {
        Methods {
            resource: web::resource(path).app_data(RoutePattern(intern(format!("{scope}{path}")))),
            allow: Vec::new(),
        }
    }

    fn with<F, Args>(
        mut self,
        guard: impl guard::Guard + 'static,
        methods: &[&'static str],
        handler: F,
    ) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.resource = self.resource.route(web::route().guard(guard).to(handler));
        self.allow.extend_from_slice(methods);
        self
    }

    fn get<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.with(
            guard::Any(guard::Get()).or(guard::Head()),
            &["GET", "HEAD"],
            handler,
        )
    }

    fn post<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.with(guard::Post(), &["POST"], handler)
    }

    fn delete<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.with(guard::Delete(), &["DELETE"], handler)
    }

    fn done(self) -> actix_web::Resource {
        let allow = self.allow.join(", ");
        self.resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { method_not_allowed(allow) }
        }))
    }
}

fn method_not_allowed(allow: String) -> HttpResponse {
    let mut res = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route takes {allow}"),
    )
    .error_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        res.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    res
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "route_not_found",
        "no such route (or method) on this server",
    ))
}
