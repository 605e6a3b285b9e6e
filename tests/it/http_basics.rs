//! The HTTP contract every route shares: health, request ids, structured logs, error shapes,
//! bad input that changes nothing, and a prompt shutdown with connections open.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{tempdir, Start, ROOT_TOKEN};

#[test]
fn health_and_readiness_need_no_token() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let h = server.call("GET", "/healthz", None, None);
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
    let r = server.call("GET", "/readyz", None, None);
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ready")));
    assert_eq!(
        r.body["seq"], 2,
        "bootstrap key and service token are in the log"
    );
}

#[test]
fn request_ids_are_echoed_or_made_and_land_on_every_log_line() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .spawn();
    let resp = ureq::post(&server.url("/v2/accounts"))
        .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
        .set("X-Request-Id", "trace-me-42")
        .send_json(json!({"name": "traced"}))
        .unwrap();
    assert_eq!(resp.header("x-request-id"), Some("trace-me-42"));
    let made = server.call("GET", "/healthz", None, None);
    let id = made.header("x-request-id").expect("a generated id");
    assert!(id.len() >= 16);
    // Errors carry it in the body too.
    let err = server.call("GET", "/v2/admin/state", None, None);
    assert_eq!(
        err.body["error"]["request_id"],
        err.header("x-request-id").unwrap()
    );

    let logs = server.log_as_of_now();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let traced: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "trace-me-42")
        .collect();
    assert!(
        !traced.is_empty(),
        "no log line carries the request id:\n{logs}"
    );
    assert!(
        !logs.contains(ROOT_TOKEN.rsplit('_').next().unwrap()),
        "no secret in logs"
    );
}

#[test]
fn authentication_failures_have_distinct_codes() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let missing = server.call("GET", "/v2/admin/state", None, None);
    assert_eq!((missing.status, missing.code()), (401, "missing_token"));
    for bad in [
        "garbage",
        "spg99_00000000000000aa_cccccccccccccccccccccccccccccccccccccccccccccccc",
        "spg99_ffffffffffffffff_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    ] {
        let r = server.get("/v2/admin/state", bad);
        assert_eq!((r.status, r.code()), (401, "invalid_token"), "{bad}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let (_, before) = server.fingerprint();
    let post_raw = |ct: &str, body: &[u8]| match ureq::post(&server.url("/v2/accounts"))
        .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
        .set("Content-Type", ct)
        .send_bytes(body)
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            let v: serde_json::Value = r.into_json().unwrap();
            (
                status,
                v["error"]["code"].as_str().unwrap_or("").to_owned(),
                v,
            )
        }
        Err(e) => panic!("{e}"),
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            b"{\"name\": ".to_vec(),
            400,
            "malformed_json",
        ),
        ("application/json", b"[1,2".to_vec(), 400, "malformed_json"),
        (
            "application/json",
            b"{\"name\":\"a\"} trailing".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "application/json",
            br#"{"name":"a","admin":true}"#.to_vec(),
            400,
            "unknown_field",
        ),
        (
            "application/json",
            br#"{"name":17}"#.to_vec(),
            422,
            "invalid_value",
        ),
        ("application/json", br#"{}"#.to_vec(), 422, "invalid_value"),
        // An empty JSON body reads as `{}` (here: its name is missing).
        ("application/json", Vec::new(), 422, "invalid_value"),
        (
            "application/json",
            br#"{"name":"   "}"#.to_vec(),
            422,
            "invalid_value",
        ),
        (
            "application/json",
            br#"{"name":"a","email":"nope"}"#.to_vec(),
            422,
            "invalid_value",
        ),
        (
            "text/plain",
            br#"{"name":"a"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            vec![b' '; 100 * 1024],
            413,
            "body_too_large",
        ),
    ];
    for (ct, body, status, code) in cases {
        let (got, got_code, v) = post_raw(ct, &body);
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{ct} {:?}: {v}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let unknown = post_raw("application/json", br#"{"name":"a","admin":true}"#).2;
    assert_eq!(unknown["error"]["field"], "admin");
    let wrong = post_raw("application/json", br#"{"name":17}"#).2;
    assert_eq!(wrong["error"]["field"], "name");

    let r = server.get("/v2/accounts/not-a-uuid", ROOT_TOKEN);
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = server.call("GET", "/v2/no-such-route", Some(ROOT_TOKEN), None);
    assert_eq!((r.status, r.code()), (404, "route_not_found"));

    assert_eq!(
        server.fingerprint().1,
        before,
        "bad input wrote nothing to the log"
    );
    assert_eq!(server.call("GET", "/healthz", None, None).status, 200);
}

#[test]
fn shutdown_completes_promptly_with_connections_open() {
    let tmp = tempdir();
    let mut server = Start::new(&tmp.path().join("data")).spawn();
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Connections that started a request and never finished it.
    let held: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v2/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                .unwrap();
            s
        })
        .collect();
    // Connections are taken in the order they came: once a later one is answered, the held
    // ones are the server's.
    assert_eq!(server.call("GET", "/healthz", None, None).status, 200);
    let (status, took) = server.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    drop(held);
}

/// A private authority and a certificate it signed for localhost and 127.0.0.1, with its
/// key, made with openssl in `dir`: (authority, certificate, key).
fn certificate(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=spg99 test authority",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "api.key",
                "-out",
                "api.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        path("api.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "api.ext",
        "-out",
        "api.crt",
    ]);
    (path("ca.crt"), path("api.crt"), path("api.key"))
}

/// `curl` against `url` trusting `ca`: its exit status and what it printed.
fn curl(ca: &std::path::Path, url: &str, token: &str) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_api_is_served_over_tls_and_plain_http_only_on_loopback() {
    let tmp = tempdir();
    let (ca, cert, key) = certificate(tmp.path());
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_API_TLS_CERT", cert.display().to_string())
        .env("SPG99_API_TLS_KEY", key.display().to_string())
        .env("SPG99_SERVICE_TOKEN", crate::lab::SERVICE_TOKEN)
        .gateway()
        .compute("simulated")
        .spawn();
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    // The public and the internal API, over TLS, with the certificate checked.
    let (ok, out) = curl(&ca, &server.url("/v2/sizes"), ROOT_TOKEN);
    assert!(ok && out.contains("\"L1\""), "{out}");
    // The embedded worker reached the internal API (over its own loopback listener).
    let began = std::time::Instant::now();
    loop {
        let (ok, out) = curl(&ca, &server.url("/internal/v1/workers"), ROOT_TOKEN);
        assert!(ok, "{out}");
        if out.contains("\"local\"") {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no local worker: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A Gateway of its own reaches the internal API over TLS, trusting the certificate's
    // authority: it checks passwords against the control plane's roles. Without that trust
    // it cannot, and says so.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {ROOT_TOKEN}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name": "acme"}"#,
        ])
        .arg(server.url("/v2/accounts"))
        .output()
        .unwrap();
    let account: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let body = json!({"name": "shop", "account": account["account_id"]}).to_string();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {ROOT_TOKEN}")])
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg(server.url("/v2/tenants"))
        .output()
        .unwrap();
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let user = tenant["pg_user"].as_str().unwrap();
    let try_gateway = |extra: &[&str], dir: &str| {
        let gw = crate::lab::Gateway::start(&server, &tmp.path().join(dir), extra);
        let mut c = postgres::Config::new();
        let (host, port) = gw.addr.rsplit_once(':').unwrap();
        c.host(host)
            .port(port.parse().unwrap())
            .user(user)
            .password("not-it")
            .dbname("app")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let e = c.connect(crate::pgtls::Tls::new()).err().unwrap();
        e.as_db_error()
            .map(|d| d.code().code().to_owned())
            .unwrap_or_default()
    };
    let authority = ca.display().to_string();
    assert_eq!(
        try_gateway(&["--control-plane-ca", &authority], "gw1"),
        "28P01"
    );
    assert_eq!(
        try_gateway(&[], "gw2"),
        "57P03",
        "an untrusted control plane"
    );

    // Plain HTTP on the TLS port gets no answer.
    let plain = server.url("/v2/sizes").replace("https://", "http://");
    let (ok, out) = curl(&ca, &plain, ROOT_TOKEN);
    assert!(!ok || !out.contains("\"L1\""), "{out}");

    // Without TLS, a non-loopback address is refused, unless plain HTTP is asked for.
    let (status, stderr) = Start::new(&tmp.path().join("data2"))
        .listen("0.0.0.0:0")
        .run_to_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    let open = Start::new(&tmp.path().join("data3"))
        .listen("0.0.0.0:0")
        .env("SPG99_API_ALLOW_PLAINTEXT", "true")
        .spawn();
    assert!(open.base.starts_with("http://0.0.0.0:"), "{}", open.base);
}

/// A client that writes its whole body before it reads the answer, as Python's http.client
/// and requests do: a refused large body is read and discarded (a lingering close) so that
/// the client reads the 413 instead of meeting a reset.
#[test]
fn a_large_body_sent_whole_before_reading_gets_its_413() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let script = r#"
import http.client, json, sys
port, token = int(sys.argv[1]), sys.argv[2]
for mib in (2, 5, 20):
    body = b'{"name": "' + b'x' * (mib << 20) + b'"}'
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    c.request('POST', '/v2/accounts', body=body,
              headers={'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token})
    r = c.getresponse()
    print(mib, r.status, json.loads(r.read())['error']['code'])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &port, ROOT_TOKEN])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 413 body_too_large\n5 413 body_too_large\n20 413 body_too_large\n"
    );
    assert_eq!(server.call("GET", "/healthz", None, None).status, 200);
}

/// The lingering close is bounded: a client that goes on sending a refused body for ever is
/// cut off once the linger time is over.
#[test]
fn a_refused_body_that_keeps_coming_is_cut_off() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(
        format!(
            "POST /v2/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            1u64 << 40
        )
        .as_bytes(),
    )
    .unwrap();
    // The answer comes at once (the body is declared too large) ...
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("body_too_large\"") {
        let n = std::io::Read::read(&mut c, &mut buf).expect("the answer");
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // ... then what the client goes on sending is read and discarded for a while, not for ever.
    let started = std::time::Instant::now();
    let chunk = vec![b' '; 64 * 1024];
    while c.write_all(&chunk).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a refused body was read for a minute"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
