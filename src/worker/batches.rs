//! Taking deliveries into batches: while a batch is decided, the deliveries that arrive fill the
//! next one, and up to `concurrent_batches` batches are decided at once, each in a task and a
//! transaction of its own (while one commits, the next is read and decided: a batch's round
//! trips and its commit's flush would otherwise leave the machine idle). They are settled with
//! the broker in the order they were taken, so that a multiple-ack never covers a delivery of a
//! batch still being decided. Conflicting logins of two batches serialise on their advisory
//! locks exactly as those of two worker processes do.
//!
//! The next batch starts when it is full (a backlog: batches side by side), when no batch is left
//! in flight, or once the last batch started has run for `FILL_AT_MOST` (one held up by a lock
//! or a retry holds up nothing else), but never beside a batch waiting out a fault of the
//! system. A trickle of logins is then decided in batches of what arrived meanwhile rather than
//! in many batches of one or two, each paying the round trips of a whole transaction.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_lite::{StreamExt, future::poll_once};
use lapin::message::Delivery;
use tokio::task::JoinHandle;

use super::{Processor, SessionError, Worker, deciding::Decided};
use crate::{amqp::settle::Settler, health::Consumer};

/// How long the next batch fills while the last one started is still in flight, at most.
const FILL_AT_MOST: Duration = Duration::from_millis(10);
/// How often a consumer held back by a fault looks whether it cleared.
const FAULT_RECHECK: Duration = Duration::from_millis(100);

type InFlight = VecDeque<JoinHandle<Result<Decided, SessionError>>>;

/// The batches of one consumer session: those in flight, oldest first, and the next, filling.
struct Batches {
    in_flight: InFlight,
    next: Vec<Delivery>,
    /// When the last batch started.
    last_started: Instant,
    size: usize,
    depth: usize,
}

impl Batches {
    fn full(&self) -> bool {
        self.next.len() >= self.size
    }
}

impl<P: Processor> Worker<P> {
    /// Handles deliveries in batches until a stop is requested or the session fails. Batches
    /// already taken are finished and settled also when stopping: their decisions may be
    /// committed, and a graceful stop acknowledges what it decided. Deliveries of the batch
    /// still filling were not decided: they go back to the queue with the channel.
    pub(super) async fn consume(
        self: &Arc<Self>,
        consumer: &mut lapin::Consumer,
        settler: &mut Settler<'_>,
    ) -> Result<(), SessionError> {
        let mut batches = Batches {
            in_flight: VecDeque::new(),
            next: Vec::with_capacity(self.lane.batch_size),
            last_started: Instant::now(),
            size: self.lane.batch_size,
            depth: self.lane.concurrent_batches,
        };
        let mut result = self.take_and_decide(consumer, settler, &mut batches).await;
        while let Some(head) = batches.in_flight.pop_front() {
            let settled = self.settle(settler, head.await).await;
            if result.is_ok() {
                result = settled;
            }
        }
        result
    }

    async fn take_and_decide(
        self: &Arc<Self>,
        consumer: &mut lapin::Consumer,
        settler: &mut Settler<'_>,
        batches: &mut Batches,
    ) -> Result<(), SessionError> {
        loop {
            // The oldest batch first: its acks must go before any later batch's.
            if batches.in_flight.len() >= batches.depth {
                let head = batches.in_flight.pop_front().expect("a batch in flight");
                self.settle(settler, head.await).await?;
                continue;
            }
            // A batch waiting out a fault of the system holds up every other: no new batch
            // starts beside it (nothing more is taken than the prefetch already holds).
            let gated = !batches.in_flight.is_empty() && self.health.faulted(self.name());
            let long_enough = batches.last_started.elapsed() >= FILL_AT_MOST;
            if !gated
                && !batches.next.is_empty()
                && (batches.full() || batches.in_flight.is_empty() || long_enough)
            {
                self.start(batches);
                continue;
            }
            if !self.wait_for_outbox().await {
                return Ok(());
            }
            let delivery = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                done = async { batches.in_flight.front_mut().expect("a batch in flight").await },
                    if !batches.in_flight.is_empty() =>
                {
                    batches.in_flight.pop_front();
                    self.settle(settler, done).await?;
                    continue;
                }
                _ = tokio::time::sleep_until((batches.last_started + FILL_AT_MOST).into()),
                    if !batches.next.is_empty() && !gated => continue,
                _ = tokio::time::sleep(FAULT_RECHECK), if gated => continue,
                delivery = consumer.next(), if !batches.full() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => batches.next.push(delivery),
                Some(Err(error)) => return Err(error.into()),
                None => return Err(SessionError::ConsumerEnded),
            }
            take_what_arrived(consumer, batches).await?;
        }
    }

    /// Starts deciding the next batch, in a task of its own.
    fn start(self: &Arc<Self>, batches: &mut Batches) {
        batches.last_started = Instant::now();
        let batch = std::mem::replace(&mut batches.next, Vec::with_capacity(batches.size));
        let worker = self.clone();
        batches.in_flight.push_back(tokio::spawn(async move {
            worker.decide_deliveries(batch).await
        }));
    }

    /// Settles a decided batch with the broker.
    async fn settle(
        &self,
        settler: &mut Settler<'_>,
        decided: Result<Result<Decided, SessionError>, tokio::task::JoinError>,
    ) -> Result<(), SessionError> {
        let decided = match decided {
            Ok(decided) => decided?,
            // Panics of deciding are caught inside (see `deciding`); one outside it is a bug of
            // this loop's own: stop the process (its supervisor restarts it).
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => return Err(SessionError::Stopped),
        };
        settler
            .apply(&decided.deliveries, decided.settlings)
            .await?;
        if self.lane.consumer == Consumer::Logins {
            let elapsed = decided.received.elapsed().as_secs_f64();
            for _ in 0..decided.deliveries.len() {
                self.metrics.processing_seconds.observe(elapsed);
            }
        }
        Ok(())
    }

    /// Holds off while the outbox backlog is above `outbox.max_backlog` (a stalled downstream):
    /// deliveries already prefetched wait unacknowledged, nothing more is taken. `false` when a
    /// stop was requested meanwhile.
    async fn wait_for_outbox(&self) -> bool {
        let max = self.settings.outbox.max_backlog;
        if self.health.outbox_backlog() <= max {
            return true;
        }
        tracing::warn!(
            backlog = self.health.outbox_backlog(),
            max,
            "outbox backlog too large; consumption paused"
        );
        self.metrics.throttled.inc();
        while self.health.outbox_backlog() > max {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!(
            backlog = self.health.outbox_backlog(),
            "outbox caught up; consumption resumed"
        );
        true
    }
}

/// Takes what has already arrived, up to a batch; never waits for more.
async fn take_what_arrived(
    consumer: &mut lapin::Consumer,
    batches: &mut Batches,
) -> Result<(), SessionError> {
    while !batches.full() {
        match poll_once(consumer.next()).await {
            Some(Some(Ok(delivery))) => batches.next.push(delivery),
            Some(Some(Err(error))) => return Err(error.into()),
            _ => break,
        }
    }
    Ok(())
}
