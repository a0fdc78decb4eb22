//! The one error type of the HTTP boundary, and its body. Each variant knows its status; the
//! client gets [`ErrorBody`], `{"error": {"code", "message", "field"?}}` (the OpenAPI document
//! describes the same type), and causes that are ours (database, bugs) are logged with their
//! chain and never shown.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `Retry-After` of a 503 whose cause (the database, the broker) usually comes back within
/// seconds: clients wait this long before sending again.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// `{"error": {"code", "message", "field"?}}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: unauthorized, not_found, invalid, insufficient_balance…
    pub code: String,
    pub message: String,
    /// The field at fault, for 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Credentials that are good, for a caller this route (or this organization) is not for.
    #[error("this caller may not use this route")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not served here; see the Allow header")]
    MethodNotAllowed,
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u32 },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u32,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 503 to send again after [`UNAVAILABLE_RETRY_AFTER_SECS`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after_secs: UNAVAILABLE_RETRY_AFTER_SECS,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<loyalty::Error> for ApiError {
    fn from(err: loyalty::Error) -> Self {
        match err {
            loyalty::Error::NotFound(what) => ApiError::NotFound(what),
            loyalty::Error::Conflict { code, message } => ApiError::Conflict { code, message },
            loyalty::Error::Invalid { field, message } => ApiError::Invalid { field, message },
            loyalty::Error::Db(db) => db.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            other => ApiError::Internal(anyhow::Error::new(other).context("database")),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        // Ids in paths are numbers; anything else names nothing that exists.
        ApiError::NotFound("resource")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let message = rejection.body_text();
        let detail = message
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&message);
        let field = detail
            .split_once(':')
            .map_or("query", |(f, _)| f)
            .to_owned();
        ApiError::Invalid {
            field,
            message: detail.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                "internal error; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::TooManyRequests { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
