//! Serving a router on a bound listener, with the limits and the graceful
//! stop that both `herald-gateway` and `herald-admin` need.
//!
//! One task per TCP connection, HTTP/1.1 with upgrades, a 10 s header read
//! timeout (slow-loris), a bounded read buffer, and a stop that closes the
//! listeners and lets every connection finish its in-flight request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{Instrument, info_span};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Metrics;

/// Longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Admission for a listener: a connection is *pending* from its accept
/// until its first request reaches the router (its TLS handshake and header
/// parsing are done), and at most `limit` are pending at once.
///
/// When a new connection finds the table full (contract §10.8):
/// - if a pending connection is *waiting on its client* (its last read found
///   nothing to read: a socket that never sends, a slow-loris), the one
///   that has waited longest is closed to make room, so idle sockets can
///   never keep a prompt client out;
/// - otherwise the node is saturated for real (every pending connection is
///   being worked on, a reconnect storm): the newcomer is answered at once,
///   before any TLS or parsing: a canned 503 `unavailable` with a spread
///   `Retry-After` on a plain listener, a close on a TLS one. A quick
///   refusal the client retries elsewhere or later beats a kernel accept
///   queue that overflows and drops connections silently.
#[derive(Clone)]
pub struct Admission {
    table: Arc<std::sync::Mutex<Table>>,
    limit: usize,
    metrics: Arc<Metrics>,
}

/// The pending connections, oldest first (by admission number).
#[derive(Default)]
struct Table {
    next: u64,
    slots: std::collections::BTreeMap<u64, Arc<Slot>>,
}

/// What the table knows of one pending connection.
#[derive(Default)]
struct Slot {
    /// Its last read found nothing: it waits on its client.
    waiting: AtomicBool,
    /// Closes it.
    evict: tokio::sync::Notify,
}

impl Admission {
    /// At most `limit` pending connections, counting into `metrics`.
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Admission {
        Admission {
            table: Arc::default(),
            limit,
            metrics,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending slot, making room by evicting the connection that has
    /// waited longest on its client; `None` when saturated for real.
    fn enter(&self) -> Option<Pending> {
        let mut table = self.table();
        if table.slots.len() >= self.limit {
            let idle = table
                .slots
                .iter()
                .find(|(_, slot)| slot.waiting.load(Ordering::Acquire))
                .map(|(n, _)| *n);
            let slot = table.slots.remove(&idle?)?;
            // The slot's connection ends, which drops its `Pending`.
            slot.evict.notify_one();
            self.metrics.handshakes_evicted.increment(1);
        }
        let n = table.next;
        table.next += 1;
        let slot = Arc::new(Slot::default());
        table.slots.insert(n, slot.clone());
        drop(table);
        self.metrics.handshakes_pending.add(1);
        Some(Pending {
            admission: self.clone(),
            n,
            slot,
        })
    }
}

/// A connection that has not had its first request routed yet.
struct Pending {
    admission: Admission,
    n: u64,
    slot: Arc<Slot>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.table().slots.remove(&self.n);
        self.admission.metrics.handshakes_pending.add(-1);
    }
}

/// A connection's socket, telling its admission slot (if it has one)
/// whether its last read found nothing, that is, whether it waits on its
/// client. Transparent otherwise; the gateway unwraps it to reach the
/// `TcpStream` of an upgraded connection ([`Watched::into_inner`]).
pub struct Watched<S> {
    io: S,
    slot: Option<Arc<Slot>>,
}

impl<S> Watched<S> {
    /// The socket.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// The socket, borrowed.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(slot) = &this.slot {
            slot.waiting.store(result.is_pending(), Ordering::Release);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The listeners of a process and their connections.
pub struct Server {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
    loops: Vec<JoinHandle<()>>,
}

impl Default for Server {
    fn default() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Server {
            stop_tx,
            stop_rx,
            done_tx: Some(done_tx),
            done_rx,
            loops: Vec::new(),
        }
    }
}

impl Server {
    /// Serves `app` on `listener`, plain.
    pub fn serve(&mut self, listener: TcpListener, app: Router) {
        self.serve_with(listener, app, None, Shed::Respond, |stream| async move {
            Some(stream)
        });
    }

    /// Serves `app` on `listener`, shedding load per `admission` (`shed`
    /// says how), and first passing each connection through `wrap` (a TLS
    /// handshake, say); `None` drops the connection.
    pub fn serve_with<W, Fut, S>(
        &mut self,
        listener: TcpListener,
        app: Router,
        admission: Option<Admission>,
        shed: Shed,
        wrap: W,
    ) where
        W: Fn(Watched<TcpStream>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Option<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(done) = self.done_tx.clone() else {
            return;
        };
        let stop = self.stop_rx.clone();
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let accept = Accept {
            app,
            wrap,
            admission,
            shed,
            done,
        };
        self.loops.push(tokio::spawn(
            accept_loop(listener, accept, stop).instrument(info_span!("accept", %addr)),
        ));
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// request and close, and waits for them until `deadline`. Returns
    /// whether all finished in time.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) -> bool {
        let _ = self.stop_tx.send(true);
        for l in self.loops.drain(..) {
            let _ = l.await;
        }
        // Every connection task holds a sender; all dropped = all finished.
        drop(self.done_tx.take());
        tokio::time::timeout_at(deadline, self.done_rx.recv())
            .await
            .is_ok()
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How a saturated listener refuses a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A canned HTTP 503 with `Retry-After` (plain listeners).
    Respond,
    /// A close (TLS listeners: answering would need the TLS handshake the
    /// shedding is meant to avoid).
    Close,
}

/// What the accept loop hands each connection.
struct Accept<W> {
    app: Router,
    wrap: W,
    admission: Option<Admission>,
    shed: Shed,
    done: mpsc::Sender<()>,
}

/// Most connections taken from the kernel's queue in one go before the
/// loop yields: a burst is drained while the loop runs, not one connection
/// per scheduling turn.
const ACCEPT_BATCH: usize = 64;

async fn accept_loop<W, Fut, S>(
    listener: TcpListener,
    accept: Accept<W>,
    mut stop: watch::Receiver<bool>,
) where
    W: Fn(Watched<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let first = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(accepted) = next.take() {
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    handle(stream, peer, &accept, &stop);
                }
                Err(e) => {
                    if let Some(a) = &accept.admission {
                        a.metrics.accept_errors.increment(1);
                    }
                    // Typically EMFILE: back off briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
            taken += 1;
            if taken < ACCEPT_BATCH {
                next = futures_util::FutureExt::now_or_never(listener.accept());
            }
        }
    }
}

/// Starts serving one accepted connection, or sheds it.
fn handle<W, Fut, S>(
    stream: TcpStream,
    peer: SocketAddr,
    accept: &Accept<W>,
    stop: &watch::Receiver<bool>,
) where
    W: Fn(Watched<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pending = match &accept.admission {
        None => None,
        Some(a) => match a.enter() {
            Some(p) => Some(p),
            None => {
                a.metrics.connections_shed.increment(1);
                if accept.shed == Shed::Respond {
                    tokio::spawn(refuse_overloaded(stream));
                }
                return;
            }
        },
    };
    let (app, stop, done, wrap) = (
        accept.app.clone(),
        stop.clone(),
        accept.done.clone(),
        accept.wrap.clone(),
    );
    let slot = pending.as_ref().map(|p| p.slot.clone());
    let watched = Watched {
        io: stream,
        slot: slot.clone(),
    };
    tokio::spawn(async move {
        let evicted = async move {
            match &slot {
                Some(slot) => slot.evict.notified().await,
                None => std::future::pending().await,
            }
        };
        let serve = async move {
            if let Some(io) = wrap(watched).await {
                serve_connection(io, peer, app, stop, done, pending).await;
            }
        };
        tokio::select! {
            () = serve => {}
            () = evicted => debug!("closed a connection that waited longest on its client, to make room"),
        }
    });
}

/// The address a request's connection came from (before any proxy), in the
/// request's extensions: the connect hook sends it to the backend.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Answers a shed connection with a 503 and a spread `Retry-After`, without
/// parsing its request: reads (and drops) what it sent for a moment so the
/// close does not reset the answer away, then closes.
async fn refuse_overloaded(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"error":{"code":"unavailable","message":"node is overloaded; retry later"}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        super::retry_after(),
        body.len()
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
    pending: Option<Pending>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection stops being pending when its first request is routed.
    let pending = std::sync::Mutex::new(pending);
    let routed = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        drop(pending.lock().ok().and_then(|mut p| p.take()));
        req.extensions_mut().insert(PeerAddr(peer));
        hyper::service::Service::call(&routed, req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "http connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admission rule of contract §10.8 without sockets: a full table
    /// evicts the oldest connection waiting on its client, and sheds a
    /// newcomer when every pending one is being worked on.
    #[test]
    fn a_full_table_evicts_the_oldest_idle_or_sheds() {
        let admission = Admission::new(3, Metrics::new("n1"));
        let pending: Vec<Pending> = (0..3).map(|_| admission.enter().unwrap()).collect();
        // Busy (a TLS handshake or parsing in progress): real saturation.
        assert!(admission.enter().is_none(), "shed");
        // The second and third wait on their clients; the first is busy.
        pending[1].slot.waiting.store(true, Ordering::Release);
        pending[2].slot.waiting.store(true, Ordering::Release);
        let fourth = admission.enter().expect("room made");
        assert_eq!(fourth.n, 3);
        assert!(
            !admission.table().slots.contains_key(&1),
            "the oldest idle one was evicted"
        );
        assert!(
            admission.table().slots.contains_key(&0),
            "the busy one stays"
        );
        let fifth = admission.enter().expect("room made again");
        assert!(!admission.table().slots.contains_key(&2));
        assert!(admission.enter().is_none(), "only busy ones are left: shed");
        drop((pending, fourth, fifth));
        assert!(admission.table().slots.is_empty());
        assert_eq!(
            admission.metrics.value("herald_handshakes_evicted_total"),
            Some(2.0)
        );
        assert_eq!(admission.metrics.handshakes_pending.get(), 0);
    }
}
