//! A stand-in "apiserver" on the spoke side for what the test clusters cannot do (they have no kubelet) or a
//! real apiserver never does: it answers upgrades like exec does, refuses some, redirects where it is told
//! (`/redirect?status=307&location=...`), never answers `/hang/...`, and records every request it receives
//! and every unanswered one dropped.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub impersonate_user: Option<String>,
}

pub struct EchoBackend {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub token: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Paths of `/hang/...` requests dropped before an answer (the connection to the client closed).
    pub dropped: Arc<Mutex<Vec<String>>>,
}

impl EchoBackend {
    pub async fn start() -> Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).map_err(anyhow::Error::msg)?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let (recorded, unanswered) = (seen.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (recorded, unanswered) = (recorded.clone(), unanswered.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (recorded, unanswered) = (recorded.clone(), unanswered.clone());
                        async move {
                            if req.uri().path().starts_with("/hang/") {
                                record(&req, &recorded);
                                let _dropped = OnDrop(req.uri().path().to_string(), unanswered);
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, Infallible>(answer(req, &recorded))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, ca_pem: cert.cert.pem(), token: "echo-spoke-token".into(), seen, dropped })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn dropped(&self) -> Vec<String> {
        self.dropped.lock().unwrap().clone()
    }

    /// A kubeconfig with which a tunnel-client reaches this backend as if it were its apiserver.
    pub fn kubeconfig(&self) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: echo\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: echo\n  context: {{cluster: echo, user: echo}}\ncurrent-context: echo\nusers:\n- name: echo\n  user:\n    token: {}\n",
            self.addr.port(),
            self.token
        )
    }
}

/// Records `path` as dropped when it goes.
struct OnDrop(String, Arc<Mutex<Vec<String>>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.1.lock().unwrap().push(std::mem::take(&mut self.0));
    }
}

fn record(req: &Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Seen {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    let record = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        authorization: header("authorization"),
        impersonate_user: header("impersonate-user"),
    };
    seen.lock().unwrap().push(record.clone());
    record
}

/// The value of `name` in the request's query, percent-decoded.
fn query_value(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

fn answer(mut req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let record = record(&req, seen);
    let wants_upgrade = req.headers().contains_key("upgrade");
    match (record.path.as_str(), wants_upgrade) {
        ("/exec", true) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                // Echo every byte back, upper-cased, so the test can tell the reply from its own bytes.
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            });
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert("connection", "Upgrade".parse().unwrap());
            response.headers_mut().insert("upgrade", "SPDY/3.1".parse().unwrap());
            response
        }
        ("/redirect", _) => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"redirected")));
            *response.status_mut() = query_value(&req, "status")
                .and_then(|s| s.parse().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            if let Some(location) = query_value(&req, "location") {
                response.headers_mut().insert("location", location.parse().unwrap());
            }
            response
        }
        ("/refuse", _) => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"refused","reason":"Forbidden","code":403}"#,
            )));
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
        _ => {
            let body = serde_json::json!({ "path": record.path, "user": record.impersonate_user }).to_string();
            Response::new(Full::new(Bytes::from(body)))
        }
    }
}
