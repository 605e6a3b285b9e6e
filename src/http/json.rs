//! `ApiJson<T>`: the JSON body extractor, with errors a client can act on.
//!
//! - wrong or missing `Content-Type` → 415 `unsupported_media_type`
//! - body over [`BODY_LIMIT`] → 413 `body_too_large` (checked against `Content-Length` first,
//!   then while reading)
//!
//! A refused body up to [`DRAIN_LIMIT`] is read to its end before the answer goes out: a
//! client still writing it would otherwise meet a reset instead of the error.
//! - not a JSON object → 400 `malformed_json`; a field the type does not know → 400 `unknown_field`;
//!   a field of the wrong type or a missing one → 422 `invalid_value`, naming the field.

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// Largest request body accepted. Every body of the API is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a body may take to arrive once the request's head has: a client that trickles
/// its body holds a connection only this long (the head itself has actix-web's 5 s).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest refused body that is read and discarded before the answer; past it the connection
/// is answered at once and closed.
pub const DRAIN_LIMIT: usize = 1024 * 1024;

/// A parsed JSON body, with the bytes it came from (for idempotency). An empty body reads as
/// `{}` (with or without a JSON `Content-Type`, as `curl -X POST -H 'Content-Type:
/// application/json'` sends it), so that routes whose fields are all optional need none.
pub struct ApiJson<T> {
    pub value: T,
    pub raw: Bytes,
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {BODY_LIMIT} bytes"),
    )
}

/// `Some(true)` for `application/json` (with no parameter but `charset=utf-8`, which RFC 8259
/// makes the only encoding of JSON), `Some(false)` for any other type, `None` for none. Types
/// that merely end in `+json` (`application/merge-patch+json`, ...) have their own
/// semantics, which the API does not implement: they are refused, not read as plain JSON.
fn is_json(req: &HttpRequest) -> Option<bool> {
    let ct = req.headers().get(header::CONTENT_TYPE)?;
    let Ok(ct) = ct.to_str() else {
        return Some(false);
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let params_ok = parts.all(|p| {
        let Some((name, value)) = p.split_once('=') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("charset")
            && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    });
    Some(essence.eq_ignore_ascii_case("application/json") && params_ok)
}

/// Parses a JSON body, naming the offending field on failure.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde also accepts a struct written as an array of its fields; the API does not.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "malformed_json",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON: {message}"),
                )
            }
            serde_json::error::Category::Io => ApiError::bad_request("malformed_json", message),
            serde_json::error::Category::Data if message.starts_with("unknown field") => {
                // The path already ends with the unknown key.
                let field = if path == "." {
                    message.split('`').nth(1).unwrap_or("").to_owned()
                } else {
                    path
                };
                ApiError::bad_request("unknown_field", message).with_field(field)
            }
            serde_json::error::Category::Data => {
                let field = if path == "." {
                    message.split('`').nth(1).unwrap_or("").to_owned()
                } else {
                    path
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
                    .with_field(field)
            }
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("trailing data after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            let unsupported = || {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with 'Content-Type: application/json' (charset, if given, must be utf-8)",
                )
            };
            if json == Some(false) {
                return Err(drain(&mut payload, declared, unsupported()).await);
            }
            if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
                return Err(drain(&mut payload, declared, too_large()).await);
            }
            let read = async {
                let mut body = BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|e| {
                        ApiError::bad_request(
                            "body_unreadable",
                            format!("the body could not be read: {e}"),
                        )
                    })?;
                    if body.len() + chunk.len() > BODY_LIMIT {
                        return Err(drain(&mut payload, declared, too_large()).await);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            };
            let raw = tokio::time::timeout(BODY_TIMEOUT, read)
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            BODY_TIMEOUT.as_secs()
                        ),
                    )
                    .closing()
                })??;
            if raw.is_empty() && json != Some(false) {
                return parse(b"{}").map(|value| ApiJson { value, raw });
            }
            if json.is_none() {
                return Err(unsupported());
            }
            parse(&raw).map(|value| ApiJson { value, raw })
        })
    }
}

/// Reads and discards what is left of a refused body, up to [`DRAIN_LIMIT`] bytes, and gives
/// back `error`; a body declared or found longer than that closes the connection instead.
async fn drain(payload: &mut Payload, declared: Option<u64>, error: ApiError) -> ApiError {
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return error.closing();
    }
    let discard = async {
        let mut read = 0;
        while let Some(chunk) = payload.next().await {
            match chunk {
                Ok(chunk) if read + chunk.len() <= DRAIN_LIMIT => read += chunk.len(),
                _ => return false,
            }
        }
        true
    };
    match tokio::time::timeout(BODY_TIMEOUT, discard).await {
        Ok(true) => error,
        _ => error.closing(),
    }
}

/// The body of routes that take none (an empty body, or `{}`).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
