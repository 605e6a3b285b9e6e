//! `GET /v2/sizes` (any key): the size catalog and the compute profiles of each size.

use actix_web::HttpResponse;
use serde_json::json;

use crate::catalog::{PROFILES, SIZES};
use crate::http::{ApiError, Caller};

pub async fn list(caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.key()?;
    Ok(HttpResponse::Ok().json(json!({"sizes": SIZES, "profiles": PROFILES})))
}
