//! What a stand-in knows and remembers, shared by its handlers and its handle: apps, people,
//! issued tokens, the switches a test sets, and every call received. Also the checks every call
//! passes before the source's own logic (`admit`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{DirectorySource, handle::DirectoryHandle};

/// The lifetime the three sources give an access token: 7200 seconds.
pub(super) const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);

/// A stand-in's state behind a lock, with the source it imitates.
pub(super) struct Shared {
    pub source: DirectorySource,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(source: DirectorySource) -> Self {
        Self {
            source,
            state: Mutex::new(State::default()),
        }
    }

    /// The state; a test that panicked while holding it leaves it usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One issued access token.
struct Token {
    app: String,
    expires_at: Instant,
    revoked: bool,
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TokenFault {
    /// Unknown, revoked, or missing.
    Invalid,
    /// Past its lifetime.
    Expired,
}

/// When asking for a token again returns the one already issued.
pub(super) enum Reuse {
    /// The same token while it is valid, its lifetime starting again (DingTalk: 有效期内重复获取
    /// 会返回相同结果并自动续期).
    Renew,
    /// The same token while it is valid, with what is left of its lifetime (WeCom).
    Keep,
    /// The same token while at least a quarter of its lifetime is left (30 of Feishu's 120
    /// minutes); past that a new one, the old one staying valid until it expires.
    WhileQuarterLeft,
}

/// Everything a stand-in knows; the switches are set through [`DirectoryHandle`].
#[derive(Default)]
pub(super) struct State {
    pub apps: HashMap<String, String>,
    pub people: HashMap<String, Value>,
    /// Other ids of a person, by kind (`unionid`, `union_id`, `user_id`), to the key in `people`.
    pub aliases: HashMap<(String, String), String>,
    pub inactive: HashSet<String>,
    pub withheld: BTreeSet<String>,
    tokens: HashMap<String, Token>,
    current: HashMap<String, String>,
    pub lifetime: Option<Duration>,
    pub rate_limit: Option<u32>,
    pub concurrency_limit: Option<usize>,
    pub monthly_quota: Option<u64>,
    pub ip_banned: bool,
    pub delay: Duration,
    pub outage: Option<StatusCode>,
    pub calls: HashMap<(String, String), Vec<Instant>>,
    pub total_calls: u64,
    in_flight: HashMap<(String, String), usize>,
}

impl State {
    pub fn lifetime(&self) -> Duration {
        self.lifetime.unwrap_or(DEFAULT_LIFETIME)
    }

    /// A token for `app`, reusing the current one as `reuse` says, and how long it has left.
    pub fn issue_token(
        &mut self,
        source: DirectorySource,
        app: &str,
        reuse: Reuse,
    ) -> (String, Duration) {
        let now = Instant::now();
        let lifetime = self.lifetime();
        if let Some(name) = self.current.get(app)
            && let Some(token) = self.tokens.get_mut(name)
        {
            let left = token.expires_at.saturating_duration_since(now);
            if !token.revoked && !left.is_zero() {
                match reuse {
                    Reuse::Renew => {
                        token.expires_at = now + lifetime;
                        return (name.clone(), lifetime);
                    }
                    Reuse::Keep => return (name.clone(), left),
                    Reuse::WhileQuarterLeft if left >= lifetime / 4 => {
                        return (name.clone(), left);
                    }
                    Reuse::WhileQuarterLeft => {}
                }
            }
        }
        let name = source.new_token();
        let token = Token {
            app: app.to_owned(),
            expires_at: now + lifetime,
            revoked: false,
        };
        self.tokens.insert(name.clone(), token);
        self.current.insert(app.to_owned(), name.clone());
        (name, lifetime)
    }

    /// The app a token was issued to, whatever its state; `None` for a token never issued.
    pub fn token_owner(&self, token: &str) -> Option<String> {
        self.tokens.get(token).map(|token| token.app.clone())
    }

    pub fn check_token(&self, token: Option<&str>) -> Result<(), TokenFault> {
        let token = token
            .and_then(|token| self.tokens.get(token))
            .ok_or(TokenFault::Invalid)?;
        if token.revoked {
            Err(TokenFault::Invalid)
        } else if token.expires_at <= Instant::now() {
            Err(TokenFault::Expired)
        } else {
            Ok(())
        }
    }

    pub fn revoke_tokens(&mut self) {
        self.tokens
            .values_mut()
            .for_each(|token| token.revoked = true);
    }

    pub fn expire_tokens(&mut self) {
        let now = Instant::now();
        self.tokens
            .values_mut()
            .for_each(|token| token.expires_at = token.expires_at.min(now));
    }

    /// The record of the person keyed `key`, as the source would return it now: without the
    /// withheld fields, marked as gone when the person is inactive.
    pub fn record(&self, source: DirectorySource, key: &str) -> Option<Value> {
        let mut record = self.people.get(key)?.clone();
        if self.inactive.contains(key) {
            source.mark_inactive(&mut record);
        }
        if let Value::Object(fields) = &mut record {
            fields.retain(|name, _| !self.withheld.contains(name));
        }
        Some(record)
    }

    /// The key in `people` of the person whose id of kind `kind` is `id`.
    pub fn alias(&self, kind: &str, id: &str) -> Option<String> {
        self.aliases.get(&(kind.to_owned(), id.to_owned())).cloned()
    }

    fn calls_since(&self, key: &(String, String), since: Instant) -> Vec<Instant> {
        self.calls.get(key).map_or_else(Vec::new, |times| {
            times.iter().copied().filter(|t| *t > since).collect()
        })
    }
}

/// Why a call was turned away before the source's own logic.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The source is down: an HTTP error status with no envelope.
    Outage(StatusCode),
    /// The caller's address is banned or not on the allowlist.
    IpBanned,
    /// The organisation's monthly call quota is used up.
    OverQuota { used: u64, quota: u64 },
    /// More than `limit` calls of this app to this API in the last second; room again after
    /// `reset`.
    RateLimited { limit: u32, reset: Duration },
    /// More than the allowed number of this app's calls to this API at once.
    TooConcurrent,
}

/// A call being answered; counted in the concurrency of its app and API until dropped.
pub(super) struct InFlight {
    shared: Arc<Shared>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(count) = state.in_flight.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Records a call of `app` to `api`, waits the configured delay, and decides at arrival whether
/// the switches turn it away: outage, IP ban (Feishu's token call is exempt, as its allowlist
/// does not apply to token calls), monthly quota (DingTalk), rate limit, concurrency. Every call
/// is counted, refused ones too, as a real source counts what it receives.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    app: &str,
    api: &'static str,
) -> Result<InFlight, Refusal> {
    let key = (app.to_owned(), api.to_owned());
    let (decision, delay) = {
        let mut state = shared.lock();
        let now = Instant::now();
        state.calls.entry(key.clone()).or_default().push(now);
        state.total_calls += 1;
        *state.in_flight.entry(key.clone()).or_default() += 1;
        (decide(shared.source, &state, &key, now), state.delay)
    };
    let guard = InFlight {
        shared: shared.clone(),
        key,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    decision.map(|()| guard)
}

fn decide(
    source: DirectorySource,
    state: &State,
    key: &(String, String),
    now: Instant,
) -> Result<(), Refusal> {
    if let Some(status) = state.outage {
        return Err(Refusal::Outage(status));
    }
    let token_call = key.1 == DirectoryHandle::GETTOKEN;
    if state.ip_banned && !(source == DirectorySource::Feishu && token_call) {
        return Err(Refusal::IpBanned);
    }
    if let Some(quota) = state.monthly_quota
        && state.total_calls > quota
    {
        let used = state.total_calls;
        return Err(Refusal::OverQuota { used, quota });
    }
    if let Some(limit) = state.rate_limit {
        let window = state.calls_since(key, now - Duration::from_secs(1));
        if window.len() > limit as usize {
            let oldest = window[0];
            let reset = (oldest + Duration::from_secs(1)).saturating_duration_since(now);
            return Err(Refusal::RateLimited { limit, reset });
        }
    }
    if let Some(limit) = state.concurrency_limit
        && state.in_flight.get(key).copied().unwrap_or(0) > limit
    {
        return Err(Refusal::TooConcurrent);
    }
    Ok(())
}

/// An outage's answer: the status and a gateway's plain page, no envelope.
pub(super) fn outage(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center></body></html>",
        code = status.as_u16()
    );
    (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
}

/// The largest number of `times` within any one-second window.
pub(super) fn max_in_any_second(times: &[Instant]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut start = 0;
    let mut best = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// A request id in the style sources add to their answers.
pub(super) fn request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..13].to_owned()
}
