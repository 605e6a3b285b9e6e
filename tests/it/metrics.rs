//! `GET /metrics` on the control plane (with the embedded Gateway's and worker's), and on a
//! Gateway and a worker of their own: the text format parses, and the figures move with the
//! work done.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::{Server, Start, ROOT_TOKEN};
use crate::lab::SERVICE_TOKEN;

/// Every sample of an exposition, `name{labels}` → value; panics on a line that is not the
/// text format (OpenMetrics: `# HELP`, `# TYPE`, `# UNIT`, samples, and `# EOF` last).
fn parse(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no end marker: {text}");
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("EOF"), None, None) => {}
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "{line}"
                    );
                }
                (Some("HELP" | "UNIT"), Some(_), Some(_)) => {}
                _ => panic!("not a comment of the text format: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a value: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "a metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!v.contains('\n'), "{line}");
                }
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    assert!(!types.is_empty());
    samples
}

fn scrape(s: &Server) -> HashMap<String, f64> {
    let r = s.get("/metrics", SERVICE_TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    parse(r.body.as_str().unwrap())
}

fn at(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or(&0.0)
}

#[test]
fn the_control_plane_s_metrics_parse_and_move_with_the_work_done() {
    let tmp = crate::helpers::tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .gateway()
        .compute("postgres")
        .spawn();
    // Not for everyone: the service token or a global key.
    assert_eq!(server.get("/metrics", "-").status, 401);
    assert_eq!(server.get("/metrics", ROOT_TOKEN).status, 200);
    let before = scrape(&server);

    let fx = crate::helpers::Fixture::with_server(server);
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    assert_eq!(t.status, 201);
    assert_eq!(
        fx.server.create_db(&fx.account_key, "shop", "main").status,
        201
    );
    let dsn = t.body["dsn_template"]
        .as_str()
        .unwrap()
        .replace("<db-name>", "main");
    assert_eq!(crate::gateway::psql(&dsn, &["select 1"]).unwrap(), "1");
    let wrong = dsn.replace(t.body["pg_password"].as_str().unwrap(), "not-the-password");
    assert!(crate::gateway::psql(&wrong, &["select 1"]).is_err());
    // An event stream held open while scraping.
    let _stream = crate::helpers::Events::open(&fx.server, "/v2/events", Some(ROOT_TOKEN), None)
        .unwrap_or_else(|r| panic!("{r:?}"));

    // What is counted as it settles (a stream once it is open, a Gateway connection once it
    // ends, a heartbeat once it is sent) is waited for; then every figure is exact.
    let settled = |m: &HashMap<String, f64>| {
        let moved = |series: &str| at(m, series) - at(&before, series);
        at(m, "spg99_event_stream_subscribers") == 1.0
            && moved("spg99_gateway_connections_total") == 2.0
            && moved(r#"spg99_gateway_relayed_bytes_total{direction="database_to_client"}"#) > 0.0
            && moved(r#"spg99_worker_heartbeats_total{result="ok"}"#) >= 1.0
    };
    let began = std::time::Instant::now();
    let after = loop {
        let m = scrape(&fx.server);
        if settled(&m) {
            break m;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "never settled: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let moved = |series: &str| at(&after, series) - at(&before, series);
    assert_eq!(
        moved(r#"spg99_http_requests_total{method="POST",route="/v2/tenants",status="201"}"#),
        1.0
    );
    assert_eq!(
        moved(
            r#"spg99_http_requests_total{method="POST",route="/v2/tenants/{tenant}/dbs",status="201"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"spg99_log_events_appended_total{type="db.created"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"spg99_log_events_appended_total{type="db.started"}"#),
        1.0
    );
    assert!(moved("spg99_commit_duration_seconds_count") >= 5.0);
    assert!(moved("spg99_log_sync_duration_seconds_count") >= 3.0);
    assert_eq!(moved("spg99_cold_start_duration_seconds_count"), 1.0);
    assert_eq!(at(&after, r#"spg99_databases{state="running"}"#), 1.0);
    assert_eq!(at(&after, r#"spg99_databases{state="stopped"}"#), 0.0);
    assert_eq!(at(&after, "spg99_workers"), 1.0);
    assert_eq!(at(&after, "spg99_event_stream_subscribers"), 1.0);
    assert_eq!(at(&after, "spg99_replica_leading"), 1.0);
    // The embedded Gateway's and worker's, in the same scrape.
    assert_eq!(moved("spg99_gateway_connections_total"), 2.0);
    assert_eq!(moved("spg99_gateway_auth_failures_total"), 1.0);
    assert_eq!(
        moved(r#"spg99_gateway_refusals_total{sqlstate="28P01"}"#),
        1.0
    );
    assert!(moved(r#"spg99_gateway_relayed_bytes_total{direction="database_to_client"}"#) > 0.0);
    assert!(moved("spg99_gateway_checkout_wait_seconds_count") >= 1.0);
    assert_eq!(
        moved(r#"spg99_worker_operation_duration_seconds_count{op="start"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"spg99_worker_reports_total{outcome="started"}"#),
        1.0
    );
    assert!(moved(r#"spg99_worker_heartbeats_total{result="ok"}"#) >= 1.0);
    // No tenant data in the labels: names and ids appear nowhere.
    let text = fx
        .server
        .get("/metrics", SERVICE_TOKEN)
        .body
        .as_str()
        .unwrap()
        .to_owned();
    for secret in [
        t.body["pg_user"].as_str().unwrap(),
        "shop",
        "main",
        fx.account.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get_text(url: &str) -> String {
    for _ in 0..200 {
        if let Ok(r) = ureq::get(url).call() {
            assert!(r.content_type().starts_with("application/openmetrics-text"));
            return r.into_string().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing at {url}");
}

#[test]
fn a_gateway_and_a_worker_of_their_own_serve_their_metrics() {
    let tmp = crate::helpers::tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .spawn();
    let port = free_port();
    let mut worker = std::process::Command::new(crate::helpers::bin())
        .args(["worker", "--control-plane", &server.base, "--id", "w1"])
        .args(["--compute", "simulated", "--heartbeat-ms", "20"])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let first = parse(&get_text(&url));
    let ok = r#"spg99_worker_heartbeats_total{result="ok"}"#;
    // Heartbeats are counted as they go: the count moves while the worker runs.
    let began = std::time::Instant::now();
    while at(&parse(&get_text(&url)), ok) <= at(&first, ok) {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "heartbeats not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    match ureq::get(&format!("http://127.0.0.1:{port}/other")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("{other:?}"),
    }
    let _ = worker.kill();
    let _ = worker.wait();

    let port = free_port();
    let gw_port = free_port();
    let mut gateway = std::process::Command::new(crate::helpers::bin())
        .args(["gateway", "--control-plane", &server.base])
        .args(["--listen", &format!("127.0.0.1:{gw_port}")])
        .args(["--pooler-listen", "none", "--http-listen", "none"])
        .args(["--tls-dir", tmp.path().join("tls").to_str().unwrap()])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = parse(&get_text(&url));
    // A client that is refused (no such user) counts as a connection and a refusal.
    let r = crate::gateway::psql(
        &format!("postgres://nobody:pw@127.0.0.1:{gw_port}/db?sslmode=require"),
        &["select 1"],
    );
    assert!(r.is_err());
    let after = parse(&get_text(&url));
    let moved = |s: &str| at(&after, s) - at(&before, s);
    assert_eq!(moved("spg99_gateway_connections_total"), 1.0);
    assert_eq!(moved("spg99_gateway_auth_failures_total"), 1.0);
    let _ = gateway.kill();
    let _ = gateway.wait();
}
