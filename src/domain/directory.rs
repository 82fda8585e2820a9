//! A connection's directory (contract section 10): the credentials of its source's open API, so
//! that the worker asks DingTalk, WeCom or Feishu what they say about a person instead of relying
//! on the profile the platform copied into the login. `DirectorySpec` is the unvalidated shape
//! (`[connections.directory]`, the admin API); `DirectorySettings` what the worker uses; the rules
//! about a fetched record (is the person still there?) are here too.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::field::FieldError;

/// Contract default for `cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default for `quota_pause`.
pub const DEFAULT_QUOTA_PAUSE: Duration = Duration::from_secs(3600);
/// Default for `timeout`: one call to the source, the token call included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// What the API views show for a secret that is set.
pub const SECRET_SHOWN: &str = "set";

/// `[connections.directory]` as written, not yet validated. Secrets are written out as `"set"`
/// (the admin API, the console, recorded settings): only the database keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    /// `dingtalk`, `wecom` or `feishu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// DingTalk: the Enterprise ID (informational, shown to admins); WeCom: the `corpid` tokens
    /// are asked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_id: Option<String>,
    /// DingTalk: the AppKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    /// DingTalk and Feishu: the app's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<Secret>,
    /// WeCom: the app's `corpsecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_secret: Option<Secret>,
    /// Feishu: the app's `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The API's base URL; the source's public API by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// Which id the login's `external_id` is: DingTalk `userid` (default) or `unionid`; WeCom
    /// `userid`; Feishu `open_id` (default), `union_id` or `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    /// `missing` (default): only when a field the connection matches on is absent; `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<String>,
    /// How long a fetched record is used before it is fetched again (`24h` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    /// `wait` (default) or `event_profile`: see [`OnUnavailable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<String>,
    /// The longest one call to the source may take (`5s` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long calls to the app stop after the source says its quota is used up and names no
    /// time (DingTalk's monthly quota does not): `1h` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_pause: Option<String>,
    /// Calls per second by this app to one API (the source's limit for the plan: DingTalk 20,
    /// 40 or 60; WeCom and Feishu 50 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

/// A secret of the configuration: either written as is, or `${NAME}`, read from the process's
/// environment variable `NAME` when used (what production does, so that the secret is in
/// neither the file nor the database). Never written out: its `Debug` and its serialised form
/// are `"set"`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text as stored: the secret itself, or the `${NAME}` reference.
    pub fn stored(&self) -> &str {
        &self.0
    }

    /// The name of the environment variable it refers to, if it is a reference.
    pub fn variable(&self) -> Option<&str> {
        self.0
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'))
    }

    /// The secret's value: the environment variable's for a reference (an error naming the
    /// variable when it is unset).
    pub fn reveal(&self) -> Result<String, String> {
        match self.variable() {
            Some(name) => std::env::var(name)
                .map_err(|_| format!("the environment variable {name} is not set")),
            None => Ok(self.0.clone()),
        }
    }

    /// Whether an admin's write left it as shown (`"set"`): the stored secret is kept.
    pub fn is_shown_placeholder(&self) -> bool {
        self.0 == SECRET_SHOWN
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_SHOWN)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(SECRET_SHOWN)
    }
}

text_enum!(
    /// The source whose open API a directory is.
    DirectoryKind { DingTalk => "dingtalk", WeCom => "wecom", Feishu => "feishu" }
);
text_enum!(
    /// When the worker asks the directory: `missing` (a field the connection matches on is
    /// absent from the login) or `always` (every first login and every login whose cached record
    /// is older than `cache_ttl`).
    Fetch { Missing => "missing", Always => "always" }
);
text_enum!(
    /// What a login that needs the directory does while it cannot be reached (timeouts, errors,
    /// rate limits, an exhausted quota): `wait` (it is retried later through the broker, other
    /// connections' logins flow) or `event_profile` (decided on the event's own profile, said in
    /// the evidence).
    OnUnavailable { Wait => "wait", EventProfile => "event_profile" }
);
text_enum!(
    /// Which id of the source a login's `external_id` is.
    IdField {
        UserId => "userid",
        UnionId => "unionid",
        OpenId => "open_id",
        FeishuUnionId => "union_id",
        FeishuUserId => "user_id",
    }
);

impl DirectoryKind {
    /// The source's public API.
    pub fn default_api_base(self) -> &'static str {
        match self {
            Self::DingTalk => "https://oapi.dingtalk.com",
            Self::WeCom => "https://qyapi.weixin.qq.com",
            Self::Feishu => "https://open.feishu.cn/open-apis",
        }
    }

    fn default_id_field(self) -> IdField {
        match self {
            Self::DingTalk | Self::WeCom => IdField::UserId,
            Self::Feishu => IdField::OpenId,
        }
    }

    fn id_fields(self) -> &'static [IdField] {
        match self {
            Self::DingTalk => &[IdField::UserId, IdField::UnionId],
            Self::WeCom => &[IdField::UserId],
            Self::Feishu => &[
                IdField::OpenId,
                IdField::FeishuUnionId,
                IdField::FeishuUserId,
            ],
        }
    }

    fn default_rate_limit(self) -> u32 {
        match self {
            Self::DingTalk => 20,
            Self::WeCom | Self::Feishu => 50,
        }
    }

    /// Whether the source marks the person in `record` (its user-detail answer) as no longer
    /// active: DingTalk `active` false; WeCom `status` 2 (disabled), 4 (not activated) or 5
    /// (left); Feishu `status.is_frozen`, `is_resigned` or `is_exited`.
    pub fn inactive(self, record: &Map<String, Value>) -> bool {
        match self {
            Self::DingTalk => record.get("active") == Some(&Value::Bool(false)),
            Self::WeCom => matches!(
                record.get("status").and_then(Value::as_i64),
                Some(2 | 4 | 5)
            ),
            Self::Feishu => {
                let status = record.get("status");
                ["is_frozen", "is_resigned", "is_exited"]
                    .iter()
                    .any(|flag| status.and_then(|s| s.get(flag)) == Some(&Value::Bool(true)))
            }
        }
    }
}

/// A connection's validated directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySettings {
    pub kind: DirectoryKind,
    /// The Enterprise ID (DingTalk, informational) or `corpid` (WeCom).
    pub corp_id: Option<String>,
    /// Who asks for tokens: DingTalk's AppKey, WeCom's corpid, Feishu's app_id. One token per
    /// app, shared by every connection naming the same app.
    pub app: String,
    pub secret: Secret,
    /// Without a trailing `/`.
    pub api_base: String,
    pub id_field: IdField,
    pub fetch: Fetch,
    pub cache_ttl: Duration,
    pub on_unavailable: OnUnavailable,
    pub timeout: Duration,
    pub quota_pause: Duration,
    pub rate_limit: u32,
}

impl DirectorySettings {
    /// Validates `[connections.directory]`: the credentials its kind needs (and none of another
    /// kind's), an `http(s)` base, an id field the source has.
    pub fn validate(spec: &DirectorySpec) -> Result<Self, FieldError> {
        let err = |key: &'static str, message: String| FieldError::new(key, message);
        let kind: DirectoryKind = spec
            .kind
            .as_deref()
            .ok_or_else(|| {
                err(
                    "directory.kind",
                    "is required: dingtalk, wecom or feishu".into(),
                )
            })?
            .parse()
            .map_err(|m| err("directory.kind", m))?;
        let text =
            |key: &'static str, value: &Option<String>| -> Result<Option<String>, FieldError> {
                match value.as_deref().map(str::trim) {
                    None => Ok(None),
                    Some("") => Err(err(key, "must not be empty".into())),
                    Some(v) if v.len() > 256 || v.chars().any(char::is_control) => Err(err(
                        key,
                        "must be at most 256 characters without control characters".into(),
                    )),
                    Some(v) => Ok(Some(v.to_owned())),
                }
            };
        let corp_id = text("directory.corp_id", &spec.corp_id)?;
        let app_key = text("directory.app_key", &spec.app_key)?;
        let app_id = text("directory.app_id", &spec.app_id)?;
        let secret_of =
            |key: &'static str, secret: &Option<Secret>| -> Result<Secret, FieldError> {
                match secret {
                    Some(s) if !s.stored().trim().is_empty() => Ok(s.clone()),
                    _ => Err(err(key, format!("is required for {kind}"))),
                }
            };
        let refuse = |key: &'static str, present: bool| -> Result<(), FieldError> {
            if present {
                Err(err(key, format!("is not a credential of {kind}")))
            } else {
                Ok(())
            }
        };
        let (app, secret) = match kind {
            DirectoryKind::DingTalk => {
                refuse("directory.corp_secret", spec.corp_secret.is_some())?;
                refuse("directory.app_id", app_id.is_some())?;
                let app = app_key
                    .ok_or_else(|| err("directory.app_key", "is required for dingtalk".into()))?;
                (app, secret_of("directory.app_secret", &spec.app_secret)?)
            }
            DirectoryKind::WeCom => {
                refuse("directory.app_key", app_key.is_some())?;
                refuse("directory.app_secret", spec.app_secret.is_some())?;
                refuse("directory.app_id", app_id.is_some())?;
                let app = corp_id
                    .clone()
                    .ok_or_else(|| err("directory.corp_id", "is required for wecom".into()))?;
                (app, secret_of("directory.corp_secret", &spec.corp_secret)?)
            }
            DirectoryKind::Feishu => {
                refuse("directory.app_key", app_key.is_some())?;
                refuse("directory.corp_secret", spec.corp_secret.is_some())?;
                refuse("directory.corp_id", corp_id.is_some())?;
                let app = app_id
                    .ok_or_else(|| err("directory.app_id", "is required for feishu".into()))?;
                (app, secret_of("directory.app_secret", &spec.app_secret)?)
            }
        };
        let api_base = match text("directory.api_base", &spec.api_base)? {
            None => kind.default_api_base().to_owned(),
            Some(base) => {
                let url = reqwest::Url::parse(&base).map_err(|e| {
                    err("directory.api_base", format!("{base:?} is not a URL ({e})"))
                })?;
                let host = url.host_str().unwrap_or_default();
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if url.scheme() == "http" && !loopback {
                    return Err(err(
                        "directory.api_base",
                        format!(
                            "{base:?} must be https (http only on the loopback, for a local \
                             stand-in): the token and the secret travel in it"
                        ),
                    ));
                }
                if !matches!(url.scheme(), "http" | "https") || host.is_empty() {
                    return Err(err(
                        "directory.api_base",
                        format!("{base:?} is not an http(s) URL"),
                    ));
                }
                base.trim_end_matches('/').to_owned()
            }
        };
        let id_field = match spec.id_field.as_deref() {
            None => kind.default_id_field(),
            Some(raw) => {
                let field: IdField = raw.parse().map_err(|m| err("directory.id_field", m))?;
                if !kind.id_fields().contains(&field) {
                    let allowed: Vec<&str> = kind.id_fields().iter().map(|f| f.as_str()).collect();
                    return Err(err(
                        "directory.id_field",
                        format!("{kind} ids are {}", allowed.join(" or ")),
                    ));
                }
                field
            }
        };
        let fetch = match spec.fetch.as_deref() {
            None => Fetch::Missing,
            Some(raw) => raw.parse().map_err(|m| err("directory.fetch", m))?,
        };
        let on_unavailable = match spec.on_unavailable.as_deref() {
            None => OnUnavailable::Wait,
            Some(raw) => raw
                .parse()
                .map_err(|m| err("directory.on_unavailable", m))?,
        };
        let duration =
            |key: &'static str, raw: &Option<String>, default: Duration, max: Duration| {
                let Some(raw) = raw.as_deref() else {
                    return Ok(default);
                };
                let value = humantime::parse_duration(raw)
                    .map_err(|e| err(key, format!("{raw:?} is not a duration ({e})")))?;
                if value.is_zero() || value > max {
                    return Err(err(
                        key,
                        format!(
                            "must be above 0 and at most {}",
                            humantime::format_duration(max)
                        ),
                    ));
                }
                Ok(value)
            };
        let cache_ttl = duration(
            "directory.cache_ttl",
            &spec.cache_ttl,
            DEFAULT_CACHE_TTL,
            Duration::from_secs(366 * 24 * 3600),
        )?;
        let timeout = duration(
            "directory.timeout",
            &spec.timeout,
            DEFAULT_TIMEOUT,
            Duration::from_secs(60),
        )?;
        let quota_pause = duration(
            "directory.quota_pause",
            &spec.quota_pause,
            DEFAULT_QUOTA_PAUSE,
            Duration::from_secs(31 * 24 * 3600),
        )?;
        let rate_limit = match spec.rate_limit {
            None => kind.default_rate_limit(),
            Some(n) if (1..=10_000).contains(&n) => n,
            Some(_) => {
                return Err(err(
                    "directory.rate_limit",
                    "must be from 1 to 10000 calls a second".into(),
                ));
            }
        };
        Ok(Self {
            kind,
            corp_id,
            app,
            secret,
            api_base,
            id_field,
            fetch,
            cache_ttl,
            on_unavailable,
            timeout,
            quota_pause,
            rate_limit,
        })
    }

    /// The settings as written, every default filled in (the secret as stored).
    pub fn to_spec(&self) -> DirectorySpec {
        let mut spec = DirectorySpec {
            kind: Some(self.kind.as_str().to_owned()),
            corp_id: self.corp_id.clone(),
            api_base: Some(self.api_base.clone()),
            id_field: Some(self.id_field.as_str().to_owned()),
            fetch: Some(self.fetch.as_str().to_owned()),
            cache_ttl: Some(humantime::format_duration(self.cache_ttl).to_string()),
            on_unavailable: Some(self.on_unavailable.as_str().to_owned()),
            timeout: Some(humantime::format_duration(self.timeout).to_string()),
            quota_pause: Some(humantime::format_duration(self.quota_pause).to_string()),
            rate_limit: Some(self.rate_limit),
            ..DirectorySpec::default()
        };
        match self.kind {
            DirectoryKind::DingTalk => {
                spec.app_key = Some(self.app.clone());
                spec.app_secret = Some(self.secret.clone());
            }
            DirectoryKind::WeCom => spec.corp_secret = Some(self.secret.clone()),
            DirectoryKind::Feishu => {
                spec.app_id = Some(self.app.clone());
                spec.app_secret = Some(self.secret.clone());
            }
        }
        spec
    }

    /// The settings as the database keeps them: the spec with the secret's stored text (the
    /// serialised spec shows `"set"`).
    pub fn stored_json(&self) -> Value {
        let mut json = serde_json::to_value(self.to_spec()).expect("a spec serialises");
        let key = match self.kind {
            DirectoryKind::WeCom => "corp_secret",
            DirectoryKind::DingTalk | DirectoryKind::Feishu => "app_secret",
        };
        json[key] = Value::String(self.secret.stored().to_owned());
        json
    }
}

/// What the directory said about one login's person, as the decision uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The person's record, mapped into the login's profile; `inactive` when the source marks
    /// them as gone (the login is rejected, `directory_inactive`).
    Found { inactive: bool },
    /// The directory does not know the person: decided on the event alone.
    NotFound,
    /// The directory could not be asked (`on_unavailable = "event_profile"`): decided on the
    /// event alone. The text says why.
    Unavailable(String),
}

impl Finding {
    /// The evidence's `directory.result`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Found { inactive: false } => "found",
            Self::Found { inactive: true } => "inactive",
            Self::NotFound => "not_found",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Puts a directory's record into a login's raw profile: the record's fields go under
/// `attributes` (where the presets' templates read a source's fields), over the event's own;
/// the fields it left out (a permission the app lacks) stay as the event had them, and are
/// never filled in otherwise. Returns the record's field names.
pub fn merge_record(profile: &mut Map<String, Value>, record: &Map<String, Value>) {
    let attributes = profile
        .entry("attributes")
        .or_insert_with(|| Value::Object(Map::new()));
    if !attributes.is_object() {
        *attributes = Value::Object(Map::new());
    }
    let attributes = attributes.as_object_mut().expect("made an object");
    for (key, value) in record {
        attributes.insert(key.clone(), value.clone());
    }
    if !profile.contains_key("name")
        && let Some(name) = record.get("name").filter(|n| n.is_string())
    {
        profile.insert("name".into(), name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> DirectorySpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn dingtalk_needs_its_app_key_and_secret_and_fills_the_defaults() {
        let settings = DirectorySettings::validate(&spec(json!({
            "kind": "dingtalk", "corp_id": "ding0123456789", "app_key": "dingkey",
            "app_secret": "s3cret",
        })))
        .unwrap();
        assert_eq!(settings.app, "dingkey");
        assert_eq!(settings.api_base, "https://oapi.dingtalk.com");
        assert_eq!(settings.id_field, IdField::UserId);
        assert_eq!(settings.fetch, Fetch::Missing);
        assert_eq!(settings.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(settings.on_unavailable, OnUnavailable::Wait);
        let missing = DirectorySettings::validate(&spec(json!({
            "kind": "dingtalk", "app_key": "dingkey",
        })))
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "directory.app_secret: is required for dingtalk"
        );
    }

    #[test]
    fn another_sources_credential_or_id_is_refused() {
        let wrong = DirectorySettings::validate(&spec(json!({
            "kind": "wecom", "corp_id": "ww1", "corp_secret": "x", "app_secret": "y",
        })))
        .unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "directory.app_secret: is not a credential of wecom"
        );
        let id = DirectorySettings::validate(&spec(json!({
            "kind": "wecom", "corp_id": "ww1", "corp_secret": "x", "id_field": "unionid",
        })))
        .unwrap_err();
        assert_eq!(id.to_string(), "directory.id_field: wecom ids are userid");
        let base = DirectorySettings::validate(&spec(json!({
            "kind": "feishu", "app_id": "cli_1", "app_secret": "x", "api_base": "file:///etc",
        })))
        .unwrap_err();
        assert!(
            base.to_string().starts_with("directory.api_base:"),
            "{base}"
        );
        // The token and the secret never travel in clear text, except to the loopback.
        let clear = DirectorySettings::validate(&spec(json!({
            "kind": "feishu", "app_id": "cli_1", "app_secret": "x",
            "api_base": "http://open.feishu.example/open-apis",
        })))
        .unwrap_err();
        assert!(clear.to_string().contains("must be https"), "{clear}");
        for local in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:1",
        ] {
            let spec = spec(json!({
                "kind": "feishu", "app_id": "cli_1", "app_secret": "x", "api_base": local,
            }));
            assert!(DirectorySettings::validate(&spec).is_ok(), "{local}");
        }
    }

    #[test]
    fn a_secret_is_never_written_out_but_kept_for_the_database() {
        let settings = DirectorySettings::validate(&spec(json!({
            "kind": "feishu", "app_id": "cli_1", "app_secret": "very-secret",
        })))
        .unwrap();
        let shown = serde_json::to_value(settings.to_spec()).unwrap();
        assert_eq!(shown["app_secret"], "set");
        assert!(!format!("{settings:?}").contains("very-secret"));
        assert_eq!(settings.stored_json()["app_secret"], "very-secret");
        let read_back: DirectorySpec = serde_json::from_value(settings.stored_json()).unwrap();
        assert_eq!(DirectorySettings::validate(&read_back).unwrap(), settings);
    }

    #[test]
    fn a_secret_may_name_an_environment_variable() {
        let secret = Secret::new("${IDSYNC_TEST_SECRET_THAT_IS_NOT_SET}");
        assert_eq!(
            secret.variable(),
            Some("IDSYNC_TEST_SECRET_THAT_IS_NOT_SET")
        );
        assert!(
            secret
                .reveal()
                .unwrap_err()
                .contains("IDSYNC_TEST_SECRET_THAT_IS_NOT_SET")
        );
        assert_eq!(Secret::new("plain").reveal().unwrap(), "plain");
    }

    #[test]
    fn each_source_says_in_its_own_words_who_is_gone() {
        let record = |v: Value| v.as_object().unwrap().clone();
        let ding = DirectoryKind::DingTalk;
        assert!(ding.inactive(&record(json!({"active": false}))));
        assert!(!ding.inactive(&record(json!({"active": true}))));
        assert!(!ding.inactive(&record(json!({}))));
        for (status, gone) in [(1, false), (2, true), (4, true), (5, true)] {
            assert_eq!(
                DirectoryKind::WeCom.inactive(&record(json!({"status": status}))),
                gone,
                "status {status}"
            );
        }
        for flag in ["is_frozen", "is_resigned", "is_exited"] {
            assert!(DirectoryKind::Feishu.inactive(&record(json!({"status": {flag: true}}))));
        }
        assert!(
            !DirectoryKind::Feishu.inactive(&record(json!({"status": {"is_activated": true}})))
        );
    }

    #[test]
    fn a_record_goes_under_attributes_over_the_events_fields() {
        let mut profile =
            json!({"email": "a@b.example", "attributes": {"mobile": "1", "title": "x"}})
                .as_object()
                .unwrap()
                .clone();
        let record = json!({"mobile": "13800138000", "name": "张三"});
        merge_record(&mut profile, record.as_object().unwrap());
        assert_eq!(
            Value::Object(profile),
            json!({"email": "a@b.example", "name": "张三",
                   "attributes": {"mobile": "13800138000", "title": "x", "name": "张三"}})
        );
    }
}
