//! The HTTP server loop, with the limits a port reachable by anyone needs: a connection that does
//! not send its request head in time is closed (slowloris), the number of open connections is
//! capped, and errors the HTTP parser answers by itself (a request line or head too large) get
//! the API's JSON error body like every other error.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

/// The connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection must deliver each request head within this, idle keep-alive included.
    pub header_read_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

/// The largest request head read (a URI up to hyper's own limit, 64 KiB, fits).
const MAX_HEAD: usize = 128 * 1024;

/// How long open connections may finish their requests once a stop is asked for.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // One client address may hold a quarter of the connections: a client that keeps reopening
    // idle ones cannot shut out the others (health probes among them).
    let per_peer_limit = (limits.max_connections / 4).max(1);
    let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head larger than this is refused (431): bounds each connection's memory.
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "too many HTTP connections; closing a new one");
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, peer.ip(), per_peer_limit) else {
            tracing::warn!(%peer, max = per_peer_limit, "too many HTTP connections from one address; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(JsonParseErrors::new(stream));
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
            drop(slot);
            drop(peer_slot);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open at stop; closing them");
    }
}

/// One connection counted against its client address; released on drop.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut counts = peers.lock().expect("the peer count lock is never poisoned");
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .peers
            .lock()
            .expect("the peer count lock is never poisoned");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Rewrites the bodiless responses hyper sends by itself when it cannot parse a request (414 URI
/// Too Long, 431 Request Header Fields Too Large, 400 Bad Request) into the API's JSON error.
/// hyper writes such a response as one head and then closes the connection.
struct JsonParseErrors {
    inner: TcpStream,
    state: Rewrite,
}

enum Rewrite {
    /// Responses from the router pass through untouched.
    Pass,
    /// Writing the JSON response that replaces hyper's; `done` bytes of it are out.
    Replacing { response: Vec<u8>, done: usize },
    /// The replacement is out; the rest of hyper's response is dropped.
    Swallow,
}

impl JsonParseErrors {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            state: Rewrite::Pass,
        }
    }
}

/// The JSON response for one of hyper's own error heads, if `head` is one.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status, code, message) = if head.starts_with(b"HTTP/1.1 414 ") {
        (
            "414 URI Too Long",
            "uri_too_long",
            "the request's URI is too long",
        )
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request's headers are too large",
        )
    } else if head.starts_with(b"HTTP/1.1 400 ")
        && head
            .windows(b"content-length: 0\r\n".len())
            .any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"))
    {
        (
            "400 Bad Request",
            "bad_request",
            "the request is not valid HTTP",
        )
    } else {
        return None;
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for JsonParseErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonParseErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Rewrite::Pass = this.state {
            match replacement(buf) {
                // Only a hyper-generated head has no content-type; the router's errors have one.
                Some(response)
                    if !buf
                        .windows(b"content-type:".len())
                        .any(|w| w.eq_ignore_ascii_case(b"content-type:")) =>
                {
                    this.state = Rewrite::Replacing { response, done: 0 };
                }
                _ => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        loop {
            match &mut this.state {
                Rewrite::Pass => unreachable!("handled above"),
                Rewrite::Swallow => return Poll::Ready(Ok(buf.len())),
                Rewrite::Replacing { response, done } => {
                    if *done == response.len() {
                        this.state = Rewrite::Swallow;
                        continue;
                    }
                    match Pin::new(&mut this.inner).poll_write(cx, &response[*done..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => *done += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: every head arrives whole in `poll_write`, where it can be recognised.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn hypers_own_error_heads_become_json() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let response = String::from_utf8(replacement(head).unwrap()).unwrap();
        assert!(response.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "uri_too_long");
        assert!(replacement(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(
            replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n").is_none(),
            "a 400 with a body comes from the router"
        );
    }
}
