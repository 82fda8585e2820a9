//! The HTTP side served by `run` on `admin.listen`: health, readiness and metrics (open), the
//! admin API under `/v1` (bearer tokens), its OpenAPI document and the web console.

pub mod audit;
pub mod auth;
pub mod bindings;
pub mod connections;
mod console;
pub mod decisions;
pub mod error;
mod extract;
pub mod openapi;
mod ops;
pub mod serve;
pub mod users;
pub mod webhooks;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::Semaphore;

use crate::{admin::Admin, health::Health, metrics::Metrics};

pub use ops::ReadinessProbe;

/// A response body as `actor` may see it: for viewers, every email and phone number masked but
/// those in `keep` (what the viewer searched by).
pub(crate) fn as_seen_by<T: serde::Serialize>(
    actor: &crate::admin::Actor,
    value: T,
    keep: &[String],
) -> axum::Json<serde_json::Value> {
    let mut json = serde_json::to_value(value).expect("API views serialise");
    if actor.sees_masked() {
        crate::domain::mask::json(&mut json, keep);
    }
    axum::Json(json)
}

/// Admin request bodies are small; anything bigger is refused before it is read.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub health: Health,
    pub metrics: Metrics,
    pub admin: Admin,
    pub tokens: auth::Tokens,
    pub probe: Arc<ReadinessProbe>,
    pub limits: RequestLimits,
}

/// Bounds on the admin API's work: how many requests at once, and for how long each.
#[derive(Clone)]
pub struct RequestLimits {
    slots: Arc<Semaphore>,
    timeout: Duration,
    /// The simulation an admin may run at once, and the one the viewers share: a viewer's
    /// preview never takes an admin's slot.
    simulations: Simulations,
}

/// Previews of a connection change (each holds one of the admin API's database connections for
/// its whole run): one at a time for admins, one at a time for viewers, apart, so that a viewer
/// repeating a long preview cannot lock admins out.
#[derive(Clone)]
pub struct Simulations {
    pub admins: Arc<Semaphore>,
    pub viewers: Arc<Semaphore>,
}

impl RequestLimits {
    pub fn new(max_concurrent: usize, timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
            simulations: Simulations {
                admins: Arc::new(Semaphore::new(1)),
                viewers: Arc::new(Semaphore::new(1)),
            },
        }
    }
}

/// Admin API requests beyond the concurrency limit are answered 503 at once; a request running
/// past the timeout is answered 503 while its work finishes in a task of its own (a transaction
/// dropped half-way could leave its connection unusable).
async fn limit_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(slot) = state.limits.slots.clone().try_acquire_owned() else {
        let mut response = error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many admin requests at once; retry shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    // The body is read here, under the deadline: a client trickling a body must not hold a slot
    // for ever (the handler, once started, runs to completion).
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        state.limits.timeout,
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return error::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            )
            .into_response();
        }
        Err(_) => {
            return error::ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            )
            .into_response();
        }
    };
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    let work = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(slot);
        response
    });
    match tokio::time::timeout(state.limits.timeout, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::error!(%error, "an admin request handler failed");
            error::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }
        Err(_) => error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; a change it made may still complete, so check before \
             retrying",
        )
        .into_response(),
    }
}

pub fn router(state: AppState) -> Router {
    let (api, document) = openapi::api()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_requests,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .split_for_parts();
    let document = serde_json::to_string(&document).expect("the OpenAPI document serialises");
    let document = move || {
        let document = document.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], document) }
    };
    ops::routes()
        .route("/openapi.json", get(document))
        .route("/admin", get(console::page))
        .route("/schemas/{file}", get(schema))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::map_response(method_not_allowed_as_json))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The JSON Schema of an event type and major version, `/schemas/<type>.v<major>.json`: public, as
/// the events that name it in `dataschema` are.
async fn schema(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    static SCHEMAS: std::sync::LazyLock<Vec<(String, String)>> = std::sync::LazyLock::new(|| {
        crate::domain::schemas::all()
            .into_iter()
            .map(|(file, schema)| {
                (
                    file,
                    serde_json::to_string_pretty(&schema).expect("serialises"),
                )
            })
            .collect()
    });
    match SCHEMAS.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => (
            [(header::CONTENT_TYPE, "application/schema+json")],
            text.clone(),
        )
            .into_response(),
        None => not_found().await.into_response(),
    }
}

/// The router answers a known path with an unsupported method by an empty 405; this gives it the
/// API's error body and keeps its `Allow` header.
async fn method_not_allowed_as_json(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut json = error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
    .into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    json
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}
