//! The internal API (`/internal/v1`), for the Gateway and the workers. Authenticated with the
//! service token (`SPG99_SERVICE_TOKEN`) or a global key. The contract, with the state
//! diagram, is in `docs/lifecycle.md`.
//!
//! Workers:
//! - `POST /internal/v1/workers` register; `GET /internal/v1/workers` list
//! - `POST /internal/v1/workers/{id}/heartbeat` load per database → instructions
//! - `GET /internal/v1/workers/{id}/instructions?wait_ms=&known=` the same, long-polled until
//!   the list differs from the `version` the worker already has
//! - `POST /internal/v1/workers/{id}/reports` the result of an instruction
//!
//! Gateway:
//! - `POST /internal/v1/checkout` → 200 lease, 202 not running yet, 503 frozen
//! - `POST /internal/v1/leases/{lease_id}/renew`, `.../release`
//!
//! Operations: `POST /internal/v1/reconcile` (a reconciler pass now) and, with
//! `SPG99_CLOCK=manual`, `POST /internal/v1/clock/advance`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use spg99_events::{Envelope, Event};
use spg99_wire as wire;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::commands::Command;
use crate::committer::{CommitError, Committed};
use crate::decision::Rejection;
use crate::http::{rfc3339, ApiError, ApiJson, AppState, Internal, Service};
use crate::lifecycle::{self, Answer, Lifecycle, Load};
use crate::reconciler;

/// Longest a checkout or an instructions poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// What a 202 checkout suggests the Gateway waits before asking again.
const RETRY_AFTER_MS: u64 = 250;

async fn submit(
    app: &AppState,
    caller: &Internal,
    command: Lifecycle,
) -> Result<Committed, ApiError> {
    Ok(app
        .commits
        .submit(caller.meta(), Command::Lifecycle(command))
        .await?)
}

fn wait_of(wait_ms: Option<u64>) -> Duration {
    Duration::from_millis(wait_ms.unwrap_or(0)).min(MAX_WAIT)
}

// ---- workers ----

pub async fn register(
    app: web::Data<AppState>,
    caller: Internal,
    body: ApiJson<wire::Register>,
) -> Result<HttpResponse, ApiError> {
    let r = body.value;
    submit(
        &app,
        &caller,
        Lifecycle::RegisterWorker {
            id: r.id.clone(),
            address: r.address,
            capacity: r.capacity,
            profiles: r.profiles,
            instance: r.instance.unwrap_or_else(|| "default".into()),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(wire::Registered {
        worker_id: r.id,
        heartbeat_interval_ms: app.settings.heartbeat_interval.as_millis() as u64,
        worker_timeout_ms: app.settings.worker_timeout.as_millis() as u64,
        storage: app.settings.storage.clone(),
    }))
}

#[derive(Debug, Serialize)]
struct WorkerView {
    worker_id: String,
    address: String,
    capacity: u32,
    profiles: Vec<String>,
    registered_at: String,
    lost_at: Option<String>,
    /// Writers and candidates placed on it, and writers it still has to shut down.
    assigned: u32,
}

pub async fn list_workers(app: web::Data<AppState>, _: Internal) -> Result<HttpResponse, ApiError> {
    let state = app.shared.read();
    let used = lifecycle::occupancy(&state);
    let workers: Vec<WorkerView> = state
        .workers
        .values()
        .map(|w| WorkerView {
            worker_id: w.id.clone(),
            address: w.address.clone(),
            capacity: w.capacity,
            profiles: w.profiles.clone(),
            registered_at: rfc3339(w.registered_at),
            lost_at: w.lost_at.map(rfc3339),
            assigned: used.get(w.id.as_str()).copied().unwrap_or(0),
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "workers": workers })))
}

/// A worker's instructions, each with its role's verifier unsealed, and the list's version
/// (what a poll with `known` compares).
fn listed(app: &AppState, state: &spg99_projections::State, worker_id: &str) -> wire::Instructions {
    let mut instructions = lifecycle::instructions(state, worker_id);
    for i in &mut instructions {
        let tenant = state
            .dbs
            .get(&i.db_id)
            .and_then(|d| state.tenants.get(&d.tenant));
        if let (Some(t), true) = (tenant, i.pg_user.is_some()) {
            i.verifier = t
                .verifier
                .as_ref()
                .and_then(|v| crate::credentials::open_verifier(&app.secrets, t.id, v).ok());
        }
        if let Some(ha) = i.ha.as_mut() {
            ha.replication_password =
                crate::credentials::replication_password(&app.secrets, i.db_id);
        }
    }
    let bytes = serde_json::to_vec(&instructions).unwrap_or_default();
    let version = crate::auth::hex(&sha2::Sha256::digest(&bytes)[..8]);
    wire::Instructions {
        instructions,
        version: Some(version),
    }
}

fn cpu_milli(field: &'static str, cpu: f64) -> Result<u32, ApiError> {
    if !cpu.is_finite() || cpu < 0.0 {
        return Err(ApiError::from(crate::domain::Invalid {
            field,
            message: "a fraction of the profile, 0 or more".into(),
        }));
    }
    Ok((cpu * 1000.0).round().min(1_000_000.0) as u32)
}

pub async fn heartbeat(
    app: web::Data<AppState>,
    caller: Internal,
    path: web::Path<String>,
    body: ApiJson<wire::Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    let loads = body
        .value
        .loads
        .iter()
        .map(|l| {
            Ok(Load {
                db_id: l.db_id,
                cpu_milli: cpu_milli("loads.cpu", l.cpu)?,
                active_connections: l.active_connections,
                archive: l
                    .archive
                    .as_ref()
                    .map(|a| {
                        Ok::<_, ApiError>(lifecycle::ArchiveLoad {
                            archived_at: a
                                .archived_at
                                .as_deref()
                                .map(|t| time("loads.archive.archived_at", t))
                                .transpose()?,
                            failure: a.failure.clone(),
                            lag_secs: a.lag_secs,
                        })
                    })
                    .transpose()?,
                replicas: l.replicas.clone(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    {
        let mut lag = app
            .replication_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for l in &loads {
            match l
                .replicas
                .iter()
                .map(|r| (r.standby_term, r.lag_bytes))
                .max()
            {
                Some(newest) => lag.insert(l.db_id, newest),
                None => lag.remove(&l.db_id),
            };
        }
    }
    {
        let mut archived = app.archived.lock().unwrap_or_else(|p| p.into_inner());
        for l in &loads {
            match l.archive.as_ref().and_then(|a| a.archived_at) {
                Some(at) => archived.insert(l.db_id, at),
                None => archived.remove(&l.db_id),
            };
        }
    }
    let worker_id = path.into_inner();
    submit(
        &app,
        &caller,
        Lifecycle::Heartbeat {
            worker_id: worker_id.clone(),
            loads,
        },
    )
    .await?;
    let answer = listed(&app, &app.shared.read(), &worker_id);
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait_ms: Option<u64>,
    /// The `version` of the list the worker already has: wait until the list differs.
    known: Option<String>,
}

/// Events after which a worker's instructions may have changed.
fn moves_writers(event: &Event) -> bool {
    matches!(
        event,
        Event::DbStartRequested { .. }
            | Event::DbStarted { .. }
            | Event::DbStopRequested { .. }
            | Event::DbScaleStarted { .. }
            | Event::DbScaleCutoverStarted { .. }
            | Event::DbScaleCompleted { .. }
            | Event::DbScaleFailed { .. }
            | Event::DbStartFailed { .. }
            | Event::DbStopped { .. }
            | Event::DbDeleteRequested { .. }
            | Event::TenantDeleteRequested { .. }
            | Event::AccountDeleteRequested { .. }
            | Event::WorkerRegistered { .. }
            | Event::WorkerLost { .. }
            | Event::WriterRetired { .. }
            | Event::TenantPasswordReset { .. }
            | Event::DbRoleUpdated { .. }
            | Event::DbDataPlaced { .. }
            | Event::DbDataDestroyed { .. }
            | Event::DbDeleted { .. }
            | Event::DbHaSet { .. }
            | Event::DbStandbyRequested { .. }
            | Event::DbStandbyStarted { .. }
            | Event::DbStandbyReady { .. }
            | Event::DbReplicationSet { .. }
            | Event::DbUnprotected { .. }
            | Event::DbStandbyLost { .. }
            | Event::DbFailoverStarted { .. }
            | Event::DbPromoted { .. }
    )
}

pub async fn instructions(
    app: web::Data<AppState>,
    _: Internal,
    path: web::Path<String>,
    query: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    let worker_id = path.into_inner();
    let deadline = tokio::time::Instant::now() + wait_of(query.wait_ms);
    let mut feed = app.shared.subscribe();
    loop {
        let answer = {
            let state = app.shared.read();
            lifecycle::live_worker(&state, &worker_id)?;
            listed(&app, &state, &worker_id)
        };
        let news = match &query.known {
            Some(known) => answer.version.as_ref() != Some(known),
            None => !answer.instructions.is_empty(),
        };
        if news || !wait_for(&mut feed, deadline, |e| moves_writers(&e.event)).await {
            return Ok(HttpResponse::Ok().json(answer));
        }
    }
}

/// Waits for a published batch holding an event that `matters`; `false` at the deadline.
async fn wait_for(
    feed: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<[Envelope]>>,
    deadline: tokio::time::Instant,
    matters: impl Fn(&Envelope) -> bool,
) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Err(_) | Ok(Err(RecvError::Closed)) => return false,
            Ok(Err(RecvError::Lagged(_))) => return true,
            Ok(Ok(batch)) if batch.iter().any(&matters) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

pub async fn report(
    app: web::Data<AppState>,
    caller: Internal,
    path: web::Path<String>,
    body: ApiJson<wire::Report>,
) -> Result<HttpResponse, ApiError> {
    let r = body.value;
    let stored = r
        .stored
        .map(|s| {
            Ok::<_, ApiError>(lifecycle::StoredReport {
                complete: s.complete,
                recoverable_until: s
                    .recoverable_until
                    .as_deref()
                    .map(|t| time("stored.recoverable_until", t))
                    .transpose()?,
                reason: s.reason,
            })
        })
        .transpose()?;
    let backup = r
        .backup
        .map(|b| {
            Ok::<_, ApiError>(lifecycle::BackupReport {
                started_at: time("backup.started_at", &b.started_at)?,
                stopped_at: time("backup.stopped_at", &b.stopped_at)?,
                oldest_at: time("backup.oldest_at", &b.oldest_at)?,
                label: b.label,
                repository_bytes: b.repository_bytes,
            })
        })
        .transpose()?;
    let done = submit(
        &app,
        &caller,
        Lifecycle::Report(Box::new(lifecycle::WorkerReport {
            worker_id: path.into_inner(),
            db_id: r.db_id,
            writer_term: r.writer_term,
            outcome: r.outcome,
            backend_addr: r.backend_addr,
            reason: r.reason,
            keeps_data: r.keeps_data,
            credentials: r.credentials,
            stored,
            backup,
            standby_term: r.standby_term,
        })),
    )
    .await?;
    let accepted = done.answer == Answer::Accepted(true);
    Ok(HttpResponse::Ok().json(wire::ReportAnswer { accepted }))
}

/// A time a worker sent (RFC 3339), or 422 naming the field.
fn time(field: &'static str, raw: &str) -> Result<spg99_events::Timestamp, ApiError> {
    crate::clock::parse_rfc3339(raw).ok_or_else(|| {
        ApiError::from(crate::domain::Invalid {
            field,
            message: format!("{raw:?} is not an RFC 3339 time"),
        })
    })
}

// ---- Gateway ----

/// Whether an event may settle the checkout of a starting or stopping database: its start
/// or stop ended, or it (or its tenant, or its account) is being deleted.
fn settles_checkout(env: &Envelope, db_id: Uuid) -> bool {
    match env.event {
        Event::DbStarted { .. }
        | Event::DbStartFailed { .. }
        | Event::DbStopped { .. }
        | Event::DbDeleteRequested { .. } => env.db_id == Some(db_id),
        Event::TenantDeleteRequested { .. } | Event::AccountDeleteRequested { .. } => true,
        _ => false,
    }
}

pub async fn checkout(
    app: web::Data<AppState>,
    caller: Internal,
    body: ApiJson<wire::Checkout>,
) -> Result<HttpResponse, ApiError> {
    let c = body.value;
    let deadline = tokio::time::Instant::now() + wait_of(c.wait_ms);
    let mut feed = app.shared.subscribe();
    loop {
        let command = Lifecycle::Checkout {
            pg_user: c.pg_user.clone(),
            db: c.db.clone(),
            lease_id: Uuid::new_v4(),
        };
        let done = match app
            .commits
            .submit(caller.meta(), Command::Lifecycle(command))
            .await
        {
            // Frozen for a cutover: a caller that waits is held until it ends.
            Err(CommitError::Rejected(Rejection::Busy { code, .. }))
                if code == wire::Code::CheckoutsFrozen.as_str()
                    && tokio::time::Instant::now() < deadline =>
            {
                let freeze_ends = |e: &Envelope| {
                    matches!(
                        e.event,
                        Event::DbScaleCompleted { .. } | Event::DbScaleFailed { .. }
                    )
                };
                // Past the deadline, the next attempt answers 503 as a caller that does not
                // wait gets it.
                let _ = wait_for(&mut feed, deadline, freeze_ends).await;
                continue;
            }
            other => other?,
        };
        match done.answer {
            Answer::Lease {
                db_id,
                backend_addr,
                worker_id,
                lease_id,
                lease_ttl_ms,
                lease_control_epoch,
                profile,
            } => {
                return Ok(HttpResponse::Ok().json(wire::Lease {
                    db_id,
                    backend_addr,
                    worker_id,
                    lease_id,
                    lease_ttl_ms,
                    lease_control_epoch,
                    profile,
                }))
            }
            Answer::Pending { db_id, state } => {
                if !wait_for(&mut feed, deadline, |e| settles_checkout(e, db_id)).await {
                    return Ok(HttpResponse::build(StatusCode::ACCEPTED)
                        .insert_header(("Retry-After", "1"))
                        .json(wire::Pending {
                            db_id,
                            state: state.as_str().to_owned(),
                            retry_after_ms: RETRY_AFTER_MS,
                        }));
                }
            }
            other => {
                tracing::error!(?other, "checkout answered with something else");
                return Err(ApiError::unavailable("checkout did not complete; retry", 1));
            }
        }
    }
}

pub async fn renew(
    app: web::Data<AppState>,
    caller: Internal,
    path: web::Path<String>,
    body: ApiJson<wire::Renew>,
) -> Result<HttpResponse, ApiError> {
    let lease_id = lease_id(&path)?;
    let done = submit(
        &app,
        &caller,
        Lifecycle::Renew {
            lease_id,
            lease_control_epoch: body.value.lease_control_epoch,
            active_connections: body.value.active_connections,
        },
    )
    .await?;
    let Answer::Renewed { expires_at } = done.answer else {
        tracing::error!(answer = ?done.answer, "renewal answered with something else");
        return Err(ApiError::unavailable(
            "the renewal did not complete; retry",
            1,
        ));
    };
    Ok(HttpResponse::Ok().json(wire::Renewed {
        expires_at: rfc3339(expires_at),
    }))
}

pub async fn release(
    app: web::Data<AppState>,
    caller: Internal,
    path: web::Path<String>,
    _body: ApiJson<wire::Release>,
) -> Result<HttpResponse, ApiError> {
    let lease_id = lease_id(&path)?;
    submit(&app, &caller, Lifecycle::Release { lease_id }).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "released": true })))
}

fn lease_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::from(crate::decision::Rejection::Gone {
            code: wire::Code::LeaseNotFound.as_str(),
            message: "no such lease".into(),
        })
    })
}

// ---- roles (the Gateway) ----

#[derive(Debug, Serialize)]
struct RoleView {
    pg_user: String,
    tenant_id: Uuid,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    verifier: String,
}

/// `GET /internal/v1/roles/{pg_user}` (the service token only): the tenant's verifier, from
/// which the Gateway authenticates clients without their password.
pub async fn role(
    app: web::Data<AppState>,
    _: Service,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let state = app.shared.read();
    let t = state
        .tenants_by_pg_user
        .get(path.as_str())
        .and_then(|id| state.tenants.get(id))
        .filter(|t| !t.deleting)
        .ok_or_else(|| {
            ApiError::from(Rejection::Gone {
                code: wire::Code::RoleNotFound.as_str(),
                message: "no tenant has this pg_user".into(),
            })
        })?;
    let sealed = t
        .verifier
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this tenant's verifier is not made yet; retry", 1))?;
    let verifier = crate::credentials::open_verifier(&app.secrets, t.id, sealed).map_err(|e| {
        tracing::error!(tenant = %t.name, error = %e, "a verifier does not open");
        ApiError::unavailable("the verifier cannot be read", 5)
    })?;
    Ok(HttpResponse::Ok().json(RoleView {
        pg_user: t.pg_user.to_string(),
        tenant_id: t.id,
        verifier,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

/// Events after which a role may log in differently, or not at all.
fn changes_roles(event: &Event) -> bool {
    matches!(
        event,
        Event::TenantVerifierSet { .. }
            | Event::TenantPasswordReset { .. }
            | Event::TenantDeleteRequested { .. }
            | Event::TenantDeleted { .. }
            | Event::AccountDeleteRequested { .. }
    )
}

/// The database whose leases an event fences: none of them may route a new connection.
fn fences(event: &Event) -> Option<Uuid> {
    match event {
        Event::DbRestoreRequested { db_id, .. }
        | Event::DbScaleCutoverStarted { db_id, .. }
        | Event::DbFailoverStarted { db_id, .. }
        | Event::DbDeleteRequested { db_id } => Some(*db_id),
        _ => None,
    }
}

/// What the Gateway must drop after some events: its cached roles, its fenced leases.
#[derive(Default)]
struct Changes {
    roles: bool,
    fenced: Vec<Uuid>,
}

impl Changes {
    fn note(&mut self, event: &Event) {
        self.roles |= changes_roles(event);
        if let Some(db) = fences(event).filter(|db| !self.fenced.contains(db)) {
            self.fenced.push(db);
        }
    }

    fn any(&self) -> bool {
        self.roles || !self.fenced.is_empty()
    }
}

/// How far back a change is looked for in the log; a Gateway further behind is told
/// "changed" (and drops its whole cache).
const CHANGES_LOOKBACK: u64 = 100_000;

/// `GET /internal/v1/roles/changes?after=SEQ&wait_ms=` (the service token only): whether a
/// role changed after `after`, and the databases whose leases were fenced since, waiting up to
/// `wait_ms` for either; `{seq, changed, fenced}`, `seq` to pass as `after` next time.
pub async fn role_changes(
    app: web::Data<AppState>,
    _: Service,
    query: web::Query<ChangesQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut feed = app.shared.subscribe();
    let head = app.shared.head();
    let answer = |seq: u64, changes: Changes| {
        HttpResponse::Ok().json(wire::RoleChanges {
            seq,
            changed: changes.roles,
            fenced: changes.fenced,
        })
    };
    let everything = || Changes {
        roles: true,
        fenced: vec![],
    };
    let Some(after) = query.after.filter(|a| *a <= head) else {
        return Ok(answer(head, everything()));
    };
    if head - after > CHANGES_LOOKBACK {
        return Ok(answer(head, everything()));
    }
    let log = app.log.clone();
    let seen = web::block(move || {
        let mut changes = Changes::default();
        for e in log
            .read_from(after + 1)
            .take_while(|e| e.as_ref().map_or(true, |e| e.seq <= head))
        {
            match e {
                Ok(e) => changes.note(&e.event),
                Err(_) => return everything(),
            }
        }
        changes
    })
    .await
    .unwrap_or_else(|_| everything());
    if seen.any() {
        return Ok(answer(head, seen));
    }
    // Nothing yet: wait for the next batch that changes something.
    let deadline = tokio::time::Instant::now() + wait_of(query.wait_ms);
    loop {
        let batch = match tokio::time::timeout_at(deadline, feed.recv()).await {
            Err(_) => return Ok(answer(head, Changes::default())),
            Ok(Ok(batch)) => batch,
            // Fell behind the feed, or it closed: as good as a change (drop everything).
            Ok(Err(_)) => return Ok(answer(app.shared.head(), everything())),
        };
        let mut changes = Changes::default();
        batch.iter().for_each(|e| changes.note(&e.event));
        if changes.any() {
            let seq = batch.last().map_or(head, |e| e.seq);
            return Ok(answer(seq.max(head), changes));
        }
    }
}

// ---- operations ----

/// Runs a reconciler pass now and answers when it is durable.
pub async fn reconcile(app: web::Data<AppState>, _: Internal) -> Result<HttpResponse, ApiError> {
    reconcile_now(&app).await
}

async fn reconcile_now(app: &AppState) -> Result<HttpResponse, ApiError> {
    reconciler::pass(&app.commits).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "now": rfc3339(app.clock.now()) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    seconds: f64,
}

/// Moves the manual clock forward, then runs a reconciler pass at the new time.
pub async fn advance_clock(
    app: web::Data<AppState>,
    _: Internal,
    body: ApiJson<Advance>,
) -> Result<HttpResponse, ApiError> {
    let secs = body.value.seconds;
    if !secs.is_finite() || !(0.0..=365.0 * 86_400.0).contains(&secs) {
        return Err(ApiError::from(crate::domain::Invalid {
            field: "seconds",
            message: "between 0 and one year".into(),
        }));
    }
    if !app.clock.advance((secs * 1e6) as i64) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "manual_clock_off",
            "the clock only moves by itself: start the server with SPG99_CLOCK=manual",
        ));
    }
    reconcile_now(&app).await
}
