//! The web console in a real headless browser (Debian's Chromium driven by Playwright, see
//! tests/browser), one test per page: each prepares data through the API and the broker, runs
//! the page's script, and checks what the person saw, the events the page's writes published and
//! the state they left. `scripts/test-deps` installs what they need. With
//! `IDSYNC_CONSOLE_SCREENSHOT_DIR` set, each test writes its page's screenshot there (that is how
//! the ones in docs/ are made), else in the test's directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

/// Runs `tests/browser/<script>` against the console of `app` with `vars`, and returns the JSON
/// it printed; the script's screenshot is named `shot`.
async fn browse(
    services: &Services,
    app: &TestApp,
    script: &str,
    shot: &str,
    vars: &[(&str, &str)],
) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "Playwright is not installed: run scripts/test-deps"
    );
    let screenshot = std::env::var_os("IDSYNC_CONSOLE_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| services.dir.clone())
        .join(shot);
    let mut command = Command::new("node");
    command
        .arg(root.join("tests/browser").join(script))
        .env("CONSOLE_URL", app.url("/admin"))
        .env("SCREENSHOT", &screenshot);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().expect("node runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout}: {e}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Rows of cell texts, as `rows()` of tests/browser/lib.mjs gives them.
fn table(value: &Value) -> Vec<Vec<String>> {
    value.as_array().unwrap().iter().map(strings).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_resolves_a_binding() {
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

    let result = browse(
        &services,
        &app,
        "console.mjs",
        "console.png",
        &[
            ("TOKEN", ADMIN_TOKEN),
            ("EXPECT_BINDING", "asking / wc-browser"),
        ],
    )
    .await;
    assert_eq!(result["resolved"], true);
    assert_eq!(result["current"], "Pending bindings", "the first page");
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
    assert_eq!(result["side_by_side"], true, "{result}");
    // The candidate's attributes beside the login's mapped values.
    assert_eq!(
        result["attribute_row"], "attributes.employee_idLiLeiLiLei",
        "{result}"
    );
    assert_eq!(result["set_aside"], json!(["Candidate 1email-"]));
    // The recently resolved show who decided and how it was proven.
    let rows = strings(&result["resolved_rows"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |identity: &str| rows.iter().find(|r| r.contains(identity)).unwrap().clone();
    let (console, command) = (row("wc-browser"), row("wc-li"));
    assert!(
        console.contains("ops-alice") && console.contains("admin"),
        "{console}"
    );
    assert!(
        command.contains("li.lei") && command.contains("otp"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_unlinks_protects_and_edits_an_account() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();
    // The account worked on, and another one holding the email the edit will try to take.
    let (status, mei) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "mei@example.com", "email_verified": true,
                   "username": "mei", "name": "Mei Chen",
                   "attributes": {"team": "blue", "note": "<b>lead</b>"}}),
        )
        .await;
    assert_eq!(status, 201, "{mei}");
    let mei = mei["id"].as_str().unwrap().to_owned();
    let (status, other) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "other@example.com", "email_verified": true,
                   "name": "Other", "attributes": {"team": "blue"}}),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    // Two identities linked by their logins; one's external id is written to break out of HTML
    // (and holds a "/", which its path segment must encode).
    let hostile = "saml/<img src=x onerror=\"document.title='owned'\">";
    for (connection, external_id) in [("matching", "dt-mei"), ("trusting", hostile)] {
        let reply = broker
            .login(&login(
                connection,
                external_id,
                json!({"email": "mei@example.com", "email_verified": true, "name": "Mei"}),
            ))
            .await;
        assert_eq!(reply.outcome, Outcome::UserLinked, "{connection}");
        assert_eq!(broker.next_event().await.routing_key, "user.linked");
    }
    // What the API says when an account takes another's email.
    let (status, refusal) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{mei}"),
            Some(json!({"email": "other@example.com"})),
        )
        .await;
    assert_eq!(status, 409, "{refusal}");
    assert_eq!(error_code(&refusal), "field_taken");
    let refusal = refusal["error"]["message"].as_str().unwrap().to_owned();

    let result = browse(
        &services,
        &app,
        "users.mjs",
        "console-users.png",
        &[
            ("TOKEN", ADMIN_TOKEN),
            ("VIEWER_TOKEN", VIEWER_TOKEN),
            ("HOSTILE_ID", hostile),
        ],
    )
    .await;
    let by_email = strings(&result["by_email"]);
    assert_eq!(by_email.len(), 1, "{by_email:?}");
    assert!(by_email[0].starts_with("mei@example.com"), "{by_email:?}");
    let by_attribute = strings(&result["by_attribute"]);
    assert_eq!(by_attribute.len(), 2, "{by_attribute:?}");
    assert!(
        by_attribute
            .iter()
            .any(|r| r.starts_with("mei@example.com"))
            && by_attribute
                .iter()
                .any(|r| r.starts_with("other@example.com")),
        "{by_attribute:?}"
    );
    let fields = table(&result["fields"]);
    assert!(
        fields.contains(&vec!["Account id".into(), mei.clone()]),
        "{fields:?}"
    );
    assert!(
        fields.contains(&vec!["Email".into(), "mei@example.comverified".into()]),
        "{fields:?}"
    );
    assert!(
        fields.contains(&vec!["Protected".into(), "no".into()]),
        "{fields:?}"
    );
    // The hostile values are shown as the text they are.
    assert_eq!(
        table(&result["attributes"]),
        vec![vec!["note", "<b>lead</b>"], vec!["team", "blue"]]
    );
    assert_eq!(
        result["injected"], 0,
        "markup from the data made it into the page"
    );
    let mut before = table(&result["identities_before"]);
    before.sort();
    assert_eq!(
        before,
        vec![vec!["matching", "dt-mei"], vec!["trusting", hostile]]
    );

    // Unlinked: gone from the page, and the event names it.
    assert!(
        result["unlinked"].as_str().unwrap().contains(hostile),
        "{}",
        result["unlinked"]
    );
    assert_eq!(
        table(&result["identities_after"]),
        vec![vec!["matching", "dt-mei"]]
    );
    let unlinked = broker.next_event().await;
    assert_eq!(unlinked.routing_key, "user.unlinked");
    let data = &unlinked.body["data"];
    assert_eq!(data["user_id"], mei.as_str());
    assert_eq!(
        data["identity"],
        json!({"connection": "trusting", "external_id": hostile})
    );
    assert_eq!(data["actor"], "ops-alice");

    // Protected.
    assert_eq!(result["protected_field"], "yes");
    assert_eq!(result["protect_button"], "Unprotect");
    let updated = broker.next_event().await;
    assert_eq!(updated.routing_key, "user.updated");
    assert_eq!(updated.body["data"]["changed"], json!(["protected"]));
    assert_eq!(updated.body["data"]["actor"], "ops-alice");

    // Renamed.
    assert_eq!(result["name_field"], "Mei Chen-Li");
    let updated = broker.next_event().await;
    assert_eq!(updated.routing_key, "user.updated");
    assert_eq!(updated.body["data"]["changed"], json!(["name"]));
    assert_eq!(updated.body["data"]["user"]["name"], "Mei Chen-Li");

    // The other account's email: the API's message, and nothing changed.
    let conflict = result["conflict"].as_str().unwrap();
    assert_eq!(conflict, format!("Not saved: {refusal}"));
    assert_eq!(result["form_error"], refusal.as_str());
    assert_eq!(result["email_field"], "mei@example.comverified");

    // A viewer found the account by the email searched for, and could not protect it.
    let viewer = strings(&result["viewer_results"]);
    assert_eq!(viewer.len(), 1);
    assert!(viewer[0].starts_with("mei@example.com"), "{viewer:?}");
    assert_eq!(
        result["viewer_refused"],
        "Not saved: this token may only read"
    );
    assert_eq!(result["viewer_protected"], "yes");

    let (_, shown) = api.get(&format!("/v1/users/{mei}")).await;
    assert_eq!(shown["protected"], true);
    assert_eq!(shown["name"], "Mei Chen-Li");
    assert_eq!(shown["email"], "mei@example.com");
    assert_eq!(shown["identities"].as_array().unwrap().len(), 1);
    broker.no_more_events().await;
    app.stop().await;
}

/// The simulation's rows as comparable tuples: (from, to, count, sorted examples).
fn simulated(rows: &Value) -> Vec<(String, String, u64, Vec<String>)> {
    let mut rows: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut examples = strings(&r["examples"]);
            examples.sort();
            (
                r["from"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
                examples,
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_previews_and_saves_a_connection() {
    let services = Services::new().await;
    let db = services.migrate().await;
    for email in ["ann@corp.example", "ben@corp.example"] {
        create_user(&db, Some(email), None, None).await;
    }
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();
    let (status, root) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "root@corp.example", "email_verified": true,
                   "protected": true}),
        )
        .await;
    assert_eq!(status, 201, "{root}");
    // Logins through `plain` (association disabled): each got an account of its own. Matched by
    // email, the first two would link to the existing accounts, the protected one would wait as
    // a binding, a new address finds the account its first login created, and one without an
    // email stays as it is.
    let logins = [
        (
            "c-ann",
            json!({"email": "ann@corp.example", "email_verified": true}),
        ),
        (
            "c-ben",
            json!({"email": "Ben@Corp.Example", "email_verified": true}),
        ),
        (
            "c-root",
            json!({"email": "root@corp.example", "email_verified": true}),
        ),
        (
            "c-new",
            json!({"email": "new@corp.example", "email_verified": true}),
        ),
        ("c-anon", json!({"name": "No Email"})),
    ];
    for (external_id, profile) in &logins {
        let reply = broker
            .login(&login("plain", external_id, profile.clone()))
            .await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{external_id}");
        broker.next_event().await;
    }
    let (_, before) = api.get("/v1/connections/pool-1/plain").await;
    let version = before["settings_version"].as_i64().unwrap();
    let mut proposed = before.clone();
    let fields = proposed.as_object_mut().unwrap();
    fields.remove("effective_mapping");
    fields.remove("settings_version");
    fields.remove("held_removals");
    fields.insert("association".into(), json!("field_matching"));
    let (status, expected) = api
        .post(
            "/v1/connections/pool-1/plain/simulate",
            json!({"connection": proposed, "since": "30d"}),
        )
        .await;
    assert_eq!(status, 200, "{expected}");
    let expected_rows = simulated(&expected["rows"]);
    let example = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        expected_rows,
        vec![
            (
                "user_created".into(),
                "binding_pending".into(),
                1,
                example(&["c-root"])
            ),
            (
                "user_created".into(),
                "user_created".into(),
                1,
                example(&["c-anon"])
            ),
            (
                "user_created".into(),
                "user_linked".into(),
                3,
                example(&["c-ann", "c-ben", "c-new"])
            ),
        ],
        "the API's preview"
    );

    let result = browse(
        &services,
        &app,
        "connections.mjs",
        "console-connections.png",
        &[("TOKEN", ADMIN_TOKEN)],
    )
    .await;
    // Save only with a preview of exactly the form's settings on screen.
    assert_eq!(
        result["save"],
        json!({"at_first": true, "after_edit": true, "after_refusal": true,
               "after_preview": false, "after_second_edit": true,
               "after_second_preview": false, "after_saving": true}),
        "when Save was disabled"
    );
    assert!(
        result["refused"]
            .as_str()
            .unwrap()
            .contains("since: \"forever\""),
        "{}",
        result["refused"]
    );
    assert_eq!(result["since_invalid"], "true");
    assert!(
        result["stale"].as_str().unwrap().contains("preview again"),
        "{}",
        result["stale"]
    );

    // The table shows the API's rows, changed ones marked.
    let shown: Vec<(String, String, u64, Vec<String>)> = result["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let outcome = |key: &str| r[key].as_str().unwrap().replace(' ', "_");
            assert_eq!(
                r["changed"].as_bool().unwrap(),
                outcome("from") != outcome("to"),
                "{r}"
            );
            let mut examples: Vec<String> = r["examples"]
                .as_str()
                .unwrap()
                .split(", ")
                .map(str::to_owned)
                .collect();
            examples.sort();
            (
                outcome("from"),
                outcome("to"),
                r["count"].as_u64().unwrap(),
                examples,
            )
        })
        .collect();
    let mut sorted = shown.clone();
    sorted.sort();
    assert_eq!(sorted, expected_rows, "the preview's table");
    assert_eq!(shown[0].2, 3, "changed rows first, the largest first");
    assert_eq!(
        result["summary"],
        "5 logins since 30d: 4 would be decided differently."
    );

    // The chart: per outcome, a bar now and a bar proposed, their lengths proportional to the
    // counts the API's rows add up to.
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (from, to, count, _) in &expected_rows {
        *counts.entry((from.clone(), "current".into())).or_default() += count;
        *counts.entry((to.clone(), "proposed".into())).or_default() += count;
    }
    let bars = result["chart"].as_array().unwrap();
    assert_eq!(
        bars.len(),
        10,
        "two bars for each of the five outcomes: {bars:?}"
    );
    // The length drawn on screen, per login.
    let per_login: Vec<f64> = bars
        .iter()
        .map(|b| {
            let key = (
                b["outcome"].as_str().unwrap().to_owned(),
                b["side"].as_str().unwrap().to_owned(),
            );
            let count = counts.get(&key).copied().unwrap_or(0);
            assert_eq!(b["count"].as_u64().unwrap(), count, "{b}");
            let drawn = b["rendered"].as_f64().unwrap();
            if count == 0 {
                assert_eq!(b["width"].as_f64().unwrap(), 0.0, "{b}");
            }
            drawn / count.max(1) as f64
        })
        .filter(|w| *w > 0.0)
        .collect();
    assert_eq!(per_login.len(), 4, "four bars with logins: {bars:?}");
    assert!(
        per_login.iter().all(|w| (w - per_login[0]).abs() < 0.05),
        "bar lengths are proportional to the counts: {per_login:?}"
    );
    assert!(
        per_login[0] > 10.0,
        "bars long enough to see: {per_login:?}"
    );
    let labels = strings(&result["chart_labels"]);
    for label in ["user created", "5 now", "1 proposed", "3 proposed"] {
        assert!(labels.iter().any(|l| l == label), "{label}: {labels:?}");
    }
    assert!(
        result["chart_text"]
            .as_str()
            .unwrap()
            .contains("user created: 5 now, 1 proposed; user linked: 0 now, 3 proposed"),
        "{}",
        result["chart_text"]
    );

    // Saved as previewed.
    let (_, after) = api.get("/v1/connections/pool-1/plain").await;
    assert_eq!(after["association"], "field_matching");
    assert_eq!(after["display_name"], "Plain, matching by email");
    assert_eq!(after["match_fields"], before["match_fields"]);
    let new_version = after["settings_version"].as_i64().unwrap();
    assert!(new_version > version, "{version} -> {new_version}");
    assert_eq!(
        result["saved"],
        format!("Saved pool-1 / plain: settings version {new_version}.")
    );
    assert!(
        result["meta_after"]
            .as_str()
            .unwrap()
            .ends_with(&format!("settings version {new_version}")),
        "{}",
        result["meta_after"]
    );
    // In the audit log, as the page shows it and as the API gives it.
    assert_eq!(
        table(&result["audit"]),
        vec![vec![
            "ops-alice",
            "connection.update",
            "connection/pool-1/plain"
        ]]
    );
    let summary = strings(&result["audit_summary"]);
    assert!(
        summary[0].contains("association") && summary[0].contains("display_name"),
        "{summary:?}"
    );
    let (_, audit) = api.get("/v1/audit?action=connection.update").await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["actor"], "ops-alice");
    assert_eq!(items[0]["before"]["association"], "disabled");
    assert_eq!(items[0]["after"]["association"], "field_matching");
    // Previews publish nothing, and neither does the connection's change.
    broker.no_more_events().await;
    app.stop().await;
}

const CAROL_TOKEN: &str = "test-carol-token-0123456789";

/// The next whole second, once it has passed: writes before and after it fall on either side.
async fn second_boundary() -> DateTime<Utc> {
    let boundary = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);
    let wait = (boundary - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    boundary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_reads_the_audit_log() {
    // A second admin, so that the log has two actors.
    let services = Services::with_config(&format!(
        "[[admin.tokens]]\nname = \"ops-carol\"\nrole = \"admin\"\ntoken = \"{CAROL_TOKEN}\"\n"
    ))
    .await;
    let app = TestApp::spawn(&services).await;
    let (alice, carol) = (app.api(), app.api_as(Some(CAROL_TOKEN)));
    let patch = |api: &Api, id: &str, body: Value| {
        let (api, path) = (api.clone(), format!("/v1/users/{id}"));
        async move {
            let (status, body) = api.call(reqwest::Method::PATCH, &path, Some(body)).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    // Before the window.
    let (status, user) = alice
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "audit@example.com", "name": "A"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    patch(&alice, &id, json!({"name": "A1"})).await;
    let from = second_boundary().await;
    // In the window.
    patch(&carol, &id, json!({"name": "B1"})).await;
    let (status, body) = alice
        .put(
            "/v1/connections/pool-1/plain",
            json!({"display_name": "Plain B", "provider": "oidc"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    patch(&carol, &id, json!({"protected": true})).await;
    let to = second_boundary().await;
    let (from, to) = (
        from.to_rfc3339_opts(SecondsFormat::Secs, true),
        to.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    // After it: enough for a second page.
    for i in 1..=21 {
        patch(&alice, &id, json!({"name": format!("C{i}")})).await;
    }
    let (_, api_window) = alice
        .get(&format!("/v1/audit?since={from}&until={to}"))
        .await;

    let result = browse(
        &services,
        &app,
        "audit.mjs",
        "console-audit.png",
        &[
            ("TOKEN", ADMIN_TOKEN),
            ("WINDOW_FROM", &from),
            ("WINDOW_TO", &to),
        ],
    )
    .await;
    let entries = |key: &str| -> Vec<(String, String, String)> {
        result[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap().to_owned();
                (text("actor"), text("action"), text("change"))
            })
            .collect()
    };
    let entry = |actor: &str, action: &str, change: &str| {
        (actor.to_owned(), action.to_owned(), change.to_owned())
    };
    assert_eq!(result["zone"], "Asia/Shanghai");
    // The first page: 25 entries newest first, then the last one loaded with "Load more".
    let first = entries("first");
    assert_eq!(first.len(), 25);
    assert_eq!(result["more_shown"], true);
    assert_eq!(first[0], entry("ops-alice", "user.update", "changed: name"));
    assert_eq!(
        first[21],
        entry("ops-carol", "user.update", "changed: protected")
    );
    let all = entries("all");
    assert_eq!(all.len(), 26);
    assert_eq!(&all[..25], &first[..]);
    assert_eq!(all[25], entry("ops-alice", "user.create", "created"));
    assert_eq!(result["more_after"], false);
    let user_target = format!("user/{id}");
    assert!(
        result["all"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] != "connection.update")
            .all(|e| e["target"] == user_target.as_str()),
        "{}",
        result["all"]
    );

    let by_action = entries("by_action");
    assert_eq!(by_action.len(), 24);
    assert!(
        by_action.iter().all(|e| e.1 == "user.update"),
        "{by_action:?}"
    );
    // The window, typed in Shanghai's local time, is the same instants.
    assert_eq!(
        entries("in_window"),
        vec![
            entry("ops-carol", "user.update", "changed: protected"),
            entry("ops-carol", "user.update", "changed: name"),
        ]
    );
    let window_any = entries("window_any");
    assert_eq!(
        window_any,
        vec![
            entry("ops-carol", "user.update", "changed: protected"),
            entry(
                "ops-alice",
                "connection.update",
                "changed: display_name, settings_version"
            ),
            entry("ops-carol", "user.update", "changed: name"),
        ]
    );
    let api_actions: Vec<(&str, &str)> = api_window["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["actor"].as_str().unwrap(), i["action"].as_str().unwrap()))
        .collect();
    let shown_actions: Vec<(&str, &str)> = window_any
        .iter()
        .map(|e| (e.0.as_str(), e.1.as_str()))
        .collect();
    assert_eq!(shown_actions, api_actions, "as the API lists the window");
    assert_eq!(
        entries("window_alice"),
        vec![entry(
            "ops-alice",
            "connection.update",
            "changed: display_name, settings_version"
        )]
    );
    // The change opened: the key with its value before and after.
    assert_eq!(
        table(&result["opened"]),
        vec![vec!["protected", "false", "true"]]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_dashboard_counts_decisions() {
    let services = Services::new().await;
    let db = services.migrate().await;
    create_user(&db, Some("dash@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let logins = [
        ("plain", "d-1", json!({"name": "One"}), Outcome::UserCreated),
        ("plain", "d-2", json!({"name": "Two"}), Outcome::UserCreated),
        (
            "plain",
            "d-1",
            json!({"name": "One"}),
            Outcome::ExistingUser,
        ),
        (
            "only",
            "d-3",
            json!({"email": "nobody@example.com", "email_verified": true}),
            Outcome::Rejected,
        ),
        (
            "asking",
            "d-4",
            json!({"email": "dash@example.com", "email_verified": true}),
            Outcome::BindingPending,
        ),
    ];
    for (connection, external_id, profile, outcome) in logins {
        let reply = broker.login(&login(connection, external_id, profile)).await;
        assert_eq!(reply.outcome, outcome, "{connection} {external_id}");
    }

    let result = browse(
        &services,
        &app,
        "dashboard.mjs",
        "console-dashboard.png",
        &[("TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert_eq!(
        strings(&result["head"]),
        [
            "Connection",
            "Pool",
            "existing user",
            "user created",
            "user linked",
            "binding pending",
            "rejected",
            "Total"
        ]
    );
    assert_eq!(
        table(&result["table"]),
        vec![
            vec!["plain", "pool-1", "1", "2", "0", "0", "0", "3"],
            vec!["asking", "pool-1", "0", "0", "0", "1", "0", "1"],
            vec!["only", "pool-1", "0", "0", "0", "0", "1", "1"],
        ]
    );
    assert_eq!(
        table(&result["totals"]),
        vec![vec!["All", "—", "1", "2", "0", "1", "1", "5"]]
    );
    // One segment per connection and outcome with decisions, its length proportional.
    let mut segments: Vec<(String, String, u64)> = result["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["connection"].as_str().unwrap().to_owned(),
                b["outcome"].as_str().unwrap().to_owned(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    segments.sort();
    let segment = |c: &str, o: &str, n| (c.to_owned(), o.to_owned(), n);
    assert_eq!(
        segments,
        vec![
            segment("asking", "binding_pending", 1),
            segment("only", "rejected", 1),
            segment("plain", "existing_user", 1),
            segment("plain", "user_created", 2),
        ]
    );
    let per_decision: Vec<f64> = result["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["width"].as_f64().unwrap() / b["count"].as_f64().unwrap())
        .collect();
    assert!(
        per_decision
            .iter()
            .all(|w| *w > 0.0 && (w - per_decision[0]).abs() < 0.01),
        "{per_decision:?}"
    );
    // A colour per outcome.
    let fill = |outcome: &str| {
        result["bars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["outcome"] == outcome)
            .unwrap()["fill"]
            .clone()
    };
    assert_ne!(fill("existing_user"), fill("user_created"));
    assert_eq!(
        strings(&result["legend"]),
        [
            "existing user",
            "user created",
            "user linked",
            "binding pending",
            "rejected"
        ]
    );
    assert_eq!(
        result["described"],
        "plain: 1 existing user, 2 user created; asking: 1 binding pending; only: 1 rejected"
    );
    // The hourly columns hold the same decisions.
    let hourly: u64 = result["hourly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(hourly, 5, "{}", result["hourly"]);
    assert!(
        result["summary"]
            .as_str()
            .unwrap()
            .starts_with("5 decisions from "),
        "{}",
        result["summary"]
    );
    assert!(
        result["refreshed"]
            .as_str()
            .unwrap()
            .ends_with("/v1/stats/decisions?hours=24"),
        "{}",
        result["refreshed"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_creates_pings_pauses_and_deletes_a_webhook() {
    let services = Services::with_config(
        "[webhooks]\nallow_private_addresses = true\npoll_interval = \"100ms\"\n",
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();
    let receiver = Receiver::start().await;
    // An event of the pool from before the endpoint (an account renamed): only a replay sends it
    // there.
    let (status, user) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "hooked@example.com", "email_verified": true}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{}", user["id"].as_str().unwrap()),
            Some(json!({"name": "Hooked"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // What the API says of an address that is not http(s).
    let (status, refusal) = api
        .post(
            "/v1/webhooks",
            json!({"user_pool_id": POOL, "url": "ftp://nowhere.example/in"}),
        )
        .await;
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(refusal["error"]["field"], "url");
    let refusal = refusal["error"]["message"].as_str().unwrap().to_owned();
    let hostile = "<img src=x onerror=alert(1)>";

    let result = browse(
        &services,
        &app,
        "webhooks.mjs",
        "console-webhooks.png",
        &[
            ("TOKEN", ADMIN_TOKEN),
            ("VIEWER_TOKEN", VIEWER_TOKEN),
            ("RECEIVER_URL", &receiver.url),
            ("POOL", POOL),
            ("HOSTILE_DESCRIPTION", hostile),
        ],
    )
    .await;
    let text = |key: &str| {
        result[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {result}"))
            .to_owned()
    };
    // Refused with the API's message, the field marked.
    assert_eq!(text("refused"), format!("Not created: {refusal}"));
    assert_eq!(text("refused_form"), refusal);
    assert_eq!(result["url_invalid"], "true");
    assert_eq!(result["create_error_after"], "");

    // The secret, once, until dismissed; nowhere after that.
    let secret = text("secret");
    assert!(
        secret.starts_with("whsec_") && secret.len() > 20,
        "{secret}"
    );
    assert!(
        text("secret_text").contains("copy it now, it is not shown again"),
        "{result}"
    );
    assert_eq!(result["secret_focused"], "webhook-secret-value");
    assert_eq!(result["secret_left"], false);
    assert_eq!(result["secret_again"], false);

    // The list and the endpoint, the hostile description as the text it is.
    let id = text("id");
    let url = receiver.url.clone();
    assert_eq!(
        table(&result["list"]),
        vec![vec![
            format!("{url}{hostile}"),
            POOL.into(),
            "user.*, binding.#".into(),
            "enabled".into(),
            "—".into()
        ]]
    );
    assert_eq!(result["description"], hostile);
    assert_eq!(result["title"], url.as_str());
    assert_eq!(
        result["injected"], 0,
        "markup from the data made it into the page"
    );
    assert_eq!(
        result["dialogs"],
        json!([]),
        "the description ran as script"
    );
    assert_eq!(result["no_deliveries"], true);

    // The ping reached the receiver, and the console said what it answered.
    assert!(
        text("pinged").starts_with("Ping delivered: HTTP 204 after "),
        "{}",
        result["pinged"]
    );
    assert_eq!(result["ping_shown"], result["pinged"]);
    let got = receiver
        .until(WAIT, "the ping", |r| {
            r.iter().any(|r| r.event_type() == "webhook.ping")
        })
        .await;
    let ping = got
        .iter()
        .find(|r| r.event_type() == "webhook.ping")
        .unwrap();
    assert_eq!(ping.id, text("ping_id"));
    assert_eq!(ping.event["data"]["webhook_id"], id.as_str());
    assert_eq!(ping.answered, 204);

    // Disabled, then enabled again.
    assert!(text("disabled").starts_with("Disabled"), "{result}");
    assert_eq!(result["disabled_state"], "disabled by an admin");
    assert_eq!(result["disabled_row"][3], "disabled by an admin");
    assert_eq!(result["enable_button"], "Enable");
    assert!(text("enabled").starts_with("Enabled"), "{result}");
    assert_eq!(result["enabled_state"], "enabled");
    assert_eq!(result["disable_button"], "Disable");

    // Patterns: the API's refusal, then the change.
    let pattern_error = text("pattern_error");
    assert!(
        pattern_error.contains("is not a routing-key pattern"),
        "{pattern_error}"
    );
    assert_eq!(
        text("pattern_refused"),
        format!("Not saved: {pattern_error}")
    );
    assert_eq!(result["pattern_invalid"], "true");
    assert_eq!(result["saved"], "Endpoint saved: event types changed.");
    assert_eq!(result["types"], "user.#");
    assert_eq!(result["types_row"], "user.#");

    // The replay sent the account's change; the retry sent it again, with the same id.
    assert!(
        text("replay_refused").starts_with("Not replayed: since must be"),
        "{result}"
    );
    assert_eq!(result["since_invalid"], "true");
    assert!(
        text("replayed").starts_with("Replay: 1 event since "),
        "{}",
        result["replayed"]
    );
    let got = receiver
        .until(WAIT, "the replay and the retry", |r| {
            r.iter()
                .filter(|r| r.event_type() == "user.updated")
                .count()
                == 2
        })
        .await;
    let updated: Vec<_> = got
        .iter()
        .filter(|r| r.event_type() == "user.updated")
        .collect();
    assert_eq!(updated[0].id, updated[1].id, "a retry keeps the event's id");
    assert_eq!(updated[0].event["data"]["user"]["id"], user["id"]);
    let first = &result["first_log"][0];
    assert_eq!(first["event"], "user.updated");
    assert_eq!(first["state"], "delivered");
    assert_eq!(first["attempts"], 1);
    let attempt = |row: &Value| -> (String, String, String, String) {
        let cells = strings(row);
        assert_eq!(cells.len(), 6, "{cells:?}");
        assert!(cells[3].ends_with(" ms"), "{cells:?}");
        (
            cells[0].clone(),
            cells[2].clone(),
            cells[4].clone(),
            cells[5].clone(),
        )
    };
    let delivered = |n: &str| (n.to_owned(), "204".into(), "—".into(), "—".into());
    assert_eq!(attempt(&first["log"][0]), delivered("1"));
    assert!(text("retried").contains("queued again"), "{result}");
    let second = &result["second_log"][0];
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["state"], "delivered");
    let log = second["log"].as_array().unwrap();
    assert_eq!(
        log.iter().map(attempt).collect::<Vec<_>>(),
        vec![delivered("1"), delivered("1")],
        "the first schedule's attempt, then the retry's"
    );
    assert_eq!(result["failed_shown"], json!({"rows": 0, "empty": true}));
    assert_eq!(result["delivered_shown"], 1);
    assert_eq!(result["log_open"], true);

    // Rotated: a new secret, once, and the old one signing for a while.
    let new_secret = text("new_secret");
    assert!(
        new_secret.starts_with("whsec_") && new_secret != secret,
        "{new_secret}"
    );
    assert!(
        text("rotated_text").contains("copy it now, it is not shown again")
            && text("rotated_text").contains("The old secret keeps signing beside it until"),
        "{result}"
    );
    assert_ne!(result["previous_until"], "—");
    assert_eq!(result["new_secret_left"], false);

    // An admin has every control; a viewer reads the same endpoint and log, without one that
    // writes.
    let admin = strings(&result["admin_controls"]);
    for control in [
        "wc-url",
        "Create endpoint",
        "wh-toggle",
        "wh-ping",
        "wh-rotate",
        "wh-delete",
        "wr-since",
        "Replay",
        "we-event_types",
        "Save changes",
        "Retry",
    ] {
        assert!(admin.iter().any(|c| c == control), "{control}: {admin:?}");
    }
    assert_eq!(
        strings(&result["viewer_controls"]),
        vec!["w-pool", "Filter", url.as_str(), "dl-state", "Refresh"]
    );
    assert_eq!(result["viewer_writable"], false);
    assert_eq!(result["viewer_log"].as_array().unwrap().len(), 1);
    assert_eq!(
        table(&result["viewer_list"]),
        vec![vec![
            format!("{url}{hostile}"),
            POOL.into(),
            "user.#".into(),
            "enabled".into(),
            "—".into()
        ]]
    );

    // Deleted after a cancelled first try.
    assert_eq!(result["after_cancel"], 1);
    assert!(
        text("deleted").starts_with("Deleted the endpoint"),
        "{result}"
    );
    assert_eq!(result["empty_after"], true);
    assert_eq!(result["detail_after"], false);
    let (_, list) = api.get("/v1/webhooks").await;
    assert_eq!(list["items"], json!([]), "{list}");

    // Every write in the audit log, by the admin; none of the console's reads or probes, no secret.
    let (_, audit) = api.get("/v1/audit?limit=50").await;
    let target = format!("webhook/{id}");
    let entries: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"].as_str().unwrap().starts_with(&target))
        .map(|a| (a["actor"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    let by_alice = |action| ("ops-alice", action);
    assert_eq!(
        entries,
        vec![
            by_alice("webhook.delete"),
            by_alice("webhook.rotate_secret"),
            by_alice("webhook.retry"),
            by_alice("webhook.replay"),
            by_alice("webhook.update"),
            by_alice("webhook.update"),
            by_alice("webhook.update"),
            by_alice("webhook.create"),
        ]
    );
    assert_eq!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["target"].as_str().unwrap().starts_with("webhook/"))
            .count(),
        entries.len(),
        "{audit}"
    );
    let audit = audit.to_string();
    assert!(
        !audit.contains(&secret) && !audit.contains(&new_secret),
        "the audit log holds no secret"
    );
    app.stop().await;
}
