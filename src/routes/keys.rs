//! API keys.
//!
//! - `POST /v2/accounts/{account}/api-keys` (global keys, or account keys of that account):
//!   issue a key; the token is shown once, in this answer.
//! - `GET /v2/accounts/{account}/api-keys` (global keys, or account keys of that account):
//!   the account's keys, revoked ones included, ordered by key id (never a secret).
//! - `GET /v2/api-keys/me`: the calling key (never its secret).
//! - `POST /v2/api-keys/rotate`: a new secret for the calling key, shown once; the old one
//!   stops working.
//! - `POST /v2/api-keys/revoke`: revoke the calling key, or `{key_id}` of a key the caller
//!   may manage.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_events::{KeyScope, Permissions, Timestamp};
use spg99_projections::{ApiKey, State};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::auth::Token;
use crate::commands::{Command, ScopeRequest};
use crate::domain::{parse_label, Invalid, ResourceName};
use crate::http::error::ErrorBody;
use crate::http::json::Empty;
use crate::http::mutation::{answer, execute};
use crate::http::openapi::Idempotent;
use crate::http::page::{Listed, PageQuery};
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller};

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionsView {
    #[serde(default)]
    can_create_tenant: bool,
    #[serde(default)]
    can_create_db: bool,
    #[serde(default)]
    can_scale: bool,
    #[serde(default)]
    can_delete: bool,
}

impl From<PermissionsView> for Permissions {
    fn from(p: PermissionsView) -> Self {
        Permissions {
            can_create_tenant: p.can_create_tenant,
            can_create_db: p.can_create_db,
            can_scale: p.can_scale,
            can_delete: p.can_delete,
        }
    }
}

impl From<Permissions> for PermissionsView {
    fn from(p: Permissions) -> Self {
        PermissionsView {
            can_create_tenant: p.can_create_tenant,
            can_create_db: p.can_create_db,
            can_scale: p.can_scale,
            can_delete: p.can_delete,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    key_id: String,
    name: Option<String>,
    scope: &'static str,
    account_id: Option<Uuid>,
    tenant: Option<String>,
    permissions: PermissionsView,
    expires_at: Option<String>,
    created_at: String,
    revoked_at: Option<String>,
}

impl KeyView {
    pub fn new(state: &State, k: &ApiKey) -> Self {
        KeyView {
            key_id: k.id.clone(),
            name: k.name.clone(),
            scope: match k.scope {
                KeyScope::Global => "global",
                KeyScope::Account(_) => "account",
                KeyScope::Tenant { .. } => "tenant",
            },
            account_id: k.account(),
            tenant: k
                .tenant()
                .and_then(|t| state.tenants.get(&t))
                .map(|t| t.name.to_string()),
            permissions: k.permissions.into(),
            expires_at: k.expires_at.map(rfc3339),
            created_at: rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(rfc3339),
        }
    }
}

/// A key with its token: only in the answers to issue and rotate.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithToken {
    #[serde(flatten)]
    key: KeyView,
    token: String,
}

fn render_key_with_token(
    token: Token,
    status: StatusCode,
) -> impl FnOnce(&State, &[spg99_events::Envelope]) -> crate::committer::Rendered + Send + 'static {
    move |state, _| match state.api_keys.get(token.key_id()) {
        Some(k) => answer(
            status,
            &KeyWithToken {
                key: KeyView::new(state, k),
                token: token.reveal(),
            },
        ),
        None => ApiError::not_found("api key").rendered(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    scope: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    permissions: PermissionsView,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn parse_scope(body: &IssueKey) -> Result<ScopeRequest, Invalid> {
    let invalid = |field, message: &str| Invalid {
        field,
        message: message.to_owned(),
    };
    match (body.scope.as_str(), &body.tenant) {
        ("global", None) => Ok(ScopeRequest::Global),
        ("account", None) => Ok(ScopeRequest::Account),
        ("tenant", Some(t)) => Ok(ScopeRequest::Tenant(ResourceName::parse("tenant", t)?)),
        ("tenant", None) => Err(invalid("tenant", "required with scope \"tenant\"")),
        ("global" | "account", Some(_)) => {
            Err(invalid("tenant", "only allowed with scope \"tenant\""))
        }
        _ => Err(invalid(
            "scope",
            "must be \"global\", \"account\" or \"tenant\"",
        )),
    }
}

fn parse_expiry(raw: &str, now: Timestamp) -> Result<Timestamp, Invalid> {
    let t = chrono::DateTime::parse_from_rfc3339(raw).map_err(|_| Invalid {
        field: "expires_at",
        message: "must be an RFC 3339 time, like 2030-01-31T00:00:00Z".into(),
    })?;
    let at = Timestamp::from_micros(t.timestamp_micros());
    if at <= now {
        return Err(Invalid {
            field: "expires_at",
            message: "must be in the future".into(),
        });
    }
    Ok(at)
}

#[utoipa::path(post, path = "/v2/accounts/{account}/api-keys", tag = "api-keys", operation_id = "issueApiKey", params(("account" = Uuid, Path), Idempotent), request_body = IssueKey, responses((status = 201, description = "the key and its token, shown once", body = KeyWithToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn issue(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: ApiJson<IssueKey>,
) -> Result<HttpResponse, ApiError> {
    let account = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("account"))?;
    let b = &body.value;
    let scope = parse_scope(b)?;
    let expires_at = b
        .expires_at
        .as_deref()
        .map(|e| parse_expiry(e, app.clock.now()))
        .transpose()?;
    let name = b
        .name
        .as_deref()
        .map(|n| parse_label("name", n))
        .transpose()?;
    let token = Token::generate_api_key();
    let command = Command::IssueKey {
        account,
        key_id: token.key_id().to_owned(),
        secret_hash: token.secret_hash(),
        scope,
        permissions: b.permissions.into(),
        expires_at,
        name,
    };
    let render = render_key_with_token(token, StatusCode::CREATED);
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[utoipa::path(get, path = "/v2/accounts/{account}/api-keys", tag = "api-keys", operation_id = "listApiKeys", params(("account" = Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, body = Listed<KeyView>), (status = 403, description = "a tenant key", body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    // The same gate as issuing: keys are managed by account and global keys.
    if matches!(key.scope, KeyScope::Tenant { .. }) {
        return Err(ApiError::forbidden(
            "tenant_key_cannot_list_keys",
            "tenant-scoped keys cannot list keys; GET /v2/api-keys/me shows the calling key",
        ));
    }
    let account = Uuid::parse_str(&path)
        .ok()
        .filter(|a| access::sees_account(key, *a))
        .ok_or_else(|| ApiError::not_found("account"))?;
    let page = query.parse()?;
    let state = app.shared.read();
    if !state.accounts.contains_key(&account) {
        return Err(ApiError::not_found("account"));
    }
    let start = page.after.clone().unwrap_or_default();
    let items = state
        .api_keys
        .range(start..)
        .filter(|(id, _)| page.after.as_deref() != Some(id.as_str()))
        .filter(|(_, k)| k.account() == Some(account))
        .map(|(id, k)| (id.as_str(), KeyView::new(&state, k)));
    let listed = page.collect(items);
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(listed))
}

#[utoipa::path(get, path = "/v2/api-keys/me", tag = "api-keys", operation_id = "getCallingApiKey", responses((status = 200, body = KeyView)), security(("bearer" = [])))]
pub async fn me(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let state = app.shared.read();
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(KeyView::new(&state, key)))
}

#[utoipa::path(post, path = "/v2/api-keys/rotate", tag = "api-keys", operation_id = "rotateCallingApiKey", params(Idempotent), request_body(content = Empty, description = "optional"), responses((status = 200, description = "the key and its new token, shown once", body = KeyWithToken)), security(("bearer" = [])))]
pub async fn rotate(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<Empty>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    // Same key id, new secret.
    let token = Token::with_new_secret(&key.id);
    let command = Command::RotateKey {
        secret_hash: token.secret_hash(),
    };
    let render = render_key_with_token(token, StatusCode::OK);
    execute(&app, &caller, &req, &body.raw, command, render).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    #[serde(default)]
    key_id: Option<String>,
}

#[utoipa::path(post, path = "/v2/api-keys/revoke", tag = "api-keys", operation_id = "revokeApiKey", params(Idempotent), request_body(content = Revoke, description = "optional; without `key_id` the calling key is revoked"), responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<Revoke>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let key_id = body.value.key_id.clone().unwrap_or_else(|| key.id.clone());
    let command = Command::RevokeKey {
        key_id: body.value.key_id.clone(),
    };
    let render =
        move |state: &State, _: &[spg99_events::Envelope]| match state.api_keys.get(&key_id) {
            Some(k) => answer(StatusCode::OK, &KeyView::new(state, k)),
            None => ApiError::not_found("api key").rendered(),
        };
    execute(&app, &caller, &req, &body.raw, command, render).await
}
