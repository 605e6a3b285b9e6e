//! The event stream: the log itself, as Server-Sent Events, filtered to what a key may see.
//!
//! One task per subscriber:
//!
//! ```text
//! subscribe to the committer's feed ──▶ (snapshot of the state, if asked) ──▶ loop:
//!     1. catch up from the log, from `next` to the durable head, in chunks; a bookmark
//!     2. wait for the next published batch, a bookmark tick, or the client leaving
//!        - a batch: send its events from `next` on; a gap (missed batches) → back to 1
//!        - lagged behind the feed's buffer → back to 1 (the log has everything)
//! ```
//!
//! The following part is [`Follower`], which the snapshotter uses too.
//!
//! Subscribing before reading history means nothing falls between the two; de-duplicating by
//! `seq` (`next`) means nothing comes twice. Sends wait for the client (a bounded channel):
//! a slow client slows only its own task, which falls behind the feed and later reads from
//! the log; the committer never waits for anyone. Reads never go past the durable head, so no
//! event is shown before it is on the device.

use std::sync::Arc;
use std::time::Duration;

use actix_web_lab::sse;
use serde_json::{json, Value};
use spg99_events::{Actor, Envelope, Event, KeyScope};
use spg99_projections::State;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::committer::Shared;
use crate::http::rfc3339;
use crate::log::Log;
use crate::routes::{accounts::AccountView, dbs::DbView, tenants::TenantView};

/// How often a `bookmark` frame carries the head, so that a filtered client's resume point
/// moves on even when nothing passes its filter.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Records read from the log per step of a catch-up.
const CATCH_UP_CHUNK: usize = 256;
/// Frames queued for one client before its task waits.
pub const CLIENT_BUFFER: usize = 256;

/// What one subscriber receives: the key's scope intersected with its filters.
#[derive(Debug, Clone)]
pub struct Filter {
    pub scope: KeyScope,
    /// The key's id, so that the stream ends when the key is revoked.
    pub key_id: String,
    pub tenant: Option<String>,
    pub db: Option<Uuid>,
    pub types: Option<Vec<&'static str>>,
}

impl Filter {
    /// An operator's filter: every event, narrowed only by the given filters.
    pub fn operator(
        tenant: Option<String>,
        db: Option<Uuid>,
        types: Option<Vec<&'static str>>,
    ) -> Filter {
        Filter {
            scope: KeyScope::Global,
            key_id: String::new(),
            tenant,
            db,
            types,
        }
    }

    fn in_scope(&self, env: &Envelope) -> bool {
        match self.scope {
            KeyScope::Global => true,
            KeyScope::Account(a) => env.account == Some(a),
            KeyScope::Tenant { tenant, .. } => env.tenant_id == Some(tenant),
        }
    }

    pub fn matches(&self, env: &Envelope) -> bool {
        self.in_scope(env)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| env.tenant.as_ref() == Some(t))
            && self.db.is_none_or(|d| env.db_id == Some(d))
            && self
                .types
                .as_ref()
                .is_none_or(|ts| ts.contains(&env.event.type_name()))
    }
}

fn actor(a: &Actor) -> String {
    match a {
        Actor::ApiKey(id) => id.clone(),
        Actor::Service => "service".into(),
        Actor::System => "system".into(),
    }
}

/// The event's own data, as the stream shows it: no secret, no hash, no sealed value.
fn event_data(event: &Event) -> Value {
    match event {
        Event::AccountCreated {
            account_id,
            name,
            email,
        } => json!({"account_id": account_id, "name": name, "email": email}),
        Event::AccountContactSet {
            account_id,
            email,
            name,
        } => json!({"account_id": account_id, "email": email, "name": name}),
        Event::AccountDeleteRequested { account_id } | Event::AccountDeleted { account_id } => {
            json!({ "account_id": account_id })
        }
        Event::ApiKeyIssued {
            key_id,
            scope,
            permissions,
            expires_at,
            name,
            secret_hash: _,
        } => {
            let (scope, tenant_id) = match scope {
                KeyScope::Global => ("global", None),
                KeyScope::Account(_) => ("account", None),
                KeyScope::Tenant { tenant, .. } => ("tenant", Some(*tenant)),
            };
            json!({
                "key_id": key_id, "scope": scope, "tenant_id": tenant_id, "name": name,
                "expires_at": expires_at.map(rfc3339),
                "permissions": {
                    "can_create_tenant": permissions.can_create_tenant,
                    "can_create_db": permissions.can_create_db,
                    "can_scale": permissions.can_scale,
                    "can_delete": permissions.can_delete,
                },
            })
        }
        Event::ApiKeyRotated { key_id, .. } | Event::ApiKeyRevoked { key_id } => {
            json!({ "key_id": key_id })
        }
        Event::ServiceTokenSet { .. } => json!({}),
        Event::TenantCreated {
            tenant_id,
            account_id,
            name,
            pg_user,
            pg_password: _,
        } => {
            json!({"tenant_id": tenant_id, "account_id": account_id, "name": name, "pg_user": pg_user})
        }
        Event::TenantDeleteRequested { tenant_id } | Event::TenantDeleted { tenant_id } => {
            json!({ "tenant_id": tenant_id })
        }
        Event::DbCreated {
            db_id,
            tenant_id,
            name,
            size,
            timeline,
        } => json!({
            "db_id": db_id, "tenant_id": tenant_id, "name": name, "size": size,
            "timeline": timeline, "state": "stopped",
        }),
        Event::DbBranched {
            db_id,
            tenant_id,
            name,
            size,
            timeline,
            parent_db_id,
            at,
            time,
            ..
        } => json!({
            "db_id": db_id, "tenant_id": tenant_id, "name": name, "size": size,
            "timeline": timeline, "state": "stopped", "parent_db_id": parent_db_id,
            "parent_at": rfc3339(*at), "from_repository_at": time.map(rfc3339),
        }),
        Event::DbReset {
            db_id,
            timeline,
            kept_db_id,
            kept_name,
            ..
        } => json!({
            "db_id": db_id, "state": "restoring", "timeline": timeline,
            "kept_db_id": kept_db_id, "kept_name": kept_name,
        }),
        Event::DbDeleteRequested { db_id } | Event::DbDeleted { db_id } => {
            json!({ "db_id": db_id })
        }
        Event::DbHaSet { db_id, enabled } => json!({ "db_id": db_id, "ha": enabled }),
        Event::DbStandbyRequested {
            db_id,
            worker_id,
            profile,
            standby_term,
            deadline,
        } => json!({
            "db_id": db_id, "standby_state": "building", "standby_worker_id": worker_id,
            "standby_profile": profile, "standby_writer_term": standby_term,
            "standby_deadline_at": rfc3339(*deadline),
        }),
        Event::DbStandbyStarted {
            db_id,
            standby_term,
        } => json!({
            "db_id": db_id, "standby_state": "catching_up", "standby_writer_term": standby_term,
        }),
        Event::DbStandbyReady {
            db_id,
            standby_term,
            lag_bytes,
        } => json!({
            "db_id": db_id, "standby_state": "streaming", "standby_writer_term": standby_term,
            "replication_lag_bytes": lag_bytes,
        }),
        Event::DbReplicationSet {
            db_id,
            writer_term,
            standby_term,
        } => json!({
            "db_id": db_id, "writer_term": writer_term, "sync_standby_writer_term": standby_term,
        }),
        Event::DbUnprotected { db_id, reason } => {
            json!({ "db_id": db_id, "ha_protected": false, "ha_unprotected_reason": reason })
        }
        Event::DbStandbyLost {
            db_id,
            standby_term,
            reason,
            retry_at,
        } => json!({
            "db_id": db_id, "standby_state": "none", "standby_writer_term": standby_term,
            "ha_protected": false, "ha_unprotected_reason": reason,
            "standby_retry_at": rfc3339(*retry_at),
        }),
        Event::DbFailoverStarted {
            db_id,
            old_writer_term,
            worker_id,
            standby_term,
            lease_control_epoch,
            deadline,
            reason,
        } => json!({
            "db_id": db_id, "state": "starting", "old_writer_term": old_writer_term,
            "worker_id": worker_id, "writer_term": standby_term,
            "lease_control_epoch": lease_control_epoch, "phase_deadline_at": rfc3339(*deadline),
            "reason": reason,
        }),
        Event::DbPromoted {
            db_id,
            writer_term,
            backend_addr,
        } => json!({
            "db_id": db_id, "writer_term": writer_term, "backend_addr": backend_addr,
        }),
        Event::IdempotentResponseRecorded {
            key_id,
            idempotency_key,
            status,
            ..
        } => json!({"key_id": key_id, "idempotency_key": idempotency_key, "status": status}),
        Event::WorkerRegistered {
            worker_id,
            address,
            capacity,
            profiles,
            instance,
        } => json!({
            "worker_id": worker_id, "address": address, "capacity": capacity,
            "profiles": profiles, "instance": instance,
        }),
        Event::WorkerLost { worker_id, reason } => {
            json!({ "worker_id": worker_id, "reason": reason })
        }
        Event::DbStartRequested {
            db_id,
            worker_id,
            profile,
            writer_term,
            deadline,
        } => json!({
            "db_id": db_id, "state": "starting", "worker_id": worker_id, "profile": profile,
            "writer_term": writer_term, "deadline_at": rfc3339(*deadline),
        }),
        Event::DbStarted {
            db_id,
            backend_addr,
        } => json!({ "db_id": db_id, "state": "running", "backend_addr": backend_addr }),
        Event::DbStartFailed {
            db_id,
            reason,
            give_up,
            ..
        } => json!({
            "db_id": db_id, "state": if *give_up { "failed" } else { "stopped" }, "reason": reason,
        }),
        Event::DbStopRequested {
            db_id,
            reason,
            deadline,
        } => json!({
            "db_id": db_id, "state": "stopping", "reason": reason,
            "deadline_at": rfc3339(*deadline),
        }),
        Event::DbStopped { db_id, reason, .. } => {
            json!({ "db_id": db_id, "state": "stopped", "reason": reason })
        }
        Event::LeaseGranted {
            lease_id,
            db_id,
            lease_control_epoch,
            ttl_ms,
        } => json!({
            "lease_id": lease_id, "db_id": db_id, "lease_control_epoch": lease_control_epoch,
            "lease_ttl_ms": ttl_ms,
        }),
        Event::LeaseReleased { lease_id } | Event::LeaseExpired { lease_id } => {
            json!({ "lease_id": lease_id })
        }
        Event::DbLoadChanged {
            db_id,
            cpu_milli,
            active_connections,
            band,
        } => json!({
            "db_id": db_id, "cpu": f64::from(*cpu_milli) / 1000.0,
            "active_connections": active_connections, "band": band.as_str(),
        }),
        Event::DbScaleStarted {
            db_id,
            target_profile,
            candidate_worker_id,
            candidate_writer_term,
            deadline,
        } => json!({
            "db_id": db_id, "scale_state": "PREPARING_CANDIDATE",
            "target_profile": target_profile, "candidate_profile": target_profile,
            "candidate_worker_id": candidate_worker_id,
            "candidate_writer_term": candidate_writer_term,
            "scale_phase_deadline_at": rfc3339(*deadline),
        }),
        Event::DbScaleCutoverStarted {
            db_id,
            lease_control_epoch,
            deadline,
        } => json!({
            "db_id": db_id, "scale_state": "CUTOVER", "freeze_new_checkouts": true,
            "lease_control_epoch": lease_control_epoch,
            "scale_phase_deadline_at": rfc3339(*deadline),
        }),
        Event::DbScaleCompleted {
            db_id,
            backend_addr,
            cooldown_until,
        } => json!({
            "db_id": db_id, "scale_state": "STABLE", "freeze_new_checkouts": false,
            "backend_addr": backend_addr,
            "autoscale_cooldown_until": rfc3339(*cooldown_until),
        }),
        Event::DbScaleFailed {
            db_id,
            reason,
            cooldown_until,
        } => json!({
            "db_id": db_id, "scale_state": "FAILED", "freeze_new_checkouts": false,
            "scale_failure_reason": reason,
            "autoscale_cooldown_until": rfc3339(*cooldown_until),
        }),
        Event::WriterRetired {
            db_id,
            worker_id,
            writer_term,
        } => json!({ "db_id": db_id, "worker_id": worker_id, "writer_term": writer_term }),
        Event::TenantVerifierSet { tenant_id, .. }
        | Event::TenantPasswordReset { tenant_id, .. } => {
            json!({ "tenant_id": tenant_id })
        }
        Event::DbDataPlaced { db_id, worker_id } | Event::DbDataDestroyed { db_id, worker_id } => {
            json!({ "db_id": db_id, "worker_id": worker_id })
        }
        Event::DbRoleUpdated {
            db_id,
            writer_term,
            credentials,
        } => json!({ "db_id": db_id, "writer_term": writer_term, "credentials": credentials }),
        Event::DbBackupRequested { db_id, writer_term } => {
            json!({ "db_id": db_id, "writer_term": writer_term })
        }
        Event::DbBackupCompleted {
            db_id,
            timeline,
            label,
            started_at,
            stopped_at,
            oldest_at,
            repository_bytes,
        } => json!({
            "db_id": db_id, "timeline": timeline, "label": label,
            "started_at": rfc3339(*started_at), "last_backup_at": rfc3339(*stopped_at),
            "history_start_at": rfc3339(*oldest_at), "storage_bytes": repository_bytes,
        }),
        Event::DbBackupFailed {
            db_id,
            reason,
            retry_at,
        } => json!({ "db_id": db_id, "reason": reason, "retry_at": rfc3339(*retry_at) }),
        Event::DbStored {
            db_id,
            complete,
            recoverable_until,
            reason,
        } => json!({
            "db_id": db_id, "complete": complete,
            "recoverable_until": recoverable_until.map(rfc3339), "reason": reason,
        }),
        Event::DbArchiveFailed { db_id, reason } => {
            json!({ "db_id": db_id, "storage_warning": reason })
        }
        Event::DbArchiveRecovered { db_id } | Event::DbRestored { db_id } => {
            json!({ "db_id": db_id })
        }
        Event::DbRestoreRequested {
            db_id,
            time,
            lsn,
            timeline,
            kept_db_id,
            kept_name,
        } => json!({
            "db_id": db_id, "state": "restoring", "at": time.map(rfc3339), "lsn": lsn,
            "timeline": timeline, "kept_db_id": kept_db_id, "kept_name": kept_name,
        }),
        Event::DbRestoreStarted {
            db_id,
            worker_id,
            profile,
            writer_term,
            deadline,
        } => json!({
            "db_id": db_id, "worker_id": worker_id, "profile": profile,
            "writer_term": writer_term, "phase_deadline_at": rfc3339(*deadline),
        }),
        Event::DbPurged { db_id, timeline } => json!({ "db_id": db_id, "timeline": timeline }),
    }
}

/// The JSON envelope of one event.
pub fn envelope_json(env: &Envelope) -> Value {
    json!({
        "seq": env.seq,
        "at": rfc3339(env.at),
        "type": env.event.type_name(),
        "actor": actor(&env.actor),
        "request_id": env.request_id,
        "account": env.account,
        "tenant": env.tenant,
        "tenant_id": env.tenant_id,
        "db_id": env.db_id,
        "data": event_data(&env.event),
    })
}

fn frame(env: &Envelope) -> sse::Event {
    sse::Data::new(envelope_json(env).to_string())
        .id(env.seq.to_string())
        .event(env.event.type_name())
        .into()
}

/// `event: bookmark`, `id: seq`: everything up to `seq` was considered.
pub fn bookmark(seq: u64) -> sse::Event {
    sse::Data::new(json!({ "seq": seq }).to_string())
        .id(seq.to_string())
        .event("bookmark")
        .into()
}

/// The current state of every object the filter lets through, as synthetic events
/// (`snapshot.account`, `snapshot.tenant`, `snapshot.db`, without ids), then a bookmark at
/// the seq the snapshot reflects. Returns the frames and that seq.
pub fn snapshot(state: &State, filter: &Filter) -> (Vec<sse::Event>, u64) {
    let seq = state.last_seq;
    let synthetic = |kind: &str, data: Value| -> sse::Event {
        sse::Data::new(json!({"type": kind, "seq": seq, "data": data}).to_string())
            .event(kind.to_owned())
            .into()
    };
    let mut frames = Vec::new();
    if filter.tenant.is_none() && filter.db.is_none() {
        for a in state.accounts.values() {
            let visible = match filter.scope {
                KeyScope::Global => true,
                KeyScope::Account(id) | KeyScope::Tenant { account: id, .. } => a.id == id,
            };
            if visible {
                let view = serde_json::to_value(AccountView::from(&**a)).unwrap_or_default();
                frames.push(synthetic("snapshot.account", view));
            }
        }
    }
    // By name, like the lists.
    for t in state
        .tenants_by_name
        .values()
        .filter_map(|id| state.tenants.get(id))
    {
        let visible = match filter.scope {
            KeyScope::Global => true,
            KeyScope::Account(a) => t.account == a,
            KeyScope::Tenant { tenant, .. } => t.id == tenant,
        };
        if !visible || filter.tenant.as_ref().is_some_and(|n| *n != t.name) {
            continue;
        }
        if filter.db.is_none() {
            let view = serde_json::to_value(TenantView::new(state, t)).unwrap_or_default();
            frames.push(synthetic("snapshot.tenant", view));
        }
        for d in state.dbs_of(t.id) {
            if filter.db.is_none_or(|id| id == d.id) {
                let view = serde_json::to_value(DbView::of(state, t, d)).unwrap_or_default();
                frames.push(synthetic("snapshot.db", view));
            }
        }
    }
    frames.push(bookmark(seq));
    (frames, seq)
}

/// Events from a [`Follower`]: a slice of one batch, shared, not copied.
pub struct Chunk {
    batch: Arc<[Envelope]>,
    start: usize,
    /// Read from the log (catching up), rather than taken from the live feed.
    pub from_log: bool,
}

impl Chunk {
    pub fn events(&self) -> &[Envelope] {
        &self.batch[self.start..]
    }
}

/// Follows the durable log in order from a seq: from the committer's live feed while it keeps
/// up, from the log when it starts behind or falls behind. Never past the durable head.
pub struct Follower {
    feed: tokio::sync::broadcast::Receiver<Arc<[Envelope]>>,
    next: u64,
}

impl Follower {
    /// Subscribe (`feed`) before reading anything else, so that nothing falls in between.
    pub fn new(feed: tokio::sync::broadcast::Receiver<Arc<[Envelope]>>, after: u64) -> Self {
        Follower {
            feed,
            next: after.saturating_add(1),
        }
    }

    /// The seq of the last event handed out.
    pub fn position(&self) -> u64 {
        self.next - 1
    }

    /// The next events in seq order (possibly none, after a gap or a lag); `None` once the
    /// committer has stopped or the log cannot be read.
    pub async fn next(&mut self, shared: &Shared, log: &Arc<Log>) -> Option<Chunk> {
        let head = shared.head();
        if self.next <= head {
            let want = ((head - self.next + 1) as usize).min(CATCH_UP_CHUNK);
            // On a blocking thread: a read may wait on the disk or on the log's database.
            let (log, from) = (log.clone(), self.next);
            let reading = &crate::metrics::get().catching_up;
            reading.inc();
            let read = tokio::task::spawn_blocking(move || {
                log.read_from(from)
                    .take(want)
                    .collect::<Result<Vec<Envelope>, _>>()
            })
            .await;
            reading.dec();
            let Ok(read) = read else { return None };
            return match read {
                Ok(events) => {
                    if let Some(last) = events.last() {
                        self.next = last.seq + 1;
                    }
                    Some(Chunk {
                        batch: Arc::from(events),
                        start: 0,
                        from_log: true,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the log to follow it");
                    None
                }
            };
        }
        let empty = || Chunk {
            batch: Arc::from(Vec::new()),
            start: 0,
            from_log: false,
        };
        match self.feed.recv().await {
            Ok(batch) => {
                let start = batch.iter().position(|e| e.seq >= self.next);
                match start.map(|i| (i, batch[i].seq)) {
                    // Contiguous with what was handed out: take the rest of the batch.
                    Some((i, seq)) if seq == self.next => {
                        self.next = batch.last().map_or(self.next, |e| e.seq + 1);
                        Some(Chunk {
                            batch,
                            start: i,
                            from_log: false,
                        })
                    }
                    // Already seen, or a gap that the log will fill on the next call.
                    _ => Some(empty()),
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    next = self.next,
                    "fell behind the feed; reading the log"
                );
                Some(empty())
            }
            Err(RecvError::Closed) => None,
        }
    }

    /// Whether everything durable has been handed out.
    pub fn caught_up(&self, shared: &Shared) -> bool {
        self.next > shared.head()
    }
}

/// Streams to `tx` the `initial` frames (a snapshot), then every event after `after` that
/// `filter` lets through, until the client leaves, the key stops being valid, or the service
/// stops.
pub async fn run(
    shared: Arc<Shared>,
    log: Arc<Log>,
    filter: Filter,
    feed: tokio::sync::broadcast::Receiver<Arc<[Envelope]>>,
    initial: Vec<sse::Event>,
    after: u64,
    tx: mpsc::Sender<sse::Event>,
) {
    for f in initial {
        if tx.send(f).await.is_err() {
            return;
        }
    }
    let mut follower = Follower::new(feed, after);
    let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            chunk = follower.next(&shared, &log) => {
                let Some(chunk) = chunk else { return };
                for env in chunk.events() {
                    if filter.matches(env) && tx.send(frame(env)).await.is_err() {
                        return;
                    }
                }
                // After a catch-up from history, a bookmark: a client whose filter dropped
                // the history still learns how far it has come.
                if chunk.from_log
                    && follower.caught_up(&shared)
                    && tx.send(bookmark(follower.position())).await.is_err()
                {
                    return;
                }
            }
            _ = ticks.tick() => {
                let live = key_is_live(&shared.read(), &filter.key_id);
                if !live || tx.send(bookmark(follower.position())).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// Whether a key (by id) may still stream: it exists and is not revoked.
pub fn key_is_live(state: &State, key_id: &str) -> bool {
    state
        .api_keys
        .get(key_id)
        .is_some_and(|k| k.revoked_at.is_none())
}
