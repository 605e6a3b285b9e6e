//! Logging, set up once per process.
//!
//! Lines go to stderr (stdout carries only what a person must copy: the listen address and the
//! once-shown bootstrap secrets). `RUST_LOG` filters as usual (default `info`; per-request
//! lines are at `debug`). `SPG99_LOG_FORMAT=json` writes one JSON object per line, with the
//! current request's span (and so its `request_id`) on each. actix-http's per-connection
//! errors are off unless `RUST_LOG` names `actix_http`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let given = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&given).unwrap_or_else(|_| EnvFilter::new("info"));
    if given.trim().is_empty() {
        filter = EnvFilter::new("info");
    }
    // actix-http logs every request it cannot parse at ERROR, so any client could flood the
    // log; the server's front logs those itself, at debug and rate-limited (http::front).
    if !given.contains("actix_http") {
        if let Ok(quiet) = "actix_http::h1::dispatcher=off".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let json = std::env::var("SPG99_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that start several servers in one process) is harmless.
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
