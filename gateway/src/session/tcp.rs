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

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
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
        let dst = buf.initialize_unfilled();
        let len = dst.len();
        let n = loop {
            ready!(socket.poll_read_ready(cx))?;
            // A read shorter than the buffer has drained the socket (epoll is
            // edge-triggered): the closure reports it to `try_io` as
            // `WouldBlock`, which clears the readiness seen before the read,
            // so the next poll waits instead of reading again only to get
            // `EAGAIN`, as Tokio's own `TcpStream::poll_read` does. Readiness
            // that arrives after the read is kept (Tokio compares its tick).
            // One syscall less per pong and per client message.
            let mut got = 0;
            match socket.try_io(Interest::READABLE, || {
                got = socket.try_read(dst)?;
                if 0 < got && got < len {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            }) {
                Ok(()) => break got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => break got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A read shorter than the buffer leaves the socket not ready, so the
    /// session's next poll waits for epoll rather than reading `EAGAIN`;
    /// what arrives later is still read, and a full buffer is read again.
    #[tokio::test]
    async fn a_short_read_waits_for_the_next_readiness() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let outbox = Arc::new(Outbox::new(1, Arc::from("u"), 16).with_socket(server));
        let mut shared = SharedTcp::new(outbox.clone());
        let socket = || outbox.socket().unwrap();

        client.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(shared.read(&mut buf).await.unwrap(), 5);
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(
            socket().poll_read_ready(cx).is_pending(),
            "a short read clears the readiness"
        );

        client.write_all(&[7u8; 100]).await.unwrap();
        let mut small = [0u8; 64];
        assert_eq!(shared.read(&mut small).await.unwrap(), 64);
        // A full buffer may leave more: still ready, and the rest is read.
        assert!(poll_fn(|cx| socket().poll_read_ready(cx)).await.is_ok());
        assert_eq!(shared.read(&mut small).await.unwrap(), 36);
        drop(client);
        assert_eq!(shared.read(&mut buf).await.unwrap(), 0, "end of stream");
    }
}
