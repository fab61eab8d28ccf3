//! `GET /ws`: the handshake (contract §4) and the hand-over of the upgraded
//! socket to a session task.
//!
//! Every refusal happens here, as a plain HTTP response with the contract's
//! JSON body, before anything is upgraded and before any per-session state
//! exists. The checks run cheapest first: headers, capacity and draining,
//! the revocation list loaded, origin, and only then the token
//! ([`connect::authenticate`]). A handshake without a token is upgraded and
//! authenticates with its first frame ([`connect`]); with a connect hook, a
//! protocol-1 handshake without a token is admitted or refused by the
//! application's backend here ([`connect::authenticate_by_backend`]). The protocol is the
//! first name of `Sec-WebSocket-Protocol` the server knows, echoed back.

pub mod connect;
pub mod echo;
pub mod handshake;

use std::sync::Arc;

use crate::tls::TlsStream;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::Broker;
use herald_core::http::serve::{PeerAddr, Watched};
use herald_core::http::{bearer, error_response};
use herald_core::metrics::HandshakeResult;
use herald_protocol::ErrorCode;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::net::TcpStream;
use tracing::debug;

use crate::node::Node;
use crate::proxy::ConnectRequest;
use crate::session::Protocol;
use handshake::NotUpgrade;

fn refuse(node: &Node, result: HandshakeResult, code: ErrorCode, message: &str) -> Response {
    node.metrics.handshake(result);
    error_response(code, message)
}

/// The token from `Authorization: Bearer`, else from the `token` query parameter.
fn token_of(req: &Request) -> Option<String> {
    let header = bearer(req.headers()).map(str::to_owned);
    header.or_else(|| {
        req.uri().query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token")
                .then(|| percent_decode(v))
                .filter(|t| !t.is_empty())
        })
    })
}

/// `%xx` and `+` of a query component decoded (invalid UTF-8 replaced).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn origin_allowed(node: &Node, req: &Request) -> bool {
    let allowed = &node.config.listeners.allowed_origins;
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get(http::header::ORIGIN) {
        None => true, // native apps send none
        Some(origin) => origin.to_str().is_ok_and(|o| {
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')))
        }),
    }
}

/// The `/ws` handler.
pub async fn upgrade(State(node): State<Arc<Node>>, req: Request) -> Response {
    handshake(node, req, false).await
}

/// The `/connection/websocket` handler (`compat.centrifugo`, contract
/// §10.7): the same handshake and checks, Centrifugo's encodings, and the
/// token always in the client's `connect` command, as its SDKs send it.
pub async fn upgrade_centrifugo(State(node): State<Arc<Node>>, req: Request) -> Response {
    handshake(node, req, true).await
}

async fn handshake(node: Arc<Node>, mut req: Request, centrifugo: bool) -> Response {
    let accept = match handshake::accept_key(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(NotUpgrade::BadRequest(message)) => {
            return refuse(
                &node,
                HandshakeResult::BadRequest,
                ErrorCode::BadRequest,
                message,
            );
        }
        Err(NotUpgrade::Version) => {
            let mut response = refuse(
                &node,
                HandshakeResult::BadRequest,
                ErrorCode::BadRequest,
                "only WebSocket version 13 is supported",
            );
            *response.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
            response.headers_mut().insert(
                http::header::SEC_WEBSOCKET_VERSION,
                http::HeaderValue::from_static("13"),
            );
            return response;
        }
    };
    let Some(permit) = node.try_reserve() else {
        let message = if node.is_draining() {
            "node is draining"
        } else {
            "node is at max_connections"
        };
        return refuse(
            &node,
            HandshakeResult::Unavailable,
            ErrorCode::Unavailable,
            message,
        );
    };
    if !node.verifier.keys_loaded() {
        // No token can be checked before the jwt.jwks_url set is fetched.
        return refuse(
            &node,
            HandshakeResult::Unavailable,
            ErrorCode::Unavailable,
            "the node has not loaded its JWT keys yet",
        );
    }
    if !node.revocations.is_loaded() {
        // Contract §10.8: a revoked token must never get in through a node
        // that has not read the revocations yet (Redis unreachable at its
        // start).
        return refuse(
            &node,
            HandshakeResult::Unavailable,
            ErrorCode::Unavailable,
            "the node has not loaded the revocation list yet",
        );
    }
    if !origin_allowed(&node, &req) {
        return refuse(
            &node,
            HandshakeResult::ForbiddenOrigin,
            ErrorCode::ForbiddenOrigin,
            "origin not allowed",
        );
    }
    let token = if centrifugo { None } else { token_of(&req) };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            &node,
            HandshakeResult::BadRequest,
            ErrorCode::BadRequest,
            "connection cannot be upgraded",
        );
    };
    let offered = req
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (protocol, chosen) = if centrifugo {
        Protocol::negotiate_centrifugo(offered)
    } else {
        Protocol::negotiate(offered)
    };
    let deflate = negotiate(&node, &req);
    let extensions = deflate.as_ref().map(|(_, h)| h.as_str());
    let with_hook = node
        .proxy
        .as_ref()
        .filter(|p| token.is_none() && p.has_connect());
    let hook = with_hook.map(|p| {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
        Box::new(ConnectRequest::of(
            req.headers(),
            req.uri(),
            &p.headers,
            peer,
        ))
    });
    let admitted = match (token, hook) {
        (Some(token), _) => connect::authenticate(&node, &token).await,
        // Protocol 1 sends no connect frame: the backend decides from the
        // handshake (contract §10.6).
        (None, Some(request)) if protocol == Protocol::V1 => {
            connect::authenticate_by_backend(&node, &request).await
        }
        (None, backend) => {
            // No token in the handshake: the first frame must bring one
            // (contract §10.4). Nothing is sent before it.
            let response = switching_protocols(&accept, extensions, chosen);
            spawn_upgraded(
                on_upgrade,
                connect::ConnectJob {
                    node,
                    deflate: deflate.map(|(d, _)| d),
                    protocol,
                    permit,
                    backend,
                },
            );
            return response;
        }
    };
    let (claims, id) = match admitted {
        Ok(admitted) => admitted,
        Err(r) => return error_response(r.code, &r.message),
    };
    node.metrics.handshake(HandshakeResult::Accepted);
    let response = switching_protocols(&accept, extensions, chosen);
    spawn_upgraded(
        on_upgrade,
        crate::session::Start {
            node,
            claims,
            token: id,
            deflate: deflate.map(|(d, _)| d),
            protocol,
            permit,
        },
    );
    response
}

/// permessage-deflate, when configured and offered acceptably.
fn negotiate(node: &Node, req: &Request) -> Option<(crate::wire::deflate::Deflate, String)> {
    if node.config.listeners.compression {
        crate::wire::deflate::negotiate(req.headers())
    } else {
        None
    }
}

fn switching_protocols(
    accept: &str,
    extensions: Option<&str>,
    protocol: Option<&'static str>,
) -> Response {
    let mut response = (
        http::StatusCode::SWITCHING_PROTOCOLS,
        [
            (http::header::UPGRADE, "websocket"),
            (http::header::CONNECTION, "Upgrade"),
            (http::header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    if let Some(ext) = extensions.and_then(|e| http::HeaderValue::from_str(e).ok()) {
        response
            .headers_mut()
            .insert(http::header::SEC_WEBSOCKET_EXTENSIONS, ext);
    }
    if let Some(name) = protocol {
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(name),
        );
    }
    response
}

/// What runs on a socket once it is upgraded.
pub(crate) trait Job: Send + 'static {
    fn run<S>(self, io: S, initial: Bytes) -> impl Future<Output = ()> + Send
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    /// Runs on a plain TCP socket (the session keeps it where the hub can
    /// write to it inline).
    fn run_tcp(self, io: TcpStream, initial: Bytes) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        self.run(io, initial)
    }

    /// The upgrade failed: the job never runs.
    fn abandon(self);
}

impl Job for crate::session::Start {
    fn run<S>(self, io: S, initial: Bytes) -> impl Future<Output = ()> + Send
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        crate::session::run(io, initial, self)
    }

    fn run_tcp(self, io: TcpStream, initial: Bytes) -> impl Future<Output = ()> + Send {
        crate::session::run_tcp(io, initial, self)
    }

    fn abandon(self) {
        if self.node.config.limits.max_connections_per_user > 0 {
            self.node.broker.release(&self.claims.sub);
        }
    }
}

/// Waits for the upgrade, then runs `job` on the raw socket: our own TCP
/// (or TLS) stream when it can be unwrapped, so the session polls it
/// directly, and hyper's boxed stream otherwise.
fn spawn_upgraded<J: Job>(on_upgrade: hyper::upgrade::OnUpgrade, job: J) {
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                job.abandon();
                return;
            }
        };
        // A task of its own per stream type: a future holding all three
        // variants would cost every connection the size of the largest
        // (the TLS one), whichever it is.
        let upgraded = match upgraded.downcast::<TokioIo<Watched<TcpStream>>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner().into_inner();
                tokio::spawn(job.run_tcp(tcp, parts.read_buf));
                return;
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsStream<Watched<TcpStream>>>>() {
            Ok(parts) => tokio::spawn(job.run(parts.io.into_inner(), parts.read_buf)),
            Err(upgraded) => tokio::spawn(job.run(TokioIo::new(upgraded), Bytes::new())),
        };
    });
}

/// `GET /echo`: only with `test_echo_endpoint = true`. The same listener,
/// handshake, codec and compression as `/ws`, echoing every message back,
/// for the Autobahn conformance suite. No token; never enable it in
/// production.
pub async fn echo(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let accept = match handshake::accept_key(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(_) => return error_response(ErrorCode::BadRequest, "not a WebSocket upgrade"),
    };
    let Some(permit) = node.try_reserve() else {
        return error_response(ErrorCode::Unavailable, "node is at max_connections");
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return error_response(ErrorCode::BadRequest, "connection cannot be upgraded");
    };
    let deflate = negotiate(&node, &req);
    let response = switching_protocols(&accept, deflate.as_ref().map(|(_, h)| h.as_str()), None);
    spawn_upgraded(
        on_upgrade,
        echo::EchoJob {
            node,
            deflate: deflate.map(|(d, _)| d),
            permit,
        },
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Eb%2e"), "a.b.");
        assert_eq!(percent_decode("abc"), "abc");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%"), "%");
    }
}
