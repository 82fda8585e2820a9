//! `/v1/bindings`: list, show and resolve pending bindings.

use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, ApiQuery},
};
use crate::admin::{
    Actor,
    bindings::ResolveAction,
    views::{BindingView, Page},
};
use crate::db::bindings::ListFilter;
use axum::extract::State;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub user_pool_id: Option<String>,
    /// `pending`, `resolved` or `expired`.
    pub status: Option<String>,
    pub connection: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// Pending bindings and their history, newest first.
#[utoipa::path(get, path = "/v1/bindings", tag = "bindings", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<BindingView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An empty filter is no filter.
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = ListFilter {
        user_pool_id: given(q.user_pool_id),
        status: given(q.status),
        connection: given(q.connection),
        before: q.cursor,
        limit: q.limit.unwrap_or(50),
    };
    let page: Page<BindingView> = state.admin.list_bindings(filter).await?;
    Ok(super::as_seen_by(&actor, page, &[]))
}

/// One binding, with a summary of each candidate account.
#[utoipa::path(get, path = "/v1/bindings/{id}", tag = "bindings", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(super::as_seen_by(
        &actor,
        state.admin.get_binding(id).await?,
        &[],
    ))
}

/// How to resolve a binding.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum ResolveRequest {
    /// Link the identity to this account of the binding's pool.
    Link { user_id: Uuid },
    /// Create a new account with this identity (refused on a login_only connection).
    // A struct variant, so that unknown fields are refused as for the others.
    Create {},
    /// Reject the identity; the reason is kept with the binding.
    Reject { reason: Option<String> },
}

const MAX_REASON: usize = 1000;

/// Link, create or reject. Only a pending binding can be resolved; of two concurrent resolves
/// exactly one wins and the other gets 409.
#[utoipa::path(post, path = "/v1/bindings/{id}/resolve", tag = "bindings", params(("id" = Uuid, Path)),
    request_body = ResolveRequest, security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<BindingView>, ApiError> {
    let action = match request {
        ResolveRequest::Link { user_id } => ResolveAction::Link { user_id },
        ResolveRequest::Create {} => ResolveAction::Create,
        ResolveRequest::Reject { reason } => {
            if reason
                .as_deref()
                .is_some_and(|r| r.chars().count() > MAX_REASON || r.contains('\0'))
            {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    Some("reason"),
                    format!("reason: at most {MAX_REASON} characters"),
                ));
            }
            ResolveAction::Reject { reason }
        }
    };
    Ok(Json(state.admin.resolve_binding(id, action, &actor).await?))
}
