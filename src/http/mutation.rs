//! Running a mutating request: submit its command, render the answer (on the request's thread;
//! in the committer when an `Idempotency-Key` records it), and turn it into a response.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use sha2::{Digest, Sha256};
use spg99_events::Envelope;
use spg99_projections::State;

use crate::commands::Command;
use crate::committer::{Idempotency, Rendered, Request};
use crate::http::{ApiError, AppState, Caller, RESOURCE_VERSION};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A JSON answer.
pub fn answer(status: StatusCode, value: &impl Serialize) -> Rendered {
    Rendered {
        status: status.as_u16(),
        body: serde_json::to_vec(value).expect("views serialize"),
    }
}

fn idempotency(req: &HttpRequest, raw: &[u8]) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    let mut h = Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update([0]);
    h.update(req.uri().path().as_bytes());
    h.update([0]);
    h.update(req.query_string().as_bytes());
    h.update([0]);
    h.update(raw);
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_hash: h.finalize().into(),
    }))
}

/// Submits `command` for `caller` and answers with what `render` makes of the state right
/// after it. `raw` is the request body, part of what an `Idempotency-Key` is checked against.
pub async fn execute(
    app: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    raw: &[u8],
    command: Command,
    render: impl FnOnce(&State, &[Envelope]) -> Rendered + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency(req, raw)?;
    let (committed, rendered) = if idempotency.is_some() {
        // The answer is recorded with the command's events (a retry gets it back), so the
        // committer renders it, from the state right after the command.
        let mut committed = app
            .commits
            .execute(Request {
                meta: caller.meta(),
                command,
                render: Box::new(render),
                idempotency,
            })
            .await?;
        let rendered = committed
            .response
            .take()
            .expect("a command submitted with a renderer is answered with its rendering");
        (committed, rendered)
    } else {
        // Rendered here, on the request's own thread, from the state readers see once the
        // command is durable (its events, and any committed since): the committer's single
        // thread decides and does not render, so the answers of many requests are made on
        // every core at once.
        let committed = app.commits.submit(caller.meta(), command).await?;
        let state = app.shared.read();
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            render(&state, committed.events())
        }))
        .map_err(|_| {
            tracing::error!(
                request_id = caller.request_id,
                "rendering the answer to a committed command panicked"
            );
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the command was recorded, but its answer failed inside the control plane (a \
                 defect, logged with this request's id): read the resource to see it",
            )
        })?;
        (committed, rendered)
    };
    let seq = committed.last_seq().unwrap_or_else(|| app.shared.head());
    let status = StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::OK);
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((RESOURCE_VERSION, HeaderValue::from(seq)));
    if committed.replayed {
        res.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(res.body(rendered.body))
}
