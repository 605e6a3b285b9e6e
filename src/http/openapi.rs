//! `GET /v2/openapi.json`: the OpenAPI 3 document of the public API, generated from the route
//! handlers' annotations and the request and answer types themselves, so it cannot drift from
//! what the server does. (`tests/it/authz_matrix.rs` checks it lists exactly the routes.)

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{accounts, admin, billing, dbs, events, keys, sizes, tenants};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SPG99 Control Plane API v2",
        description = "Accounts, API keys, tenants and databases of the SPG99 serverless PostgreSQL platform. \
Authenticate with `Authorization: Bearer spg99_<key_id>_<secret>`. Mutating routes take an \
`Idempotency-Key` header; reads answer with `X-Resource-Version` (the log seq they reflect); \
every answer carries `X-Request-Id`."
    ),
    paths(
        accounts::create, accounts::get, accounts::profile, accounts::contact, accounts::delete,
        keys::issue, keys::me, keys::rotate, keys::revoke,
        tenants::create, tenants::list, tenants::get, tenants::credentials, tenants::delete,
        dbs::create, dbs::list, dbs::get, dbs::get_by_id, dbs::delete, dbs::manual_lifecycle,
        sizes::list, billing::summary, admin::state, admin::log, admin::verify, events::stream, events::ticket,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes")
    })
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
