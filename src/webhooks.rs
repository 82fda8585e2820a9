//! Webhook delivery (contract section 12): each committed event that an endpoint takes is a
//! delivery row (written with the event, see the `outbox_enqueue` migration); this task takes due
//! deliveries under a lease, POSTs each event signed (Standard Webhooks 1.0), logs the attempt
//! and moves the delivery on: delivered, tried again later, or given up.
//!
//! Nothing is delivered from memory alone: a crash leaves the delivery's lease to run out and
//! the delivery is sent again, with the same `webhook-id`. One subject's deliveries to an
//! endpoint go one at a time, in `sequence` order; an endpoint takes at most
//! `webhooks.max_in_flight_per_endpoint` of the process's `webhooks.max_in_flight` at once, so a
//! slow one holds up no other.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use reqwest::{
    StatusCode,
    dns::{Addrs, Name, Resolve, Resolving},
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER},
};
use sqlx::PgPool;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::{
        outbox::{self, NewOutbox},
        webhooks::{self as db, After, Attempt, Claimed, EndpointRow},
    },
    domain::{
        events::{OutboundEvent, WebhookDeliveryFailed, WebhookEndpointDisabled},
        webhooks::{check_address, parse_retry_after, retry_delay, signature},
    },
    metrics::{Metrics, WebhookLabel},
    relay::Handoff,
    settings::WebhooksSettings,
};

/// The most of a receiver's answer that is read (and the first bytes of it that are logged).
pub const MAX_ANSWER: usize = 1024;
/// Bytes of the answer kept in the delivery log.
const LOGGED_ANSWER: usize = 256;

/// Sends one signed request: the HTTP client (no redirects, no proxy, addresses checked after
/// resolution) and the settings that bound it. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

/// What a receiver answered, or why it could not.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Option<u16>,
    pub latency: Duration,
    /// The first bytes of the body (lossy UTF-8), or why no answer came.
    pub response: String,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Sender {
    pub fn new(settings: &WebhooksSettings) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private: settings.allow_private_addresses,
            }))
            .user_agent(concat!("identity-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the webhook HTTP client builds");
        Self {
            client,
            allow_private: settings.allow_private_addresses,
        }
    }

    /// Whether `url` may be an endpoint: its host, an address or every address its name
    /// resolves to now, must be one deliveries may reach. A name that does not resolve (within
    /// 3 s) is accepted: deliveries check again.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<IpAddr> = match (literal_address(url), url.host_str()) {
            (Some(ip), _) => vec![ip],
            (None, Some(name)) => {
                let lookup = tokio::net::lookup_host((name, port));
                match tokio::time::timeout(Duration::from_secs(3), lookup).await {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    _ => Vec::new(),
                }
            }
            (None, None) => return Err("url has no host".into()),
        };
        for ip in addresses {
            check_address(ip, self.allow_private).map_err(|refused| refused.describe(ip))?;
        }
        Ok(())
    }

    /// POSTs `body` (a CloudEvent as published) to `url`, signed with `secrets`.
    pub async fn send(&self, url: &str, event_id: &str, body: Vec<u8>, secrets: &[&str]) -> Answer {
        let started = Instant::now();
        let failed = |error: String| Answer {
            status: None,
            latency: started.elapsed(),
            response: String::new(),
            error: Some(error),
            retry_after: None,
        };
        let parsed = match crate::domain::webhooks::parse_url(url) {
            Ok(parsed) => parsed,
            Err(error) => return failed(error),
        };
        // An address in the URL is not resolved, so not seen by the resolver: checked here.
        if let Some(ip) = literal_address(&parsed)
            && let Err(refused) = check_address(ip, self.allow_private)
        {
            return failed(refused.describe(ip));
        }
        let timestamp = Utc::now().timestamp();
        let signed = signature(secrets, event_id, timestamp, &body);
        let request = self
            .client
            .post(parsed)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json"),
            )
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return failed(error_chain(&error)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // Only the first bytes of the answer are read; the rest is dropped with the connection.
        let mut head = Vec::new();
        let mut error = None;
        while head.len() < MAX_ANSWER {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    error = Some(format!("reading the answer: {}", error_chain(&e)));
                    break;
                }
            }
        }
        head.truncate(LOGGED_ANSWER);
        Answer {
            status: Some(status.as_u16()),
            latency: started.elapsed(),
            response: String::from_utf8_lossy(&head).into_owned(),
            error,
            retry_after,
        }
    }
}

/// Resolves names as the system does, then drops every address a delivery may not reach: the
/// connection can only go to an address that passed, whatever the name resolved to at creation.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match check_address(a.ip(), allow_private) {
                    Ok(()) => true,
                    Err(refused) => {
                        refusal = Some(refused.describe(a.ip()));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| "no address".into());
                return Err(format!("{host}: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The address a URL names as its host, when it names one rather than a name.
fn literal_address(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The delivery task of a process.
pub struct Deliverer {
    pool: PgPool,
    origin: Uuid,
    relay: Handoff,
    metrics: Metrics,
    settings: Arc<crate::settings::Settings>,
    sender: Sender,
    health: crate::health::Health,
}

/// Attempts recorded in one transaction at most.
const RECORD_BATCH: usize = 256;

/// A delivery sent, with what came of it, for the recorder.
struct Sent {
    endpoint: EndpointRow,
    delivery: Claimed,
    answer: Answer,
}

/// What one endpoint has in this process: its deliveries taken (sending or waiting to), and the
/// permits of the ones sending.
struct Held {
    taken: usize,
    sending: Arc<Semaphore>,
    /// When its deliveries were last claimed.
    claimed_at: Instant,
}

/// While logins queue up, an endpoint is claimed for at most once in this long.
const TRICKLE: Duration = Duration::from_secs(2);
/// Logins queued within this long ago still count as queueing.
const QUEUED_WITHIN: Duration = Duration::from_secs(1);

type Taken = Arc<Mutex<HashMap<Uuid, Held>>>;

impl Deliverer {
    pub fn new(
        pool: PgPool,
        origin: Uuid,
        relay: Handoff,
        metrics: Metrics,
        settings: Arc<crate::settings::Settings>,
        sender: Sender,
        health: crate::health::Health,
    ) -> Self {
        Self {
            pool,
            origin,
            relay,
            metrics,
            settings,
            sender,
            health,
        }
    }

    /// How long a taken delivery is this process's: a round of waiting for its endpoint's room,
    /// its own request, and a margin.
    fn lease(&self) -> Duration {
        self.settings.webhooks.timeout * 3 + Duration::from_secs(5)
    }

    /// Takes and sends due deliveries until `stop`, then lets the ones in flight finish.
    ///
    /// Per endpoint, up to twice `max_in_flight_per_endpoint` deliveries are taken (half sending,
    /// half waiting for room), and more are taken only once half of them are done: each claim
    /// reads one endpoint's due deliveries from its index and brings a useful number.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let w = &this.settings.webhooks;
        let sending = Arc::new(Semaphore::new(w.max_in_flight));
        let taken: Taken = Arc::default();
        let mut tasks = JoinSet::new();
        let (record, recorded) = mpsc::channel(RECORD_BATCH * 4);
        let recorder = tokio::spawn(this.clone().record_all(recorded));
        let mut endpoints: Vec<EndpointRow> = Vec::new();
        let mut endpoints_at: Option<Instant> = None;
        let mut backlog_at = Instant::now();
        loop {
            while tasks.try_join_next().is_some() {}
            if stop.is_cancelled() {
                break;
            }
            if backlog_at.elapsed() >= Duration::from_secs(5) {
                backlog_at = Instant::now();
                this.report_backlog().await;
            }
            if endpoints_at.is_none_or(|at| at.elapsed() >= w.poll_interval) {
                match this.enabled_endpoints().await {
                    Ok(found) => {
                        endpoints = found;
                        endpoints_at = Some(Instant::now());
                    }
                    Err(error) => {
                        this.metrics.transient("webhooks");
                        tracing::warn!(%error, "reading webhook endpoints failed; retrying");
                    }
                }
            }
            for endpoint in &endpoints {
                let started = this.take(endpoint, &taken, &sending, &record, &mut tasks);
                if let Err(error) = started.await {
                    this.metrics.transient("webhooks");
                    tracing::warn!(%error, "taking webhook deliveries failed; retrying");
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(w.poll_interval) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // What is in flight finishes (each request is bounded by webhooks.timeout); what is not
        // done by then is sent again once its lease runs out.
        let _ = tokio::time::timeout(w.timeout + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        // The recorder ends once the last sender is gone, having recorded what it was given.
        drop(tasks);
        drop(record);
        let _ = tokio::time::timeout(Duration::from_secs(5), recorder).await;
    }

    async fn enabled_endpoints(&self) -> sqlx::Result<Vec<EndpointRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(db::list(&mut conn, None)
            .await?
            .into_iter()
            .filter(|e| e.enabled)
            .collect())
    }

    /// Takes due deliveries of `endpoint` when half of what it may hold is free, and starts
    /// them: each waits for one of the endpoint's sending permits, then for one of the process's.
    async fn take(
        self: &Arc<Self>,
        endpoint: &EndpointRow,
        taken: &Taken,
        sending: &Arc<Semaphore>,
        record: &mpsc::Sender<Sent>,
        tasks: &mut JoinSet<()>,
    ) -> sqlx::Result<()> {
        let per_endpoint = self.settings.webhooks.max_in_flight_per_endpoint;
        let hold = per_endpoint * 2;
        let yielding = self.settings.webhooks.yield_to_logins
            && self.health.logins_queued_within(QUEUED_WITHIN);
        let room = {
            let taken = taken.lock().expect("not poisoned");
            let held = taken.get(&endpoint.id);
            if yielding && held.is_some_and(|h| h.claimed_at.elapsed() < TRICKLE) {
                return Ok(());
            }
            hold - held.map_or(0, |h| h.taken)
        };
        // The process holds at most twice what it may send at once.
        let total_room = (self.settings.webhooks.max_in_flight * 2).saturating_sub(tasks.len());
        let limit = room.min(total_room);
        if limit == 0 || room < per_endpoint {
            return Ok(());
        }
        let claimed = {
            let mut conn = self.pool.acquire().await?;
            db::claim(&mut conn, endpoint.id, limit as i64, self.lease()).await?
        };
        if claimed.is_empty() {
            return Ok(());
        }
        let endpoint_permits = {
            let mut taken = taken.lock().expect("not poisoned");
            let held = taken.entry(endpoint.id).or_insert_with(|| Held {
                taken: 0,
                sending: Arc::new(Semaphore::new(per_endpoint)),
                claimed_at: Instant::now(),
            });
            held.taken += claimed.len();
            held.claimed_at = Instant::now();
            held.sending.clone()
        };
        for delivery in claimed {
            let this = self.clone();
            let endpoint = endpoint.clone();
            let (endpoint_permits, sending, taken, record) = (
                endpoint_permits.clone(),
                sending.clone(),
                taken.clone(),
                record.clone(),
            );
            tasks.spawn(async move {
                let id = endpoint.id;
                if let Ok(_endpoint_permit) = endpoint_permits.acquire_owned().await
                    && let Ok(_permit) = sending.acquire_owned().await
                {
                    let sent = this.deliver(endpoint, delivery).await;
                    // Waits while the recorder is behind: what is sent stays bounded.
                    let _ = record.send(sent).await;
                }
                let mut taken = taken.lock().expect("not poisoned");
                if let Some(held) = taken.get_mut(&id) {
                    held.taken = held.taken.saturating_sub(1);
                }
            });
        }
        Ok(())
    }

    /// Sends one delivery; what came of it goes to the recorder.
    async fn deliver(&self, endpoint: EndpointRow, delivery: Claimed) -> Sent {
        let answer = match &delivery.payload {
            Some(payload) => {
                let body = serde_json::to_vec(payload).expect("json value serialises");
                let secrets = endpoint.signing_secrets(Utc::now());
                self.sender
                    .send(
                        &endpoint.url,
                        &delivery.event_id.to_string(),
                        body,
                        &secrets,
                    )
                    .await
            }
            None => Answer {
                status: None,
                latency: Duration::ZERO,
                response: String::new(),
                error: Some("the event is no longer stored (outbox.retention)".into()),
                retry_after: None,
            },
        };
        Sent {
            endpoint,
            delivery,
            answer,
        }
    }

    /// Records sent deliveries in batches (one transaction for up to [`RECORD_BATCH`]) until
    /// every sender is gone. A batch that cannot be recorded leaves its deliveries to their
    /// leases: they are sent again.
    async fn record_all(self: Arc<Self>, mut sent: mpsc::Receiver<Sent>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while sent.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            if let Err(error) = self.record(&batch).await {
                self.metrics.transient("webhooks");
                tracing::warn!(%error, deliveries = batch.len(), "recording webhook attempts \
                    failed; the deliveries are sent again after their lease");
            }
            batch.clear();
        }
    }

    /// Logs each attempt, moves each delivery on, and for the failed ones updates their
    /// endpoint (disabled after a 410 or after failing for too long) and publishes what is due.
    async fn record(&self, batch: &[Sent]) -> sqlx::Result<()> {
        let w = &self.settings.webhooks;
        let now = Utc::now();
        let afters: Vec<After> = batch
            .iter()
            .map(|sent| {
                let attempts = (sent.delivery.attempts + 1) as u32;
                if sent.answer.delivered() {
                    After::Delivered
                } else if sent.delivery.payload.is_none() {
                    After::Failed
                } else {
                    let jitter = rand_unit() * 2.0 - 1.0;
                    match retry_delay(&w.retry_schedule, attempts, sent.answer.retry_after, jitter)
                    {
                        Some(delay) => After::RetryAt(
                            now + chrono::Duration::from_std(delay).unwrap_or_default(),
                        ),
                        None => After::Failed,
                    }
                }
            })
            .collect();
        let settled: Vec<db::Settled> = batch
            .iter()
            .zip(&afters)
            .map(|(sent, after)| db::Settled {
                id: sent.delivery.id,
                attempts_before: sent.delivery.attempts,
                after: *after,
                attempt: Attempt {
                    status: sent.answer.status,
                    latency_ms: sent.answer.latency.as_millis().min(i32::MAX as u128) as i32,
                    response: sent.answer.response.clone(),
                    error: sent.answer.error.clone(),
                },
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let moved = db::settle_many(&mut tx, &settled).await?;
        let mut answered: Vec<Uuid> = Vec::new();
        let mut events = NewOutbox::default();
        let mut disabled_now: Vec<Uuid> = Vec::new();
        for (sent, after) in batch.iter().zip(&afters) {
            if !moved.contains(&sent.delivery.id) {
                continue;
            }
            let endpoint = &sent.endpoint;
            if *after == After::Delivered {
                answered.push(endpoint.id);
                continue;
            }
            let gone = sent.answer.status == Some(StatusCode::GONE.as_u16());
            let failing_since = db::endpoint_failed(&mut tx, endpoint.id).await?;
            let too_long =
                failing_since.is_some_and(|since| failing_for(since, now) >= w.disable_after);
            if (gone || too_long) && !disabled_now.contains(&endpoint.id) {
                let reason = if gone { "gone" } else { "failing" };
                if let Some(disabled) = db::disable(&mut tx, endpoint.id, reason).await? {
                    disabled_now.push(endpoint.id);
                    tracing::warn!(webhook = %endpoint.id, reason, "webhook endpoint disabled");
                    events.event(OutboundEvent::new(
                        WebhookEndpointDisabled {
                            user_pool_id: &disabled.user_pool_id,
                            webhook_id: disabled.id,
                            last_status: sent.answer.status,
                        },
                        now,
                    ));
                }
            }
            if *after == After::Failed {
                events.event(OutboundEvent::new(
                    WebhookDeliveryFailed {
                        user_pool_id: &endpoint.user_pool_id,
                        webhook_id: endpoint.id,
                        event_id: sent.delivery.event_id,
                        last_status: sent.answer.status,
                    },
                    now,
                ));
            }
        }
        answered.sort();
        answered.dedup();
        if !answered.is_empty() {
            db::endpoints_answered(&mut tx, &answered).await?;
        }
        if events.is_empty() {
            // Nothing for the relay: no need to wait for its commit order.
            tx.commit().await?;
        } else {
            let rows = outbox::insert_many(&mut tx, self.origin, events).await?;
            self.relay.commit(tx, rows).await?;
        }
        for (sent, after) in batch.iter().zip(&afters) {
            if !moved.contains(&sent.delivery.id) {
                continue;
            }
            let result = match after {
                After::Delivered => "delivered",
                After::RetryAt(_) => "retrying",
                After::Failed => "failed",
            };
            self.metrics
                .webhook_deliveries
                .get_or_create(&WebhookLabel {
                    webhook: sent.endpoint.id.to_string(),
                    result,
                })
                .inc();
            self.metrics
                .webhook_latency_seconds
                .observe(sent.answer.latency.as_secs_f64());
        }
        Ok(())
    }

    async fn report_backlog(&self) {
        let Ok(mut conn) = self.pool.acquire().await else {
            return;
        };
        if let Ok(rows) = db::backlog(&mut conn).await {
            let gauges = &self.metrics;
            gauges.webhook_undelivered.clear();
            gauges.webhook_oldest_undelivered_seconds.clear();
            for (id, undelivered, oldest) in rows {
                let label = crate::metrics::WebhookIdLabel {
                    webhook: id.to_string(),
                };
                gauges
                    .webhook_undelivered
                    .get_or_create(&label)
                    .set(undelivered);
                gauges
                    .webhook_oldest_undelivered_seconds
                    .get_or_create(&label)
                    .set(oldest as i64);
            }
        }
    }
}

fn failing_for(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// A number in [0, 1) for the retries' jitter.
fn rand_unit() -> f64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The body of a test ping: a CloudEvent of type `webhook.ping`, published nowhere else.
pub fn ping_body(endpoint: &EndpointRow) -> (Uuid, Vec<u8>) {
    let id = Uuid::now_v7();
    let body = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": crate::domain::events::SOURCE,
        "type": "webhook.ping",
        "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "subject": endpoint.id,
        "datacontenttype": "application/json",
        "data": {"user_pool_id": endpoint.user_pool_id, "webhook_id": endpoint.id},
    });
    (id, serde_json::to_vec(&body).expect("serialises"))
}
