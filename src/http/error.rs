//! One error type for the whole HTTP surface.
//!
//! Every failure becomes `{"error": {"code", "message", "request_id", "field"?}}` with a stable
//! machine `code`. Internal failures are logged with their detail and answered without it.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::committer::CommitError;
use crate::decision::Rejection;
use crate::domain::Invalid;
use crate::http::request_id;

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after_secs: Option<u32>,
    /// Close the connection after this answer (what is left of the request is not read).
    close: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            close: false,
        }
    }

    /// The connection closes after this answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 429 with `Retry-After`: an abuse limit ([`crate::limits`]).
    pub fn too_many_requests(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u32,
    ) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// The log's storage failed a write or a sync: writes stop until a restart (reads go on).
    pub fn log_failed() -> Self {
        ApiError {
            code: "log_failed",
            ..Self::unavailable(
                "the command log's storage failed a write (the server's log says how); writes are \
                 refused until the service is restarted. A write answered so may or may not have \
                 been recorded: repeat it with the same Idempotency-Key after the restart (or, \
                 with replicas, on the next leader)",
                30,
            )
        }
    }

    /// 503: the committer restarts from the durable state (a command panicked); a moment.
    pub fn committer_restarting() -> Self {
        ApiError {
            code: "committer_restarting",
            ..Self::unavailable(
                "the committer is restarting from the durable state after a defect (logged); \
                 nothing of this request was recorded: repeat it (with the same Idempotency-Key)",
                1,
            )
        }
    }

    /// 503: the committer panicked outside a decision; writes stop until a restart.
    pub fn committer_failed() -> Self {
        ApiError {
            code: "committer_failed",
            ..Self::unavailable(
                "the committer failed (a defect, in the server's log); writes are refused until \
                 the service is restarted. A write answered so may or may not have been \
                 recorded: repeat it with the same Idempotency-Key after the restart",
                30,
            )
        }
    }

    /// 503: this replica has not read the log as far as a request asked.
    pub fn replica_behind(message: impl Into<String>) -> Self {
        ApiError {
            code: "replica_behind",
            ..Self::unavailable(message, 1)
        }
    }

    /// 503: no replica leads the log that this one could pass a write to, right now.
    pub fn no_leader(message: impl Into<String>) -> Self {
        ApiError {
            code: "no_leader",
            ..Self::unavailable(message, 1)
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.message())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            format!("{}: {}", e.field, e.message),
        )
        .with_field(e.field)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let message = r.to_string();
        match r {
            Rejection::CallerGone => Self::new(StatusCode::UNAUTHORIZED, "token_revoked", message),
            Rejection::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            Rejection::MissingPermission { .. } => Self::forbidden("missing_permission", message),
            Rejection::Forbidden { code, .. } => Self::forbidden(code, message),
            Rejection::Conflict { code, .. } => Self::new(StatusCode::CONFLICT, code, message),
            Rejection::Invalid { field, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
                    .with_field(field)
            }
            Rejection::Gone { code, .. } => Self::new(StatusCode::NOT_FOUND, code, message),
            Rejection::Unprocessable { code, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            Rejection::Busy {
                code,
                retry_after_secs,
                ..
            } => ApiError {
                code,
                ..Self::unavailable(message, retry_after_secs)
            },
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Rejected(r) => r.into(),
            CommitError::Unavailable => {
                Self::unavailable("the control plane is not accepting writes right now", 5)
            }
            CommitError::LogFailed => Self::log_failed(),
            CommitError::NotLeader => Self::no_leader(
                "this replica stopped leading the log while the request waited: repeat it (with \
                 the same Idempotency-Key) and it goes to the new leader",
            ),
            CommitError::Panicked => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the command failed inside the control plane (a defect, logged with this \
                 request's id); nothing of it was recorded",
            ),
            CommitError::Restarting => Self::committer_restarting(),
            CommitError::CommitterFailed => Self::committer_failed(),
        }
    }
}

impl ApiError {
    /// The error as a rendered answer (for answers rendered inside the committer).
    pub fn rendered(&self) -> crate::committer::Rendered {
        crate::committer::Rendered {
            status: self.status.as_u16(),
            body: serde_json::to_vec(&self.body()).unwrap_or_default(),
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                request_id: request_id::current().unwrap_or_default(),
                field: self.field.clone(),
            },
        }
    }
}

/// Every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `missing_permission`, `invalid_value`, ...
    code: &'static str,
    /// What went wrong and what to do, for a person.
    message: String,
    /// The request's `X-Request-Id`.
    request_id: String,
    /// For validation errors: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.close {
            res.force_close();
        }
        res.json(self.body())
    }
}
