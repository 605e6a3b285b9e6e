//! The event stream.
//!
//! - `GET /v2/events` (any key, or `?ticket=`): the log as Server-Sent Events. Resume with
//!   `Last-Event-ID` or `?since=SEQ`; filter with `?tenant=NAME`, `?db=DB_ID`,
//!   `?types=a.b,c.d` (always within the key's scope); `?initial=snapshot` first sends the
//!   current state as synthetic events. See [`crate::stream`].
//! - `POST /v2/events/tickets` (any key): a single-use ticket, valid for a minute, that opens
//!   one stream with the key's scope, for browsers whose `EventSource` cannot send headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, Either, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::Sse;
use serde::{Deserialize, Serialize};
use spg99_events::{Event, SecretHash, Timestamp};
use spg99_projections::ApiKey;
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{authenticate, check_key, hashes_equal, random_hex, AuthError, Principal};
use crate::domain::ResourceName;
use crate::http::error::ErrorBody;
use crate::http::json::Empty;
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller, RESOURCE_VERSION};
use crate::stream::{self, Filter, CLIENT_BUFFER};

/// How long a ticket may wait to be used.
const TICKET_TTL: Duration = Duration::from_secs(60);
const TICKET_PREFIX: &str = "spg99t_";

/// Stream tickets waiting to be used, by the hash of their secret. Kept in memory only: a
/// ticket lives a minute, and a restart simply asks the browser for a new one.
#[derive(Default)]
pub struct Tickets {
    open: Mutex<HashMap<SecretHash, (String, Timestamp)>>,
}

impl Tickets {
    fn issue(&self, key_id: &str, now: Timestamp) -> (String, Timestamp) {
        let secret = random_hex(24);
        let expires = now.plus_secs(TICKET_TTL.as_secs() as i64);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, (_, exp)| *exp > now);
        open.insert(hash(&secret), (key_id.to_owned(), expires));
        (format!("{TICKET_PREFIX}{secret}"), expires)
    }

    /// Takes the ticket (it opens one stream only); the key id it was issued to.
    fn redeem(&self, ticket: &str, now: Timestamp) -> Option<String> {
        let secret = ticket.strip_prefix(TICKET_PREFIX)?;
        let wanted = hash(secret);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let found = open.keys().find(|h| hashes_equal(h, &wanted)).copied()?;
        let (key_id, expires) = open.remove(&found)?;
        (expires > now).then_some(key_id)
    }
}

fn hash(secret: &str) -> SecretHash {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketView {
    /// Pass as `GET /v2/events?ticket=...`; single use.
    ticket: String,
    expires_at: String,
}

#[utoipa::path(post, path = "/v2/events/tickets", tag = "events", operation_id = "createStreamTicket", request_body(content = Empty, description = "optional"), responses((status = 201, body = TicketView), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn ticket(
    app: web::Data<AppState>,
    caller: Caller,
    _body: ApiJson<Empty>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    app.limits.ticket(&key.id)?;
    let (ticket, expires) = app.tickets.issue(&key.id, app.clock.now());
    Ok(HttpResponse::Created().json(TicketView {
        ticket,
        expires_at: rfc3339(expires),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    since: Option<String>,
    tenant: Option<String>,
    db: Option<String>,
    types: Option<String>,
    initial: Option<String>,
    ticket: Option<String>,
}

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message).with_field(field)
}

fn parse_seq(raw: &str, code: &'static str, field: &'static str) -> Result<u64, ApiError> {
    raw.trim().parse::<u64>().map_err(|_| {
        bad(
            code,
            field,
            format!("{field} must be an event seq (a whole number)"),
        )
    })
}

/// The key behind the request: a ticket if one is given, else the bearer token.
fn stream_key(
    app: &AppState,
    req: &HttpRequest,
    ticket: Option<&str>,
) -> Result<Arc<ApiKey>, ApiError> {
    let now = app.clock.now();
    let addr = req.peer_addr().map(|a| a.ip());
    if let Some(ticket) = ticket {
        app.limits.address_allowed(addr)?;
        let Some(key_id) = app.tickets.redeem(ticket, now) else {
            app.limits.failed_ticket(addr);
            return Err(ApiError::from(AuthError::Invalid).with_field("ticket"));
        };
        let state = app.shared.read();
        let key = state.api_keys.get(&key_id).ok_or(AuthError::Invalid)?;
        check_key(key, now)?;
        return Ok(key.clone());
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let principal = app.limits.authenticate(addr, header, || {
        authenticate(&app.shared.read(), header, now, None)
    })?;
    match principal {
        Principal::Key(k) => Ok(k),
        Principal::Service => Err(ApiError::forbidden(
            "api_key_required",
            "the service token is for the internal API; use an API key",
        )),
    }
}

#[utoipa::path(get, path = "/v2/events", tag = "events", operation_id = "streamEvents",
    params(
        ("since" = Option<u64>, Query, description = "deliver events with a larger seq (Last-Event-ID wins when both are given); at most the head seq"),
        ("Last-Event-ID" = Option<u64>, Header, description = "the `id` of the last event received: resume after it; at most the head seq"),
        ("tenant" = Option<String>, Query), ("db" = Option<Uuid>, Query),
        ("types" = Option<String>, Query, description = "comma-separated event types"),
        ("initial" = Option<String>, Query, description = "`snapshot`: the current state first"),
        ("ticket" = Option<String>, Query, description = "instead of the Authorization header"),
    ),
    responses((status = 200, description = "`id: <seq>`, `event: <type>`, `data: <JSON envelope>` frames; `event: bookmark` frames carry the head seq", content_type = "text/event-stream", body = String),
        (status = 400, description = "a bad filter, or a resume point past the head (`since_beyond_head`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream(
    app: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<impl Responder, ApiError> {
    let q = query.into_inner();
    let key = stream_key(&app, &req, q.ticket.as_deref())?;

    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("x"))
        .map(|v| parse_seq(v, "invalid_last_event_id", "Last-Event-ID"))
        .transpose()?;
    let since = q
        .since
        .as_deref()
        .map(|s| parse_seq(s, "invalid_since", "since"))
        .transpose()?;
    let tenant = q
        .tenant
        .as_deref()
        .map(|t| ResourceName::parse("tenant", t).map(|n| n.as_str().to_owned()))
        .transpose()
        .map_err(|e| bad("invalid_filter", "tenant", e.message))?;
    let db =
        q.db.as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| bad("invalid_filter", "db", "db must be a database id (db_id)"))?;
    let types = crate::tools::parse_types(q.types.as_deref()).map_err(|e| {
        bad(
            "invalid_filter",
            "types",
            format!("{e}; known: {}", Event::TYPE_NAMES.join(", ")),
        )
    })?;
    let snapshot = match q.initial.as_deref() {
        None => false,
        Some("snapshot") => true,
        Some(_) => {
            return Err(bad(
                "invalid_filter",
                "initial",
                "initial must be \"snapshot\"",
            ))
        }
    };
    let filter = Filter {
        scope: key.scope,
        key_id: key.id.clone(),
        tenant,
        db,
        types,
    };

    let head = app.shared.head();
    if let Some(after) = last_event_id.or(since).filter(|&after| after > head) {
        // A resume point past the head names events that do not exist: the client follows
        // another log (or an older copy of this one). Waiting would claim a seq that is not.
        let field = if last_event_id.is_some() {
            "Last-Event-ID"
        } else {
            "since"
        };
        return Err(bad(
            "since_beyond_head",
            field,
            format!("{field} {after} is beyond the log's head ({head}): no such event exists here; resume from a seq this server gave, or from 0"),
        ));
    }
    if req.method() == actix_web::http::Method::HEAD {
        return Ok(Either::Left(
            at_version(HttpResponse::Ok(), head)
                .content_type("text/event-stream")
                .finish(),
        ));
    }

    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    // Subscribe before reading anything, so that nothing falls in between.
    let feed = app.shared.subscribe();
    let (initial, after) = if snapshot {
        stream::snapshot(&app.shared.read(), &filter)
    } else {
        (Vec::new(), last_event_id.or(since).unwrap_or(0))
    };
    // Held until the stream's task ends: when a send finds the client gone (at the latest
    // at the next bookmark).
    let slot = app.limits.stream(&key.id)?;
    let run = stream::run(
        app.shared.clone(),
        app.log.clone(),
        filter,
        feed,
        initial,
        after,
        tx,
    );
    actix_web::rt::spawn(async move {
        let subscribers = &crate::metrics::get().subscribers;
        subscribers.inc();
        run.await;
        subscribers.dec();
        drop(slot);
    });
    // The head when the stream opened: what a client resumes from if it reads nothing.
    Ok(Either::Right(
        Sse::from_infallible_receiver(rx)
            .with_keep_alive(Duration::from_secs(15))
            .with_retry_duration(Duration::from_secs(3))
            .customize()
            .insert_header((RESOURCE_VERSION, head)),
    ))
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::parse_seq;

    proptest! {
        /// `since` and `Last-Event-ID`: a whole number (spaces around it allowed) or a 400,
        /// whatever the text.
        #[test]
        fn a_resume_point_is_a_seq_or_a_bad_request(raw in "\\PC*") {
            let parsed = parse_seq(&raw, "invalid_since", "since");
            match raw.trim().parse::<u64>() {
                Ok(n) => prop_assert_eq!(parsed.ok(), Some(n)),
                Err(_) => prop_assert!(parsed.is_err()),
            }
        }

        #[test]
        fn digits_resume_where_they_say(n: u64, pad in " {0,3}") {
            let raw = format!("{pad}{n}{pad}");
            prop_assert_eq!(parse_seq(&raw, "invalid_since", "since").ok(), Some(n));
        }
    }
}
