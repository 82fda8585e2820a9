//! The login worker's processor: the pipeline decides batches of `login.completed`.

use crate::{
    domain::{
        decision::Outcome,
        events::Reply,
        login::{self, LoginEvent, Rejection},
    },
    health::Consumer,
    metrics::{Metrics, OutcomeLabel},
    pipeline::{Inbound, Pipeline, Verdict},
    settings::{AmqpSettings, Settings},
};

use super::Processor;

impl Processor for Pipeline {
    type Message = LoginEvent;
    type Reply = Reply;
    const TRUSTED_ONLY: bool = false;
    const CONSUMER: Consumer = Consumer::Logins;

    fn queue(amqp: &AmqpSettings) -> &str {
        &amqp.work_queue
    }

    fn prefetch(settings: &Settings) -> u16 {
        settings.amqp.prefetch
    }

    fn batch_size(settings: &Settings) -> usize {
        settings.worker.batch_size
    }

    fn concurrent_batches(settings: &Settings) -> usize {
        settings.worker.concurrent_batches
    }

    fn decode(body: &[u8], max_bytes: usize) -> Result<LoginEvent, Rejection> {
        login::decode(body, max_bytes)
    }

    fn message_id(message: &LoginEvent) -> &str {
        &message.id
    }

    fn origin(&self) -> uuid::Uuid {
        Pipeline::origin(self)
    }

    async fn process(&self, batch: &[Inbound]) -> sqlx::Result<Vec<Verdict>> {
        Pipeline::process(self, batch).await
    }

    fn record(metrics: &Metrics, event: &LoginEvent, reply: &Reply, duplicate: bool) {
        metrics
            .decisions
            .get_or_create(&OutcomeLabel {
                outcome: reply.outcome.as_str(),
            })
            .inc();
        if duplicate {
            metrics.duplicates.inc();
        }
        tracing::info!(
            event_id = event.id.as_str(),
            outcome = reply.outcome.as_str(),
            user_id = ?reply.user_id,
            binding_id = ?reply.binding_id,
            duplicate,
            "decided"
        );
    }

    fn error_reply(metrics: &Metrics, id: Option<String>, rejection: &Rejection) -> Reply {
        metrics
            .decisions
            .get_or_create(&OutcomeLabel {
                outcome: Outcome::Error.as_str(),
            })
            .inc();
        Reply {
            event_id: id,
            outcome: Outcome::Error,
            user_id: None,
            binding_id: None,
            reason: Some(rejection.reason()),
        }
    }
}
