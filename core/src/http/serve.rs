//! Serving a router on a bound listener, with the limits and the graceful
//! stop that both `herald-gateway` and `herald-admin` need.
//!
//! One task per TCP connection, HTTP/1.1 with upgrades, a 10 s header read
//! timeout (slow-loris), a bounded read buffer, and a stop that closes the
//! listeners and lets every connection finish its in-flight request.

use std::future::Future;
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

/// Longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
        self.serve_with(listener, app, |stream| async move { Some(stream) });
    }

    /// Serves `app` on `listener`, first passing each connection through
    /// `wrap` (a TLS handshake, say); `None` drops the connection.
    pub fn serve_with<W, Fut, S>(&mut self, listener: TcpListener, app: Router, wrap: W)
    where
        W: Fn(TcpStream) -> Fut + Clone + Send + 'static,
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
        self.loops.push(tokio::spawn(
            accept_loop(listener, app, wrap, stop, done).instrument(info_span!("accept", %addr)),
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

async fn accept_loop<W, Fut, S>(
    listener: TcpListener,
    app: Router,
    wrap: W,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) where
    W: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                debug!(%peer, "accepted");
                let (app, stop, done, wrap) =
                    (app.clone(), stop.clone(), done.clone(), wrap.clone());
                tokio::spawn(async move {
                    if let Some(io) = wrap(stream).await {
                        serve_connection(io, app, stop, done).await;
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
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
