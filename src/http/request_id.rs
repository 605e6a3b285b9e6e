//! `X-Request-Id`: taken from the client when it sent a sane one, made up otherwise, echoed on
//! every response, carried into the log's envelopes, and put on every tracing line of the
//! request through a span.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served, if called while serving one.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// A new request id: a random per-process prefix and a counter. Unique, cheap (no system
/// call per request), and ordered within a process, which helps reading logs.
pub fn generate() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| crate::auth::random_hex(8));
    format!("{prefix}-{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The request id, as stored in the request's extensions for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

/// The request's count and time, by its route's pattern (never the path itself, which holds
/// names; and not `match_pattern`, which matches the path against the routes again: it cost
/// a fifth of a describe's throughput at one connection).
fn measure<B>(res: &ServiceResponse<B>, took: std::time::Duration) {
    let m = crate::metrics::get();
    let req = res.request();
    use actix_web::http::Method;
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        // Any other (a client's own word) is not a label of its own.
        _ => "other",
    };
    let route = crate::metrics::Route {
        method,
        route: req
            .app_data::<crate::http::RoutePattern>()
            .map_or("unmatched", |p| p.0),
    };
    m.http_seconds
        .get_or_create(&route)
        .observe(took.as_secs_f64());
    m.http_requests
        .get_or_create(&crate::metrics::Answered {
            method: route.method,
            route: route.route,
            status: res.status().as_u16(),
        })
        .inc();
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(acceptable)
        .unwrap_or_else(generate);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
        query = %req.query_string()
    );
    let started = Instant::now();
    let header_value = HeaderValue::from_str(&id).expect("checked to be visible ASCII");
    let result = CURRENT
        .scope(id, next.call(req))
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match result {
        Ok(mut res) => {
            let took = started.elapsed();
            tracing::debug!(
                status = res.status().as_u16(),
                micros = took.as_micros() as u64,
                "served"
            );
            measure(&res, took);
            res.headers_mut().insert(HEADER, header_value);
            Ok(res)
        }
        Err(e) => {
            tracing::warn!(error = %e, "request failed");
            Err(e)
        }
    }
}
