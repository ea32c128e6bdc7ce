//! The local apiserver, called with this client's own credentials. Credentials never leave the spoke:
//! the hub's requests carry only `Impersonate-*` headers, which this identity may use and nothing else.
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tether_stream::http::RecvBody;

use crate::h2_pool::Pool;
use crate::policy::watch::PolicyHandle;
use crate::{Error, Result};

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Cheap to clone: every stream holds one, and an idle watch holds it for hours.
#[derive(Clone)]
pub struct Upstream(Arc<Inner>);

struct Inner {
    base: Uri,
    /// HTTP/2 where the apiserver offers it: thousands of watches share a few TCP connections.
    pooled: Arc<Pool<HttpsConnector<HttpConnector>, RecvBody>>,
    /// Upgrades (exec, attach, port-forward) need HTTP/1.1.
    upgrades: Client<HttpsConnector<HttpConnector>, RecvBody>,
    token: Arc<Token>,
    /// The same apiserver through kube, for the client's own calls (its version).
    kube: kube::Client,
    /// The apiserver's CA bundle (PEM), as configured; empty when the system roots are used.
    ca_bundle: Arc<str>,
    /// Whom the hub may act as here: maps the hub's `Impersonate-*` headers before anything is forwarded.
    policy: PolicyHandle,
}

impl Upstream {
    /// `streams_per_connection`: requests carried at once by one HTTP/2 connection to the apiserver; `policy`
    /// maps the identity of every request from the hub.
    pub async fn from_kubeconfig(
        path: Option<&PathBuf>,
        streams_per_connection: u32,
        policy: PolicyHandle,
    ) -> Result<Self> {
        let config = match path {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(Error::Kubeconfig)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(Error::Kubeconfig)?
            }
            None => kube::Config::incluster().map_err(Error::InCluster)?,
        };
        Self::from_config(config, streams_per_connection, policy)
    }

    pub(crate) fn from_config(config: kube::Config, streams_per_connection: u32, policy: PolicyHandle) -> Result<Self> {
        use secrecy::ExposeSecret;
        let ca_bundle: String = config.root_cert.iter().flatten().map(|der| pem_certificate(der)).collect();
        let kube = kube::Client::try_from(config.clone()).map_err(Error::UpstreamClient)?;
        let auth = &config.auth_info;
        let token = match (&auth.token, &auth.token_file) {
            (Some(token), _) => Token::fixed(token.expose_secret())?,
            (None, Some(file)) => Token::from_file(PathBuf::from(file))?,
            (None, None) => Token::None,
        };
        let identity = client_identity(auth)?;
        let mut roots = rustls::RootCertStore::empty();
        for der in config.root_cert.iter().flatten() {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|source| Error::UpstreamTls { what: "apiserver CA", source })?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let tls = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| Error::UpstreamTls { what: "client certificate", source })?,
            None => builder.with_no_client_auth(),
        };
        let connector = |http2: bool| {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.enforce_http(false);
            http.set_keepalive(Some(Duration::from_secs(30)));
            let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone()).https_or_http();
            if http2 {
                builder.enable_http1().enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        };
        let http2 = connector(true);
        let pooled = Pool::new(streams_per_connection as usize, move || {
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(http2.clone())
        });
        let upgrades = Client::builder(TokioExecutor::new()).build(connector(false));
        Ok(Self(Arc::new(Inner {
            base: config.cluster_url,
            pooled: Arc::new(pooled),
            upgrades,
            token: Arc::new(token),
            kube,
            ca_bundle: ca_bundle.into(),
            policy,
        })))
    }

    /// A kube client of the same apiserver and credentials.
    pub fn kube_client(&self) -> kube::Client {
        self.0.kube.clone()
    }

    /// What the hub reports about this cluster: the apiserver's version (empty when it does not answer in
    /// time) and its CA bundle.
    pub async fn describe(&self) -> (String, String) {
        let version = match tokio::time::timeout(Duration::from_secs(5), self.0.kube.apiserver_version()).await {
            Ok(Ok(info)) => info.git_version,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the spoke apiserver's version");
                String::new()
            }
            Err(_) => {
                tracing::warn!("the spoke apiserver did not tell its version in time");
                String::new()
            }
        };
        (version, self.0.ca_bundle.to_string())
    }

    /// Forwards one request from the hub. Failures reaching the apiserver become a 502 `Status`.
    pub async fn forward(&self, mut request: Request<RecvBody>) -> Response<Body> {
        if let Err(unsent) = self.prepare(&mut request) {
            return unsent.response();
        }
        match self.0.pooled.request(request).await {
            Ok(response) => response.map(|b| b.map_err(Into::into).boxed_unsync()),
            Err(e) => unreachable(e),
        }
    }

    /// Forwards an upgrade request (exec, attach, port-forward) over HTTP/1.1. On `101 Switching Protocols`
    /// also returns the apiserver's side of the upgraded connection.
    pub async fn upgrade(&self, mut request: Request<RecvBody>) -> (Response<Body>, Option<OnUpgrade>) {
        if let Err(unsent) = self.prepare(&mut request) {
            return (unsent.response(), None);
        }
        let mut response = match self.0.upgrades.request(request).await {
            Ok(response) => response,
            Err(e) => return (unreachable(e), None),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return (response.map(|b| b.map_err(Into::into).boxed_unsync()), None);
        }
        let upgraded = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        let empty = http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync();
        (Response::from_parts(parts, empty), Some(upgraded))
    }

    /// Points the request at the apiserver with this client's credentials and the identity the policy maps
    /// the hub's to; a refused identity is answered here (403), never forwarded.
    fn prepare(&self, request: &mut Request<RecvBody>) -> Result<(), Unsent> {
        self.0.policy.apply(request.headers_mut()).map_err(Unsent::Refused)?;
        let bad_gateway = Unsent::BadGateway;
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let base = self.0.base.to_string();
        let uri = format!("{}{}", base.trim_end_matches('/'), path);
        *request.uri_mut() = uri.parse().map_err(|_| bad_gateway("invalid request path".into()))?;
        let headers = request.headers_mut();
        headers.remove(header::HOST);
        headers.remove(header::AUTHORIZATION);
        if let Some(value) = self.0.token.header().map_err(|e| bad_gateway(e.to_string()))? {
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(())
    }
}

/// Why a request from the hub was answered here instead of forwarded.
enum Unsent {
    /// The identity policy refused the hub's identity.
    Refused(crate::policy::Refusal),
    BadGateway(String),
}

impl Unsent {
    fn response(self) -> Response<Body> {
        match self {
            Unsent::Refused(refusal) => {
                tracing::debug!(%refusal, "identity refused by the spoke's policy");
                let code = refusal.code();
                let reason = if code == StatusCode::FORBIDDEN { "Forbidden" } else { "ServiceUnavailable" };
                status_with_reason(code, reason, &refusal.to_string())
            }
            Unsent::BadGateway(reason) => status(StatusCode::BAD_GATEWAY, &reason),
        }
    }
}

fn unreachable(error: hyper_util::client::legacy::Error) -> Response<Body> {
    status(StatusCode::BAD_GATEWAY, &format!("spoke apiserver unreachable: {error}"))
}

/// The bearer token for the apiserver. A token file (projected ServiceAccount token) is re-read every
/// minute because the kubelet rotates it.
enum Token {
    None,
    Fixed(HeaderValue),
    File { path: PathBuf, cached: RwLock<(HeaderValue, Instant)> },
}

const TOKEN_REFRESH: Duration = Duration::from_secs(60);

impl Token {
    fn fixed(token: &str) -> Result<Self> {
        Ok(Self::Fixed(bearer(token)?))
    }

    fn from_file(path: PathBuf) -> Result<Self> {
        let value = read_token(&path)?;
        Ok(Self::File { path, cached: RwLock::new((value, Instant::now())) })
    }

    fn header(&self) -> Result<Option<HeaderValue>> {
        match self {
            Self::None => Ok(None),
            Self::Fixed(v) => Ok(Some(v.clone())),
            Self::File { path, cached } => {
                {
                    let guard = cached.read().unwrap_or_else(|e| e.into_inner());
                    if guard.1.elapsed() < TOKEN_REFRESH {
                        return Ok(Some(guard.0.clone()));
                    }
                }
                let value = read_token(path)?;
                *cached.write().unwrap_or_else(|e| e.into_inner()) = (value.clone(), Instant::now());
                Ok(Some(value))
            }
        }
    }
}

fn read_token(path: &PathBuf) -> Result<HeaderValue> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::UpstreamFile {
        what: "token file",
        path: path.clone(),
        source,
    })?;
    bearer(text.trim())
}

fn bearer(token: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Upstream("the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn client_identity(
    auth: &kube::config::AuthInfo,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use secrecy::ExposeSecret;
    let decode = |what: &'static str, data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|source| Error::UpstreamBase64 { what, source })
    };
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|source| Error::UpstreamFile { what, path: path.into(), source })
    };
    let cert = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => decode("client-certificate-data", data)?,
        (None, Some(path)) => read("client-certificate", path)?,
        (None, None) => return Ok(None),
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => decode("client-key-data", data.expose_secret())?,
        (None, Some(path)) => read("client-key", path)?,
        (None, None) => return Err(Error::Upstream("client certificate without a key")),
    };
    let chain = tether_runtime::tls::parse_certs(&cert).map_err(Error::UpstreamPem)?;
    let key =
        PrivateKeyDer::from_pem_slice(&key).map_err(|_| Error::Upstream("client key is not a PEM private key"))?;
    Ok(Some((chain, key)))
}

/// One DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

pub fn status(code: StatusCode, message: &str) -> Response<Body> {
    status_with_reason(code, "InternalError", message)
}

/// A Kubernetes `Status` with its `reason` (`Forbidden`, `ServiceUnavailable`, ...).
pub fn status_with_reason(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).map_err(|n| match n {}).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_become_pem_that_parses_back() {
        let now = std::time::SystemTime::now();
        let ca = tether_certs::CertificateAuthority::generate("ca", now, Duration::from_secs(60)).unwrap();
        let pem = pem_certificate(ca.cert_der());
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert_eq!(tether_certs::pem_to_der_certs(&pem).unwrap(), [ca.cert_der().to_vec()]);
    }

    #[test]
    fn bad_client_credentials_are_named_with_their_cause() {
        use std::error::Error as _;
        let auth = kube::config::AuthInfo {
            client_certificate_data: Some("not base64!".into()),
            client_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        let error = client_identity(&auth).unwrap_err();
        assert!(error.to_string().starts_with("spoke apiserver credentials: client-certificate-data: "), "{error}");
        assert!(error.source().is_some_and(|e| e.is::<base64::DecodeError>()), "{error:?}");

        let auth = kube::config::AuthInfo {
            client_certificate: Some("/nonexistent/cert.pem".into()),
            client_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        let error = client_identity(&auth).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("spoke apiserver credentials: client-certificate /nonexistent/cert.pem: "));
        let io = error.source().and_then(|e| e.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
        assert_eq!(io, Some(std::io::ErrorKind::NotFound), "{error:?}");
    }
}
