//! The HTTP front door (`--http-listen`): SQL over HTTP (`POST /sql`, [`query`]) and the
//! PostgreSQL protocol over WebSockets ([`websocket`]), as the Neon serverless driver speaks
//! them, for runtimes that cannot open a TCP socket (Cloudflare Workers, Vercel Edge, Deno
//! Deploy, browsers).
//!
//! TLS with the Gateway's certificate (ALPN `http/1.1`); plain HTTP only with
//! `--allow-plaintext`. Every answer carries `Access-Control-Allow-Origin: *`, and `OPTIONS`
//! answers a browser's preflight. Errors are JSON, `{message, code, ...}` with a SQLSTATE in
//! `code` (and the rest of PostgreSQL's fields when the database said it), status 400 for what
//! a request asked and for a wrong password (the driver reads the fields of a 400 only), 413
//! for a body over the limit, 429 past the per-address rate, 503 (with `Retry-After`) when the
//! database cannot be reached in time.

pub mod json;
mod query;
mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::leases::{Held, Ticket};
use crate::pool::{Member, Pool};
use crate::session::{End, Gateway, Login};

/// The HTTP front door's limits and state.
pub struct Http {
    pub max_request: usize,
    pub max_response: usize,
    pub statement_timeout: Duration,
    /// Requests (and WebSocket opens) per client address.
    pub per_address: spg99_limits::Window<IpAddr>,
    pub max_websockets: usize,
    websockets: AtomicUsize,
    /// How long a database's HTTP clients keep its lease and pool membership after their
    /// last request: a serverless function's next request finds the backend warm.
    pub linger: Duration,
    /// The host names a connection string may name (besides the request's own `Host`).
    pub hosts: Vec<String>,
    /// The pooler's port: a WebSocket whose connection string names it is pooled.
    pub pooler_port: OnceLock<u16>,
    clients: Mutex<HashMap<(String, String), Arc<Client>>>,
}

impl Http {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        max_request: usize,
        max_response: usize,
        statement_timeout: Duration,
        requests_per_minute: u32,
        max_websockets: usize,
        linger: Duration,
        hosts: Vec<String>,
    ) -> Http {
        Http {
            max_request,
            max_response,
            statement_timeout,
            per_address: spg99_limits::Window::new(requests_per_minute, Duration::from_secs(60)),
            max_websockets,
            websockets: AtomicUsize::new(0),
            linger,
            hosts,
            pooler_port: OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The HTTP client of `who`'s database on this Gateway.
    fn client(&self, gw: &Gateway, who: &Login) -> Arc<Client> {
        let key = (who.user.clone(), who.database.clone());
        let mut clients = crate::lock(&self.clients);
        let c = clients.entry(key).or_insert_with(|| {
            let pool = gw.pools.get(&who.user, &who.database);
            Arc::new(Client {
                _member: pool.join(),
                pool,
                ticket: tokio::sync::Mutex::new(None),
                busy: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            })
        });
        c.busy.fetch_add(1, Ordering::AcqRel);
        c.clone()
    }

    /// Forgets the clients idle for the linger: their lease and pool membership go.
    fn sweep(&self) {
        let idle: Vec<Arc<Client>> = {
            let mut clients = crate::lock(&self.clients);
            let mut idle = Vec::new();
            clients.retain(|_, c| {
                let keep = c.busy.load(Ordering::Acquire) > 0
                    || crate::lock(&c.last).elapsed() < self.linger;
                if !keep {
                    idle.push(c.clone());
                }
                keep
            });
            idle
        };
        drop(idle);
    }
}

/// All the HTTP requests to one database on this Gateway, as one client of its pool: one
/// share of its lease (counted in describe's `active_connections` while it lingers).
struct Client {
    pool: Arc<Pool>,
    /// Counts it in the pool while it lingers.
    _member: Member,
    ticket: tokio::sync::Mutex<Option<Ticket>>,
    /// Requests under way.
    busy: AtomicUsize,
    last: Mutex<Instant>,
}

impl Client {
    /// The database's lease (checked out if this client holds none: a stopped database
    /// starts now).
    async fn held(&self, gw: &Gateway, who: &Login) -> Result<Arc<Held>, End> {
        let mut ticket = self.ticket.lock().await;
        if ticket.as_ref().is_some_and(|t| *t.closed.borrow()) {
            *ticket = None;
        }
        if let Some(t) = ticket.as_ref() {
            return Ok(t.held.clone());
        }
        let deadline = Instant::now() + gw.leases.connect_timeout();
        let t = gw
            .leases
            .acquire(&who.user, &who.database, deadline)
            .await
            .map_err(|e| crate::backend::no_route(gw, who, e))?;
        let held = t.held.clone();
        *ticket = Some(t);
        Ok(held)
    }

    /// A request is over.
    fn done(&self) {
        *crate::lock(&self.last) = Instant::now();
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body.
type Body = Full<Bytes>;

/// The host name of `host[:port]` (an IPv6 address in brackets too), in lower case: what a
/// connection string's host is compared with.
pub fn host_name(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// What went wrong, for the client: an HTTP status and PostgreSQL's fields (`code` first).
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    /// `(name, value)` in the order they are written.
    fields: Vec<(&'static str, String)>,
    retry_after: Option<u64>,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            fields: vec![
                ("message", message.into()),
                ("code", code.to_owned()),
                ("severity", "ERROR".to_owned()),
            ],
            retry_after: None,
        }
    }

    pub(crate) fn bad(code: &str, message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// An ErrorResponse's fields, as the database said them.
    pub(crate) fn from_backend(body: &[u8]) -> Failure {
        let mut fields = Vec::new();
        for (f, v) in crate::pgwire::fields(body) {
            let name = match f {
                b'M' => "message",
                b'C' => "code",
                b'V' => "severity",
                b'D' => "detail",
                b'H' => "hint",
                b'P' => "position",
                b'p' => "internalPosition",
                b'q' => "internalQuery",
                b'W' => "where",
                b's' => "schema",
                b't' => "table",
                b'c' => "column",
                b'd' => "dataType",
                b'n' => "constraint",
                b'F' => "file",
                b'L' => "line",
                b'R' => "routine",
                _ => continue,
            };
            fields.push((name, v));
        }
        Failure {
            status: StatusCode::BAD_REQUEST,
            fields,
            retry_after: None,
        }
    }

    pub(crate) fn code(&self) -> &str {
        self.field("code").unwrap_or("")
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn response(&self) -> Response<Body> {
        let mut out = vec![b'{'];
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::string(&mut out, name);
            out.push(b':');
            json::string(&mut out, value);
        }
        out.push(b'}');
        let mut r = answer(self.status, out);
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }

    /// The metric's outcome.
    fn outcome(&self) -> &'static str {
        match self.status {
            _ if matches!(self.code(), "28P01" | "28000") => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "unavailable",
            _ if self.code() == "57014" => "timeout",
            _ if self.field("file").is_some() => "query_error",
            _ => "bad_request",
        }
    }
}

impl From<End> for Failure {
    /// A refusal on the way to the database, as the PostgreSQL ports would say it.
    fn from(e: End) -> Failure {
        let mut f = match e {
            End::Error(code, message) => Failure::bad(code, message),
            End::Backend(m) => Failure::from_backend(&m.body),
            End::Quiet => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "08006",
                "the connection to the database's server was lost",
            ),
        };
        match f.code() {
            // Not there in time, no room, or lost: worth a retry.
            "57P03" | "53300" | "08006" => {
                f.status = StatusCode::SERVICE_UNAVAILABLE;
                f.retry_after = Some(1);
            }
            _ => {}
        }
        f
    }
}

/// A JSON answer.
fn answer(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Accepts HTTP clients until the listener fails.
pub(crate) async fn accept(listener: TcpListener, gw: Arc<Gateway>) {
    let sweeper = Arc::downgrade(&gw);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match sweeper.upgrade() {
                Some(gw) => gw.http.sweep(),
                None => return,
            }
        }
    });
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(connection(gw.clone(), tcp, peer.ip()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One HTTP connection: TLS (or plain HTTP when allowed), then its requests.
async fn connection(gw: Arc<Gateway>, mut tcp: TcpStream, addr: IpAddr) {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(gw.handshake_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == 0x16 {
        let acceptor = tokio_rustls::TlsAcceptor::from(gw.tls.http.clone());
        let accepted = tokio::time::timeout(gw.handshake_timeout, acceptor.accept(tcp)).await;
        if let Ok(Ok(tls)) = accepted {
            serve(gw, TokioIo::new(tls), addr).await
        }
    } else if gw.allow_plaintext {
        serve(gw, TokioIo::new(tcp), addr).await
    } else {
        let body = r#"{"message":"TLS is required: use https:// (or wss://)","code":"28000"}"#;
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = tcp.write_all(format!("{head}{body}").as_bytes()).await;
    }
}

async fn serve<I>(gw: Arc<Gateway>, io: TokioIo<I>, addr: IpAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(handle(gw, addr, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

/// The headers a browser may send with `POST /sql`.
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Neon-Connection-String, Neon-Raw-Text-Output, Neon-Array-Mode, Neon-Pool-Opt-In, Neon-Batch-Isolation-Level, Neon-Batch-Read-Only, Neon-Batch-Deferrable";

async fn handle(gw: Arc<Gateway>, addr: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let mut r = route(gw, addr, req).await;
    r.headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

async fn route(gw: Arc<Gateway>, addr: IpAddr, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            "access-control-expose-headers",
            HeaderValue::from_static(
                "Neon-Batch-Isolation-Level, Neon-Batch-Read-Only, Neon-Batch-Deferrable",
            ),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("86400"));
        return r;
    }
    let m = crate::metrics::get();
    if let Err(wait) = gw.http.per_address.hit(&addr) {
        let mut f = Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "53300",
            format!(
                "too many requests from this address; try again in {} s",
                wait.as_secs().max(1)
            ),
        );
        f.retry_after = Some(wait.as_secs().max(1));
        m.http_outcome(f.outcome());
        return f.response();
    }
    if websocket::asked(&req) {
        return websocket::upgrade(gw, addr, req);
    }
    let failure = match (req.method(), req.uri().path()) {
        (&Method::POST, "/sql") => match query::handle(&gw, addr, req).await {
            Ok(r) => {
                m.http_outcome("ok");
                return r;
            }
            Err(f) => f,
        },
        (_, "/sql") => Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "08P01",
            "/sql takes POST (and OPTIONS)",
        ),
        (_, path) => Failure::new(
            StatusCode::NOT_FOUND,
            "08P01",
            format!("no such endpoint: {path} (POST /sql, or a WebSocket)"),
        ),
    };
    m.http_outcome(failure.outcome());
    failure.response()
}
