//! Durable appends, for the benchmarks that measure them: the raw sled group-commit ceiling
//! and the real committer, both writing the same records.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg99::clock::SystemClock;
use spg99::commands::Command;
use spg99::committer::Committer;
use spg99::decision::CommandMeta;
use spg99::domain::{AccountName, Email};
use spg99::log::Log;
use spg99_events::{encode_record, Actor, Envelope, Event, Timestamp};
use spg99_projections::State;
use uuid::Uuid;

/// Latencies (µs, sorted) of the appends made in `secs`.
pub struct Measured {
    pub lat: Vec<u64>,
    pub secs: f64,
}

impl Measured {
    pub fn new(mut lat: Vec<u64>, secs: f64) -> Self {
        lat.sort_unstable();
        Measured { lat, secs }
    }
}

/// The contact address that pads an event: `pad` bytes before the domain (none for 0).
fn email(pad: usize) -> Option<String> {
    (pad > 0).then(|| format!("{}@bench.example", "x".repeat(pad)))
}

/// The log record of an `account.created` event; `pad` grows it (see [`email`]).
pub fn record(seq: u64, pad: usize) -> Vec<u8> {
    encode_record(&Envelope {
        seq,
        at: Timestamp(1_763_000_000_000_000),
        actor: Actor::System,
        request_id: "0123456789abcdef0123456789abcdef".into(),
        account: Some(Uuid::from_u128(seq as u128)),
        tenant: None,
        tenant_id: None,
        db_id: None,
        event: Event::AccountCreated {
            account_id: Uuid::from_u128(seq as u128),
            name: format!("bench account {seq}"),
            email: email(pad),
        },
    })
}

pub fn open_sled(dir: &Path) -> (sled::Db, sled::Tree, File) {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let tree = db.open_tree("log").unwrap();
    let file = File::open(dir.join("db")).unwrap();
    (db, tree, file)
}

/// One writer, batches of `producers` records, `apply_batch` + `flush()` (+ `fdatasync`):
/// the group-commit ceiling. Every record of a batch waits for the whole batch.
pub fn sled_batches(
    dir: &Path,
    producers: usize,
    dur: Duration,
    fdatasync: bool,
    pad: usize,
) -> Measured {
    let (db, tree, file) = open_sled(dir);
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut seq = 0u64;
    while started.elapsed() < dur {
        let t = Instant::now();
        let mut batch = sled::Batch::default();
        for _ in 0..producers {
            seq += 1;
            batch.insert(&seq.to_be_bytes(), record(seq, pad));
        }
        tree.apply_batch(batch).unwrap();
        db.flush().unwrap();
        if fdatasync {
            file.sync_data().unwrap();
        }
        let us = t.elapsed().as_micros() as u64;
        lat.extend(std::iter::repeat_n(us, producers));
    }
    Measured::new(lat, started.elapsed().as_secs_f64())
}

/// `producers` async tasks submitting `CreateAccount` commands to the real committer:
/// queue, decide, group commit with flush + fdatasync, projections, publish, reply.
pub fn committer(dir: &Path, producers: usize, dur: Duration, pad: usize) -> Measured {
    let rt = super::runtime();
    rt.block_on(async {
        let log = Arc::new(Log::open(dir).unwrap());
        let secrets = Arc::new(spg99::secrets::SecretBox::from_key([7; 32]));
        let committer = Committer::alone(
            log,
            State::default(),
            Arc::new(SystemClock),
            secrets,
            Default::default(),
        );
        let email = email(pad).map(|e| Email::parse("email", &e).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let (handle, stop, email) = (committer.handle(), stop.clone(), email.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    let meta = CommandMeta {
                        actor: Actor::System,
                        request_id: "0123456789abcdef0123456789abcdef".into(),
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let name = AccountName::parse("name", &format!("bench {p}-{i}")).unwrap();
                        let command = Command::CreateAccount {
                            account_id: Uuid::new_v4(),
                            name,
                            email: email.clone(),
                        };
                        let t = Instant::now();
                        handle.submit(meta.clone(), command).await.unwrap();
                        lat.push(t.elapsed().as_micros() as u64);
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        committer.stop().await;
        Measured::new(lat, secs)
    })
}
