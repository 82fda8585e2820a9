//! The HTTP side served by `run` on `admin.listen`: health, readiness and metrics.

mod ops;

use axum::Router;

use crate::{health::Health, metrics::Metrics};

#[derive(Clone)]
pub struct AppState {
    pub health: Health,
    pub metrics: Metrics,
}

pub fn router(state: AppState) -> Router {
    ops::routes().with_state(state)
}
