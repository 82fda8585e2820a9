//! `/v1/decisions`: why a login was decided as it was.

use axum::{Extension, Json, extract::State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, ApiQuery},
};
use crate::admin::{
    Actor,
    views::{DecisionStatsView, DecisionView},
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    /// The CloudEvents `source` of the login, needed when several sources used the same id.
    pub source: Option<String>,
}

/// The decision of one login with its evidence: the fields and why each was or was not used,
/// the candidate accounts and why each was set aside, the connection's settings at the time.
#[utoipa::path(get, path = "/v1/decisions/{event_id}", tag = "decisions",
    params(("event_id" = String, Path), DecisionQuery), security(("bearer" = [])),
    responses((status = 200, body = DecisionView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(event_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DecisionQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = q.source.filter(|s| !s.is_empty());
    let decision: DecisionView = state
        .admin
        .get_decision(&event_id, source.as_deref())
        .await?;
    let decision = if actor.sees_masked() {
        decision.masked()
    } else {
        decision
    };
    Ok(super::as_seen_by(&actor, decision, &[]))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// The window, 1 to 168 hours back from now; default 24.
    #[param(minimum = 1, maximum = 168)]
    pub hours: Option<i64>,
}

/// How many logins were decided in the last hours, by hour, connection and outcome (counted from
/// the dedupe records, so within `worker.dedupe_retention`).
#[utoipa::path(get, path = "/v1/stats/decisions", tag = "decisions", params(StatsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = DecisionStatsView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<DecisionStatsView>, ApiError> {
    // The query reads every decision of the window: bounded below the request's own deadline.
    let limit = state.limits.timeout.mul_f64(0.9);
    Ok(Json(
        state
            .admin
            .decision_stats(q.hours.unwrap_or(24), limit)
            .await?,
    ))
}
