//! The web console in a real headless browser (Debian's Chromium driven by Playwright, see
//! tests/browser): sign in, find the pending binding, link it, see it leave the list; then the
//! events it published are checked here. `scripts/test-deps` installs what it needs.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_resolves_a_binding() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/console.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "Playwright is not installed: run scripts/test-deps"
    );
    let services = Services::new().await;
    let db = services.migrate().await;
    let user = create_user(
        &db,
        Some("browser@example.com"),
        Some("+8613511112222"),
        Some("browser"),
    )
    .await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let (status, body) = app
        .api()
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{user}"),
            Some(json!({"attributes": {"employee_id": "LiLei"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(broker.next_event().await.routing_key, "user.updated");
    // WeCom's preset maps the employee id from the source's userid.
    let reply = broker
        .login(&login(
            "asking",
            "wc-browser",
            json!({"email": "Browser@Example.com", "email_verified": true, "name": "Li Lei",
                   "attributes": {"userid": "LiLei"}}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    let binding = reply.binding_id.unwrap();
    broker.next_event().await;
    // Another binding, which the person resolved through the platform's command.
    let other = create_user(&db, Some("li.lei@example.com"), None, None).await;
    let reply = broker
        .login(&login(
            "asking",
            "wc-li",
            json!({"email": "li.lei@example.com", "email_verified": true}),
        ))
        .await;
    broker.next_event().await;
    let done = broker
        .command(
            "binding.resolve",
            json!({"binding_id": reply.binding_id.unwrap(), "action": "link", "user_id": other,
                   "actor": "li.lei", "proof": "otp"}),
        )
        .await;
    assert_eq!(done["outcome"], "done", "{done}");
    broker.next_event().await;
    broker.next_event().await;

    let screenshot = std::env::var("IDSYNC_CONSOLE_SCREENSHOT")
        .unwrap_or_else(|_| services.dir.join("console.png").display().to_string());
    let output = tokio::task::spawn_blocking({
        let url = app.url("/admin");
        move || {
            Command::new("node")
                .arg(&script)
                .env("CONSOLE_URL", url)
                .env("TOKEN", ADMIN_TOKEN)
                .env("EXPECT_BINDING", "asking / wc-browser")
                .env("SCREENSHOT", &screenshot)
                .output()
                .expect("node runs")
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
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["resolved"], true);
    // The comparison shows the candidate's email masked, and the evidence beside it.
    let email_row = result["email_row"].as_str().unwrap();
    assert!(
        email_row.contains("Browser@Example.com") && email_row.contains("b***@example.com"),
        "{email_row}"
    );
    assert_eq!(
        result["why"],
        json!([
            "emailbrowser@example.comyes—",
            "attributes.employee_idLiLeinonot matched on"
        ]),
        "the email was used"
    );
    // The candidate's attributes beside the login's mapped values.
    assert_eq!(
        result["attribute_row"], "attributes.employee_idLiLeiLiLei",
        "{result}"
    );
    assert_eq!(result["set_aside"], json!(["Candidate 1email-"]));
    // The recently resolved show who decided and how it was proven.
    let rows: Vec<&str> = result["resolved_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |identity: &str| *rows.iter().find(|r| r.contains(identity)).unwrap();
    let (console, command) = (row("wc-browser"), row("wc-li"));
    assert!(
        console.contains("wc-browser")
            && console.contains("ops-alice")
            && console.contains("admin"),
        "{console}"
    );
    assert!(
        command.contains("wc-li") && command.contains("li.lei") && command.contains("otp"),
        "{command}"
    );

    let (_, shown) = app.api().get(&format!("/v1/bindings/{binding}")).await;
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["user_id"], user.to_string());
    let resolved = broker.next_event().await;
    assert_eq!(resolved.routing_key, "binding.resolved");
    assert_eq!(resolved.body["data"]["resolved_by"], "ops-alice");
    assert_eq!(resolved.body["data"]["resolution"], "linked");
    let linked = broker.next_event().await;
    assert_eq!(linked.routing_key, "user.linked");
    assert_eq!(linked.body["data"]["user_id"], user.to_string());
    assert_eq!(linked.body["data"]["method"], "binding");
    app.stop().await;
}
