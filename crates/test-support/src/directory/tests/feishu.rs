//! The Feishu stand-in.

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use super::{DirectorySource, DirectoryStandIn, H, client, json_of};

const APP: &str = "cli_a1b2c3d4e5f6";
const SECRET: &str = "feishu-secret";
const ZHAO_LIU: &str = "ou_8f2d4b6a0c1e3f5a7b9d1c3e5f7a9b0d";

async fn feishu() -> DirectoryStandIn {
    let stand_in = DirectoryStandIn::start(DirectorySource::Feishu).await;
    assert!(stand_in.base_url().ends_with("/open-apis"));
    stand_in.add_app(APP, SECRET);
    stand_in.load_fixtures();
    stand_in
}

async fn tenant_token(stand_in: &DirectoryStandIn, body: Value) -> (StatusCode, Value) {
    let url = format!(
        "{}/auth/v3/tenant_access_token/internal",
        stand_in.base_url()
    );
    json_of(client().post(url).json(&body).send().await.unwrap()).await
}

async fn token(stand_in: &DirectoryStandIn) -> String {
    let (_, body) = tenant_token(stand_in, json!({"app_id": APP, "app_secret": SECRET})).await;
    body["tenant_access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

async fn user_get(
    stand_in: &DirectoryStandIn,
    authorization: Option<&str>,
    id: &str,
    id_type: &str,
) -> reqwest::Response {
    let url = format!("{}/contact/v3/users/{id}", stand_in.base_url());
    let mut request = client().get(url).query(&[("user_id_type", id_type)]);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    request.send().await.unwrap()
}

async fn user_by_open_id(stand_in: &DirectoryStandIn, token: &str) -> (StatusCode, Value) {
    let bearer = format!("Bearer {token}");
    json_of(user_get(stand_in, Some(&bearer), ZHAO_LIU, "open_id").await).await
}

#[tokio::test]
async fn the_token_call_issues_tenant_tokens_and_refuses_wrong_credentials() {
    let stand_in = feishu().await;
    let good = json!({"app_id": APP, "app_secret": SECRET});
    let (status, body) = tenant_token(&stand_in, good.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["code"].clone(), body["msg"].clone()),
        (json!(0), json!("ok"))
    );
    assert_eq!(body["expire"], 7200);
    assert!(
        body["tenant_access_token"]
            .as_str()
            .unwrap()
            .starts_with("t-")
    );
    let (_, again) = tenant_token(&stand_in, good).await;
    assert_eq!(again["tenant_access_token"], body["tenant_access_token"]);
    let wrong = json!({"app_id": APP, "app_secret": "nope"});
    let (status, body) = tenant_token(&stand_in, wrong).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(10014))
    );
    let unknown = json!({"app_id": "cli_other", "app_secret": SECRET});
    let (status, body) = tenant_token(&stand_in, unknown).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::OK, json!(10014))
    );
    let (_, body) = tenant_token(&stand_in, json!({"app_id": APP})).await;
    assert_eq!(body["code"], 10003);
    assert_eq!(stand_in.calls(APP, H::GETTOKEN), 3);
}

#[tokio::test]
async fn users_are_found_by_each_id_type() {
    let stand_in = feishu().await;
    let bearer = format!("Bearer {}", token(&stand_in).await);
    let (status, body) =
        json_of(user_get(&stand_in, Some(&bearer), ZHAO_LIU, "open_id").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["code"].clone(), body["msg"].clone()),
        (json!(0), json!("success"))
    );
    let user = &body["data"]["user"];
    assert_eq!(user["name"], "赵六");
    assert_eq!(user["enterprise_email"], "zhao.liu@corp.example.com");
    assert_eq!(user["status"]["is_resigned"], false);
    let union_id = "on_7e9a1c3b5d0f2a4c6e8b1d3f5a7c9e0d";
    let (_, body) = json_of(user_get(&stand_in, Some(&bearer), union_id, "union_id").await).await;
    assert_eq!(body["data"]["user"]["user_id"], "sunqi");
    let (_, body) = json_of(user_get(&stand_in, Some(&bearer), "zhaoliu", "user_id").await).await;
    assert_eq!(body["data"]["user"]["open_id"], ZHAO_LIU);
    let (status, body) =
        json_of(user_get(&stand_in, Some(&bearer), "zhaoliu", "open_id").await).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(99992351))
    );
    let (status, _) = json_of(user_get(&stand_in, Some(&bearer), "zhaoliu", "email").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(stand_in.calls(APP, H::USER_GET), 5);
}

#[tokio::test]
async fn missing_malformed_revoked_and_expired_tokens_are_refused() {
    let stand_in = feishu().await;
    let codes = |(status, body): (StatusCode, Value)| (status, body["code"].clone());
    let bad = StatusCode::BAD_REQUEST;
    let missing = json_of(user_get(&stand_in, None, ZHAO_LIU, "open_id").await).await;
    assert_eq!(codes(missing), (bad, json!(99991661)));
    let malformed =
        json_of(user_get(&stand_in, Some("Bearer abc"), ZHAO_LIU, "open_id").await).await;
    assert_eq!(codes(malformed), (bad, json!(99991671)));
    let old = token(&stand_in).await;
    stand_in.revoke_tokens();
    assert_eq!(
        codes(user_by_open_id(&stand_in, &old).await),
        (bad, json!(99991663))
    );
    let new = token(&stand_in).await;
    assert_ne!(new, old);
    assert_eq!(
        codes(user_by_open_id(&stand_in, &new).await),
        (StatusCode::OK, json!(0))
    );
    stand_in.expire_tokens();
    assert_eq!(
        codes(user_by_open_id(&stand_in, &new).await),
        (bad, json!(99991663))
    );
}

#[tokio::test]
async fn a_new_token_comes_when_a_quarter_of_the_lifetime_is_left() {
    let stand_in = feishu().await;
    stand_in.set_token_lifetime(Duration::from_secs(2));
    let first = token(&stand_in).await;
    assert_eq!(token(&stand_in).await, first, "plenty left: the same token");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let second = token(&stand_in).await;
    assert_ne!(second, first, "under a quarter left: a new token");
    assert_eq!(
        user_by_open_id(&stand_in, &first).await.0,
        StatusCode::OK,
        "old one still valid"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(user_by_open_id(&stand_in, &first).await.1["code"], 99991663);
    assert_eq!(user_by_open_id(&stand_in, &second).await.0, StatusCode::OK);
}

#[tokio::test]
async fn calls_beyond_the_rate_limit_get_429_with_the_reset_header() {
    let stand_in = feishu().await;
    let token = token(&stand_in).await;
    stand_in.set_rate_limit(Some(2));
    assert_eq!(user_by_open_id(&stand_in, &token).await.0, StatusCode::OK);
    assert_eq!(user_by_open_id(&stand_in, &token).await.0, StatusCode::OK);
    let bearer = format!("Bearer {token}");
    let response = user_get(&stand_in, Some(&bearer), ZHAO_LIU, "open_id").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(header("x-ogw-ratelimit-limit"), 2);
    assert_eq!(
        header("x-ogw-ratelimit-reset"),
        1,
        "room again within the second"
    );
    let (_, body) = json_of(response).await;
    assert_eq!(body["code"], 99991400);
    assert_eq!(stand_in.max_calls_in_any_second(APP, H::USER_GET), 3);
}

#[tokio::test]
async fn an_address_off_the_allowlist_is_refused_except_for_tokens() {
    let stand_in = feishu().await;
    stand_in.set_ip_banned(true);
    let token = token(&stand_in).await;
    let (status, body) = user_by_open_id(&stand_in, &token).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(99991401))
    );
    stand_in.set_ip_banned(false);
    assert_eq!(user_by_open_id(&stand_in, &token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn withheld_fields_are_left_out_and_leavers_are_resigned() {
    let stand_in = feishu().await;
    let token = token(&stand_in).await;
    stand_in.withhold_fields(&["mobile", "email", "enterprise_email"]);
    stand_in.set_inactive(ZHAO_LIU, true);
    let (_, mut body) = user_by_open_id(&stand_in, &token).await;
    let user = body["data"]["user"].take();
    for field in ["mobile", "email", "enterprise_email"] {
        assert!(user.get(field).is_none(), "{field} in {user}");
    }
    assert_eq!(user["status"]["is_resigned"], true);
    assert_eq!(user["employee_no"], "F3001");
}
