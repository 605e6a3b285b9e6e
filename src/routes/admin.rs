//! Operator routes, for global keys: what audit and rebuild tools read from a live server.
//!
//! - `GET /v2/admin/state`: head `seq`, object counts and the state fingerprint. With
//!   `?at=SEQ|RFC3339` (and optionally `&tenant=NAME`): the state as it was at that point,
//!   rebuilt from the newest snapshot at or before it and the log (time travel for audits).
//! - `GET /v2/admin/log?from=&to=&limit=&tenant=&db=&types=`: a page of the log as JSON
//!   envelopes (secrets redacted, as in the event stream), with `next_from`.
//! - `GET /v2/admin/verify`: replays the whole log into fresh projections on the server and
//!   compares the fingerprint with the live state's at the same seq.

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::http::error::ErrorBody;
use crate::http::{at_version, ApiError, AppState, Caller};
use crate::stream::{envelope_json, Filter};
use crate::tools::{self, At};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    at: Option<String>,
    tenant: Option<String>,
}

#[utoipa::path(get, path = "/v2/admin/state", tag = "admin", operation_id = "getAdminState",
    params(("at" = Option<String>, Query, description = "a seq or an RFC 3339 time: the state as it was then"),
           ("tenant" = Option<String>, Query, description = "with `at`: only this tenant")),
    responses((status = 200, description = "`{seq, fingerprint, counts}`, and with `at` the `state`", body = Object), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn state(
    app: web::Data<AppState>,
    caller: Caller,
    query: web::Query<StateQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let Some(at) = &query.at else {
        let state = app.shared.read();
        let body = json!({
            "seq": state.last_seq,
            "fingerprint": state.fingerprint(),
            "counts": state.counts(),
        });
        return Ok(at_version(HttpResponse::Ok(), state.last_seq).json(body));
    };
    let at = At::parse(at).map_err(|e| ApiError::bad_request("invalid_at", e).with_field("at"))?;
    let head = app.shared.head();
    let log = app.log.clone();
    let dir = app.snapshots_dir.clone();
    let tenant = query.tenant.clone();
    let body = web::block(move || tools::state_at(&log, &dir, at, head, tenant.as_deref()))
        .await
        .map_err(|_| ApiError::unavailable("the state could not be rebuilt", 5))?
        .map_err(|e| ApiError::bad_request("invalid_at", e).with_field("at"))?;
    Ok(at_version(HttpResponse::Ok(), head).json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
    tenant: Option<String>,
    db: Option<uuid::Uuid>,
    types: Option<String>,
}

#[utoipa::path(get, path = "/v2/admin/log", tag = "admin", operation_id = "getAdminLog",
    params(("from" = Option<u64>, Query), ("to" = Option<u64>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1 to 10000, default 1000"),
           ("tenant" = Option<String>, Query), ("db" = Option<uuid::Uuid>, Query), ("types" = Option<String>, Query)),
    responses((status = 200, description = "`{items: [envelope], next_from}`", body = Object), (status = 403, body = ErrorBody), (status = 422, description = "`limit` out of range", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn log(
    app: web::Data<AppState>,
    caller: Caller,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::from(crate::domain::Invalid {
            field: "limit",
            message: "must be from 1 to 10000".into(),
        }));
    }
    let types = tools::parse_types(query.types.as_deref())
        .map_err(|e| ApiError::bad_request("invalid_filter", e).with_field("types"))?;
    let filter = Filter::operator(query.tenant.clone(), query.db, types);
    let head = app.shared.head();
    let to = query.to.unwrap_or(head).min(head);
    let from = query.from.unwrap_or(1).max(1);
    let mut items = Vec::new();
    let mut next_from = None;
    for env in tools::select(&app.log, from, to, &filter) {
        let env = env.map_err(|e| {
            tracing::error!(error = %e, "the log cannot be read");
            ApiError::unavailable("the log cannot be read", 5)
        })?;
        if items.len() == limit {
            next_from = Some(env.seq);
            break;
        }
        items.push(envelope_json(&env));
    }
    Ok(at_version(HttpResponse::Ok(), head).json(json!({"items": items, "next_from": next_from})))
}

#[utoipa::path(get, path = "/v2/admin/verify", tag = "admin", operation_id = "verifyAdminState",
    responses((status = 200, description = "`{seq, live_fingerprint, replayed_fingerprint, equal, events, millis}`", body = Object), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let (seq, live) = {
        let state = app.shared.read();
        (state.last_seq, state.fingerprint())
    };
    let log = app.log.clone();
    let started = Instant::now();
    let replayed = web::block(move || crate::recovery::replay(&log, Default::default(), seq))
        .await
        .map_err(|_| ApiError::unavailable("the replay could not run", 5))?
        .map_err(|e| ApiError::unavailable(format!("the log cannot be replayed: {e}"), 5))?;
    let fingerprint = replayed.0.fingerprint();
    Ok(at_version(HttpResponse::Ok(), seq).json(json!({
        "seq": seq,
        "live_fingerprint": live,
        "replayed_fingerprint": fingerprint,
        "equal": live == fingerprint,
        "events": replayed.1,
        "millis": started.elapsed().as_millis() as u64,
    })))
}
