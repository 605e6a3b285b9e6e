//! Replicas in front of the handlers: a write that reaches a follower is passed to the
//! leader, and its answer comes back only once this replica has read the write from the log
//! (every write's answer carries `X-Resource-Version`, the seq it reflects); any read may ask
//! for a seq (`X-Min-Resource-Version`) that it must reflect. Together: read-your-writes on
//! any replica.
//!
//! A write is passed on only once its caller authenticated here (against this replica's own
//! state), so the abuse limits count refused tokens by the client's address, not the
//! follower's. What stays here: `POST /v2/events/tickets` (a ticket is redeemed on the
//! replica that issued it, by the stream the same client opens next).

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use crate::committer::Shared;
use crate::http::json::BODY_LIMIT;
use crate::http::request_id::{RequestId, HEADER as REQUEST_ID};
use crate::http::{ApiError, AppState, RESOURCE_VERSION};

/// `X-Min-Resource-Version`: the answer must reflect at least this seq.
pub const MIN_VERSION: HeaderName = HeaderName::from_static("x-min-resource-version");
/// Marks a write passed on by a follower: the replica it reaches does not pass it on again
/// (it leads by then, or the leadership is moving and the client tries again).
const PASSED_ON: HeaderName = HeaderName::from_static("x-spg99-passed-on");
/// How long a request waits for this replica to reach a seq.
const CATCH_UP: Duration = Duration::from_secs(5);
/// Most bytes of an answer passed back (the leader's answers are far smaller).
const ANSWER_LIMIT: usize = 64 << 20;

thread_local! {
    /// The client that passes writes on, one per HTTP worker thread (it is of the thread's
    /// runtime), its connections to the leader kept for every concurrent writer.
    static CLIENT: awc::Client = awc::Client::builder()
        .connector(awc::Connector::new().limit(1024).timeout(Duration::from_secs(2)))
        .timeout(Duration::from_secs(60))
        .disable_redirects()
        .no_default_headers()
        .finish();
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let app = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered on the app")
        .clone();
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write && !app.shared.is_leading() && req.path() != "/v2/events/tickets" {
        let res = match authenticated(&req, &app) {
            Ok(()) => pass_on(req, &app).await,
            Err(e) => return Ok(req.error_response(e)),
        };
        return Ok(res);
    }
    if let Some(value) = req.headers().get(MIN_VERSION) {
        let Some(seq) = value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) else {
            let e = ApiError::bad_request(
                "invalid_min_resource_version",
                "X-Min-Resource-Version must be a seq (an X-Resource-Version a write answered)",
            );
            return Ok(req.error_response(e));
        };
        if let Err(e) = at_least(&app, seq).await {
            return Ok(req.error_response(e));
        }
    }
    let mut res = next.call(req).await?;
    // Every write's answer says which seq it reflects (its own events are in by then), so
    // that a follower that passed it on waits for that seq before answering.
    if write && !res.headers().contains_key(RESOURCE_VERSION) {
        let head = header::HeaderValue::from(app.shared.head());
        res.headers_mut().insert(RESOURCE_VERSION, head);
    }
    Ok(res.map_into_boxed_body())
}

/// The caller's token holds here; its refusal otherwise.
fn authenticated(req: &ServiceRequest, app: &AppState) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let addr = req.peer_addr().map(|a| a.ip());
    app.limits
        .authenticate(addr, header, || {
            crate::auth::authenticate(
                &app.shared.read(),
                header,
                app.clock.now(),
                Some(&app.local_service),
            )
        })
        .map(drop)
}

/// Waits until this replica's state holds `seq`, up to [`CATCH_UP`].
async fn at_least(app: &AppState, seq: u64) -> Result<(), ApiError> {
    if reached(&app.shared, seq, CATCH_UP).await {
        return Ok(());
    }
    let here = app.shared.head();
    let log = app.log.clone();
    let head = match app.shared.is_leading() {
        true => here,
        false => web::block(move || log.head())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(u64::MAX),
    };
    if seq > head {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "resource_version_ahead",
            format!("X-Min-Resource-Version {seq} is beyond the log's last seq, {head}"),
        ))
    } else {
        Err(ApiError::replica_behind(format!(
            "this replica has read the log up to seq {here} and not yet {seq}: repeat the \
             request, or ask another replica"
        )))
    }
}

/// Whether `shared` holds `seq` within `within`.
pub async fn reached(shared: &Shared, seq: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut feed = shared.subscribe();
    while shared.head() < seq {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Err(_) => return shared.head() >= seq,
            Ok(Err(RecvError::Closed)) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Passes the request to the leader; its answer, once this replica has read what it wrote.
async fn pass_on(mut req: ServiceRequest, app: &AppState) -> ServiceResponse<BoxBody> {
    let leader = app
        .role
        .leader()
        .filter(|_| !req.headers().contains_key(PASSED_ON));
    let Some(leader) = leader else {
        let e = ApiError::no_leader(
            "no replica leads the log right now (one takes over within the leader's lease): \
             repeat the request shortly, with the same Idempotency-Key",
        );
        return req.error_response(e);
    };
    let mut body = Vec::new();
    let mut payload = req.take_payload();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(bytes) if body.len() + bytes.len() <= BODY_LIMIT + 1 => {
                body.extend_from_slice(&bytes)
            }
            // Past the limit: the leader refuses what it is sent, and says so.
            Ok(_) => break,
            Err(e) => return req.error_response(e),
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut out = CLIENT
        .with(awc::Client::clone)
        .request(req.method().clone(), url);
    for (name, value) in req.headers() {
        if !hop_by_hop(name) {
            out = out.append_header((name.clone(), value.clone()));
        }
    }
    if let Some(id) = req.extensions().get::<RequestId>() {
        out = out.insert_header((REQUEST_ID, id.0.as_str()));
    }
    out = out.insert_header((PASSED_ON, "1"));
    let failed = |why: String| {
        ApiError::no_leader(format!(
            "the leader ({leader}) did not answer ({why}); the write may or may not have been \
             made: repeat it with the same Idempotency-Key"
        ))
    };
    let mut answer = match out.send_body(body).await {
        Ok(answer) => answer,
        Err(e) => return req.error_response(failed(e.to_string())),
    };
    let bytes = match answer.body().limit(ANSWER_LIMIT).await {
        Ok(bytes) => bytes,
        Err(e) => return req.error_response(failed(e.to_string())),
    };
    let mut res = HttpResponse::build(answer.status());
    for (name, value) in answer.headers() {
        // The request id is this replica's (the same as the leader's); the date, its own.
        if !hop_by_hop(name) && *name != REQUEST_ID && *name != header::DATE {
            res.append_header((name.clone(), value.clone()));
        }
    }
    // Read-your-writes here too: the write's seq first.
    let version = answer
        .headers()
        .get(RESOURCE_VERSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(seq) = version {
        if !reached(&app.shared, seq, CATCH_UP).await {
            tracing::warn!(
                seq,
                "answering a write passed to the leader before reading it here"
            );
        }
    }
    req.into_response(res.body(bytes))
}

/// Headers of one connection, not of the request or answer (RFC 9110 §7.6.1), and those the
/// client sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}
