//! Stand-ins for the corporate directory open APIs that identity sources are read from: DingTalk
//! (钉钉), WeCom (企业微信) and Feishu (飞书). Each is a real HTTP server on a free loopback port,
//! answering the token call and the user-detail calls with the envelopes, error codes and HTTP
//! statuses the sources document, so that a client can be tested against them as it would run
//! against the real service.
//!
//! | Source | Real base | Calls served (API name used for counting) |
//! |---|---|---|
//! | DingTalk | `https://oapi.dingtalk.com` | `GET /gettoken` (`gettoken`), `POST /topapi/v2/user/get` (`user/get`), `POST /topapi/user/getbyunionid` (`getbyunionid`) |
//! | WeCom | `https://qyapi.weixin.qq.com` | `GET /cgi-bin/gettoken` (`gettoken`), `GET /cgi-bin/user/get` (`user/get`) |
//! | Feishu | `https://open.feishu.cn/open-apis` | `POST /auth/v3/tenant_access_token/internal` (`gettoken`), `GET /contact/v3/users/:user_id` (`user/get`) |
//!
//! A test configures the apps (credentials) and people the directory knows, flips switches while
//! the server runs (revoked or expired tokens, rate limits, a monthly quota, an IP ban, withheld
//! fields, people who left, a slow or failing source), and reads back how often and when each
//! app called each API.
//!
//! ```no_run
//! # async fn example() {
//! use idsync_test_support::{DirectoryHandle, DirectorySource, DirectoryStandIn};
//!
//! let dingtalk = DirectoryStandIn::start(DirectorySource::DingTalk).await;
//! dingtalk.add_app("ding-app", "ding-secret");
//! dingtalk.load_fixtures();
//! dingtalk.set_rate_limit(Some(40));
//! // ... point the client at dingtalk.base_url() and log people in ...
//! assert_eq!(dingtalk.calls("ding-app", DirectoryHandle::GETTOKEN), 1);
//! assert!(dingtalk.max_calls_in_any_second("ding-app", DirectoryHandle::USER_GET) <= 40);
//! # }
//! ```

mod dingtalk;
mod feishu;
mod handle;
mod state;
mod wecom;

#[cfg(test)]
mod tests;

use std::{ops::Deref, path::PathBuf, sync::Arc};

use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

pub use handle::DirectoryHandle;
use state::Shared;

/// Which directory a stand-in imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectorySource {
    /// DingTalk's server API (`oapi.dingtalk.com`): HTTP 200 always, `errcode` in the body.
    DingTalk,
    /// WeCom's server API (`qyapi.weixin.qq.com`): HTTP 200 always, `errcode` in the body.
    WeCom,
    /// Feishu's open platform (`open.feishu.cn/open-apis`): an HTTP status and a `code`.
    Feishu,
}

impl DirectorySource {
    /// The fixture files in `tests/fixtures/` that hold people of this source.
    pub fn fixture_files(self) -> &'static [&'static str] {
        match self {
            Self::DingTalk => &["dingtalk-profile.json", "dingtalk-profile-hk.json"],
            Self::WeCom => &["wecom-profile.json", "wecom-profile-2.json"],
            Self::Feishu => &["feishu-profile.json", "feishu-profile-2.json"],
        }
    }

    /// The field of a user record that `add_person` keys people by: DingTalk's and WeCom's
    /// `userid`, Feishu's `open_id`.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::DingTalk | Self::WeCom => "userid",
            Self::Feishu => "open_id",
        }
    }

    /// A new access token in the shape the source issues.
    fn new_token(self) -> String {
        let hex = || uuid::Uuid::new_v4().simple().to_string();
        match self {
            Self::DingTalk => hex(),
            Self::WeCom => format!("{}{}", hex(), hex()).to_uppercase(),
            Self::Feishu => format!("t-{}{}", hex(), &hex()[..8]),
        }
    }

    /// Marks a user record as someone who left: DingTalk `active: false`, WeCom `status: 5`
    /// (退出企业), Feishu `status.is_resigned: true`.
    fn mark_inactive(self, record: &mut Value) {
        match self {
            Self::DingTalk => record["active"] = Value::Bool(false),
            Self::WeCom => record["status"] = Value::from(5),
            Self::Feishu => {
                if !record["status"].is_object() {
                    record["status"] = serde_json::json!({});
                }
                record["status"]["is_resigned"] = Value::Bool(true);
            }
        }
    }
}

/// A running stand-in of one directory, serving on `127.0.0.1` until dropped. It dereferences
/// to its [`DirectoryHandle`], through which a test configures it and reads its counts; clone
/// the handle (`handle()`) to flip switches from another task.
pub struct DirectoryStandIn {
    handle: DirectoryHandle,
    base_url: String,
    task: JoinHandle<()>,
}

impl DirectoryStandIn {
    /// Starts a stand-in of `source` on a free loopback port, with no apps and no people.
    pub async fn start(source: DirectorySource) -> Self {
        let shared = Arc::new(Shared::new(source));
        let router = match source {
            DirectorySource::DingTalk => dingtalk::router(shared.clone()),
            DirectorySource::WeCom => wecom::router(shared.clone()),
            DirectorySource::Feishu => feishu::router(shared.clone()),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the directory stand-in");
        let address = listener.local_addr().expect("the stand-in's address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let root = format!("http://{address}");
        let base_url = match source {
            DirectorySource::Feishu => format!("{root}/open-apis"),
            DirectorySource::DingTalk | DirectorySource::WeCom => root,
        };
        Self {
            handle: DirectoryHandle::new(shared),
            base_url,
            task,
        }
    }

    /// Where a client reaches the stand-in, in place of the real base: `http://127.0.0.1:PORT`
    /// for DingTalk and WeCom, `http://127.0.0.1:PORT/open-apis` for Feishu.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A handle on the same stand-in, to keep in another task.
    pub fn handle(&self) -> DirectoryHandle {
        self.handle.clone()
    }
}

impl Deref for DirectoryStandIn {
    type Target = DirectoryHandle;

    fn deref(&self) -> &DirectoryHandle {
        &self.handle
    }
}

impl Drop for DirectoryStandIn {
    /// Stops serving: the port stops accepting, and open connections close once their current
    /// request is answered.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The user record held by a fixture in `tests/fixtures/` (its `attributes`, the object the
/// source's user-detail call returns), by file name, e.g. `"wecom-profile.json"`.
pub fn directory_fixture(file: &str) -> Value {
    let path = fixtures_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let mut fixture: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()));
    fixture["attributes"].take()
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
