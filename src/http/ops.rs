//! Unauthenticated operational endpoints: `/healthz` (the process is alive), `/readyz` (database
//! and broker usable) and `/metrics` (Prometheus, OpenMetrics text format).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the database to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A probe's answer serves every `/readyz` for this long.
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// Asks the database whether it answers, on a connection of its own, at most once a second
/// whatever the rate of `/readyz` calls: a flood of probes costs the database one query a second
/// and the worker nothing.
pub struct ReadinessProbe {
    pool: PgPool,
    last: Mutex<Option<(Instant, bool)>>,
}

impl ReadinessProbe {
    /// `pool` should be the probe's own (one connection).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            last: Mutex::new(None),
        }
    }

    pub async fn database_answers(&self) -> bool {
        // Callers arriving during a probe wait for its answer instead of probing again.
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = *last
            && at.elapsed() < PROBE_FRESH
        {
            return answer;
        }
        let answer =
            tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool))
                .await
                .is_ok_and(|result| result.is_ok());
        *last = Some((Instant::now(), answer));
        answer
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let answers = state.probe.database_answers().await;
    let readiness = state.health.readiness(answers);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
