//! The byte format of one log record.
//!
//! ```text
//! [ format version: u8 ][ bincode 2 (standard config) of Envelope ][ crc32: u32 LE ]
//! ```
//!
//! The checksum covers the record's key (`seq`, big-endian), the version byte and the payload,
//! so a record that was torn, bit-flipped, or stored under the wrong key is caught. The
//! version byte lets the payload format change: a reader decodes every version it knows,
//! upcasting old ones to the current types, and reports any other as an error.
//!
//! ## Versions
//! - **1**: the envelope without `tenant_id`. Upcast with `tenant_id: None` (such events are
//!   then outside every tenant key's stream scope, which only ever narrows what is shown).
//! - **2** (written today): the envelope with `tenant_id`.
//!
//! New event variants are added at the end of `Event`, which keeps old payloads decodable
//! without a new version; a changed variant needs one, with its upcaster here.

use serde::Deserialize;
use uuid::Uuid;

use crate::envelope::{Actor, Envelope, Timestamp};
use crate::event::Event;

/// The format written today.
pub const FORMAT_VERSION: u8 = 2;

/// Version 1 of the envelope, as it was written before `tenant_id` existed.
#[derive(Deserialize)]
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

impl From<EnvelopeV1> for Envelope {
    fn from(v: EnvelopeV1) -> Envelope {
        Envelope {
            seq: v.seq,
            at: v.at,
            actor: v.actor,
            request_id: v.request_id,
            account: v.account,
            tenant: v.tenant,
            tenant_id: None,
            db_id: v.db_id,
            event: v.event,
        }
    }
}

const CRC_LEN: usize = 4;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The most a record's payload may claim to hold when decoded. bincode allocates what a
/// length prefix claims before it reads the bytes, so without a limit a damaged or foreign
/// record claiming exabytes aborts the process; with it, such a claim is refused before
/// anything is allocated. Every real record is far smaller (a request body is at most
/// 64 KiB, and a record holds one event).
const DECODE_LIMIT: usize = 1 << 20;

/// Why a stored record cannot be trusted. Every variant names what was found, so an operator
/// can tell a torn write from a foreign file from a codec change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {len} bytes, shorter than the smallest possible record")]
    TooShort { len: usize },
    #[error("unknown format version {found} (this build reads versions 1 to {FORMAT_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Undecodable(String),
    #[error("record stored under seq {key} says it is seq {inside}")]
    SeqMismatch { key: u64, inside: u64 },
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.update(body);
    h.finalize()
}

/// Encodes one envelope as a record stored under key `env.seq`.
pub fn encode_record(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    // Encoding into a Vec cannot fail for these types: every field is a plain value.
    bincode::serde::encode_into_std_write(env, &mut out, bincode_config())
        .expect("encoding an envelope into memory cannot fail");
    let crc = checksum(env.seq, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RecordError> {
    let config = bincode_config().with_limit::<DECODE_LIMIT>();
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(payload, config)
        .map_err(|e| RecordError::Undecodable(e.to_string()))?;
    if used != payload.len() {
        return Err(RecordError::Undecodable(format!(
            "{} trailing bytes after the envelope",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// Decodes the record stored under key `seq`, checking everything that can be checked.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<Envelope, RecordError> {
    if bytes.len() < 1 + CRC_LEN {
        return Err(RecordError::TooShort { len: bytes.len() });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
    let version = body[0];
    if version == 0 || version > FORMAT_VERSION {
        return Err(RecordError::UnknownVersion { found: version });
    }
    let stored = u32::from_le_bytes(crc_bytes.try_into().expect("split at CRC_LEN"));
    let computed = checksum(seq, body);
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    let env = match version {
        1 => decode_payload::<EnvelopeV1>(&body[1..])?.into(),
        _ => decode_payload::<Envelope>(&body[1..])?,
    };
    if env.seq != seq {
        return Err(RecordError::SeqMismatch {
            key: seq,
            inside: env.seq,
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Actor, Timestamp};
    use crate::event::{Event, KeyScope, Permissions, Sealed};
    use uuid::Uuid;

    /// One sample of every variant. `variant_index` below is an exhaustive match, so a new
    /// variant does not compile until it is given a sample here.
    fn samples() -> Vec<Event> {
        let account = Uuid::from_u128(0x1234);
        vec![
            Event::AccountCreated {
                account_id: account,
                name: "Acme Corp — ünïcode".into(),
                email: Some("ops@acme.test".into()),
            },
            Event::ApiKeyIssued {
                key_id: "0123456789abcdef".into(),
                scope: KeyScope::Tenant {
                    account,
                    tenant: Uuid::from_u128(7),
                },
                permissions: Permissions::ALL,
                secret_hash: [0xab; 32],
                expires_at: Some(Timestamp(1_790_000_000_000_000)),
                name: None,
            },
            Event::ServiceTokenSet {
                secret_hash: [1; 32],
            },
            Event::AccountContactSet {
                account_id: account,
                email: "a@b.io".into(),
                name: Some("Ada".into()),
            },
            Event::AccountDeleteRequested {
                account_id: account,
            },
            Event::AccountDeleted {
                account_id: account,
            },
            Event::ApiKeyRotated {
                key_id: "k".into(),
                secret_hash: [9; 32],
            },
            Event::ApiKeyRevoked { key_id: "k".into() },
            Event::TenantCreated {
                tenant_id: Uuid::from_u128(7),
                account_id: account,
                name: "shop".into(),
                pg_user: "u_shop".into(),
                pg_password: Sealed(vec![1, 2, 3]),
            },
            Event::TenantDeleteRequested {
                tenant_id: Uuid::from_u128(7),
            },
            Event::TenantDeleted {
                tenant_id: Uuid::from_u128(7),
            },
            Event::DbCreated {
                db_id: Uuid::from_u128(8),
                tenant_id: Uuid::from_u128(7),
                name: "app".into(),
                size: "L1".into(),
                timeline: "0123abcd".into(),
            },
            Event::DbDeleteRequested {
                db_id: Uuid::from_u128(8),
            },
            Event::DbDeleted {
                db_id: Uuid::from_u128(8),
            },
            Event::IdempotentResponseRecorded {
                key_id: "k".into(),
                idempotency_key: "retry-1".into(),
                request_hash: [5; 32],
                status: 201,
                body: Sealed(vec![0; 40]),
            },
            Event::WorkerRegistered {
                worker_id: "w-1".into(),
                address: "10.0.0.5:6432".into(),
                capacity: 64,
                profiles: vec!["c0.25".into(), "c1".into()],
                instance: "i-1".into(),
            },
            Event::WorkerLost {
                worker_id: "w-1".into(),
                reason: "no heartbeat".into(),
            },
            Event::DbStartRequested {
                db_id: Uuid::from_u128(8),
                worker_id: "w-1".into(),
                profile: "c0.25".into(),
                writer_term: 1,
                deadline: Timestamp(9),
            },
            Event::DbStarted {
                db_id: Uuid::from_u128(8),
                backend_addr: "10.0.0.5:6432".into(),
            },
            Event::DbStartFailed {
                db_id: Uuid::from_u128(8),
                reason: "disk full".into(),
                give_up: false,
                retire: true,
            },
            Event::DbStopRequested {
                db_id: Uuid::from_u128(8),
                reason: "idle".into(),
                deadline: Timestamp(9),
            },
            Event::DbStopped {
                db_id: Uuid::from_u128(8),
                reason: "idle".into(),
                retire: false,
            },
            Event::LeaseGranted {
                lease_id: Uuid::from_u128(9),
                db_id: Uuid::from_u128(8),
                lease_control_epoch: 1,
                ttl_ms: 30_000,
            },
            Event::LeaseReleased {
                lease_id: Uuid::from_u128(9),
            },
            Event::LeaseExpired {
                lease_id: Uuid::from_u128(9),
            },
            Event::DbLoadChanged {
                db_id: Uuid::from_u128(8),
                cpu_milli: 900,
                active_connections: 4,
                band: crate::event::LoadBand::High,
            },
            Event::DbScaleStarted {
                db_id: Uuid::from_u128(8),
                target_profile: "c0.5".into(),
                candidate_worker_id: "w-2".into(),
                candidate_writer_term: 2,
                deadline: Timestamp(9),
            },
            Event::DbScaleCutoverStarted {
                db_id: Uuid::from_u128(8),
                lease_control_epoch: 2,
                deadline: Timestamp(9),
            },
            Event::DbScaleCompleted {
                db_id: Uuid::from_u128(8),
                backend_addr: "10.0.0.6:6432".into(),
                cooldown_until: Timestamp(9),
            },
            Event::DbScaleFailed {
                db_id: Uuid::from_u128(8),
                reason: "candidate failed".into(),
                cooldown_until: Timestamp(9),
            },
            Event::WriterRetired {
                db_id: Uuid::from_u128(8),
                worker_id: "w-1".into(),
                writer_term: 1,
            },
            Event::TenantVerifierSet {
                tenant_id: Uuid::from_u128(7),
                verifier: Sealed(vec![4; 20]),
            },
            Event::TenantPasswordReset {
                tenant_id: Uuid::from_u128(7),
                pg_password: Sealed(vec![5; 20]),
                verifier: Sealed(vec![6; 20]),
            },
            Event::DbDataPlaced {
                db_id: Uuid::from_u128(8),
                worker_id: "w-1".into(),
            },
            Event::DbDataDestroyed {
                db_id: Uuid::from_u128(8),
                worker_id: "w-1".into(),
            },
            Event::DbRoleUpdated {
                db_id: Uuid::from_u128(8),
                writer_term: 2,
                credentials: 1,
            },
            Event::DbBackupRequested {
                db_id: Uuid::from_u128(8),
                writer_term: 2,
            },
            Event::DbBackupCompleted {
                db_id: Uuid::from_u128(8),
                timeline: "tl8".into(),
                label: "20261204-120000F".into(),
                started_at: Timestamp(1_763_000_000_000_000),
                stopped_at: Timestamp(1_763_000_003_000_000),
                oldest_at: Timestamp(1_762_000_000_000_000),
                repository_bytes: 5 << 20,
            },
            Event::DbBackupFailed {
                db_id: Uuid::from_u128(8),
                reason: "repository unreachable".into(),
                retry_at: Timestamp(1_763_000_060_000_000),
            },
            Event::DbStored {
                db_id: Uuid::from_u128(8),
                complete: true,
                recoverable_until: Some(Timestamp(1_763_000_010_000_000)),
                reason: None,
            },
            Event::DbArchiveFailed {
                db_id: Uuid::from_u128(8),
                reason: "no space".into(),
            },
            Event::DbArchiveRecovered {
                db_id: Uuid::from_u128(8),
            },
            Event::DbRestoreRequested {
                db_id: Uuid::from_u128(8),
                time: Some(Timestamp(1_763_000_005_000_000)),
                lsn: None,
                timeline: "tl9".into(),
                kept_db_id: Uuid::from_u128(9),
                kept_name: "app_before_restore_1".into(),
            },
            Event::DbRestoreStarted {
                db_id: Uuid::from_u128(8),
                worker_id: "w-1".into(),
                profile: "c0.25".into(),
                writer_term: 3,
                deadline: Timestamp(1_763_000_065_000_000),
            },
            Event::DbRestored {
                db_id: Uuid::from_u128(8),
            },
            Event::DbPurged {
                db_id: Uuid::from_u128(8),
                timeline: "tl8".into(),
            },
            Event::DbBranched {
                db_id: Uuid::from_u128(9),
                tenant_id: Uuid::from_u128(7),
                name: "app_dev".into(),
                size: "L1".into(),
                timeline: "tl9".into(),
                parent_db_id: Uuid::from_u128(8),
                parent_timeline: Some("tl8".into()),
                at: Timestamp(9),
                time: None,
            },
            Event::DbReset {
                db_id: Uuid::from_u128(9),
                timeline: "tl10".into(),
                parent_timeline: "tl8".into(),
                kept_db_id: Uuid::from_u128(11),
                kept_name: "app_dev_before_reset_1".into(),
            },
            Event::DbHaSet {
                db_id: Uuid::from_u128(8),
                enabled: true,
            },
            Event::DbStandbyRequested {
                db_id: Uuid::from_u128(8),
                worker_id: "w2".into(),
                profile: "c1".into(),
                standby_term: 5,
                deadline: Timestamp(10),
            },
            Event::DbStandbyStarted {
                db_id: Uuid::from_u128(8),
                standby_term: 5,
            },
            Event::DbStandbyReady {
                db_id: Uuid::from_u128(8),
                standby_term: 5,
                lag_bytes: 128,
            },
            Event::DbReplicationSet {
                db_id: Uuid::from_u128(8),
                writer_term: 4,
                standby_term: Some(5),
            },
            Event::DbUnprotected {
                db_id: Uuid::from_u128(8),
                reason: "the standby stopped streaming".into(),
            },
            Event::DbStandbyLost {
                db_id: Uuid::from_u128(8),
                standby_term: 5,
                reason: "its worker was lost".into(),
                retry_at: Timestamp(11),
            },
            Event::DbFailoverStarted {
                db_id: Uuid::from_u128(8),
                old_writer_term: 4,
                worker_id: "w2".into(),
                standby_term: 5,
                lease_control_epoch: 3,
                deadline: Timestamp(12),
                reason: "worker w1 lost".into(),
            },
            Event::DbPromoted {
                db_id: Uuid::from_u128(8),
                writer_term: 5,
                backend_addr: "10.0.0.2:6000".into(),
            },
        ]
    }

    fn variant_index(e: &Event) -> usize {
        match e {
            Event::AccountCreated { .. } => 0,
            Event::ApiKeyIssued { .. } => 1,
            Event::ServiceTokenSet { .. } => 2,
            Event::AccountContactSet { .. } => 3,
            Event::AccountDeleteRequested { .. } => 4,
            Event::AccountDeleted { .. } => 5,
            Event::ApiKeyRotated { .. } => 6,
            Event::ApiKeyRevoked { .. } => 7,
            Event::TenantCreated { .. } => 8,
            Event::TenantDeleteRequested { .. } => 9,
            Event::TenantDeleted { .. } => 10,
            Event::DbCreated { .. } => 11,
            Event::DbDeleteRequested { .. } => 12,
            Event::DbDeleted { .. } => 13,
            Event::IdempotentResponseRecorded { .. } => 14,
            Event::WorkerRegistered { .. } => 15,
            Event::WorkerLost { .. } => 16,
            Event::DbStartRequested { .. } => 17,
            Event::DbStarted { .. } => 18,
            Event::DbStartFailed { .. } => 19,
            Event::DbStopRequested { .. } => 20,
            Event::DbStopped { .. } => 21,
            Event::LeaseGranted { .. } => 22,
            Event::LeaseReleased { .. } => 23,
            Event::LeaseExpired { .. } => 24,
            Event::DbLoadChanged { .. } => 25,
            Event::DbScaleStarted { .. } => 26,
            Event::DbScaleCutoverStarted { .. } => 27,
            Event::DbScaleCompleted { .. } => 28,
            Event::DbScaleFailed { .. } => 29,
            Event::WriterRetired { .. } => 30,
            Event::TenantVerifierSet { .. } => 31,
            Event::TenantPasswordReset { .. } => 32,
            Event::DbDataPlaced { .. } => 33,
            Event::DbDataDestroyed { .. } => 34,
            Event::DbRoleUpdated { .. } => 35,
            Event::DbBackupRequested { .. } => 36,
            Event::DbBackupCompleted { .. } => 37,
            Event::DbBackupFailed { .. } => 38,
            Event::DbStored { .. } => 39,
            Event::DbArchiveFailed { .. } => 40,
            Event::DbArchiveRecovered { .. } => 41,
            Event::DbRestoreRequested { .. } => 42,
            Event::DbRestoreStarted { .. } => 43,
            Event::DbRestored { .. } => 44,
            Event::DbPurged { .. } => 45,
            Event::DbBranched { .. } => 46,
            Event::DbReset { .. } => 47,
            Event::DbHaSet { .. } => 48,
            Event::DbStandbyRequested { .. } => 49,
            Event::DbStandbyStarted { .. } => 50,
            Event::DbStandbyReady { .. } => 51,
            Event::DbReplicationSet { .. } => 52,
            Event::DbUnprotected { .. } => 53,
            Event::DbStandbyLost { .. } => 54,
            Event::DbFailoverStarted { .. } => 55,
            Event::DbPromoted { .. } => 56,
        }
    }
    const VARIANTS: usize = 57;

    /// Every variant's sample, as the envelopes of seq 1, 2, ...
    pub(super) fn sample_envelopes() -> Vec<Envelope> {
        samples()
            .into_iter()
            .enumerate()
            .map(|(i, e)| envelope(i as u64 + 1, e))
            .collect()
    }

    fn envelope(seq: u64, event: Event) -> Envelope {
        Envelope {
            seq,
            at: Timestamp(1_763_000_000_123_456),
            actor: Actor::ApiKey("0123456789abcdef".into()),
            request_id: "req-1".into(),
            account: Some(Uuid::from_u128(0x1234)),
            tenant: Some("shop".into()),
            tenant_id: Some(Uuid::from_u128(7)),
            db_id: None,
            event,
        }
    }

    #[test]
    fn every_variant_round_trips() {
        let samples = samples();
        let mut seen = [false; VARIANTS];
        for (i, event) in samples.into_iter().enumerate() {
            seen[variant_index(&event)] = true;
            let env = envelope(i as u64 + 1, event);
            let bytes = encode_record(&env);
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(decode_record(env.seq, &bytes), Ok(env));
        }
        assert!(seen.iter().all(|s| *s), "a variant has no sample: {seen:?}");
        let mut names: Vec<&str> = self::samples().iter().map(Event::type_name).collect();
        let mut listed = Event::TYPE_NAMES.to_vec();
        names.sort_unstable();
        listed.sort_unstable();
        assert_eq!(names, listed, "Event::TYPE_NAMES lists every type once");
    }

    #[test]
    fn every_actor_round_trips() {
        for actor in [Actor::ApiKey("k".into()), Actor::Service, Actor::System] {
            let mut env = envelope(9, samples().remove(0));
            env.actor = actor;
            assert_eq!(decode_record(9, &encode_record(&env)), Ok(env));
        }
    }

    /// A log written by version 1 (stored in `tests/fixtures/log-v1.bin`: records as
    /// `seq: u64 BE ‖ len: u32 BE ‖ record`) still reads, upcast to today's envelope.
    #[test]
    fn a_version_1_log_is_upcast() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/log-v1.bin"
        ))
        .expect("fixture");
        let mut rest = &bytes[..];
        let mut envs = Vec::new();
        while !rest.is_empty() {
            let seq = u64::from_be_bytes(rest[..8].try_into().unwrap());
            let len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            let record = &rest[12..12 + len];
            assert_eq!(record[0], 1, "the fixture holds version 1 records");
            envs.push(decode_record(seq, record).expect("a version 1 record decodes"));
            rest = &rest[12 + len..];
        }
        assert_eq!(envs.len(), 3);
        assert!(envs.iter().all(|e| e.tenant_id.is_none()));
        assert_eq!(envs[2].tenant.as_deref(), Some("shop"));
        assert!(matches!(envs[2].event, Event::TenantCreated { ref name, .. } if name == "shop"));
        // And a version 1 record with a flipped bit is still caught.
        let mut bad =
            bytes[12..12 + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize].to_vec();
        bad[5] ^= 1;
        assert!(decode_record(1, &bad).is_err());
    }

    #[test]
    fn unknown_version_is_reported() {
        let mut bytes = encode_record(&envelope(3, samples().remove(0)));
        bytes[0] = 200;
        assert_eq!(
            decode_record(3, &bytes),
            Err(RecordError::UnknownVersion { found: 200 })
        );
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let bytes = encode_record(&envelope(5, samples().remove(1)));
        for i in 1..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_record(5, &bad).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn record_under_the_wrong_key_is_caught() {
        let bytes = encode_record(&envelope(5, samples().remove(2)));
        assert!(matches!(
            decode_record(6, &bytes),
            Err(RecordError::BadChecksum { .. })
        ));
    }

    #[test]
    fn torn_records_are_errors_not_panics() {
        let bytes = encode_record(&envelope(5, samples().remove(1)));
        for len in 0..bytes.len() {
            assert!(decode_record(5, &bytes[..len]).is_err(), "prefix of {len}");
        }
    }
}

/// The decoder against bytes nobody wrote: any input gives a record or an error, never a
/// panic, and never an allocation out of proportion to the input (a length prefix is not
/// believed beyond the bytes that follow it).
#[cfg(test)]
mod fuzz {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;

    /// Notes the largest single allocation made on a thread while it is armed (per thread:
    /// tests run side by side).
    struct Probe;
    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }
    fn note(size: usize) {
        if ARMED.with(Cell::get) {
            LARGEST.with(|l| l.set(l.get().max(size)));
        }
    }
    // SAFETY: every call goes to the system allocator unchanged.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            note(l.size());
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            note(l.size());
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
            note(size);
            unsafe { System.realloc(p, l, size) }
        }
    }
    #[global_allocator]
    static GLOBAL: Probe = Probe;

    /// `f` run with the probe armed: its result and the largest allocation it made.
    fn probed<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        ARMED.with(|a| a.set(true));
        let out = f();
        ARMED.with(|a| a.set(false));
        (out, LARGEST.with(Cell::get))
    }

    /// A record around `payload` that passes every check before the payload's decoding.
    fn framed(seq: u64, version: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![version];
        body.extend_from_slice(payload);
        let crc = checksum(seq, &body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn the_probe_sees_what_is_allocated() {
        let (v, largest) = probed(|| vec![1u8; 3 << 20]);
        assert_eq!(v.len(), 3 << 20);
        assert!(largest >= 3 << 20, "{largest}");
    }

    /// A huge length claimed after any number of small fields: refused, nothing allocated
    /// for it. (Without the decode limit one of these aborted the process.)
    #[test]
    fn a_huge_claimed_length_anywhere_is_refused_without_allocating_it() {
        for zeros in 0..48 {
            for claimed in [4_094_248_247_714_442_532u64, u64::MAX, 1 << 40, 1 << 21] {
                let mut payload = vec![0u8; zeros];
                payload.push(253);
                payload.extend_from_slice(&claimed.to_le_bytes());
                let record = framed(1, FORMAT_VERSION, &payload);
                let (decoded, largest) = probed(|| decode_record(1, &record));
                assert!(decoded.is_err());
                assert!(largest <= 64 * 1024, "{largest} bytes after {zeros} zeros");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_bytes_are_a_record_or_an_error(seq: u64, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record(seq, &bytes);
        }

        #[test]
        fn any_payload_behind_a_good_checksum_decodes_or_is_refused_within_bounds(
            seq: u64,
            version in 1u8..=FORMAT_VERSION,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let record = framed(seq, version, &payload);
            let (_, largest) = probed(|| decode_record(seq, &record));
            prop_assert!(largest <= 64 * 1024 + 8 * record.len(), "{largest} bytes for a {}-byte record", record.len());
        }

        // (It once aborted the process: bincode allocated 4 EB for a claimed length.)
        #[test]
        fn a_length_prefix_claiming_more_than_follows_is_not_believed(
            seq: u64,
            claimed in (1u64 << 20)..u64::MAX,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // Varint-coded (bincode's standard) huge lengths at the head of the payload, where
            // the envelope's first sequence or string would be.
            let mut payload = vec![253u8];
            payload.extend_from_slice(&claimed.to_le_bytes());
            payload.extend_from_slice(&tail);
            let record = framed(seq, FORMAT_VERSION, &payload);
            let (decoded, largest) = probed(|| decode_record(seq, &record));
            prop_assert!(decoded.is_err());
            prop_assert!(largest <= 64 * 1024, "{largest} bytes allocated for a claimed {claimed}");
        }

        #[test]
        fn a_damaged_record_never_decodes_as_another(
            i in 0usize..10_000,
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<proptest::sample::Index>(),
        ) {
            let samples = tests::sample_envelopes();
            let env = &samples[i % samples.len()];
            let mut bytes = encode_record(env);
            let k = at.index(bytes.len());
            bytes[k] ^= flip;
            prop_assert!(decode_record(env.seq, &bytes).is_err(), "a flipped byte went unnoticed");
            let good = encode_record(env);
            let short = &good[..cut.index(good.len())];
            prop_assert!(decode_record(env.seq, short).is_err(), "a torn record decoded");
        }
    }
}
