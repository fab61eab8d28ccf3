//! A RESP connection to one Redis server: TCP or TLS, authenticated, with
//! its read buffer, and the errors that can end it.
//!
//! Every wait here is bounded by [`CONNECT_TIMEOUT`]: a server that accepts
//! the TCP connection and then says nothing cannot hold a caller.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::resp::{self, Resp, RespError};

/// Longest wait for a connect, a TLS handshake or a one-shot reply.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a pub/sub connection could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connect or a read or write failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A bounded wait ran out.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// TLS could not be set up or the handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server refused our credentials.
    #[error("AUTH refused: {0}")]
    Auth(String),
    /// The server sent something that is not RESP.
    #[error(transparent)]
    Protocol(#[from] RespError),
    /// The server closed the connection.
    #[error("closed by redis")]
    Closed,
    /// A live connection on which nothing arrived for too long.
    #[error("redis stopped answering")]
    Silent,
    /// A probe published through Redis did not come back on this
    /// connection: it accepts commands but no longer delivers.
    #[error("a probe published through redis did not come back within {0:?}")]
    ProbeLost(std::time::Duration),
    /// The connection is not (or no longer) to the primary.
    #[error("not connected to the primary")]
    NotPrimary,
    /// A reply of the wrong shape.
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// `rediss://`: TLS, verified against the system's roots (or
    /// `SSL_CERT_FILE`).
    pub tls: bool,
}

impl Endpoint {
    /// The same credentials and TLS setting, at another address (a master
    /// found in the slot map).
    pub fn at(&self, addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_owned(),
            ..self.clone()
        }
    }
}

/// A connection to Redis, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, TransportError> {
    crate::tls::client_config().map_err(TransportError::Tls)
}

/// An open, authenticated connection and its read buffer.
pub struct Connection {
    stream: Box<dyn Stream>,
    /// Bytes read and not parsed yet.
    pub buf: BytesMut,
    out: BytesMut,
}

impl Connection {
    /// Connects, sets up TLS when the endpoint asks for it, and authenticates.
    ///
    /// # Errors
    /// Whatever stopped it, each wait bounded by [`CONNECT_TIMEOUT`].
    pub async fn open(endpoint: &Endpoint) -> Result<Connection, TransportError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&endpoint.addr))
            .await
            .map_err(|_| TransportError::Timeout("connect"))??;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if endpoint.tls {
            let host = endpoint
                .addr
                .rsplit_once(':')
                .map_or(endpoint.addr.as_str(), |(h, _)| h);
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| TransportError::Tls(format!("bad server name {host}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| TransportError::Timeout("TLS handshake"))?
                .map_err(|e| TransportError::Tls(format!("handshake failed: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::new(),
        };
        if let Some(password) = &endpoint.password {
            let reply = match &endpoint.username {
                Some(user) => {
                    conn.call(&[b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => {
                    conn.call(&[b"AUTH".as_slice(), password.as_bytes()])
                        .await?
                }
            };
            if let Resp::Error(e) = reply {
                return Err(TransportError::Auth(
                    String::from_utf8_lossy(&e).into_owned(),
                ));
            }
        }
        Ok(conn)
    }

    /// Writes `bytes` (already RESP-encoded commands).
    ///
    /// # Errors
    /// When the write fails.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `Ok(0)` never: a closed stream is
    /// [`TransportError::Closed`].
    ///
    /// # Errors
    /// When the read fails or the server closed the connection.
    pub async fn read_more(&mut self) -> Result<usize, TransportError> {
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(TransportError::Closed),
            n => Ok(n),
        }
    }

    /// Reads the next value the server sends (a pub/sub message, say),
    /// waiting as long as it takes.
    ///
    /// # Errors
    /// When the connection fails or the bytes are not RESP.
    pub async fn read_value(&mut self) -> Result<Resp, TransportError> {
        loop {
            if let Some(v) = resp::parse(&mut self.buf)? {
                return Ok(v);
            }
            self.read_more().await?;
        }
    }

    /// Sends one command and waits (bounded) for its reply.
    ///
    /// # Errors
    /// On I/O failure, a timeout, or a reply that is not RESP.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Resp, TransportError> {
        self.out.clear();
        resp::encode(args, &mut self.out);
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out).await?;
        self.out = out;
        loop {
            if let Some(v) = resp::parse(&mut self.buf)? {
                return Ok(v);
            }
            tokio::time::timeout(CONNECT_TIMEOUT, self.read_more())
                .await
                .map_err(|_| TransportError::Timeout("reply"))??;
        }
    }
}

/// Runs one command on a fresh connection.
///
/// # Errors
/// See [`Connection::open`] and [`Connection::call`].
pub async fn command(endpoint: &Endpoint, args: &[&[u8]]) -> Result<Resp, TransportError> {
    Connection::open(endpoint).await?.call(args).await
}
