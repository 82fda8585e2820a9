//! The web console at `/admin`: one self-contained page (no build step) that talks to the admin
//! API with the token the admin pastes.

use axum::{http::header, response::IntoResponse};

const PAGE: &str = include_str!("console.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}
