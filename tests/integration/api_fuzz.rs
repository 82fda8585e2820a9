//! The admin API fuzzed from its own OpenAPI document with schemathesis: no server error, no
//! response that breaks the document, and no route that answers without a valid token.
//! `scripts/test-deps` installs schemathesis (into target/test-venv unless one is on the PATH); IDSYNC_SCHEMATHESIS_SECONDS sets the time budget.

use std::process::{Command, Output};

use serde_json::json;

use idsync_test_support::*;

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

    let seconds = std::env::var("IDSYNC_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "30".into());
    let schema = app.url("/openapi.json");
    let report = services.dir.join("schemathesis.json");
    let mut run = run_schemathesis(&schema, &seconds, &report, ALL_PHASES).await;
    let mut figures = Figures::new("api-fuzzing");
    // A finding about the API fails at once. A failure of the tool itself (a Python error while
    // generating, seen under load in the coverage phase) gets one more try without that phase;
    // the report tells the two apart.
    if run.findings().is_empty() && !run.tool_errors().is_empty() {
        figures.note("first_try_tool_errors", run.tool_errors());
        run = run_schemathesis(&schema, &seconds, &report, "examples,fuzzing,stateful").await;
    }
    assert!(
        run.findings().is_empty() && run.tool_errors().is_empty(),
        "findings: {:#?}\ntool errors: {:#?}\n{}",
        run.findings(),
        run.tool_errors(),
        run.stdout
    );
    let generated = run.report["test_cases"]["generated"].as_u64().unwrap_or(0);
    assert!(
        generated >= MIN_CASES,
        "only {generated} cases were generated:\n{}",
        run.stdout
    );
    assert_eq!(run.report["exit_code"], 0, "{}", run.stdout);
    figures.note("generated", generated);
    figures.note("phases", &run.report["phases"]);
    figures.report();
    app.stop().await;
}

/// Fewer generated cases than this means schemathesis did not really run.
const MIN_CASES: u64 = 300;
const ALL_PHASES: &str = "examples,coverage,fuzzing,stateful";

struct SchemathesisRun {
    report: serde_json::Value,
    stdout: String,
}

impl SchemathesisRun {
    /// Checks that failed: findings about the API.
    fn findings(&self) -> Vec<serde_json::Value> {
        self.list("failures")
    }

    /// Errors of the tool itself.
    fn tool_errors(&self) -> Vec<serde_json::Value> {
        self.list("errors")
    }

    /// A list of the report; a report without it counts as one entry, so that it cannot pass.
    fn list(&self, key: &str) -> Vec<serde_json::Value> {
        self.report[key]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![json!(format!("the report has no {key} list"))])
    }
}

/// The one `scripts/test-deps` installed into the project's virtual environment, else the PATH's.
fn schemathesis() -> std::path::PathBuf {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/schemathesis");
    if venv.exists() {
        venv
    } else {
        "schemathesis".into()
    }
}

async fn run_schemathesis(
    schema: &str,
    seconds: &str,
    report: &std::path::Path,
    phases: &str,
) -> SchemathesisRun {
    let (schema, seconds, report, phases) = (
        schema.to_owned(),
        seconds.to_owned(),
        report.to_owned(),
        phases.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(&report);
        let output: Output = Command::new(schemathesis())
            .args(["run", &schema, "--max-time", &seconds, "--workers", "2"])
            .args(["--phases", &phases])
            .args(["--report", "json", "--report-json-path"])
            .arg(&report)
            // Generation is slower on a loaded machine; that is not the API's fault.
            .args(["--suppress-health-check", "all"])
            .arg("--checks")
            .arg(
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance,ignored_auth,\
                 missing_required_header,unsupported_method",
            )
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs (scripts/test-deps installs it)");
        let stdout = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let report = std::fs::read(&report)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| panic!("schemathesis wrote no report:\n{stdout}"));
        SchemathesisRun { report, stdout }
    })
    .await
    .unwrap()
}
