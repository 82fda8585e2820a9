//! A TCP proxy between the application and one service, which a test can freeze: every byte
//! stops where it is, both ways, and every connection stays open, as in a network partition
//! where the peer neither answers nor hangs up. Only the test's own connections are affected.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct FreezingProxy {
    pub address: SocketAddr,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// Forwards a free local port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (frozen, watching) = watch::channel(false);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let watching = watching.clone();
                tokio::spawn(async move {
                    // A connection made while frozen waits like any other byte.
                    thawed(&mut watching.clone()).await;
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, watching.clone()),
                        pump(server_read, client_write, watching),
                    );
                });
            }
        });
        Self {
            address,
            frozen,
            task,
        }
    }

    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn thawed(frozen: &mut watch::Receiver<bool>) {
    let _ = frozen.wait_for(|frozen| !frozen).await;
}

/// Copies one way, holding each chunk while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        thawed(&mut frozen).await;
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Stop reading once frozen: nothing more is taken from the sender.
            _ = frozen.wait_for(|frozen| *frozen) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        thawed(&mut frozen).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    // Let the other side see the end only once thawed, as a partition would.
    thawed(&mut frozen).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = to.shutdown().await;
}
