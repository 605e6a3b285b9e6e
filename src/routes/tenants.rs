//! Tenants.
//!
//! - `POST /v2/tenants` (`can_create_tenant`): `{name, account?}` → the tenant with
//!   `pg_user`, `pg_password` and `dsn_template`. Account keys create in their account; a
//!   global key names the account.
//! - `GET /v2/tenants`, `GET /v2/tenants/{tenant}`: tenants in scope (no password).
//! - `GET /v2/tenants/{tenant}/credentials`: `pg_user`, `pg_password`, `dsn_template` again.
//! - `POST /v2/tenants/{tenant}/credentials/reset` (`can_create_tenant`): a new
//!   `pg_password`; the old one stops working.
//! - `DELETE /v2/tenants/{tenant}?cascade=true` (`can_delete`): 202, `deleting`; without
//!   `cascade`, 409 while it has databases.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_events::{Envelope, Sealed};
use spg99_projections::{SmolStr, State, Tenant};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::auth::random_hex;
use crate::commands::Command;
use crate::committer::Rendered;
use crate::credentials;
use crate::domain::ResourceName;
use crate::http::error::ErrorBody;
use crate::http::json::Empty;
use crate::http::mutation::{answer, execute};
use crate::http::openapi::Idempotent;
use crate::http::page::{Listed, PageQuery};
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller};
use crate::secrets::SecretBox;

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    tenant: String,
    tenant_id: Uuid,
    account_id: Uuid,
    pg_user: String,
    state: &'static str,
    databases: usize,
    created_at: String,
}

impl TenantView {
    pub fn new(state: &State, t: &Tenant) -> Self {
        TenantView {
            tenant: t.name.to_string(),
            tenant_id: t.id,
            account_id: t.account,
            pg_user: t.pg_user.to_string(),
            state: if t.deleting { "deleting" } else { "active" },
            databases: state.dbs_of(t.id).count(),
            created_at: rfc3339(t.created_at),
        }
    }
}

/// `postgres://<pg_user>:<pg_password>@<host>/<db-name>?sslmode=require`, with `<db-name>`
/// left for the client to fill in.
pub fn dsn_template(pg_user: &str, pg_password: &str, host: &str) -> String {
    format!("postgres://{pg_user}:{pg_password}@{host}/<db-name>?sslmode=require")
}

/// Where clients reach the Gateway: its session port, its pooler and its HTTP front door.
#[derive(Debug, Clone)]
pub struct Hosts {
    pub gateway: String,
    pub pooler: String,
    pub http: String,
}

impl Hosts {
    fn endpoints(&self, pg_user: &str, pg_password: &str) -> Endpoints {
        Endpoints {
            dsn_template: dsn_template(pg_user, pg_password, &self.gateway),
            pooled_dsn_template: dsn_template(pg_user, pg_password, &self.pooler),
            http_sql_url: format!("https://{}/sql", self.http),
            websocket_url: format!("wss://{}/v2", self.http),
        }
    }
}

/// Where a tenant's applications connect.
#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoints {
    dsn_template: String,
    /// The same through the Gateway's transaction pooler: for many short-lived clients.
    pooled_dsn_template: String,
    /// SQL over HTTP (`POST`, the Neon serverless driver's `fetchEndpoint`), with a
    /// connection string in `Neon-Connection-String`.
    http_sql_url: String,
    /// PostgreSQL over WebSockets (the driver's `wsProxy` is it without `wss://`).
    websocket_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Credentials {
    tenant: String,
    pg_user: String,
    pg_password: String,
    #[serde(flatten)]
    endpoints: Endpoints,
}

/// The tenant's password, opened with this server's secret key.
pub fn password(secrets: &SecretBox, t: &Tenant) -> Result<String, ApiError> {
    credentials::open_password(secrets, t.id, &t.pg_password).map_err(|e| {
        tracing::error!(tenant = %t.name, error = %e, "tenant password does not open");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "secret_unavailable",
            "the credentials cannot be read with this server's secret key",
        )
    })
}

impl Credentials {
    fn new(secrets: &SecretBox, hosts: &Hosts, t: &Tenant) -> Result<Self, ApiError> {
        let pg_password = password(secrets, t)?;
        Ok(Credentials {
            tenant: t.name.to_string(),
            pg_user: t.pg_user.to_string(),
            endpoints: hosts.endpoints(&t.pg_user, &pg_password),
            pg_password,
        })
    }
}

/// The answer to create: the tenant and its credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    #[serde(flatten)]
    tenant: TenantView,
    pg_password: String,
    #[serde(flatten)]
    endpoints: Endpoints,
}

/// Seals a new password and its SCRAM verifier on a blocking thread: the verifier's 4096
/// rounds of PBKDF2 take ~1.5 ms of CPU, which on the request's own worker would hold every
/// other request that worker serves.
async fn seal_aside(
    app: &AppState,
    tenant_id: Uuid,
    password: &str,
) -> Result<(Sealed, Sealed), ApiError> {
    let (secrets, password) = (app.secrets.clone(), password.to_owned());
    web::block(move || credentials::seal(&secrets, tenant_id, &password))
        .await
        .map_err(|_| ApiError::unavailable("the service is shutting down", 1))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    #[serde(default)]
    account: Option<String>,
}

#[utoipa::path(post, path = "/v2/tenants", tag = "tenants", operation_id = "createTenant", params(Idempotent), request_body = CreateTenant, responses((status = 201, description = "the tenant with its credentials", body = TenantCreated), (status = 403, body = ErrorBody), (status = 404, description = "`account` names no account the key sees", body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    let name = ResourceName::parse("name", &body.value.name)?;
    let account = match &body.value.account {
        None => None,
        Some(a) => Some(Uuid::parse_str(a).map_err(|_| ApiError::not_found("account"))?),
    };
    let tenant_id = Uuid::new_v4();
    let pg_user = format!("u_{}", random_hex(8));
    let password = credentials::new_password();
    let (pg_password, verifier) = seal_aside(&app, tenant_id, &password).await?;
    let command = Command::CreateTenant {
        tenant_id,
        account,
        name,
        pg_user,
        pg_password,
        verifier,
    };
    let hosts = app.hosts.clone();
    let render = move |state: &State, _: &[Envelope]| -> Rendered {
        let Some(t) = state.tenants.get(&tenant_id) else {
            return ApiError::not_found("tenant").rendered();
        };
        answer(
            StatusCode::CREATED,
            &TenantCreated {
                tenant: TenantView::new(state, t),
                endpoints: hosts.endpoints(&t.pg_user, &password),
                pg_password: password,
            },
        )
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[utoipa::path(get, path = "/v2/tenants", tag = "tenants", operation_id = "listTenants", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, body = Listed<TenantView>)), security(("bearer" = [])))]
pub async fn list(
    app: web::Data<AppState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let page = query.parse()?;
    let state = app.shared.read();
    let start = SmolStr::new(page.after.as_deref().unwrap_or_default());
    let items = state
        .tenants_by_name
        .range(start..)
        .filter(|(name, _)| page.after.as_deref() != Some(name.as_str()))
        .filter_map(|(_, id)| state.tenants.get(id))
        .filter(|t| access::sees_tenant(key, t))
        .map(|t| (t.name.as_str(), TenantView::new(&state, t)));
    let listed = page.collect(items);
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(listed))
}

#[utoipa::path(get, path = "/v2/tenants/{tenant}", tag = "tenants", operation_id = "getTenant", params(("tenant" = String, Path)), responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let state = app.shared.read();
    let t = access::tenant(&state, key, &path)?;
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(TenantView::new(&state, t)))
}

#[utoipa::path(get, path = "/v2/tenants/{tenant}/credentials", tag = "tenants", operation_id = "getTenantCredentials", params(("tenant" = String, Path)), responses((status = 200, body = Credentials), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn credentials(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let state = app.shared.read();
    let t = access::tenant(&state, key, &path)?;
    let creds = Credentials::new(&app.secrets, &app.hosts, t)?;
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(creds))
}

/// A new `pg_password` (and verifier): the old password stops working within seconds, on
/// the Gateway at once and on running databases when their worker updates the role.
#[utoipa::path(post, path = "/v2/tenants/{tenant}/credentials/reset", tag = "tenants", operation_id = "resetTenantPassword", params(("tenant" = String, Path), Idempotent), request_body(content = Empty, description = "optional"), responses((status = 200, description = "the new credentials", body = Credentials), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "the tenant is being deleted", body = ErrorBody)), security(("bearer" = [])))]
pub async fn reset_credentials(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: ApiJson<Empty>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ResourceName::parse("tenant", &path).map_err(|_| ApiError::not_found("tenant"))?;
    let name = tenant.as_str().to_owned();
    // The seal is bound to the tenant's id: seal for the id the name has now; the command
    // refuses a tenant that is not this one any more (deleted and made again meanwhile).
    let tenant_id = app
        .shared
        .read()
        .tenant_by_name(&name)
        .map(|t| t.id)
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let password = credentials::new_password();
    let (pg_password, verifier) = seal_aside(&app, tenant_id, &password).await?;
    let command = Command::ResetTenantPassword {
        tenant,
        tenant_id,
        pg_password,
        verifier,
    };
    let hosts = app.hosts.clone();
    let render = move |state: &State, _: &[Envelope]| -> Rendered {
        match state.tenant_by_name(&name).filter(|t| t.id == tenant_id) {
            Some(t) => answer(
                StatusCode::OK,
                &Credentials {
                    tenant: t.name.to_string(),
                    pg_user: t.pg_user.to_string(),
                    endpoints: hosts.endpoints(&t.pg_user, &password),
                    pg_password: password,
                },
            ),
            None => ApiError::not_found("tenant").rendered(),
        }
    };
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    cascade: bool,
}

#[utoipa::path(delete, path = "/v2/tenants/{tenant}", tag = "tenants", operation_id = "deleteTenant", params(("tenant" = String, Path), ("cascade" = Option<bool>, Query, description = "also delete its databases"), Idempotent), responses((status = 202, description = "the tenant, `deleting`", body = TenantView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "databases remain and no cascade", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ResourceName::parse("tenant", &path).map_err(|_| ApiError::not_found("tenant"))?;
    let name = tenant.as_str().to_owned();
    let command = Command::DeleteTenant {
        tenant,
        cascade: query.cascade,
    };
    let render = move |state: &State, _: &[Envelope]| match state.tenant_by_name(&name) {
        Some(t) => answer(StatusCode::ACCEPTED, &TenantView::new(state, t)),
        None => ApiError::not_found("tenant").rendered(),
    };
    execute(&app, &caller, &req, b"", command, render).await
}
