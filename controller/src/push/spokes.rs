//! Clients for the spokes, through the hub's proxy: one per (cluster, push namespace), each acting as that
//! namespace's push identity (user `tether:push:<namespace>`, group `tether:pushers`) with the controller's
//! own credentials, so the hub authorizes the push as that identity and the spoke's RBAC decides what it
//! may do there. Also what each spoke serves (discovery), resolved kind by kind and remembered.
//!
//! The clients differ only by path and identity, so they share their connections to the proxy: one pool
//! for requests and one for watches. The proxy then sees as many connections as requests in flight and
//! watches open, not one or more per cluster, and an idle cluster costs no connection. Nor does it hold a
//! client: each has a request queue of its own (about 10 KiB, most of a cluster's cost once its objects are
//! applied), so a request client lives for one pass and a watch client as long as its watch.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use tether_api::push::{push_user, PUSHERS_GROUP};
use tower::ServiceBuilder;

use crate::{Error, Result};

/// How the controller reaches the proxy.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The proxy's base URL; a cluster is at `<url>/clusters/<name>`.
    pub url: http::Uri,
    /// The CA certificates (DER) the proxy's serving certificate is checked against.
    pub ca: Vec<Vec<u8>>,
    /// The controller's bearer token, re-read by the client as it rotates.
    pub token_file: PathBuf,
    /// Deadline of each request (watches excepted).
    pub timeout: Duration,
}

type Pool = hyper_util::client::legacy::Client<TimeoutConnector<HttpsConnector<HttpConnector>>, kube::client::Body>;

/// Idle connections kept to the proxy per pool, and for how long: enough for the requests of the
/// deliveries reconciled at once; more are opened as needed and closed when idle.
const IDLE_CONNECTIONS: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection pool to the proxy; `read_timeout` bounds every wait for the proxy's next bytes.
fn pool(settings: &ProxySettings, read_timeout: Option<Duration>) -> Result<Pool> {
    let mut config = kube::Config::new(settings.url.clone());
    config.root_cert = Some(settings.ca.clone());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(10))));
    connector.set_read_timeout(read_timeout);
    connector.set_write_timeout(Some(settings.timeout));
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        .build(connector))
}

/// A resolved kind: how to address it and whether it is namespaced.
#[derive(Debug, Clone)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Why a kind could not be resolved.
#[derive(Debug)]
pub enum Resolve {
    /// The spoke does not serve it (its group/version, or the kind within it).
    Unknown,
    /// Asking failed (the tunnel is down, a timeout, a refusal): try again later.
    Failed(kube::Error),
}

/// A bound on the kinds remembered: beyond it they are dropped wholesale (asked again on use), so a hub
/// with many clusters never grows without limit.
const MAX_KINDS: usize = 16384;

#[derive(Debug, Clone, Copy)]
enum Use {
    Requests,
    Watches,
}

pub struct Spokes {
    settings: ProxySettings,
    requests: Pool,
    watches: Pool,
    kinds: Mutex<HashMap<(String, GroupVersionKind), Kind>>,
}

impl Spokes {
    pub fn new(settings: ProxySettings) -> Result<Self> {
        Ok(Self {
            requests: pool(&settings, Some(settings.timeout))?,
            // A quiet watch sends nothing for minutes; the apiserver ends it after its own timeout.
            watches: pool(&settings, None)?,
            settings,
            kinds: Default::default(),
        })
    }

    /// A client of `cluster` acting as the push identity of `namespace`, each request bounded by the
    /// timeout.
    pub fn client(&self, cluster: &str, namespace: &str) -> Result<kube::Client> {
        self.build(cluster, namespace, Use::Requests)
    }

    /// The same for watches: no read timeout (a quiet watch sends nothing for minutes; the apiserver ends
    /// it after its own timeout).
    pub fn watch_client(&self, cluster: &str, namespace: &str) -> Result<kube::Client> {
        self.build(cluster, namespace, Use::Watches)
    }

    fn build(&self, cluster: &str, namespace: &str, purpose: Use) -> Result<kube::Client> {
        let base = self.settings.url.to_string();
        let url = format!("{}/clusters/{cluster}", base.trim_end_matches('/'));
        let url: http::Uri =
            url.parse().map_err(|e| Error::Config { flag: "--proxy-url", reason: format!("{url}: {e}") })?;
        let mut config = kube::Config::new(url);
        config.auth_info.token_file = Some(self.settings.token_file.display().to_string());
        config.auth_info.impersonate = Some(push_user(namespace));
        config.auth_info.impersonate_groups = Some(vec![PUSHERS_GROUP.to_string()]);
        // No client-side retries: an unreachable cluster is the delivery's to retry (it says Pending
        // meanwhile), not each request's.
        let pool = match purpose {
            Use::Requests => self.requests.clone(),
            Use::Watches => self.watches.clone(),
        };
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(tower::BoxError::from)
            .service(pool);
        Ok(kube::Client::new(service, "default"))
    }

    /// What `cluster` serves for `gvk`, asked once per kind and remembered until [`Spokes::forget`].
    pub async fn kind(&self, client: &kube::Client, cluster: &str, gvk: &GroupVersionKind) -> Result<Kind, Resolve> {
        let key = (cluster.to_string(), gvk.clone());
        if let Some(kind) = self.kinds.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(kind.clone());
        }
        let (resource, capabilities) = match kube::discovery::pinned_kind(client, gvk).await {
            Ok(found) => found,
            Err(kube::Error::Discovery(_)) => return Err(Resolve::Unknown),
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(Resolve::Unknown),
            Err(e) => return Err(Resolve::Failed(e)),
        };
        let kind = Kind { resource, namespaced: namespaced(&capabilities) };
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.len() >= MAX_KINDS {
            kinds.clear();
        }
        kinds.insert(key, kind.clone());
        Ok(kind)
    }

    /// Forgets what `cluster` serves (a kind it refused as unknown may be served after a CRD appears).
    pub fn forget(&self, cluster: &str) {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner()).retain(|(c, _), _| c != cluster);
    }
}

fn namespaced(capabilities: &ApiCapabilities) -> bool {
    matches!(capabilities.scope, Scope::Namespaced)
}

/// The group, version and kind of an object's `apiVersion` and `kind`.
pub fn gvk(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}
