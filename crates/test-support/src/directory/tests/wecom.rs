//! The WeCom stand-in.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{DirectorySource, DirectoryStandIn, H, client, json_of};

const CORP: &str = "ww-corp";
const SECRET: &str = "ww-secret";

async fn wecom() -> DirectoryStandIn {
    let stand_in = DirectoryStandIn::start(DirectorySource::WeCom).await;
    stand_in.add_app(CORP, SECRET);
    assert_eq!(stand_in.load_fixtures(), ["LiSi", "WangWu"]);
    stand_in
}

async fn get(stand_in: &DirectoryStandIn, path: &str, query: &[(&str, &str)]) -> Value {
    let response = client()
        .get(format!("{}/cgi-bin/{path}", stand_in.base_url()))
        .query(query)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "WeCom always answers 200");
    body
}

async fn gettoken(stand_in: &DirectoryStandIn, corpid: &str, secret: &str) -> Value {
    let query = [("corpid", corpid), ("corpsecret", secret)];
    get(stand_in, "gettoken", &query).await
}

async fn token(stand_in: &DirectoryStandIn) -> String {
    let body = gettoken(stand_in, CORP, SECRET).await;
    body["access_token"].as_str().expect("a token").to_owned()
}

async fn user_get(stand_in: &DirectoryStandIn, token: &str, userid: &str) -> Value {
    let query = [("access_token", token), ("userid", userid)];
    get(stand_in, "user/get", &query).await
}

#[tokio::test]
async fn gettoken_issues_one_token_and_refuses_wrong_credentials() {
    let stand_in = wecom().await;
    let first = gettoken(&stand_in, CORP, SECRET).await;
    assert_eq!(
        (first["errcode"].clone(), first["errmsg"].clone()),
        (json!(0), json!("ok"))
    );
    assert_eq!(first["expires_in"], 7200);
    let again = gettoken(&stand_in, CORP, SECRET).await;
    assert_eq!(again["access_token"], first["access_token"]);
    let wrong_secret = gettoken(&stand_in, CORP, "nope").await;
    assert_eq!(wrong_secret["errcode"], 40001);
    let errmsg = wrong_secret["errmsg"].as_str().unwrap();
    assert!(errmsg.ends_with("devtool/query?e=40001"), "{errmsg}");
    assert_eq!(
        gettoken(&stand_in, "ww-other", SECRET).await["errcode"],
        40013
    );
    assert_eq!(stand_in.calls(CORP, H::GETTOKEN), 3);
}

#[tokio::test]
async fn user_get_returns_the_member_beside_the_envelope() {
    let stand_in = wecom().await;
    let token = token(&stand_in).await;
    let member = user_get(&stand_in, &token, "lisi").await;
    assert_eq!(
        (member["errcode"].clone(), member["errmsg"].clone()),
        (json!(0), json!("ok"))
    );
    assert_eq!(
        member["userid"], "LiSi",
        "userid matches without regard to case"
    );
    assert_eq!(member["biz_mail"], "li.si@corp.example.com");
    assert_eq!(member["department"], json!([1, 2]));
    assert_eq!(member["status"], 1);
    let unknown = user_get(&stand_in, &token, "nobody").await;
    assert_eq!(unknown["errcode"], 60111);
    let no_userid = get(&stand_in, "user/get", &[("access_token", &token)]).await;
    assert_eq!(no_userid["errcode"], 41009);
    assert_eq!(stand_in.calls(CORP, H::USER_GET), 3);
}

#[tokio::test]
async fn missing_revoked_and_expired_tokens_are_refused() {
    let stand_in = wecom().await;
    let old = token(&stand_in).await;
    let missing = get(&stand_in, "user/get", &[("userid", "LiSi")]).await;
    assert_eq!(missing["errcode"], 41001);
    stand_in.revoke_tokens();
    assert_eq!(user_get(&stand_in, &old, "LiSi").await["errcode"], 40014);
    let new = token(&stand_in).await;
    assert_ne!(new, old);
    assert_eq!(user_get(&stand_in, &new, "LiSi").await["errcode"], 0);
    stand_in.expire_tokens();
    assert_eq!(user_get(&stand_in, &new, "LiSi").await["errcode"], 42001);
    assert_eq!(
        user_get(&stand_in, "never-issued", "LiSi").await["errcode"],
        40014
    );
    assert_eq!(
        stand_in.calls(H::UNKNOWN_APP, H::USER_GET),
        2,
        "no token, unknown token"
    );
}

#[tokio::test]
async fn newer_apps_get_no_contact_fields_and_leavers_have_status_5() {
    let stand_in = wecom().await;
    let token = token(&stand_in).await;
    stand_in.withhold_fields(&["mobile", "email", "biz_mail"]);
    let member = user_get(&stand_in, &token, "WangWu").await;
    for field in ["mobile", "email", "biz_mail"] {
        assert!(member.get(field).is_none(), "{field} in {member}");
    }
    assert_eq!(member["name"], "王五");
    stand_in.set_inactive("wangwu", true);
    assert_eq!(user_get(&stand_in, &token, "WangWu").await["status"], 5);
    stand_in.set_inactive("WangWu", false);
    assert_eq!(user_get(&stand_in, &token, "WangWu").await["status"], 1);
}

#[tokio::test]
async fn frequency_and_concurrency_limits_get_45009_and_45033() {
    let stand_in = wecom().await;
    let token = token(&stand_in).await;
    stand_in.set_rate_limit(Some(2));
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(user_get(&stand_in, &token, "LiSi").await["errcode"].clone());
    }
    assert_eq!(codes, [json!(0), json!(0), json!(45009)]);
    stand_in.set_rate_limit(None);
    stand_in.set_concurrency_limit(Some(1));
    stand_in.set_delay(Duration::from_millis(300));
    let (first, second) = tokio::join!(
        user_get(&stand_in, &token, "LiSi"),
        user_get(&stand_in, &token, "WangWu"),
    );
    let mut codes = [first["errcode"].clone(), second["errcode"].clone()];
    codes.sort_by_key(|code| code.as_i64());
    assert_eq!(codes, [json!(0), json!(45033)]);
}

#[tokio::test]
async fn an_address_off_the_trusted_list_gets_60020() {
    let stand_in = wecom().await;
    let token = token(&stand_in).await;
    stand_in.set_ip_banned(true);
    assert_eq!(user_get(&stand_in, &token, "LiSi").await["errcode"], 60020);
    assert_eq!(gettoken(&stand_in, CORP, SECRET).await["errcode"], 60020);
    stand_in.set_ip_banned(false);
    assert_eq!(user_get(&stand_in, &token, "LiSi").await["errcode"], 0);
}
