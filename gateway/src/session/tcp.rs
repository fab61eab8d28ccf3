//! A plain TCP connection's socket, shared between its session task and the
//! hub's inline writes (see [`crate::outbox`]).
//!
//! The socket lives in the session's [`Outbox`], which the hub already
//! holds; the session task reads and writes it through [`SharedTcp`], an
//! `AsyncRead + AsyncWrite` over `&TcpStream` built on Tokio's readiness
//! API (`poll_*_ready`, then `try_*`). Only the session task waits for
//! readiness; the hub only ever tries a write, under the outbox lock, and
//! only when the task holds nothing unwritten, so the two never interleave
//! bytes. Costs an idle connection nothing: the stream moves from the task
//! into the outbox, and the task keeps a pointer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::Outbox;

/// The session task's side of a socket kept in its outbox.
pub struct SharedTcp(Arc<Outbox>);

impl SharedTcp {
    /// The task's handle on `outbox`'s socket.
    pub fn new(outbox: Arc<Outbox>) -> SharedTcp {
        SharedTcp(outbox)
    }

    fn socket(&self) -> io::Result<&TcpStream> {
        self.0
            .socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

/// Retries `op` until it does not report `WouldBlock`, waiting for
/// readiness with `ready` in between (a `WouldBlock` clears it).
fn retry<T>(
    cx: &mut Context<'_>,
    ready: impl Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(ready(cx))?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = self.socket()?;
        let n = ready!(retry(
            cx,
            |cx| socket.poll_read_ready(cx),
            || socket.try_read(buf.initialize_unfilled())
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = self.socket()?;
        retry(
            cx,
            |cx| socket.poll_write_ready(cx),
            || socket.try_write(buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = self.socket()?;
        retry(
            cx,
            |cx| socket.poll_write_ready(cx),
            || socket.try_write_vectored(bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = self.socket()?;
        Poll::Ready(socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write))
    }
}
