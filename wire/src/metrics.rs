//! Metrics in the Prometheus text format (OpenMetrics): [`text`], the exposition of one or more
//! registries (the control plane's `/metrics` carries its embedded Gateway's and worker's),
//! and [`serve`], the Gateway's and the worker's `GET /metrics` on a listen address of their
//! own (`--metrics-listen`): a small HTTP/1.1 responder on a thread, enough for a scraper.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prometheus_client::registry::Registry;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One exposition of every metric of `registries`, in order, with the end marker once.
pub fn text(registries: &[&Registry]) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    for r in registries {
        encode_registry(&mut out, r).expect("encoding into a string cannot fail");
    }
    encode_eof(&mut out).expect("encoding into a string cannot fail");
    out
}

/// Serves `GET /metrics` of `registry` on `listen` until the process ends; the address it
/// listens on.
pub fn serve(listen: &str, registry: &'static Registry) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen} for metrics: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the metrics listener: {e}"))?;
    std::thread::Builder::new()
        .name("spg99-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, registry);
            }
        })
        .map_err(|e| format!("cannot start the metrics listener: {e}"))?;
    Ok(addr)
}

/// One request (the connection is closed after it).
fn answer(stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The headers, up to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, text(&[registry])),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics here\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}
