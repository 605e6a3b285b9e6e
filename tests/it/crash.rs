//! Given clients hammering the server with writes, when the process is SIGKILLed mid-stream,
//! then every acknowledged write survives, the log is gapless from 1 and no record is torn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use spg99::log::Log;
use spg99_events::Event;

use crate::helpers::{tempdir, Start, ROOT_TOKEN};

const CLIENTS: usize = 32;
const ROUNDS: usize = 4;

/// Reads the whole log from the stopped server's directory, checking every record.
fn read_log(dir: &std::path::Path) -> (u64, HashMap<String, u64>) {
    let log = Log::open(dir).expect("log opens after a crash");
    let head = log.head().unwrap();
    let mut accounts = HashMap::new();
    let mut expected = 1;
    for env in log.read_from(1) {
        let env = env.unwrap_or_else(|e| panic!("torn or missing record after a crash: {e}"));
        assert_eq!(env.seq, expected, "seq is gapless");
        expected += 1;
        if let Event::AccountCreated { account_id, .. } = env.event {
            accounts.insert(account_id.to_string(), env.seq);
        }
    }
    assert_eq!(expected - 1, head, "every seq from 1 to head is present");
    (head, accounts)
}

#[test]
fn acknowledged_writes_survive_repeated_sigkill() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    // account id -> the round in which its creation was acknowledged
    let mut acknowledged: HashMap<String, usize> = HashMap::new();
    let mut last_head = 0;

    for round in 0..ROUNDS {
        let mut server = Start::new(&dir).spawn();
        // Everything acknowledged in earlier rounds is served after the restart.
        for id in acknowledged.keys() {
            let r = server.get(&format!("/v2/accounts/{id}"), ROOT_TOKEN);
            assert_eq!(r.status, 200, "acknowledged account {id} lost: {r:?}");
        }

        let server_ref = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let base = server.base.clone();
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let acked = server_ref.clone();
                let stop = stop.clone();
                let base = base.clone();
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let res = agent
                            .post(&format!("{base}/v2/accounts"))
                            .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
                            .send_json(json!({"name": format!("r{round}-c{c}-{i}")}));
                        match res {
                            Ok(resp) => {
                                assert_eq!(resp.status(), 201);
                                let v: serde_json::Value = resp.into_json().unwrap();
                                let id = v["account_id"].as_str().unwrap().to_owned();
                                acked.lock().unwrap().push(id);
                            }
                            Err(ureq::Error::Status(code, r)) => {
                                panic!("unexpected {code}: {:?}", r.into_string())
                            }
                            // The server is gone: what was not acknowledged may be lost.
                            Err(_) => break,
                        }
                        i += 1;
                    }
                })
            })
            .collect();

        // Let the writes run, then pull the plug while they are in flight.
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let this_round = std::mem::take(&mut *server_ref.lock().unwrap());
        assert!(!this_round.is_empty(), "round {round} acknowledged nothing");
        for id in this_round {
            acknowledged.insert(id, round);
        }

        let (head, in_log) = read_log(&dir);
        assert!(head > last_head, "the log grew in round {round}");
        last_head = head;
        for (id, r) in &acknowledged {
            assert!(
                in_log.contains_key(id),
                "account {id} acknowledged in round {r} is not in the log"
            );
        }
    }

    // A final clean start serves everything.
    let server = Start::new(&dir).spawn();
    let (_, seq) = server.fingerprint();
    assert_eq!(seq, last_head);
    for id in acknowledged.keys() {
        assert_eq!(
            server.get(&format!("/v2/accounts/{id}"), ROOT_TOKEN).status,
            200
        );
    }
}

/// The quietest case is the hardest: one write, acknowledged, nothing after it to push it out
/// of any buffer, then SIGKILL.
#[test]
fn a_lone_acknowledged_write_survives_sigkill() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut server = Start::new(&dir).spawn();
        for id in &ids {
            let r = server.get(&format!("/v2/accounts/{id}"), ROOT_TOKEN);
            assert_eq!(r.status, 200, "acknowledged account {id} lost");
        }
        let r = server.post(
            "/v2/accounts",
            ROOT_TOKEN,
            json!({"name": format!("lone {i}")}),
        );
        assert_eq!(r.status, 201);
        ids.push(r.body["account_id"].as_str().unwrap().to_owned());
        server.kill9();
    }
    let (_, in_log) = read_log(&dir);
    for id in &ids {
        assert!(in_log.contains_key(id), "{id} lost");
    }
}
