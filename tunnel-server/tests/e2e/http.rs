//! HTTPS clients of the hub proxy: hyper for ordinary requests, raw bytes where a test needs to control
//! exactly what travels on one connection (upgrades, pipelined requests, a reader that never reads).
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
pub struct HubClient {
    pub addr: SocketAddr,
    tls: TlsConnector,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

impl HubClient {
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in tether_runtime::tls::parse_certs(ca_pem.as_bytes())? {
            roots.add(cert)?;
        }
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { addr, tls: TlsConnector::from(Arc::new(config)) })
    }

    pub async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        self.tls_over(tcp).await
    }

    pub async fn tls_over(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
        Ok(self.tls.connect(ServerName::try_from("localhost")?, tcp).await?)
    }

    /// One request on a fresh connection; the whole body is read.
    pub async fn get(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Result<Answer> {
        let tls = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = Request::get(path).header("host", "localhost");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}

/// Reads an HTTP/1.1 response head from a raw stream; returns (status, head text, bytes read past the head).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line in {head:?}"))?;
            return Ok((status, head, rest));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response head; got {:?}", String::from_utf8_lossy(&buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a body of `Content-Length` bytes (after `already` bytes that came with the head).
pub async fn read_body<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    head: &str,
    mut already: Vec<u8>,
) -> Result<Vec<u8>> {
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").or_else(|| l.strip_prefix("Content-Length:")))
        .map(|v| v.trim().parse())
        .transpose()?
        .context("response without content-length")?;
    while already.len() < length {
        let mut chunk = vec![0u8; length - already.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside the body");
        }
        already.extend_from_slice(&chunk[..n]);
    }
    Ok(already)
}

pub async fn write_all<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, text: &str) -> Result<()> {
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await?;
    Ok(())
}
