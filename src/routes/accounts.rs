//! Accounts.
//!
//! - `POST /v2/accounts` (global keys): open an account.
//! - `GET /v2/accounts` (global keys): every account, ordered by id (the operator's view).
//! - `GET /v2/accounts/{account}` (global keys, or keys of that account).
//! - `GET /v2/account/profile` (account and tenant keys): the caller's account.
//! - `POST /v2/account/contact` (account keys): save the contact.
//! - `POST /v2/account/delete` (account keys with `can_delete`): keys stop at once, tenants
//!   and databases are deleted asynchronously.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_projections::Account;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::commands::Command;
use crate::domain::{parse_label, AccountName, Email};
use crate::http::error::ErrorBody;
use crate::http::json::Empty;
use crate::http::mutation::{answer, execute};
use crate::http::openapi::Idempotent;
use crate::http::page::{Listed, PageQuery};
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    account_id: Uuid,
    name: String,
    email: Option<String>,
    contact_name: Option<String>,
    state: &'static str,
    created_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            account_id: a.id,
            name: a.name.clone(),
            email: a.email.clone(),
            contact_name: a.contact_name.clone(),
            state: if a.deleting { "deleting" } else { "active" },
            created_at: rfc3339(a.created_at),
        }
    }
}

/// Renders the account `id` as the state has it, with `status`.
fn render_account(
    id: Uuid,
    status: StatusCode,
) -> impl FnOnce(&spg99_projections::State, &[spg99_events::Envelope]) -> crate::committer::Rendered
       + Send
       + 'static {
    move |state, _| match state.accounts.get(&id) {
        Some(a) => answer(status, &AccountView::from(&**a)),
        None => ApiError::not_found("account").rendered(),
    }
}

#[utoipa::path(post, path = "/v2/accounts", tag = "accounts", operation_id = "createAccount", params(Idempotent), request_body = CreateAccount, responses((status = 201, body = AccountView), (status = 403, description = "not a global key", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<CreateAccount>,
) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let name = AccountName::parse("name", &body.value.name)?;
    let email = body
        .value
        .email
        .as_deref()
        .map(|e| Email::parse("email", e))
        .transpose()?;
    let account_id = Uuid::new_v4();
    let command = Command::CreateAccount {
        account_id,
        name,
        email,
    };
    execute(
        &app,
        &caller,
        &req,
        &body.raw,
        command,
        render_account(account_id, StatusCode::CREATED),
    )
    .await
}

#[utoipa::path(get, path = "/v2/accounts/{account}", tag = "accounts", operation_id = "getAccount", params(("account" = Uuid, Path)), responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("account");
    let key = &caller.key;
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    if !access::sees_account(key, id) {
        return Err(not_found());
    }
    let state = app.shared.read();
    let account = state.accounts.get(&id).ok_or_else(not_found)?;
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(AccountView::from(&**account)))
}

/// The calling key's own account.
fn own_account(caller: &Caller) -> Result<Uuid, ApiError> {
    caller.key.account().ok_or_else(|| {
        ApiError::forbidden(
            "account_scope_required",
            "a global key has no account of its own; use GET /v2/accounts/{account}",
        )
    })
}

#[utoipa::path(get, path = "/v2/accounts", tag = "accounts", operation_id = "listAccounts", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, body = Listed<AccountView>), (status = 403, description = "not a global key", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    app: web::Data<AppState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let page = query.parse()?;
    let state = app.shared.read();
    // Ids in their text form sort as the map's keys do (hex digits in ASCII order).
    let items = state
        .accounts
        .iter()
        .map(|(id, a)| (id.to_string(), a))
        .filter(|(id, _)| page.after.as_ref().is_none_or(|after| id > after))
        .map(|(id, a)| (id, AccountView::from(&**a)));
    let listed = page.collect(items);
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(listed))
}

#[utoipa::path(get, path = "/v2/account/profile", tag = "accounts", operation_id = "getAccountProfile", responses((status = 200, body = AccountView), (status = 403, description = "a global key has no account", body = ErrorBody)), security(("bearer" = [])))]
pub async fn profile(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let id = own_account(&caller)?;
    let state = app.shared.read();
    let account = state
        .accounts
        .get(&id)
        .ok_or_else(|| ApiError::not_found("account"))?;
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(AccountView::from(&**account)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

#[utoipa::path(post, path = "/v2/account/contact", tag = "accounts", operation_id = "setAccountContact", params(Idempotent), request_body = Contact, responses((status = 200, body = AccountView), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn contact(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<Contact>,
) -> Result<HttpResponse, ApiError> {
    let id = own_account(&caller)?;
    let email = Email::parse("email", &body.value.email)?;
    let name = body
        .value
        .name
        .as_deref()
        .map(|n| parse_label("name", n))
        .transpose()?;
    let command = Command::SetContact { email, name };
    execute(
        &app,
        &caller,
        &req,
        &body.raw,
        command,
        render_account(id, StatusCode::OK),
    )
    .await
}

#[utoipa::path(post, path = "/v2/account/delete", tag = "accounts", operation_id = "deleteAccount", params(Idempotent), request_body(content = Empty, description = "optional"), responses((status = 202, description = "the account, `deleting`", body = AccountView), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: ApiJson<Empty>,
) -> Result<HttpResponse, ApiError> {
    let id = own_account(&caller)?;
    execute(
        &app,
        &caller,
        &req,
        &body.raw,
        Command::DeleteAccount,
        render_account(id, StatusCode::ACCEPTED),
    )
    .await
}
