//! Sources as they really are (contract section 9), through the broker and the admin API: the
//! DingTalk, WeCom and Feishu presets read the profiles in `tests/fixtures/` (each source's user
//! detail as its API documents it), link on the employee number or the phone, create complete
//! accounts, and keep an attribute unique in the pool even when two logins race for it.

use serde_json::{Value, json};
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

const SOURCES: &str = r#"
[[connections]]
identifier = "dingtalk-corp"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["attributes.employee_id"]
unique_attributes = ["employee_id"]

[[connections]]
identifier = "dingtalk-phone"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["phone"]

[[connections]]
identifier = "dingtalk-new"
user_pool_id = "pool-1"
provider = "dingtalk"

[[connections]]
identifier = "wecom-corp"
user_pool_id = "pool-1"
provider = "wecom"
association = "field_matching"
match_fields = ["attributes.employee_id"]

[[connections]]
identifier = "feishu-corp"
user_pool_id = "pool-1"
provider = "feishu"
association = "field_matching"
match_fields = ["email", "attributes.employee_id"]
match_rule = "all"
"#;

fn fixture(name: &str) -> Value {
    let text = match name {
        "dingtalk" => include_str!("../fixtures/dingtalk-profile.json"),
        "dingtalk-hk" => include_str!("../fixtures/dingtalk-profile-hk.json"),
        "wecom" => include_str!("../fixtures/wecom-profile.json"),
        "wecom-2" => include_str!("../fixtures/wecom-profile-2.json"),
        "feishu" => include_str!("../fixtures/feishu-profile.json"),
        "feishu-2" => include_str!("../fixtures/feishu-profile-2.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

fn reply_user(created: &Captured) -> Option<Uuid> {
    created.body["data"]["user"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
}

async fn account(app: &TestApp, body: Value) -> Uuid {
    let mut body = body;
    body["user_pool_id"] = json!(POOL);
    let (status, created) = app.api().post("/v1/users", body.clone()).await;
    assert_eq!(status, 201, "{body}: {created}");
    created["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_preset_links_its_source_on_the_employee_number() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let dingtalk = account(
        &app,
        json!({"username": "zhangsan", "attributes": {"employee_id": "E1024"}}),
    )
    .await;
    let wecom = account(
        &app,
        json!({"username": "lisi", "attributes": {"employee_id": "LiSi"}}),
    )
    .await;
    // Feishu matches on email AND employee number: the first person's account has both...
    let feishu = account(
        &app,
        json!({"email": "zhao.liu@corp.example.com", "email_verified": true,
               "attributes": {"employee_id": "F3001"}}),
    )
    .await;
    // ...and one account holds the enterprise email with another number: not a candidate.
    account(
        &app,
        json!({"email": "someone@corp.example.com", "email_verified": true,
               "attributes": {"employee_id": "F3001-OLD"}}),
    )
    .await;
    // The second Feishu person's profile has no enterprise email: the number alone must match.
    let feishu_2 = account(
        &app,
        json!({"username": "sunqi", "attributes": {"employee_id": "F3002"}}),
    )
    .await;

    for (connection, profile, user, matched_on) in [
        (
            "dingtalk-corp",
            "dingtalk",
            dingtalk,
            json!(["attributes.employee_id"]),
        ),
        (
            "wecom-corp",
            "wecom",
            wecom,
            json!(["attributes.employee_id"]),
        ),
        (
            "feishu-corp",
            "feishu",
            feishu,
            json!(["email", "attributes.employee_id"]),
        ),
        (
            "feishu-corp",
            "feishu-2",
            feishu_2,
            json!(["attributes.employee_id"]),
        ),
    ] {
        let event = login(connection, &format!("{profile}-person"), fixture(profile));
        let reply = broker.login(&event).await;
        assert_eq!(
            (reply.outcome, reply.user_id),
            (Outcome::UserLinked, Some(user)),
            "{connection} {profile}: {reply:?}"
        );
        let linked = broker.next_event().await;
        assert_eq!(linked.body["type"], "user.linked");
        assert_eq!(linked.body["data"]["matched_on"], matched_on, "{profile}");

        // The evidence says which rule and which fields matched.
        let id = event["id"].as_str().unwrap();
        let (status, decision) = app.api().get(&format!("/v1/decisions/{id}")).await;
        assert_eq!(status, 200, "{decision}");
        let rule = if connection == "feishu-corp" {
            "all"
        } else {
            "any"
        };
        assert_eq!(decision["match_rule"], rule, "{decision}");
        assert_eq!(
            decision["candidates"][0]["matched_on"], matched_on,
            "{decision}"
        );
        let employee = decision["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "attributes.employee_id")
            .cloned()
            .unwrap_or_else(|| panic!("no employee id in {decision}"));
        assert_eq!(employee["usable"], true, "{decision}");
    }
    broker.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn dingtalk_links_on_the_state_code_and_the_mobile() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let hong_kong = account(
        &app,
        json!({"phone": "+85261234567", "phone_verified": true}),
    )
    .await;
    // The same digits read as a mainland number belong to somebody else.
    account(
        &app,
        json!({"phone": "+8613961234567", "phone_verified": true}),
    )
    .await;

    let reply = broker
        .login(&login("dingtalk-phone", "hk-1", fixture("dingtalk-hk")))
        .await;
    assert_eq!(
        (reply.outcome, reply.user_id),
        (Outcome::UserLinked, Some(hong_kong)),
        "{reply:?}"
    );
    let linked = broker.next_event().await;
    assert_eq!(linked.body["data"]["matched_on"], json!(["phone"]));
    app.stop().await;
}

#[tokio::test]
async fn a_first_login_creates_the_account_with_the_mapped_fields() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let reply = broker
        .login(&login("dingtalk-new", "dt-1", fixture("dingtalk")))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    let created = broker.next_event().await;
    assert_eq!(created.body["type"], "user.created");
    let user = &created.body["data"]["user"];
    assert_eq!(user["email"], "zhang.san@corp.example.com");
    assert_eq!(user["phone"], "+8613800138000");
    assert_eq!(user["name"], "张三");
    assert_eq!(user["attributes"], json!({"employee_id": "E1024"}));
    let (_, stored) = app
        .api()
        .get(&format!("/v1/users/{}", reply.user_id.unwrap()))
        .await;
    assert_eq!(
        (
            &stored["email_verified"],
            &stored["phone_verified"],
            &stored["attributes"]
        ),
        (&json!(true), &json!(true), &json!({"employee_id": "E1024"})),
        "the directory vouches for its mobile and mailbox: {stored}"
    );

    // The same employee number from another identity of the employee-number connection finds
    // that account; it already holds a DingTalk identity of another connection, so it links.
    let reply = broker
        .login(&login("dingtalk-corp", "dt-2", fixture("dingtalk")))
        .await;
    assert_eq!(
        (reply.outcome, reply.user_id),
        (Outcome::UserLinked, reply_user(&created)),
        "{reply:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_logins_racing_for_one_employee_number_make_one_account_hold_it() {
    let services = Services::with_config(SOURCES).await;
    let mut broker = Broker::connect(&services).await;
    let first = TestApp::spawn(&services).await;
    let second = TestApp::spawn(&services).await;
    let db = services.db().await;

    // dingtalk-new creates an account for everybody: the race is for the number, which is
    // unique in the pool (dingtalk-corp lists it).
    let rounds = 12;
    let mut pending = Vec::new();
    for round in 0..rounds {
        for person in ["a", "b"] {
            let mut profile = fixture("dingtalk");
            profile["attributes"]["job_number"] = json!(format!("R{round}"));
            profile["attributes"]["mobile"] = json!(format!("1380000{round:02}{}", person.len()));
            profile["attributes"]["org_email"] = json!(format!("{person}{round}@corp.example.com"));
            let event = login("dingtalk-new", &format!("{person}-{round}"), profile);
            pending.push(broker.request(&event).await);
        }
    }
    for correlation_id in pending {
        assert_eq!(
            broker.reply(&correlation_id).await.outcome,
            Outcome::UserCreated
        );
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        2 * rounds as i64
    );
    let holders: Vec<(String, i64)> = sqlx::query_as(
        "SELECT value, count(*) FROM user_attributes WHERE name = 'employee_id' GROUP BY value",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(holders.len(), rounds, "{holders:?}");
    assert!(holders.iter().all(|(_, n)| *n == 1), "{holders:?}");

    // The database itself refuses a second holder, whoever writes.
    let taken = sqlx::query(
        "INSERT INTO users (id, user_pool_id, attributes)
         VALUES ($1, 'pool-1', '{\"employee_id\": \"R0\"}')",
    )
    .bind(Uuid::now_v7())
    .execute(&db)
    .await
    .unwrap_err();
    assert_eq!(
        taken.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505"),
        "{taken}"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn admins_set_attributes_and_uniqueness_holds_for_them_too() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let zhang = account(
        &app,
        json!({"username": "zhang", "attributes": {"employee_id": "E1", "dept": "sales"}}),
    )
    .await;
    account(
        &app,
        json!({"username": "li", "attributes": {"employee_id": "E2", "dept": "sales"}}),
    )
    .await;

    // A unique attribute another account holds is a conflict naming it; a shared dept is fine.
    let (status, body) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": "wang",
                   "attributes": {"employee_id": "E1", "dept": "sales"}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "field_taken"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("attributes.employee_id is held by user {zhang}")),
        "{body}"
    );
    for (bad, says) in [
        (json!({"employee_id": 7}), "must be a string"),
        (json!({"employee id": "E9"}), "not an attribute name"),
        (json!({"employee_id": "  "}), "empty"),
    ] {
        let (status, body) = app
            .api()
            .post(
                "/v1/users",
                json!({"user_pool_id": POOL, "username": "wang", "attributes": bad}),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (422, "invalid_field"),
            "{body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }

    // PATCH merges: a string sets, null removes, the rest stays.
    let (status, patched) = app
        .api()
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{zhang}"),
            Some(json!({"attributes": {"title": "lead", "dept": null}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["attributes"],
        json!({"employee_id": "E1", "title": "lead"})
    );
    let updated = broker.next_event().await;
    assert_eq!(updated.body["type"], "user.updated");
    assert_eq!(updated.body["data"]["changed"], json!(["attributes"]));
    assert_eq!(
        updated.body["data"]["user"]["attributes"],
        patched["attributes"]
    );
    let (status, body) = app
        .api()
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{zhang}"),
            Some(json!({"attributes": {"employee_id": "E2"}})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "field_taken"), "{body}");

    // Making an attribute unique that two accounts share is refused, naming the setting, and
    // changes nothing.
    account(
        &app,
        json!({"username": "zhou", "attributes": {"dept": "sales"}}),
    )
    .await;
    let path = format!("/v1/connections/{POOL}/wecom-corp");
    let (status, body) = app
        .api()
        .put(
            &path,
            json!({"provider": "wecom", "association": "field_matching",
                   "match_fields": ["attributes.employee_id"],
                   "unique_attributes": ["employee_id", "dept"]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "invalid_field"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("unique_attributes:") && message.contains("\"dept\""),
        "{body}"
    );
    let (_, connection) = app.api().get(&path).await;
    assert_eq!(connection["unique_attributes"], json!([]), "{connection}");
    account(
        &app,
        json!({"username": "zhao", "attributes": {"dept": "sales"}}),
    )
    .await;
    // Once the values differ, it can be made unique; then the database holds it.
    let (status, body) = app
        .api()
        .put(
            &path,
            json!({"provider": "wecom", "association": "field_matching",
                   "match_fields": ["attributes.employee_id"], "unique_attributes": ["title"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": "qian", "attributes": {"title": "lead"}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "field_taken"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn connections_check_names_the_connection_and_the_key() {
    let services = Services::new().await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let good = services.dir.join("good.toml");
    std::fs::write(
        &good,
        r#"
[[connections]]
identifier = "dingtalk-corp"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["attributes.employee_id", "phone"]
"#,
    )
    .unwrap();
    let check = |file: &std::path::Path, profile: &str| {
        run(std::process::Command::new(binary()).args([
            "connections",
            "check",
            file.to_str().unwrap(),
            "--profile",
            &format!("{fixtures}/{profile}"),
        ]))
    };
    let (code, stdout, stderr) = check(&good, "dingtalk-profile.json");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("connections[0] (dingtalk-corp): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"attributes.employee_id = "{attributes.job_number}" -> E1024"#),
        "{stdout}"
    );
    assert!(stdout.contains("-> +8613800138000 (verified)"), "{stdout}");

    // The Hong Kong person has no enterprise mailbox: the preset's email finds nothing.
    let (code, stdout, _) = check(&good, "dingtalk-profile-hk.json");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(r#"connections[0] (dingtalk-corp): mapping "email" finds nothing"#),
        "{stdout}"
    );

    // A profile that fills none of the match fields could match nobody.
    let (code, stdout, _) = check(&good, "feishu-profile.json");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "connections[0] (dingtalk-corp): every match field is empty for this profile \
             (attributes.employee_id, phone): it can match nobody"
        ),
        "{stdout}"
    );

    let bad = services.dir.join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[connections]]
identifier = "hr"
user_pool_id = "pool-1"
association = "field_matching"
match_fields = ["attributes.employee_id"]

[[connections]]
identifier = "feishu"
user_pool_id = "pool-1"
provider = "feishu"
match_rule = "all"
match_fields = ["attributes.badge"]
[connections.mapping]
"attributes.badge" = "{attributes.badge"
"#,
    )
    .unwrap();
    let (code, stdout, _) = check(&bad, "feishu-profile.json");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            r#"connections[0] (hr): match_fields: "attributes.employee_id" can never match"#
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("connections[1] (feishu): mapping: attributes.badge: the placeholder"),
        "{stdout}"
    );
    assert!(stdout.contains("2 problem(s)"), "{stdout}");

    // `run` refuses the same configuration, in one line naming the connection and the key.
    let (code, _, stderr) =
        run(std::process::Command::new(binary()).args(["--config", bad.to_str().unwrap(), "run"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("connections[0] (hr): match_fields"),
        "{stderr}"
    );
}

#[tokio::test]
async fn users_import_takes_attributes() {
    let services = Services::with_config(SOURCES).await;
    let db = services.migrate().await;
    let file = services.dir.join("users.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"user_pool_id": "pool-1", "username": "a", "attributes": {"employee_id": "E1"}}"#,
            "\n",
            r#"{"user_pool_id": "pool-1", "username": "b", "attributes": {"employee_id": "E1"}}"#,
            "\n",
            r#"{"user_pool_id": "pool-1", "username": "c", "attributes": {"employee_id": 2}}"#,
            "\n",
        ),
    )
    .unwrap();
    // The unique attributes of the configuration apply once it has run: apply them now.
    let app = TestApp::spawn(&services).await;
    app.stop().await;
    let (code, stdout, stderr) =
        run(services
            .command()
            .args(["users", "import", file.to_str().unwrap()]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("added 1, already present 0, failed 2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 2: attributes.employee_id is held by user"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3: attributes: employee_id must be a string"),
        "{stderr}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM user_attributes WHERE is_unique").await,
        1
    );
}

#[tokio::test]
async fn verify_reports_attributes_out_of_step_and_shared_unique_values() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let first = account(
        &app,
        json!({"username": "one", "attributes": {"employee_id": "E1"}}),
    )
    .await;
    let second = account(
        &app,
        json!({"username": "two", "attributes": {"employee_id": "E2"}}),
    )
    .await;
    app.stop().await;
    let db = services.db().await;
    let bounds = identity_sync::verify::Bounds {
        orphan_after: std::time::Duration::from_secs(30),
        retention: std::time::Duration::from_secs(7 * 24 * 3600),
    };
    let found = |db: sqlx::PgPool| async move {
        identity_sync::verify::verify(&db, bounds)
            .await
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(found(db.clone()).await, Vec::<String>::new());

    // Behind the program's back: the second account's index row says E1, unique or not.
    sqlx::query("UPDATE user_attributes SET value = 'E1', is_unique = false WHERE user_id = $1")
        .bind(second)
        .execute(&db)
        .await
        .unwrap();
    let violations = found(db.clone()).await;
    let shared = violations
        .iter()
        .find(|v| {
            v.starts_with(
                "two users of one pool share a value of a unique attribute, or lookalikes: \
                 attributes.employee_id of users ",
            )
        })
        .unwrap_or_else(|| panic!("{violations:?}"));
    assert!(
        shared.contains(&first.to_string()) && shared.contains(&second.to_string()),
        "{shared}"
    );
    assert!(
        violations.contains(&format!(
            "an account's attribute index out of step with its attributes: user {second}"
        )),
        "{violations:?}"
    );
}

/// Where a pool promises an attribute unique, two values that look the same are one value (the
/// same UTS #39 skeleton): a login's `Е1024` with a Cyrillic `Е` does not take the number Latin
/// `E1024` holds (though neither is "suspicious": each is of one script), nor does an admin's
/// `EI024`, nor a write behind the program's back; the database's skeleton is the program's.
#[tokio::test]
async fn a_lookalike_of_a_unique_attribute_is_held_like_the_value() {
    let services = Services::with_config(SOURCES).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let first = broker
        .login(&login("dingtalk-new", "dt-latin", fixture("dingtalk")))
        .await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    let mut cyrillic = fixture("dingtalk");
    cyrillic["attributes"]["job_number"] = json!("\u{415}1024");
    cyrillic["attributes"]["mobile"] = json!("13800138999");
    cyrillic["attributes"]["org_email"] = json!("other@corp.example.com");
    let event = login("dingtalk-new", "dt-cyrillic", cyrillic);
    let event_id = event["id"].as_str().unwrap().to_owned();
    let correlation_id = broker.request(&event).await;
    let second = broker.reply(&correlation_id).await;
    assert_eq!(second.outcome, Outcome::UserCreated, "{second:?}");
    let (_, created) = app
        .api()
        .get(&format!("/v1/users/{}", second.user_id.unwrap()))
        .await;
    assert_eq!(
        created["attributes"],
        json!({}),
        "the lookalike is held: {created}"
    );
    let (_, decision) = app.api().get(&format!("/v1/decisions/{event_id}")).await;
    let field = decision["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "attributes.employee_id")
        .cloned()
        .unwrap_or_else(|| panic!("{decision}"));
    assert_eq!(field["why_not"], "held", "{decision}");

    // An admin's lookalike (`I` passes for `1`) is refused, naming the holder.
    let (status, body) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": "mimic",
                   "attributes": {"employee_id": "EI024"}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "field_taken"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first.user_id.unwrap().to_string()),
        "{body}"
    );
    // And so is a write behind the program's back.
    let behind = sqlx::query(
        "INSERT INTO users (id, user_pool_id, attributes)
         VALUES ($1, 'pool-1', jsonb_build_object('employee_id', U&'\\0415' || '1024'))",
    )
    .bind(Uuid::now_v7())
    .execute(&db)
    .await
    .unwrap_err();
    assert_eq!(
        behind.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505"),
        "{behind}"
    );
    // The database's skeleton is the program's, for lookalikes of every kind.
    for value in [
        "E1024",
        "\u{415}1024",
        "EI024",
        "ﬁle",
        "straße",
        "soft\u{ad}hyphen",
        "Ｅ１０２４",
        "\u{212a}elvin",
        "José",
        "Jose\u{301}",
        "销售部",
        "한국어",
        "'quoted' \\ back",
    ] {
        let stored: String = sqlx::query_scalar("SELECT attribute_skeleton($1)")
            .bind(value)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(
            stored,
            identity_sync::domain::attributes::skeleton(value),
            "{value:?}"
        );
    }
    app.stop().await;
}
