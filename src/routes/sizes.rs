//! `GET /v2/sizes` (any key): the size catalog and the compute profiles of each size.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::catalog::{PROFILES, SIZES};
use crate::http::{at_version, ApiError, AppState, Caller};

#[utoipa::path(get, path = "/v2/sizes", tag = "catalog", operation_id = "listSizes", responses((status = 200, description = "`{sizes: [{name, profiles, description}], profiles: [{name, vcpu, memory_mib}]}`", body = Object)), security(("bearer" = [])))]
pub async fn list(app: web::Data<AppState>, _: Caller) -> Result<HttpResponse, ApiError> {
    let body = json!({"sizes": SIZES, "profiles": PROFILES});
    Ok(at_version(HttpResponse::Ok(), app.shared.head()).json(body))
}
