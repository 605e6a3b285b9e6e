//! A lifecycle lab: a real server on a manual clock, with one tenant, and the test playing
//! the Gateway and the workers through the internal API.

use std::path::Path;

use serde_json::{json, Value};

use crate::helpers::{Fixture, Reply, Server, Start, ROOT_TOKEN};

pub const SERVICE_TOKEN: &str = "spg99_svc_cccccccccccccccccccccccccccccccccccccccccccccccc";

pub struct Lab {
    pub fx: Fixture,
    pub pg_user: String,
}

/// A server with a manual clock and the service token set; `extra` adds settings.
pub fn start<'a>(data_dir: &'a Path, extra: &[(&'a str, &str)]) -> Start<'a> {
    let mut s = Start::new(data_dir)
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000");
    for (k, v) in extra {
        s = s.env(k, *v);
    }
    s
}

impl Lab {
    pub fn new(data_dir: &Path, extra: &[(&str, &str)]) -> Lab {
        let server = start(data_dir, extra).spawn();
        let fx = Fixture::with_server(server);
        let t = fx.server.create_tenant(&fx.account_key, "shop");
        Lab {
            pg_user: t.body["pg_user"].as_str().unwrap().to_owned(),
            fx,
        }
    }

    pub fn s(&self) -> &Server {
        &self.fx.server
    }

    pub fn internal(&self, path: &str, body: Value) -> Reply {
        self.s()
            .post(&format!("/internal/v1{path}"), SERVICE_TOKEN, body)
    }

    pub fn create_db(&self, name: &str) -> String {
        let r = self.s().create_db(&self.fx.account_key, "shop", name);
        r.body["db_id"].as_str().unwrap().to_owned()
    }

    pub fn describe(&self, db: &str) -> Value {
        let r = self
            .s()
            .get(&format!("/v2/tenants/shop/dbs/{db}"), &self.fx.account_key);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    pub fn register(&self, worker: &str, profiles: &[&str]) {
        let r = self.internal(
            "/workers",
            json!({"id": worker, "address": format!("{worker}.local:6432"), "capacity": 8, "profiles": profiles}),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }

    pub fn heartbeat(&self, worker: &str, loads: Value) -> Vec<Value> {
        let r = self.internal(
            &format!("/workers/{worker}/heartbeat"),
            json!({ "loads": loads }),
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["instructions"].as_array().unwrap().clone()
    }

    pub fn instructions(&self, worker: &str) -> Vec<Value> {
        let r = self.s().get(
            &format!("/internal/v1/workers/{worker}/instructions"),
            SERVICE_TOKEN,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["instructions"].as_array().unwrap().clone()
    }

    /// Reports `outcome` for the db at `term`; returns whether it was accepted.
    pub fn report(&self, worker: &str, db_id: &str, term: u64, outcome: &str) -> bool {
        let mut body = json!({"db_id": db_id, "writer_term": term, "outcome": outcome});
        match outcome {
            "started" | "promoted" => body["backend_addr"] = json!(format!("{worker}.local:6432")),
            "failed" => body["reason"] = json!("disk full"),
            _ => {}
        }
        let r = self.internal(&format!("/workers/{worker}/reports"), body);
        assert_eq!(r.status, 200, "{r:?}");
        r.body["accepted"].as_bool().unwrap()
    }

    pub fn checkout(&self, db: &str) -> Reply {
        self.internal("/checkout", json!({"pg_user": self.pg_user, "db": db}))
    }

    /// A checkout that must grant a lease; returns (lease_id, epoch).
    pub fn lease(&self, db: &str) -> (String, u64) {
        let r = self.checkout(db);
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["lease_id"].as_str().unwrap().to_owned(),
            r.body["lease_control_epoch"].as_u64().unwrap(),
        )
    }

    pub fn renew(&self, lease: &str, epoch: u64, connections: u32) -> Reply {
        self.internal(
            &format!("/leases/{lease}/renew"),
            json!({"active_connections": connections, "lease_control_epoch": epoch}),
        )
    }

    pub fn release(&self, lease: &str) -> Reply {
        self.internal(
            &format!("/leases/{lease}/release"),
            json!({"active_connections": 0}),
        )
    }

    /// Moves the manual clock and runs a reconciler pass.
    pub fn advance(&self, seconds: f64) {
        let r = self.internal("/clock/advance", json!({ "seconds": seconds }));
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Checks out a stopped database and starts it on `worker`: returns its writer term.
    pub fn start_db(&self, db: &str, worker: &str) -> u64 {
        let r = self.checkout(db);
        assert_eq!(r.status, 202, "{r:?}");
        let db_id = r.body["db_id"].as_str().unwrap().to_owned();
        let start = self
            .instructions(worker)
            .into_iter()
            .find(|i| i["op"] == "start" && i["db_id"] == db_id.as_str())
            .expect("a start instruction");
        let term = start["writer_term"].as_u64().unwrap();
        assert!(self.report(worker, &db_id, term, "started"));
        term
    }

    /// Event types of the log after `from`, for one database.
    pub fn types_since(&self, db_id: &str, from: u64) -> Vec<String> {
        let r = self.s().get(
            &format!("/v2/admin/log?from={}&db={db_id}", from + 1),
            ROOT_TOKEN,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn head(&self) -> u64 {
        self.s().fingerprint().1
    }
}
