//! Writes `tests/fixtures/log-v1.bin`, the version 1 log the upcaster test reads. Run once
//! (`cargo test -p spg99-events --test make_fixture -- --ignored`); the file is committed and
//! must not change afterwards: it stands for logs already written.

use serde::Serialize;
use spg99_events::{Actor, Event, KeyScope, Permissions, Sealed, Timestamp};
use uuid::Uuid;

#[derive(Serialize)]
struct EnvelopeV1 {
    seq: u64,
    at: Timestamp,
    actor: Actor,
    request_id: String,
    account: Option<Uuid>,
    tenant: Option<String>,
    db_id: Option<Uuid>,
    event: Event,
}

fn record_v1(env: &EnvelopeV1) -> Vec<u8> {
    let mut out = vec![1u8];
    bincode::serde::encode_into_std_write(env, &mut out, bincode::config::standard()).unwrap();
    let mut h = crc32fast::Hasher::new();
    h.update(&env.seq.to_be_bytes());
    h.update(&out);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

#[test]
#[ignore = "writes the committed fixture; run by hand only"]
fn write_fixture() {
    let account = Uuid::from_u128(0xacc);
    let envs = [
        EnvelopeV1 {
            seq: 1,
            at: Timestamp(1_763_900_000_000_000),
            actor: Actor::System,
            request_id: "bootstrap".into(),
            account: None,
            tenant: None,
            db_id: None,
            event: Event::ApiKeyIssued {
                key_id: "0123456789abcdef".into(),
                scope: KeyScope::Global,
                permissions: Permissions::ALL,
                secret_hash: [7; 32],
                expires_at: None,
                name: Some("bootstrap".into()),
            },
        },
        EnvelopeV1 {
            seq: 2,
            at: Timestamp(1_763_900_000_100_000),
            actor: Actor::ApiKey("0123456789abcdef".into()),
            request_id: "r2".into(),
            account: Some(account),
            tenant: None,
            db_id: None,
            event: Event::AccountCreated {
                account_id: account,
                name: "acme".into(),
                email: None,
            },
        },
        EnvelopeV1 {
            seq: 3,
            at: Timestamp(1_763_900_000_200_000),
            actor: Actor::ApiKey("0123456789abcdef".into()),
            request_id: "r3".into(),
            account: Some(account),
            tenant: Some("shop".into()),
            db_id: None,
            event: Event::TenantCreated {
                tenant_id: Uuid::from_u128(0x7e),
                account_id: account,
                name: "shop".into(),
                pg_user: "u_shop".into(),
                pg_password: Sealed(vec![9; 40]),
            },
        },
    ];
    let mut out = Vec::new();
    for env in &envs {
        let rec = record_v1(env);
        out.extend_from_slice(&env.seq.to_be_bytes());
        out.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        out.extend_from_slice(&rec);
    }
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log-v1.bin"),
        out,
    )
    .unwrap();
}
