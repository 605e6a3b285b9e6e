//! The committer on a real log: order, visibility and slow subscribers.

use std::sync::Arc;

use spg99::clock::SystemClock;
use spg99::commands::Command;
use spg99::committer::Committer;
use spg99::decision::CommandMeta;
use spg99::domain::AccountName;
use spg99::log::Log;
use spg99_events::Actor;
use spg99_projections::State;
use tokio::sync::broadcast::error::TryRecvError;
use uuid::Uuid;

use crate::helpers::tempdir;

fn create(i: usize) -> Command {
    Command::CreateAccount {
        account_id: Uuid::new_v4(),
        name: AccountName::parse("name", &format!("a{i}")).unwrap(),
        email: None,
    }
}

fn secrets() -> Arc<spg99::secrets::SecretBox> {
    Arc::new(spg99::secrets::SecretBox::from_key([7; 32]))
}

fn meta() -> CommandMeta {
    CommandMeta {
        actor: Actor::System,
        request_id: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_hold_up_commits() {
    let tmp = tempdir();
    let log = Arc::new(Log::open(tmp.path()).unwrap());
    let committer = Committer::alone(
        log,
        State::default(),
        Arc::new(SystemClock),
        secrets(),
        Default::default(),
    );
    let handle = committer.handle();
    let mut idle = handle.shared().subscribe();
    let mut reader = handle.shared().subscribe();

    // Sequential submissions: each is its own batch, far more batches than the feed keeps.
    const N: usize = 3000;
    let mut next = 1;
    for i in 0..N {
        let committed = handle.submit(meta(), create(i)).await.unwrap();
        assert_eq!(committed.last_seq(), Some(i as u64 + 1));
        // The reading subscriber sees every batch, in order, as soon as it is answered.
        let batch = reader.try_recv().expect("published before the answer");
        for env in batch.iter() {
            assert_eq!(env.seq, next);
            next += 1;
        }
    }
    assert_eq!(handle.shared().head(), N as u64);
    assert_eq!(handle.shared().read().accounts.len(), N);
    // The idle one was left behind, and is told so, rather than having blocked anyone.
    assert!(matches!(idle.try_recv(), Err(TryRecvError::Lagged(_))));
    committer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_get_gapless_seqs_and_readers_see_them_after_the_answer() {
    let tmp = tempdir();
    let log = Arc::new(Log::open(tmp.path()).unwrap());
    let committer = Committer::alone(
        log.clone(),
        State::default(),
        Arc::new(SystemClock),
        secrets(),
        Default::default(),
    );
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let handle = committer.handle();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let c = handle.submit(meta(), create(t * 1000 + i)).await.unwrap();
                    let seq = c.last_seq().unwrap();
                    // After the answer, the readers' state already holds the event.
                    assert!(handle.shared().head() >= seq);
                    seqs.push(seq);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=64 * 50).collect::<Vec<u64>>());
    committer.stop().await;
    let on_disk: Vec<u64> = log.read_from(1).map(|e| e.unwrap().seq).collect();
    assert_eq!(on_disk, all);
}
