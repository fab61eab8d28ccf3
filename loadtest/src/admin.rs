//! A keep-alive HTTP/1.1 client for the admin API's batch publish.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;

/// One connection to an admin API.
pub struct Admin {
    addr: SocketAddr,
    key: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Admin {
    /// Connects to `base` (`http://ip:port`).
    ///
    /// # Errors
    /// When the URL or the connection fails.
    pub async fn connect(base: &str, key: &str) -> Result<Admin> {
        let host = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .replace("localhost", "127.0.0.1");
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("admin URL must be http://ip:port: {base}"))?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Admin {
            addr,
            key: key.to_owned(),
            sender,
        })
    }

    /// POSTs `body` to `path`; returns the response body.
    ///
    /// # Errors
    /// Transport errors and non-200 answers.
    pub async fn post(&mut self, path: &str, body: String) -> Result<Bytes> {
        let req = http::Request::post(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        // The server closes a keep-alive connection that stays idle (its
        // header read timeout), say while subscribers connect: connect again.
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            let (sender, conn) = hyper::client::conn::http1::handshake(
                hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(self.addr).await?),
            )
            .await?;
            tokio::spawn(conn);
            self.sender = sender;
            self.sender.ready().await?;
        }
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}
