//! Each source's documented calls and answers: how to ask for a token and for a person, and what
//! an answer means. DingTalk and WeCom answer HTTP 200 with an `errcode` (0 on success); Feishu
//! answers an HTTP status and a `code`.
//!
//! - DingTalk: `GET /gettoken?appkey=&appsecret=` (7200 s tokens), `POST
//!   /topapi/v2/user/get?access_token=` `{"userid"}`, and first `POST
//!   /topapi/user/getbyunionid?access_token=` `{"unionid"}` when the login's id is a unionid.
//!   Bad token: `errcode` 40014 or 42001, or 88 with that `sub_code`; unknown person 60121 or an
//!   invalid userid 33012; too
//!   frequent 90018, 90006, 90005; monthly quota 90020; a banned address gets an HTML page.
//! - WeCom: `GET /cgi-bin/gettoken?corpid=&corpsecret=`, `GET
//!   /cgi-bin/user/get?access_token=&userid=`. Bad token 40001, 40014, 42001, 41001; unknown
//!   person 60111 or an invalid userid 40003; too frequent 45009, 45033.
//! - Feishu: `POST /auth/v3/tenant_access_token/internal` `{"app_id","app_secret"}`, `GET
//!   /contact/v3/users/:id?user_id_type=` with `Authorization: Bearer`. Bad token 99991661,
//!   99991663, 99991671; unknown person 99992351 (and HTTP 404), or outside the app's range
//!   41050; too frequent HTTP 429 or
//!   99991400, with `x-ogw-ratelimit-reset` seconds.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Map, Value, json};

use crate::domain::directory::{DirectoryKind, IdField};

/// The token call, counted under this API name.
pub const GETTOKEN: &str = "gettoken";
/// The user-detail call.
pub const USER_GET: &str = "user/get";
/// DingTalk's unionid-to-userid call.
pub const GETBYUNIONID: &str = "getbyunionid";

/// What an answer that is not a success means.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The token was refused (invalid or expired): fetched again once.
    Token(String),
    /// The person is not in the directory.
    NotFound,
    /// Too many calls: wait this long (the source's hint, else a second).
    RateLimited(Duration, String),
    /// The app's quota is used up.
    Quota(String),
    /// Anything else: a refused credential, an error, an answer that is not the API's.
    Failed(String),
    /// Not called: the app is paused (rate-limited, out of quota, failing) for a while yet.
    Paused(super::State, String),
}

/// A parsed successful answer.
pub type Answer = Result<Map<String, Value>, Fault>;

pub fn token_request(
    http: &Client,
    kind: DirectoryKind,
    base: &str,
    app: &str,
    secret: &str,
) -> RequestBuilder {
    match kind {
        DirectoryKind::DingTalk => http
            .get(format!("{base}/gettoken"))
            .query(&[("appkey", app), ("appsecret", secret)]),
        DirectoryKind::WeCom => http
            .get(format!("{base}/cgi-bin/gettoken"))
            .query(&[("corpid", app), ("corpsecret", secret)]),
        DirectoryKind::Feishu => http
            .post(format!("{base}/auth/v3/tenant_access_token/internal"))
            .json(&json!({"app_id": app, "app_secret": secret})),
    }
}

/// A token and how long the source says it lasts.
pub fn read_token(
    kind: DirectoryKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Duration), Fault> {
    let answer = read(kind, status, headers, body)?;
    let (token, lifetime) = match kind {
        DirectoryKind::DingTalk | DirectoryKind::WeCom => ("access_token", "expires_in"),
        DirectoryKind::Feishu => ("tenant_access_token", "expire"),
    };
    let token = answer
        .get(token)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Fault::Failed(format!("the token answer has no {token}")))?;
    let seconds = answer.get(lifetime).and_then(Value::as_u64).unwrap_or(7200);
    Ok((token.to_owned(), Duration::from_secs(seconds)))
}

/// The call for a person by the id the login carries (for DingTalk's unionid, the first of two
/// calls: [`GETBYUNIONID`], then [`USER_GET`] with the userid it answers).
pub fn user_request(
    http: &Client,
    kind: DirectoryKind,
    base: &str,
    token: &str,
    id_field: IdField,
    id: &str,
) -> (&'static str, RequestBuilder) {
    match (kind, id_field) {
        (DirectoryKind::DingTalk, IdField::UnionId) => (
            GETBYUNIONID,
            http.post(format!("{base}/topapi/user/getbyunionid"))
                .query(&[("access_token", token)])
                .json(&json!({"unionid": id})),
        ),
        (DirectoryKind::DingTalk, _) => (
            USER_GET,
            http.post(format!("{base}/topapi/v2/user/get"))
                .query(&[("access_token", token)])
                .json(&json!({"userid": id, "language": "zh_CN"})),
        ),
        (DirectoryKind::WeCom, _) => (
            USER_GET,
            http.get(format!("{base}/cgi-bin/user/get"))
                .query(&[("access_token", token), ("userid", id)]),
        ),
        (DirectoryKind::Feishu, field) => (
            USER_GET,
            http.get(format!(
                "{base}/contact/v3/users/{}",
                percent_encode_segment(id)
            ))
            .query(&[("user_id_type", field.as_str())])
            .bearer_auth(token),
        ),
    }
}

/// The person's record in a user-detail answer; for DingTalk's unionid call, `{"userid"}`.
pub fn read_user(
    kind: DirectoryKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let answer = read(kind, status, headers, body)?;
    let record = match kind {
        DirectoryKind::DingTalk => answer.get("result"),
        DirectoryKind::WeCom => return Ok(without_envelope(answer)),
        DirectoryKind::Feishu => answer.get("data").and_then(|d| d.get("user")),
    };
    match record {
        Some(Value::Object(record)) => Ok(record.clone()),
        _ => Err(Fault::Failed("the answer holds no user".into())),
    }
}

/// WeCom's member fields sit beside `errcode` and `errmsg`.
fn without_envelope(mut answer: Map<String, Value>) -> Map<String, Value> {
    answer.remove("errcode");
    answer.remove("errmsg");
    answer
}

/// A source's answer as JSON, or what its error code means.
fn read(
    kind: DirectoryKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Fault> {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    if kind == DirectoryKind::Feishu
        && (status == StatusCode::TOO_MANY_REQUESTS
            || parsed.as_ref().and_then(|a| code(a, "code")) == Some(99991400))
    {
        let wait = headers
            .get("x-ogw-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs);
        return Err(Fault::RateLimited(wait, "HTTP 429, 99991400".into()));
    }
    let Some(answer) = parsed else {
        let what = if body.starts_with(b"<") || body.starts_with(b"\xef\xbb\xbf<") {
            "an HTML page (the address may be banned for calling too much)"
        } else {
            "not JSON"
        };
        return Err(Fault::Failed(format!("HTTP {}: {what}", status.as_u16())));
    };
    let field = match kind {
        DirectoryKind::DingTalk | DirectoryKind::WeCom => "errcode",
        DirectoryKind::Feishu => "code",
    };
    let error = code(&answer, field).unwrap_or(0);
    let message = answer
        .get(if kind == DirectoryKind::Feishu {
            "msg"
        } else {
            "errmsg"
        })
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    if error == 0 && status.is_success() {
        return Ok(answer);
    }
    let said = format!("{field} {error}: {message}");
    Err(match (kind, error) {
        (DirectoryKind::DingTalk, 88) => match answer.get("sub_code").and_then(Value::as_str) {
            Some("40014" | "42001") => Fault::Token(said),
            _ => Fault::Failed(said),
        },
        (DirectoryKind::DingTalk, 40014 | 42001) => Fault::Token(said),
        // Unknown, or an id the source calls invalid (33012): nobody it knows.
        (DirectoryKind::DingTalk, 60121 | 33012) => Fault::NotFound,
        (DirectoryKind::DingTalk, 90018 | 90006 | 90005) => {
            Fault::RateLimited(Duration::from_secs(1), said)
        }
        (DirectoryKind::DingTalk, 90020) => Fault::Quota(said),
        (DirectoryKind::WeCom, 40001 | 40014 | 42001 | 41001) => Fault::Token(said),
        // Unknown (60111), or an invalid userid (40003).
        (DirectoryKind::WeCom, 60111 | 40003) => Fault::NotFound,
        (DirectoryKind::WeCom, 45009 | 45033) => Fault::RateLimited(Duration::from_secs(1), said),
        (DirectoryKind::Feishu, 99991661 | 99991663 | 99991671) => Fault::Token(said),
        // Not a valid id or nobody (99992351), or a person outside the app's range (41050).
        (DirectoryKind::Feishu, 99992351 | 41050) => Fault::NotFound,
        (DirectoryKind::Feishu, 0) if status == StatusCode::NOT_FOUND => Fault::NotFound,
        _ => Fault::Failed(format!("HTTP {}, {said}", status.as_u16())),
    })
}

fn code(answer: &Map<String, Value>, field: &str) -> Option<i64> {
    match answer.get(field)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An id as one path segment: everything but unreserved characters escaped, so that an id
/// cannot reach another path of the API (`../`, `?`, `#`).
fn percent_encode_segment(id: &str) -> String {
    let only_dots = id == "." || id == "..";
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'~')
            || (byte == b'.' && !only_dots);
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(kind: DirectoryKind, status: u16, body: Value) -> Answer {
        read_user(
            kind,
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn each_sources_codes_mean_what_its_documentation_says() {
        use DirectoryKind::*;
        let token = |a: &Answer| matches!(a, Err(Fault::Token(_)));
        assert!(token(&answer(
            DingTalk,
            200,
            json!({"errcode": 88, "sub_code": "40014"})
        )));
        assert!(token(&answer(
            DingTalk,
            200,
            json!({"errcode": 88, "sub_code": "42001"})
        )));
        assert!(token(&answer(WeCom, 200, json!({"errcode": 42001}))));
        assert!(token(&answer(Feishu, 400, json!({"code": 99991663}))));
        assert_eq!(
            answer(DingTalk, 200, json!({"errcode": 60121})),
            Err(Fault::NotFound)
        );
        assert_eq!(
            answer(WeCom, 200, json!({"errcode": 60111})),
            Err(Fault::NotFound)
        );
        assert_eq!(
            answer(Feishu, 400, json!({"code": 99992351})),
            Err(Fault::NotFound)
        );
        assert!(matches!(
            answer(DingTalk, 200, json!({"errcode": 90018})),
            Err(Fault::RateLimited(..))
        ));
        assert!(matches!(
            answer(WeCom, 200, json!({"errcode": 45033})),
            Err(Fault::RateLimited(..))
        ));
        assert!(matches!(
            answer(DingTalk, 200, json!({"errcode": 90020})),
            Err(Fault::Quota(_))
        ));
        assert!(matches!(
            answer(DingTalk, 200, json!({"errcode": 88, "sub_code": "x"})),
            Err(Fault::Failed(_))
        ));
    }

    #[test]
    fn feishu_says_how_long_to_wait() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ogw-ratelimit-reset", "7".parse().unwrap());
        let answer = read_user(
            DirectoryKind::Feishu,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"code":99991400,"msg":"request trigger frequency limit"}"#,
        );
        assert!(matches!(answer, Err(Fault::RateLimited(d, _)) if d == Duration::from_secs(7)));
    }

    #[test]
    fn an_html_page_is_a_failure_that_says_so() {
        let answer = read_user(
            DirectoryKind::DingTalk,
            StatusCode::OK,
            &HeaderMap::new(),
            b"<!DOCTYPE html><html></html>",
        );
        assert!(matches!(answer, Err(Fault::Failed(m)) if m.contains("HTML")));
    }

    #[test]
    fn records_come_out_of_each_envelope() {
        let ding = answer(
            DirectoryKind::DingTalk,
            200,
            json!({"errcode": 0, "errmsg": "ok", "result": {"userid": "u1", "active": true}}),
        );
        assert_eq!(ding.unwrap()["userid"], "u1");
        let wecom = answer(
            DirectoryKind::WeCom,
            200,
            json!({"errcode": 0, "errmsg": "ok", "userid": "LiSi", "status": 1}),
        )
        .unwrap();
        assert_eq!(wecom.get("errcode"), None);
        assert_eq!(wecom["userid"], "LiSi");
        let feishu = answer(
            DirectoryKind::Feishu,
            200,
            json!({"code": 0, "msg": "success", "data": {"user": {"open_id": "ou_1"}}}),
        );
        assert_eq!(feishu.unwrap()["open_id"], "ou_1");
    }

    #[test]
    fn an_id_stays_one_path_segment() {
        assert_eq!(percent_encode_segment("ou_ab-1.x~"), "ou_ab-1.x~");
        assert_eq!(percent_encode_segment("../admin?x#"), "..%2Fadmin%3Fx%23");
        assert_eq!(percent_encode_segment(".."), "%2E%2E");
    }
}
