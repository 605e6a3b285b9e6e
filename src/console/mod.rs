//! The Console: the web page at `/console` for the people who run their databases by hand.
//!
//! Its assets are compiled into the binary (no CDN, nothing fetched at run time) and served
//! with their content type, an `ETag` (a client revalidates and gets 304 while nothing
//! changed), and a Content-Security-Policy that lets the page reach nothing but this server:
//! no inline script or style, no frames, no form posts. The page is plain JavaScript over the
//! public API; it keeps the API token in `sessionStorage` and opens `GET /v2/events` with a
//! single-use ticket, so the token never appears in a URL. What it shows and how: docs/console.md.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

/// One file of the Console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        path: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/icon.svg"),
    },
];

/// Nothing but this server, and nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where `app.js` takes the event types the stream can send (an `EventSource` needs a
/// listener per type), so the page never lags behind the events this binary writes.
const EVENT_TYPES_SLOT: &str = r#"["__EVENT_TYPES__"]"#;

/// Each asset's bytes as served, and its `ETag` (a hash of them); made once.
fn served() -> &'static [(String, String)] {
    static SERVED: OnceLock<Vec<(String, String)>> = OnceLock::new();
    SERVED.get_or_init(|| {
        let types = serde_json::to_string(spg99_events::Event::TYPE_NAMES).expect("strings");
        ASSETS
            .iter()
            .map(|a| {
                use sha2::Digest;
                let body = a.body.replace(EVENT_TYPES_SLOT, &types);
                let digest = sha2::Sha256::digest(body.as_bytes());
                let etag = format!("\"{}\"", crate::auth::hex(&digest[..12]));
                (body, etag)
            })
            .collect()
    })
}

/// The Console's routes: `/console`, `/console/` and its files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::RoutePattern;
    cfg.service(
        web::resource("/console")
            .app_data(RoutePattern("/console"))
            .to(serve),
    )
    .service(
        web::resource("/console/{file:.*}")
            .app_data(RoutePattern("/console/{file}"))
            .to(serve),
    );
}

async fn serve(req: HttpRequest) -> HttpResponse {
    let file = req.match_info().get("file").unwrap_or("");
    let method = req.method();
    if method != actix_web::http::Method::GET && method != actix_web::http::Method::HEAD {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .finish();
    }
    let Some(i) = ASSETS.iter().position(|a| a.path == file) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such page in the Console; it starts at /console/\n");
    };
    let asset = &ASSETS[i];
    let (body, etag) = &served()[i];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag.as_str()))
        // Revalidate every time: a new binary serves new assets at the same paths.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ));
    if fresh {
        res.finish()
    } else {
        res.body(body.as_str())
    }
}
