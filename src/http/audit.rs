//! `/v1/audit`: the admin writes, newest first.

use axum::{Extension, Json, extract::State};
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// Every admin write: actor (token name), action, target, before, after, time.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page: Page<AuditView> = state.admin.audit(q.cursor, q.limit.unwrap_or(50)).await?;
    Ok(super::as_seen_by(&actor, page, &[]))
}
