//! DingTalk's server API (`https://oapi.dingtalk.com`). Every answer is HTTP 200 with a JSON
//! body whose `errcode` is 0 on success; an error is a non-zero `errcode` with `errmsg`, or
//! `errcode` 88 with the cause in `sub_code`/`sub_msg` (全局错误码:
//! <https://developers.dingtalk.com/document/app/server-api-error-codes-1>).
//!
//! - `GET /gettoken?appkey=&appsecret=` (获取企业内部应用的access_token,
//!   <https://developers.dingtalk.com/document/app/obtain-orgapp-token>): the same token while it
//!   is valid, its 7200 s starting again; a wrong key or secret is 40089 (不合法的corpid或
//!   corpsecret, as the service answers for a wrong AppKey/AppSecret).
//! - `POST /topapi/v2/user/get?access_token=` with `{"userid", "language"}` (查询用户详情,
//!   <https://developers.dingtalk.com/document/app/query-user-details>): `result` is the user;
//!   60121 (找不到该用户) for an unknown one.
//! - `POST /topapi/user/getbyunionid?access_token=` with `{"unionid"}` (根据unionid获取用户
//!   userid): `result` is `{"contact_type": 0, "userid"}`; 60121 for an unknown one.
//!
//! A bad token is `errcode` 88 with `sub_code` 40014 (不合法的access_token), an expired one
//! `sub_code` 42001 (access_token超时). Limits (调用频率限制): 90018 when an app calls one API
//! more often than allowed (20, 40 or 60 calls a second by plan), 90020 when the organisation's
//! monthly quota (10,000 calls on the basic plan) is used up (API调用量超过限额后是否会有超额提示:
//! <http://www.dingtalk.com/qidian/help-detail-1061621972.html>), and an HTML page instead of
//! JSON for an address that called too much (每个IP调用所有接口总量 ... 返回的是一个html页面).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{
    DirectoryHandle as H,
    state::{InFlight, Refusal, Reuse, Shared, TokenFault, admit, outage, request_id},
};

type Params = Query<HashMap<String, String>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/gettoken", get(gettoken))
        .route("/topapi/v2/user/get", post(user_get))
        .route("/topapi/user/getbyunionid", post(getbyunionid))
        .with_state(shared)
}

async fn gettoken(State(shared): State<Arc<Shared>>, Query(params): Params) -> Response {
    let key = params.get("appkey").map_or("", String::as_str);
    let secret = params.get("appsecret").map_or("", String::as_str);
    let _call = match admit(&shared, key, H::GETTOKEN).await {
        Ok(call) => call,
        Err(refusal) => return refused(refusal),
    };
    let mut state = shared.lock();
    if state.apps.get(key).map(String::as_str) != Some(secret) || key.is_empty() {
        return error(40089, "不合法的corpid或corpsecret");
    }
    let (token, left) = state.issue_token(shared.source, key, Reuse::Renew);
    ok(json!({
        "access_token": token,
        "expires_in": left.as_secs_f64().ceil() as u64,
    }))
}

async fn user_get(
    State(shared): State<Arc<Shared>>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let _call = match authorised(&shared, &params, H::USER_GET).await {
        Ok(call) => call,
        Err(answer) => return answer,
    };
    let Some(userid) = field(&body, "userid") else {
        return error(40035, "不合法的参数");
    };
    match shared.lock().record(shared.source, &userid) {
        Some(user) => ok(json!({"result": user, "request_id": request_id()})),
        None => not_found(),
    }
}

async fn getbyunionid(
    State(shared): State<Arc<Shared>>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let _call = match authorised(&shared, &params, H::GETBYUNIONID).await {
        Ok(call) => call,
        Err(answer) => return answer,
    };
    let Some(unionid) = field(&body, "unionid") else {
        return error(40035, "不合法的参数");
    };
    let state = shared.lock();
    match state.alias("unionid", &unionid) {
        Some(userid) if state.people.contains_key(&userid) => ok(json!({
            "result": {"contact_type": 0, "userid": userid},
            "request_id": request_id(),
        })),
        _ => not_found(),
    }
}

/// Counts and admits a call made with `access_token`, under the app the token was issued to,
/// then checks the token.
async fn authorised(
    shared: &Arc<Shared>,
    params: &HashMap<String, String>,
    api: &'static str,
) -> Result<InFlight, Response> {
    let token = params.get("access_token").map(String::as_str);
    let app = token.and_then(|token| shared.lock().token_owner(token));
    let call = admit(shared, app.as_deref().unwrap_or(H::UNKNOWN_APP), api)
        .await
        .map_err(refused)?;
    match shared.lock().check_token(token) {
        Ok(()) => Ok(call),
        Err(TokenFault::Invalid) => Err(auth_error("40014", "不合法的access_token")),
        Err(TokenFault::Expired) => Err(auth_error("42001", "access_token超时")),
    }
}

/// A string field of a JSON request body.
fn field(body: &[u8], name: &str) -> Option<String> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body[name].as_str().map(str::to_owned)
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Outage(status) => outage(status),
        Refusal::IpBanned => ip_ban_page(),
        Refusal::OverQuota { used, quota } => error(
            90020,
            &format!(
                "您的企业本月api调用量已超过限制,调用量:{used}次,额度:{quota}次,请登录开发者后台-资源管理-查看用量明细"
            ),
        ),
        Refusal::RateLimited { .. } | Refusal::TooConcurrent => {
            error(90018, "当前应用调用该接口的频率超过了限制")
        }
    }
}

/// What DingTalk serves a banned address: an HTML page, HTTP 200, no `errcode`.
fn ip_ban_page() -> Response {
    let page = concat!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>访问被拒绝</title></head>",
        "<body><p>{\"status\":1111,\"wait\":5,\"source\":\"x5\",\"punish\":\"deny\",",
        "\"uuid\":\"3b2a1c0d-denied\"}</p></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html;charset=utf-8")], page).into_response()
}

fn ok(mut body: Value) -> Response {
    body["errcode"] = json!(0);
    body["errmsg"] = json!("ok");
    Json(body).into_response()
}

fn error(code: u32, message: &str) -> Response {
    Json(json!({"errcode": code, "errmsg": message, "request_id": request_id()})).into_response()
}

fn not_found() -> Response {
    error(60121, "找不到该用户")
}

fn auth_error(sub_code: &str, sub_msg: &str) -> Response {
    Json(json!({
        "errcode": 88,
        "sub_code": sub_code,
        "sub_msg": sub_msg,
        "errmsg": format!("ding talk error[subcode={sub_code},submsg={sub_msg}]"),
        "request_id": request_id(),
    }))
    .into_response()
}
