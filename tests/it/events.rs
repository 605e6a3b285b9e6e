//! `GET /v2/events` with a real SSE client against the real server.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{all_permissions, tempdir, Events, Fixture, Frame, Server, Start, ROOT_TOKEN};

fn head(s: &Server) -> u64 {
    s.fingerprint().1
}

/// Creates `n` accounts from `threads` threads.
fn burst(s: &Server, n: usize, threads: usize) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let r = s.post("/v2/accounts", ROOT_TOKEN, json!({"name": format!("b{i}")}));
                    assert_eq!(r.status, 201);
                }
            });
        }
    });
}

fn assert_gapless(frames: &[Frame], from: u64) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq(), from + i as u64, "frame {i}: {f:?}");
        assert_eq!(f.json()["seq"], f.seq());
        assert_eq!(f.json()["type"], f.event.as_str());
    }
}

#[test]
fn a_scenario_streams_in_order_and_a_resume_gets_exactly_what_was_missed() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let mut all = Events::open(s, "/v2/events", Some(ROOT_TOKEN), None).unwrap();
    s.create_tenant(&fx.account_key, "shop");
    s.create_db(&fx.account_key, "shop", "app");
    assert_eq!(
        s.delete("/v2/tenants/shop/dbs/app", &fx.account_key).status,
        202
    );
    s.wait_for_status("/v2/tenants/shop/dbs/app", &fx.account_key, 404);
    let frames = all.until_seq(head(s));
    assert_gapless(&frames, 1);
    let types: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        &types[types.len() - 5..],
        [
            "tenant.created",
            "tenant.verifier_set",
            "db.created",
            "db.delete_requested",
            "db.deleted"
        ]
    );
    let created = frames
        .iter()
        .find(|f| f.event == "db.created")
        .unwrap()
        .json();
    assert_eq!(created["tenant"], "shop");
    assert_eq!(created["data"]["name"], "app");
    assert!(created["db_id"].is_string());
    assert_eq!(frames.last().unwrap().json()["actor"], "system");

    // A burst; a client drops in the middle and comes back with Last-Event-ID.
    let start = head(s);
    let writer = std::thread::scope(|scope| {
        let w = scope.spawn(|| burst(s, 600, 4));
        let mut first = Events::open(
            s,
            &format!("/v2/events?since={start}"),
            Some(ROOT_TOKEN),
            None,
        )
        .unwrap();
        let got: Vec<Frame> = (0..150).map(|_| first.next_event().unwrap()).collect();
        drop(first);
        assert_gapless(&got, start + 1);
        let resume_at = got.last().unwrap().seq();
        let mut second = Events::open(s, "/v2/events", Some(ROOT_TOKEN), Some(resume_at)).unwrap();
        w.join().unwrap();
        let rest = second.until_seq(head(s));
        assert_gapless(&rest, resume_at + 1);
        got.len() + rest.len()
    });
    assert_eq!(writer as u64, head(s) - start);
}

#[test]
fn a_slow_consumer_loses_nothing_and_never_holds_up_a_fast_one() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let start = head(s);
    // The slow one connects and then reads nothing during the burst.
    let mut slow = Events::open(s, "/v2/events", Some(ROOT_TOKEN), None).unwrap();
    let fast_done = Arc::new(AtomicBool::new(false));
    const N: usize = 12_000;
    let fast_frames = std::thread::scope(|scope| {
        let done = fast_done.clone();
        let fast = scope.spawn(move || {
            let mut fast = Events::open(
                s,
                &format!("/v2/events?since={start}"),
                Some(ROOT_TOKEN),
                None,
            )
            .unwrap();
            let frames = fast.until_seq(start + N as u64);
            done.store(true, Ordering::SeqCst);
            frames
        });
        burst(s, N, 8);
        fast.join().unwrap()
    });
    assert_gapless(&fast_frames, start + 1);
    assert!(
        fast_done.load(Ordering::SeqCst),
        "the fast consumer had everything before the slow one read a byte"
    );
    // Now the slow one reads: everything, in order, nothing twice.
    let frames = slow.until_seq(start + N as u64);
    assert_gapless(&frames, 1);
}

#[test]
fn a_tenant_key_never_sees_another_tenants_events_under_any_filter() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let t1 = s.create_tenant(&fx.account_key, "t1").body["tenant_id"].clone();
    s.create_tenant(&fx.account_key, "t2");
    let d2 = s.create_db(&fx.account_key, "t2", "d2").body["db_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = s.issue_key(
        &fx.account_key,
        &fx.account,
        json!({"scope": "tenant", "tenant": "t1", "permissions": all_permissions()}),
    );
    s.create_db(&key, "t1", "d1");
    s.create_db(&fx.account_key, "t2", "d3");
    // A tenant with t1's old name in another account is another tenant too.
    let other = s.create_account("other");
    let other_key = s.issue_key(
        ROOT_TOKEN,
        &other,
        json!({"scope": "account", "permissions": all_permissions()}),
    );
    let h = head(s);
    for filter in [
        "",
        "?tenant=t2",
        "?tenant=t1",
        &format!("?db={d2}"),
        "?types=tenant.created,db.created",
        "?initial=snapshot",
    ] {
        let mut ev = Events::open(s, &format!("/v2/events{filter}"), Some(&key), None).unwrap();
        let frames = ev.until_seq(h);
        for f in &frames {
            let j = f.json();
            if f.event.starts_with("snapshot.") {
                assert_eq!(
                    j["data"]["tenant"].as_str().unwrap_or("t1"),
                    "t1",
                    "{filter}: {j}"
                );
                continue;
            }
            assert_eq!(j["tenant_id"], t1, "{filter}: {j}");
        }
        if filter.is_empty() {
            assert!(
                frames.iter().any(|f| f.event == "db.created"),
                "its own events do arrive"
            );
        }
    }
    // The account key of the other account sees nothing of acme's.
    let mut ev = Events::open(s, "/v2/events", Some(&other_key), None).unwrap();
    for f in ev.until_seq(h) {
        assert_eq!(f.json()["account"], other.as_str());
    }
}

#[test]
fn a_snapshot_equals_a_fresh_list_and_the_stream_continues_from_it() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    for t in ["a", "b"] {
        s.create_tenant(&fx.account_key, t);
        for d in ["x", "y", "z"] {
            s.create_db(&fx.account_key, t, d);
        }
    }
    let mut ev = Events::open(
        s,
        "/v2/events?initial=snapshot",
        Some(&fx.account_key),
        None,
    )
    .unwrap();
    let mut tenants = Vec::new();
    let mut dbs = Vec::new();
    let mut accounts = Vec::new();
    let bookmark = loop {
        let f = ev.next().unwrap();
        match f.event.as_str() {
            "snapshot.account" => accounts.push(f.json()["data"].clone()),
            "snapshot.tenant" => tenants.push(f.json()["data"].clone()),
            "snapshot.db" => dbs.push(f.json()["data"].clone()),
            "bookmark" => break f.seq(),
            other => panic!("unexpected {other} before the bookmark"),
        }
    };
    let listed = s.get("/v2/tenants", &fx.account_key);
    assert_eq!(
        listed
            .header("x-resource-version")
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        bookmark
    );
    assert_eq!(json!(tenants), listed.body["items"]);
    let mut fresh_dbs = Vec::new();
    for t in ["a", "b"] {
        let l = s.get(&format!("/v2/tenants/{t}/dbs"), &fx.account_key);
        fresh_dbs.extend(l.body["items"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(dbs, fresh_dbs);
    assert_eq!(
        accounts,
        vec![s.get("/v2/account/profile", &fx.account_key).body]
    );
    // Then live, from exactly the bookmark.
    s.create_db(&fx.account_key, "a", "w");
    let next = ev.next_event().unwrap();
    assert_eq!(next.seq(), bookmark + 1);
    assert_eq!(next.event, "db.created");
}

#[test]
fn a_browser_opens_the_stream_with_a_single_use_ticket() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    s.create_tenant(&fx.account_key, "t1");
    let tenant_key = s.issue_key(
        &fx.account_key,
        &fx.account,
        json!({"scope": "tenant", "tenant": "t1", "permissions": {"can_create_db": true}}),
    );
    let t = s.post("/v2/events/tickets", &tenant_key, json!({}));
    assert_eq!(t.status, 201);
    let ticket = t.body["ticket"].as_str().unwrap().to_owned();
    assert!(
        !ticket.contains(&tenant_key[6..]),
        "the ticket is not the token"
    );
    let path = format!("/v2/events?ticket={ticket}&since={}", head(s));
    let mut ev = Events::open(s, &path, None, None).unwrap();
    s.create_tenant(&fx.account_key, "t2");
    s.create_db(&tenant_key, "t1", "d1");
    let f = ev.next_event().unwrap();
    assert_eq!(
        f.event, "db.created",
        "scoped like the tenant key: t2 never shows"
    );
    // Single use.
    let again = Events::open(s, &path, None, None).err().expect("refused");
    assert_eq!((again.status, again.code()), (401, "invalid_token"));
    let bogus = Events::open(s, "/v2/events?ticket=spg99t_00", None, None)
        .err()
        .unwrap();
    assert_eq!(bogus.status, 401);
}

#[test]
fn bad_resume_points_and_filters_are_refused_before_the_stream_starts() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    for (path, last, code) in [
        ("/v2/events?since=-1", None, "invalid_since"),
        ("/v2/events?since=abc", None, "invalid_since"),
        ("/v2/events?types=tenant.exploded", None, "invalid_filter"),
        ("/v2/events?db=not-a-uuid", None, "invalid_filter"),
        ("/v2/events?tenant=NOT%20A%20NAME", None, "invalid_filter"),
        ("/v2/events?initial=everything", None, "invalid_filter"),
        ("/v2/events?colour=red", None, "invalid_query"),
    ] {
        let r = Events::open(&s, path, Some(ROOT_TOKEN), last)
            .err()
            .expect(path);
        assert_eq!((r.status, r.code()), (400, code), "{path}");
    }
    let mut req =
        ureq::get(&s.url("/v2/events")).set("Authorization", &format!("Bearer {ROOT_TOKEN}"));
    req = req.set("Last-Event-ID", "seven");
    match req.call() {
        Err(ureq::Error::Status(400, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "invalid_last_event_id");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Events::open(&s, "/v2/events", None, None)
            .err()
            .unwrap()
            .status,
        401
    );

    // A resume point beyond the head names events that do not exist: refused, not awaited.
    let h = head(&s);
    let beyond = Events::open(
        &s,
        &format!("/v2/events?since={}", h + 3),
        Some(ROOT_TOKEN),
        None,
    )
    .err()
    .expect("refused");
    assert_eq!((beyond.status, beyond.code()), (400, "since_beyond_head"));
}

#[test]
fn no_frame_holds_a_token_a_hash_or_a_password() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let created = s.create_tenant(&fx.account_key, "shop");
    let password = created.body["pg_password"].as_str().unwrap().to_owned();
    let rotated = s.post("/v2/api-keys/rotate", &fx.account_key, json!({}));
    let token = rotated.body["token"].as_str().unwrap().to_owned();
    let idem = ureq::post(&s.url("/v2/tenants"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Idempotency-Key", "k1")
        .send_json(json!({"name": "other"}))
        .unwrap();
    assert_eq!(idem.status(), 201);
    let mut ev = Events::open(s, "/v2/events", Some(ROOT_TOKEN), None).unwrap();
    let frames = ev.until_seq(head(s));
    let all: String = frames.iter().map(|f| f.data.clone()).collect();
    let secret = |t: &str| t.rsplit('_').next().unwrap().to_owned();
    for needle in [
        password,
        secret(&token),
        secret(&fx.account_key),
        secret(ROOT_TOKEN),
    ] {
        assert!(!all.contains(&needle), "a frame holds a secret");
    }
    assert!(
        !all.contains("secret_hash") && !all.contains("pg_password"),
        "{all}"
    );
    assert!(frames.iter().any(|f| f.event == "idempotency.recorded"));
}

#[test]
fn shutdown_with_a_hundred_open_streams_is_prompt() {
    let tmp = tempdir();
    let mut s = Start::new(&tmp.path().join("data")).spawn();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let streams: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            write!(
                c,
                "GET /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT_TOKEN}\r\n\r\n"
            )
            .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, took) = s.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    drop(streams);
}
