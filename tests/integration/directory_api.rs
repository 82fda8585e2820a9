//! Asking the source's directory (contract section 10), through the broker and PostgreSQL,
//! against stand-ins of DingTalk's, WeCom's and Feishu's open APIs: a login that carries only an
//! id is matched on what the directory vouches for; one token serves every login; calls stay
//! within the rate; a returning login costs no call; a person who left is rejected; an outage
//! holds only that connection's logins, and loses none.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

const APP: &str = "dingapp";
const SECRET: &str = "dingsecret";

/// A DingTalk connection matching on the employee number, asking `base` for what the login
/// lacks; `extra` adds keys to its directory.
fn dingtalk_connection(identifier: &str, base: &str, extra: &str) -> String {
    format!(
        r#"
[[connections]]
identifier = "{identifier}"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["attributes.employee_id"]

[connections.directory]
kind = "dingtalk"
corp_id = "ding0123456789"
app_key = "{APP}"
app_secret = "{SECRET}"
api_base = "{base}"
{extra}
"#
    )
}

async fn dingtalk() -> DirectoryStandIn {
    let source = DirectoryStandIn::start(DirectorySource::DingTalk).await;
    source.add_app(APP, SECRET);
    source
}

/// A DingTalk user record, as `topapi/v2/user/get` returns it.
fn person(userid: &str, job_number: &str) -> Value {
    json!({
        "userid": userid, "unionid": format!("union-{userid}"), "name": format!("name {userid}"),
        "state_code": "86", "mobile": "13800138000", "job_number": job_number,
        "org_email": format!("{userid}@corp.example.com"), "active": true,
    })
}

async fn account(app: &TestApp, employee_id: &str) -> Uuid {
    let (status, created) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": employee_id.to_lowercase(),
                   "attributes": {"employee_id": employee_id}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_login_carrying_only_an_id_is_matched_on_what_the_directory_vouches_for() {
    let source = dingtalk().await;
    source.add_fixture_person("dingtalk-profile.json");
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let zhang = account(&app, "E1024").await;

    let first = login("dingtalk-corp", "manager4230", json!({}));
    let reply = broker.login(&first).await;
    assert_eq!(reply.outcome, Outcome::UserLinked, "{reply:?}");
    assert_eq!(reply.user_id, Some(zhang));
    let (status, decision) = app
        .api()
        .get(&format!("/v1/decisions/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["directory"]["result"], "found", "{decision}");
    let employee = decision["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "attributes.employee_id")
        .unwrap_or_else(|| panic!("{decision}"));
    assert_eq!(employee["value"], "E1024");
    assert_eq!(employee["origin"], "directory");
    assert_eq!(employee["usable"], true);

    // Returning, still with an id only: the kept record answers, no call is made.
    let again = broker
        .login(&login("dingtalk-corp", "manager4230", json!({})))
        .await;
    assert_eq!(again.outcome, Outcome::ExistingUser);
    assert_eq!(source.calls(APP, DirectoryHandle::USER_GET), 1);
    assert_eq!(source.calls(APP, DirectoryHandle::GETTOKEN), 1);
    assert!(
        app.metric("idsync_directory_cache_hits_total{connection=\"dingtalk-corp\"}")
            .await
            >= 1.0
    );

    // A login that carries what the connection matches on needs no directory.
    let carried = broker
        .login(&login(
            "dingtalk-corp",
            "someone-else",
            json!({"attributes": {"job_number": "E1024"}}),
        ))
        .await;
    assert_eq!(carried.outcome, Outcome::BindingPending, "{carried:?}");
    assert_eq!(source.calls(APP, DirectoryHandle::USER_GET), 1);
    app.stop().await;
}

#[tokio::test]
async fn many_logins_share_one_token_and_keep_to_the_rate() {
    let source = dingtalk().await;
    source.set_rate_limit(Some(20));
    let people = 50;
    for i in 0..people {
        source.add_person(&format!("u{i}"), person(&format!("u{i}"), &format!("N{i}")));
    }
    let services = Services::with_config(&dingtalk_connection(
        "dingtalk-corp",
        source.base_url(),
        "rate_limit = 20",
    ))
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let requests: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..people {
            ids.push(
                broker
                    .request(&login("dingtalk-corp", &format!("u{i}"), json!({})))
                    .await,
            );
        }
        ids
    };
    for id in requests {
        let reply = broker.reply(&id).await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    }
    assert_eq!(source.calls(APP, DirectoryHandle::GETTOKEN), 1);
    // One answer per person: an answer is kept, so nobody is asked again once answered. A call
    // the worker gave up on (its timeout, or the batch's bound, passed on a loaded machine) is
    // the one kind that is made again, and is counted by the stand-in without an answer here.
    let answered = app
        .metric(
            "idsync_directory_calls_total{connection=\"dingtalk-corp\",api=\"user/get\",result=\"ok\"}",
        )
        .await;
    assert_eq!(answered, people as f64, "one answered call per person");
    let calls = source.calls(APP, DirectoryHandle::USER_GET);
    assert!(
        (people..people + 5).contains(&calls),
        "{calls} calls for {people} people"
    );
    let busiest = source.max_calls_in_any_second(APP, DirectoryHandle::USER_GET);
    assert!(busiest <= 20, "{busiest} calls in one second");
    // Every account holds what the directory vouched for.
    let db = services.db().await;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_attributes WHERE name = 'employee_id' AND value LIKE 'N%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(held, people as i64);
    app.stop().await;
}

#[tokio::test]
async fn a_person_the_directory_says_left_gets_no_account_and_no_link() {
    let source = dingtalk().await;
    let gone = source.add_fixture_person("dingtalk-profile.json");
    source.set_inactive(&gone, true);
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    account(&app, "E1024").await;
    let reply = broker
        .login(&login("dingtalk-corp", &gone, json!({})))
        .await;
    assert_eq!(reply.outcome, Outcome::Rejected, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some("directory_inactive"));
    let rejected = broker.next_event().await;
    assert_eq!(rejected.body["type"], "login.rejected");
    assert_eq!(rejected.body["data"]["reason"], "directory_inactive");
    let db = services.db().await;
    let identities: i64 = sqlx::query_scalar("SELECT count(*) FROM identities")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(identities, 0, "no link, no account");
    app.stop().await;
}

#[tokio::test]
async fn a_token_the_source_revokes_is_fetched_again_once() {
    let source = dingtalk().await;
    source.add_person("u1", person("u1", "N1"));
    source.add_person("u2", person("u2", "N2"));
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let first = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    source.revoke_tokens();
    let second = broker.login(&login("dingtalk-corp", "u2", json!({}))).await;
    assert_eq!(second.outcome, Outcome::UserCreated, "{second:?}");
    assert_eq!(source.calls(APP, DirectoryHandle::GETTOKEN), 2);
    assert_eq!(source.calls(APP, DirectoryHandle::USER_GET), 3);
    app.stop().await;
}

#[tokio::test]
async fn an_outage_holds_only_that_connections_logins_and_loses_none() {
    let source = dingtalk().await;
    source.add_person("u1", person("u1", "N1"));
    source.set_outage(Some(axum::http::StatusCode::SERVICE_UNAVAILABLE));
    let services = Services::with_config(&dingtalk_connection(
        "dingtalk-corp",
        source.base_url(),
        "timeout = \"2s\"",
    ))
    .await;
    let mut settings = services.settings();
    settings.worker.wait_delay = Duration::from_millis(300);
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect(&services).await;
    let held = broker
        .request(&login("dingtalk-corp", "u1", json!({})))
        .await;
    // Another connection's login (`plain`, of the test configuration) is decided meanwhile.
    let other = broker
        .login(&login("plain", "p1", json!({"email": "p1@corp.example"})))
        .await;
    assert_eq!(other.outcome, Outcome::UserCreated);
    assert!(
        !broker.replied(&held),
        "decided on less than the connection asks for"
    );
    wait_until(WAIT, || async {
        app.metric("idsync_waits_total{reason=\"directory_unavailable\"}")
            .await
            >= 1.0
    })
    .await
    .expect("the login waits for the directory");
    source.set_outage(None);
    let reply = broker.reply(&held).await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    let dead = broker
        .queue_depth(&services.settings().amqp.dead_letter_queue)
        .await;
    assert_eq!(dead, 0, "nothing dead-lettered for an outage");
    app.stop().await;
}

#[tokio::test]
async fn a_field_the_source_withholds_is_absent_not_guessed() {
    let source = dingtalk().await;
    let zhang = source.add_fixture_person("dingtalk-profile.json");
    source.withhold_fields(&["mobile"]);
    let services = Services::with_config(&dingtalk_connection(
        "dingtalk-corp",
        source.base_url(),
        "fetch = \"always\"",
    ))
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let event = login("dingtalk-corp", &zhang, json!({}));
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let (_, decision) = app
        .api()
        .get(&format!("/v1/decisions/{}", event["id"].as_str().unwrap()))
        .await;
    let fields: Vec<&str> = decision["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(!fields.contains(&"phone"), "{decision}");
    assert!(fields.contains(&"email"), "{decision}");
    app.stop().await;
}

#[tokio::test]
async fn feishu_and_wecom_are_asked_in_their_own_words() {
    let feishu = DirectoryStandIn::start(DirectorySource::Feishu).await;
    feishu.add_app("cli_app", "feishu-secret");
    let open_id = feishu.add_fixture_person("feishu-profile.json");
    let wecom = DirectoryStandIn::start(DirectorySource::WeCom).await;
    wecom.add_app("ww-corp", "wecom-secret");
    let lisi = wecom.add_fixture_person("wecom-profile.json");
    wecom.set_inactive(&lisi, true);
    let config = format!(
        r#"
[[connections]]
identifier = "feishu-corp"
user_pool_id = "pool-1"
provider = "feishu"
association = "field_matching"
match_fields = ["attributes.employee_id"]

[connections.directory]
kind = "feishu"
app_id = "cli_app"
app_secret = "feishu-secret"
api_base = "{}"

[[connections]]
identifier = "wecom-corp"
user_pool_id = "pool-1"
provider = "wecom"
association = "field_matching"
match_fields = ["attributes.employee_id"]

[connections.directory]
kind = "wecom"
corp_id = "ww-corp"
corp_secret = "wecom-secret"
api_base = "{}"
"#,
        feishu.base_url(),
        wecom.base_url()
    );
    let services = Services::with_config(&config).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let zhao = account(&app, "F3001").await;
    let linked = broker
        .login(&login("feishu-corp", &open_id, json!({})))
        .await;
    assert_eq!(linked.outcome, Outcome::UserLinked, "{linked:?}");
    assert_eq!(linked.user_id, Some(zhao));
    assert_eq!(feishu.calls("cli_app", DirectoryHandle::GETTOKEN), 1);
    // An id Feishu would read as a path is nobody, without a call.
    let calls = feishu.calls("cli_app", DirectoryHandle::USER_GET);
    let dots = broker.login(&login("feishu-corp", "..", json!({}))).await;
    assert_eq!(dots.outcome, Outcome::UserCreated, "{dots:?}");
    assert_eq!(feishu.calls("cli_app", DirectoryHandle::USER_GET), calls);
    // WeCom's status 5: the person left.
    let gone = broker.login(&login("wecom-corp", &lisi, json!({}))).await;
    assert_eq!(gone.outcome, Outcome::Rejected, "{gone:?}");
    assert_eq!(gone.reason.as_deref(), Some("directory_inactive"));
    assert_eq!(wecom.calls("ww-corp", DirectoryHandle::USER_GET), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_used_up_quota_stops_the_calls_and_the_logins_wait() {
    let source = dingtalk().await;
    for i in 1..=3 {
        source.add_person(&format!("u{i}"), person(&format!("u{i}"), &format!("N{i}")));
    }
    // The token and the first person's call, then DingTalk's 90020 for every call.
    source.set_monthly_quota(Some(2));
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let first = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    let second = broker
        .request(&login("dingtalk-corp", "u2", json!({})))
        .await;
    wait_until(WAIT, || async {
        app.metric("idsync_directory_state{connection=\"dingtalk-corp\",state=\"quota_exhausted\"}")
            .await
            == 1.0
    })
    .await
    .expect("the quota is seen");
    let third = broker
        .request(&login("dingtalk-corp", "u3", json!({})))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !broker.replied(&second) && !broker.replied(&third),
        "nobody decided on less"
    );
    assert_eq!(source.total_calls(), 3, "no call after the quota answer");
    let (_, view) = app.api().get("/v1/connections/pool-1/dingtalk-corp").await;
    assert_eq!(
        view["directory_state"]["state"], "quota_exhausted",
        "{view}"
    );
    // Ready all the same (other connections flow), and /readyz says which directory is out.
    let (status, ready) = app.api_as(None).get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["directories"][0]["connection"], "dingtalk-corp",
        "{ready}"
    );
    assert_eq!(
        ready["directories"][0]["state"], "quota_exhausted",
        "{ready}"
    );
    assert!(
        view["directory_state"]["paused_until"].is_string(),
        "{view}"
    );
    let dead = broker
        .queue_depth(&services.settings().amqp.dead_letter_queue)
        .await;
    assert_eq!(dead, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_spends_no_call_on_a_person_it_asked_about() {
    let source = dingtalk().await;
    source.add_person("u1", person("u1", "N1"));
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let first = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let created = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(created.outcome, Outcome::UserCreated);
    first.stop().await;
    let second = TestApp::spawn(&services).await;
    let returning = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(returning.outcome, Outcome::ExistingUser);
    assert_eq!(source.calls(APP, DirectoryHandle::USER_GET), 1);
    assert_eq!(
        source.calls(APP, DirectoryHandle::GETTOKEN),
        1,
        "not even a token"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_secret_is_shown_as_set_and_kept_only_where_it_was_given() {
    let source = dingtalk().await;
    source.add_person("u1", person("u1", "N1"));
    source.add_person("u2", person("u2", "N2"));
    let services =
        Services::with_config(&dingtalk_connection("dingtalk-corp", source.base_url(), "")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let created = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(created.outcome, Outcome::UserCreated);
    let (status, view) = app.api().get("/v1/connections/pool-1/dingtalk-corp").await;
    assert_eq!(status, 200);
    assert_eq!(view["directory"]["app_secret"], "set", "{view}");
    assert!(!view.to_string().contains(SECRET), "{view}");
    assert_eq!(view["directory_state"]["state"], "ok");
    assert_eq!(view["directory_state"]["token"], true);
    let audit = app.api().get("/v1/audit").await.1.to_string();
    assert!(!audit.contains(SECRET));

    // Written back as shown, with another setting changed: the stored secret is kept.
    let mut body = json!({
        "association": "field_matching",
        "provider": "dingtalk",
        "match_fields": ["attributes.employee_id"],
        "display_name": "DingTalk, renamed",
        "directory": view["directory"].clone(),
    });
    let (status, saved) = app
        .api()
        .put("/v1/connections/pool-1/dingtalk-corp", body.clone())
        .await;
    assert_eq!(status, 200, "{saved}");
    source.revoke_tokens();
    let second = broker.login(&login("dingtalk-corp", "u2", json!({}))).await;
    assert_eq!(
        second.outcome,
        Outcome::UserCreated,
        "the kept secret works: {second:?}"
    );

    // Pointed elsewhere: "set" would send the stored secret to another host.
    body["directory"]["api_base"] = json!("https://collector.example");
    let (status, refused) = app
        .api()
        .put("/v1/connections/pool-1/dingtalk-corp", body)
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused.to_string().contains("directory.app_secret"),
        "{refused}"
    );

    // A reference to the worker's environment, written through the API: refused.
    let mut leak = json!({
        "association": "field_matching",
        "provider": "dingtalk",
        "match_fields": ["attributes.employee_id"],
        "directory": view["directory"].clone(),
    });
    leak["directory"]["app_secret"] = json!("${IDSYNC__DATABASE__URL}");
    let (status, refused) = app
        .api()
        .put("/v1/connections/pool-1/dingtalk-corp", leak)
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused.to_string().contains("configuration file"),
        "{refused}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_banned_address_and_a_rate_limit_answer_are_waited_out_not_blamed_on_the_login() {
    // DingTalk's ban is an HTML page; Feishu's rate limit is HTTP 429 naming the wait.
    let source = dingtalk().await;
    source.add_person("u1", person("u1", "N1"));
    source.set_ip_banned(true);
    let feishu = DirectoryStandIn::start(DirectorySource::Feishu).await;
    feishu.add_app("cli_app", "feishu-secret");
    let open_id = feishu.add_fixture_person("feishu-profile.json");
    let config = format!(
        "{}{}",
        dingtalk_connection("dingtalk-corp", source.base_url(), ""),
        format_args!(
            r#"
[[connections]]
identifier = "feishu-corp"
user_pool_id = "pool-1"
provider = "feishu"

[connections.directory]
kind = "feishu"
app_id = "cli_app"
app_secret = "feishu-secret"
api_base = "{}"
fetch = "always"
rate_limit = 1
"#,
            feishu.base_url()
        )
    );
    let services = Services::with_config(&config).await;
    let mut settings = services.settings();
    settings.worker.wait_delay = Duration::from_millis(300);
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect(&services).await;
    let banned = broker
        .request(&login("dingtalk-corp", "u1", json!({})))
        .await;
    // Feishu allows one call a second; the worker keeps to it, and a second person waits.
    feishu.set_rate_limit(Some(1));
    let first = broker
        .request(&login("feishu-corp", &open_id, json!({})))
        .await;
    let other = feishu.add_fixture_person("feishu-profile-2.json");
    let second = broker
        .request(&login("feishu-corp", &other, json!({})))
        .await;
    for id in [&first, &second] {
        let reply = broker.reply(id).await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    }
    assert!(feishu.max_calls_in_any_second("cli_app", DirectoryHandle::USER_GET) <= 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!broker.replied(&banned), "an HTML page is not a record");
    source.set_ip_banned(false);
    let reply = broker.reply(&banned).await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    let dead = broker
        .queue_depth(&services.settings().amqp.dead_letter_queue)
        .await;
    assert_eq!(dead, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_source_that_says_slow_down_is_waited_for_and_every_login_decided() {
    // WeCom refuses a second call at once (45033); Feishu allows 2 calls a second and answers
    // 429 with x-ogw-ratelimit-reset beyond: the connections are configured above both limits.
    let wecom = DirectoryStandIn::start(DirectorySource::WeCom).await;
    wecom.add_app("ww-corp", "wecom-secret");
    wecom.set_concurrency_limit(Some(1));
    wecom.set_delay(Duration::from_millis(50));
    let feishu = DirectoryStandIn::start(DirectorySource::Feishu).await;
    feishu.add_app("cli_app", "feishu-secret");
    feishu.set_rate_limit(Some(2));
    let people = 6;
    for i in 0..people {
        wecom.add_person(
            &format!("w{i}"),
            json!({"userid": format!("w{i}"), "name": format!("W {i}"), "status": 1,
                   "mobile": format!("1390000000{i}")}),
        );
        feishu.add_person(
            &format!("ou_{i}"),
            json!({"open_id": format!("ou_{i}"), "name": format!("F {i}"),
                   "employee_no": format!("F{i}"), "status": {"is_activated": true}}),
        );
    }
    let config = format!(
        r#"
[[connections]]
identifier = "wecom-corp"
user_pool_id = "pool-1"
provider = "wecom"
match_fields = ["attributes.employee_id"]

[connections.directory]
kind = "wecom"
corp_id = "ww-corp"
corp_secret = "wecom-secret"
api_base = "{}"
fetch = "always"

[[connections]]
identifier = "feishu-corp"
user_pool_id = "pool-1"
provider = "feishu"
match_fields = ["attributes.employee_id"]

[connections.directory]
kind = "feishu"
app_id = "cli_app"
app_secret = "feishu-secret"
api_base = "{}"
fetch = "always"
"#,
        wecom.base_url(),
        feishu.base_url()
    );
    let services = Services::with_config(&config).await;
    let mut settings = services.settings();
    settings.worker.wait_delay = Duration::from_millis(300);
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect(&services).await;
    let mut asked = Vec::new();
    for i in 0..people {
        asked.push(
            broker
                .request(&login("wecom-corp", &format!("w{i}"), json!({})))
                .await,
        );
        asked.push(
            broker
                .request(&login("feishu-corp", &format!("ou_{i}"), json!({})))
                .await,
        );
    }
    for id in &asked {
        let reply = broker.reply(id).await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    }
    let refused = app
        .metric("idsync_directory_calls_total{connection=\"wecom-corp\",api=\"user/get\",result=\"rate_limited\"}")
        .await
        + app
            .metric("idsync_directory_calls_total{connection=\"feishu-corp\",api=\"user/get\",result=\"rate_limited\"}")
            .await;
    assert!(refused >= 1.0, "the sources did say slow down");
    let dead = broker
        .queue_depth(&services.settings().amqp.dead_letter_queue)
        .await;
    assert_eq!(dead, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_record_with_a_nul_character_costs_the_login_nothing() {
    let source = dingtalk().await;
    let mut record = person("u1", "N1");
    record["title"] = json!("Head of\u{0}Ops");
    source.add_person("u1", record);
    let services = Services::with_config(&dingtalk_connection(
        "dingtalk-corp",
        source.base_url(),
        "fetch = \"always\"",
    ))
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker.login(&login("dingtalk-corp", "u1", json!({}))).await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    let db = services.db().await;
    let title: String = sqlx::query_scalar(
        "SELECT record->>'title' FROM directory_records WHERE external_id = 'u1'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(title, "Head ofOps");
    app.stop().await;
}
