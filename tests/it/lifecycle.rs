//! The database lifecycle through the real server: first checkout starts a database, idle
//! stops it, the autoscaler moves it between profiles by a handoff, failures and deadlines
//! end handoffs in `FAILED`, lost workers and deletions release what they held. The test
//! plays the Gateway and the workers; a manual clock drives time.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{tempdir, ROOT_TOKEN};
use crate::lab::{self, Lab, SERVICE_TOKEN};

pub(crate) fn ops(instructions: &[Value]) -> Vec<(String, u64)> {
    instructions
        .iter()
        .map(|i| {
            (
                i["op"].as_str().unwrap().to_owned(),
                i["writer_term"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn op(name: &str, term: u64) -> (String, u64) {
    (name.to_owned(), term)
}

#[test]
fn a_database_starts_on_its_first_checkout_and_stops_when_idle_but_never_while_leased() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    let d = lab.describe("app");
    assert_eq!(
        (d["state"].as_str(), d["current_scale"].as_u64()),
        (Some("stopped"), Some(0))
    );

    let r = lab.checkout("app");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["state"], "starting");
    assert!(r.body["retry_after_ms"].as_u64().unwrap() > 0);
    let d = lab.describe("app");
    assert_eq!(d["state"], "starting");
    assert_eq!(
        (d["current_scale"].as_u64(), d["target_scale"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(d["worker_id"], "w1");
    assert_eq!(
        d["current_profile"], "c0.25",
        "a database starts on its size's smallest profile"
    );
    assert!(d["backend_addr"].is_null());
    assert!(d["phase_deadline_at"].is_string());
    let start = lab.instructions("w1");
    assert_eq!(ops(&start), vec![op("start", 1)]);
    assert_eq!(start[0]["db_id"], db_id.as_str());
    assert_eq!(start[0]["profile"], "c0.25");

    assert!(lab.report("w1", &db_id, 1, "started"));
    assert!(
        !lab.report("w1", &db_id, 1, "started"),
        "a repeated report changes nothing"
    );
    let d = lab.describe("app");
    assert_eq!(d["state"], "running");
    assert_eq!(
        (d["current_scale"].as_u64(), d["target_scale"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(d["backend_addr"], "w1.local:6432");
    assert!(lab.instructions("w1").is_empty());

    let r = lab.checkout("app");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["backend_addr"], "w1.local:6432");
    assert_eq!(r.body["worker_id"], "w1");
    assert_eq!(r.body["lease_ttl_ms"], 30_000);
    let lease = r.body["lease_id"].as_str().unwrap().to_owned();
    let epoch = r.body["lease_control_epoch"].as_u64().unwrap();
    let before = lab.head();

    // Leased and renewed: never stopped, however long past the idle timeout.
    for _ in 0..20 {
        lab.advance(20.0);
        let r = lab.renew(&lease, epoch, 3);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body["expires_at"].is_string());
    }
    let d = lab.describe("app");
    assert_eq!(d["state"], "running", "400 s leased is not idle");
    assert_eq!(d["active_connections"], 3);
    // Twenty renewals wrote one load change, not twenty events.
    assert_eq!(lab.types_since(&db_id, before), vec!["db.load_changed"]);

    assert_eq!(lab.release(&lease).status, 200);
    assert_eq!(lab.renew(&lease, epoch, 0).code(), "lease_not_found");
    lab.advance(299.0);
    assert_eq!(lab.describe("app")["state"], "running");
    lab.advance(2.0);
    let d = lab.describe("app");
    assert_eq!(d["state"], "stopping");
    assert_eq!(
        (d["current_scale"].as_u64(), d["target_scale"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(ops(&lab.instructions("w1")), vec![op("stop", 1)]);
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    let d = lab.describe("app");
    assert_eq!(d["state"], "stopped");
    assert!(d["worker_id"].is_null() && d["current_profile"].is_null());
    assert_eq!(d["active_connections"], 0);

    let log = lab.s().get(
        &format!("/v2/admin/log?db={db_id}&types=db.stop_requested"),
        ROOT_TOKEN,
    );
    let stop = &log.body["items"][0];
    assert_eq!(
        stop["actor"], "system",
        "the reconciler's decisions are the system's"
    );
    assert_eq!(stop["data"]["reason"], "no connection for 300 s");

    // The next connection starts it again, with the next writer term.
    assert_eq!(lab.checkout("app").status, 202);
    assert_eq!(ops(&lab.instructions("w1")), vec![op("start", 2)]);
}

/// A lab with workers w1 and w2 (c0.25 to c1) and database `app` running on w1, term 1.
pub(crate) fn lab_with_two_workers(dir: &std::path::Path) -> (Lab, String) {
    let lab = Lab::new(
        dir,
        &[
            ("SPG99_IDLE_TIMEOUT", "100000"),
            ("SPG99_LEASE_TTL_MS", "3600000"),
        ],
    );
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    lab.register("w2", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    assert_eq!(lab.start_db("app", "w1"), 1);
    (lab, db_id)
}

/// Reports a load for the database on `worker`, then lets `seconds` pass.
pub(crate) fn sustain(lab: &Lab, worker: &str, db_id: &str, cpu: f64, seconds: f64) {
    lab.heartbeat(
        worker,
        json!([{"db_id": db_id, "cpu": cpu, "active_connections": 2}]),
    );
    lab.advance(seconds);
}

#[test]
fn a_sustained_load_moves_the_writer_up_a_profile_and_back_down_by_handoffs() {
    let tmp = tempdir();
    let (lab, db_id) = lab_with_two_workers(&tmp.path().join("data"));
    let (old_lease, old_epoch) = lab.lease("app");

    sustain(&lab, "w1", &db_id, 0.95, 30.0);
    assert_eq!(
        lab.describe("app")["scale_state"],
        "STABLE",
        "30 s is not sustained"
    );
    sustain(&lab, "w1", &db_id, 0.95, 31.0);
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "PREPARING_CANDIDATE");
    assert_eq!(d["current_profile"], "c0.25");
    assert_eq!(d["target_profile"], "c0.5");
    assert_eq!(d["candidate_profile"], "c0.5");
    assert_eq!(
        d["candidate_worker_id"], "w2",
        "the candidate goes to another worker"
    );
    assert_eq!(d["candidate_writer_term"], 2);
    assert_eq!(d["worker_id"], "w1");
    assert_eq!(d["freeze_new_checkouts"], false);
    assert_eq!(d["lease_control_epoch"], 1);
    assert!(d["scale_phase_started_at"].is_string() && d["scale_phase_deadline_at"].is_string());
    assert!(d["scale_failure_reason"].is_null());
    let prepare = lab.instructions("w2");
    assert_eq!(ops(&prepare), vec![op("prepare", 2)]);
    assert_eq!(prepare[0]["profile"], "c0.5");
    assert_eq!(
        lab.checkout("app").status,
        200,
        "not frozen while the candidate prepares"
    );

    assert!(lab.report("w2", &db_id, 2, "prepared"));
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "CUTOVER");
    assert_eq!(d["freeze_new_checkouts"], true);
    assert_eq!(d["lease_control_epoch"], 2);
    assert_eq!(
        d["worker_id"], "w1",
        "the old writer serves until the cutover completes"
    );
    assert_eq!(ops(&lab.instructions("w2")), vec![op("promote", 2)]);
    let frozen = lab.checkout("app");
    assert_eq!((frozen.status, frozen.code()), (503, "checkouts_frozen"));
    assert!(frozen.header("retry-after").is_some());
    let stale = lab.renew(&old_lease, old_epoch, 2);
    assert_eq!((stale.status, stale.code()), (409, "stale_epoch"));

    assert!(lab.report("w2", &db_id, 2, "promoted"));
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "STABLE");
    assert_eq!(d["freeze_new_checkouts"], false);
    assert_eq!(
        (d["current_profile"].as_str(), d["target_profile"].as_str()),
        (Some("c0.5"), Some("c0.5"))
    );
    assert_eq!(d["worker_id"], "w2");
    assert_eq!(d["backend_addr"], "w2.local:6432");
    assert_eq!(d["writer_term"], 2);
    assert!(d["candidate_worker_id"].is_null() && d["candidate_profile"].is_null());
    assert!(d["candidate_writer_term"].is_null() && d["scale_phase_started_at"].is_null());
    assert!(d["autoscale_cooldown_until"].is_string());
    assert_eq!(lab.renew(&old_lease, old_epoch, 2).code(), "stale_epoch");
    // The old writer is told to stop, until it confirms.
    assert_eq!(ops(&lab.instructions("w1")), vec![op("stop", 1)]);
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    assert!(lab.instructions("w1").is_empty());
    let r = lab.checkout("app");
    assert_eq!(
        (
            r.body["worker_id"].as_str(),
            r.body["lease_control_epoch"].as_u64()
        ),
        (Some("w2"), Some(2))
    );

    // Quiet for longer than the cooldown and the down window: one profile down.
    for _ in 0..7 {
        sustain(&lab, "w2", &db_id, 0.05, 50.0);
    }
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "PREPARING_CANDIDATE");
    assert_eq!(d["target_profile"], "c0.25");
    assert_eq!(d["candidate_worker_id"], "w1");
    assert_eq!(d["candidate_writer_term"], 3);
    assert!(lab.report("w1", &db_id, 3, "prepared"));
    assert!(lab.report("w1", &db_id, 3, "promoted"));
    let d = lab.describe("app");
    assert_eq!(
        (d["current_profile"].as_str(), d["worker_id"].as_str()),
        (Some("c0.25"), Some("w1"))
    );
    assert_eq!(
        (d["scale_state"].as_str(), d["lease_control_epoch"].as_u64()),
        (Some("STABLE"), Some(3))
    );
}

#[test]
fn a_candidate_that_fails_to_prepare_or_misses_its_deadline_ends_the_handoff_in_failed() {
    let tmp = tempdir();
    let (lab, db_id) = lab_with_two_workers(&tmp.path().join("data"));
    sustain(&lab, "w1", &db_id, 0.95, 61.0);
    assert_eq!(lab.describe("app")["scale_state"], "PREPARING_CANDIDATE");

    assert!(lab.report("w2", &db_id, 2, "failed"));
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "FAILED");
    let reason = d["scale_failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("failed to prepare") && reason.contains("disk full"),
        "{reason}"
    );
    assert_eq!(d["freeze_new_checkouts"], false);
    assert!(d["candidate_worker_id"].is_null() && d["candidate_profile"].is_null());
    assert_eq!(
        (d["worker_id"].as_str(), d["current_profile"].as_str()),
        (Some("w1"), Some("c0.25"))
    );
    assert!(d["autoscale_cooldown_until"].is_string());
    let r = lab.checkout("app");
    assert_eq!(
        (r.status, r.body["worker_id"].as_str()),
        (200, Some("w1")),
        "the old writer still serves"
    );
    assert_eq!(
        ops(&lab.instructions("w2")),
        vec![op("abort", 2)],
        "the candidate is cleaned up"
    );
    assert!(lab.report("w2", &db_id, 2, "aborted"));
    assert!(lab.instructions("w2").is_empty());

    // Still hot after the cooldown: a second handoff, whose cutover is never confirmed.
    for _ in 0..7 {
        sustain(&lab, "w1", &db_id, 0.95, 50.0);
    }
    let d = lab.describe("app");
    assert_eq!(
        (
            d["scale_state"].as_str(),
            d["candidate_writer_term"].as_u64()
        ),
        (Some("PREPARING_CANDIDATE"), Some(3))
    );
    assert!(lab.report("w2", &db_id, 3, "prepared"));
    assert_eq!(lab.describe("app")["freeze_new_checkouts"], true);
    lab.advance(59.0);
    assert_eq!(lab.describe("app")["scale_state"], "CUTOVER");
    lab.advance(2.0);
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "FAILED");
    let reason = d["scale_failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("did not confirm the cutover within 60 s"),
        "{reason}"
    );
    assert_eq!(d["freeze_new_checkouts"], false);
    assert_eq!(d["worker_id"], "w1");
    assert_eq!(lab.checkout("app").body["worker_id"], "w1");
    assert_eq!(ops(&lab.instructions("w2")), vec![op("abort", 3)]);
    assert!(
        !lab.report("w2", &db_id, 3, "promoted"),
        "too late: the handoff is over"
    );
}

#[test]
fn a_lost_worker_stops_its_databases_and_fails_the_handoffs_that_needed_it() {
    let tmp = tempdir();
    let lab = Lab::new(
        &tmp.path().join("data"),
        &[
            ("SPG99_WORKER_TIMEOUT_MS", "15000"),
            ("SPG99_IDLE_TIMEOUT", "100000"),
        ],
    );
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    lab.register("w2", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    lab.start_db("app", "w1");
    let (lease, epoch) = lab.lease("app");

    // Mid-run: w1 goes silent.
    for _ in 0..2 {
        lab.heartbeat("w2", json!([]));
        lab.advance(10.0);
    }
    let d = lab.describe("app");
    assert_eq!(d["state"], "stopped");
    assert!(d["worker_id"].is_null());
    assert_eq!(lab.renew(&lease, epoch, 1).code(), "lease_not_found");
    let log = lab.s().get(
        &format!("/v2/admin/log?db={db_id}&types=db.stopped"),
        ROOT_TOKEN,
    );
    assert_eq!(
        log.body["items"][0]["data"]["reason"],
        "worker w1 was lost (no heartbeat for 15 s)"
    );
    let gone = lab.internal("/workers/w1/heartbeat", json!({"loads": []}));
    assert_eq!((gone.status, gone.code()), (404, "worker_unknown"));
    // The next connection restarts it elsewhere.
    assert_eq!(lab.start_db("app", "w2"), 2);
    assert_eq!(lab.describe("app")["worker_id"], "w2");

    // Mid-handoff: the candidate's worker goes silent.
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    for _ in 0..7 {
        lab.heartbeat("w1", json!([]));
        sustain(&lab, "w2", &db_id, 0.95, 10.0);
    }
    let d = lab.describe("app");
    assert_eq!(
        (d["scale_state"].as_str(), d["candidate_worker_id"].as_str()),
        (Some("PREPARING_CANDIDATE"), Some("w1"))
    );
    assert!(lab.report("w1", &db_id, 3, "prepared"));
    assert_eq!(lab.describe("app")["freeze_new_checkouts"], true);
    for _ in 0..2 {
        lab.heartbeat("w2", json!([]));
        lab.advance(10.0);
    }
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "FAILED");
    assert!(d["scale_failure_reason"]
        .as_str()
        .unwrap()
        .contains("candidate's worker w1 was lost"));
    assert_eq!(d["freeze_new_checkouts"], false);
    assert_eq!(
        (d["state"].as_str(), d["worker_id"].as_str()),
        (Some("running"), Some("w2"))
    );
    assert_eq!(lab.checkout("app").status, 200);
}

#[test]
fn deleting_a_running_database_with_leases_waits_for_its_writer_to_stop() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    lab.start_db("app", "w1");
    let (lease, epoch) = lab.lease("app");

    let r = lab
        .s()
        .delete("/v2/tenants/shop/dbs/app", &lab.fx.account_key);
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (202, Some("deleting"))
    );
    assert_eq!(lab.renew(&lease, epoch, 1).code(), "lease_not_found");
    assert_eq!(lab.checkout("app").code(), "db_deleting");
    assert_eq!(ops(&lab.instructions("w1")), vec![op("stop", 1)]);
    // A reconciler pass (which finishes deletions) leaves it: its writer still runs.
    lab.advance(0.0);
    assert_eq!(
        lab.describe("app")["state"],
        "deleting",
        "visible until its writer is gone"
    );
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    lab.s()
        .wait_for_status("/v2/tenants/shop/dbs/app", &lab.fx.account_key, 404);
    assert!(lab.instructions("w1").is_empty());
}

#[test]
fn checkout_errors_are_clear_and_the_internal_api_is_for_the_service() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    let db_id = lab.create_db("app");
    let none = lab.checkout("app");
    assert_eq!((none.status, none.code()), (503, "no_worker"), "{none:?}");
    assert!(none.header("retry-after").is_some());
    assert!(none.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no worker is live"));
    lab.register("w8", &["c8"]);
    let no_room = lab.checkout("app");
    assert_eq!((no_room.status, no_room.code()), (503, "no_capacity"));
    let unknown_user = lab.internal("/checkout", json!({"pg_user": "u_nobody", "db": "app"}));
    assert_eq!(
        (unknown_user.status, unknown_user.code()),
        (404, "unknown_pg_user")
    );
    assert_eq!(lab.checkout("nope").code(), "unknown_db");

    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    for term in 1..=3 {
        assert_eq!(lab.checkout("app").status, 202);
        assert!(lab.report("w1", &db_id, term, "failed"));
    }
    let d = lab.describe("app");
    assert_eq!(d["state"], "failed");
    assert!(d["failure_reason"].as_str().unwrap().contains("disk full"));
    let failed = lab.checkout("app");
    assert_eq!((failed.status, failed.code()), (409, "db_failed"));

    let s = lab.s();
    let as_account = s.post(
        "/internal/v1/checkout",
        &lab.fx.account_key,
        json!({"pg_user": lab.pg_user, "db": "app"}),
    );
    assert_eq!(
        (as_account.status, as_account.code()),
        (403, "service_token_required")
    );
    let anonymous = s.call("POST", "/internal/v1/workers", None, Some(&json!({})));
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        s.post(
            "/internal/v1/checkout",
            ROOT_TOKEN,
            json!({"pg_user": lab.pg_user, "db": "app"})
        )
        .status,
        409
    );
    let bad_outcome = lab.internal(
        "/workers/w1/reports",
        json!({"db_id": db_id, "writer_term": 1, "outcome": "exploded"}),
    );
    assert_eq!(
        (
            bad_outcome.status,
            bad_outcome.body["error"]["field"].as_str()
        ),
        (422, Some("outcome"))
    );
    let bad_cpu = lab.internal(
        "/workers/w1/heartbeat",
        json!({"loads": [{"db_id": db_id, "cpu": -1.0}]}),
    );
    assert_eq!(bad_cpu.status, 422);
    let bad_profile = lab.internal(
        "/workers",
        json!({"id": "w9", "address": "x:1", "capacity": 1, "profiles": ["c99"]}),
    );
    assert_eq!(
        (
            bad_profile.status,
            bad_profile.body["error"]["field"].as_str()
        ),
        (422, Some("profiles"))
    );
    let bad_lease = lab.internal(
        "/leases/not-a-lease/renew",
        json!({"active_connections": 0, "lease_control_epoch": 1}),
    );
    assert_eq!(
        (bad_lease.status, bad_lease.code()),
        (404, "lease_not_found")
    );
    let unknown_field = lab.internal(
        "/checkout",
        json!({"pg_user": lab.pg_user, "db": "app", "x": 1}),
    );
    assert_eq!(unknown_field.status, 400);
}

#[test]
fn the_clock_only_moves_when_the_server_runs_a_manual_one() {
    let tmp = tempdir();
    let s = crate::helpers::Start::new(&tmp.path().join("data"))
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .spawn();
    let r = s.post(
        "/internal/v1/clock/advance",
        SERVICE_TOKEN,
        json!({"seconds": 5}),
    );
    assert_eq!((r.status, r.code()), (404, "manual_clock_off"));
    assert_eq!(
        s.post("/internal/v1/reconcile", SERVICE_TOKEN, json!({}))
            .status,
        200
    );
}

#[test]
fn billed_compute_seconds_are_the_run_intervals_in_the_log() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[("SPG99_IDLE_TIMEOUT", "60")]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    lab.start_db("app", "w1");
    lab.advance(30.5);
    lab.advance(31.0);
    assert_eq!(lab.describe("app")["state"], "stopping");
    lab.advance(2.25);
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    lab.start_db("app", "w1");
    lab.advance(10.0);

    let summary = lab.s().get("/v2/billing/summary", &lab.fx.account_key);
    assert_eq!(summary.status, 200, "{summary:?}");
    let b = &summary.body;
    let total = b["compute_seconds"].as_f64().unwrap();
    assert!((total - 73.75).abs() < 1e-6, "{b}");
    assert_eq!(b["by_profile"]["c0.25"].as_f64(), Some(total));
    assert_eq!(b["databases"][0]["db_id"], db_id.as_str());
    assert_eq!(b["databases"][0]["running"], true);

    // The same figure from the log itself: db.started .. db.stopped, plus the open run.
    let log = lab.s().get(
        &format!("/v2/admin/log?db={db_id}&types=db.started,db.stopped"),
        ROOT_TOKEN,
    );
    let at = |e: &Value| chrono_micros(e["at"].as_str().unwrap());
    let mut sum = 0i64;
    let mut open = None;
    for e in log.body["items"].as_array().unwrap() {
        match e["type"].as_str().unwrap() {
            "db.started" => open = Some(at(e)),
            _ => sum += at(e) - open.take().unwrap(),
        }
    }
    sum += chrono_micros(b["as_of"].as_str().unwrap()) - open.unwrap();
    assert!(
        (sum as f64 / 1e6 - total).abs() < 1e-6,
        "log says {sum} µs, summary {total} s"
    );

    let tenant_key = lab.s().issue_key(
        &lab.fx.account_key,
        &lab.fx.account,
        json!({"scope": "tenant", "tenant": "shop"}),
    );
    let as_tenant = lab.s().get("/v2/billing/summary", &tenant_key);
    assert_eq!(as_tenant.body["compute_seconds"].as_f64(), Some(total));
    let bad = lab
        .s()
        .get("/v2/billing/summary?period=2026-13", &lab.fx.account_key);
    assert_eq!(
        (bad.status, bad.body["error"]["field"].as_str()),
        (422, Some("period"))
    );
    let last_year = lab
        .s()
        .get("/v2/billing/summary?period=2000-01", &lab.fx.account_key);
    assert_eq!(last_year.body["compute_seconds"].as_f64(), Some(0.0));
}

/// Microseconds since the epoch of an RFC 3339 time as the API writes them.
fn chrono_micros(s: &str) -> i64 {
    let dt = chrono::DateTime::parse_from_rfc3339(s).unwrap();
    dt.timestamp_micros()
}

#[test]
fn after_a_crash_live_leases_get_one_ttl_of_grace_and_the_state_is_exact() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut lab = Lab::new(&dir, &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    lab.start_db("app", "w1");
    let (lease, epoch) = lab.lease("app");
    let before = lab.s().fingerprint();
    lab.fx.server.kill9();

    lab.fx.server = lab::start(&dir, &[]).spawn();
    assert_eq!(lab.s().fingerprint(), before);
    let d = lab.describe("app");
    assert_eq!(
        (d["state"].as_str(), d["worker_id"].as_str()),
        (Some("running"), Some("w1"))
    );
    lab.advance(25.0);
    assert_eq!(
        lab.renew(&lease, epoch, 1).status,
        200,
        "one TTL of grace after the restart"
    );
    assert!(
        !lab.report("w1", &db_id, 1, "stopped"),
        "a running writer is not stopped by a stray report"
    );
    let verify = lab.s().get("/v2/admin/verify", ROOT_TOKEN);
    assert_eq!(verify.body["equal"], true, "{verify:?}");
}

#[test]
fn a_worker_long_polls_until_its_instructions_change() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    lab.create_db("a");
    lab.create_db("b");
    assert_eq!(lab.checkout("a").status, 202);
    let poll = |query: &str| {
        let r = lab.s().get(
            &format!("/internal/v1/workers/w1/instructions?{query}"),
            SERVICE_TOKEN,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    };
    let first = poll("wait_ms=0");
    let version = first["version"].as_str().unwrap().to_owned();
    assert_eq!(first["instructions"].as_array().unwrap().len(), 1);

    // Nothing changed: the poll waits its time out and names the same list.
    let same = poll(&format!("wait_ms=200&known={version}"));
    assert_eq!(same["version"], version.as_str());

    // A change while it waits ends the wait with the new list.
    std::thread::scope(|scope| {
        let began = std::time::Instant::now();
        let waiting = scope.spawn(|| poll(&format!("wait_ms=25000&known={version}")));
        // Most likely under way by then; if not, it finds the new list at once all the same.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(lab.checkout("b").status, 202);
        let changed = waiting.join().unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the change did not end the wait"
        );
        assert_ne!(changed["version"], version.as_str());
        assert_eq!(changed["instructions"].as_array().unwrap().len(), 2);
    });
}

#[test]
fn a_tenant_key_watches_its_database_start_on_the_event_stream() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    let s = lab.s();
    let tenant_key = s.issue_key(
        &lab.fx.account_key,
        &lab.fx.account,
        json!({"scope": "tenant", "tenant": "shop"}),
    );
    let since = lab.head();
    let mut stream = crate::helpers::Events::open(
        s,
        &format!("/v2/events?since={since}&db={db_id}"),
        Some(&tenant_key),
        None,
    )
    .unwrap();
    lab.start_db("app", "w1");
    lab.lease("app");
    let seen: Vec<(String, Value)> = (0..3)
        .map(|_| stream.next_event().expect("an event"))
        .map(|f| (f.event.clone(), f.json()))
        .collect();
    let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["db.start_requested", "db.started", "lease.granted"]);
    assert_eq!(seen[0].1["data"]["worker_id"], "w1");
    assert_eq!(seen[0].1["actor"], "service");
    assert_eq!(seen[1].1["data"]["backend_addr"], "w1.local:6432");
    assert_eq!(seen[2].1["tenant"], "shop");
}

#[test]
fn usage_outlives_its_tenant_and_is_not_shown_to_a_new_tenant_of_the_same_name() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    lab.start_db("app", "w1");
    lab.advance(10.0);
    let s = lab.s();
    let r = s.delete("/v2/tenants/shop?cascade=true", &lab.fx.account_key);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    s.wait_for_status("/v2/tenants/shop", &lab.fx.account_key, 404);

    s.create_tenant(&lab.fx.account_key, "shop");
    let new_tenant_key = s.issue_key(
        &lab.fx.account_key,
        &lab.fx.account,
        json!({"scope": "tenant", "tenant": "shop"}),
    );
    let theirs = s.get("/v2/billing/summary", &new_tenant_key);
    assert_eq!(
        theirs.body["compute_seconds"].as_f64(),
        Some(0.0),
        "{theirs:?}"
    );
    let account = s.get("/v2/billing/summary", &lab.fx.account_key);
    assert_eq!(
        account.body["compute_seconds"].as_f64(),
        Some(10.0),
        "{account:?}"
    );
    assert_eq!(account.body["databases"][0]["db_id"], db_id.as_str());
    assert_eq!(account.body["databases"][0]["running"], false);
}
