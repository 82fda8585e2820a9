//! Publishing at a fixed rate and timing what comes back: shared by the latency benchmark and its
//! raw broker baseline.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel, Consumer, message::Delivery, options::BasicPublishOptions,
    types::ShortString,
};
use tokio::task::JoinHandle;

/// When each message of a run was sent; messages before `warmup` do not count.
pub struct Clock {
    epoch: Instant,
    sent: Vec<AtomicU64>,
    warmup: usize,
}

impl Clock {
    pub fn new(messages: usize, warmup: usize) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            sent: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            warmup,
        })
    }

    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn mark(&self, index: usize) {
        self.sent[index].store(self.now(), Ordering::Release);
    }

    /// Milliseconds since message `index` was sent, if it was and counts.
    fn elapsed_ms(&self, index: usize) -> Option<f64> {
        let at = self
            .sent
            .get(index)
            .filter(|_| index >= self.warmup)?
            .load(Ordering::Acquire);
        (at > 0).then(|| self.now().saturating_sub(at) as f64 / 1e6)
    }

    /// Messages that count.
    pub fn measured(&self) -> usize {
        self.sent.len() - self.warmup
    }
}

/// The message a delivery answers, by its correlation id.
pub fn by_correlation_id(delivery: &Delivery) -> Option<usize> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .and_then(|c| c.as_str().parse().ok())
}

/// Latencies by message: (message index, milliseconds).
pub type Samples = Arc<Mutex<Vec<(usize, f64)>>>;

/// Records, for every delivery on `consumer` that names a message, the time since it was sent.
pub fn collect<F>(
    mut consumer: Consumer,
    clock: Arc<Clock>,
    message: F,
) -> (Samples, JoinHandle<()>)
where
    F: Fn(&Delivery) -> Option<usize> + Send + 'static,
{
    let samples = Arc::new(Mutex::new(Vec::with_capacity(clock.measured())));
    let task = tokio::spawn({
        let samples = samples.clone();
        async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Some(index) = message(&delivery)
                    && let Some(ms) = clock.elapsed_ms(index)
                {
                    samples.lock().expect("not poisoned").push((index, ms));
                }
            }
        }
    });
    (samples, task)
}

/// Publishes `bodies` at `rate` per second, each asking for a reply on `reply_to` with its index
/// as correlation id; returns the seconds it took. Confirms are collected at the end: waiting
/// for each would pace the publisher.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
    rate: u32,
    reply_to: &ShortString,
    clock: &Clock,
) -> lapin::Result<f64> {
    let start = Instant::now();
    let mut next = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    while next < bodies.len() {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(bodies.len());
        while next < due {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to(reply_to.clone())
                .with_correlation_id(next.to_string().into());
            clock.mark(next);
            drop(
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &bodies[next],
                        properties,
                    )
                    .await?,
            );
            next += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    channel.wait_for_confirms().await?;
    Ok(seconds)
}

/// Waits until `count` samples arrived, or `limit`.
pub async fn wait_for(samples: &Mutex<Vec<(usize, f64)>>, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while samples.lock().expect("not poisoned").len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latencies, in milliseconds.
pub fn take(samples: &Mutex<Vec<(usize, f64)>>) -> Vec<f64> {
    samples
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(_, ms)| *ms)
        .collect()
}

/// The latencies with the index of their message.
pub fn take_indexed(samples: &Mutex<Vec<(usize, f64)>>) -> Vec<(usize, f64)> {
    samples.lock().expect("not poisoned").clone()
}
