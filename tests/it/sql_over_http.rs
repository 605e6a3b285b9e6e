//! The Gateway's HTTP front door: SQL over HTTP (`POST /sql`) and PostgreSQL over WebSockets,
//! through the Neon serverless driver itself (tests/drivers/neon_driver.js, npm
//! `@neondatabase/serverless` 1.2.0 with `ws`), raw HTTPS requests for every header, limit
//! and error, and WebSockets no driver opens (tests/drivers/ws_raw.js). `spg99 serve` on its
//! embedded default with a local PostgreSQL worker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{describe, until, Tenant};
use crate::helpers::{tempdir, Fixture, Start};
use crate::lab::SERVICE_TOKEN;
use crate::pooler::{counter, driver, metrics, report, start_with};

/// The Gateway's self-signed certificate, which clients trust.
fn ca(data: &Path) -> std::path::PathBuf {
    data.join("gateway-tls/gateway.crt")
}

/// Node with the Gateway's certificate trusted, running `script` with `args`: its report.
fn node(data: &Path, script: &str, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(driver(script))
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", ca(data))
        .env("NODE_PATH", driver("node_modules"))
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report(&stdout)
}

/// An HTTPS client that trusts the Gateway's certificate.
#[derive(Clone)]
pub(crate) struct Https {
    agent: ureq::Agent,
    url: String,
}

/// An answer: status, headers (names in lower case) and JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The answer of a query that succeeded.
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        self.body
    }

    /// The SQLSTATE of an error answer with `status`.
    fn error(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        self.body["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{self:?}"))
    }
}

impl Https {
    pub fn new(fx: &Fixture, data: &Path) -> Https {
        let builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(90));
        Https {
            agent: spg99_wire::client::agent(builder, Some(&ca(data))).unwrap(),
            url: format!("https://{}", fx.server.http.as_deref().unwrap()),
        }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut req = self.agent.request(method, &format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = resp.header(&n).unwrap_or_default().to_owned();
                (n.to_ascii_lowercase(), v)
            })
            .collect();
        let text = resp.into_string().unwrap();
        let body = match text.is_empty() {
            true => Value::Null,
            false => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `POST /sql` with the connection string `dsn`, `headers` and `body`.
    pub fn sql(&self, dsn: &str, headers: &[(&str, &str)], body: Value) -> Answer {
        let mut all = vec![("Neon-Connection-String", dsn)];
        all.extend_from_slice(headers);
        self.call("POST", "/sql", &all, body.to_string().as_bytes())
    }
}

/// A control plane with its Gateway and no worker, with `extra` settings.
fn without_worker(data: &Path, extra: &[(&str, &str)]) -> Fixture {
    let mut s = Start::new(data)
        .gateway()
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN);
    for (k, v) in extra {
        s = s.env(k, *v);
    }
    Fixture::with_server(s.spawn())
}

#[test]
fn the_neon_serverless_driver_works_against_spg99_with_two_settings() {
    let (tmp, fx, shop) = start_with(&[]);
    let data = tmp.path().join("data");
    // The credentials say where: the two settings the driver needs (and `ws` on Node).
    let creds = fx
        .server
        .get("/v2/tenants/shop/credentials", &fx.account_key);
    assert_eq!(creds.status, 200, "{creds:?}");
    let http = fx.server.http.as_deref().unwrap();
    assert_eq!(creds.body["http_sql_url"], format!("https://{http}/sql"));
    assert_eq!(creds.body["websocket_url"], format!("wss://{http}/v2"));

    let said = node(
        &data,
        "neon_driver.js",
        &[
            &shop.dsn("app"),
            creds.body["http_sql_url"].as_str().unwrap(),
            creds.body["websocket_url"].as_str().unwrap(),
            &shop.pooled_dsn("app"),
        ],
    );
    for step in [
        "http_types",
        "http_transaction",
        "http_errors",
        "websocket_pool",
        "websocket_client",
        "websocket_wrong_password",
        "websocket_pooled",
    ] {
        assert_eq!(said[step], true, "{step}: {said}");
    }

    // What the Gateway counted: answers, rows, and every socket closed again.
    let m = metrics(&fx);
    let ok = counter(&m, "spg99_gateway_http_requests_total{outcome=\"ok\"}");
    let errors = counter(
        &m,
        "spg99_gateway_http_requests_total{outcome=\"query_error\"}",
    );
    assert_eq!((ok, errors), (7, 3), "the driver's requests over HTTP");
    assert!(counter(&m, "spg99_gateway_http_rows_total") >= 5);
    let began = Instant::now();
    while !metrics(&fx).contains("spg99_gateway_websockets_open 0\n") {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{}",
            metrics(&fx)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sql_over_http_answers_as_neon_does_and_refuses_clearly() {
    let (tmp, fx, shop) = start_with(&[
        ("SPG99_HTTP_STATEMENT_TIMEOUT", "2"),
        ("SPG99_HTTP_MAX_RESPONSE_BYTES", "200000"),
        ("SPG99_HTTP_MAX_REQUEST_BYTES", "1000000"),
        ("SPG99_GATEWAY_HANDSHAKE_TIMEOUT", "2"),
    ]);
    let data = tmp.path().join("data");
    let h = Https::new(&fx, &data);
    let dsn = shop.dsn("app");

    // A stopped database is started by its first request: a slower answer, not an error.
    assert_eq!(describe(&fx, "shop", "app")["state"], "stopped");
    let first = h.sql(&dsn, &[], json!({"query": "SELECT 1 AS one"})).ok();
    assert_eq!(first["rows"], json!([{"one": 1}]));
    assert_eq!(describe(&fx, "shop", "app")["state"], "running");

    // Values typed as JSON, or raw text and arrays when asked.
    let q = json!({
        "query": "SELECT $1::int AS i, $2::int8 AS big, $3::jsonb AS doc, $4::text[] AS tags, \
                  $5::bool AS b, 'NaN'::float8 AS nan, 2.5::float8 AS f, NULL::text AS nothing, \
                  $6::numeric AS price",
        "params": [7, "9007199254740993", {"a": [1, null]}, ["x", "y,z"], true, "12.50"]
    });
    let typed = h.sql(&dsn, &[], q.clone()).ok();
    assert_eq!(
        typed["rows"][0],
        json!({"i": 7, "big": "9007199254740993", "doc": {"a": [1, null]}, "tags": ["x", "y,z"],
               "b": true, "nan": "NaN", "f": 2.5, "nothing": null, "price": "12.50"})
    );
    assert_eq!(typed["command"], "SELECT");
    assert_eq!(typed["rowCount"], 1);
    assert_eq!(typed["rowAsArray"], false);
    assert_eq!(typed["fields"][0]["name"], "i");
    assert_eq!(typed["fields"][0]["dataTypeID"], 23);
    assert_eq!(typed["fields"][1]["dataTypeID"], 20);
    let raw = h
        .sql(
            &dsn,
            &[
                ("Neon-Raw-Text-Output", "true"),
                ("Neon-Array-Mode", "true"),
            ],
            q.clone(),
        )
        .ok();
    assert_eq!(raw["rowAsArray"], true);
    assert_eq!(raw["rows"][0][0], "7");
    assert_eq!(raw["rows"][0][3], "{x,\"y,z\"}");
    assert_eq!(raw["rows"][0][4], "t");
    // A flag is on only when it is exactly `true`; a query's own arrayMode wins.
    let not_on = h.sql(&dsn, &[("Neon-Array-Mode", "yes")], q).ok();
    assert_eq!(not_on["rowAsArray"], false);
    let own = h
        .sql(
            &dsn,
            &[],
            json!({"query": "SELECT 1 AS a", "arrayMode": true}),
        )
        .ok();
    assert_eq!(own["rows"], json!([[1]]));

    // A batch: one transaction, with the isolation, read-only and deferrable asked (and said
    // back); a failing statement rolls back the whole batch.
    let made = h
        .sql(
            &dsn,
            &[],
            json!({"queries": [
                {"query": "CREATE TABLE t (id int PRIMARY KEY, v text)"},
                {"query": "INSERT INTO t VALUES ($1, $2), ($3, $4)", "params": [1, "a", 2, "b"]},
                {"query": "SELECT id, v FROM t ORDER BY id", "arrayMode": true}
            ]}),
        )
        .ok();
    let results = made["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{made}");
    assert_eq!(results[1]["command"], "INSERT");
    assert_eq!(results[1]["rowCount"], 2);
    assert_eq!(results[2]["rows"], json!([[1, "a"], [2, "b"]]));
    let settings = h.sql(
        &dsn,
        &[
            ("Neon-Batch-Isolation-Level", "Serializable"),
            ("Neon-Batch-Read-Only", "true"),
            ("Neon-Batch-Deferrable", "true"),
        ],
        json!({"queries": [
            {"query": "SELECT current_setting('transaction_isolation') AS iso, \
                       current_setting('transaction_read_only') AS ro, \
                       current_setting('transaction_deferrable') AS d"}
        ]}),
    );
    assert_eq!(
        settings.header("neon-batch-isolation-level"),
        Some("Serializable")
    );
    assert_eq!(settings.header("neon-batch-read-only"), Some("true"));
    assert_eq!(settings.header("neon-batch-deferrable"), Some("true"));
    assert_eq!(
        settings.ok()["results"][0]["rows"][0],
        json!({"iso": "serializable", "ro": "on", "d": "on"})
    );
    let failed = h.sql(
        &dsn,
        &[],
        json!({"queries": [
            {"query": "INSERT INTO t VALUES (3, 'c')"},
            {"query": "INSERT INTO t VALUES (1, 'again')"}
        ]}),
    );
    assert_eq!(failed.error(400), "23505");
    assert_eq!(failed.body["constraint"], "t_pkey");
    assert_eq!(failed.body["table"], "t");
    let count = h.sql(
        &dsn,
        &[],
        json!({"query": "SELECT count(*)::int AS n FROM t"}),
    );
    assert_eq!(
        count.ok()["rows"][0]["n"],
        2,
        "the failed batch left nothing"
    );
    let bad_level = h.sql(
        &dsn,
        &[("Neon-Batch-Isolation-Level", "Chaos")],
        json!({"queries": []}),
    );
    assert_eq!(bad_level.error(400), "22023");

    // PostgreSQL's errors with their fields; the Gateway's own with a SQLSTATE too.
    let syntax = h.sql(&dsn, &[], json!({"query": "SELEC 1"}));
    assert_eq!(syntax.error(400), "42601");
    assert_eq!(syntax.body["position"], "1");
    let failures = counter(&metrics(&fx), "spg99_gateway_auth_failures_total");
    let wrong = dsn.replace(&format!(":{}@", shop.password), ":not-the-password@");
    assert_eq!(
        h.sql(&wrong, &[], json!({"query": "SELECT 1"})).error(400),
        "28P01"
    );
    assert_eq!(
        counter(&metrics(&fx), "spg99_gateway_auth_failures_total"),
        failures + 1,
        "a wrong password over HTTP counts as one"
    );
    let other_db = shop.dsn("nope");
    assert_eq!(
        h.sql(&other_db, &[], json!({"query": "SELECT 1"}))
            .error(400),
        "3D000"
    );
    // Another tenant's database is not found with this tenant's credentials, and this
    // tenant's password is no other tenant's.
    let other = Tenant::create(&fx, "other");
    fx.server.create_db(&fx.account_key, "other", "theirs");
    let theirs = shop.dsn("theirs");
    let r = h.sql(&theirs, &[], json!({"query": "SELECT 1"}));
    assert_eq!(r.error(400), "3D000");
    let crossed = other.dsn("theirs").replace(
        &format!(":{}@", other.password),
        &format!(":{}@", shop.password),
    );
    let r = h.sql(&crossed, &[], json!({"query": "SELECT 1"}));
    assert_eq!(r.error(400), "28P01");
    let other_host = dsn.replace(
        "@127.0.0.1:",
        "@ep-cool-darkness-123456.us-east-2.aws.neon.tech:",
    );
    let refused = h.sql(&other_host, &[], json!({"query": "SELECT 1"}));
    assert_eq!(refused.error(400), "08001");
    assert!(refused.body["message"]
        .as_str()
        .unwrap()
        .contains("ep-cool-darkness"));
    let no_dsn = h.call("POST", "/sql", &[], br#"{"query": "SELECT 1"}"#);
    assert_eq!(no_dsn.error(400), "08P01");
    let not_json = h.call(
        "POST",
        "/sql",
        &[("Neon-Connection-String", &dsn)],
        b"{\"query\": ",
    );
    assert_eq!(not_json.error(400), "08P01");
    let no_query = h.sql(&dsn, &[], json!({"sql": "SELECT 1"}));
    assert_eq!(no_query.error(400), "08P01");

    // Limits: the statement timeout (the query is cancelled, the backend serves on), the
    // response size, the request size.
    let slow = h.sql(&dsn, &[], json!({"query": "SELECT pg_sleep(60)"}));
    assert_eq!(slow.error(400), "57014");
    assert!(slow.body["message"]
        .as_str()
        .unwrap()
        .contains("statement timeout"));
    let big = h.sql(
        &dsn,
        &[],
        json!({"query": "SELECT repeat('x', 1000) FROM generate_series(1, 1000)"}),
    );
    assert_eq!(big.error(400), "54000");
    let huge = format!(
        r#"{{"query": "SELECT $1::text", "params": ["{}"]}}"#,
        "y".repeat(1_100_000)
    );
    let over = h.call(
        "POST",
        "/sql",
        &[("Neon-Connection-String", &dsn)],
        huge.as_bytes(),
    );
    assert_eq!(over.error(413), "54000");
    let after = h.sql(&dsn, &[], json!({"query": "SELECT 2 AS two"})).ok();
    assert_eq!(after["rows"][0]["two"], 2);
    // A backend that ends under a request (terminated, as a writer shutting down terminates
    // them): the connection is lost, a retry is the client's, and the next request is served.
    let q = json!({"query": "SELECT pg_terminate_backend(pg_backend_pid())"});
    let ended = h.sql(&dsn, &[], q);
    assert_eq!(ended.error(503), "08006");
    let after = h.sql(&dsn, &[], json!({"query": "SELECT 3 AS three"})).ok();
    assert_eq!(after["rows"][0]["three"], 3);

    // A request's session state does not reach the next request's.
    h.sql(&dsn, &[], json!({"query": "SET search_path TO nowhere"}))
        .ok();
    let q = json!({"query": "SELECT set_config('search_path', 'elsewhere', false)"});
    h.sql(&dsn, &[], q).ok();
    for _ in 0..4 {
        let path = h.sql(&dsn, &[], json!({"query": "SHOW search_path"})).ok();
        assert_eq!(path["rows"][0]["search_path"], "\"$user\", public");
    }

    // CORS: a browser's preflight, and the header on every answer.
    let pre = h.call("OPTIONS", "/sql", &[], b"");
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    let allowed = pre
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "neon-connection-string",
        "neon-array-mode",
        "neon-batch-isolation-level",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(slow.header("access-control-allow-origin"), Some("*"));
    assert_eq!(h.call("GET", "/sql", &[], b"").error(405), "08P01");
    assert_eq!(h.call("GET", "/elsewhere", &[], b"").error(404), "08P01");

    // WebSockets that no driver opens are closed: garbage, a text frame, silence, a startup
    // message with no password after it (the handshake timeout, 2 s here).
    let ws = format!("wss://{}/v2", fx.server.http.as_deref().unwrap());
    let raw = node(
        &data,
        "ws_raw.js",
        &[&ws, "garbage", "text", "silent", "no-password"],
    );
    for mode in ["garbage", "text", "silent", "no-password"] {
        let how = raw[mode]["how"].as_str().unwrap();
        assert!(how.starts_with("closed"), "{mode}: {raw}");
    }
    assert_eq!(
        raw["no-password"]["said"],
        json!(["R"]),
        "asked for the password: {raw}"
    );
    let m = metrics(&fx);
    for outcome in [
        "ok",
        "query_error",
        "bad_request",
        "unauthorized",
        "too_large",
        "timeout",
    ] {
        let name = format!("spg99_gateway_http_requests_total{{outcome=\"{outcome}\"}}");
        assert!(counter(&m, &name) >= 1, "{name}");
    }
    until(&fx, "shop", "app", 30, |d| d["state"] == "running");
}

#[test]
fn a_database_that_cannot_start_in_time_is_a_503_with_57p03() {
    // No worker at all: the database cannot start, and the Gateway waits its connect timeout.
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let fx = without_worker(&data, &[("SPG99_GATEWAY_CONNECT_TIMEOUT", "2")]);
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let h = Https::new(&fx, &data);
    let r = h.sql(&shop.dsn("app"), &[], json!({"query": "SELECT 1"}));
    assert_eq!(r.error(503), "57P03");
    assert!(r.body["message"].as_str().unwrap().contains("app"), "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn the_http_front_door_s_rates_and_sockets_are_limited() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let fx = without_worker(
        &data,
        &[
            ("SPG99_HTTP_REQUESTS_PER_ADDRESS", "5"),
            ("SPG99_HTTP_MAX_WEBSOCKETS", "1"),
        ],
    );
    let h = Https::new(&fx, &data);
    // A second socket while one is open: refused with 503 (the upgrades count two requests).
    let ws = format!("wss://{}/v2", fx.server.http.as_deref().unwrap());
    let raw = node(&data, "ws_raw.js", &[&ws, "over-limit"]);
    assert_eq!(raw["over-limit"]["how"], "http 503", "{raw}");
    // Three more requests, then 429 with Retry-After for the rest of the minute.
    for _ in 0..3 {
        assert_eq!(h.call("POST", "/sql", &[], b"{}").error(400), "08P01");
    }
    let limited = h.call("POST", "/sql", &[], b"{}");
    assert_eq!(limited.error(429), "53300");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{limited:?}");
}
