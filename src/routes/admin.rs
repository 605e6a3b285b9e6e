//! Operator routes for global keys.
//!
//! `GET /v2/admin/state`: the head `seq`, object counts and the state fingerprint, so that
//! an operator (or `spg99 rebuild --verify`) can compare a live server with a replay.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::http::error::ErrorBody;
use crate::http::{at_version, ApiError, AppState, Caller};

#[utoipa::path(get, path = "/v2/admin/state", tag = "admin", responses((status = 200, description = "`{seq, fingerprint, counts}`", body = Object), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn state(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let state = app.shared.read();
    let body = json!({
        "seq": state.last_seq,
        "fingerprint": state.fingerprint(),
        "counts": state.counts(),
    });
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(body))
}
