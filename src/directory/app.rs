//! One app of one source, as the worker calls it: its token (one at a time, however many logins
//! wait), its rate windows (per API), and its pauses (rate-limited, quota used up, failing).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use reqwest::Client;
use serde::Serialize;
use serde_json::{Map, Value};

use super::source::{self, Fault, GETTOKEN};
use crate::{
    domain::directory::{DirectoryKind, DirectorySettings, IdField, Secret},
    metrics::{DirectoryCallLabel, Metrics},
};

/// A token is fetched again this long before the source says it ends.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Failures in a row after which calls stop for a while (a circuit breaker): 5 s after the
/// first five, twice as long after each five more, at most [`OPEN_AT_MOST`].
const FAILURES_TO_OPEN: u32 = 5;
const OPEN_FIRST: Duration = Duration::from_secs(5);
const OPEN_AT_MOST: Duration = Duration::from_secs(60);
/// The window the rate is kept over: a little over a second, so that calls admitted a second
/// apart here still arrive a second apart at the source when the network delays the first.
const RATE_WINDOW: Duration = Duration::from_millis(1100);
/// A rate-limit pause at most this long is waited out by the call instead of failing it.
const WAIT_OUT: Duration = Duration::from_secs(2);

/// How a directory is doing, as the admin API and metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    RateLimited,
    QuotaExhausted,
    Failing,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Ok,
        State::RateLimited,
        State::QuotaExhausted,
        State::Failing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::RateLimited => "rate_limited",
            State::QuotaExhausted => "quota_exhausted",
            State::Failing => "failing",
        }
    }
}

/// Why a person could not be looked up now.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    pub state: State,
    pub detail: String,
}

/// What the admin API shows of an app.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    /// Whether a token is held now.
    pub token: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Calls made since the process started.
    pub calls: u64,
    /// Until when calls are paused, if they are.
    pub paused_until: Option<DateTime<Utc>>,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

#[derive(Default)]
struct Health {
    failures: u32,
    paused: Option<(Instant, State)>,
    last_error: Option<(String, DateTime<Utc>)>,
    calls: u64,
}

pub struct App {
    kind: DirectoryKind,
    base: String,
    app: String,
    secret: Secret,
    timeout: Duration,
    quota_pause: Duration,
    rate: u32,
    token: tokio::sync::Mutex<Option<Token>>,
    windows: Mutex<HashMap<&'static str, VecDeque<Instant>>>,
    health: Mutex<Health>,
}

impl App {
    pub fn new(settings: &DirectorySettings) -> Self {
        Self {
            kind: settings.kind,
            base: settings.api_base.clone(),
            app: settings.app.clone(),
            secret: settings.secret.clone(),
            timeout: settings.timeout,
            quota_pause: settings.quota_pause,
            rate: settings.rate_limit,
            token: tokio::sync::Mutex::new(None),
            windows: Mutex::default(),
            health: Mutex::default(),
        }
    }

    /// Whether this app is the one `settings` name, with the same secret. Several connections
    /// may share an app: they share its token, rate window and pauses, with the limits
    /// (`timeout`, `rate_limit`, `quota_pause`) of the connection that called it first.
    pub fn same(&self, settings: &DirectorySettings) -> bool {
        self.kind == settings.kind
            && self.base == settings.api_base
            && self.app == settings.app
            && self.secret == settings.secret
    }

    pub fn status(&self) -> Status {
        let health = self.health.lock().expect("not poisoned");
        let paused = health.paused.filter(|(until, _)| *until > Instant::now());
        let token = self.token.try_lock().map(|t| t.is_some()).unwrap_or(true);
        Status {
            state: paused.map_or(State::Ok, |(_, state)| state),
            token,
            last_error: health.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: health.last_error.as_ref().map(|(_, at)| *at),
            calls: health.calls,
            paused_until: paused.map(|(until, _)| Utc::now() + (until - Instant::now())),
        }
    }

    /// The person whose id (of the kind `id_field` names) is `id`: `Ok(None)` when the
    /// directory does not know them.
    pub async fn person(
        &self,
        http: &Client,
        metrics: &Metrics,
        connection: &str,
        id_field: IdField,
        id: &str,
    ) -> Result<Option<Map<String, Value>>, Unavailable> {
        // A path segment of `.` or `..` would name another path of Feishu's API: nobody.
        if self.kind == DirectoryKind::Feishu && matches!(id, "." | "..") {
            return Ok(None);
        }
        let mut id = id.to_owned();
        let mut field = id_field;
        loop {
            let answer = self
                .call_with_token(http, metrics, connection, field, &id)
                .await?;
            match answer {
                None => return Ok(None),
                // DingTalk's unionid answers the userid; the person is then read by it.
                Some(found)
                    if self.kind == DirectoryKind::DingTalk && field == IdField::UnionId =>
                {
                    let Some(userid) = found.get("userid").and_then(Value::as_str) else {
                        return Err(self.failed("getbyunionid answered no userid".into()));
                    };
                    id = userid.to_owned();
                    field = IdField::UserId;
                }
                Some(record) => return Ok(Some(record)),
            }
        }
    }

    /// Obtains a token: what `connections check --online` tries.
    pub async fn check(
        &self,
        http: &Client,
        metrics: &Metrics,
        connection: &str,
    ) -> Result<(), Unavailable> {
        self.token(http, metrics, connection, None).await.map(drop)
    }

    /// One call, with a token; a token the source refuses is dropped and the call made once
    /// more with a new one.
    async fn call_with_token(
        &self,
        http: &Client,
        metrics: &Metrics,
        connection: &str,
        field: IdField,
        id: &str,
    ) -> Result<Option<Map<String, Value>>, Unavailable> {
        let mut refused: Option<String> = None;
        for _ in 0..3 {
            let token = self
                .token(http, metrics, connection, refused.as_deref())
                .await?;
            let (api, request) =
                source::user_request(http, self.kind, &self.base, &token, field, id);
            match self
                .send(metrics, connection, api, request, source::read_user)
                .await
            {
                Ok(record) => return Ok(Some(record)),
                Err(Fault::NotFound) => return Ok(None),
                Err(Fault::Token(said)) => {
                    tracing::info!(connection, api, %said, "the directory refused its token; fetching another");
                    refused = Some(token);
                }
                // Waited out by the next try (see `send`) when the source asks for little.
                Err(Fault::RateLimited(wait, said)) if wait <= WAIT_OUT => {
                    drop(self.fault(Fault::RateLimited(wait, said)));
                }
                Err(fault) => return Err(self.fault(fault)),
            }
        }
        Err(self.failed("the directory kept refusing the call".into()))
    }

    /// The app's token: the one held, unless it is `refused` or near its end; else one fetched
    /// (by one caller at a time: the others wait for it and use it).
    async fn token(
        &self,
        http: &Client,
        metrics: &Metrics,
        connection: &str,
        refused: Option<&str>,
    ) -> Result<String, Unavailable> {
        let mut held = self.token.lock().await;
        if let Some(token) = held.as_ref()
            && token.refresh_at > Instant::now()
            && Some(token.value.as_str()) != refused
        {
            return Ok(token.value.clone());
        }
        *held = None;
        let secret = self.secret.reveal().map_err(|e| self.failed(e))?;
        let request = source::token_request(http, self.kind, &self.base, &self.app, &secret);
        metrics
            .directory_tokens
            .get_or_create(&crate::metrics::ConnectionLabel {
                connection: connection.to_owned(),
            })
            .inc();
        let (value, lifetime) = self
            .send(metrics, connection, GETTOKEN, request, source::read_token)
            .await
            .map_err(|fault| self.fault(fault))?;
        let keep = lifetime.saturating_sub(TOKEN_MARGIN).max(lifetime / 2);
        *held = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + keep,
        });
        Ok(value)
    }

    /// Sends one call within the app's rate and pauses, and reads its answer.
    async fn send<T>(
        &self,
        metrics: &Metrics,
        connection: &str,
        api: &'static str,
        request: reqwest::RequestBuilder,
        read: impl FnOnce(
            DirectoryKind,
            reqwest::StatusCode,
            &reqwest::header::HeaderMap,
            &[u8],
        ) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        if let Some(wait) = self.rate_pause().filter(|w| *w <= WAIT_OUT) {
            tokio::time::sleep(wait).await;
        }
        if let Some(unavailable) = self.paused() {
            return Err(Fault::Paused(unavailable.state, unavailable.detail));
        }
        self.admit(api).await;
        self.health.lock().expect("not poisoned").calls += 1;
        let answer = async {
            let response = request
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| Fault::Failed(format!("{api}: {}", without_url(e))))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = bounded_body(response)
                .await
                .map_err(|e| Fault::Failed(format!("{api}: {e}")))?;
            read(self.kind, status, &headers, &body)
        }
        .await;
        let result = match &answer {
            Ok(_) => "ok",
            Err(Fault::NotFound) => "not_found",
            Err(Fault::Token(_)) => "token_refused",
            Err(Fault::RateLimited(..)) => "rate_limited",
            Err(Fault::Quota(_)) => "quota_exhausted",
            Err(Fault::Failed(_)) => "failed",
            Err(Fault::Paused(..)) => "paused",
        };
        metrics
            .directory_calls
            .get_or_create(&DirectoryCallLabel {
                connection: connection.to_owned(),
                api,
                result,
            })
            .inc();
        if matches!(answer, Ok(_) | Err(Fault::NotFound)) {
            self.health.lock().expect("not poisoned").failures = 0;
            metrics.directory_state(connection, State::Ok);
        } else if let Err(fault) = &answer {
            let state = match fault {
                Fault::RateLimited(..) => State::RateLimited,
                Fault::Quota(_) => State::QuotaExhausted,
                Fault::Paused(state, _) => *state,
                _ => State::Failing,
            };
            metrics.directory_state(connection, state);
        }
        answer
    }

    /// Waits until a call to `api` keeps the app within `rate` calls in any second.
    async fn admit(&self, api: &'static str) {
        loop {
            let wait = {
                let mut windows = self.windows.lock().expect("not poisoned");
                let window = windows.entry(api).or_default();
                let now = Instant::now();
                while window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
                {
                    window.pop_front();
                }
                if window.len() < self.rate as usize {
                    window.push_back(now);
                    return;
                }
                RATE_WINDOW - now.duration_since(*window.front().expect("full"))
            };
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
        }
    }

    /// What is left of a rate-limit pause, if one is under way.
    fn rate_pause(&self) -> Option<Duration> {
        let health = self.health.lock().expect("not poisoned");
        match health.paused {
            Some((until, State::RateLimited)) => until.checked_duration_since(Instant::now()),
            _ => None,
        }
    }

    fn paused(&self) -> Option<Unavailable> {
        let health = self.health.lock().expect("not poisoned");
        let (until, state) = health.paused?;
        (until > Instant::now()).then(|| Unavailable {
            state,
            detail: format!(
                "calls to the directory are paused for {:.0?} more ({}){}",
                until - Instant::now(),
                state.as_str(),
                health
                    .last_error
                    .as_ref()
                    .map(|(e, _)| format!(": {e}"))
                    .unwrap_or_default()
            ),
        })
    }

    /// Records a fault, pausing the app as it calls for; what the login is told.
    fn fault(&self, fault: Fault) -> Unavailable {
        let mut health = self.health.lock().expect("not poisoned");
        let now = Instant::now();
        let (state, detail, pause) = match fault {
            Fault::RateLimited(wait, said) => (State::RateLimited, said, Some(wait)),
            Fault::Quota(said) => (State::QuotaExhausted, said, Some(self.quota_pause)),
            Fault::Failed(said) | Fault::Token(said) => {
                health.failures += 1;
                let opens = health.failures / FAILURES_TO_OPEN;
                let open = health.failures.is_multiple_of(FAILURES_TO_OPEN);
                let pause = OPEN_FIRST
                    .saturating_mul(1 << opens.saturating_sub(1).min(8))
                    .min(OPEN_AT_MOST);
                (State::Failing, said, open.then_some(pause))
            }
            Fault::NotFound => (State::Failing, "not found".into(), None),
            // A call not made while paused changes nothing: the pause was decided by what the
            // source answered before.
            Fault::Paused(state, detail) => return Unavailable { state, detail },
        };
        if let Some(pause) = pause.filter(|p| !p.is_zero()) {
            let until = now + pause;
            if health.paused.is_none_or(|(old, _)| old < until) {
                health.paused = Some((until, state));
            }
        }
        health.last_error = Some((detail.clone(), Utc::now()));
        tracing::warn!(app = %self.app, kind = %self.kind, state = state.as_str(), %detail, "the directory could not be asked");
        Unavailable { state, detail }
    }

    fn failed(&self, detail: String) -> Unavailable {
        self.fault(Fault::Failed(detail))
    }
}

/// The most of an answer read: a user's record is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// An answer's body, refused past [`MAX_BODY`].
async fn bounded_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(without_url)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("an answer over {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A request error without its URL, which carries the token or the secret in its query.
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let text = error.to_string();
    if let Some(source) = std::error::Error::source(&error) {
        format!("{text}: {source}")
    } else {
        text
    }
}
