//! The DingTalk stand-in.

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use super::{DirectorySource, DirectoryStandIn, H, client, json_of};

const APP: &str = "ding-app";
const SECRET: &str = "ding-secret";
const ZHANG_SAN: &str = "manager4230";
const ZHANG_SAN_UNIONID: &str = "Kq8vNfR2iiSxQ0YWCLpmTd6u4Hs93aZ17iE";

async fn dingtalk() -> DirectoryStandIn {
    let stand_in = DirectoryStandIn::start(DirectorySource::DingTalk).await;
    stand_in.add_app(APP, SECRET);
    let ids = stand_in.load_fixtures();
    assert_eq!(ids, ["manager4230", "hk0612"]);
    stand_in
}

async fn gettoken(stand_in: &DirectoryStandIn, key: &str, secret: &str) -> Value {
    let response = client()
        .get(format!("{}/gettoken", stand_in.base_url()))
        .query(&[("appkey", key), ("appsecret", secret)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "DingTalk always answers 200");
    body
}

async fn token(stand_in: &DirectoryStandIn) -> String {
    let body = gettoken(stand_in, APP, SECRET).await;
    body["access_token"].as_str().expect("a token").to_owned()
}

async fn topapi(stand_in: &DirectoryStandIn, path: &str, token: &str, body: Value) -> Value {
    let response = client()
        .post(format!("{}/topapi/{path}", stand_in.base_url()))
        .query(&[("access_token", token)])
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "DingTalk always answers 200");
    body
}

async fn user_get(stand_in: &DirectoryStandIn, token: &str, userid: &str) -> Value {
    let body = json!({"userid": userid, "language": "zh_CN"});
    topapi(stand_in, "v2/user/get", token, body).await
}

#[tokio::test]
async fn gettoken_issues_one_token_and_refuses_wrong_credentials() {
    let stand_in = dingtalk().await;
    let first = gettoken(&stand_in, APP, SECRET).await;
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["errmsg"], "ok");
    assert_eq!(first["expires_in"], 7200);
    let token = first["access_token"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    let again = gettoken(&stand_in, APP, SECRET).await;
    assert_eq!(
        again["access_token"], token,
        "the same token while it is valid"
    );
    let wrong_secret = gettoken(&stand_in, APP, "nope").await;
    assert_eq!(wrong_secret["errcode"], 40089);
    let unknown_app = gettoken(&stand_in, "other-app", SECRET).await;
    assert_eq!(unknown_app["errcode"], 40089);
    assert!(unknown_app.get("access_token").is_none());
    assert_eq!(stand_in.calls(APP, H::GETTOKEN), 3);
    assert_eq!(stand_in.calls("other-app", H::GETTOKEN), 1);
}

#[tokio::test]
async fn user_get_returns_the_record_in_result() {
    let stand_in = dingtalk().await;
    let token = token(&stand_in).await;
    let body = user_get(&stand_in, &token, ZHANG_SAN).await;
    assert_eq!(body["errcode"], 0);
    assert_eq!(body["errmsg"], "ok");
    assert!(body["request_id"].is_string());
    let user = &body["result"];
    assert_eq!(user["userid"], ZHANG_SAN);
    assert_eq!(user["unionid"], ZHANG_SAN_UNIONID);
    assert_eq!(
        (user["state_code"].as_str(), user["mobile"].as_str()),
        (Some("86"), Some("13800138000"))
    );
    assert_eq!(user["org_email"], "zhang.san@corp.example.com");
    assert_eq!(user["active"], true);
    let unknown = user_get(&stand_in, &token, "nobody").await;
    assert_eq!(unknown["errcode"], 60121);
    assert_eq!(unknown["errmsg"], "找不到该用户");
    let missing = topapi(&stand_in, "v2/user/get", &token, json!({})).await;
    assert_ne!(missing["errcode"], 0);
    assert_eq!(stand_in.calls(APP, H::USER_GET), 3);
}

#[tokio::test]
async fn getbyunionid_answers_the_userid() {
    let stand_in = dingtalk().await;
    let token = token(&stand_in).await;
    let body = json!({"unionid": ZHANG_SAN_UNIONID});
    let found = topapi(&stand_in, "user/getbyunionid", &token, body).await;
    assert_eq!(found["errcode"], 0);
    assert_eq!(
        found["result"],
        json!({"contact_type": 0, "userid": ZHANG_SAN})
    );
    stand_in.add_unionid("unionid-of-hk", "hk0612");
    let body = json!({"unionid": "unionid-of-hk"});
    let mapped = topapi(&stand_in, "user/getbyunionid", &token, body).await;
    assert_eq!(mapped["result"]["userid"], "hk0612");
    let body = json!({"unionid": "unknown"});
    let unknown = topapi(&stand_in, "user/getbyunionid", &token, body).await;
    assert_eq!(unknown["errcode"], 60121);
    assert_eq!(stand_in.calls(APP, H::GETBYUNIONID), 3);
}

#[tokio::test]
async fn revoked_and_expired_tokens_get_errcode_88() {
    let stand_in = dingtalk().await;
    let old = token(&stand_in).await;
    stand_in.revoke_tokens();
    let revoked = user_get(&stand_in, &old, ZHANG_SAN).await;
    assert_eq!(
        (revoked["errcode"].clone(), revoked["sub_code"].clone()),
        (json!(88), json!("40014"))
    );
    let unknown = user_get(&stand_in, "never-issued", ZHANG_SAN).await;
    assert_eq!(unknown["sub_code"], "40014");
    assert_eq!(stand_in.calls(H::UNKNOWN_APP, H::USER_GET), 1);
    let new = token(&stand_in).await;
    assert_ne!(new, old, "a new token after the old ones were revoked");
    assert_eq!(user_get(&stand_in, &new, ZHANG_SAN).await["errcode"], 0);
    stand_in.expire_tokens();
    let expired = user_get(&stand_in, &new, ZHANG_SAN).await;
    assert_eq!(
        (expired["errcode"].clone(), expired["sub_code"].clone()),
        (json!(88), json!("42001"))
    );
}

#[tokio::test]
async fn a_token_lives_as_long_as_its_lifetime_and_renews_when_fetched() {
    let stand_in = dingtalk().await;
    stand_in.set_token_lifetime(Duration::from_millis(1500));
    let first = gettoken(&stand_in, APP, SECRET).await;
    assert_eq!(first["expires_in"], 2, "whole seconds, rounded up");
    let token = first["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let renewed = gettoken(&stand_in, APP, SECRET).await;
    assert_eq!(renewed["access_token"], token.as_str());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let body = user_get(&stand_in, &token, ZHANG_SAN).await;
    assert_eq!(body["errcode"], 0, "fetching it again renewed its lifetime");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let body = user_get(&stand_in, &token, ZHANG_SAN).await;
    assert_eq!(body["sub_code"], "42001");
}

#[tokio::test]
async fn calls_beyond_the_rate_limit_get_90018() {
    let stand_in = dingtalk().await;
    let token = token(&stand_in).await;
    stand_in.set_rate_limit(Some(3));
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(user_get(&stand_in, &token, ZHANG_SAN).await["errcode"].clone());
    }
    assert_eq!(
        codes,
        [json!(0), json!(0), json!(0), json!(90018), json!(90018)]
    );
    let body = json!({"unionid": ZHANG_SAN_UNIONID});
    let other_api = topapi(&stand_in, "user/getbyunionid", &token, body).await;
    assert_eq!(other_api["errcode"], 0, "the limit is per API");
    assert_eq!(stand_in.calls(APP, H::USER_GET), 5);
    assert_eq!(stand_in.max_calls_in_any_second(APP, H::USER_GET), 5);
    stand_in.set_rate_limit(None);
    assert_eq!(user_get(&stand_in, &token, ZHANG_SAN).await["errcode"], 0);
}

#[tokio::test]
async fn every_call_past_the_monthly_quota_gets_90020() {
    let stand_in = dingtalk().await;
    stand_in.set_monthly_quota(Some(3));
    let token = token(&stand_in).await;
    assert_eq!(user_get(&stand_in, &token, ZHANG_SAN).await["errcode"], 0);
    assert_eq!(user_get(&stand_in, &token, ZHANG_SAN).await["errcode"], 0);
    let over = user_get(&stand_in, &token, ZHANG_SAN).await;
    assert_eq!(over["errcode"], 90020);
    assert!(
        over["errmsg"].as_str().unwrap().contains("额度:3次"),
        "{over}"
    );
    assert_eq!(gettoken(&stand_in, APP, SECRET).await["errcode"], 90020);
    stand_in.set_monthly_quota(None);
    assert_eq!(user_get(&stand_in, &token, ZHANG_SAN).await["errcode"], 0);
}

#[tokio::test]
async fn a_banned_address_gets_an_html_page() {
    let stand_in = dingtalk().await;
    stand_in.set_ip_banned(true);
    let response = client()
        .get(format!("{}/gettoken", stand_in.base_url()))
        .query(&[("appkey", APP), ("appsecret", SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&page).is_err(), "not JSON");
    assert!(page.contains("deny"));
    stand_in.set_ip_banned(false);
    assert_eq!(gettoken(&stand_in, APP, SECRET).await["errcode"], 0);
}

#[tokio::test]
async fn withheld_fields_are_left_out_and_inactive_people_are_marked() {
    let stand_in = dingtalk().await;
    let token = token(&stand_in).await;
    stand_in.withhold_fields(&["mobile"]);
    let user = user_get(&stand_in, &token, ZHANG_SAN).await["result"].take();
    assert!(user.get("mobile").is_none(), "{user}");
    assert_eq!(user["state_code"], "86");
    stand_in.withhold_fields(&[]);
    stand_in.set_inactive(ZHANG_SAN, true);
    let user = user_get(&stand_in, &token, ZHANG_SAN).await["result"].take();
    assert_eq!(
        (user["active"].clone(), user["mobile"].clone()),
        (json!(false), json!("13800138000"))
    );
    stand_in.set_inactive(ZHANG_SAN, false);
    let user = user_get(&stand_in, &token, ZHANG_SAN).await["result"].take();
    assert_eq!(user["active"], true);
}

#[tokio::test]
async fn one_token_serves_many_lookups() {
    let stand_in = dingtalk().await;
    let token = token(&stand_in).await;
    for _ in 0..50 {
        assert_eq!(user_get(&stand_in, &token, "hk0612").await["errcode"], 0);
    }
    assert_eq!(stand_in.calls(APP, H::GETTOKEN), 1);
    assert_eq!(stand_in.calls(APP, H::USER_GET), 50);
}
