//! Feishu's open platform (`https://open.feishu.cn/open-apis`, served here under `/open-apis`).
//! An answer carries an HTTP status and a JSON `code` (0 on success) with `msg` (服务端错误码说明:
//! <https://open.feishu.cn/document/server-docs/api-call-guide/generic-error-code>).
//!
//! - `POST /auth/v3/tenant_access_token/internal` with `{"app_id", "app_secret"}` (自建应用获取
//!   tenant_access_token, <https://open.feishu.cn/document/ukTMukTMukTM/ukDNz4SO0MjL5QzM/auth-v3/auth/tenant_access_token_internal>):
//!   `{"code":0,"msg":"ok","tenant_access_token":"t-...","expire":7200}`; the same token while
//!   30 minutes or more are left, a new one (the old one still valid) below that. An unknown
//!   app is HTTP 200 `{"code":10014,"msg":"app id not exists"}`, a wrong secret HTTP 400
//!   `{"code":10014,"msg":"app secret invalid"}`, a missing field HTTP 200 code 10003.
//! - `GET /contact/v3/users/:user_id?user_id_type=open_id|union_id|user_id` with
//!   `Authorization: Bearer t-...` (获取单个用户信息,
//!   <https://open.feishu.cn/document/server-docs/contact-v3/user/get>): `{"code":0,"msg":
//!   "success","data":{"user":{...}}}`. An id that names nobody is HTTP 400 code 99992351 (`The
//!   request you send is not a valid {open_id} or not exists`), the generic code for an id that
//!   is malformed or does not exist.
//!
//! Tokens: HTTP 400 with 99991661 (no token), 99991671 (not a `t-`/`u-` token) or 99991663
//! (tenant token invalid or expired). Rate limit (频控策略,
//! <https://open.feishu.cn/document/server-docs/api-call-guide/frequency-control>): HTTP 429,
//! code 99991400 `request trigger frequency limit`, headers `x-ogw-ratelimit-limit` and
//! `x-ogw-ratelimit-reset` (seconds to wait). An address off the allowlist gets 99991401 (设置 IP
//! 白名单, which does not apply to token calls).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    DirectoryHandle as H,
    state::{Refusal, Reuse, Shared, admit, outage},
};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/open-apis/auth/v3/tenant_access_token/internal",
            post(tenant_access_token),
        )
        .route("/open-apis/contact/v3/users/{user_id}", get(user_get))
        .with_state(shared)
}

#[derive(Deserialize)]
struct Credentials {
    app_id: String,
    app_secret: String,
}

async fn tenant_access_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let credentials = serde_json::from_slice::<Credentials>(&body).ok();
    let app = credentials.as_ref().map_or("", |c| c.app_id.as_str());
    let _call = match admit(&shared, app, H::GETTOKEN).await {
        Ok(call) => call,
        Err(refusal) => return refused(refusal),
    };
    let Some(Credentials { app_id, app_secret }) =
        credentials.filter(|c| !c.app_id.is_empty() && !c.app_secret.is_empty())
    else {
        return answer(StatusCode::OK, 10003, "invalid param", json!({"data": {}}));
    };
    let mut state = shared.lock();
    match state.apps.get(&app_id) {
        None => return answer(StatusCode::OK, 10014, "app id not exists", json!({})),
        Some(secret) if *secret != app_secret => {
            return answer(
                StatusCode::BAD_REQUEST,
                10014,
                "app secret invalid",
                json!({}),
            );
        }
        Some(_) => {}
    }
    let (token, left) = state.issue_token(shared.source, &app_id, Reuse::WhileQuarterLeft);
    let expire = left.as_secs_f64().ceil() as u64;
    let extra = json!({"tenant_access_token": token, "expire": expire});
    answer(StatusCode::OK, 0, "ok", extra)
}

#[derive(Deserialize)]
struct UserQuery {
    user_id_type: Option<String>,
}

async fn user_get(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    Query(query): Query<UserQuery>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = authorization.and_then(|value| value.strip_prefix("Bearer "));
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
    if let Some(refusal) = authorization_refusal(&shared, authorization, token) {
        return refusal;
    }
    let kind = query.user_id_type.as_deref().unwrap_or("open_id");
    let state = shared.lock();
    let key = match kind {
        "open_id" => Some(user_id.clone()),
        "union_id" | "user_id" => state.alias(kind, &user_id),
        _ => return bad_request(99992402, "field validation failed"),
    };
    match key.and_then(|key| state.record(shared.source, &key)) {
        Some(user) => answer(
            StatusCode::OK,
            0,
            "success",
            json!({"data": {"user": user}}),
        ),
        None => bad_request(
            99992351,
            &format!(
                "The request you send is not a valid {{{kind}}} or not exists. Invalid ids: [{user_id}]"
            ),
        ),
    }
}

/// The answer to a call whose `Authorization` header carries no valid tenant token, if so.
fn authorization_refusal(
    shared: &Shared,
    authorization: Option<&str>,
    token: Option<&str>,
) -> Option<Response> {
    if authorization.is_none() {
        let msg =
            "Missing access token for authorization. Please make a request with token attached.";
        return Some(bad_request(99991661, msg));
    }
    let Some(token) = token.filter(|t| t.starts_with("t-") || t.starts_with("u-")) else {
        let msg = "Invalid access token format. Please make a request with a t- or u- token.";
        return Some(bad_request(99991671, msg));
    };
    // Feishu answers an unknown, revoked or expired tenant token alike.
    shared.lock().check_token(Some(token)).err()?;
    Some(bad_request(
        99991663,
        "Invalid access token for authorization. Please make a request with token attached.",
    ))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Outage(status) => outage(status),
        Refusal::IpBanned => bad_request(99991401, "IP is denied, not in the allowlist."),
        Refusal::RateLimited { limit, reset } => rate_limited(Some(limit), reset),
        Refusal::OverQuota { .. } | Refusal::TooConcurrent => {
            rate_limited(None, Duration::from_secs(1))
        }
    }
}

/// HTTP 429 with code 99991400 and the headers saying the limit and how long to wait.
fn rate_limited(limit: Option<u32>, reset: Duration) -> Response {
    let reset = (reset.as_secs_f64().ceil() as u64).max(1);
    let mut response = answer(
        StatusCode::TOO_MANY_REQUESTS,
        99991400,
        "request trigger frequency limit",
        json!({}),
    );
    let headers = response.headers_mut();
    if let Some(limit) = limit {
        headers.insert("x-ogw-ratelimit-limit", limit.into());
    }
    headers.insert("x-ogw-ratelimit-reset", reset.into());
    response
}

fn bad_request(code: u32, msg: &str) -> Response {
    answer(StatusCode::BAD_REQUEST, code, msg, json!({}))
}

/// `{"code", "msg"}` with the fields of `extra`, under `status`.
fn answer(status: StatusCode, code: u32, msg: &str, mut extra: Value) -> Response {
    extra["code"] = json!(code);
    extra["msg"] = json!(msg);
    (status, Json(extra)).into_response()
}
