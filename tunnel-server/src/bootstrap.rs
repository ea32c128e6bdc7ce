//! Bootstrap of spokes that hold only a token (manual registration). A client dials with ALPN
//! `tether-bootstrap/1` and no client certificate, sends one [`BootstrapRequest`], and gets a certificate
//! request created on the hub for it; the controller (or a person) approves and signs it. This is the contract
//! with the controller side:
//!
//! - **Token** `<id>.<secret>`: 6 and 16 characters of `[a-z0-9]`. Stored only hashed, in Secret
//!   `tether-bootstrap-<id>` of the lease namespace (`--lease-namespace`), type `tether.io/bootstrap-token`,
//!   data `cluster`, `token-hash` (lowercase hex SHA-256 of the whole token), `expiration` (RFC 3339).
//!   Single use: the Secret is deleted, with preconditions on its uid and resourceVersion, when a request
//!   passes every check; a delete that finds the Secret gone or changed refuses the request as spent (so two
//!   clients racing with one token cannot both win).
//! - **Certificate request**: a `certificates.k8s.io/v1` CSR named after the token,
//!   `tether-<cluster>-<16 hex>` ([`token_csr_name`]: a SHA-256 of the whole token; renewals get
//!   `tether-<cluster>-<8 random hex>`), signer `tether.io/spoke-client`, usages digital signature, key
//!   encipherment, client auth; label and annotation `tether.io/cluster=<cluster>`, annotation
//!   `tether.io/requested-via=bootstrap-token`. Its name goes to the client at once (`Pending`);
//!   `status.certificate` goes to it once set (`Issued`); a `Denied` or `Failed` condition refuses it.
//! - **Order**: request well-formed, cluster name valid; then either `resume` (the CSR exists, carries the
//!   cluster's label and the byte-identical request: no token needed, a certificate is useless without the
//!   key) or the token (format, Secret, hash compared in constant time, expiration, cluster) and the CSR
//!   (verifies, names the cluster, key strong enough). Nothing is written before all of it passed. For every
//!   token the hub GETs both its Secret and the request it names, so unknown ids, wrong secrets and spent
//!   tokens cost the same; a token whose request exists with this byte-identical CSR resumes it (the client
//!   lost the connection before it learned the request's name).
//! - **Bounds**: at most `--bootstrap-max-connections` bootstrap connections at once (past it:
//!   [`Code::Busy`]) and `--bootstrap-rate` attempts per client address (IPv6: per /64) and minute (past it:
//!   [`Code::RateLimited`]); tunnels of one cluster file at most `--renewal-rate` renewal requests an hour.
//!   Until a peer is verified its connection may open one stream and send [`UNAUTHENTICATED_WINDOW`] bytes
//!   ahead of what the hub read. The wait for approval ends after `--bootstrap-wait`, when the connection
//!   closes, or when the hub shuts down.
//! - **Answers**: only answers that cannot change are `Refused` (the client gives up). A wait that ends
//!   without an answer, and any error of the hub apiserver (unreachable, timeout, a 5xx), close the
//!   connection with [`Code::Abandoned`]: the client tries again, resuming its request.
//!
//! Refusals are logged with the client address and cluster (never the token) and counted in
//! `tether_server_bootstrap_total{outcome}`.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use metrics::counter;
use tether_proto::{BootstrapRequest, BootstrapResponse, Code, BOOTSTRAP_VERSION, MAX_BOOTSTRAP_FRAME};
use tether_runtime::transport::code;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::leases::CLUSTER_LABEL;
use crate::metrics as m;

// The contract with the controller, from the crate both build on.
pub use tether_api::csr::{
    REQUESTED_VIA_ANNOTATION, SIGNER_NAME, USAGES as CSR_USAGES, VIA_BOOTSTRAP_TOKEN as REQUESTED_VIA_TOKEN,
    VIA_RENEWAL as REQUESTED_VIA_RENEWAL,
};
pub use tether_api::token::{SECRET_PREFIX as TOKEN_SECRET_PREFIX, SECRET_TYPE as TOKEN_SECRET_TYPE};

/// How much a peer not verified yet (every bootstrap connection; a tunnel before its certificate is
/// checked) may send ahead of what the hub has read, over all its streams: one bootstrap request frame.
pub const UNAUTHENTICATED_WINDOW: u64 = 4 + MAX_BOOTSTRAP_FRAME as u64;
/// How long one look-up on the hub apiserver may take before the client is told to try again.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client gets to read the final answer and close the connection itself.
const LINGER: Duration = Duration::from_secs(5);
const UNKNOWN_TOKEN: &str = "unknown or spent bootstrap token";

#[derive(Debug, Clone)]
pub struct BootstrapSettings {
    /// Where token Secrets live (the lease namespace).
    pub namespace: String,
    /// Longest wait for a certificate request to be approved and signed, per connection.
    pub wait: Duration,
    /// Attempts per client address and minute; 0 for no limit.
    pub rate: u32,
    /// Bootstrap connections served at once.
    pub max_connections: u32,
    /// Renewal certificate requests per cluster and hour; 0 for no limit.
    pub renewal_rate: u32,
}

/// Why a request is refused: the reason the client is told and the metric's outcome label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub outcome: &'static str,
    pub reason: String,
}

impl Refusal {
    fn new(outcome: &'static str, reason: impl Into<String>) -> Self {
        Self { outcome, reason: reason.into() }
    }
}

/// How one bootstrap connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Issued(String),
    Refused(Refusal),
    /// No answer (a hub error, the wait is over, shutdown): the connection is closed and the client retries.
    Abandoned {
        outcome: &'static str,
        reason: String,
    },
    /// Over a limit: closed (reset) with [`Code::RateLimited`], and the client waits longer before it tries
    /// again.
    RateLimited(String),
}

impl Outcome {
    /// Logs the outcome (the connection's span names the client address).
    fn logged(self, cluster: Option<&str>) -> Self {
        let cluster = cluster.unwrap_or("-");
        match &self {
            Outcome::Issued(_) => info!(%cluster, "bootstrap certificate issued"),
            Outcome::Refused(r) => warn!(%cluster, reason = %r.reason, "bootstrap refused"),
            Outcome::Abandoned { reason, .. } => info!(%cluster, %reason, "bootstrap ended without an answer"),
            Outcome::RateLimited(reason) => warn!(%cluster, %reason, "bootstrap refused for now"),
        }
        self
    }
}

/// Checks the CSR a client sends with its token: it verifies, its key is accepted, and it names `cluster`.
pub fn check_csr(csr_pem: &str, cluster: &str) -> Result<(), Refusal> {
    match tether_certs::check_spoke_csr(csr_pem, cluster) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            Err(Refusal::new("bad_csr", "certificate request refused: it must name the cluster as its common name"))
        }
        Err(e) => Err(Refusal::new("bad_csr", format!("certificate request refused: {e}"))),
    }
}

/// Checks a request's shape before anything is looked up.
pub fn check_request(request: &BootstrapRequest) -> Result<(), Refusal> {
    if request.version != BOOTSTRAP_VERSION {
        return Err(Refusal::new(
            "malformed",
            format!(
                "bootstrap protocol version {} is not supported, this hub speaks {BOOTSTRAP_VERSION}",
                request.version
            ),
        ));
    }
    tether_certs::validate_cluster_name(&request.cluster)
        .map_err(|e| Refusal::new("invalid_cluster", e.to_string()))?;
    if request.resume.is_none() && request.token.is_none() {
        return Err(Refusal::new("malformed", "a bootstrap request needs a token or a certificate request to resume"));
    }
    Ok(())
}

/// Checks that the CSR a client asks to resume is the one it created: same cluster, signer and request.
pub fn check_resume(csr: &CertificateSigningRequest, cluster: &str, csr_pem: &str) -> Result<(), Refusal> {
    let name = csr.metadata.name.as_deref().unwrap_or_default();
    let labelled = csr.metadata.labels.as_ref().and_then(|l| l.get(CLUSTER_LABEL)).map(String::as_str);
    if labelled != Some(cluster) || csr.spec.signer_name != SIGNER_NAME || csr.spec.request.0 != csr_pem.as_bytes() {
        return Err(Refusal::new("resume_mismatch", format!("certificate request {name} is not this client's")));
    }
    Ok(())
}

/// Where a certificate request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    Waiting,
    Issued(String),
    Refused(Refusal),
}

/// A CSR's state: a `Denied` or `Failed` condition refuses it (even with a certificate), a non-empty
/// `status.certificate` issues it, anything else waits.
pub fn csr_state(csr: &CertificateSigningRequest) -> CsrState {
    let name = csr.metadata.name.as_deref().unwrap_or_default();
    let status = csr.status.as_ref();
    for condition in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        let outcome = match condition.type_.as_str() {
            "Denied" => "denied",
            "Failed" => "failed",
            _ => continue,
        };
        // v1 defaults an empty status to True.
        if !(condition.status.is_empty() || condition.status == "True") {
            continue;
        }
        let why = condition.message.as_deref().or(condition.reason.as_deref()).unwrap_or("no reason given");
        let reason = format!("certificate request {name} {}: {why}", condition.type_.to_lowercase());
        return CsrState::Refused(Refusal::new(outcome, reason));
    }
    match status.and_then(|s| s.certificate.as_ref()).filter(|c| !c.0.is_empty()) {
        None => CsrState::Waiting,
        Some(certificate) => match String::from_utf8(certificate.0.clone()) {
            Ok(pem) => CsrState::Issued(pem),
            Err(_) => {
                CsrState::Refused(Refusal::new("failed", format!("certificate request {name}: certificate is not PEM")))
            }
        },
    }
}

/// The certificate request the hub creates for a checked bootstrap or renewal request; `via` is
/// [`REQUESTED_VIA_TOKEN`] or [`REQUESTED_VIA_RENEWAL`].
pub fn csr_object(name: &str, cluster: &str, csr_pem: &str, via: &str) -> CertificateSigningRequest {
    let labels = BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())]);
    let annotations = BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
        (REQUESTED_VIA_ANNOTATION.to_string(), via.to_string()),
    ]);
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: SIGNER_NAME.to_string(),
            usages: Some(CSR_USAGES.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

/// `tether-<cluster>-<8 hex>`.
pub fn csr_name(cluster: &str, random: u32) -> String {
    format!("tether-{cluster}-{random:08x}")
}

/// Serves bootstrap connections: shared by every connection of the endpoint.
pub struct Bootstrap {
    client: Option<kube::Client>,
    settings: BootstrapSettings,
    limiter: Mutex<RateLimiter<IpAddr>>,
    renewals: Mutex<RateLimiter<String>>,
    connections: Arc<Semaphore>,
}

impl Bootstrap {
    /// Without a hub client every bootstrap request is refused ("bootstrap not available").
    pub fn new(client: Option<kube::Client>, settings: BootstrapSettings) -> Self {
        let limiter = Mutex::new(RateLimiter::new(settings.rate, Duration::from_secs(60)));
        let renewals = Mutex::new(RateLimiter::new(settings.renewal_rate, Duration::from_secs(3600)));
        let connections = Arc::new(Semaphore::new(settings.max_connections as usize));
        Self { client, settings, limiter, renewals, connections }
    }

    /// Runs one bootstrap connection to its end: one request, its answers, then the connection is closed.
    pub async fn serve(self: Arc<Self>, connection: quinn::Connection, shutdown: CancellationToken) {
        // Checked before the rate limit: a client turned away for the hub's load keeps its address's budget.
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            counter!(m::BOOTSTRAPS, "outcome" => "busy").increment(1);
            // Not a warning per connection: a flood of them would flood the log. The counter shows it.
            debug!(max = self.settings.max_connections, "bootstrap refused: --bootstrap-max-connections reached");
            connection.close(code(Code::Busy), b"too many bootstrap connections");
            return;
        };
        let key = client_key(connection.remote_address().ip());
        let refused_for = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            (!limiter.allow(key, now)).then(|| limiter.wait(&key, now))
        };
        if let Some(wait) = refused_for {
            counter!(m::BOOTSTRAPS, "outcome" => "rate_limited").increment(1);
            warn!(retry_in_ms = wait.as_millis() as u64, "bootstrap refused: too many attempts from this address");
            let reason = tether_proto::codes::retry_reason("too many bootstrap attempts", wait);
            connection.close(code(Code::RateLimited), reason.as_bytes());
            return;
        }
        let (mut send, mut recv) = match tokio::time::timeout(REQUEST_TIMEOUT, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return debug!(error = %e, "bootstrap connection closed before its request"),
            Err(_) => {
                counter!(m::BOOTSTRAPS, "outcome" => "no_request").increment(1);
                connection.close(code(Code::Abandoned), b"no bootstrap request");
                return;
            }
        };
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Err(_) => Outcome::Abandoned { outcome: "no_request", reason: "no bootstrap request".into() },
            Ok(Err(refusal)) => Outcome::Refused(refusal).logged(None),
            Ok(Ok(request)) => {
                self.answer(&request, &connection, &mut send, &shutdown).await.logged(Some(&request.cluster))
            }
        };
        let (label, answer) = match outcome {
            Outcome::Issued(certificate_pem) => ("issued", BootstrapResponse::Issued { certificate_pem }),
            Outcome::Refused(refusal) => (refusal.outcome, BootstrapResponse::Refused { reason: refusal.reason }),
            Outcome::Abandoned { outcome, reason } => {
                counter!(m::BOOTSTRAPS, "outcome" => outcome).increment(1);
                connection.close(code(Code::Abandoned), reason.as_bytes());
                return;
            }
            Outcome::RateLimited(reason) => {
                counter!(m::BOOTSTRAPS, "outcome" => "rate_limited").increment(1);
                connection.close(code(Code::RateLimited), reason.as_bytes());
                return;
            }
        };
        counter!(m::BOOTSTRAPS, "outcome" => label).increment(1);
        if write(&mut send, &answer).await.is_ok() && send.finish().is_ok() {
            // The client closes once it has read the answer; closing first could discard it.
            let _ = tokio::time::timeout(LINGER, connection.closed()).await;
        }
        connection.close(code(Code::Normal), b"bootstrap done");
    }

    /// Everything after a well-formed request was read: checks, the certificate request, `Pending`, the wait.
    async fn answer(
        &self,
        request: &BootstrapRequest,
        connection: &quinn::Connection,
        send: &mut quinn::SendStream,
        shutdown: &CancellationToken,
    ) -> Outcome {
        // Not cut short when the hub stops, nor after the look-ups when the client goes: between spending the
        // token and creating the certificate request nothing may interrupt.
        let (csrs, name) = match self.prepare(request, connection).await {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        self.wait_and_answer(&csrs, &name, &request.cluster, connection, send, shutdown).await
    }

    /// Tells the client the request's name, then waits for its certificate.
    async fn wait_and_answer(
        &self,
        csrs: &Api<CertificateSigningRequest>,
        name: &str,
        cluster: &str,
        connection: &quinn::Connection,
        send: &mut quinn::SendStream,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let name = name.to_string();
        info!(%cluster, csr = %name, "waiting for the certificate request to be approved and signed");
        if write(send, &BootstrapResponse::Pending { csr_name: name.clone() }).await.is_err() {
            return Outcome::Abandoned { outcome: "closed", reason: "client went away".into() };
        }
        tokio::select! {
            waited = tokio::time::timeout(self.settings.wait, wait_for_certificate(csrs, &name)) => {
                waited.unwrap_or_else(|_| Outcome::Abandoned {
                    outcome: "timeout",
                    reason: format!("certificate request {name} not signed yet"),
                })
            }
            _ = connection.closed() => Outcome::Abandoned { outcome: "closed", reason: "client went away".into() },
            _ = shutdown.cancelled() => Outcome::Abandoned { outcome: "shutdown", reason: "hub shutting down".into() },
        }
    }

    /// The checks in order, then the certificate request: created (token) or found (resume).
    async fn prepare(
        &self,
        request: &BootstrapRequest,
        connection: &quinn::Connection,
    ) -> Result<(Api<CertificateSigningRequest>, String), Outcome> {
        check_request(request).map_err(Outcome::Refused)?;
        let Some(client) = &self.client else {
            return Err(Outcome::Refused(Refusal::new("unavailable", "bootstrap not available")));
        };
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let name = match &request.resume {
            Some(name) => resume(&csrs, name, request, connection).await.map(|()| name.clone())?,
            None => self.create(client, &csrs, request, connection).await?,
        };
        Ok((csrs, name))
    }

    /// The token path: the token's Secret and the request it names, looked up together; every check; then
    /// the token is spent and the certificate request created (or this client's resumed).
    async fn create(
        &self,
        client: &kube::Client,
        csrs: &Api<CertificateSigningRequest>,
        request: &BootstrapRequest,
        connection: &quinn::Connection,
    ) -> Result<String, Outcome> {
        let cluster = &request.cluster;
        let token = Token::parse(request.token.as_deref().unwrap_or_default()).map_err(Outcome::Refused)?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.settings.namespace);
        let secret_name = token.secret_name();
        let name = token_csr_name(cluster, &token);
        let (secret, paid) =
            before_writing(connection, async { tokio::join!(secrets.get_opt(&secret_name), csrs.get_opt(&name)) })
                .await?;
        let (looked_up, found) = (secret.as_ref().map(Option::as_ref), paid.as_ref().map(Option::as_ref));
        match token_decision(looked_up, found, &token, cluster, &request.csr_pem, SystemTime::now()) {
            TokenDecision::Refuse(refusal) => return Err(Outcome::Refused(refusal)),
            TokenDecision::Retry(reason) => {
                // No answer is not a refusal: the client tries again.
                warn!(%cluster, %reason, "bootstrap look-up failed on the hub apiserver");
                return Err(Outcome::Abandoned { outcome: "error", reason: "the hub apiserver failed".into() });
            }
            TokenDecision::Resume => {
                // Spent already by this very client, which lost the connection before our `Pending`.
                info!(%cluster, csr = %name, "token already spent for this request: resuming it");
                return Ok(name);
            }
            TokenDecision::Spend => {}
        }
        let secret = secret.ok().flatten().expect("a token is spent only when its Secret was read");

        // Spent before anything is created: of two clients racing with one token only one deletes it.
        let preconditions = Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        };
        let params = DeleteParams { preconditions: Some(preconditions), ..Default::default() };
        match secrets.delete(&secret_name, &params).await {
            Ok(_) => {}
            Err(e) if is_gone_or_changed(&e) => {
                debug!(token_id = token.id, error = %e, "the bootstrap token was spent or changed meanwhile");
                return Err(Outcome::Refused(Refusal::new("spent", UNKNOWN_TOKEN)));
            }
            // Most likely not deleted: the client tries again with the token.
            Err(e) => return Err(hub_error("spending the bootstrap token", &e)),
        }
        info!(%cluster, token_id = token.id, "bootstrap token spent");

        // The token is gone: retry the create a few times rather than lose the client's only chance.
        create_csr(csrs, || name.clone(), cluster, &request.csr_pem, REQUESTED_VIA_TOKEN).await.map_err(|e| {
            let reason = format!("creating the certificate request failed ({e}); the token is spent");
            Outcome::Refused(Refusal::new("error", reason))
        })
    }

    /// Counts a renewal request against its cluster's budget; false when the budget is used up.
    fn renewal_allowed(&self, cluster: &str) -> bool {
        self.renewals.lock().unwrap_or_else(|e| e.into_inner()).allow(cluster.to_string(), Instant::now())
    }
}

/// Why creating a certificate request failed.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0} exists and is another client's request")]
    Taken(String),
}

/// Creates a certificate request under `name()` (asked again for each attempt), retrying a few times. A
/// request of that name that is this very one (an attempt whose answer was lost) counts as created.
async fn create_csr(
    csrs: &Api<CertificateSigningRequest>,
    name: impl Fn() -> String,
    cluster: &str,
    csr_pem: &str,
    via: &str,
) -> Result<String, CreateError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        let name = name();
        let error = match csrs.create(&PostParams::default(), &csr_object(&name, cluster, csr_pem, via)).await {
            Ok(_) => return Ok(name),
            Err(kube::Error::Api(status)) if status.code == 409 => match csrs.get_opt(&name).await {
                Ok(Some(csr)) if check_resume(&csr, cluster, csr_pem).is_ok() => return Ok(name),
                Ok(_) => return Err(CreateError::Taken(name)),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if attempt >= 3 {
            return Err(error.into());
        }
        warn!(%cluster, %error, "creating the certificate request failed; retrying");
        attempt += 1;
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// A delete refused because the object is gone (404) or is not the one read (409, preconditions): someone
/// else acted first. Anything else says nothing about whether it happened.
fn is_gone_or_changed(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404 || status.code == 409)
}

/// A look-up on the hub apiserver before anything is written, bounded by [`API_TIMEOUT`] and given up when
/// the client goes (nothing is lost: it tries again), so that a slow apiserver cannot make bootstrap slots
/// wait on clients long gone. Either way there is no answer.
async fn before_writing<T>(
    connection: &quinn::Connection,
    lookup: impl std::future::Future<Output = T>,
) -> Result<T, Outcome> {
    tokio::select! {
        looked_up = tokio::time::timeout(API_TIMEOUT, lookup) => looked_up.map_err(|_| Outcome::Abandoned {
            outcome: "api_timeout",
            reason: "the hub apiserver did not answer in time".into(),
        }),
        _ = connection.closed() => Err(Outcome::Abandoned { outcome: "closed", reason: "client went away".into() }),
    }
}

/// The resume path: the CSR must exist and be this client's.
async fn resume(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    request: &BootstrapRequest,
    connection: &quinn::Connection,
) -> Result<(), Outcome> {
    match before_writing(connection, csrs.get_opt(name)).await? {
        Ok(Some(csr)) => check_resume(&csr, &request.cluster, &request.csr_pem).map_err(Outcome::Refused),
        Ok(None) => Err(Outcome::Refused(Refusal::new("unknown_csr", format!("no certificate request {name}")))),
        Err(e) => Err(hub_error("reading the certificate request", &e)),
    }
}

/// Watches the CSR until it is issued, refused or deleted.
async fn wait_for_certificate(csrs: &Api<CertificateSigningRequest>, name: &str) -> Outcome {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(csrs.clone(), config).default_backoff().boxed();
    let mut listed = false;
    let deleted = || Outcome::Refused(Refusal::new("failed", format!("certificate request {name} was deleted")));
    while let Some(event) = events.next().await {
        let csr = match event {
            Ok(Event::Apply(csr) | Event::InitApply(csr)) => csr,
            Ok(Event::Delete(_)) => return deleted(),
            Ok(Event::Init) => {
                listed = false;
                continue;
            }
            Ok(Event::InitDone) if !listed => return deleted(),
            Ok(Event::InitDone) => continue,
            Err(e) => {
                // The stream backs off and re-lists by itself.
                debug!(csr = %name, error = %e, "watching the certificate request");
                continue;
            }
        };
        listed = true;
        match csr_state(&csr) {
            CsrState::Waiting => {}
            CsrState::Issued(pem) => return Outcome::Issued(pem),
            CsrState::Refused(refusal) => return Outcome::Refused(refusal),
        }
    }
    Outcome::Abandoned { outcome: "error", reason: "the certificate request watch ended".into() }
}

fn hub_error(what: &str, error: &kube::Error) -> Outcome {
    warn!(error = %error, "{what} failed");
    Outcome::Abandoned { outcome: "error", reason: format!("{what} failed on the hub") }
}

/// Reads one request; a malformed one is refused with the decoder's error.
async fn read_request(recv: &mut quinn::RecvStream) -> Result<BootstrapRequest, Refusal> {
    let malformed = |e: tether_proto::Error| Refusal::new("malformed", format!("malformed bootstrap request: {e}"));
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some((request, _)) = BootstrapRequest::decode(&buf).map_err(malformed)? {
            return Ok(request);
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) if buf.len() + n <= 4 + MAX_BOOTSTRAP_FRAME => buf.extend_from_slice(&chunk[..n]),
            Ok(Some(_)) => return Err(Refusal::new("malformed", "malformed bootstrap request: too long")),
            Ok(None) | Err(_) => return Err(Refusal::new("malformed", "malformed bootstrap request: truncated")),
        }
    }
}

async fn write(send: &mut quinn::SendStream, response: &BootstrapResponse) -> Result<(), quinn::WriteError> {
    let mut out = BytesMut::new();
    response.encode(&mut out);
    send.write_all(&out).await
}

mod limits;
mod renewal;
mod token;
pub use limits::{client_key, RateLimiter};
pub use renewal::check_renewal;
pub use token::{check_token, token_csr_name, token_decision, token_hash, Token, TokenDecision};

#[cfg(test)]
use token::constant_time_eq;
#[cfg(test)]
mod tests;
