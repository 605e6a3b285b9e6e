//! `spg99 serve` as a newcomer runs it — control plane, embedded Gateway with its session port,
//! pooler and HTTP front door, local PostgreSQL worker — on a manual clock (so that the load
//! moves the database to no other profile mid-measurement, and idle stops come when the
//! benchmark says), with tenant `shop` and one database of size L1: what the pooler and SQL
//! over HTTP benchmarks drive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::http::{post, Conn};
use super::ROOT;

pub const SERVICE: &str = "spg99_svc_eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

pub struct Served {
    pub server: Child,
    pub api: String,
    pub session: String,
    pub pooler: String,
    pub http: String,
    pub data: PathBuf,
    pub db: &'static str,
    pub pg_user: String,
    pub password: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // SIGTERM: the embedded worker stops its servers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.server.id().to_string())
            .status();
        let _ = self.server.wait();
    }
}

impl Served {
    /// Starts it in `dir` (made reachable for the postgres user) with `env` added, and makes
    /// the tenant and database `db`.
    pub async fn start(dir: &Path, db: &'static str, env: &[(&str, &str)]) -> Served {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.join("data");
        let mut cmd = super::serve_command(&data);
        cmd.env("SPG99_SERVICE_TOKEN", SERVICE)
            .env("SPG99_CLOCK", "manual")
            // The clock's jumps (idle stops) must never make the worker look lost.
            .env("SPG99_WORKER_TIMEOUT_MS", "1000000000")
            .env("SPG99_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("SPG99_POOLER_LISTEN", "127.0.0.1:0")
            .env("SPG99_HTTP_LISTEN", "127.0.0.1:0")
            .env("SPG99_COMPUTE", "postgres")
            .env("SPG99_PORT_RANGE", "29000-29899")
            .envs(env.iter().copied());
        let (server, addrs) = super::spawn_announcing(
            cmd,
            &[
                "spg99 gateway listening on ",
                "spg99 gateway pooler listening on ",
                "spg99 gateway http listening on ",
                "spg99 listening on ",
            ],
        );
        let mut conn = Conn::open(&addrs[3]).await;
        let tenant = super::http::shop(&mut conn).await;
        let body = format!(r#"{{"name":"{db}","size":"L1"}}"#);
        conn.json(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
        Served {
            server,
            api: addrs[3].clone(),
            session: addrs[0].clone(),
            pooler: addrs[1].clone(),
            http: addrs[2].clone(),
            data,
            db,
            pg_user: tenant["pg_user"].as_str().unwrap().to_owned(),
            password: tenant["pg_password"].as_str().unwrap().to_owned(),
        }
    }

    /// The database's connection string through `addr` (a port of the Gateway).
    pub fn dsn(&self, addr: &str) -> String {
        format!(
            "postgres://{}:{}@{addr}/{}?sslmode=require",
            self.pg_user, self.password, self.db
        )
    }
}
