//! `/v1/connections`: read, create and update connections.

use axum::{Extension, Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
};
use crate::admin::{
    Actor,
    simulation::MAX_WINDOW,
    views::{ConnectionView, Page, SimulationRow, SimulationView},
};
use crate::domain::connection::ConnectionSpec;

/// Every connection of every pool.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", security(("bearer" = [])),
    responses((status = 200, body = Page<ConnectionView>), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Page<ConnectionView>>, ApiError> {
    Ok(Json(Page {
        items: state.admin.list_connections().await?,
        next_cursor: None,
    }))
}

#[utoipa::path(get, path = "/v1/connections/{user_pool_id}/{identifier}", tag = "connections",
    params(("user_pool_id" = String, Path), ("identifier" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = ConnectionView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(state.admin.get_connection(&pool, &identifier).await?))
}

/// A connection's settings; absent keys take the contract's defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    /// Optional; must equal the path's.
    pub identifier: Option<String>,
    /// Optional; must equal the path's.
    pub user_pool_id: Option<String>,
    pub display_name: Option<String>,
    pub provider: Option<String>,
    /// `normal` (default) or `login_only`.
    pub login_mode: Option<String>,
    /// `disabled` (default), `field_matching` or `ask_binding`.
    pub association: Option<String>,
    /// Ordered subset of `email`, `phone`, `username` and `attributes.<name>` (an attribute the
    /// mapping fills); default `["email"]`.
    pub match_fields: Option<Vec<String>>,
    /// `any` (default: a candidate matches on any one listed field) or `all` (on every listed
    /// field the login carries).
    pub match_rule: Option<String>,
    /// Attribute names unique among the pool's accounts.
    pub unique_attributes: Option<Vec<String>>,
    /// Default true.
    pub require_verified: Option<bool>,
    /// e.g. `"86"`.
    pub default_country_code: Option<String>,
    /// A duration such as `72h` (default).
    pub binding_ttl: Option<String>,
    /// Link candidates whose matching email or phone is unverified on the account; default false.
    pub trust_unverified_accounts: Option<bool>,
    /// When not empty, emails outside these domains are not used.
    pub allowed_email_domains: Option<Vec<String>>,
    /// `ignore`, `notify` (default) or `update_user`: what a linked identity's changed email,
    /// phone or username does.
    pub on_profile_change: Option<String>,
    /// Account fields (`email`, `phone`, `username`, `attributes.<name>`) built by a template
    /// over the login's profile, e.g. `{"phone": "+{attributes.state_code}{attributes.mobile}"}`;
    /// over the preset of `provider` (`dingtalk`, `wecom`, `feishu`), key by key.
    pub mapping: Option<std::collections::BTreeMap<String, String>>,
    /// Mapped fields the source vouches for: verified whatever the profile's flags say.
    pub verified_fields: Option<Vec<String>>,
    /// The source's open API (`kind` dingtalk, wecom or feishu, its credentials, `api_base`,
    /// `id_field`, `fetch`, `cache_ttl`, `on_unavailable`, `timeout`, `rate_limit`). Secrets
    /// read back as `"set"`; writing `"set"` back keeps the stored secret.
    #[schema(value_type = Option<Object>)]
    pub directory: Option<crate::domain::directory::DirectorySpec>,
    /// `notify` (default), `unlink` or `suspend`: what the source's `directory.user_removed`
    /// does.
    pub on_source_removal: Option<String>,
    /// `{"max_fraction": 0.1, "min_count": 20, "window": "1h"}` (the defaults): removals beyond
    /// it within the window are held for an admin.
    #[schema(value_type = Option<Object>)]
    pub removal_guard: Option<crate::domain::leavers::RemovalGuardSpec>,
}

impl From<ConnectionBody> for ConnectionSpec {
    fn from(body: ConnectionBody) -> Self {
        ConnectionSpec {
            identifier: body.identifier,
            user_pool_id: body.user_pool_id,
            display_name: body.display_name,
            provider: body.provider,
            login_mode: body.login_mode,
            association: body.association,
            match_fields: body.match_fields,
            match_rule: body.match_rule,
            unique_attributes: body.unique_attributes,
            require_verified: body.require_verified,
            default_country_code: body.default_country_code,
            binding_ttl: body.binding_ttl,
            trust_unverified_accounts: body.trust_unverified_accounts,
            allowed_email_domains: body.allowed_email_domains,
            on_profile_change: body.on_profile_change,
            mapping: body.mapping,
            verified_fields: body.verified_fields,
            directory: body.directory,
            on_source_removal: body.on_source_removal,
            removal_guard: body.removal_guard,
        }
    }
}

/// Create (201) or update (200) a connection; the identifier is fixed by the path. A change
/// applies to the next event, without a restart. 422 names the bad field.
#[utoipa::path(put, path = "/v1/connections/{user_pool_id}/{identifier}", tag = "connections",
    params(("user_pool_id" = String, Path), ("identifier" = String, Path)),
    request_body = ConnectionBody, security(("bearer" = [])),
    responses((status = 200, body = ConnectionView), (status = 201, body = ConnectionView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ConnectionBody>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let spec = ConnectionSpec::from(body);
    let (view, created) = state
        .admin
        .put_connection(&pool, &identifier, spec, &actor)
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(view),
    ))
}

/// Proposed settings to preview, and the window of logins to preview them on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateBody {
    /// The proposed connection, as for `PUT` (absent keys take the contract's defaults).
    pub connection: ConnectionBody,
    /// How far back to take logins, e.g. `30d` (default), `12h`.
    pub since: Option<String>,
}

/// Each login of the connection in the window (the latest per identity) decided again as a first
/// login against today's accounts, under the current and the proposed settings: one row per pair
/// of outcomes, with up to five example identities. Read-only: nothing is written, published or
/// audited. Viewers may simulate.
#[utoipa::path(post, path = "/v1/connections/{user_pool_id}/{identifier}/simulate",
    tag = "connections", params(("user_pool_id" = String, Path), ("identifier" = String, Path)),
    request_body = SimulateBody, security(("bearer" = [])),
    responses((status = 200, body = SimulationView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn simulate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SimulateBody>,
) -> Result<axum::response::Response, ApiError> {
    let since = body.since.unwrap_or_else(|| "30d".to_owned());
    let window = humantime::parse_duration(since.trim())
        .ok()
        .filter(|w| !w.is_zero() && *w <= MAX_WINDOW)
        .ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_field",
                Some("since"),
                format!("since: {since:?} is not a duration from 1s to 3650d, such as 30d or 12h"),
            )
        })?;
    // One simulation at a time per role: each holds a database connection of the admin API's
    // for its whole run, and a viewer's never takes an admin's slot.
    let slots = if actor.sees_masked() {
        &state.limits.simulations.viewers
    } else {
        &state.limits.simulations.admins
    };
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "another simulation is running; retry when it is done",
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return Ok(response);
    };
    // Give up a little before the request's own deadline, with an answer that says why; a
    // viewer's preview sooner (its slot is shared by every viewer).
    let limit = state
        .limits
        .timeout
        .mul_f64(if actor.sees_masked() { 0.3 } else { 0.9 });
    let simulated = state
        .admin
        .simulate(
            &pool,
            &identifier,
            ConnectionSpec::from(body.connection),
            window,
            limit,
        )
        .await?;
    let view = SimulationView {
        since: since.trim().to_owned(),
        logins: simulated.logins,
        rows: simulated
            .rows
            .into_iter()
            .map(SimulationRow::from)
            .collect(),
    };
    // External ids are often emails (OIDC subjects, SAML name ids): viewers see them masked.
    Ok(super::as_seen_by(&actor, view, &[]).into_response())
}

/// Which held removals to release or discard: those of `external_ids`, or all when absent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldBody {
    /// The identities whose removals to take; all the connection holds when absent.
    pub external_ids: Option<Vec<String>>,
}

/// Most identities one release or discard names.
const MAX_HELD_IDS: usize = 10_000;

impl HeldBody {
    fn ids(&self) -> Result<Option<&[String]>, ApiError> {
        match &self.external_ids {
            Some(ids) if ids.len() > MAX_HELD_IDS => Err(ApiError::unprocessable(
                "invalid_field",
                Some("external_ids"),
                format!("external_ids: at most {MAX_HELD_IDS} per request"),
            )),
            ids => Ok(ids.as_deref()),
        }
    }
}

/// The removals the connection's guard holds (`removal_guard`), oldest first.
#[utoipa::path(get, path = "/v1/connections/{user_pool_id}/{identifier}/held-removals",
    tag = "connections", params(("user_pool_id" = String, Path), ("identifier" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Page<crate::db::leavers::HeldRemoval>),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn held_removals(
    State(state): State<AppState>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
) -> Result<Json<Page<crate::db::leavers::HeldRemoval>>, ApiError> {
    Ok(Json(Page {
        items: state.admin.held_removals(&pool, &identifier).await?,
        next_cursor: None,
    }))
}

/// Apply held removals (all, or those of `external_ids`) as the connection's
/// `on_source_removal` says now, past the guard. Audited.
#[utoipa::path(post, path = "/v1/connections/{user_pool_id}/{identifier}/held-removals/release",
    tag = "connections", params(("user_pool_id" = String, Path), ("identifier" = String, Path)),
    request_body = HeldBody, security(("bearer" = [])),
    responses((status = 200, body = Page<crate::admin::leavers::Released>),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn release_removals(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<HeldBody>,
) -> Result<Json<Page<crate::admin::leavers::Released>>, ApiError> {
    let items = state
        .admin
        .release_removals(&pool, &identifier, body.ids()?, &actor)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Drop held removals (all, or those of `external_ids`) without applying them. Audited.
#[utoipa::path(post, path = "/v1/connections/{user_pool_id}/{identifier}/held-removals/discard",
    tag = "connections", params(("user_pool_id" = String, Path), ("identifier" = String, Path)),
    request_body = HeldBody, security(("bearer" = [])),
    responses((status = 200, body = Page<crate::db::leavers::HeldRemoval>),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn discard_removals(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath((pool, identifier)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<HeldBody>,
) -> Result<Json<Page<crate::db::leavers::HeldRemoval>>, ApiError> {
    let items = state
        .admin
        .discard_removals(&pool, &identifier, body.ids()?, &actor)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}
