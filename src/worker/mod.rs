//! The workers: one consumes `login.completed` and decides each batch through the pipeline
//! (`logins`), one consumes the platform's commands (`commands`). What differs between them is a
//! [`Processor`] and a [`Lane`]; a delivery's life is the same for both, and reads top to bottom
//! through these files:
//!
//! 1. **taken** (`batches`): the consumer's deliveries are gathered into batches, up to
//!    `concurrent_batches` decided at once and settled in the order they were taken;
//! 2. **received** (`reception`): the publisher is checked, the body decoded into a
//!    [`Message`], its reply address checked;
//! 3. **decided and committed** (`deciding`): the processor decides the batch in one
//!    transaction, retried while the system is at fault, split when a message is; each message
//!    ends with a [`Fate`];
//! 4. **settled** (`amqp::settle`): acknowledged, dead-lettered, sent to wait or handed back, as
//!    its fate says.
//!
//! Each worker owns its reconnect loop: a lost connection or an ended consumer means reconnect,
//! re-declare, re-consume.

mod batches;
mod commands;
mod deciding;
mod logins;
mod reception;

pub use commands::Commands;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{
        CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect,
        settle::{Settler, WaitQueue},
        topology,
    },
    domain::message::{Fate, Inbound, Message},
    health::{Consumer, Health},
    metrics::Metrics,
    settings::Settings,
};

/// What a worker does with its messages: read one, decide a batch of them in the database, and
/// count and answer them. The worker around it owns the broker side.
pub trait Processor: Send + Sync + 'static {
    /// The kind of message decided (how it is read, named and answered when dead-lettered).
    type Message: Inbound;
    /// Decides a batch in the database, replies included; one fate per message, in order.
    /// Counts and logs what it decided.
    fn process(
        &self,
        batch: &[Message<Self::Message>],
        metrics: &Metrics,
    ) -> impl Future<Output = sqlx::Result<Vec<Fate<Reply<Self>>>>> + Send;
}

/// What a processor's messages are answered.
pub type Reply<P> = <<P as Processor>::Message as Inbound>::Reply;

/// Which queue a worker consumes, and how much of it at once.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Which consumer this is (readiness, faults, logs).
    pub consumer: Consumer,
    pub queue: String,
    /// Unacknowledged deliveries the broker may push.
    pub prefetch: u16,
    /// Most messages decided per transaction.
    pub batch_size: usize,
    /// Batches decided at once.
    pub concurrent_batches: usize,
    /// Whether messages are heard only from `amqp.trusted_publishers`, so that none is heard
    /// while the list is empty.
    pub trusted_only: bool,
    /// The consumer tag, naming the process.
    pub tag: String,
}

/// Unacknowledged commands the broker may push: commands are few next to logins, and each is
/// its own transaction.
const COMMANDS_PREFETCH: u16 = 32;

impl Lane {
    /// The work queue's: batches of logins, side by side.
    pub fn logins(settings: &Settings, origin: uuid::Uuid) -> Self {
        Self {
            consumer: Consumer::Logins,
            queue: settings.amqp.work_queue.clone(),
            prefetch: settings.amqp.prefetch,
            batch_size: settings.worker.batch_size,
            concurrent_batches: settings.worker.concurrent_batches.max(1),
            trusted_only: false,
            tag: format!("identity-sync-{origin}"),
        }
    }

    /// The commands queue's: one command at a time, each answered before the next is taken. A
    /// command can link any candidate (or, with proof `admin`, any account): only the platform's
    /// own broker users may send one.
    pub fn commands(settings: &Settings, origin: uuid::Uuid) -> Self {
        Self {
            consumer: Consumer::Commands,
            queue: settings.amqp.commands_queue.clone(),
            prefetch: COMMANDS_PREFETCH,
            batch_size: 1,
            concurrent_batches: 1,
            trusted_only: true,
            tag: format!("identity-sync-commands-{origin}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("stopping while the database is unavailable")]
    Stopped,
}

/// Consumes one [`Lane`] with a [`Processor`].
pub struct Worker<P> {
    settings: Arc<Settings>,
    lane: Lane,
    processor: P,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
}

impl<P: Processor> Worker<P> {
    pub fn new(
        settings: Arc<Settings>,
        lane: Lane,
        processor: P,
        metrics: Metrics,
        health: Health,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            settings,
            lane,
            processor,
            metrics,
            health,
            shutdown,
        }
    }

    /// Runs until the shutdown token is cancelled, reconnecting with backoff on any broker failure.
    pub async fn run(self) {
        Arc::new(self).supervise().await
    }

    fn name(&self) -> &'static str {
        self.lane.consumer.as_str()
    }

    async fn supervise(self: Arc<Self>) {
        let max_delay = self.settings.worker.max_retry_delay;
        let mut backoff = crate::retry::delays(max_delay);
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self.session().await;
            self.health.set_consumer(self.lane.consumer, false);
            match result {
                Ok(()) | Err(SessionError::Stopped) => break,
                Err(error) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = crate::retry::delays(max_delay);
                    }
                    self.metrics.transient("consumer");
                    let delay = backoff.next().unwrap_or(max_delay);
                    tracing::warn!(
                        %error,
                        consumer = self.name(),
                        retry_in = ?delay,
                        "consumer session ended; reconnecting"
                    );
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(consumer = self.name(), "consumer stopped");
    }

    async fn session(self: &Arc<Self>) -> Result<(), SessionError> {
        let amqp = &self.settings.amqp;
        let connection = connect(&amqp.url, self.name()).await?;
        let (channel, mut consumer) = bounded(
            OPERATION_TIMEOUT,
            "declaring the topology and consuming",
            self.subscribe(&connection),
        )
        .await?;
        self.health.set_consumer(self.lane.consumer, true);
        tracing::info!(
            queue = self.lane.queue.as_str(),
            prefetch = self.lane.prefetch,
            "consuming"
        );
        let wait = WaitQueue {
            queue: amqp.wait_queue.clone(),
            delay: self.settings.worker.wait_delay,
            own_user: amqp.url.user(),
        };
        let mut settler = Settler::new(
            &connection,
            &amqp.url,
            &amqp.dead_letter_exchange,
            wait,
            &self.metrics,
        );
        let result = self.consume(&mut consumer, &mut settler).await;
        drop(settler);

        // Deliveries received but not handled go back to the queue when the channel closes.
        let close = async {
            let tag = self.lane.tag.as_str();
            let _ = channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await;
            connection
                .close(200, "identity-sync worker stopping".into())
                .await
        };
        let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        result
    }

    /// Declares the topology and starts consuming the lane's queue.
    async fn subscribe(
        &self,
        connection: &lapin::Connection,
    ) -> lapin::Result<(lapin::Channel, lapin::Consumer)> {
        let amqp = &self.settings.amqp;
        let channel = connection.create_channel().await?;
        if let Err(error) = topology::declare(&channel, amqp).await {
            if error.to_string().contains("PRECONDITION_FAILED") {
                tracing::error!(
                    %error,
                    "the broker holds a queue or exchange of the same name with other \
                     arguments (amqp.delivery_limit changed?): delete or rename it, or \
                     restore the setting"
                );
            }
            return Err(error);
        }
        channel
            .basic_qos(self.lane.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.lane.queue.as_str().into(),
                self.lane.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }
}
