//! The OpenAPI 3 document of the admin API, generated from the handlers' annotations so that it
//! cannot drift from the code. Served at `/openapi.json`.

use axum::{Json, response::IntoResponse};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{audit, bindings, connections, decisions, users};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "identity-sync admin API", description = "Resolve pending bindings, look up and manage accounts and connections, read the audit log."),
    paths(
        bindings::list, bindings::show, bindings::resolve,
        users::find, users::show, users::create, users::update, users::unlink,
        connections::list, connections::show, connections::put,
        audit::list,
        decisions::show,
    ),
    modifiers(&BearerAuth),
    tags((name = "bindings"), (name = "users"), (name = "connections"), (name = "audit"), (name = "decisions")),
)]
pub struct ApiDoc;

pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
