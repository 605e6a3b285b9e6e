//! `GET /healthz` (the process answers) and `GET /readyz` (the log is open, the projections
//! are caught up, and writes are accepted). Neither needs a token.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::http::{ApiError, AppState};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // The server only starts listening after replay, so being up means caught up; what can
    // still go wrong is the log refusing writes.
    if app.shared.is_healthy() {
        Ok(HttpResponse::Ok().json(json!({"status": "ready", "seq": app.shared.head()})))
    } else {
        Err(ApiError::log_failed())
    }
}
