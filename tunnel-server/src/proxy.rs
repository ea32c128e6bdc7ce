//! The hub's HTTPS endpoint: `https://HUB/clusters/<cluster>/<Kubernetes API path>`.
//! Order of checks: authenticate → route → impersonation → authorize → cluster known → tunnel → forward.
pub mod auth;
mod failures;
mod forward;
pub mod identity;
mod redirect;
pub mod route;
mod status;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use metrics::{counter, histogram};
use tether_runtime::listener::{self, Https, Limits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{Attributes, AuthSettings, HubAuth, KubeReviews, Reviews};
pub use forward::ForwardSettings;
use identity::{Impersonation, UserInfo};
pub use status::ProxyError;

use crate::clusters::KnownClusters;
use crate::metrics as m;
use crate::registry::Registry;

pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub struct Proxy {
    pub registry: Arc<Registry>,
    pub auth: HubAuth,
    pub clusters: KnownClusters,
    pub forward: ForwardSettings,
    /// Timeouts, connection and head limits of the listener.
    pub limits: Limits,
    request_ids: AtomicU64,
}

impl Proxy {
    pub fn new(
        registry: Arc<Registry>,
        auth: HubAuth,
        clusters: KnownClusters,
        forward: ForwardSettings,
        limits: Limits,
    ) -> Self {
        Self { registry, auth, clusters, forward, limits, request_ids: AtomicU64::new(1) }
    }

    /// Serves HTTPS until `shutdown`; connections then close gracefully, finishing their current requests.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) {
        let https = Https {
            name: "proxy",
            limits: self.limits.clone(),
            metrics: Some(m::PROXY_LISTENER),
            refusal: status::too_many_connections,
        };
        listener::serve_https(https, listener, tls, shutdown, move |tls, peer| {
            let proxy = self.clone();
            // The client certificate, if any, was verified against the hub's client CA in the handshake.
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| tether_certs::kube_user_of(leaf.as_ref()).ok())
                .map(|(username, groups)| Arc::new(user_from_cert(username, groups)));
            hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                let cert_user = cert_user.clone();
                // Boxed: hyper keeps a stream's task as large as its service future for as long as the
                // response streams, and a watch's streams for hours; a box is freed at the response head.
                let handled = Box::pin(async move { proxy.handle(request, cert_user, peer.ip()).await });
                async move { Ok::<_, Infallible>(handled.await) }
            })
        })
        .await
    }

    /// Answers one request; `source` is the caller's address (failed authentication is limited per source).
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        cert_user: Option<Arc<UserInfo>>,
        source: IpAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut cluster = None;
        let response = match self.try_handle(request, cert_user, source, &mut cluster).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "refused");
                error.into_response()
            }
        };
        // Unknown names would let any caller grow the label set: only routed clusters are labelled.
        let cluster = cluster.unwrap_or_else(|| "-".to_string());
        let code = response.status().as_u16().to_string();
        counter!(m::REQUESTS, "cluster" => cluster.clone(), "code" => code.clone()).increment(1);
        histogram!(m::REQUEST_DURATION, "cluster" => cluster, "code" => code).record(started.elapsed().as_secs_f64());
        response
    }

    async fn try_handle(
        &self,
        request: Request<Incoming>,
        cert_user: Option<Arc<UserInfo>>,
        source: IpAddr,
        routed: &mut Option<String>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let caller = self.authenticate(&request, cert_user, source).await?;
        let route = route::parse(request.uri()).map_err(|e| match e {
            route::RouteError::NotClusterPath => ProxyError::NotFound(e.to_string()),
            _ => ProxyError::BadRequest(e.to_string()),
        })?;
        let user = self.apply_impersonation(&caller, request.headers()).await?;
        let verb = verb_of(request.method())?;
        if !self.auth.allowed(&user, &Attributes::cluster_proxy(&route.cluster, verb)).await? {
            return Err(ProxyError::Forbidden(format!(
                "managedclusters.tether.io \"{}\" is forbidden: User \"{}\" cannot {verb} resource \"managedclusters/proxy\" in API group \"tether.io\" on the hub",
                route.cluster, user.username
            )));
        }
        if !self.clusters.contains(&route.cluster) {
            return Err(ProxyError::NotFound(format!("managedclusters.tether.io \"{}\" not found", route.cluster)));
        }
        *routed = Some(route.cluster.clone());
        let tunnel = self.registry.pick(&route.cluster).ok_or_else(|| ProxyError::NoTunnel(route.cluster.clone()))?;
        let request_id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        forward::forward(tunnel, request, &route.path_and_query, &user, request_id, &self.forward).await
    }

    async fn authenticate(
        &self,
        request: &Request<Incoming>,
        cert_user: Option<Arc<UserInfo>>,
        source: IpAddr,
    ) -> Result<Arc<UserInfo>, ProxyError> {
        if let Some(user) = cert_user {
            return Ok(user);
        }
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ProxyError::Unauthorized)?;
        self.auth.authenticate_token(token, source).await?.ok_or(ProxyError::Unauthorized)
    }

    /// Incoming `Impersonate-*` headers are honoured only when the hub allows the caller every part of
    /// them; otherwise the request is refused (as the apiserver itself does), never forwarded half-checked.
    async fn apply_impersonation(
        &self,
        caller: &Arc<UserInfo>,
        headers: &http::HeaderMap,
    ) -> Result<UserInfo, ProxyError> {
        let wanted = Impersonation::from_headers(headers).map_err(ProxyError::BadRequest)?;
        if self.auth.is_push_controller(caller) {
            return identity::push_identity(wanted).map_err(ProxyError::Forbidden);
        }
        let Some(wanted) = wanted else {
            return Ok(caller.as_ref().clone());
        };
        let mut checks = Vec::new();
        if let Some(user) = &wanted.user {
            // A ServiceAccount is impersonated as the namespaced object, as the apiserver checks it.
            checks.push(match user.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
                Some((namespace, name)) => {
                    Attributes { namespace: namespace.into(), ..Attributes::impersonate("serviceaccounts", "", name) }
                }
                None => Attributes::impersonate("users", "", user),
            });
        }
        checks.extend(wanted.groups.iter().map(|g| Attributes::impersonate("groups", "", g)));
        for (key, values) in &wanted.extra {
            checks.extend(values.iter().map(|v| Attributes::impersonate("userextras", key, v)));
        }
        if let Some(uid) = &wanted.uid {
            checks.push(Attributes::impersonate("uids", "", uid));
        }
        for check in &checks {
            if !self.auth.allowed(caller, check).await? {
                return Err(ProxyError::Forbidden(format!(
                    "User \"{}\" cannot impersonate {} \"{}\" on the hub",
                    caller.username, check.resource, check.name
                )));
            }
        }
        Ok(wanted.into_user())
    }
}

fn user_from_cert(username: String, mut groups: Vec<String>) -> UserInfo {
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    UserInfo { username, uid: String::new(), groups, extra: Default::default() }
}

/// The verb the hub authorizes, from the HTTP method, as the apiserver maps it for the proxy subresource.
fn verb_of(method: &Method) -> Result<&'static str, ProxyError> {
    Ok(match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return Err(ProxyError::MethodNotAllowed(method.to_string())),
    })
}
