//! Authenticating a connection: its token checked the same way wherever it
//! came from (contract §4 and §10.4), and the `connect` frame of a
//! connection that gave none in its handshake.
//!
//! [`authenticate`] is the one place a token becomes a session's claims:
//! signature and claims, revocation, the per-user limit, in that order.
//! The HTTP handshake turns its [`Refusal`] into a plain HTTP answer; a
//! connection that was upgraded without a token ([`ConnectJob`]) must send
//! `{"type":"connect","token":…}` as its first frame within
//! `auth.connect_timeout`, and a refusal closes it with 4005 and the
//! refusal's code as the reason. The server sends nothing before that.
//! With a connect hook (`proxy.connect_url`), a connection that brings no
//! JWT is admitted by the application's backend instead
//! ([`authenticate_by_backend`]): a protocol-1 handshake without a token
//! at once, a `connect` frame whose token is not a JWT with that token.
//!
//! The first frame is read with the session's own decoder (same limits,
//! same compression); bytes that came after it are handed to the session,
//! which then starts as a session from a header token does, in a task of its
//! own, so an authenticated connection costs what any other does.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use herald_core::Broker;
use herald_core::metrics::HandshakeResult;
use herald_protocol::centrifugo::schema::{self, Reply};
use herald_protocol::centrifugo::{self, Wire};
use herald_protocol::{ClientFrame, CloseCode, ErrorCode, parse_client_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::Job;
use crate::auth::{AuthError, Claims, TokenId};
use crate::node::{Node, Permit};
use crate::proxy::{ConnectRequest, Refused};
use crate::session::{Protocol, Start};
use crate::wire::codec::{Decoder, Encoding, Message, close_frame};
use crate::wire::deflate::Deflate;

/// Why a token is not admitted.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What the handshake metric counts.
    pub result: HandshakeResult,
    /// The contract code: the HTTP refusal's, or the 4005 close reason.
    pub code: ErrorCode,
    /// For the client's developer.
    pub message: String,
}

impl Refusal {
    fn new(result: HandshakeResult, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            result,
            code,
            message: message.into(),
        }
    }
}

/// How long a handshake waits for the cluster-wide count of the user's
/// sessions before admitting it anyway.
const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// Checks `token` for a new session: signature and claims, revocation, and
/// `limits.max_connections_per_user` (which counts the session when it
/// admits it: [`Job::abandon`] gives the count back if the session never
/// runs).
///
/// # Errors
/// The [`Refusal`] to answer, already counted in the handshake metric.
pub async fn authenticate(node: &Node, token: &str) -> Result<(Claims, TokenId), Refusal> {
    let refused = |r: Refusal| {
        node.metrics.handshake(r.result);
        Err(r)
    };
    let verified = match node.verifier.verify_token_fresh(token).await {
        Ok(verified) => verified,
        Err(e @ AuthError::Expired) => {
            return refused(Refusal::new(
                HandshakeResult::TokenExpired,
                e.code(),
                e.to_string(),
            ));
        }
        Err(e) => {
            return refused(Refusal::new(
                HandshakeResult::Unauthorized,
                e.code(),
                e.to_string(),
            ));
        }
    };
    admit(node, verified).await
}

/// Admits a connection without a JWT through the connect hook (contract
/// §10.6), then as [`authenticate`] does: revocation, the per-user limit.
///
/// # Errors
/// The [`Refusal`] to answer, already counted in the handshake metric.
pub async fn authenticate_by_backend(
    node: &Node,
    request: &ConnectRequest,
) -> Result<(Claims, TokenId), Refusal> {
    let Some(proxy) = &node.proxy else {
        let r = Refusal::new(
            HandshakeResult::Unauthorized,
            ErrorCode::Unauthorized,
            "no token",
        );
        node.metrics.handshake(r.result);
        return Err(r);
    };
    match proxy.connect(request).await {
        Ok(admitted) => admit(node, admitted).await,
        Err(refused) => {
            let result = match refused {
                Refused::Expired => HandshakeResult::TokenExpired,
                Refused::Unavailable(_) => HandshakeResult::Unavailable,
                Refused::Unauthorized(_) | Refused::Forbidden(_) => HandshakeResult::Unauthorized,
            };
            node.metrics.handshake(result);
            Err(Refusal::new(result, refused.code(), refused.message()))
        }
    }
}

/// The checks after a token (or the backend) said who the user is.
async fn admit(node: &Node, (claims, id): (Claims, TokenId)) -> Result<(Claims, TokenId), Refusal> {
    let refused = |r: Refusal| {
        node.metrics.handshake(r.result);
        Err(r)
    };
    if node
        .revocations
        .is_revoked(&claims.sub, id.jti.as_deref(), id.iat)
    {
        return refused(Refusal::new(
            HandshakeResult::Unauthorized,
            ErrorCode::Unauthorized,
            "token revoked",
        ));
    }
    if !admit_user(node, &claims.sub).await {
        let limit = node.config.limits.max_connections_per_user;
        return refused(Refusal::new(
            HandshakeResult::TooManyConnections,
            ErrorCode::TooManyConnections,
            format!("this user already holds {limit} sessions (limits.max_connections_per_user)"),
        ));
    }
    Ok((claims, id))
}

/// Whether `sub` may open one more session (`limits.max_connections_per_user`,
/// counted across the cluster by the broker). Fails open: when the count
/// cannot be had within [`ADMIT_WAIT`] (Redis down or slow), the session is
/// admitted, and the limit is approximate until Redis answers again.
async fn admit_user(node: &Node, sub: &str) -> bool {
    let limit = node.config.limits.max_connections_per_user;
    if limit == 0 {
        return true;
    }
    match tokio::time::timeout(ADMIT_WAIT, node.broker.admit(sub, limit)).await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(e)) => {
            debug!(error = %e, "per-user count unavailable: admitting");
            true
        }
        Err(_) => {
            debug!("per-user count too slow: admitting");
            true
        }
    }
}

/// A connection upgraded without a token: it authenticates with its first
/// frame, then becomes a session.
pub struct ConnectJob {
    /// The node.
    pub node: Arc<Node>,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<Deflate>,
    /// The protocol negotiated.
    pub protocol: Protocol,
    /// Its connection slot.
    pub permit: Permit,
    /// With a connect hook: what the handshake tells it (the `connect`
    /// frame's token is added when it is not a JWT).
    pub backend: Option<Box<ConnectRequest>>,
}

/// Most bytes read while waiting for the `connect` frame: the frame itself
/// (a token is a few KB) within `limits.max_message_size`.
fn read_limit(node: &Node) -> usize {
    node.config.limits.max_message_size + 16
}

impl ConnectJob {
    /// Reads the first frame; the token it carries and the bytes after it.
    /// A Centrifugo client's first frame starts with its `connect` command:
    /// its id comes back too (for the answer), and the frame stays in the
    /// bytes handed on, for the session to answer it and read the commands
    /// that followed it in the same frame.
    async fn first_frame<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        initial: Bytes,
    ) -> Result<(String, Bytes, u32), Refusal> {
        let unauthorized =
            |m: &str| Refusal::new(HandshakeResult::Unauthorized, ErrorCode::Unauthorized, m);
        let config = &self.node.config;
        let mut decoder = Decoder::new(
            config.limits.max_message_size,
            self.protocol != Protocol::V1,
        )
        .with_deflate(self.deflate.is_some());
        let mut buf = BytesMut::from(&initial[..]);
        let read = async {
            loop {
                let mut out = std::collections::VecDeque::new();
                let used = decoder
                    .decode_next(&buf, &mut out)
                    .map_err(|_| unauthorized("the first frame is not a valid WebSocket frame"))?;
                let encoding = self.protocol.encoding();
                match (out.pop_front(), used) {
                    (Some(Message::Text(t) | Message::Binary(t)), Some(_))
                        if matches!(encoding, Encoding::Centrifugo(_)) =>
                    {
                        return Ok(Some(t.to_vec()));
                    }
                    (Some(Message::Text(t)), Some(used)) if encoding == Encoding::Json => {
                        buf.advance(used);
                        return Ok(Some(t.to_vec()));
                    }
                    (Some(Message::Binary(b)), Some(used)) if encoding == Encoding::Msgpack => {
                        buf.advance(used);
                        let text = herald_protocol::msgpack::client_frame_to_json(&b)
                            .map_err(|_| unauthorized("the first frame is not a connect frame"))?;
                        return Ok(Some(text.into_bytes()));
                    }
                    // A ping before connecting is let pass; nothing is sent.
                    (Some(Message::Ping(_)), Some(used)) => buf.advance(used),
                    (Some(Message::Close(_)), _) => return Ok(None),
                    (Some(_), _) => {
                        return Err(unauthorized("the first frame is not a connect frame"));
                    }
                    (None, Some(used)) => buf.advance(used),
                    (None, None) => {
                        if buf.len() > read_limit(&self.node) {
                            return Err(unauthorized("the first frame is too large"));
                        }
                        if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return Ok(None);
                        }
                    }
                }
            }
        };
        let frame = match tokio::time::timeout(config.auth.connect_timeout, read).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return Err(unauthorized("closed before connecting")),
            Ok(Err(r)) => return Err(r),
            Err(_) => {
                return Err(unauthorized(
                    "no connect frame in time (auth.connect_timeout)",
                ));
            }
        };
        if let Protocol::Centrifugo(wire) = self.protocol {
            let commands = centrifugo::decode_commands(wire, &frame)
                .map_err(|_| unauthorized("the first frame is not a command"))?;
            return match commands.first() {
                Some(c) if c.id != 0 => match &c.connect {
                    Some(connect) => Ok((connect.token.clone(), buf.freeze(), c.id)),
                    None => Err(unauthorized("the first command must be connect")),
                },
                _ => Err(unauthorized("the first command must be connect")),
            };
        }
        let text = std::str::from_utf8(&frame).map_err(|_| unauthorized("not UTF-8"))?;
        match parse_client_frame(text) {
            Ok(ClientFrame::Connect { token }) => Ok((token, buf.freeze(), 0)),
            _ => Err(unauthorized(
                "the first frame of a connection without a token must be connect",
            )),
        }
    }

    /// Authenticates the connection on `io`; the session's start and the
    /// bytes that followed the `connect` frame, or the refusal (sent).
    async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: &mut S,
        initial: Bytes,
    ) -> Option<(Start, Bytes)> {
        let first = self.first_frame(io, initial).await;
        let command = first.as_ref().map_or(0, |(_, _, id)| *id);
        let outcome = match first {
            Ok((token, rest, _)) => match self.backend.as_deref() {
                // Not a JWT: the connect hook decides (contract §10.6).
                Some(request) if jsonwebtoken::decode_header(&token).is_err() => {
                    let request = ConnectRequest {
                        token: Some(token).filter(|t| !t.is_empty()),
                        ..request.clone()
                    };
                    authenticate_by_backend(&self.node, &request)
                        .await
                        .map(|v| (v, rest))
                }
                _ => authenticate(&self.node, &token).await.map(|v| (v, rest)),
            },
            Err(r) => {
                self.node.metrics.handshake(r.result);
                Err(r)
            }
        };
        match outcome {
            Ok(((claims, token), rest)) => {
                self.node.metrics.handshake(HandshakeResult::Accepted);
                let start = Start {
                    node: self.node,
                    claims,
                    token,
                    deflate: self.deflate,
                    protocol: self.protocol,
                    permit: self.permit,
                };
                Some((start, rest))
            }
            Err(refusal) => {
                debug!(code = refusal.code.as_str(), reason = %refusal.message, "connect refused");
                self.node.metrics.disconnect(CloseCode::ConnectRefused);
                let close = match self.protocol {
                    Protocol::Centrifugo(wire) => centrifugo_refusal(wire, command, &refusal),
                    _ => close_frame(
                        Some(CloseCode::ConnectRefused.as_u16()),
                        refusal.code.as_str(),
                    ),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    io.write_all(&close).await?;
                    io.shutdown().await
                })
                .await;
                None
            }
        }
    }
}

/// A refused Centrifugo `connect`: the protocol's error as the command's
/// answer (when it was read), then a close with the same advice. Refusals
/// the contract calls retryable (`too_many_connections`, `unavailable`)
/// are `temporary`, so the SDKs try again; an expired token gets 109, on
/// which they fetch a new one.
fn centrifugo_refusal(wire: Wire, id: u32, refusal: &Refusal) -> Bytes {
    let (code, _, _) = centrifugo::error(refusal.code);
    let temporary = matches!(
        refusal.code,
        ErrorCode::TooManyConnections | ErrorCode::Unavailable
    );
    let encoding = Encoding::Centrifugo(wire);
    let mut out = BytesMut::new();
    if id != 0 {
        let reply = Reply {
            id,
            error: Some(schema::Error {
                code,
                message: refusal.message.clone(),
                temporary,
            }),
            ..Reply::default()
        };
        out.extend_from_slice(&encoding.frame(&centrifugo::encode(wire, &reply), None));
    }
    let (close, reason) = match (id, temporary || refusal.code == ErrorCode::TokenExpired) {
        (0, _) => centrifugo::disconnect(CloseCode::ProtocolError),
        (_, true) => centrifugo::disconnect(CloseCode::Normal),
        (_, false) => centrifugo::disconnect(CloseCode::ConnectRefused),
    };
    out.extend_from_slice(&close_frame(Some(close), reason));
    out.freeze()
}

impl Job for ConnectJob {
    async fn run<S>(self, mut io: S, initial: Bytes)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some((start, rest)) = self.accept(&mut io, initial).await {
            tokio::spawn(crate::session::run(io, rest, start));
        }
    }

    async fn run_tcp(self, mut io: TcpStream, initial: Bytes) {
        if let Some((start, rest)) = self.accept(&mut io, initial).await {
            tokio::spawn(crate::session::run_tcp(io, rest, start));
        }
    }

    fn abandon(self) {}
}
