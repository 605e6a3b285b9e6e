//! Databases.
//!
//! - `POST /v2/tenants/{tenant}/dbs` (`can_create_db`): `{name, size}` → the database,
//!   `stopped`; it starts on its first connection through the Gateway. `start_immediately:
//!   true` is refused (422); `initial_scale` is accepted and ignored.
//! - `GET /v2/tenants/{tenant}/dbs`, `GET /v2/tenants/{tenant}/dbs/{db}`, `GET /v2/dbs/{id}`:
//!   describe, with every field present (`null` where it does not apply).
//! - `DELETE /v2/tenants/{tenant}/dbs/{db}` (`can_delete`): 202, `deleting`.
//! - `POST /v2/tenants/{tenant}/dbs/{db}/{start|stop|scale}`: 409, the lifecycle is automatic.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_events::Envelope;
use spg99_projections::{Db, DbState, Restore, State, Tenant};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::auth::random_hex;
use crate::catalog::Size;
use crate::commands::Command;
use crate::domain::{Invalid, ResourceName};
use crate::http::error::ErrorBody;
use crate::http::json::Empty;
use crate::http::mutation::{answer, execute};
use crate::http::openapi::Idempotent;
use crate::http::page::{Listed, PageQuery};
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller};

/// The describe of a database: every field, always.
#[derive(Debug, Serialize, ToSchema)]
pub struct DbView {
    db_id: Uuid,
    name: String,
    tenant: String,
    size: String,
    state: &'static str,
    timeline: String,
    created_at: String,
    current_scale: u8,
    target_scale: u8,
    current_profile: Option<String>,
    target_profile: Option<String>,
    candidate_profile: Option<String>,
    candidate_worker_id: Option<String>,
    candidate_writer_term: Option<u64>,
    scale_state: &'static str,
    freeze_new_checkouts: bool,
    lease_control_epoch: u64,
    autoscale_cooldown_until: Option<String>,
    scale_phase_started_at: Option<String>,
    scale_phase_deadline_at: Option<String>,
    scale_failure_reason: Option<String>,
    active_connections: u32,
    worker_id: Option<String>,
    backend_addr: Option<String>,
    /// The serving (or starting) writer's term; a candidate gets the next one.
    writer_term: Option<u64>,
    /// Deadline of the start or stop in progress.
    phase_deadline_at: Option<String>,
    /// Why the database is `failed`, or why its last start failed.
    failure_reason: Option<String>,
    /// The database's size in the storage repository (its backups and archived WAL).
    storage_bytes: u64,
    /// The earliest point it can be restored to (its oldest backup kept); none before its
    /// first backup.
    history_start_at: Option<String>,
    /// The newest point the repository holds: for a stopped database, its stop; for a
    /// running one, its last archived WAL (within `--archive-timeout`).
    recoverable_until: Option<String>,
    last_backup_at: Option<String>,
    /// Why the repository may not hold everything now (archiving failing or lagging, a stop
    /// that could not archive its last WAL, a failed backup).
    storage_warning: Option<String>,
    /// The restore in progress (`restoring`).
    restore: Option<RestoreView>,
    /// The last restore done.
    last_restore: Option<RestoreView>,
    /// A branch's parent (its name while it exists, its id always), and the point of the
    /// parent's history the branch has the data of.
    parent: Option<String>,
    parent_db_id: Option<Uuid>,
    parent_at: Option<String>,
    /// A branch whose data is made (its first start done); `false` until then.
    branch_made: Option<bool>,
    /// High availability: a synchronous standby on another worker while it runs.
    ha: bool,
    /// Every commit acknowledged now is on the standby too (the writer waits for it).
    ha_protected: bool,
    /// Why it is not protected while HA is on (none while it is).
    ha_unprotected_reason: Option<String>,
    standby_worker_id: Option<String>,
    standby_writer_term: Option<u64>,
    /// `building`, `catching_up`, `streaming`, `sync`; `none` without a standby.
    standby_state: &'static str,
    /// How far the standby's flushed WAL is behind the writer's, as last seen.
    replication_lag_bytes: Option<u64>,
    /// Failovers to a standby so far, and when the last one ended.
    failovers: u64,
    last_failover_at: Option<String>,
}

/// A restore.
#[derive(Debug, Serialize, ToSchema)]
pub struct RestoreView {
    /// The point restored to (RFC 3339), or the LSN.
    at: Option<String>,
    lsn: Option<String>,
    /// The database that keeps the state from before the restore (its name while it exists).
    kept_db_id: Uuid,
    kept_db: Option<String>,
    requested_at: String,
    /// When the restored database first served.
    restored_at: Option<String>,
}

impl RestoreView {
    fn of(state: &State, r: &Restore) -> Self {
        RestoreView {
            at: r.time.map(rfc3339),
            lsn: r.lsn.clone(),
            kept_db_id: r.kept_db_id,
            kept_db: state.dbs.get(&r.kept_db_id).map(|k| k.name.to_string()),
            requested_at: rfc3339(r.requested_at),
            restored_at: r.restored_at.map(rfc3339),
        }
    }
}

impl DbView {
    /// A running writer's WAL reached the repository at `at`, as its last heartbeat said.
    pub fn archived_at(mut self, at: Option<spg99_events::Timestamp>) -> Self {
        if let Some(at) = at.filter(|_| self.state == DbState::Running.as_str()) {
            let at = rfc3339(at);
            // Both in the same form: the later one sorts last.
            if self
                .recoverable_until
                .as_ref()
                .is_none_or(|known| *known < at)
            {
                self.recoverable_until = Some(at);
            }
        }
        self
    }

    /// The describe, its `recoverable_until` from what the repository holds as last
    /// recorded (a stop, a backup); [`DbView::archived_at`] makes it a running writer's last
    /// archive.
    pub fn of(state: &State, t: &Tenant, d: &Db) -> Self {
        let serving = matches!(d.state, DbState::Running | DbState::Stopping);
        let wanted = matches!(
            d.state,
            DbState::Starting | DbState::Running | DbState::Restoring
        );
        let writer = d.live.writer.as_ref();
        let candidate = d.live.scale.candidate.as_ref();
        let branch = d.branch.as_deref();
        DbView {
            db_id: d.id,
            name: d.name.to_string(),
            tenant: t.name.to_string(),
            size: d.size.to_string(),
            state: d.state.as_str(),
            timeline: d.timeline.to_string(),
            created_at: rfc3339(d.created_at),
            current_scale: u8::from(serving),
            target_scale: u8::from(wanted),
            current_profile: writer.map(|w| w.profile.clone()),
            target_profile: d
                .live
                .scale
                .target_profile
                .clone()
                .or_else(|| writer.filter(|_| wanted).map(|w| w.profile.clone())),
            candidate_profile: candidate.map(|c| c.profile.clone()),
            candidate_worker_id: candidate.map(|c| c.worker_id.clone()),
            candidate_writer_term: candidate.map(|c| c.term),
            writer_term: writer.map(|w| w.term),
            scale_state: d.live.scale.stage.as_str(),
            freeze_new_checkouts: d.live.freeze_new_checkouts,
            lease_control_epoch: d.lease_control_epoch,
            autoscale_cooldown_until: d.live.autoscale_cooldown_until.map(rfc3339),
            scale_phase_started_at: d.live.scale.phase_started_at.map(rfc3339),
            scale_phase_deadline_at: d.live.scale.phase_deadline_at.map(rfc3339),
            scale_failure_reason: d.live.scale.failure_reason.clone(),
            active_connections: d.live.active_connections,
            worker_id: writer.map(|w| w.worker_id.clone()),
            backend_addr: writer.and_then(|w| w.backend_addr.clone()),
            phase_deadline_at: d.live.phase_deadline_at.map(rfc3339),
            failure_reason: d.live.failure_reason.clone(),
            storage_bytes: d.stored().bytes,
            history_start_at: d.stored().oldest_backup_at.map(rfc3339),
            recoverable_until: d.stored().recoverable_until.map(rfc3339),
            last_backup_at: d.stored().last_backup_at.map(rfc3339),
            storage_warning: d
                .stored()
                .archive_failure
                .clone()
                .or_else(|| d.stored().warning.clone()),
            restore: d.live.restore.as_deref().map(|r| RestoreView::of(state, r)),
            last_restore: d.last_restore.as_deref().map(|r| RestoreView::of(state, r)),
            parent: branch
                .and_then(|b| state.dbs.get(&b.parent_db_id))
                .map(|p| p.name.to_string()),
            parent_db_id: branch.map(|b| b.parent_db_id),
            parent_at: branch.map(|b| rfc3339(b.at)),
            branch_made: branch.map(|b| b.made_at.is_some()),
            ha: d.ha().enabled,
            ha_protected: writer.is_some_and(|w| d.ha().enabled && d.ha().protected(w.term)),
            ha_unprotected_reason: d
                .ha()
                .unprotected_reason
                .clone()
                .filter(|_| d.ha().enabled && d.state == DbState::Running),
            standby_worker_id: d.ha().standby.as_ref().map(|s| s.worker_id.clone()),
            standby_writer_term: d.ha().standby.as_ref().map(|s| s.term),
            standby_state: d.ha().standby_state().as_str(),
            replication_lag_bytes: None,
            failovers: d.ha().failovers,
            last_failover_at: d.ha().last_failover_at.map(rfc3339),
        }
    }

    /// The standby's lag as its writer's last heartbeat said: (standby term, bytes).
    pub fn replication_lag(mut self, lag: Option<(u64, u64)>) -> Self {
        self.replication_lag_bytes = lag
            .filter(|(term, _)| Some(*term) == self.standby_writer_term)
            .map(|(_, bytes)| bytes);
        self
    }
}

fn render_db(
    tenant: String,
    db: String,
    status: StatusCode,
) -> impl FnOnce(&State, &[Envelope]) -> crate::committer::Rendered + Send + 'static {
    move |state, _| {
        let found = state
            .tenant_by_name(&tenant)
            .and_then(|t| state.db_by_name(t.id, &db).map(|d| (t, d)));
        match found {
            Some((t, d)) => answer(status, &DbView::of(state, t, d)),
            None => ApiError::not_found("database").rendered(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDb {
    name: String,
    size: String,
    #[serde(default)]
    start_immediately: Option<bool>,
    /// Accepted for compatibility and ignored: scale follows connections.
    #[serde(default)]
    #[allow(dead_code)]
    initial_scale: Option<serde_json::Value>,
    /// Make a branch of this database of the tenant: the new database has its data.
    #[serde(default)]
    parent: Option<String>,
    /// The point of the parent's history the branch has the data of (RFC 3339, within the
    /// parent's history window); none: now.
    #[serde(default)]
    at: Option<String>,
    /// High availability: while it runs, a synchronous standby on another worker, promoted
    /// if its writer's worker is lost (needs a storage repository).
    #[serde(default)]
    ha: Option<bool>,
}

/// A point in time given as RFC 3339.
fn time_field(field: &'static str, raw: &str) -> Result<spg99_events::Timestamp, ApiError> {
    crate::clock::parse_rfc3339(raw).ok_or_else(|| {
        Invalid {
            field,
            message: "an RFC 3339 time, e.g. 2026-12-04T18:15:00Z".into(),
        }
        .into()
    })
}

/// A path segment that must be a resource name; anything else cannot exist.
fn path_name(what: &'static str, raw: &str) -> Result<ResourceName, ApiError> {
    ResourceName::parse(what, raw).map_err(|_| ApiError::not_found(what))
}

#[utoipa::path(post, path = "/v2/tenants/{tenant}/dbs", tag = "databases", operation_id = "createDb", params(("tenant" = String, Path), Idempotent), request_body = CreateDb, responses((status = 201, description = "the database, `stopped`; a branch (`parent`), `starting` on the worker where its data is made", body = DbView), (status = 403, body = ErrorBody), (status = 404, description = "the tenant, or the `parent`, is not found", body = ErrorBody), (status = 409, description = "`db_exists`, `tenant_deleting`; `no_repository` (`ha`, or a branch's `at`, without a repository); for a branch `db_busy`, `db_deleting`", body = ErrorBody), (status = 422, description = "`invalid_value`, `at_without_parent`, `outside_history` (an `at` outside the parent's history)", body = ErrorBody), (status = 503, description = "a branch: `no_capacity`, `no_worker`, `data_unavailable`", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: ApiJson<CreateDb>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path_name("tenant", &path)?;
    let b = &body.value;
    let name = ResourceName::parse("name", &b.name)?;
    let size = Size::parse("size", &b.size)?;
    if b.start_immediately == Some(true) {
        return Err(Invalid {
            field: "start_immediately",
            message: "manual start is disabled: a database starts on its first connection through the Gateway".into(),
        }
        .into());
    }
    let render = render_db(
        tenant.as_str().to_owned(),
        name.as_str().to_owned(),
        StatusCode::CREATED,
    );
    let parent = b
        .parent
        .as_deref()
        .map(|p| ResourceName::parse("parent", p))
        .transpose()?;
    let at = b.at.as_deref().map(|at| time_field("at", at)).transpose()?;
    let command = Command::CreateDb {
        db_id: Uuid::new_v4(),
        tenant,
        name,
        size,
        timeline: random_hex(16),
        parent,
        at,
        ha: b.ha == Some(true),
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[utoipa::path(get, path = "/v2/tenants/{tenant}/dbs", tag = "databases", operation_id = "listDbs", params(("tenant" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, body = Listed<DbView>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let page = query.parse()?;
    let state = app.shared.read();
    let t = access::tenant(&state, key, &path)?;
    let items = state
        .dbs_of(t.id)
        .skip_while(|d| page.after.as_deref().is_some_and(|a| d.name.as_str() <= a))
        .map(|d| {
            let view = DbView::of(&state, t, d)
                .archived_at(app.archived_at(d.id))
                .replication_lag(app.lag_of(d.id));
            (d.name.as_str(), view)
        });
    let listed = page.collect(items);
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(listed))
}

#[utoipa::path(get, path = "/v2/tenants/{tenant}/dbs/{db}", tag = "databases", operation_id = "getDb", params(("tenant" = String, Path), ("db" = String, Path)), responses((status = 200, body = DbView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let state = app.shared.read();
    let (t, d) = access::db(&state, key, &path.0, &path.1)?;
    let view = DbView::of(&state, t, d)
        .archived_at(app.archived_at(d.id))
        .replication_lag(app.lag_of(d.id));
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(view))
}

#[utoipa::path(get, path = "/v2/dbs/{id}", tag = "databases", operation_id = "getDbById", params(("id" = Uuid, Path, description = "the `db_id`")), responses((status = 200, body = DbView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_by_id(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let id = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("database"))?;
    let state = app.shared.read();
    let (t, d) = access::db_by_id(&state, key, id)?;
    let view = DbView::of(&state, t, d)
        .archived_at(app.archived_at(d.id))
        .replication_lag(app.lag_of(d.id));
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(view))
}

#[utoipa::path(delete, path = "/v2/tenants/{tenant}/dbs/{db}", tag = "databases", operation_id = "deleteDb", params(("tenant" = String, Path), ("db" = String, Path), Idempotent), responses((status = 202, description = "the database, `deleting`", body = DbView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path_name("tenant", &path.0)?;
    let db = path_name("database", &path.1)?;
    let render = render_db(
        tenant.as_str().to_owned(),
        db.as_str().to_owned(),
        StatusCode::ACCEPTED,
    );
    execute(
        &app,
        &caller,
        &req,
        b"",
        Command::DeleteDb { tenant, db },
        render,
    )
    .await
}

/// `POST /v2/tenants/{t}/dbs/{db}/restore`, as the API document describes it: one of `at`
/// and `lsn`. Read as [`RestoreDb`], whose errors name the field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RestoreTarget {
    /// A time, RFC 3339, from `history_start_at` to now.
    At { at: String },
    /// A WAL position, `X/Y` (hexadecimal), as `pg_current_wal_lsn()` shows it.
    Lsn { lsn: String },
}

/// `POST /v2/tenants/{t}/dbs/{db}/restore`: `at` (RFC 3339) or `lsn` (`X/Y`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDb {
    /// The point to restore to: RFC 3339, from `history_start_at` to now.
    #[serde(default)]
    at: Option<String>,
    /// Or a WAL position, `X/Y` (hexadecimal), as `pg_current_wal_lsn()` shows it.
    #[serde(default)]
    lsn: Option<String>,
}

/// A restore in place: the database keeps its name, DSN and `db_id`, and serves its state as
/// of `at` (or `lsn`) on a new timeline; the state it has now is kept as a new database of
/// the tenant, named in the answer's `restore.kept_db`.
#[utoipa::path(post, path = "/v2/tenants/{tenant}/dbs/{db}/restore", tag = "databases", operation_id = "restoreDb", params(("tenant" = String, Path), ("db" = String, Path), Idempotent), request_body = RestoreTarget, responses((status = 202, description = "the database, `restoring`", body = DbView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "`db_busy`, `db_deleting`, `restore_in_progress`, `no_repository`", body = ErrorBody), (status = 422, description = "`outside_history` (the point is not in the repository), `invalid_value`", body = ErrorBody)), security(("bearer" = [])))]
pub async fn restore(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: ApiJson<RestoreDb>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path_name("tenant", &path.0)?;
    let db = path_name("database", &path.1)?;
    let (time, lsn) = match (&body.value.at, &body.value.lsn) {
        (Some(at), None) => (Some(time_field("at", at)?), None),
        (None, Some(lsn)) => {
            let hex =
                |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
            if !lsn.split_once('/').is_some_and(|(a, b)| hex(a) && hex(b)) {
                return Err(Invalid {
                    field: "lsn",
                    message: "a WAL position, X/Y in hexadecimal (as pg_current_wal_lsn() shows)"
                        .into(),
                }
                .into());
            }
            (None, Some(lsn.to_ascii_uppercase()))
        }
        _ => {
            return Err(Invalid {
                field: "at",
                message: "give the point to restore to: `at` (RFC 3339) or `lsn`, one of them"
                    .into(),
            }
            .into())
        }
    };
    let render = render_db(
        tenant.as_str().to_owned(),
        db.as_str().to_owned(),
        StatusCode::ACCEPTED,
    );
    let command = Command::RestoreDb {
        tenant,
        db,
        time,
        lsn,
        timeline: random_hex(16),
        kept_db_id: Uuid::new_v4(),
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

/// A branch's reset: it takes its parent's data as it is now, in place (same name, DSN and
/// `db_id`, a new timeline); the state it has now is kept as a new database of the tenant,
/// named in the answer's `restore.kept_db`.
#[utoipa::path(post, path = "/v2/tenants/{tenant}/dbs/{db}/reset", tag = "databases", operation_id = "resetBranch", params(("tenant" = String, Path), ("db" = String, Path), Idempotent), request_body(content = Empty, description = "optional"), responses((status = 202, description = "the branch, `restoring`", body = DbView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "`not_a_branch`, `parent_gone`, `parent_empty`, `db_busy`", body = ErrorBody)), security(("bearer" = [])))]
pub async fn reset(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: ApiJson<Empty>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path_name("tenant", &path.0)?;
    let db = path_name("database", &path.1)?;
    let render = render_db(
        tenant.as_str().to_owned(),
        db.as_str().to_owned(),
        StatusCode::ACCEPTED,
    );
    let command = Command::ResetDb {
        tenant,
        db,
        timeline: random_hex(16),
        kept_db_id: Uuid::new_v4(),
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHa {
    /// A synchronous standby on another worker while the database runs (`false`: none).
    enabled: bool,
}

/// High availability on or off. On: while the database runs, a standby is built on another
/// worker and made synchronous once it streams (`standby_state`, `ha_protected`). Off: the
/// writer stops waiting for it, then it is shut down. The same setting again changes nothing.
#[utoipa::path(post, path = "/v2/tenants/{tenant}/dbs/{db}/ha", tag = "databases", operation_id = "setDbHa", params(("tenant" = String, Path), ("db" = String, Path), Idempotent), request_body = SetHa, responses((status = 200, description = "the database, `ha` as asked", body = DbView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "`no_repository` (HA on without a repository), `db_deleting`", body = ErrorBody), (status = 422, description = "`invalid_value`", body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_ha(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: ApiJson<SetHa>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path_name("tenant", &path.0)?;
    let db = path_name("database", &path.1)?;
    let render = render_db(
        tenant.as_str().to_owned(),
        db.as_str().to_owned(),
        StatusCode::OK,
    );
    let command = Command::SetHa {
        tenant,
        db,
        enabled: body.value.enabled,
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

/// Manual start, stop and scale are refused: a database starts on its first connection and
/// stops when idle, and the autoscaler picks its profile.
#[utoipa::path(post, path = "/v2/tenants/{tenant}/dbs/{db}/{action}", tag = "databases", operation_id = "refuseManualLifecycle", params(("tenant" = String, Path), ("db" = String, Path), ("action" = String, Path, description = "`start`, `stop` or `scale`")), responses((status = 409, description = "always: the lifecycle is automatic", body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn manual_lifecycle(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let (tenant, db, action) = path.into_inner();
    if !matches!(action.as_str(), "start" | "stop" | "scale") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no such route (or method) on this server",
        ));
    }
    let state = app.shared.read();
    access::db(&state, key, &tenant, &db)?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "lifecycle_automatic",
        format!(
            "manual {action} is disabled: a database starts on its first connection through the Gateway, stops after inactivity, and the autoscaler chooses its profile"
        ),
    ))
}
