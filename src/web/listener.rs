//! Accepting connections: a deadline for each request's headers, a cap on the connections
//! one address holds open, `TCP_NODELAY`, and a graceful stop.
//!
//! `axum::serve` sets neither limit, so a client that sends half a request kept its
//! connection (a file descriptor of the node's 20,000) as long as it liked. Each connection
//! is served here by hyper's HTTP/1 with upgrades, as `axum::serve` does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// How connections are accepted.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// How long a client has to send a request's headers, from when the connection opens
    /// or its previous response was sent (so an idle keep-alive connection closes too).
    pub header_timeout: Duration,
    /// Open connections one address may hold (WebSockets included); `None`: no cap. Behind
    /// a proxy every connection comes from the proxy, which must cap them itself.
    pub per_address: Option<usize>,
}

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish.
/// Upgraded sockets are the application's to close, and are not waited for here.
pub async fn serve(
    mut listener: TcpListener,
    router: Router,
    admission: Admission,
    counters: Arc<super::HttpCounters>,
    stop: CancellationToken,
) {
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut http = http1::Builder::new();
    // Without a timer hyper ignores its header timeout; with one, it enforces it.
    http.timer(TokioTimer::new())
        .header_read_timeout(admission.header_timeout);
    let open = OpenConnections::default();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            // axum's accept retries what is worth retrying, and waits out a lack of
            // descriptors rather than spinning.
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = stop.cancelled() => break,
        };
        let slot = match admission.per_address {
            None => None,
            Some(max) => match open.take(super::client::network_of(peer.ip()), max) {
                Some(slot) => Some(slot),
                None => {
                    counters.refused_per_address();
                    tracing::debug!(%peer, "too many connections from one address; closed");
                    continue;
                }
            },
        };
        // Chat frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm
        // holds a frame back until the client acknowledges the previous one, and a
        // client's delayed ACK can take 40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        cap_send_buffer(&stream);
        let Ok(service) = make_service.call(peer).await;
        let io = TokioIo::new(Counted { stream, slot });
        let connection = http
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The kernel's send buffer for a connection. Left alone, Linux grows it to `tcp_wmem`'s
/// maximum (4 MiB by default) while a client does not read: a few hundred such sockets
/// held a gigabyte of kernel memory. Chat frames need far less, even to a slow link; the
/// kernel doubles what is asked, for its own bookkeeping.
const SEND_BUFFER: libc::c_int = 128 * 1024;

fn cap_send_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a descriptor this stream owns, with a pointer to an int and
    // its size, as SO_SNDBUF takes.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not cap the send buffer");
    }
}

/// Open connections by address.
#[derive(Clone, Default)]
struct OpenConnections(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection from `address`, or None when it holds `max`.
    fn take(&self, address: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: self.clone(),
            address,
        })
    }
}

/// One connection's place, given back when the connection's stream is dropped: for a
/// WebSocket, when the socket closes, not when its handshake is done.
pub(super) struct Slot {
    open: OpenConnections,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// A TCP stream that holds its address's slot for as long as it lives.
struct Counted {
    stream: TcpStream,
    slot: Option<Slot>,
}

/// An upgraded connection taken apart: its TCP stream, what the HTTP server had read past
/// the request, and its address's slot (to be held until the stream closes).
pub(super) struct Unwrapped {
    pub(super) stream: TcpStream,
    pub(super) read_ahead: bytes::Bytes,
    pub(super) slot: Option<Slot>,
}

/// Takes apart a connection `serve` accepted and hyper has upgraded; gives it back
/// unchanged when it is something else.
pub(super) fn unwrap_upgraded(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<Unwrapped, hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Counted>>()?;
    let Counted { stream, slot } = parts.io.into_inner();
    Ok(Unwrapped {
        stream,
        read_ahead: parts.read_buf,
        slot,
    })
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let open = OpenConnections::default();
        let here: IpAddr = "127.0.0.1".parse().unwrap();
        let there: IpAddr = "127.0.0.2".parse().unwrap();
        let first = open.take(here, 2);
        let second = open.take(here, 2);
        assert!(first.is_some() && second.is_some());
        assert!(open.take(here, 2).is_none());
        assert!(open.take(there, 2).is_some());
        drop(first);
        assert!(open.take(here, 2).is_some());
        drop(second);
        assert!(open.lock().is_empty());
    }
}
