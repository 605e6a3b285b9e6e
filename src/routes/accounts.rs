//! Accounts: `POST /v2/accounts` (global keys) and `GET /v2/accounts/{account}` (global keys,
//! or a key of that account).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_projections::Account;
use uuid::Uuid;

use crate::auth::Principal;
use crate::commands::Command;
use crate::domain::{AccountName, Email};
use crate::http::{at_version, rfc3339, ApiError, ApiJson, AppState, Caller};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AccountView {
    account_id: Uuid,
    name: String,
    email: Option<String>,
    created_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            account_id: a.id,
            name: a.name.clone(),
            email: a.email.clone(),
            created_at: rfc3339(a.created_at),
        }
    }
}

pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    body: ApiJson<CreateAccount>,
) -> Result<HttpResponse, ApiError> {
    caller.require_global()?;
    let ApiJson(body) = body;
    let name = AccountName::parse("name", &body.name)?;
    let email = body
        .email
        .as_deref()
        .map(|e| Email::parse("email", e))
        .transpose()?;
    let account_id = Uuid::new_v4();
    let committed = app
        .commits
        .submit(
            caller.meta(),
            Command::CreateAccount {
                account_id,
                name,
                email,
            },
        )
        .await?;
    let seq = committed.last_seq().unwrap_or_default();
    let state = app.shared.read();
    let account = state
        .accounts
        .get(&account_id)
        .ok_or_else(|| ApiError::not_found("account"))?;
    Ok(at_version(HttpResponse::Created(), seq).json(AccountView::from(account)))
}

pub async fn get(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("account");
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    let visible = match &caller.principal {
        Principal::Key(k) => caller.is_global() || k.account() == Some(id),
        Principal::Service => false,
    };
    if !visible {
        return Err(not_found());
    }
    let state = app.shared.read();
    let account = state.accounts.get(&id).ok_or_else(not_found)?;
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(AccountView::from(account)))
}
