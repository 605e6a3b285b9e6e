//! Logging, set up once per process.
//!
//! Lines go to stderr (stdout carries only what a person must copy: the listen address and the
//! once-shown bootstrap secrets). `RUST_LOG` filters as usual (default `info`; per-request
//! lines are at `debug`). `SPG99_LOG_FORMAT=json` writes one JSON object per line, with the
//! current request's span (and so its `request_id`) on each.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
