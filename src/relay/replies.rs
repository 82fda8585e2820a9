//! Replies: published on a connection of their own (see `amqp::replies`) by a task of their own,
//! and marked by another beside it.

use tokio::sync::{mpsc, oneshot};

use super::{
    REPLY_ROUNDS,
    confirms::{Confirmer, RowFate, settled},
};
use crate::{
    amqp::replies::{OutgoingReply, ReplyFate, ReplyPublisher},
    db::outbox::{self, OutboxRow, Settled},
    settings::Settings,
};

/// What the relay passes to the reply task.
pub(super) enum ReplyRound {
    /// The reply rows of a handed-off round, which the task publishes and then has marked (their
    /// marking must never wait for the events').
    HandedOff(Vec<OutboxRow>),
    /// The reply rows of a claimed round, which the claiming transaction holds locked and marks:
    /// the task only publishes them and sends the outcomes back, one per reply, in order.
    Claimed(Vec<OutboxRow>, oneshot::Sender<Vec<ReplyFate>>),
    /// Answered once every reply handed off before has been published and marked.
    Flush(oneshot::Sender<()>),
}

/// The task publishing replies on a connection of its own (see `amqp::replies`), so that a
/// reply address the broker chokes on costs neither the events' connection nor their pace.
#[derive(Clone)]
pub(super) struct Replies(mpsc::Sender<ReplyRound>);

impl Replies {
    /// Starts the task, and beside it the one marking what it published with `settler`: the
    /// next round is published while the last one is marked, and rounds published meanwhile are
    /// marked together. Both end when every sender is gone.
    pub(super) fn start(settings: &Settings, settler: Confirmer) -> Self {
        let (sender, mut rounds) = mpsc::channel::<ReplyRound>(REPLY_ROUNDS);
        let mut publisher = ReplyPublisher::new(
            settings.amqp.url.clone(),
            "relay replies",
            settler.metrics.clone(),
        );
        let marks = ReplyMarks::start(settler);
        tokio::spawn(async move {
            while let Some(round) = rounds.recv().await {
                match round {
                    ReplyRound::HandedOff(rows) => {
                        let outcomes = publisher.publish(&outgoing(&rows)).await;
                        let fates: Vec<RowFate> = reply_fates(&rows, &outcomes)
                            .into_iter()
                            .flatten()
                            .collect();
                        marks.send(settled(&rows, &fates), None).await;
                    }
                    ReplyRound::Claimed(rows, back) => {
                        let _ = back.send(publisher.publish(&outgoing(&rows)).await);
                    }
                    ReplyRound::Flush(done) => marks.send(Settled::default(), Some(done)).await,
                }
            }
            publisher.close().await;
        });
        Self(sender)
    }

    /// Waits for room (see `REPLY_ROUNDS`).
    pub(super) async fn send(&self, round: ReplyRound) {
        if self.0.send(round).await.is_err() {
            // Its rows would be left unpublished and unmarked: stop the process instead (its
            // supervisor restarts it, and the rows are adopted).
            panic!("the relay's reply task stopped");
        }
    }

    /// Publishes and marks the replies among handed-off `rows`, in a task of its own.
    pub(super) async fn hand_off(&self, rows: &[OutboxRow]) {
        let replies: Vec<OutboxRow> = reply_rows(rows).cloned().collect();
        if !replies.is_empty() {
            self.send(ReplyRound::HandedOff(replies)).await;
        }
    }

    /// Publishes the replies among claimed `rows`; one outcome per reply row, in order.
    pub(super) async fn publish(&self, rows: &[OutboxRow]) -> Vec<ReplyFate> {
        let replies: Vec<OutboxRow> = reply_rows(rows).cloned().collect();
        if replies.is_empty() {
            return Vec::new();
        }
        let (back, outcomes) = oneshot::channel();
        self.send(ReplyRound::Claimed(replies, back)).await;
        outcomes.await.expect("the relay's reply task answers")
    }

    /// Waits until every reply handed off before has been published and marked.
    pub(super) async fn flush(&self) {
        let (done, marked) = oneshot::channel();
        self.send(ReplyRound::Flush(done)).await;
        let _ = marked.await;
    }
}

/// The replies among `rows`, as published.
pub(super) fn outgoing(rows: &[OutboxRow]) -> Vec<OutgoingReply> {
    reply_rows(rows)
        .map(|row| OutgoingReply {
            to: row.routing_key.clone(),
            correlation_id: row.correlation_id.clone(),
            message_id: row.message_id.to_string(),
            body: serde_json::to_vec(&row.payload).expect("json value serialises"),
        })
        .collect()
}

/// The task marking published replies, in the order they were published.
pub(super) struct ReplyMarks(mpsc::Sender<(Settled, Option<oneshot::Sender<()>>)>);

impl ReplyMarks {
    /// Starts the task; it ends when the sender is gone.
    pub(super) fn start(mut settler: Confirmer) -> Self {
        let (sender, mut marks) =
            mpsc::channel::<(Settled, Option<oneshot::Sender<()>>)>(REPLY_ROUNDS);
        tokio::spawn(async move {
            while let Some((mut settled, done)) = marks.recv().await {
                let mut waiting: Vec<_> = done.into_iter().collect();
                while let Ok((more, done)) = marks.try_recv() {
                    settled.add(more);
                    waiting.extend(done);
                }
                settler.mark(&settled).await;
                settler.account(&settled);
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        Self(sender)
    }

    /// Waits for room (see `REPLY_ROUNDS`).
    pub(super) async fn send(&self, settled: Settled, done: Option<oneshot::Sender<()>>) {
        if self.0.send((settled, done)).await.is_err() {
            panic!("the relay's reply marking task stopped");
        }
    }
}

pub(super) fn reply_rows(rows: &[OutboxRow]) -> impl Iterator<Item = &OutboxRow> {
    rows.iter()
        .filter(|row| row.kind == outbox::OutboxKind::Reply)
}

/// What became of the replies among `rows`, given one outcome per reply: delivered, or given up
/// after breaking a connection on its own, they go; unsent (no connection for replies), they are
/// set aside and tried again. One fate per row of `rows` (events are left as they are).
pub(super) fn reply_fates(rows: &[OutboxRow], outcomes: &[ReplyFate]) -> Vec<Option<RowFate>> {
    let mut outcomes = outcomes.iter();
    rows.iter()
        .map(|row| {
            if row.kind != outbox::OutboxKind::Reply {
                return None;
            }
            Some(match outcomes.next() {
                Some(ReplyFate::Delivered | ReplyFate::Dropped) => RowFate::Replied,
                Some(ReplyFate::Unsent) | None => RowFate::Held,
            })
        })
        .collect()
}
