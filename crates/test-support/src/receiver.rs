//! A webhook receiver on a free local port: it verifies each request with the Standard Webhooks
//! Rust library (`standardwebhooks`, not identity-sync's own code), records it, and answers as
//! the test's plan says (a status, after a delay, with a `Retry-After`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Bytes,
    pub event: Value,
    /// For each secret the receiver knows, whether the library verified the request with it.
    pub verified: Vec<bool>,
    /// How many times this `webhook-id` had come before (0 the first time).
    pub seen_before: u32,
    /// The status it was answered.
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn event_type(&self) -> &str {
        self.event["type"].as_str().unwrap_or_default()
    }

    pub fn sequence(&self) -> &str {
        self.event["sequence"].as_str().unwrap_or_default()
    }
}

/// What to answer a request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
    /// A `Location` header (a redirect).
    pub location: Option<String>,
    /// A body of this many bytes.
    pub body_bytes: usize,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            retry_after: None,
            location: None,
            body_bytes: 0,
        }
    }
}

type Plan = Box<dyn Fn(&Value, u32) -> Answer + Send>;

struct Shared {
    secrets: Mutex<Vec<String>>,
    received: Mutex<Vec<Received>>,
    seen: Mutex<HashMap<String, u32>>,
    plan: Mutex<Plan>,
    in_flight: Mutex<usize>,
    most_in_flight: Mutex<usize>,
}

/// The receiver; it stops when dropped.
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers 204 to everything until told otherwise.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            secrets: Mutex::default(),
            received: Mutex::default(),
            seen: Mutex::default(),
            plan: Mutex::new(Box::new(|_, _| Answer::status(204))),
            in_flight: Mutex::default(),
            most_in_flight: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// The secrets to verify with (the endpoint's, as creation and rotation showed them).
    pub fn knows(&self, secrets: &[&str]) {
        *self.shared.secrets.lock().unwrap() = secrets.iter().map(|s| s.to_string()).collect();
    }

    /// How to answer from now on: given the event and how many times its id came before.
    pub fn answer(&self, plan: impl Fn(&Value, u32) -> Answer + Send + 'static) {
        *self.shared.plan.lock().unwrap() = Box::new(plan);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The most requests it was answering at once.
    pub fn most_in_flight(&self) -> usize {
        *self.shared.most_in_flight.lock().unwrap()
    }

    /// Waits until `done` holds of what was received, for up to `limit`.
    pub async fn until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            if started.elapsed() > limit {
                panic!(
                    "{what}: not received within {limit:?}; got {:?}",
                    got.iter()
                        .map(|r| (r.event_type().to_owned(), r.id.clone(), r.answered))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secrets = shared.secrets.lock().unwrap().clone();
    let verified = secrets
        .iter()
        .map(|secret| {
            standardwebhooks::Webhook::new(secret)
                .map(|hook| hook.verify(&body, &headers).is_ok())
                .unwrap_or(false)
        })
        .collect();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = header("webhook-id");
    let seen_before = {
        let mut seen = shared.seen.lock().unwrap();
        let n = seen.entry(id.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let answer = (shared.plan.lock().unwrap())(&event, seen_before);
    {
        let mut in_flight = shared.in_flight.lock().unwrap();
        *in_flight += 1;
        let mut most = shared.most_in_flight.lock().unwrap();
        *most = (*most).max(*in_flight);
    }
    shared.received.lock().unwrap().push(Received {
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body,
        event,
        verified,
        seen_before,
        answered: answer.status,
        at: Instant::now(),
    });
    tokio::time::sleep(answer.delay).await;
    *shared.in_flight.lock().unwrap() -= 1;
    let status = StatusCode::from_u16(answer.status).unwrap();
    let mut response = (status, "x".repeat(answer.body_bytes)).into_response();
    if let Some(location) = &answer.location {
        response
            .headers_mut()
            .insert("location", location.parse().unwrap());
    }
    if let Some(seconds) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}
