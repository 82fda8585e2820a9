//! `/v1/users`: look accounts up, create one, unlink an identity.

use axum::{Extension, Json, extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, ApiQuery},
};
use crate::accounts::AccountInput;
use crate::admin::{
    Actor,
    user_update::UserPatch,
    users::Lookup,
    views::{Page, UserView},
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FindQuery {
    pub user_pool_id: Option<String>,
    /// Exactly one of email, phone, username and attribute; normalised like events.
    pub email: Option<String>,
    /// With its `+` country code.
    pub phone: Option<String>,
    pub username: Option<String>,
    /// An attribute's name (`employee_id`), with `value`: every account holding the value (up
    /// to 200, by id).
    pub attribute: Option<String>,
    /// The attribute's value (trimmed, compared exactly).
    pub value: Option<String>,
}

/// Exact lookup by a normalised field (`{"items": [...]}` with zero or one account), or by an
/// attribute's value (every account holding it, up to 200).
#[utoipa::path(get, path = "/v1/users", tag = "users", params(FindQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<UserView>), (status = 401, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn find(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(q): ApiQuery<FindQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = q.user_pool_id.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_query",
            Some("user_pool_id"),
            "user_pool_id is required",
        )
    })?;
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    let attribute = match (given(q.attribute), given(q.value)) {
        (Some(name), Some(value)) => Some((name, value)),
        (None, None) => None,
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_query",
                Some("value"),
                "an attribute lookup needs both attribute and value",
            ));
        }
    };
    let lookup = match (given(q.email), given(q.phone), given(q.username), attribute) {
        (Some(e), None, None, None) => Lookup::Email(e),
        (None, Some(p), None, None) => Lookup::Phone(p),
        (None, None, Some(u), None) => Lookup::Username(u),
        (None, None, None, Some((name, value))) => Lookup::Attribute(name, value),
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_query",
                None,
                "give exactly one of email, phone, username and attribute (with value)",
            ));
        }
    };
    let searched = lookup.normalised()?;
    let items = state.admin.find_users(&pool, lookup).await?;
    let page = Page {
        items,
        next_cursor: None,
    };
    Ok(super::as_seen_by(&actor, page, &[searched]))
}

/// An account with its identities.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(super::as_seen_by(
        &actor,
        state.admin.get_user(id).await?,
        &[],
    ))
}

/// The fields of a new account (as `users import` reads them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub user_pool_id: String,
    pub id: Option<Uuid>,
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    /// With its `+` country code.
    pub phone: Option<String>,
    #[serde(default)]
    pub phone_verified: bool,
    pub username: Option<String>,
    pub name: Option<String>,
    /// Never linked automatically to an external identity; default false.
    #[serde(default)]
    pub protected: bool,
    /// String values by name, e.g. `{"employee_id": "E1024"}`; an attribute unique in the pool
    /// and held by another account is a conflict.
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// Identities linked ahead of their first login: `[{"connection": "...", "external_id":
    /// "..."}]`; one linked to another account is a conflict (`identity_taken`), one with a
    /// pending binding too (`identity_pending`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub identities: Option<Vec<crate::accounts::IdentityInput>>,
}

/// Create one account, with identities linked ahead if given; 409 when its email, phone,
/// username, id, a unique attribute's value or one of its identities is taken.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = NewUser, security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let input = AccountInput {
        user_pool_id: Some(body.user_pool_id),
        id: body.id,
        email: body.email,
        email_verified: body.email_verified,
        phone: body.phone,
        phone_verified: body.phone_verified,
        username: body.username,
        name: body.name,
        protected: body.protected,
        attributes: body.attributes,
        identities: body.identities,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.admin.create_user(&input, &actor).await?),
    ))
}

/// Unlink an identity from its account; publishes `user.unlinked`. Returns the account.
#[utoipa::path(delete, path = "/v1/users/{id}/identities/{connection}/{external_id}", tag = "users",
    params(("id" = Uuid, Path), ("connection" = String, Path), ("external_id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn unlink(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((id, connection, external_id)): ApiPath<(Uuid, String, String)>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(
        state
            .admin
            .unlink(id, &connection, &external_id, &actor)
            .await?,
    ))
}

/// Change an account: email, phone, username, name, the verification flags, `protected`. A field
/// left out stays, `null` clears it. Publishes `user.updated`; 409 when a value is held by another
/// user of the pool, 422 for a bad (or lookalike) value.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    request_body = UserPatch, security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.admin.update_user(id, &patch, &actor).await?))
}

/// Why an account is reactivated, for `user.reactivated` and the audit log.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactivateBody {
    /// Up to 1,024 characters; `admin` when absent.
    pub reason: Option<String>,
}

/// Reactivate a suspended account (contract section 11): it may be linked to and logged into
/// again. Publishes `user.reactivated`; 409 `not_suspended` for an active account.
#[utoipa::path(post, path = "/v1/users/{id}/reactivate", tag = "users", params(("id" = Uuid, Path)),
    request_body = ReactivateBody, security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn reactivate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReactivateBody>,
) -> Result<Json<UserView>, ApiError> {
    let reason = body.reason.as_deref().filter(|r| !r.trim().is_empty());
    if let Some(reason) = reason
        && (reason.chars().count() > 1024 || reason.chars().any(char::is_control))
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            Some("reason"),
            "reason: up to 1024 characters, no control characters",
        ));
    }
    Ok(Json(state.admin.reactivate(id, reason, &actor).await?))
}
