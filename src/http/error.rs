//! API errors: `{"error": {"code": ..., "message": ...}}` with the right status, never leaking a
//! server error's internals.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admin::AdminError;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `invalid_field`, `binding_not_pending`, ...
    pub code: String,
    pub message: String,
    /// The offending field, for 422 errors that concern one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unprocessable(code: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            field: field.map(str::to_owned),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::NotFound(message) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            AdminError::Conflict { code, message } => {
                Self::new(StatusCode::CONFLICT, code, message)
            }
            AdminError::Invalid {
                code,
                field,
                message,
            } => Self::unprocessable(code, field, message),
            AdminError::Database(error) => error.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match crate::db::classify(&error) {
            // A data exception or an integrity violation: the request carried a value the
            // database cannot take (a NUL character, a number out of range).
            crate::db::ErrorClass::Refused => {
                tracing::info!(%error, "admin request refused by the database");
                Self::bad_request(
                    "a value in the request cannot be stored (e.g. it holds a NUL character)",
                )
            }
            crate::db::ErrorClass::Conflict => {
                tracing::info!(%error, "admin request conflicted with a concurrent change");
                Self::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a concurrent change conflicted with this one; retry",
                )
            }
            // The system's fault, never the request's: 503 names its kind (the database's own
            // words stay in the log).
            crate::db::ErrorClass::System(fault) => {
                tracing::error!(%error, fault = fault.as_str(), "admin request failed: a fault of the system");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "the database cannot serve this request now ({}); retry later",
                        fault.as_str()
                    ),
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                Self::unprocessable("invalid_field", None, e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                other.body_text(),
            ),
            other => Self::bad_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}
