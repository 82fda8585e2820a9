//! WeCom's server API (`https://qyapi.weixin.qq.com`). Every answer is HTTP 200 with a JSON body
//! whose `errcode` is 0 and `errmsg` `"ok"` on success; an error is a non-zero `errcode` whose
//! `errmsg` ends with a hint and a link to the error-code tool (全局错误码:
//! <https://developer.work.weixin.qq.com/document/path/90455>).
//!
//! - `GET /cgi-bin/gettoken?corpid=&corpsecret=` (获取access_token): the same token while it
//!   is valid; 40013 (不合法的CorpID) for an unknown corpid, 40001 (不合法的secret参数) for a wrong
//!   secret.
//! - `GET /cgi-bin/user/get?access_token=&userid=` (读取成员,
//!   <https://developer.work.weixin.qq.com/document/path/90196>, and for the 2022 change
//!   <https://developer.work.weixin.qq.com/document/path/96255>): the member's fields beside
//!   `errcode`/`errmsg`; `userid` is matched without regard to case; 60111 (UserID不存在) for an
//!   unknown one. `status` is 1 active, 2 disabled, 4 not activated, 5 left (退出企业). Since
//!   20 June 2022 apps created after that date get no `mobile`, `email`, `biz_mail`, `avatar`,
//!   `gender`, `address`, `qr_code` (see `withhold_fields`).
//!
//! Tokens: 41001 (缺少access_token参数), 40014 (不合法的access_token) for an unknown or revoked
//! one, 42001 (access_token已过期) for an expired one. Limits: 45009 (接口调用超过限制) and 45033
//! (接口并发调用超过限制); 60020 when the address is not on the app's trusted IP list.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{
    DirectoryHandle as H,
    handle::person_key,
    state::{Refusal, Reuse, Shared, TokenFault, admit, outage, request_id},
};

type Params = Query<HashMap<String, String>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/cgi-bin/gettoken", get(gettoken))
        .route("/cgi-bin/user/get", get(user_get))
        .with_state(shared)
}

async fn gettoken(State(shared): State<Arc<Shared>>, Query(params): Params) -> Response {
    let corpid = params.get("corpid").map_or("", String::as_str);
    let secret = params.get("corpsecret").map_or("", String::as_str);
    let _call = match admit(&shared, corpid, H::GETTOKEN).await {
        Ok(call) => call,
        Err(refusal) => return refused(refusal),
    };
    if corpid.is_empty() {
        return error(41002, "corpid missing");
    }
    if secret.is_empty() {
        return error(41004, "corpsecret missing");
    }
    let mut state = shared.lock();
    match state.apps.get(corpid) {
        None => return error(40013, "invalid corpid"),
        Some(known) if known != secret => return error(40001, "invalid credential"),
        Some(_) => {}
    }
    let (token, left) = state.issue_token(shared.source, corpid, Reuse::Keep);
    ok(json!({
        "access_token": token,
        "expires_in": left.as_secs_f64().ceil() as u64,
    }))
}

async fn user_get(State(shared): State<Arc<Shared>>, Query(params): Params) -> Response {
    let token = params.get("access_token").map(String::as_str);
    let app = token.and_then(|token| shared.lock().token_owner(token));
    let _call = match admit(
        &shared,
        app.as_deref().unwrap_or(H::UNKNOWN_APP),
        H::USER_GET,
    )
    .await
    {
        Ok(call) => call,
        Err(refusal) => return refused(refusal),
    };
    let state = shared.lock();
    match (token, state.check_token(token)) {
        (None, _) => return error(41001, "access_token missing"),
        (_, Err(TokenFault::Invalid)) => return error(40014, "invalid access_token"),
        (_, Err(TokenFault::Expired)) => return error(42001, "access_token expired"),
        (_, Ok(())) => {}
    }
    let Some(userid) = params.get("userid").filter(|id| !id.is_empty()) else {
        return error(41009, "missing userid");
    };
    match state.record(shared.source, &person_key(shared.source, userid)) {
        Some(member) => ok(member),
        None => error(60111, "userid not found"),
    }
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Outage(status) => outage(status),
        Refusal::IpBanned => error(60020, "not allow to access from your ip"),
        Refusal::OverQuota { .. } | Refusal::RateLimited { .. } => {
            error(45009, "api freq out of limit")
        }
        Refusal::TooConcurrent => error(45033, "api concurrent out of limit"),
    }
}

fn ok(mut body: Value) -> Response {
    body["errcode"] = json!(0);
    body["errmsg"] = json!("ok");
    Json(body).into_response()
}

/// An error as WeCom words it: the reason, a hint to quote to support, and the lookup link.
fn error(code: u32, reason: &str) -> Response {
    let errmsg = format!(
        "{reason}, hint: [{}], more info at https://open.work.weixin.qq.com/devtool/query?e={code}",
        request_id()
    );
    Json(json!({"errcode": code, "errmsg": errmsg})).into_response()
}
