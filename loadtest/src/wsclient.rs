//! A deliberately small WebSocket client for load generation.
//!
//! The generator shares the machine with the server it measures, so its own
//! cost per delivery must stay far below the server's: frames are parsed in
//! place from one read buffer per connection, text payloads are scanned for
//! the two numbers the generator needs rather than parsed as JSON, and pings
//! are answered so idle connections survive the server's heartbeat.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The generator's trust for `wss://`: set once per process by [`trust`].
static TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

/// Trusts the CA certificates in the PEM file `ca` for `wss://` URLs (the
/// server is named `localhost`, as the test certificates are).
///
/// # Errors
/// An unreadable file, or one with no certificate.
pub fn trust(ca: &std::path::Path) -> Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert.with_context(|| format!("{}", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )));
    Ok(())
}

/// A connection to the server: plain TCP or TLS.
pub enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: the TLS state is large).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The read and write halves of `stream`: Tokio's owned halves for plain
/// TCP (no lock between them, as the publisher always had), a shared TLS
/// stream's halves otherwise.
pub fn split(
    stream: Stream,
) -> (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    match stream {
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            (Box::new(rd), Box::new(wr))
        }
        tls => {
            let (rd, wr) = tokio::io::split(tls);
            (Box::new(rd), Box::new(wr))
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where to connect: `ws://host:port/path?query`.
#[derive(Debug, Clone)]
pub struct WsUrl {
    /// Socket address.
    pub addr: SocketAddr,
    /// `host:port` as written, for the Host header.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// `Sec-WebSocket-Protocol` to ask for, if any.
    pub protocol: Option<&'static str>,
    /// `wss://`: TLS, trusting the CA given to [`trust`].
    pub tls: bool,
}

impl WsUrl {
    /// Parses `ws://127.0.0.1:8080/ws` (names are not resolved: loopback only).
    ///
    /// # Errors
    /// When the URL is not `ws://ip:port/path`.
    pub fn parse(url: &str) -> Result<WsUrl> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => bail!("only ws:// and wss:// URLs: {url}"),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let host = host.replace("localhost", "127.0.0.1");
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url}: host must be ip:port"))?;
        Ok(WsUrl {
            addr,
            host,
            path: path.to_owned(),
            protocol: None,
            tls,
        })
    }

    /// The same URL with `query` appended.
    pub fn with_query(&self, query: &str) -> WsUrl {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        WsUrl {
            path: format!("{}{sep}{query}", self.path),
            ..self.clone()
        }
    }
}

/// Longest wait for the TCP connection of one attempt.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A handshake that did not succeed, and when to try again.
#[derive(Debug)]
pub struct Refused {
    /// What happened.
    pub error: anyhow::Error,
    /// The server's `Retry-After`, in seconds, when it sent one.
    pub retry_after: Option<u64>,
}

/// Connects like [`connect`], retrying a refused or failed handshake up to
/// `retries` times the way the SDK does: after the server's `Retry-After`
/// when it gave one (503, 429), else after a jittered, doubling backoff
/// from 250 ms (at most 5 s). Returns the connection and how many retries
/// it took.
///
/// # Errors
/// The last failure once the retries are spent.
pub async fn connect_retrying(
    url: &WsUrl,
    source: Option<SocketAddr>,
    retries: u32,
) -> Result<(Stream, BytesMut, u32)> {
    let mut attempt = 0;
    loop {
        match connect_once(url, source).await {
            Ok((stream, buf)) => return Ok((stream, buf, attempt)),
            Err(refused) if attempt < retries => {
                let wait = match refused.retry_after {
                    Some(secs) => std::time::Duration::from_secs(secs),
                    None => {
                        let ceiling = (250u64 << attempt.min(5)).min(5000);
                        std::time::Duration::from_millis(ceiling / 2 + jitter(ceiling / 2))
                    }
                };
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            Err(refused) => return Err(refused.error),
        }
    }
}

/// A cheap pseudo-random number below `n` (backoff jitter; no crypto).
fn jitter(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    if n == 0 {
        return 0;
    }
    RandomState::new().hash_one(std::time::Instant::now()) % n
}

/// Opens a TCP connection from `source` (for spreading sockets over
/// 127.0.0.x) and performs the opening handshake.
///
/// # Errors
/// Connection failures and non-101 answers.
pub async fn connect(url: &WsUrl, source: Option<SocketAddr>) -> Result<(Stream, BytesMut)> {
    connect_once(url, source).await.map_err(|r| r.error)
}

async fn connect_once(
    url: &WsUrl,
    source: Option<SocketAddr>,
) -> std::result::Result<(Stream, BytesMut), Refused> {
    let io = |e: std::io::Error| Refused {
        error: e.into(),
        retry_after: None,
    };
    let fail = |m: String| Refused {
        error: anyhow!(m),
        retry_after: None,
    };
    let socket = TcpSocket::new_v4().map_err(io)?;
    if let Some(from) = source {
        // A port still in TIME_WAIT from an earlier run may be reused.
        socket.set_reuseaddr(true).map_err(io)?;
        if socket.bind(from).is_err() {
            // Taken (or port 0 past the range): let the kernel choose.
            socket.bind(SocketAddr::new(from.ip(), 0)).map_err(io)?;
        }
    }
    // A SYN the server's kernel dropped (a full accept queue) is resent for
    // about a minute before connect() gives up: give up sooner, and retry.
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(url.addr))
        .await
        .map_err(|_| fail("connect timed out".to_owned()))?
        .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let mut stream = if url.tls {
        let connector = TLS
            .get()
            .ok_or_else(|| fail("wss:// needs --tls-ca".to_owned()))?;
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| fail(e.to_string()))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| fail("TLS handshake timed out".to_owned()))?
            .map_err(io)?;
        Stream::Tls(Box::new(tls))
    } else {
        Stream::Plain(stream)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bG9hZHRlc3QtaGVyYWxkIQ==\r\n{}\r\n",
        url.path,
        url.host,
        url.protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 4);
            if !head.starts_with("HTTP/1.1 101") {
                let retry_after = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("retry-after")
                        .then(|| v.trim().parse().ok())?
                });
                return Err(Refused {
                    error: anyhow!("handshake refused: {}", head.lines().next().unwrap_or("")),
                    retry_after,
                });
            }
            return Ok((stream, buf));
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(fail("closed during the handshake".to_owned()));
        }
        if buf.len() > 16 * 1024 {
            return Err(fail("handshake answer too long".to_owned()));
        }
    }
}

/// A masked client text frame.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    frame(0x1, payload)
}

/// A masked client binary frame.
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    frame(0x2, payload)
}

/// A masked client pong answering `payload`.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    frame(0xA, payload)
}

/// A masked client close with code 1000.
pub fn close_frame() -> Vec<u8> {
    frame(0x8, &1000u16.to_be_bytes())
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    // A fixed mask is as good as any for a load generator: the server must
    // unmask every frame either way.
    let mask = [0x5a, 0x1c, 0xe3, 0x97];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 65535 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A server frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message (unfragmented; servers here never fragment).
    Text(&'a [u8]),
    /// A ping to answer.
    Ping(&'a [u8]),
    /// The server's close, with its code.
    Close(u16),
    /// A binary message (MessagePack).
    Binary(&'a [u8]),
    /// Anything else (pong, continuation).
    Other,
}

/// Calls `each` for every complete frame at the front of `buf`, consuming
/// them; stops at an incomplete one.
///
/// # Errors
/// A masked or oversized server frame.
pub fn parse<F: FnMut(Frame<'_>)>(buf: &mut BytesMut, mut each: F) -> Result<()> {
    loop {
        let [b0, b1, ..] = buf[..] else { return Ok(()) };
        if b1 & 0x80 != 0 {
            bail!("server frames must not be masked");
        }
        let (len, header) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(a), 10)
            }
            126 | 127 => return Ok(()),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).map_err(|_| anyhow!("frame too large"))?;
        if len > 64 << 20 {
            bail!("frame too large");
        }
        if buf.len() < header + len {
            return Ok(());
        }
        {
            let payload = &buf[header..header + len];
            match b0 & 0x0f {
                0x1 => each(Frame::Text(payload)),
                0x2 => each(Frame::Binary(payload)),
                0x9 => each(Frame::Ping(payload)),
                0x8 => each(Frame::Close(if len >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                })),
                _ => each(Frame::Other),
            }
        }
        buf.advance(header + len);
    }
}

/// Finds the unsigned integer after the string `key` in a MessagePack
/// map, without decoding the rest: the generator's `t` and `s` come first
/// in the event's `data`, after only ASCII strings (type, topic, id), so
/// the first match is theirs.
pub fn scan_msgpack_u64(payload: &[u8], key: &[u8]) -> Option<u64> {
    let mut pattern = Vec::with_capacity(key.len() + 1);
    pattern.push(0xa0 | u8::try_from(key.len()).ok().filter(|n| *n < 32)?);
    pattern.extend_from_slice(key);
    let at = payload.windows(pattern.len()).position(|w| w == pattern)? + pattern.len();
    let rest = payload.get(at..)?;
    let be = |n: usize| -> Option<u64> {
        let b = rest.get(1..=n)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    match *rest.first()? {
        b @ 0x00..=0x7f => Some(u64::from(b)),
        0xcc => be(1),
        0xcd => be(2),
        0xce => be(4),
        0xcf => be(8),
        _ => None,
    }
}

/// Finds the integer after `"key":` in a JSON text, without parsing it.
pub fn scan_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(u.addr.port(), 8080);
        assert_eq!(u.with_query("token=x").path, "/ws?token=x");
        assert_eq!(
            WsUrl::parse("ws://localhost:9/").unwrap().host,
            "127.0.0.1:9"
        );
        assert!(WsUrl::parse("http://x").is_err());
    }

    #[test]
    fn parses_consecutive_and_partial_frames() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[
            0x81, 2, b'h', b'i', 0x82, 1, 0xc0, 0x89, 1, b'p', 0x88, 2, 0x0f, 0xa4, 0x81, 5, b'a',
        ]);
        let mut seen = Vec::new();
        parse(&mut buf, |f| {
            seen.push(match f {
                Frame::Text(t) => format!("text {}", String::from_utf8_lossy(t)),
                Frame::Binary(b) => format!("binary {}", b.len()),
                Frame::Ping(p) => format!("ping {}", p.len()),
                Frame::Close(c) => format!("close {c}"),
                Frame::Other => "other".into(),
            })
        })
        .unwrap();
        assert_eq!(seen, vec!["text hi", "binary 1", "ping 1", "close 4004"]);
        assert_eq!(&buf[..], &[0x81, 5, b'a'], "the partial frame stays");
    }

    /// A server that refuses the first handshake with 503 `Retry-After: 1`
    /// and accepts the second: the client waits the second out and gets in.
    #[tokio::test]
    async fn a_refused_handshake_is_retried_after_retry_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
                if answer.contains("503") {
                    drop(s);
                } else {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        });
        let url = WsUrl::parse(&format!("ws://{addr}/ws")).unwrap();
        let t0 = std::time::Instant::now();
        let (_, _, retries) = connect_retrying(&url, None, 3).await.unwrap();
        assert_eq!(retries, 1);
        assert!(
            t0.elapsed() >= std::time::Duration::from_secs(1),
            "waited Retry-After"
        );
        let refused = connect_once(&url, None).await;
        assert!(
            refused.is_err(),
            "the server is gone: no retries asked, none made"
        );
    }

    #[test]
    fn scans_msgpack_numbers() {
        let record = herald_protocol::record::render(
            "lt.0",
            "0000000a-7",
            None,
            &herald_protocol::Payload::Json(std::borrow::Cow::Owned(
                serde_json::value::RawValue::from_string(
                    r#"{"t":1796600000123456,"s":300,"k":0,"p":"xx"}"#.to_owned(),
                )
                .unwrap(),
            )),
            1_796_600_000_123,
        );
        let packed = herald_protocol::msgpack::message(&record).unwrap();
        assert_eq!(scan_msgpack_u64(&packed, b"t"), Some(1_796_600_000_123_456));
        assert_eq!(scan_msgpack_u64(&packed, b"s"), Some(300));
        assert_eq!(scan_msgpack_u64(&packed, b"k"), Some(0));
        assert_eq!(scan_msgpack_u64(&packed, b"q"), None);
    }

    #[test]
    fn scans_numbers() {
        let text = br#"{"type":"message","data":{"t":1767222000123456,"s":42,"p":"xx"}}"#;
        assert_eq!(scan_u64(text, b"\"t\":"), Some(1_767_222_000_123_456));
        assert_eq!(scan_u64(text, b"\"s\":"), Some(42));
        assert_eq!(scan_u64(text, b"\"z\":"), None);
    }
}
