//! A server TLS stream on rustls's unbuffered API, whose buffers are per
//! thread: an idle `wss://` connection keeps its TLS state and nothing
//! else.
//!
//! **Why by hand.** `tokio-rustls` drives rustls's buffered connection,
//! which keeps a 4 KiB read buffer per connection for as long as it is open
//! (rustls sizes it before every read, and the stream reads until the socket
//! is empty). Measured on the reference machine with `herald-loadtest
//! connect` (10,000 idle connections, docs/benchmarks.md): 9,882 bytes per
//! `wss://` connection against 2,180 for `ws://`. Here ciphertext is read
//! into a per-thread buffer, decrypted there by rustls, and only what an
//! unfinished record leaves is kept, the way the session keeps an
//! unfinished WebSocket frame ([`crate::session::conn`]). No crate offers
//! this over Tokio: `tokio-rustls` is buffered by design.
//!
//! **Invariants.**
//! - `pending_in` holds ciphertext read and not yet processed (a partial
//!   record), `plain` plaintext decrypted and not yet read (a record larger
//!   than the reader's buffer), `pending_out` ciphertext the socket has not
//!   taken yet (from `out_at`). Each is allocated only while non-empty.
//! - Ciphertext leaves in the order it was produced: nothing is written to
//!   the socket while `pending_out` holds bytes, except from its front.
//! - A read drains every record rustls has decrypted (into the reader's
//!   buffer, the rest into `plain`), so a write always finds the connection
//!   ready to encrypt.
//! - A write reports its plaintext written once encrypted; what the socket
//!   did not take waits in `pending_out`, written before the next write and
//!   by `poll_flush`, which the session calls whenever its own queue is
//!   empty.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Room for the largest record on the wire (16 KiB of plaintext plus its
/// header, padding and tag) with a margin.
const MAX_RECORD: usize = 16 * 1024 + 2048;
/// Plaintext encrypted per write (one full record).
const MAX_WRITE: usize = 16 * 1024;
/// Longest handshake flight buffered (rustls refuses larger messages).
const MAX_HANDSHAKE: usize = 64 * 1024 + MAX_RECORD;

thread_local! {
    /// Ciphertext being processed: a connection's partial record plus one
    /// read.
    static INCOMING: RefCell<Vec<u8>> = RefCell::new(vec![0; 2 * MAX_RECORD]);
    /// Ciphertext being produced, and plaintext gathered for it.
    static OUTGOING: RefCell<(Vec<u8>, Vec<u8>)> =
        RefCell::new((vec![0; 2 * MAX_RECORD], Vec::with_capacity(MAX_WRITE)));
}

/// Accepts TLS connections with one server configuration.
#[derive(Clone)]
pub struct Acceptor(Arc<ServerConfig>);

impl Acceptor {
    /// An acceptor for `config`.
    pub fn new(config: Arc<ServerConfig>) -> Acceptor {
        Acceptor(config)
    }

    /// Runs the server side of the TLS handshake on `io`.
    ///
    /// # Errors
    /// A TLS error (as `InvalidData`), an I/O error, or the peer leaving.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> io::Result<TlsStream<S>> {
        let conn = UnbufferedServerConnection::new(self.0.clone()).map_err(tls_error)?;
        let mut tls = TlsStream {
            io,
            conn: Box::new(conn),
            pending_in: Vec::new(),
            plain: Vec::new(),
            pending_out: Vec::new(),
            out_at: 0,
            closing: false,
        };
        // The handshake's own buffer, dropped when it ends.
        let mut incoming = vec![0; MAX_RECORD];
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                tls.conn.process_tls_records(&mut incoming[..used]);
            let next = match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut tls.pending_out)?;
                    Handshake::Again
                }
                ConnectionState::TransmitTlsData(t) => {
                    // Sent (in order) before the next read or write.
                    t.done();
                    Handshake::Again
                }
                ConnectionState::BlockedHandshake => Handshake::Read,
                // Done: the peer's first records (the HTTP request) may
                // already be here; the stream reads them.
                ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_) => {
                    Handshake::Done
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                _ => return Err(io::Error::other("unexpected TLS state in the handshake")),
            };
            incoming.copy_within(discard..used, 0);
            used -= discard;
            match next {
                Handshake::Again => {}
                Handshake::Done => break,
                Handshake::Read => {
                    std::future::poll_fn(|cx| tls.poll_send_pending(cx)).await?;
                    if used == incoming.len() {
                        if incoming.len() >= MAX_HANDSHAKE {
                            return Err(io::Error::other("TLS handshake message too large"));
                        }
                        incoming.resize(incoming.len() * 2, 0);
                    }
                    let n = tls.io.read(&mut incoming[used..]).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    used += n;
                }
            }
        }
        std::future::poll_fn(|cx| tls.poll_send_pending(cx)).await?;
        if used > 0 {
            tls.pending_in = incoming[..used].to_vec();
        }
        Ok(tls)
    }
}

enum Handshake {
    Again,
    Read,
    Done,
}

/// What one step of reading produced.
enum Read {
    /// Plaintext went to the reader (or to `plain`).
    Data,
    /// rustls made progress without plaintext (a handshake message, a
    /// record to send): step again.
    Again,
    /// Nothing complete: read more ciphertext.
    More,
    /// The peer closed the TLS session.
    Eof,
}

/// A server-side TLS connection over `S`.
pub struct TlsStream<S> {
    io: S,
    /// Boxed: the session's future holds the stream, and a thin pointer
    /// keeps it the same size on every kind of connection.
    conn: Box<UnbufferedServerConnection>,
    pending_in: Vec<u8>,
    plain: Vec<u8>,
    pending_out: Vec<u8>,
    out_at: usize,
    closing: bool,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends a handshake record to `out`.
fn encode<D>(e: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    let at = out.len();
    let mut room = 4096;
    loop {
        out.resize(at + room, 0);
        match e.encode(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(e) => {
                out.truncate(at);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// The transport, for tests and metrics.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Writes `pending_out` until the socket has taken all of it.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.pending_out.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending_out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if !self.pending_out.is_empty() {
            self.pending_out = Vec::new();
            self.out_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// One step of rustls over `incoming`: decrypted records go to `buf`
    /// (what does not fit to `plain`). Returns the bytes of `incoming`
    /// consumed and what happened.
    fn step_read(
        &mut self,
        incoming: &mut [u8],
        buf: &mut ReadBuf<'_>,
    ) -> io::Result<(usize, Read)> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(incoming);
        let read = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(tls_error)?;
                    let n = record.payload.len().min(buf.remaining());
                    buf.put_slice(&record.payload[..n]);
                    self.plain.extend_from_slice(&record.payload[n..]);
                }
                Read::Data
            }
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, &mut self.pending_out)?;
                Read::Again
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                Read::Again
            }
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => Read::More,
            ConnectionState::PeerClosed | ConnectionState::Closed => Read::Eof,
            _ => return Err(io::Error::other("unexpected TLS state")),
        };
        Ok((discard, read))
    }

    /// Encrypts `plaintext` into `out`, handling any handshake record
    /// rustls wants sent first (into `pending_out`). Returns the length.
    fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => match w.encrypt(plaintext, out) {
                    Ok(n) => return Ok(n),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => out.resize(required_size, 0),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                },
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, &mut self.pending_out)?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                // Records decrypted and not read yet (the peer's first
                // records arrive with its last handshake flight): kept for
                // the next read, so the write can go on.
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        self.plain
                            .extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                _ => return Err(io::Error::other("TLS connection cannot write")),
            }
        }
    }

    /// Queues `ciphertext` behind `pending_out` and writes what the socket
    /// takes now.
    fn send(&mut self, cx: &mut Context<'_>, ciphertext: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if self.out_at == self.pending_out.len() {
            match Pin::new(&mut self.io).poll_write(cx, ciphertext) {
                Poll::Ready(Ok(n)) => sent = n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        if sent < ciphertext.len() {
            self.pending_out.extend_from_slice(&ciphertext[sent..]);
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plain.is_empty() {
            let n = this.plain.len().min(buf.remaining());
            buf.put_slice(&this.plain[..n]);
            this.plain.drain(..n);
            if this.plain.is_empty() {
                this.plain = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        INCOMING.with_borrow_mut(|incoming| {
            let mut used = this.pending_in.len();
            if used + MAX_RECORD > incoming.len() {
                // What the handshake's larger buffer left (rare): room
                // for it and one more record.
                incoming.resize(used + MAX_RECORD, 0);
            }
            incoming[..used].copy_from_slice(&this.pending_in);
            this.pending_in = Vec::new();
            let result = loop {
                let (discard, read) = match this.step_read(&mut incoming[..used], buf) {
                    Ok(step) => step,
                    Err(e) => break Poll::Ready(Err(e)),
                };
                incoming.copy_within(discard..used, 0);
                used -= discard;
                let delivered = buf.filled().len() > before || !this.plain.is_empty();
                match read {
                    Read::Data if buf.remaining() > 0 => continue,
                    Read::Again => continue,
                    Read::Eof => break Poll::Ready(Ok(())),
                    _ if delivered => break Poll::Ready(Ok(())),
                    _ => {}
                }
                if used == incoming.len() {
                    break Poll::Ready(Err(io::Error::other("TLS record too large")));
                }
                let mut more = ReadBuf::new(&mut incoming[used..]);
                match Pin::new(&mut this.io).poll_read(cx, &mut more) {
                    Poll::Pending => break Poll::Pending,
                    Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                    // End of stream without close_notify: end of stream.
                    Poll::Ready(Ok(())) if more.filled().is_empty() => break Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => used += more.filled().len(),
                }
            };
            if used > 0 {
                this.pending_in = incoming[..used].to_vec();
            }
            result
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        OUTGOING.with_borrow_mut(|(out, gathered)| {
            // One record's worth of the slices, gathered when there are
            // several, so small frames share a record.
            let plaintext: &[u8] = match bufs.iter().find(|b| !b.is_empty()) {
                None => return Poll::Ready(Ok(0)),
                Some(first) if bufs.len() == 1 || first.len() >= MAX_WRITE => {
                    &first[..first.len().min(MAX_WRITE)]
                }
                Some(_) => {
                    gathered.clear();
                    for b in bufs {
                        let room = MAX_WRITE - gathered.len();
                        gathered.extend_from_slice(&b[..b.len().min(room)]);
                        if gathered.len() == MAX_WRITE {
                            break;
                        }
                    }
                    gathered
                }
            };
            let n = this.encrypt(plaintext, out)?;
            this.send(cx, &out[..n])?;
            Poll::Ready(Ok(plaintext.len()))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            let UnbufferedStatus { state, .. } = this.conn.process_tls_records(&mut []);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
                let mut alert = [0u8; 64];
                if let Ok(n) = w.queue_close_notify(&mut alert) {
                    this.pending_out.extend_from_slice(&alert[..n]);
                }
            }
        }
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncWriteExt, DuplexStream};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A handshake over a pipe of `capacity` bytes (small: every write is
    /// partial and every read short).
    async fn pair(
        capacity: usize,
    ) -> (
        TlsStream<DuplexStream>,
        tokio_rustls::client::TlsStream<DuplexStream>,
    ) {
        let acceptor =
            crate::tls::acceptor(&fixture("tls_cert.pem"), &fixture("tls_key.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixture("tls_ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (server_io, client_io) = tokio::io::duplex(capacity);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        );
        (server.unwrap(), client.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn large_messages_both_ways_through_a_narrow_pipe() {
        let (mut server, mut client) = pair(512).await;
        let sent = pattern(100_000);
        // Client to server, read 100 bytes at a time: records larger than
        // the reader's buffer wait in `plain`.
        let (written, received) = tokio::join!(
            async {
                client.write_all(&sent).await.unwrap();
                client.flush().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                let mut chunk = [0u8; 100];
                while got.len() < sent.len() {
                    let n = server.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "early end of stream");
                    got.extend_from_slice(&chunk[..n]);
                }
                got
            }
        );
        let () = written;
        assert_eq!(received, sent);
        assert!(server.pending_in.is_empty() && server.plain.is_empty());

        // Server to client in many small slices (gathered into records),
        // through a pipe that takes 512 bytes at a time.
        let frames: Vec<Vec<u8>> = (0..500).map(|i| pattern(100 + i)).collect();
        let expected: Vec<u8> = frames.concat();
        let (written, received) = tokio::join!(
            async {
                let mut at = 0;
                let mut offset = 0;
                while at < frames.len() {
                    let slices: Vec<io::IoSlice<'_>> = std::iter::once(&frames[at][offset..])
                        .chain(frames[at + 1..].iter().map(|f| &f[..]))
                        .take(64)
                        .map(io::IoSlice::new)
                        .collect();
                    let mut n = server.write_vectored(&slices).await.unwrap();
                    while n > 0 && at < frames.len() {
                        let left = frames[at].len() - offset;
                        if n < left {
                            offset += n;
                            n = 0;
                        } else {
                            n -= left;
                            at += 1;
                            offset = 0;
                        }
                    }
                }
                server.flush().await.unwrap();
                assert!(server.pending_out.is_empty(), "flushed");
                server.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        let () = written;
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the same bytes, in order");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut server, mut client) = pair(64 * 1024).await;
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 16];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        server.write_all(b"world").await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"world");
        assert_eq!(server.pending_in.capacity(), 0);
        assert_eq!(server.plain.capacity(), 0);
        assert_eq!(server.pending_out.capacity(), 0);
    }

    #[tokio::test]
    async fn a_write_before_reading_keeps_what_arrived() {
        let (mut server, mut client) = pair(64 * 1024).await;
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        tokio::task::yield_now().await;
        server.write_all(b"world").await.unwrap();
        server.flush().await.unwrap();
        let mut buf = [0u8; 16];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"world");
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_tls_is_refused() {
        let acceptor =
            crate::tls::acceptor(&fixture("tls_cert.pem"), &fixture("tls_key.pem")).unwrap();
        let (server_io, mut client_io) = tokio::io::duplex(4096);
        client_io
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = acceptor.accept(server_io).await.err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
