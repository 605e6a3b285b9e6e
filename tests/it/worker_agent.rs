//! `spg99 worker`, the simulated compute, against the real server: the paths a laptop demo
//! shows (a waiting checkout served by a started writer, a start that keeps failing, a
//! candidate host dying mid-handoff).

use std::time::Duration;

use serde_json::json;

use crate::helpers::tempdir;
use crate::lab::{Lab, Worker};

fn checkout_waiting(lab: &Lab, db: &str) -> crate::helpers::Reply {
    lab.internal(
        "/checkout",
        json!({"pg_user": lab.pg_user, "db": db, "wait_ms": 10_000}),
    )
}

#[test]
fn a_waiting_checkout_is_served_once_the_simulated_writer_starts_and_a_failing_host_fails_it() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[("SPG99_CLOCK", "system")]);
    let _w1 = Worker::simulated(&lab, "w1", &["--start-delay-ms", "50"]);
    lab.create_db("app");
    let r = checkout_waiting(&lab, "app");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["backend_addr"], "w1.sim:6432");
    let d = lab.describe("app");
    assert_eq!(
        (d["state"].as_str(), d["worker_id"].as_str()),
        (Some("running"), Some("w1"))
    );

    // A host whose starts always fail: placement prefers it (more room), three failures in a
    // row and the database is `failed`, which the waiting checkout reports.
    let _w2 = Worker::simulated(&lab, "w2", &["--fail-start"]);
    lab.create_db("flaky");
    let r = checkout_waiting(&lab, "flaky");
    assert_eq!((r.status, r.code()), (409, "db_failed"), "{r:?}");
    let d = lab.describe("flaky");
    assert_eq!(d["state"], "failed");
    assert!(d["failure_reason"]
        .as_str()
        .unwrap()
        .contains("simulated start failure"));
}

#[test]
fn a_candidate_host_dying_mid_handoff_fails_the_handoff_and_the_old_writer_keeps_serving() {
    let tmp = tempdir();
    let lab = Lab::new(
        &tmp.path().join("data"),
        &[
            ("SPG99_WORKER_TIMEOUT_MS", "15000"),
            ("SPG99_IDLE_TIMEOUT", "100000"),
        ],
    );
    let _w1 = Worker::simulated(&lab, "w1", &["--cpu", "0.95"]);
    let mut w2 = Worker::simulated(&lab, "w2", &["--die-mid-handoff"]);
    lab.create_db("app");
    let r = checkout_waiting(&lab, "app");
    assert_eq!(r.body["worker_id"], "w1", "{r:?}");

    // Time passes on the manual clock, in steps short enough for the live hosts to heartbeat.
    let pass = |seconds: usize| {
        for _ in 0..seconds / 5 {
            std::thread::sleep(Duration::from_millis(120));
            lab.advance(5.0);
        }
    };
    pass(65);
    assert_eq!(
        w2.wait_exit(),
        Some(3),
        "the candidate host died on its prepare"
    );
    let d = lab.describe("app");
    assert_eq!(d["candidate_worker_id"], "w2", "{d}");
    pass(20);
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "FAILED", "{d}");
    let reason = d["scale_failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("candidate's worker w2 was lost"),
        "{reason}"
    );
    assert_eq!(d["freeze_new_checkouts"], false);
    assert_eq!(
        (d["state"].as_str(), d["worker_id"].as_str()),
        (Some("running"), Some("w1"))
    );
    assert_eq!(checkout_waiting(&lab, "app").status, 200);
}
