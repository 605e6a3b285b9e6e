//! SQL over HTTP (`POST /sql`) next to the same query over a pooled TCP connection, in the same
//! run.
//!
//! `spg99 serve` runs as a newcomer runs it (control plane, embedded Gateway with its pooler and
//! HTTP front door, local PostgreSQL worker; a manual clock, so that the load moves the
//! database to no other profile), one database of size L1. Measured:
//!
//! - **`SELECT 1` with a warm pool** at 1 and 64 concurrent clients for `SPG99_BENCH_SECS` s
//!   each (default 10): `POST /sql` over HTTPS (one kept-alive connection per client, HTTP/1.1,
//!   TLS with the Gateway's certificate), and the same query over a pooled TCP connection
//!   (tokio-postgres through the pooler, TLS and SCRAM, the statement prepared once): p50 and
//!   p99 of each request, and requests per second.
//! - **Cold start through HTTP**: the database stopped by the idle timeout, then a new HTTPS
//!   connection's first `POST /sql` `SELECT 1` (TLS handshake included), p50 and p99 of 10;
//!   beside it, the same through the session port (connect, TLS, SCRAM, `SELECT 1`).
//!
//! Run: `cargo bench --bench sql_over_http` (as root or as a user that can run PostgreSQL;
//! PostgreSQL from `scripts/install-engines.sh`). Prints markdown tables and writes
//! `target/bench/sql_over_http.json`.

#[allow(dead_code)] // the tests' TLS client, of which the benchmark needs the plain connector
#[path = "../tests/it/pgtls.rs"]
mod pgtls;
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::http::{get, post, Conn};
use support::served::{Served, SERVICE};
use support::{load, Row, ROOT};
use tokio_postgres::config::SslMode;

const DB: &str = "bench";
const COLD_SAMPLES: usize = 10;

/// The platform, and what this benchmark asks of it.
struct Platform(Served);

impl std::ops::Deref for Platform {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Platform {
    /// The Gateway's certificate, which the HTTPS clients trust.
    fn ca(&self) -> PathBuf {
        self.data.join("gateway-tls/gateway.crt")
    }

    fn pg(&self, addr: &str) -> tokio_postgres::Config {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port.parse().unwrap())
            .user(&self.pg_user)
            .password(&self.password)
            .dbname(DB)
            .ssl_mode(SslMode::Require)
            .connect_timeout(Duration::from_secs(60));
        c
    }

    async fn describe(&self) -> serde_json::Value {
        let mut conn = Conn::open(&self.api).await;
        conn.json(&get(&format!("/v2/tenants/shop/dbs/{DB}"), ROOT))
            .await
    }

    async fn state(&self) -> String {
        self.describe().await["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Stops the database by the idle timeout and waits until it is stopped. The clock moves
    /// once its connections are gone (the HTTP clients' linger included) and not again while
    /// it stops: moving it again then made the next start wait about half a second, which is
    /// no cold start a client meets.
    async fn idle_stop(&self) {
        let advance = post("/internal/v1/clock/advance", SERVICE, r#"{"seconds":301}"#);
        let began = Instant::now();
        loop {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "the database never stopped"
            );
            let d = self.describe().await;
            if d["state"] == "stopped" {
                return;
            }
            if d["state"] == "running" && d["active_connections"] == 0 {
                Conn::open(&self.api).await.json(&advance).await;
                for _ in 0..250 {
                    if self.state().await != "running" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One kept-alive HTTPS connection to the Gateway's HTTP front door.
struct Https {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    dsn: String,
}

impl Https {
    async fn open(p: &Platform) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(p.ca()).unwrap();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&p.http).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        Https {
            sender,
            dsn: p.dsn(&p.session),
        }
    }

    /// `POST /sql` `SELECT 1`; checks the answer.
    async fn select_one(&mut self) {
        let req = hyper::Request::post("/sql")
            .header("host", "127.0.0.1")
            .header("neon-connection-string", &self.dsn)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"query":"SELECT 1 AS one"}"#,
            )))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status == 200 && body.windows(9).any(|w| w == br#"{"one":1}"#),
            "{status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

type Pooled = (tokio_postgres::Client, tokio_postgres::Statement);

async fn pooled(p: &Platform, n: usize) -> Vec<Pooled> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (client, conn) = p.pg(&p.pooler).connect(pgtls::Tls::new()).await.unwrap();
        tokio::spawn(conn);
        let st = client.prepare("SELECT 1").await.unwrap();
        out.push((client, st));
    }
    out
}

async fn https(p: &Platform, n: usize) -> Vec<Https> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Https::open(p).await);
    }
    out
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 10);
    let dur = Duration::from_secs(secs);
    let tmp = support::scratch();
    let rt = support::runtime();
    let p = Platform(rt.block_on(Served::start(
        tmp.path(),
        DB,
        &[
            // One address sends everything here: no per-address rate.
            ("SPG99_HTTP_REQUESTS_PER_ADDRESS", "0"),
            // The cold starts wait for the database to stop: its HTTP clients let go at once.
            ("SPG99_HTTP_LINGER", "1"),
        ],
    )));
    let mut json = Vec::new();

    println!("| `SELECT 1`, warm pool | clients | p50 ms | p99 ms | requests/s |");
    println!("|---|---|---|---|---|");
    rt.block_on(async {
        // Warm: the database running, the pool holding backends.
        let mut warm = https(&p, 1).await;
        for _ in 0..200 {
            warm[0].select_one().await;
        }
        for clients in [1usize, 64] {
            for round in 0..2 {
                let http_op = load::op(|c: &mut Https, _| Box::pin(c.select_one()));
                let http = load::drive(https(&p, clients).await, dur, http_op).await;
                let tcp_op = load::op(|c: &mut Pooled, _| {
                    Box::pin(async move {
                        let rows = c.0.query(&c.1, &[]).await.unwrap();
                        assert_eq!(rows[0].get::<_, i32>(0), 1);
                    })
                });
                let tcp = load::drive(pooled(&p, clients).await, dur, tcp_op).await;
                for (name, m) in [("POST /sql", http), ("pooled TCP", tcp)] {
                    let rate = m.lat.len() as f64 / m.secs;
                    let row = Row::new(name, m.lat);
                    println!(
                        "| {} (round {}) | {clients} | {:.2} | {:.2} | {rate:.0} |",
                        row.workload,
                        round + 1,
                        row.ms(0.5),
                        row.ms(0.99)
                    );
                    json.push(format!(
                        r#"{{"workload":"{}","round":{},"clients":{clients},"p50_ms":{:.3},"p99_ms":{:.3},"rate":{rate:.1}}}"#,
                        row.workload,
                        round + 1,
                        row.ms(0.5),
                        row.ms(0.99)
                    ));
                }
            }
        }
    });

    println!();
    println!("| cold start (a stopped database's first answer) | samples | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    rt.block_on(async {
        let mut http = Vec::new();
        let mut tcp = Vec::new();
        for _ in 0..COLD_SAMPLES {
            p.idle_stop().await;
            let t = Instant::now();
            Https::open(&p).await.select_one().await;
            http.push(t.elapsed().as_micros() as u64);
            // Its HTTP client lets go after the linger; then the session port's turn.
            p.idle_stop().await;
            let t = Instant::now();
            let (client, conn) = p.pg(&p.session).connect(pgtls::Tls::new()).await.unwrap();
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.unwrap();
            tcp.push(t.elapsed().as_micros() as u64);
            drop(client);
        }
        for row in [
            Row::new("POST /sql on a new HTTPS connection", http),
            Row::new("session port: connect, TLS, SCRAM, SELECT 1", tcp),
        ] {
            println!(
                "| {} | {COLD_SAMPLES} | {:.0} | {:.0} |",
                row.workload,
                row.ms(0.5),
                row.ms(0.99)
            );
            json.push(format!(
                r#"{{"workload":"cold: {}","p50_ms":{:.1},"p99_ms":{:.1}}}"#,
                row.workload,
                row.ms(0.5),
                row.ms(0.99)
            ));
        }
    });
    support::write_results("sql_over_http", &json);
}
