//! `GET /v2/sizes` (any key): the size catalog and the compute profiles of each size.

use actix_web::HttpResponse;
use serde_json::json;

use crate::catalog::{PROFILES, SIZES};
use crate::http::{ApiError, Caller};

#[utoipa::path(get, path = "/v2/sizes", tag = "catalog", responses((status = 200, description = "`{sizes: [{name, profiles, description}], profiles: [{name, vcpu, memory_mib}]}`", body = Object)), security(("bearer" = [])))]
pub async fn list(caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.key()?;
    Ok(HttpResponse::Ok().json(json!({"sizes": SIZES, "profiles": PROFILES})))
}
