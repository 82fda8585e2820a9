//! The stand-ins driven over HTTP, as a client would; and what all three share.

mod dingtalk;
mod feishu;
mod wecom;

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use super::{
    DirectoryHandle as H, DirectorySource, DirectoryStandIn, directory_fixture,
    state::max_in_any_second,
};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// The status and the JSON body of a response.
async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

#[test]
fn max_in_any_second_counts_a_sliding_window() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    assert_eq!(max_in_any_second(&[]), 0);
    assert_eq!(
        max_in_any_second(&[at(0), at(1000)]),
        1,
        "a window is shorter than 1 s"
    );
    assert_eq!(max_in_any_second(&[at(0), at(999)]), 2);
    let scattered = [at(1550), at(0), at(600), at(200), at(1500), at(400)];
    assert_eq!(max_in_any_second(&scattered), 4, "0, 200, 400 and 600 ms");
    let burst: Vec<_> = (0..10).map(|i| at(5000 + i)).collect();
    assert_eq!(max_in_any_second(&[scattered.to_vec(), burst].concat()), 10);
}

#[test]
fn fixtures_are_the_records_the_sources_return() {
    let dingtalk = directory_fixture("dingtalk-profile.json");
    assert_eq!(dingtalk["userid"], "manager4230");
    assert_eq!(dingtalk["dept_id_list"], json!([2, 107]));
    let wecom = directory_fixture("wecom-profile.json");
    assert_eq!(wecom["userid"], "LiSi");
    let feishu = directory_fixture("feishu-profile.json");
    assert_eq!(feishu["open_id"], "ou_8f2d4b6a0c1e3f5a7b9d1c3e5f7a9b0d");
    assert!(
        feishu.get("attributes").is_none(),
        "the record, not the whole fixture"
    );
}

async fn wecom_with_app() -> DirectoryStandIn {
    let stand_in = DirectoryStandIn::start(DirectorySource::WeCom).await;
    stand_in.add_app("ww-corp", "ww-secret");
    stand_in
}

async fn wecom_gettoken(stand_in: &DirectoryStandIn) -> reqwest::Response {
    client()
        .get(format!("{}/cgi-bin/gettoken", stand_in.base_url()))
        .query(&[("corpid", "ww-corp"), ("corpsecret", "ww-secret")])
        .send()
        .await
        .expect("the stand-in answers")
}

#[tokio::test]
async fn a_delay_slows_every_answer() {
    let stand_in = wecom_with_app().await;
    stand_in.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    let (_, body) = json_of(wecom_gettoken(&stand_in).await).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered too soon"
    );
    assert_eq!(body["errcode"], 0);
    stand_in.set_delay(Duration::ZERO);
    let started = Instant::now();
    wecom_gettoken(&stand_in).await;
    assert!(started.elapsed() < Duration::from_millis(300), "still slow");
}

#[tokio::test]
async fn an_outage_fails_every_call_until_it_ends() {
    let stand_in = wecom_with_app().await;
    stand_in.set_outage(Some(StatusCode::BAD_GATEWAY));
    let response = wecom_gettoken(&stand_in).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.text().await.unwrap().contains("502 Bad Gateway"));
    stand_in.set_outage(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let status = wecom_gettoken(&stand_in).await.status();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    stand_in.set_outage(None);
    let (status, body) = json_of(wecom_gettoken(&stand_in).await).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::OK, json!(0))
    );
    assert_eq!(
        stand_in.calls("ww-corp", H::GETTOKEN),
        3,
        "failed calls count too"
    );
}

#[tokio::test]
async fn switches_set_from_another_task_apply_at_once() {
    let stand_in = wecom_with_app().await;
    let handle = stand_in.handle();
    tokio::spawn(async move { handle.set_outage(Some(StatusCode::SERVICE_UNAVAILABLE)) })
        .await
        .unwrap();
    let status = wecom_gettoken(&stand_in).await.status();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn dropping_the_stand_in_stops_serving() {
    let stand_in = wecom_with_app().await;
    let url = format!("{}/cgi-bin/gettoken", stand_in.base_url());
    assert!(client().get(&url).send().await.is_ok());
    drop(stand_in);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client().get(&url).send().await.is_err(), "still serving");
}

#[tokio::test]
async fn reset_counts_forgets_every_call() {
    let stand_in = wecom_with_app().await;
    wecom_gettoken(&stand_in).await;
    wecom_gettoken(&stand_in).await;
    assert_eq!(stand_in.total_calls(), 2);
    assert_eq!(stand_in.call_times("ww-corp", H::GETTOKEN).len(), 2);
    stand_in.reset_counts();
    assert_eq!(stand_in.total_calls(), 0);
    assert_eq!(stand_in.calls("ww-corp", H::GETTOKEN), 0);
}
