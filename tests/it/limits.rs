//! Abuse limits on the HTTP API: failed authentications per address and per key id, requests
//! per key, stream tickets per key, open streams per key — 429 with `Retry-After` and a stable
//! code, and no effect on other clients. Other clients are other loopback addresses
//! (127.0.0.2, 127.0.0.3, ...), which the kernel routes to the same server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{tempdir, Fixture, Server, Start};

/// One request from the local address `from`; the status, `Retry-After` and the body.
fn from(
    from: [u8; 4],
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, Option<String>, Value) {
    let mut conn = connect(from, s);
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head[9..12].parse().unwrap();
    let retry_after = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .map(str::to_owned);
    (
        status,
        retry_after,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A connection to the server from the local address `from`.
fn connect(from: [u8; 4], s: &Server) -> TcpStream {
    let server: SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

fn limited(data: &std::path::Path, limits: &[(&'static str, &str)]) -> Fixture {
    let mut start = Start::new(data);
    for (k, v) in limits {
        start = start.env(k, *v);
    }
    Fixture::with_server(start.spawn())
}

const A: [u8; 4] = [127, 0, 0, 1];
const B: [u8; 4] = [127, 0, 0, 2];
const C: [u8; 4] = [127, 0, 0, 3];

#[test]
fn an_address_that_keeps_failing_to_authenticate_is_refused_and_no_other_is() {
    let tmp = tempdir();
    let fx = limited(
        &tmp.path().join("data"),
        &[("SPG99_LIMIT_AUTH_FAILURES_PER_ADDRESS", "5")],
    );
    let s = &fx.server;
    let wrong = "spg99_0123456789abcdef_000000000000000000000000000000000000000000000000";
    for _ in 0..5 {
        let (status, _, body) = from(B, s, "GET", "/v2/tenants", wrong);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_token"))
        );
    }
    // The sixth, and even a good token from that address, waits out the minute.
    let (status, retry, body) = from(B, s, "GET", "/v2/tenants", wrong);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_auth_failures"))
    );
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let (status, _, _) = from(B, s, "GET", "/v2/tenants", &fx.account_key);
    assert_eq!(status, 429);
    // Nobody else is affected.
    let (status, _, _) = from(C, s, "GET", "/v2/tenants", &fx.account_key);
    assert_eq!(status, 200);
    let (status, _, _) = from(A, s, "GET", "/v2/tenants", &fx.account_key);
    assert_eq!(status, 200);
}

#[test]
fn guessing_one_keys_secret_locks_out_strangers_but_not_the_keys_own_addresses() {
    let tmp = tempdir();
    let fx = limited(
        &tmp.path().join("data"),
        &[("SPG99_LIMIT_AUTH_FAILURES_PER_KEY", "3")],
    );
    let s = &fx.server;
    let key = &fx.account_key;
    // The key's owner works from A.
    assert_eq!(from(A, s, "GET", "/v2/api-keys/me", key).0, 200);
    // Someone at B guesses its secret.
    let (id, _) = key.rsplit_once('_').unwrap();
    let guess = format!("{id}_{}", "f".repeat(48));
    for _ in 0..3 {
        assert_eq!(from(B, s, "GET", "/v2/tenants", &guess).0, 401);
    }
    let (status, retry, body) = from(B, s, "GET", "/v2/tenants", &guess);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_auth_failures"))
    );
    assert!(retry.is_some());
    // Now even the right secret is not checked from an address the key was not used from...
    assert_eq!(from(C, s, "GET", "/v2/tenants", key).0, 429);
    // ...while the owner's address carries on, and other keys everywhere.
    assert_eq!(from(A, s, "GET", "/v2/tenants", key).0, 200);
    let other = s.issue_key(
        crate::helpers::ROOT_TOKEN,
        &fx.account,
        json!({"scope": "account"}),
    );
    assert_eq!(from(C, s, "GET", "/v2/tenants", &other).0, 200);
}

#[test]
fn one_key_is_limited_in_requests_tickets_and_open_streams() {
    let tmp = tempdir();
    let fx = limited(
        &tmp.path().join("data"),
        &[
            ("SPG99_LIMIT_REQUESTS_PER_KEY", "20"),
            ("SPG99_LIMIT_TICKETS_PER_KEY", "3"),
            ("SPG99_LIMIT_STREAMS_PER_KEY", "2"),
        ],
    );
    let s = &fx.server;
    let other = s.issue_key(
        crate::helpers::ROOT_TOKEN,
        &fx.account,
        json!({"scope": "account"}),
    );

    // Requests: a burst past 20 in a second meets 429 `rate_limited`; another key does not.
    std::thread::sleep(Duration::from_secs(1));
    let answers: Vec<_> = (0..40)
        .map(|_| from(A, s, "GET", "/v2/tenants", &fx.account_key))
        .collect();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(!limited.is_empty(), "40 requests in a burst all passed");
    assert!(limited
        .iter()
        .all(|a| a.2["error"]["code"] == "rate_limited" && a.1.is_some()));
    assert_eq!(from(A, s, "GET", "/v2/tenants", &other).0, 200);
    std::thread::sleep(Duration::from_secs(1));

    // Tickets: three a minute.
    for _ in 0..3 {
        assert_eq!(from(A, s, "POST", "/v2/events/tickets", &other).0, 201);
    }
    let (status, retry, body) = from(A, s, "POST", "/v2/events/tickets", &other);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_tickets"))
    );
    assert!(retry.is_some());

    // Streams: two open at once; a third waits until one is closed.
    let open = |token: &str| {
        let mut c = connect(A, s);
        write!(
            c,
            "GET /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        (String::from_utf8_lossy(&head[9..12]).into_owned(), c)
    };
    let (first, c1) = open(&fx.account_key);
    let (second, _c2) = open(&fx.account_key);
    assert_eq!((first.as_str(), second.as_str()), ("200", "200"));
    let (third, _) = open(&fx.account_key);
    assert_eq!(third, "429");
    assert_eq!(open(&other).0, "200", "another key's streams are its own");
    drop(c1);
    // The closed stream's slot comes back once the server notices (at its next frame).
    let began = Instant::now();
    loop {
        let (status, _c) = open(&fx.account_key);
        if status == "200" {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
