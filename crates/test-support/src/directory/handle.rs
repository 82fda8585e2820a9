//! The test's side of a stand-in: what it knows, the switches, and the counts.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use serde_json::Value;

use super::{
    DirectorySource, directory_fixture,
    state::{Shared, max_in_any_second},
};

/// Configures a running stand-in and reads what it received. Every method takes effect at once,
/// also while calls are under way; clones share the same stand-in.
#[derive(Clone)]
pub struct DirectoryHandle {
    shared: Arc<Shared>,
}

impl DirectoryHandle {
    /// The token call: DingTalk's and WeCom's `gettoken`, Feishu's
    /// `tenant_access_token/internal`.
    pub const GETTOKEN: &'static str = "gettoken";
    /// The user-detail call: DingTalk's `topapi/v2/user/get`, WeCom's `cgi-bin/user/get`,
    /// Feishu's `contact/v3/users/:user_id`.
    pub const USER_GET: &'static str = "user/get";
    /// DingTalk's `topapi/user/getbyunionid`.
    pub const GETBYUNIONID: &'static str = "getbyunionid";
    /// The app calls are counted under when the caller could not be told: a token never issued,
    /// or none.
    pub const UNKNOWN_APP: &'static str = "";

    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The source this stand-in imitates.
    pub fn source(&self) -> DirectorySource {
        self.shared.source
    }

    /// Lets the app `key` (DingTalk `appkey`, WeCom `corpid`, Feishu `app_id`) get tokens with
    /// `secret`.
    pub fn add_app(&self, key: &str, secret: &str) {
        let mut state = self.shared.lock();
        state.apps.insert(key.to_owned(), secret.to_owned());
    }

    /// Adds a person, `record` being the user object as the source's user-detail call returns
    /// it, keyed by `id` (DingTalk and WeCom `userid`, Feishu `open_id`; WeCom matches it
    /// without regard to case). The record's other ids are indexed too: DingTalk `unionid`,
    /// Feishu `union_id` and `user_id`.
    pub fn add_person(&self, id: &str, record: Value) {
        let source = self.source();
        let key = person_key(source, id);
        let mut state = self.shared.lock();
        let kinds: &[&str] = match source {
            DirectorySource::DingTalk => &["unionid"],
            DirectorySource::WeCom => &[],
            DirectorySource::Feishu => &["union_id", "user_id"],
        };
        for kind in kinds {
            if let Some(other) = record[*kind].as_str() {
                let alias = (kind.to_string(), other.to_owned());
                state.aliases.insert(alias, key.clone());
            }
        }
        state.people.insert(key, record);
    }

    /// DingTalk: makes `getbyunionid` answer `userid` for `unionid`.
    pub fn add_unionid(&self, unionid: &str, userid: &str) {
        let alias = ("unionid".to_owned(), unionid.to_owned());
        self.shared.lock().aliases.insert(alias, userid.to_owned());
    }

    /// Adds the person of one fixture file (see [`directory_fixture`]) and returns their id.
    pub fn add_fixture_person(&self, file: &str) -> String {
        let record = directory_fixture(file);
        let field = self.source().id_field();
        let id = record[field]
            .as_str()
            .unwrap_or_else(|| panic!("{file} has no {field}"))
            .to_owned();
        self.add_person(&id, record);
        id
    }

    /// Adds every fixture person of this source; returns their ids.
    pub fn load_fixtures(&self) -> Vec<String> {
        let files = self.source().fixture_files();
        files.iter().map(|f| self.add_fixture_person(f)).collect()
    }

    /// Marks a person as having left (`true`) or back (`false`): DingTalk `active: false`, WeCom
    /// `status: 5`, Feishu `status.is_resigned: true`.
    pub fn set_inactive(&self, id: &str, inactive: bool) {
        let key = person_key(self.source(), id);
        let mut state = self.shared.lock();
        if inactive {
            state.inactive.insert(key);
        } else {
            state.inactive.remove(&key);
        }
    }

    /// Leaves these top-level fields out of every user record from now on, as a source does
    /// for a field the app has no permission for (DingTalk `mobile` without the contacts
    /// permission; WeCom `mobile` and `email` for apps created after June 2022); an empty
    /// list returns every field again.
    pub fn withhold_fields(&self, fields: &[&str]) {
        let mut state = self.shared.lock();
        state.withheld = fields.iter().map(|f| (*f).to_owned()).collect();
    }

    /// Makes every token issued so far invalid, as when the secret was reset: the next call
    /// with one gets the source's invalid-token answer; the token call issues a new one.
    pub fn revoke_tokens(&self) {
        self.shared.lock().revoke_tokens();
    }

    /// Ends the lifetime of every token issued so far: the next call with one gets the
    /// source's expired-token answer.
    pub fn expire_tokens(&self) {
        self.shared.lock().expire_tokens();
    }

    /// The lifetime of tokens issued from now on (7200 s by default); the token call reports
    /// it in whole seconds, rounded up.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().lifetime = Some(lifetime);
    }

    /// At most `limit` calls per second by one app to one API (DingTalk allows 20 to 60
    /// depending on the plan, Feishu's user call 50); beyond it, the source's rate-limit answer.
    /// The window slides, and refused calls count in it too. `None` lifts it.
    pub fn set_rate_limit(&self, limit: Option<u32>) {
        self.shared.lock().rate_limit = limit;
    }

    /// At most `limit` calls by one app to one API at once; beyond it WeCom answers 45033, the
    /// other sources their rate-limit answer. `None` lifts it.
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.shared.lock().concurrency_limit = limit;
    }

    /// DingTalk only: after `quota` calls in all (10,000 a month on the basic plan), every
    /// call gets 90020. `None` lifts it.
    pub fn set_monthly_quota(&self, quota: Option<u64>) {
        assert_eq!(
            self.source(),
            DirectorySource::DingTalk,
            "only DingTalk has a monthly call quota"
        );
        self.shared.lock().monthly_quota = quota;
    }

    /// Bans the caller's address (`true`) or lifts the ban: DingTalk answers an HTML page
    /// instead of JSON, WeCom 60020, Feishu 99991401 (its token call exempt).
    pub fn set_ip_banned(&self, banned: bool) {
        self.shared.lock().ip_banned = banned;
    }

    /// Delays every answer by `delay`, as a slow source would.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Fails every call with `status` (e.g. 500 or 502) and a plain page, as a source that is
    /// down would; `None` ends the outage.
    pub fn set_outage(&self, status: Option<StatusCode>) {
        self.shared.lock().outage = status;
    }

    /// How many calls `app` made to `api` (refused ones included).
    pub fn calls(&self, app: &str, api: &str) -> usize {
        self.call_times(app, api).len()
    }

    /// When `app` called `api`, in order of arrival.
    pub fn call_times(&self, app: &str, api: &str) -> Vec<Instant> {
        let state = self.shared.lock();
        let key = (app.to_owned(), api.to_owned());
        state.calls.get(&key).cloned().unwrap_or_default()
    }

    /// The most calls `app` made to `api` within any one-second window.
    pub fn max_calls_in_any_second(&self, app: &str, api: &str) -> usize {
        max_in_any_second(&self.call_times(app, api))
    }

    /// How many calls the stand-in received in all.
    pub fn total_calls(&self) -> u64 {
        self.shared.lock().total_calls
    }

    /// Forgets every call received so far (the monthly quota starts again).
    pub fn reset_counts(&self) {
        let mut state = self.shared.lock();
        state.calls.clear();
        state.total_calls = 0;
    }
}

/// The key of a person in the stand-in: WeCom user ids are matched without regard to case.
pub(super) fn person_key(source: DirectorySource, id: &str) -> String {
    match source {
        DirectorySource::WeCom => id.to_lowercase(),
        DirectorySource::DingTalk | DirectorySource::Feishu => id.to_owned(),
    }
}
