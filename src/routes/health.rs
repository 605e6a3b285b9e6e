//! `GET /healthz` (the process answers) and `GET /readyz` (the log is open, the projections
//! are caught up, and writes are accepted: by this replica if it leads the log, passed to the
//! leader if it follows); neither needs a token. `GET /metrics` (the service token or a
//! global key): the metrics, in the Prometheus text format, with the embedded Gateway's and
//! worker's.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::committer::Health;
use crate::http::{ApiError, AppState, Internal};

pub async fn metrics(app: web::Data<AppState>, _: Internal) -> HttpResponse {
    let more: Vec<_> = app.more_metrics.iter().map(|registry| registry()).collect();
    let text = crate::metrics::get().render(
        &app.shared.read(),
        app.commits.queued(),
        app.shared.is_leading(),
        &more,
    );
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // The server only starts listening after replay, so being up means caught up; what can
    // still go wrong is the log refusing writes.
    match app.shared.health() {
        Health::Healthy => {}
        Health::Restarting => return Err(ApiError::committer_restarting()),
        Health::LogFailed => return Err(ApiError::log_failed()),
        Health::CommitterFailed => return Err(ApiError::committer_failed()),
    }
    if !app.role.in_sync() {
        return Err(ApiError::replica_behind(
            "this replica cannot read the log (its server's log says why); its reads may be stale",
        ));
    }
    let role = if app.shared.is_leading() {
        "leader"
    } else {
        "follower"
    };
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "seq": app.shared.head(),
        "role": role,
        "leader": app.role.leader(),
    })))
}
