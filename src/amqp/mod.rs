//! RabbitMQ adapter (lapin 4): connecting, declaring the topology, and the consumer that feeds
//! login events to the pipeline.

pub mod binary;
pub mod nodes;
pub mod properties;
pub(crate) mod settle;
pub mod topology;

use std::{io, time::Duration};

use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use secrecy::ExposeSecret;

/// The longest a single broker operation (connecting, declaring, acknowledging, publishing) may
/// take before the session is given up and opened again.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Closing a connection that may already be dead is not worth waiting long for.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds a broker operation. lapin can leave an operation pending for ever when the connection
/// drops under it (amqp-rs/lapin#409, seen here with a publish during a broker restart); the
/// timeout turns that into an error, which ends the session, and the session reconnects.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    operation: impl Future<Output = lapin::Result<T>>,
) -> lapin::Result<T> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} did not complete within {limit:?}"),
        )
        .into()),
    }
}

/// Connecting to one node of several gives up sooner, so that the next is tried while the
/// others still run.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection per role (consumer, relay): a publisher throttled by the broker's flow control
/// must not hold back the consumer's acks. With several nodes, each is tried in turn (see
/// [`nodes::BrokerUrls::turn`]); the error is the last node's.
pub async fn connect(urls: &nodes::BrokerUrls, role: &str) -> lapin::Result<Connection> {
    let limit = if urls.len() > 1 {
        NODE_CONNECT_TIMEOUT
    } else {
        OPERATION_TIMEOUT
    };
    let mut last = None;
    for (index, url) in urls.turn(role) {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("identity-sync {role} (pid {})", std::process::id()).into(),
        );
        let attempt = bounded(
            limit,
            "connecting to the broker",
            Connection::connect(url.expose_secret(), properties),
        )
        .await;
        match attempt {
            Ok(connection) => {
                urls.connected(role, index);
                if urls.len() > 1 {
                    tracing::info!(role, node = %urls.address(index), "connected to the broker");
                }
                return Ok(connection);
            }
            Err(error) => {
                if urls.len() > 1 {
                    tracing::warn!(role, node = %urls.address(index), %error,
                        "could not connect to this broker node; trying the next");
                }
                last = Some(error);
            }
        }
    }
    Err(last.expect("amqp.url names at least one node"))
}

pub use properties::json as json_properties;

/// A server-named queue private to this connection (gone when it closes), and a consumer on it
/// that needs no acks: where a requester receives its replies, or a watcher the events.
pub async fn private_queue(channel: &Channel) -> lapin::Result<(ShortString, Consumer)> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_operation_that_never_completes_becomes_an_error() {
        let pending = std::future::pending::<lapin::Result<()>>();
        let error = bounded(Duration::from_millis(20), "publishing", pending)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("publishing did not complete within"),
            "{error}"
        );
        let done = bounded(Duration::from_secs(1), "publishing", async { Ok(7) }).await;
        assert_eq!(done.unwrap(), 7);
    }
}
