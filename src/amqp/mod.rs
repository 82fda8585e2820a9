//! RabbitMQ adapter (lapin 4): connecting, declaring the topology, and the consumer that feeds
//! login events to the pipeline.

pub mod binary;
pub mod nodes;
pub mod properties;
pub mod replies;
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

/// The largest frame the broker is asked for, unless the URL names its own (`?frame_max=`).
/// lapin keeps 32 frames of this size per connection for reading and as many for writing, so the
/// broker's default of 128 KiB holds about 12 MiB per connection for messages of a few KiB; a
/// larger body still passes, in several frames.
pub const FRAME_MAX: u32 = 32 * 1024;

/// `url` with [`FRAME_MAX`] asked for if it does not say; `None` if it does not parse (lapin then
/// says why).
fn with_frame_max(url: &str) -> Option<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url.parse().ok()?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Some(uri)
}

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
        let connecting = async {
            match with_frame_max(url.expose_secret()) {
                Some(uri) => Connection::connect_uri(uri, properties).await,
                None => Connection::connect(url.expose_secret(), properties).await,
            }
        };
        let attempt = bounded(limit, "connecting to the broker", connecting).await;
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

    #[test]
    fn frames_are_kept_small_unless_the_url_says() {
        let uri = with_frame_max("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = with_frame_max("amqp://127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131072));
        assert!(with_frame_max("not a url").is_none());
    }
}
