//! HTTP semantics every client may rely on, and the edges a fuzzer found: methods (`Allow`,
//! `HEAD`), content types, what the HTTP parser refuses, slow bodies, resume points past the
//! head, times that RFC 3339 can write, and the operator routes' headers and logs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{tempdir, Events, Fixture, Server, Start, LOG_REQUESTS, ROOT_TOKEN};

/// One raw HTTP exchange: what the server wrote back until it closed or went quiet.
fn raw(server: &Server, request: &[u8]) -> String {
    let addr = server.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status, lower-cased headers and body of a raw answer.
fn parse(answer: &str) -> (u16, Vec<(String, String)>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_method_a_path_does_not_take_gets_405_with_allow_and_head_works_like_get() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let auth = format!("Authorization: Bearer {ROOT_TOKEN}\r\n");
    for (method, path, allow) in [
        ("PUT", "/v2/tenants", "GET, HEAD, POST"),
        ("PATCH", "/v2/accounts", "GET, HEAD, POST"),
        ("DELETE", "/v2/sizes", "GET, HEAD"),
        ("HEAD", "/v2/api-keys/rotate", "POST"),
        ("POST", "/v2/tenants/shop/dbs/main", "GET, HEAD, DELETE"),
        ("GET", "/internal/v1/checkout", "POST"),
    ] {
        let answer = raw(
            &s,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let (status, headers, body) = parse(&answer);
        assert_eq!(status, 405, "{method} {path}: {answer}");
        assert_eq!(header(&headers, "allow"), Some(allow), "{method} {path}");
        if method != "HEAD" {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "method_not_allowed");
        }
    }

    // HEAD: the GET answer's status and headers, no body.
    for path in ["/v2/sizes", "/v2/tenants", "/healthz", "/v2/admin/state"] {
        let get = raw(
            &s,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        );
        let head = raw(
            &s,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        let (gs, gh, gb) = parse(&get);
        let (hs, hh, hb) = parse(&head);
        assert_eq!((hs, gs), (200, 200), "{path}: {head}");
        assert!(hb.is_empty(), "HEAD {path} sent a body: {hb}");
        assert_eq!(
            header(&hh, "content-length"),
            Some(gb.len().to_string().as_str()),
            "{path}"
        );
        assert_eq!(header(&hh, "content-type"), header(&gh, "content-type"));
        if path != "/healthz" {
            assert!(header(&hh, "x-resource-version").is_some(), "{path}");
        }
    }
    // HEAD of the event stream answers at once, without opening one.
    let head = raw(
        &s,
        format!("HEAD /v2/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
    );
    let (status, headers, body) = parse(&head);
    assert_eq!(
        (status, header(&headers, "content-type")),
        (200, Some("text/event-stream"))
    );
    assert!(header(&headers, "x-resource-version").is_some());
    assert!(body.is_empty());
    let unauthenticated = parse(&raw(
        &s,
        b"HEAD /v2/tenants HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(unauthenticated.0, 401);
    assert!(unauthenticated.2.is_empty());
}

#[test]
fn only_json_itself_is_read_as_json() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let (_, before) = s.fingerprint();
    let post = |ct: &str| {
        let body = r#"{"name":"acme"}"#;
        let answer = raw(
            &s,
            format!(
                "POST /v2/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_TOKEN}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let (status, _, body) = parse(&answer);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
    };
    for refused in [
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/vnd.api+json",
        "application/json; charset=latin1",
        "application/json; charset=utf-16",
        "application/json; boundary=x",
        "text/json",
        "application/jsonx",
    ] {
        assert_eq!(
            post(refused),
            (415, "unsupported_media_type".to_owned()),
            "{refused}"
        );
    }
    assert_eq!(s.fingerprint().1, before, "a refused body wrote nothing");
    for accepted in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
    ] {
        assert_eq!(post(accepted).0, 201, "{accepted}");
    }
}

#[test]
fn what_the_http_parser_refuses_gets_the_error_body_and_no_error_line_in_the_log() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data"))
        .env("RUST_LOG", LOG_REQUESTS)
        .spawn();
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let cases: Vec<Vec<u8>> = vec![
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
        b"GET /v2/\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        long_path.into_bytes(),
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
        // After a good request on the same connection, the refusal follows its answer.
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /\xff HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for request in &cases {
        for _ in 0..20 {
            let answer = raw(&s, request);
            let last = answer.rfind("HTTP/1.1 4").unwrap_or(0);
            let (status, headers, body) = parse(&answer[last..]);
            assert_eq!(status, 400, "{answer}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {answer}"));
            assert_eq!(v["error"]["code"], "malformed_request");
            assert_eq!(header(&headers, "content-type"), Some("application/json"));
            assert_eq!(
                header(&headers, "x-request-id"),
                v["error"]["request_id"].as_str(),
                "{answer}"
            );
        }
    }
    // A head that never completes is cut at 5 s, with the error body too.
    let slow = parse(&raw_slow(&s, b"GET /heal", Duration::from_secs(7)));
    assert_eq!(slow.0, 408);
    let v: Value = serde_json::from_str(&slow.2).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout");

    let log = s.log_as_of_now();
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "a client's bad requests reached the log at a high level:\n{log}"
    );
}

/// Sends `request` and waits up to `wait` for the answer, sending nothing more.
fn raw_slow(server: &Server, request: &[u8], wait: Duration) -> String {
    let addr = server.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_body_that_trickles_in_is_cut_off_and_its_connection_closed() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let (_, before) = s.fingerprint();
    let started = Instant::now();
    // Clients that announce a body and send one byte a second.
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                c.write_all(format!("POST /v2/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n").as_bytes()).unwrap();
                let mut answer = Vec::new();
                let mut buf = [0u8; 4096];
                for _ in 0..30 {
                    if c.write_all(b" ").is_err() {
                        break;
                    }
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                (String::from_utf8_lossy(&answer).into_owned(), Instant::now())
            })
        })
        .collect();
    for c in clients {
        let (answer, ended) = c.join().unwrap();
        let (status, headers, body) = parse(&answer);
        assert_eq!(status, 408, "{answer}");
        assert_eq!(header(&headers, "connection"), Some("close"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "body_timeout");
        let held = ended - started;
        assert!(
            held < Duration::from_secs(20),
            "a trickling body held its connection {held:?}"
        );
    }
    assert_eq!(s.fingerprint().1, before, "nothing was written");
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
}

#[test]
fn a_resume_point_past_the_head_is_refused_and_one_at_the_head_waits_for_what_comes() {
    let tmp = tempdir();
    let f = Fixture::new(&tmp.path().join("data"));
    let s = &f.server;
    let head = s.fingerprint().1;
    for (path, last_event_id) in [
        ("/v2/events".to_owned(), Some(u64::MAX)),
        (format!("/v2/events?since={}", u64::MAX), None),
        (format!("/v2/events?since={}", head + 1), None),
        ("/v2/events?since=0".to_owned(), Some(head + 1000)),
    ] {
        let refused = Events::open(s, &path, Some(ROOT_TOKEN), last_event_id)
            .err()
            .unwrap_or_else(|| panic!("{path} {last_event_id:?} opened a stream"));
        assert_eq!(
            (refused.status, refused.code()),
            (400, "since_beyond_head"),
            "{refused:?}"
        );
        assert!(refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("({head})")));
    }
    // At the head: nothing old, then exactly what comes next, and bookmarks never past it.
    let mut events = Events::open(
        s,
        &format!("/v2/events?since={head}"),
        Some(ROOT_TOKEN),
        None,
    )
    .unwrap();
    s.create_tenant(&f.account_key, "shop");
    let next = events.next_event().expect("the new event");
    assert_eq!(next.seq(), head + 1);
    assert_eq!(next.event, "tenant.created");
    for _ in 0..2 {
        if let Some(f) = events.next() {
            assert!(
                f.seq() <= s.fingerprint().1,
                "a bookmark past the head: {f:?}"
            );
        }
    }
}

#[test]
fn every_time_the_api_writes_is_rfc_3339() {
    let tmp = tempdir();
    let f = Fixture::new(&tmp.path().join("data"));
    let s = &f.server;
    let last = s.get("/v2/billing/summary?period=9999-11", &f.account_key);
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(last.body["period_end"], "9999-12-01T00:00:00.000000Z");
    for bad in ["9999-12", "10000-01", "0000-00", "1969-12"] {
        let r = s.get(&format!("/v2/billing/summary?period={bad}"), &f.account_key);
        assert_eq!((r.status, r.code()), (422, "invalid_value"), "{bad}");
        assert_eq!(r.body["error"]["field"], "period");
    }
    let key = s.post(
        &format!("/v2/accounts/{}/api-keys", f.account),
        ROOT_TOKEN,
        json!({"scope": "account", "expires_at": "9999-12-31T23:59:59.999999Z"}),
    );
    assert_eq!(key.status, 201, "{key:?}");
    assert_eq!(key.body["expires_at"], "9999-12-31T23:59:59.999999Z");
}

#[test]
fn operator_routes_carry_the_resource_version_and_time_travel_logs_no_warning() {
    let tmp = tempdir();
    let f = Fixture::with_server(
        Start::new(&tmp.path().join("data"))
            .env("RUST_LOG", LOG_REQUESTS)
            .spawn(),
    );
    let s = &f.server;
    let head = s.fingerprint().1;
    let verify = s.get("/v2/admin/verify", ROOT_TOKEN);
    assert_eq!(verify.status, 200);
    assert_eq!(
        verify.header("x-resource-version"),
        Some(head.to_string().as_str())
    );
    assert_eq!(verify.body["seq"], head);
    for at in ["1970-01-01T00:00:00Z", "1"] {
        for _ in 0..5 {
            let r = s.get(&format!("/v2/admin/state?at={at}"), ROOT_TOKEN);
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    let log = s.log_as_of_now();
    assert!(!log.contains("WARN"), "time travel warned:\n{log}");
}

#[test]
fn hundreds_of_slow_clients_do_not_stop_the_server_answering_others() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let open = |bytes: &[u8]| {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(bytes).unwrap();
        c
    };
    // 200 whose head never ends, 200 whose body stops after 10 of its 100 bytes.
    let heads: Vec<_> = (0..200)
        .map(|_| open(b"GET /v2/tenants HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    let body = format!("POST /v2/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": \"");
    let bodies: Vec<_> = (0..200).map(|_| open(body.as_bytes())).collect();

    // Meanwhile everybody else is served.
    for i in 0..20 {
        assert_eq!(s.get("/v2/tenants", ROOT_TOKEN).status, 200);
        s.create_account(&format!("served-{i}"));
    }

    // And every slow client is answered 408 and let go: no phase waits for ever.
    for (clients, code) in [(heads, "request_timeout"), (bodies, "body_timeout")] {
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answer = Vec::new();
            c.read_to_end(&mut answer)
                .expect("the server closes a slow client's connection");
            let answer = String::from_utf8_lossy(&answer);
            let (status, _, body) = parse(&answer);
            assert_eq!(status, 408, "{answer}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], code, "{answer}");
        }
    }
}
