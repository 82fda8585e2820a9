//! The login worker's processor: the pipeline decides batches of `login.completed`.

use crate::{
    domain::{
        events::Reply,
        login::LoginEvent,
        message::{Fate, Message},
    },
    metrics::{Metrics, OutcomeLabel},
    pipeline::Pipeline,
};

use super::Processor;

impl Processor for Pipeline {
    type Message = LoginEvent;

    async fn process(&self, batch: &[Message], metrics: &Metrics) -> sqlx::Result<Vec<Fate>> {
        let fates = Pipeline::process(self, batch).await?;
        for (message, fate) in batch.iter().zip(&fates) {
            if let Fate::Decided { reply, duplicate } = fate {
                record(metrics, &message.event, reply, *duplicate);
            }
        }
        Ok(fates)
    }
}

/// Counts and logs a decided login.
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
