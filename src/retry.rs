//! The one backoff every retry loop uses (reconnecting to the broker, retrying a transaction,
//! re-publishing): jittered exponential delays from 100 ms up to a cap, without a limit on the
//! number of tries; each loop decides itself when to give up.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

pub fn builder(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// Successive delays, up to `max`.
pub fn delays(max: Duration) -> impl Iterator<Item = Duration> {
    builder(max).build()
}
