//! The admin API fuzzed from its own OpenAPI document with schemathesis: no server error, no
//! response that breaks the document, and no route that answers without a valid token.
//! `scripts/test-deps` installs schemathesis; IDSYNC_SCHEMATHESIS_SECONDS sets the time budget.

use std::process::Command;

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let services = Services::new().await;
    let db = services.migrate().await;
    // Some data, so that generated requests reach more than 404s.
    create_user(
        &db,
        Some("fuzz@example.com"),
        Some("+8613800138000"),
        Some("fuzz"),
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    broker
        .login(&login(
            "asking",
            "fuzz-1",
            json!({"email": "fuzz@example.com", "email_verified": true}),
        ))
        .await;

    let seconds = std::env::var("IDSYNC_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "45".into());
    let output = tokio::task::spawn_blocking({
        let schema = app.url("/openapi.json");
        move || {
            Command::new("schemathesis")
                .args([
                    "run",
                    &schema,
                    "--max-time",
                    &seconds,
                    "--workers",
                    "2",
                    "--checks",
                ])
                .arg(
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_schema_conformance,response_headers_conformance,ignored_auth,\
                     missing_required_header,unsupported_method",
                )
                .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
                .env("NO_COLOR", "1")
                .output()
                .expect("schemathesis runs (scripts/test-deps installs it)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("generated"))
        .unwrap_or_default()
        .to_owned();
    let mut figures = Figures::new("api-fuzzing");
    figures.note("schemathesis", summary);
    figures.report();
    app.stop().await;
}
