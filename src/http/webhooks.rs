//! `/v1/webhooks`: endpoints that receive the events over HTTP (contract section 12).

use axum::{Extension, Json, extract::State, http::StatusCode};
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
    views::Page,
    webhooks::{DeliveryView, PingView, ReplayView, WebhookChange, WebhookView, WebhookWithSecret},
};

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub user_pool_id: String,
    /// `http` or `https`; its address must not be loopback, private or link-local (unless
    /// `webhooks.allow_private_addresses`; link-local never).
    pub url: String,
    /// Routing-key patterns (`user.*`, `binding.#`); default `["#"]`, every event.
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A change: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    /// `false` stops deliveries (they wait); `true` starts them again.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// An RFC 3339 time, or a duration back from now such as `"1h"`.
    pub since: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub user_pool_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    pub state: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// Create an endpoint: 201 with its secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateBody,
    security(("bearer" = [])),
    responses((status = 201, body = WebhookWithSecret), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    let created = state
        .admin
        .create_webhook(
            &body.user_pool_id,
            &body.url,
            body.event_types,
            body.description,
            &actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every endpoint (of one pool), without secrets.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<WebhookView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<WebhookView>>, ApiError> {
    let pool = q.user_pool_id.filter(|p| !p.is_empty());
    let items = state.admin.list_webhooks(pool.as_deref()).await?;
    Ok(Json(Page {
        items: items.into_iter().map(|w| w.seen_by(&actor)).collect(),
        next_cursor: None,
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(state.admin.get_webhook(id).await?.seen_by(&actor)))
}

/// Change an endpoint's URL, patterns, description or enabled flag.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    request_body = ChangeBody, security(("bearer" = [])),
    responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ChangeBody>,
) -> Result<Json<WebhookView>, ApiError> {
    let change = WebhookChange {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
        enabled: body.enabled,
    };
    Ok(Json(state.admin.update_webhook(id, change, &actor).await?))
}

/// Delete an endpoint with its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.admin.delete_webhook(id, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret, shown this once; the old one keeps signing beside it for
/// `webhooks.rotation_overlap`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = WebhookWithSecret), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    Ok(Json(state.admin.rotate_webhook_secret(id, &actor).await?))
}

/// The delivery log, newest first: each delivery with its attempts.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), DeliveriesQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<DeliveryView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let state_filter = q.state.filter(|s| !s.is_empty());
    Ok(Json(
        state
            .admin
            .webhook_deliveries(id, state_filter.as_deref(), q.cursor, q.limit.unwrap_or(50))
            .await?,
    ))
}

/// Send one delivery again now, with a whole schedule of attempts.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = Uuid, Path), ("delivery_id" = i64, Path)), security(("bearer" = [])),
    responses((status = 202), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((id, delivery)): ApiPath<(Uuid, i64)>,
) -> Result<StatusCode, ApiError> {
    state
        .admin
        .retry_webhook_delivery(id, delivery, &actor)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Deliver again every stored event since a time that the endpoint takes, with their own ids.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    params(("id" = Uuid, Path)), request_body = ReplayBody, security(("bearer" = [])),
    responses((status = 202, body = ReplayView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    let view = state.admin.replay_webhook(id, &body.since, &actor).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Send a signed `webhook.ping` event now and say what the receiver answered.
#[utoipa::path(post, path = "/v1/webhooks/{id}/ping", tag = "webhooks",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = PingView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn ping(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<PingView>, ApiError> {
    Ok(Json(state.admin.ping_webhook(id).await?))
}
