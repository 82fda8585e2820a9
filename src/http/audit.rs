//! `/v1/audit`: the admin writes, newest first.

use axum::{Extension, Json, extract::State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::ApiQuery,
};
use crate::admin::{
    Actor,
    views::{AuditView, Page},
};
use crate::db::audit::AuditFilter;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Only the writes of this token name (or `actor` of a command).
    pub actor: Option<String>,
    /// Only this action: `binding.link`, `binding.create`, `binding.reject`, `user.create`,
    /// `user.update`, `identity.unlink`, `connection.create`, `connection.update`.
    pub action: Option<String>,
    /// Only writes at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only writes before this time (RFC 3339).
    pub until: Option<String>,
}

/// A time of the query, RFC 3339.
fn time(raw: Option<String>, field: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| {
            ApiError::unprocessable(
                "invalid_query",
                Some(field),
                format!("{field}: {raw:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z"),
            )
        })
}

/// Every admin write, newest first: actor (token name), action, target, before, after, time;
/// filtered by actor, action and time.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = AuditFilter {
        since: time(q.since, "since")?,
        until: time(q.until, "until")?,
        actor: given(q.actor),
        action: given(q.action),
    };
    let page: Page<AuditView> = state
        .admin
        .audit(q.cursor, q.limit.unwrap_or(50), &filter)
        .await?;
    Ok(super::as_seen_by(&actor, page, &[]))
}
