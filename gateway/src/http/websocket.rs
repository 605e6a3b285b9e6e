//! The PostgreSQL protocol over a WebSocket (the Neon serverless driver's `Pool` and
//! `Client`): binary frames carry the protocol's bytes unchanged, both ways. Any path; the
//! driver adds `?address=host:port` from its connection string, and a port that is the
//! pooler's gets the pooled relay (the pooled connection string), any other the session's.
//!
//! The session is the TCP ports' ([`crate::session::serve_carried`]) but for how the client
//! proves itself: its password in clear, inside the socket's TLS (the driver sends it before
//! it is asked, with its startup message and first query), checked against the verifier.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{Body, Failure};
use crate::session::{Gateway, Port};

/// Whether `req` asks for a WebSocket.
pub(super) fn asked(req: &Request<Incoming>) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

/// Answers the upgrade and serves the socket's session in a task of its own.
pub(super) fn upgrade(
    gw: Arc<Gateway>,
    addr: IpAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let key = match req.headers().get(SEC_WEBSOCKET_KEY) {
        Some(k)
            if req
                .headers()
                .get("sec-websocket-version")
                .is_some_and(|v| v == "13") =>
        {
            derive_accept_key(k.as_bytes())
        }
        _ => {
            return Failure::bad(
                "08P01",
                "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
            )
            .response()
        }
    };
    let http = &gw.http;
    if http.websockets.fetch_add(1, Ordering::AcqRel) >= http.max_websockets {
        http.websockets.fetch_sub(1, Ordering::AcqRel);
        let mut f = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "53300",
            format!(
                "too many WebSockets open on this Gateway (its limit is {})",
                http.max_websockets
            ),
        );
        f.retry_after = Some(1);
        crate::metrics::get().http_outcome(f.outcome());
        return f.response();
    }
    let port = match (address_port(req.uri().query()), http.pooler_port.get()) {
        (Some(p), Some(pooler)) if p == *pooler => Port::Pooled,
        _ => Port::Session,
    };
    let upgrading = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let m = crate::metrics::get();
        m.websockets_open.inc();
        if let Ok(upgraded) = upgrading.await {
            let mut config = WebSocketConfig::default();
            config.max_message_size = Some(crate::pooled::MAX_CLIENT_MESSAGE);
            config.max_frame_size = Some(crate::pooled::MAX_CLIENT_MESSAGE);
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            let mut carried = Carried {
                ws,
                read: Bytes::new(),
            };
            crate::session::serve_carried(&gw, &mut carried, port, Some(addr)).await;
            // A close frame, so that the client hears a clean end rather than a dropped socket.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tokio::io::AsyncWriteExt::shutdown(&mut carried),
            )
            .await;
        }
        m.websockets_open.dec();
        gw.http.websockets.fetch_sub(1, Ordering::AcqRel);
    });
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).expect("base64 is a header value"),
    );
    r
}

/// The port of `address=host:port` in a query string.
fn address_port(query: Option<&str>) -> Option<u16> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("address="))
        .and_then(|a| a.rsplit_once(':').or_else(|| a.rsplit_once("%3A")))
        .and_then(|(_, port)| port.parse().ok())
}

/// A WebSocket as a byte stream: what binary frames carry, in order; each write one frame.
struct Carried<S> {
    ws: WebSocketStream<S>,
    /// What the last frame read holds and was not yet taken.
    read: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Carried<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.read = b,
                // Pings are answered by the socket itself; a text frame is no protocol's.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a text frame: the PostgreSQL protocol goes in binary frames",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Carried<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        ready!(ws.poll_ready(cx)).map_err(std::io::Error::other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::address_port;

    #[test]
    fn the_connection_string_s_port_is_read_from_the_address() {
        assert_eq!(address_port(Some("address=db.example:6432")), Some(6432));
        assert_eq!(
            address_port(Some("x=1&address=127.0.0.1%3A5432")),
            Some(5432)
        );
        assert_eq!(address_port(Some("address=[::1]:6432")), Some(6432));
        assert_eq!(address_port(Some("address=host")), None);
        assert_eq!(address_port(None), None);
    }
}
