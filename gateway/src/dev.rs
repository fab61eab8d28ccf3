//! `--dev`: the demo page, the client SDK it runs on, `/dev/token`, and the
//! demo feed.
//!
//! Only for trying Herald on a laptop: `/dev/token` hands a token to anyone
//! who asks, so these routes exist only when `--dev` is given.
//! `assets/herald.js` and `assets/msgpack.js` (the MessagePack codec the SDK
//! loads only when a page asks for `protocol: 'msgpack'`) are the build of
//! `clients/js` (`npm run gateway-asset`, esbuild), committed so the binary
//! embeds them; a test of `scripts/test-clients.sh` checks that they equal a
//! fresh build. The demo feed publishes JSON ticks, news and alerts, and a
//! byte payload ([`BINARY_TICKS`]) the demo page shows over MessagePack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_core::http::error_response;
use herald_core::{Broker, Publication};
use herald_protocol::{ErrorCode, Payload, Topic};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use tracing::warn;

use crate::auth::TokenRequest;
use crate::node::Node;

/// Symbols the demo feed ticks.
pub const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "GOOG", "AMZN"];

/// The demo feed's byte payloads: every second, event `ticks`, 16 bytes,
/// the prices of [`SYMBOLS`] in order as IEEE-754 float32, big-endian.
pub const BINARY_TICKS: &str = "ticks.bin";

const DEMO_PAGE: &str = include_str!("demo.html");
const SDK: &str = include_str!("assets/herald.js");
const MSGPACK: &str = include_str!("assets/msgpack.js");

/// `/`, `/herald.js`, `/msgpack.js` and `/dev/token`. The page's `curl`
/// example names `admin`, the admin listener's address.
pub fn routes(node: Arc<Node>, admin: SocketAddr) -> Router {
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| async move { Html(demo_page(admin, &headers)) }),
        )
        .route("/herald.js", get(|| async { script(SDK) }))
        .route("/msgpack.js", get(|| async { script(MSGPACK) }))
        .route("/dev/token", get(token))
        .with_state(node)
}

/// The demo page, its `curl` example aimed at the admin listener. A
/// listener bound to every interface (`0.0.0.0`, `::`) is shown under the
/// host the page was loaded from.
fn demo_page(admin: SocketAddr, headers: &HeaderMap) -> String {
    let host = if admin.ip().is_unspecified() {
        let requested = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_owned());
        requested.unwrap_or_else(|| "127.0.0.1".to_owned())
    } else if admin.is_ipv6() {
        format!("[{}]", admin.ip())
    } else {
        admin.ip().to_string()
    };
    DEMO_PAGE.replace("{{ADMIN}}", &format!("http://{host}:{}", admin.port()))
}

/// The client SDK, as an ES module for the demo page's `import`.
fn script(body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    sub: Option<String>,
}

async fn token(State(node): State<Arc<Node>>, Query(q): Query<TokenQuery>) -> Response {
    let sub = q
        .sub
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or_else(|| "demo".to_owned());
    let Some(signer) = &node.dev_signer else {
        return error_response(ErrorCode::NotFound, "no such route");
    };
    let request = TokenRequest {
        sub,
        topics: vec![
            "news".into(),
            "alerts".into(),
            "stocks.*".into(),
            "chat.>".into(),
            BINARY_TICKS.into(),
        ],
        publish: vec!["chat.>".into()],
        presence: vec!["chat.>".into()],
        ttl: Duration::from_secs(3600),
    };
    match signer.mint(&request) {
        Ok(token) => {
            Json(serde_json::json!({ "token": token, "expires_in": 3600 })).into_response()
        }
        Err(e) => {
            warn!(error = %e, "cannot mint a dev token");
            error_response(ErrorCode::Internal, "cannot mint a token")
        }
    }
}

/// Tiny deterministic generator for the feed; no cryptographic needs here.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f64 {
        (self.next() % 2_000_000) as f64 / 1_000_000.0 - 1.0
    }
}

const HEADLINES: [&str; 6] = [
    "Central bank holds rates steady",
    "Chipmaker beats earnings estimates",
    "Oil prices climb on supply worries",
    "Tech shares lead market rally",
    "Retail sales rise more than expected",
    "Regulators approve landmark merger",
];

const ALERTS: [(&str, &str); 4] = [
    ("info", "Scheduled maintenance tonight at 02:00 UTC"),
    ("warning", "Unusual trading volume detected"),
    ("info", "New feature: price alerts"),
    ("critical", "Market data delayed on one venue"),
];

fn raw(value: serde_json::Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(&value).ok()
}

/// Publishes ticks, a headline and an alert every second, until the node
/// starts draining.
pub async fn feed(node: Arc<Node>) {
    let mut rng = XorShift(herald_core::now_ms() | 1);
    let mut prices: Vec<f64> = vec![189.0, 415.0, 172.0, 181.0];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: usize = 0;
    while !node.is_draining() {
        tick.tick().await;
        let mut batch = Vec::new();
        for (symbol, price) in SYMBOLS.iter().zip(prices.iter_mut()) {
            *price = (*price * (1.0 + rng.signed_unit() * 0.004)).max(1.0);
            let data = raw(
                serde_json::json!({ "symbol": symbol, "price": (*price * 100.0).round() / 100.0 }),
            );
            if let (Ok(topic), Some(data)) = (Topic::new(&format!("stocks.{symbol}")), data) {
                batch.push(Publication {
                    event: Some("tick".into()),
                    ..Publication::new(topic, data)
                });
            }
        }
        let headline = HEADLINES[n % HEADLINES.len()];
        let (level, text) = ALERTS[n % ALERTS.len()];
        let extras = [
            (
                "news",
                "headline",
                serde_json::json!({ "title": headline, "n": n }),
            ),
            (
                "alerts",
                "alert",
                serde_json::json!({ "level": level, "text": text }),
            ),
        ];
        for (topic, event, value) in extras {
            if let (Ok(topic), Some(data)) = (Topic::new(topic), raw(value)) {
                batch.push(Publication {
                    event: Some(event.into()),
                    ..Publication::new(topic, data)
                });
            }
        }
        // A byte payload (contract §10.2): the four prices as big-endian
        // float32s, 16 bytes.
        if let Ok(topic) = Topic::new(BINARY_TICKS) {
            let bytes: Vec<u8> = prices
                .iter()
                .flat_map(|p| (*p as f32).to_be_bytes())
                .collect();
            batch.push(Publication {
                event: Some("ticks".into()),
                ..Publication::of(topic, Payload::Bytes(Cow::Owned(bytes)))
            });
        }
        if let Err(e) = node.broker.publish(batch).await {
            warn!(error = %e, "demo feed publish failed");
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_admin_listener() {
        let none = HeaderMap::new();
        let page = demo_page("127.0.0.1:8091".parse().unwrap(), &none);
        assert!(page.contains("http://127.0.0.1:8091/v1/publish"));
        let page = demo_page("[::1]:8091".parse().unwrap(), &none);
        assert!(page.contains("http://[::1]:8091/v1/publish"));
        // Bound to every interface: the host the page was loaded from.
        let mut loaded = HeaderMap::new();
        loaded.insert(header::HOST, "demo.example:8080".parse().unwrap());
        let page = demo_page("0.0.0.0:8081".parse().unwrap(), &loaded);
        assert!(page.contains("http://demo.example:8081/v1/publish"));
        let page = demo_page("0.0.0.0:8081".parse().unwrap(), &none);
        assert!(page.contains("http://127.0.0.1:8081/v1/publish"));
    }
}
