//! The Console, in a real browser (headless chromium through chromedriver): what a person who
//! runs databases by hand sees and does, and that it follows changes made anywhere, live.
//!
//! Screenshots of each view land in `target/console/` (the main ones are kept in docs/).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::helpers::{tempdir, Fixture, Server, Start, ROOT_TOKEN};
use crate::lab::{Worker, SERVICE_TOKEN};

const EMAIL: &str = "ops@acme.io";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console")
}

/// A fixture whose account has a contact email (what the login compares).
fn fixture(server: Server) -> Fixture {
    let fx = Fixture::with_server(server);
    let r = fx.server.post(
        "/v2/account/contact",
        &fx.account_key,
        json!({"email": EMAIL}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    fx
}

/// Every request the server served is in its log (at debug level), path and query.
fn logged(start: Start) -> Start {
    start.env("RUST_LOG", "info,spg99=debug")
}

fn login(b: &Browser, s: &Server, email: &str, token: &str) {
    if b.text("#login-token").is_none() {
        b.goto(&s.url("/console/"));
    }
    b.fill("#login-email", email);
    b.fill("#login-token", token);
    b.click("#login-submit");
}

/// The page, unreloaded since `mark` was called: the marker survives only without a reload.
fn mark(b: &Browser) {
    b.js("window.spg99Marker = 'still here'; return null;", vec![]);
}

fn assert_not_reloaded(b: &Browser) {
    assert_eq!(
        b.js("return window.spg99Marker || null;", vec![]),
        json!("still here"),
        "the page was reloaded"
    );
}

fn go(b: &Browser, hash: &str) {
    b.js(
        "location.hash = arguments[0]; return null;",
        vec![json!(hash)],
    );
}

/// Counts the API requests the page makes from now on (the event stream aside): `posts`
/// sent, and `busy`, those whose answer is not yet read (and rendered: the count drops a task
/// after the body is read). Installed once per page.
fn count_requests(b: &Browser) {
    b.js(
        "if (window.spg99Requests) return null;
         const counts = window.spg99Requests = { posts: 0, busy: 0 };
         const real = window.fetch;
         window.fetch = function (input, init) {
           const url = String((input && input.url) || input);
           if (url.includes('/v2/events')) return real.apply(this, arguments);
           if (((init && init.method) || 'GET') === 'POST') counts.posts++;
           counts.busy++;
           const done = () => setTimeout(() => counts.busy--, 0);
           return real.apply(this, arguments).then(
             res => { res.clone().text().finally(done); return res; },
             err => { done(); throw err; });
         };
         return null;",
        vec![],
    );
}

/// Waits until the page has no API request unanswered (see [`count_requests`]).
fn until_idle(b: &Browser) {
    b.until_js(
        "return window.spg99Requests.busy === 0;",
        "idle: no API request unanswered",
    );
}

/// Form controls without a label and buttons or links without a name: what a screen reader
/// could not announce.
const UNLABELLED: &str = "
const bad = [];
for (const el of document.querySelectorAll('input, select, textarea')) {
  if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) bad.push(el.outerHTML.slice(0, 100));
}
for (const el of document.querySelectorAll('button, a[href]')) {
  if (!el.textContent.trim() && !el.getAttribute('aria-label')) bad.push(el.outerHTML.slice(0, 100));
}
return bad;";

#[test]
fn the_console_is_served_from_the_binary_with_strict_headers() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = agent.get(&s.url(path)).call().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.content_type().starts_with(kind),
            "{path}: {}",
            r.content_type()
        );
        let csp = r.header("content-security-policy").unwrap_or("").to_owned();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let etag = r.header("etag").unwrap().to_owned();
        let body = r.into_string().unwrap();
        if path == "/console/" {
            // Everything the page loads is the Console's own.
            for link in body
                .split(['"', '\''])
                .filter(|p| p.starts_with('/') || p.contains("//"))
            {
                assert!(link.starts_with("/console/"), "the page loads {link}");
            }
        }
        if path.ends_with("app.js") {
            assert!(body.contains("\"tenant.created\"") && !body.contains("__EVENT_TYPES__"));
        }
        // A client that has it revalidates for nothing.
        let again = agent
            .get(&s.url(path))
            .set("If-None-Match", &etag)
            .call()
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let r = s.call("GET", "/console/nothing-here", None, None);
    assert_eq!(r.status, 404);
    let r = s.call("POST", "/console/", None, Some(&json!({})));
    assert_eq!(r.status, 405);
}

#[test]
fn login_takes_the_accounts_email_and_a_live_token_and_says_what_is_wrong() {
    let tmp = tempdir();
    // A manual clock, so that a key's expiry comes when the test says.
    let fx = fixture(crate::lab::start(&tmp.path().join("data"), &[]).spawn());
    let s = &fx.server;
    let b = Browser::open(&shots(), 1280, 900);
    b.goto(&s.url("/console/"));
    b.screenshot("login");

    login(&b, s, "someone@else.io", &fx.account_key);
    b.until_contains(
        "#login-error",
        "does not belong to the account of that email",
    );
    login(&b, s, EMAIL, "spg99_0000000000000000_nope");
    b.until_contains("#login-error", "not valid");
    let revoked = s.issue_key(&fx.account_key, &fx.account, json!({"scope": "account"}));
    s.post("/v2/api-keys/revoke", &revoked, json!({}));
    login(&b, s, EMAIL, &revoked);
    b.until_contains("#login-error", "was revoked");
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let expiring = s.issue_key(
        &fx.account_key,
        &fx.account,
        json!({"scope": "account", "expires_at": soon}),
    );
    let r = s.post(
        "/internal/v1/clock/advance",
        SERVICE_TOKEN,
        json!({"seconds": 3600}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    login(&b, s, EMAIL, &expiring);
    b.until_contains("#login-error", "has expired");
    b.screenshot("login-refused");

    // The email compares without regard to case; Enter submits (the keyboard is enough);
    // the session survives a reload.
    b.fill("#login-email", "OPS@acme.io");
    b.fill("#login-token", &format!("{}\u{e007}", fx.account_key));
    b.until_contains("main h1", "Tenants");
    b.until_contains("#who", EMAIL);
    let stored = b.js("return sessionStorage.getItem('spg99.token');", vec![]);
    assert_eq!(stored, json!(fx.account_key));
    b.goto(&s.url("/console/#/tenants"));
    b.until_contains("main h1", "Tenants");

    // Logging out forgets the token.
    b.click("#logout");
    b.until_contains("#login-error", "logged out");
    assert_eq!(
        b.js("return sessionStorage.getItem('spg99.token');", vec![]),
        Value::Null
    );

    // A global key opens the operator's view of every account, without an email.
    login(&b, s, "", ROOT_TOKEN);
    b.click("[data-nav='accounts']");
    b.until_contains("main h1", "Accounts");
    b.until_contains("main", "acme");
    b.until_contains("#who", "Operator");
    b.screenshot("operator-accounts");
    // The refused logins above answered 401, which the browser notes; nothing else is wrong.
    let errors: Vec<String> = b
        .console_errors()
        .into_iter()
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_person_runs_databases_from_the_console_and_sees_every_change_live() {
    let tmp = tempdir();
    let fx = fixture(
        logged(Start::new(&tmp.path().join("data")))
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .spawn(),
    );
    let s = &fx.server;
    // A worker whose writers take a while to stop, so that `deleting` lasts long enough to see.
    let _worker = Worker::simulated_on(s, "w1", &["--stop-delay-ms", "1500"]);
    let b = Browser::open(&shots(), 1280, 900);
    login(&b, s, EMAIL, &fx.account_key);
    b.until_contains("main h1", "Tenants");
    b.until_contains("#live", "Live");
    b.screenshot("tenants-empty");

    // Create a tenant from the page: its credentials are shown right away.
    b.fill("#tenant-name", "shop");
    b.click("#create-tenant");
    b.until_contains("main h1", "shop");
    let creds = s.get("/v2/tenants/shop/credentials", &fx.account_key).body;
    let password = creds["pg_password"].as_str().unwrap();
    b.until_contains("#pg-password-line", password);
    b.until_contains("#dsn-template", creds["dsn_template"].as_str().unwrap());
    b.until_contains(
        "#pooled-dsn-template",
        creds["pooled_dsn_template"].as_str().unwrap(),
    );
    b.until_contains("#http-sql-url", creds["http_sql_url"].as_str().unwrap());
    b.until_contains("#websocket-url", creds["websocket_url"].as_str().unwrap());

    // A database, created with a double click: one database, no error.
    b.fill("#db-name", "app");
    count_requests(&b);
    b.js(
        "const b = document.querySelector('#create-db'); b.click(); b.click(); return null;",
        vec![],
    );
    b.until_contains("[data-db='app'] [data-col='state']", "stopped");
    until_idle(&b);
    assert_eq!(
        b.js("return window.spg99Requests.posts;", vec![]),
        json!(1),
        "the second click sent nothing"
    );
    let dbs = s.get("/v2/tenants/shop/dbs", &fx.account_key).body;
    assert_eq!(dbs["items"].as_array().unwrap().len(), 1, "{dbs}");
    assert!(
        b.js("return [...document.querySelectorAll('form .error')].map(e => e.textContent).join('');", vec![]) == json!(""),
        "an error was shown"
    );
    // The API's own message where it applies: a name taken.
    b.fill("#db-name", "app");
    b.click("#create-db");
    b.until_contains("form .error", "already");
    b.screenshot("tenant");

    // A tenant made through the API appears in the open page, without a reload.
    go(&b, "#/tenants");
    b.until_contains("[data-tenant='shop']", "shop");
    mark(&b);
    s.create_tenant(&fx.account_key, "made-by-api");
    b.until_contains("[data-tenant='made-by-api']", "made-by-api");
    assert_not_reloaded(&b);
    b.screenshot("tenants");

    // A checkout starts the database: the page shows it running, on its worker.
    go(&b, "#/tenants/shop/dbs/app");
    b.until_contains("#db-state", "stopped");
    let pg_user = creds["pg_user"].as_str().unwrap();
    let lease = s.post(
        "/internal/v1/checkout",
        ROOT_TOKEN,
        json!({"pg_user": pg_user, "db": "app", "wait_ms": 20000}),
    );
    assert_eq!(lease.status, 200, "{lease:?}");
    b.until_contains("#db-state", "running");
    b.until_contains("#db-worker", lease.body["worker_id"].as_str().unwrap());
    b.until_contains("#db-backend", lease.body["backend_addr"].as_str().unwrap());
    assert_not_reloaded(&b);
    b.click("#reveal");
    b.until_contains("#dsn", "/app?sslmode=require");
    b.until_contains("#dsn", password);
    let pooled = creds["pooled_dsn_template"]
        .as_str()
        .unwrap()
        .replace("<db-name>", "app");
    b.until_contains("#pooled-dsn", &pooled);
    // The serverless driver's snippet: its two settings and the database's connection string.
    let http_sql_url = creds["http_sql_url"].as_str().unwrap();
    b.until_contains(
        "#driver-snippet",
        &format!("neonConfig.fetchEndpoint = '{http_sql_url}';"),
    );
    b.until_contains("#driver-snippet", "/app?sslmode=require');");
    b.screenshot("database");

    // Keys: issue one from the page, see its token once, revoke it.
    go(&b, "#/keys");
    b.until_contains("main h1", "API keys");
    b.until_contains("#key-tenant", "shop");
    b.fill("#key-name", "deploy");
    b.select("#key-scope", "tenant");
    b.select("#key-tenant", "shop");
    b.click("[data-perm='can_create_db']");
    b.click("#issue-key");
    let token = b.until_text("#new-token", "a token", |t| t.starts_with("spg99_"));
    let me = s.get("/v2/api-keys/me", &token);
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["scope"], "tenant");
    assert_eq!(me.body["permissions"]["can_create_db"], true);
    assert_eq!(me.body["permissions"]["can_delete"], false);
    let key_id = me.body["key_id"].as_str().unwrap().to_owned();
    b.screenshot("keys");
    b.click(&format!("[data-key='{key_id}'] button"));
    b.click("#dialog-confirm");
    b.until_contains(&format!("[data-key='{key_id}']"), "revoked");
    assert_eq!(s.get("/v2/api-keys/me", &token).code(), "token_revoked");

    // Billing counts the running database.
    go(&b, "#/billing");
    b.until_contains("main", "shop/app");
    b.until_contains("main", "c0.25");
    b.screenshot("billing");

    // The audit log: every event, each with its JSON; filtered by type from the form.
    go(&b, "#/events");
    b.until_contains("#timeline", "tenant.created");
    b.until_contains("#timeline", "db.started");
    b.screenshot("audit-log");
    b.select("#filter-types", "db.created");
    b.click("#apply-filters");
    // The filtered stream replaces the timeline: wait for it, not for an entry the unfiltered
    // one already showed.
    b.until_js(
        "const t = [...document.querySelectorAll('#timeline li')].map(li => li.dataset.type); \
         return t.length > 0 && t.every(x => x === 'db.created');",
        "the timeline filtered to db.created",
    );
    let types = b.js(
        "return [...document.querySelectorAll('#timeline li')].map(li => li.dataset.type);",
        vec![],
    );
    assert!(
        types.as_array().unwrap().iter().all(|t| t == "db.created"),
        "{types}"
    );
    // A filter the API refuses says why, rather than reconnecting for ever.
    go(&b, "#/events?tenant=Not-A-Name");
    b.until_contains("#timeline-status", "refused");
    b.until_contains("#timeline-status", "tenant");

    // A deletion shows `deleting` (while the writer stops), then the database is gone.
    go(&b, "#/tenants/shop");
    b.until_contains("[data-db='app'] [data-col='state']", "running");
    let r = s.delete("/v2/tenants/shop/dbs/app", &fx.account_key);
    assert_eq!(r.status, 202, "{r:?}");
    b.until_contains("[data-db='app'] [data-col='state']", "deleting");
    b.screenshot("deleting");
    b.until_gone("[data-db='app']");
    assert_not_reloaded(&b);

    // Rotating the Console's own key: it carries on with the new token.
    go(&b, "#/keys");
    b.click("#rotate-key");
    b.click("#dialog-confirm");
    let rotated = b.until_text("#new-token", "the new token", |t| t.starts_with("spg99_"));
    assert_eq!(
        s.get("/v2/api-keys/me", &fx.account_key).code(),
        "invalid_token"
    );
    assert_eq!(s.get("/v2/api-keys/me", &rotated).status, 200);
    s.create_tenant(&rotated, "after-rotation");
    go(&b, "#/tenants");
    b.until_contains("[data-tenant='after-rotation']", "after-rotation");

    // 360 px wide: every view fits without scrolling sideways.
    b.resize(360, 780);
    for (hash, name) in [
        ("#/tenants", "tenants"),
        ("#/tenants/shop", "tenant"),
        ("#/keys", "keys"),
        ("#/billing", "billing"),
        ("#/events", "audit-log"),
    ] {
        count_requests(&b);
        go(&b, hash);
        b.until_text("main h1", "its heading", |t| !t.is_empty());
        until_idle(&b);
        b.screenshot(&format!("{name}-360"));
        let unlabelled = b.js(UNLABELLED, vec![]);
        assert_eq!(unlabelled, json!([]), "{hash}: controls without a name");
        let wide = b.js(
            "return document.documentElement.scrollWidth - innerWidth;",
            vec![],
        );
        assert!(wide.as_i64().unwrap() <= 0, "{hash} is {wide} px too wide");
    }

    // The browser's console stayed clean, but for the refusal asked for above.
    let errors: Vec<String> = b
        .console_errors()
        .into_iter()
        .filter(|e| !(e.contains("/v2/tenants/shop/dbs ") && e.contains("status of 409")))
        .filter(|e| !(e.contains("/v2/events?tenant=Not-A-Name") && e.contains("status of 400")))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // The server's request log has every path the page asked for, and no token in any.
    let log = s.stderr();
    for path in ["path=/console/app.js", "path=/v2/events", "query=ticket="] {
        assert!(log.contains(path), "the request log lacks {path}");
    }
    for secret in [&fx.account_key, &rotated, &token] {
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(
            !log.contains(secret_part),
            "a token reached the server's log"
        );
    }
}

#[test]
fn the_page_recovers_when_the_server_restarts() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let mut fx = fixture(Start::new(&data).spawn());
    let b = Browser::open(&shots(), 1280, 900);
    login(&b, &fx.server, EMAIL, &fx.account_key);
    b.until_contains("main h1", "Tenants");
    b.until_contains("#live", "Live");
    mark(&b);
    let addr = fx.server.base.trim_start_matches("http://").to_owned();
    fx.server.terminate();
    b.until_text("#live", "not live", |t| !t.contains("Live"));
    fx.server = Start::new(&data).listen(&addr).spawn();
    b.until_contains("#live", "Live");
    fx.server.create_tenant(&fx.account_key, "after-restart");
    b.until_contains("[data-tenant='after-restart']", "after-restart");
    assert_not_reloaded(&b);
}

#[test]
fn a_handoff_shows_its_stages_its_deadline_and_why_it_failed() {
    use crate::lifecycle::{lab_with_two_workers, sustain};
    let tmp = tempdir();
    let (lab, db_id) = lab_with_two_workers(&tmp.path().join("data"));
    let s = lab.s();
    s.post(
        "/v2/account/contact",
        &lab.fx.account_key,
        json!({"email": EMAIL}),
    );
    let b = Browser::open(&shots(), 1280, 900);
    login(&b, s, EMAIL, &lab.fx.account_key);
    b.until_contains("main h1", "Tenants");
    go(&b, "#/tenants/shop/dbs/app");
    b.until_contains("#db-state", "running");
    b.until_contains("#db-scale-state", "STABLE");

    // A sustained load: a candidate is prepared on the other worker, with a deadline.
    sustain(&lab, "w1", &db_id, 0.95, 61.0);
    b.until_contains("#db-scale-state", "PREPARING_CANDIDATE");
    b.until_contains("#db-profile", "c0.25 → c0.5");
    b.until_contains("#autoscaler", "c0.5 on w2, term 2");
    b.until_text("#autoscaler [data-deadline]", "a countdown", |t| {
        t.starts_with("(in ") || t.ends_with(" ago)")
    });
    b.screenshot("handoff-preparing");

    // Prepared: the cutover, shown as the normal phase it is.
    assert!(lab.report("w2", &db_id, 2, "prepared"));
    b.until_contains("#db-scale-state", "CUTOVER");
    b.until_contains("#autoscaler", "waiting for the cutover");
    b.until_contains("#autoscaler", "normal, short phase");
    b.screenshot("handoff-cutover");
    assert!(lab.report("w2", &db_id, 2, "promoted"));
    b.until_contains("#db-scale-state", "STABLE");
    b.until_contains("#db-worker", "w2");
    b.until_contains("#db-profile", "c0.5");

    // Still hot after the cooldown: the next handoff fails, and the page says why.
    let mut tries = 0;
    while lab.describe("app")["scale_state"] != "PREPARING_CANDIDATE" {
        tries += 1;
        assert!(tries < 30, "no second handoff: {}", lab.describe("app"));
        sustain(&lab, "w2", &db_id, 0.95, 50.0);
    }
    let term = lab.describe("app")["candidate_writer_term"]
        .as_u64()
        .unwrap();
    let candidate = lab.describe("app")["candidate_worker_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lab.report(&candidate, &db_id, term, "failed"));
    b.until_contains("#db-scale-state", "FAILED");
    b.until_contains("#db-scale-failure", "disk full");
    b.until_contains("#autoscaler", "previous writer still serves");
    b.screenshot("handoff-failed");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_person_restores_a_database_to_a_point_in_time_from_the_console() {
    use crate::storage::{backed_up, Platform};
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let s = &p.fx.server;
    s.post(
        "/v2/account/contact",
        &p.fx.account_key,
        json!({"email": EMAIL}),
    );
    let _w1 = Worker::postgres(s, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE orders AS SELECT i FROM generate_series(1, 1000) i")
        .unwrap();
    let d = p.until("app", 60, backed_up);
    // The point picked on the page (to the second): after the rows and the first backup,
    // before the table is dropped.
    let clock = |s: &mut postgres::Client| -> String {
        s.query_one(
            "SELECT to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let start = d["history_start_at"].as_str().unwrap()[..19].to_owned();
    let mut point = clock(&mut session);
    while point <= start {
        std::thread::sleep(std::time::Duration::from_millis(100));
        point = clock(&mut session);
    }
    while clock(&mut session) <= point {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    session.batch_execute("DROP TABLE orders").unwrap();

    let b = Browser::open(&shots(), 1280, 1100);
    login(&b, s, EMAIL, &p.fx.account_key);
    b.until_contains("main h1", "Tenants");
    go(&b, "#/tenants/shop/dbs/app");
    b.until_contains("#db-state", "running");
    let size = b.until_text("#db-storage-bytes", "a size", |t| t.contains("iB"));
    assert_ne!(size, "0 B");
    b.until_contains("#db-history", " to ");
    assert!(b.text("#db-last-backup").is_some_and(|t| t != "—"));
    // Every state the page shows from now on.
    b.js(
        "window.spg99States = [];
         new MutationObserver(() => {
           const e = document.querySelector('#db-state');
           const t = e && e.textContent;
           if (t && window.spg99States[window.spg99States.length - 1] !== t) window.spg99States.push(t);
         }).observe(document.body, { childList: true, subtree: true, characterData: true });
         return null;",
        vec![],
    );

    // The point typed in, the restore confirmed by typing the database's name.
    b.js(
        "const e = document.querySelector('#restore-at'); e.value = arguments[0];
         e.dispatchEvent(new Event('input')); return null;",
        vec![json!(point)],
    );
    b.click("#restore-db");
    b.until_contains("#dialog-title", &format!("Restore app to {point}Z?"));
    assert_eq!(
        b.js(
            "return document.querySelector('#dialog-confirm').disabled;",
            vec![]
        ),
        json!(true),
        "confirmed before the name was typed"
    );
    b.fill("#dialog-typed", "app");
    b.screenshot("restore-dialog");
    b.click("#dialog-confirm");
    b.until_contains("#db-restore", "app_before_restore_1");
    b.screenshot("restoring");
    // The open session ends; the next connection sees the table again.
    let began = std::time::Instant::now();
    while session.batch_execute("SELECT 1").is_ok() {
        assert!(began.elapsed().as_secs() < 30, "the old session goes on");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(p.sql("app", "SELECT count(*) FROM orders"), "1000");
    b.until_contains("#db-last-restore", "app_before_restore_1");
    b.until_contains("#db-state", "running");
    let states = b.js("return window.spg99States;", vec![]);
    assert!(
        states.as_array().unwrap().iter().any(|s| s == "restoring"),
        "{states}"
    );
    b.screenshot("restored");
    // The kept copy is a link to the database that holds the state from before.
    b.click("#db-last-restore a.kept-db");
    b.until_contains("main h1", "app_before_restore_1");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_person_branches_a_database_sees_the_tree_and_resets_the_branch_from_the_console() {
    use crate::storage::{backed_up, Platform};
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let s = &p.fx.server;
    s.post(
        "/v2/account/contact",
        &p.fx.account_key,
        json!({"email": EMAIL}),
    );
    let _w1 = Worker::postgres(s, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    p.sql(
        "app",
        "CREATE TABLE orders AS SELECT i FROM generate_series(1, 1000) i",
    );
    p.until("app", 60, backed_up);

    let b = Browser::open(&shots(), 1280, 1400);
    login(&b, s, EMAIL, &p.fx.account_key);
    b.until_contains("main h1", "Tenants");
    go(&b, "#/tenants/shop/dbs/app");
    b.until_contains("#db-state", "running");
    b.until_contains("#db-branches", "none");

    // A branch of now: the page moves to it, which serves the parent's rows.
    b.fill("#branch-name", "dev");
    b.click("#branch-db");
    b.until_contains("main h1", "dev");
    b.until_contains("#db-parent", "app");
    b.until_contains("#db-state", "running");
    b.screenshot("branch");
    assert_eq!(p.sql("dev", "SELECT count(*) FROM orders"), "1000");

    // The tenant's databases as a tree: the branch under its parent.
    go(&b, "#/tenants/shop");
    b.until_contains("tr[data-db=\"dev\"]", "branch at");
    let order = b.js(
        "return [...document.querySelectorAll('tr[data-db]')].map((r) => r.dataset.db + ':' + r.dataset.depth);",
        vec![],
    );
    assert_eq!(order, json!(["app:0", "dev:1"]), "{order}");
    b.screenshot("branch-tree");

    // A migration on the branch, compared with its parent on the page.
    p.sql("dev", "ALTER TABLE orders ADD COLUMN note text");
    go(&b, "#/tenants/shop/dbs/dev");
    b.click("#schema-diff");
    b.until_contains("#schema-diff-out", "+    note text");
    b.screenshot("schema-diff");

    // The parent changes; the branch is reset to it, confirmed by typing its name.
    p.sql("app", "INSERT INTO orders VALUES (1001)");
    p.sql("dev", "INSERT INTO orders VALUES (-1)");
    go(&b, "#/tenants/shop/dbs/dev");
    b.until_contains("#reset-branch", "Reset to app");
    b.click("#reset-branch");
    b.until_contains("#dialog-title", "Reset dev to app?");
    b.fill("#dialog-typed", "dev");
    b.click("#dialog-confirm");
    b.until_contains("#db-last-restore", "dev_before_reset_1");
    b.until_contains("#db-state", "running");
    assert_eq!(p.sql("dev", "SELECT count(*) FROM orders"), "1001");
    b.click("#schema-diff");
    b.until_contains("#schema-diff-out", "The same schema as app.");
    assert_eq!(
        p.sql(
            "dev_before_reset_1",
            "SELECT count(*) FROM orders WHERE i = -1"
        ),
        "1"
    );
    go(&b, "#/tenants/shop/dbs/app");
    b.until_contains("#db-branches", "dev");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_person_makes_a_database_highly_available_and_watches_it_fail_over_in_the_console() {
    use crate::storage::{destroy, Platform};
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let s = &p.fx.server;
    s.post(
        "/v2/account/contact",
        &p.fx.account_key,
        json!({"email": EMAIL}),
    );
    let mut workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|id| Worker::postgres(s, id, &tmp.path().join(id)))
        .collect();

    let b = Browser::open(&shots(), 1280, 1500);
    login(&b, s, EMAIL, &p.fx.account_key);
    b.until_contains("main h1", "Tenants");
    // Created with high availability from the tenant's page.
    go(&b, "#/tenants/shop");
    b.fill("#db-name", "orders");
    b.click("#db-ha");
    b.click("#create-db");
    b.until_contains("tr[data-db=\"orders\"]", "orders");
    p.sql(
        "orders",
        "CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i",
    );
    go(&b, "#/tenants/shop/dbs/orders");
    mark(&b);
    // Built, streaming, synchronous: shown live.
    b.until_contains("#db-standby", "sync");
    b.until_text("#db-ha-protected", "protected", |t| {
        t.starts_with("protected")
    });
    let d = p.describe("orders");
    let (writer, standby) = (
        d["worker_id"].as_str().unwrap().to_owned(),
        d["standby_worker_id"].as_str().unwrap().to_owned(),
    );
    b.until_contains("#db-ha-writer", &writer);
    b.until_contains("#db-standby", &standby);
    b.screenshot("ha-protected");

    // The writer's worker lost: the standby serves, one failover, and no third worker to
    // build a new standby on.
    let i = workers.iter().position(|w| w.id == writer).unwrap();
    destroy(&mut workers[i]);
    b.until_contains("#db-failovers", "1");
    b.until_contains("#db-ha-writer", &standby);
    b.until_contains("#db-ha-protected", "no other live worker has room");
    assert_not_reloaded(&b);
    b.screenshot("ha-failed-over");
    assert_eq!(p.sql("orders", "SELECT count(*) FROM t"), "100");

    // Turned off, confirmed.
    b.click("#toggle-ha");
    b.until_contains("#dialog-title", "Turn high availability off for orders?");
    b.click("#dialog-confirm");
    b.until_contains("#db-ha-protected", "off");
    b.until_contains("#toggle-ha", "Turn high availability on");
    assert_eq!(p.describe("orders")["ha"], false);

    // The failover on the audit timeline.
    go(&b, "#/events");
    b.until_contains(
        "#timeline li[data-type=\"db.failover_started\"]",
        "db.failover_started",
    );
    b.until_contains("#timeline li[data-type=\"db.promoted\"]", "db.promoted");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "{errors:#?}");
}
