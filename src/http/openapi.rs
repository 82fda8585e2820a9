//! The admin API's routes and its OpenAPI 3 document, both from the handlers' annotations: each
//! handler is registered once, here, so the document cannot drift from the router. Served at
//! `/openapi.json`.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, audit, bindings, connections, decisions, users, webhooks};

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
    info(title = "identity-sync admin API", description = "Resolve pending bindings, look up and manage accounts and connections, read the audit log, manage webhook endpoints."),
    modifiers(&BearerAuth),
    tags((name = "bindings"), (name = "users"), (name = "connections"), (name = "audit"), (name = "decisions"), (name = "webhooks")),
)]
pub struct ApiDoc;

/// Every endpoint of the admin API (`/v1`), with the document that describes them. A path's
/// methods are registered together.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(bindings::list))
        .routes(routes!(bindings::show))
        .routes(routes!(bindings::resolve))
        .routes(routes!(users::find, users::create))
        .routes(routes!(users::show, users::update))
        .routes(routes!(users::unlink))
        .routes(routes!(users::reactivate))
        .routes(routes!(connections::list))
        .routes(routes!(connections::show, connections::put))
        .routes(routes!(connections::simulate))
        .routes(routes!(connections::held_removals))
        .routes(routes!(connections::release_removals))
        .routes(routes!(connections::discard_removals))
        .routes(routes!(audit::list))
        .routes(routes!(decisions::show))
        .routes(routes!(decisions::stats))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::retry))
        .routes(routes!(webhooks::replay))
        .routes(routes!(webhooks::ping))
}
