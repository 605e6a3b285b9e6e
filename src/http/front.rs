//! The HTTP server's front door: the listener, actix-http's service over it, and the one thing
//! actix-http does not let an application shape: its own answer to requests it cannot parse.
//!
//! A request line with a raw 0xFF, a header value with a control byte, a path too long, a head
//! that did not arrive within 5 s: actix-http refuses these before any route runs, with a
//! bodiless `400`/`408`/`431` and an ERROR line in the log, one per request — no error body,
//! no `X-Request-Id`, and a log any client can flood. Each connection's bytes pass through
//! [`Front`], which replaces that bodiless refusal with the API's error body and logs it at
//! debug level, at most once a second. Everything else passes through untouched; the check
//! costs a comparison of a write's last bytes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpService, Protocol, Request, Response};
use actix_rt::net::TcpStream;
use actix_service::{
    fn_service, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::request_id;

/// How long a client has to send a request's head (actix-web's default).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection answered before its request body was read (a refusal: too large,
/// unauthenticated, ...) goes on reading and discarding that body before it closes. A client
/// that writes its whole body before it reads (Python's http.client, requests, curl without
/// `Expect`) then reads the answer instead of meeting a reset: the lingering close of nginx
/// (`lingering_time`). It bounds what one such client can make the server read too.
pub const LINGER: Duration = Duration::from_secs(5);

/// The refusals actix-http writes itself, and how the API names them.
const REFUSALS: [(&[u8], &str, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        "malformed_request",
        "the request is not valid HTTP/1.1 (request line, path or a header value) and was not read",
    ),
    (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n",
        "request_timeout",
        "the request's head did not arrive within 5 s",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
        "headers_too_large",
        "the request's head is too large",
    ),
];
/// A refusal is the last thing written on its connection, and this short.
const REFUSAL_WINDOW: usize = 256;

/// Where in `buf` a bare refusal starts, and which one, when `buf` ends with one.
fn refusal_in(buf: &[u8]) -> Option<(usize, usize)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let from = buf.len().saturating_sub(REFUSAL_WINDOW);
    REFUSALS
        .iter()
        .enumerate()
        .find_map(|(which, (head, _, _))| {
            buf[from..]
                .windows(head.len())
                .rposition(|w| w == *head)
                .map(|at| (from + at, which))
        })
}

/// The API's answer in place of the bare refusal `bare` (kind `which`): the same status line
/// and headers, with the error body, its type and length, and a request id.
fn replacement(bare: &[u8], which: usize) -> Vec<u8> {
    let (head, code, message) = REFUSALS[which];
    let id = request_id::generate();
    let body = serde_json::json!({"error": {"code": code, "message": message, "request_id": id}})
        .to_string();
    let status_line_end = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(bare.len() + body.len() + 96);
    out.extend_from_slice(&head[..status_line_end]);
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The other headers actix-http wrote (connection, date), then the body.
    out.extend_from_slice(&bare[head.len()..]);
    out.extend_from_slice(body.as_bytes());
    note_refusal(code);
    out
}

/// Logs a refusal at debug level, at most once a second (with how many went unlogged).
fn note_refusal(code: &str) {
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if last != now
        && LAST_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::debug!(code, unlogged, "refused a request that is not valid HTTP");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection's bytes, as the HTTP service reads and writes them.
pub struct Front<T> {
    io: T,
    /// A replacement answer not yet fully written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> Front<T> {
    pub fn new(io: T) -> Self {
        Front { io, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> Front<T> {
    /// Writes what is left of a replacement answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Front<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Front<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        match refusal_in(buf) {
            // Answers before the refusal go out first, as they are.
            Some((at, _)) if at > 0 => Pin::new(&mut this.io).poll_write(cx, &buf[..at]),
            Some((_, which)) => {
                this.pending = Some((replacement(buf, which), 0));
                // Taken: what is left goes out with the next write, flush or shutdown.
                let _ = this.drain(cx)?;
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// How the server runs.
pub struct Settings {
    pub workers: usize,
    pub backlog: u32,
    /// How long open connections may hold a shutdown.
    pub shutdown_timeout: Duration,
}

/// A connection as the HTTP service reads it: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One listening socket, and the TLS setup its connections are served with (none: plain).
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// Builds the server on `listeners` for the application `factory` makes (once per worker
/// thread and listener); it accepts connections from now on, and serves until it is stopped.
pub fn serve<F, I, S, B>(
    listeners: Vec<Listener>,
    settings: &Settings,
    factory: F,
) -> io::Result<actix_server::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut builder = actix_server::Server::build()
        .workers(settings.workers)
        .backlog(settings.backlog)
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        // The caller decides when to stop (`Server::handle`): the service stops what depends
        // on the API before the API itself.
        .disable_signals();
    let shutdown = builder.graceful_shutdown_signal();
    for (i, Listener { socket, tls }) in listeners.into_iter().enumerate() {
        let addr = socket.local_addr()?;
        let (factory, shutdown) = (factory.clone(), shutdown.clone());
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        builder = builder.listen(format!("spg99-http-{i}"), socket, move || {
            let shutdown = shutdown.clone();
            let app = factory()
                .into_factory()
                .map_err(|e| e.into().error_response());
            let http = HttpService::build()
                .client_request_timeout(HEAD_TIMEOUT)
                .client_disconnect_timeout(LINGER)
                .local_addr(addr)
                .graceful_shutdown_signal(move || {
                    let signal = shutdown.clone();
                    async move { signal.notified().await }
                })
                .finish(map_config(app, |_| AppConfig::default()));
            let tls = tls.clone();
            fn_service(move |io: TcpStream| {
                let tls = tls.clone();
                async move {
                    let peer = io.peer_addr().ok();
                    let conn = match tls {
                        None => Conn::Plain(io),
                        // The handshake is part of the head: the same time allowed.
                        Some(acceptor) => {
                            match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(io)).await {
                                Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                                Ok(Err(e)) => return Err(e.into()),
                                Err(_) => {
                                    return Err(io::Error::from(io::ErrorKind::TimedOut).into())
                                }
                            }
                        }
                    };
                    Ok((Front::new(conn), Protocol::Http1, peer))
                }
            })
            .and_then(http)
        })?;
    }
    Ok(builder.run())
}

/// A listening socket on `listen` (port 0 picks one) with `backlog` (the standard library's
/// `bind` fixes it at 128).
pub fn listener(listen: &str, backlog: u32) -> io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in listen.to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        match socket
            .bind(&addr.into())
            .and_then(|()| socket.listen(backlog.min(i32::MAX as u32) as i32))
        {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("the address resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Tue, 01 Dec 2026 20:34:54 GMT\r\n\r\n";

    #[test]
    fn a_bare_refusal_is_found_at_the_end_of_a_write_only() {
        assert_eq!(refusal_in(BARE_400), Some((0, 0)));
        let mut pipelined = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let at = pipelined.len();
        pipelined.extend_from_slice(BARE_400);
        assert_eq!(refusal_in(&pipelined), Some((at, 0)));
        // An answer of the API's own is never touched, even one that quotes a refusal.
        let quoted = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n".as_slice(),
            BARE_400,
            b"!",
        ]
        .concat();
        assert_eq!(refusal_in(&quoted), None);
        assert_eq!(
            refusal_in(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 87\r\n\r\n"),
            None
        );
    }

    #[test]
    fn the_replacement_keeps_the_status_and_headers_and_adds_the_error_body() {
        let out = String::from_utf8(replacement(BARE_400, 0)).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("connection: close") && head.contains("date: "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request");
        let id = v["error"]["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("x-request-id: {id}")));
    }
}
