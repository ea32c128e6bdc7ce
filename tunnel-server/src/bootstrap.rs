//! Bootstrap of spokes that hold only a token (manual registration). A client dials with ALPN
//! `tether-bootstrap/1` and no client certificate, sends one [`BootstrapRequest`], and gets a certificate
//! request created on the hub for it; the controller (or a person) approves and signs it. This is the contract
//! with the controller side:
//!
//! - **Token** `<id>.<secret>`: 6 and 16 characters of `[a-z0-9]`. Stored only hashed, in Secret
//!   `tether-bootstrap-<id>` of the lease namespace (`--lease-namespace`), type `tether.io/bootstrap-token`,
//!   data `cluster`, `token-hash` (lowercase hex SHA-256 of the whole token), `expiration` (RFC 3339).
//!   Single use: the Secret is deleted, with preconditions on its uid and resourceVersion, when a request
//!   passes every check; a failed delete refuses the request as spent (so two clients racing with one token
//!   cannot both win).
//! - **Certificate request**: a `certificates.k8s.io/v1` CSR `tether-<cluster>-<8 hex>`, signer
//!   `tether.io/spoke-client`, usages digital signature, key encipherment, client auth; label and annotation
//!   `tether.io/cluster=<cluster>`, annotation `tether.io/requested-via=bootstrap-token`. Its name goes to
//!   the client at once (`Pending`); `status.certificate` goes to it once set (`Issued`); a `Denied` or
//!   `Failed` condition refuses it.
//! - **Order**: request well-formed, cluster name valid; then either `resume` (the CSR exists, carries the
//!   cluster's label and the byte-identical request: no token needed, a certificate is useless without the
//!   key) or the token (format, Secret, hash compared in constant time, expiration, cluster) and the CSR
//!   (verifies, names the cluster, key strong enough). Nothing is written before all of it passed. A token
//!   whose Secret is gone but which paid for a request with this byte-identical CSR resumes that request:
//!   the client lost the connection before it learned the request's name.
//! - **Bounds**: at most `--bootstrap-rate` attempts per client address (IPv6: per /64) and minute; the wait
//!   for approval ends after `--bootstrap-wait`, when the connection closes, or when the hub shuts down. A
//!   wait that ends without an answer closes the connection with [`ABANDONED_CODE`] (the client resumes
//!   later); only answers that cannot change are `Refused`.
//!
//! Refusals are logged with the client address and cluster (never the token) and counted in
//! `tether_server_bootstrap_total{outcome}`.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use metrics::counter;
use tether_proto::{BootstrapRequest, BootstrapResponse, BOOTSTRAP_VERSION, MAX_BOOTSTRAP_FRAME};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::leases::CLUSTER_LABEL;
use crate::metrics as m;

pub const SIGNER_NAME: &str = "tether.io/spoke-client";
pub const TOKEN_SECRET_TYPE: &str = "tether.io/bootstrap-token";
pub const TOKEN_SECRET_PREFIX: &str = "tether-bootstrap-";
pub const REQUESTED_VIA_ANNOTATION: &str = "tether.io/requested-via";
pub const REQUESTED_VIA_TOKEN: &str = "bootstrap-token";
pub const REQUESTED_VIA_RENEWAL: &str = "renewal";
pub const CSR_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// QUIC application error code of a bootstrap connection closed without an answer (the client tries again).
pub const ABANDONED_CODE: u32 = 6;
/// QUIC application error code of a bootstrap connection refused by the rate limit.
pub const RATE_LIMITED_CODE: u32 = 7;

const TOKEN_ID_LEN: usize = 6;
const TOKEN_SECRET_LEN: usize = 16;
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
}

impl Outcome {
    /// Logs the outcome (the connection's span names the client address).
    fn logged(self, cluster: Option<&str>) -> Self {
        let cluster = cluster.unwrap_or("-");
        match &self {
            Outcome::Issued(_) => info!(%cluster, "bootstrap certificate issued"),
            Outcome::Refused(r) => warn!(%cluster, reason = %r.reason, "bootstrap refused"),
            Outcome::Abandoned { reason, .. } => info!(%cluster, %reason, "bootstrap ended without an answer"),
        }
        self
    }
}

/// A well-formed bootstrap token. `Debug` shows the id only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub id: &'a str,
    full: &'a str,
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<'a> Token<'a> {
    /// Parses `<id>.<secret>`, 6 and 16 characters of `[a-z0-9]`.
    pub fn parse(token: &'a str) -> Result<Self, Refusal> {
        let malformed = || Refusal::new("malformed", "malformed bootstrap token");
        let (id, secret) = token.split_once('.').ok_or_else(malformed)?;
        let valid = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid(id, TOKEN_ID_LEN) || !valid(secret, TOKEN_SECRET_LEN) {
            return Err(malformed());
        }
        Ok(Self { id, full: token })
    }

    /// Name of the Secret that holds this token's hash.
    pub fn secret_name(&self) -> String {
        format!("{TOKEN_SECRET_PREFIX}{}", self.id)
    }
}

/// Lowercase hex SHA-256 of the whole token string, as stored in the Secret's `token-hash`.
pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `a == b`, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks a token against its Secret, in this order: the Secret is a live bootstrap token whose hash
/// matches (otherwise the same answer as a missing Secret), not expired at `now`, and for `cluster`.
pub fn check_token(secret: &Secret, token: &Token<'_>, cluster: &str, now: SystemTime) -> Result<(), Refusal> {
    let unknown = || Refusal::new("unknown_token", UNKNOWN_TOKEN);
    if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some() {
        return Err(unknown());
    }
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let field = |key: &str| data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok()).map(str::trim);
    let stored = field("token-hash").ok_or_else(unknown)?.to_ascii_lowercase();
    if !constant_time_eq(stored.as_bytes(), token_hash(token.full).as_bytes()) {
        return Err(unknown());
    }
    let expiration = field("expiration")
        .and_then(|e| e.parse::<Timestamp>().ok())
        .ok_or_else(|| Refusal::new("expired", "bootstrap token has no valid expiration"))?;
    if now >= SystemTime::from(expiration) {
        return Err(Refusal::new("expired", "bootstrap token expired"));
    }
    if field("cluster") != Some(cluster) {
        return Err(Refusal::new("wrong_cluster", "token is for another cluster"));
    }
    Ok(())
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

/// Attempts per client address: a token bucket of `rate` attempts, refilled at `rate` per minute.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    const PERIOD: Duration = Duration::from_secs(60);
    /// Above this many addresses, full buckets are dropped (they carry no state).
    const PRUNE_ABOVE: usize = 4096;

    pub fn new(rate: u32) -> Self {
        Self { rate, buckets: HashMap::new() }
    }

    /// Whether `ip` may attempt a bootstrap at `now`; counts the attempt if so.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let refill = |(tokens, at): (f64, Instant)| {
            (
                rate.min(tokens + now.saturating_duration_since(at).as_secs_f64() * rate / Self::PERIOD.as_secs_f64()),
                now,
            )
        };
        if self.buckets.len() > Self::PRUNE_ABOVE {
            self.buckets.retain(|_, bucket| refill(*bucket).0 < rate);
        }
        let bucket = self.buckets.entry(client_key(ip)).or_insert((rate, now));
        *bucket = refill(*bucket);
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }
}

/// The unit of rate limiting: an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

/// Serves bootstrap connections: shared by every connection of the endpoint.
pub struct Bootstrap {
    client: Option<kube::Client>,
    settings: BootstrapSettings,
    limiter: Mutex<RateLimiter>,
}

impl Bootstrap {
    /// Without a hub client every bootstrap request is refused ("bootstrap not available").
    pub fn new(client: Option<kube::Client>, settings: BootstrapSettings) -> Self {
        let limiter = Mutex::new(RateLimiter::new(settings.rate));
        Self { client, settings, limiter }
    }

    /// Runs one bootstrap connection to its end: one request, its answers, then the connection is closed.
    pub async fn serve(self: Arc<Self>, connection: quinn::Connection, shutdown: CancellationToken) {
        let ip = connection.remote_address().ip();
        let allowed = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).allow(ip, Instant::now());
        if !allowed {
            counter!(m::BOOTSTRAPS, "outcome" => "rate_limited").increment(1);
            warn!("bootstrap refused: too many attempts from this address");
            connection.close(RATE_LIMITED_CODE.into(), b"too many bootstrap attempts");
            return;
        }
        let (mut send, mut recv) = match tokio::time::timeout(REQUEST_TIMEOUT, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return debug!(error = %e, "bootstrap connection closed before its request"),
            Err(_) => {
                counter!(m::BOOTSTRAPS, "outcome" => "no_request").increment(1);
                connection.close(ABANDONED_CODE.into(), b"no bootstrap request");
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
                connection.close(ABANDONED_CODE.into(), reason.as_bytes());
                return;
            }
        };
        counter!(m::BOOTSTRAPS, "outcome" => label).increment(1);
        if write(&mut send, &answer).await.is_ok() && send.finish().is_ok() {
            // The client closes once it has read the answer; closing first could discard it.
            let _ = tokio::time::timeout(LINGER, connection.closed()).await;
        }
        connection.close(0u32.into(), b"bootstrap done");
    }

    /// Everything after a well-formed request was read: checks, the certificate request, `Pending`, the wait.
    async fn answer(
        &self,
        request: &BootstrapRequest,
        connection: &quinn::Connection,
        send: &mut quinn::SendStream,
        shutdown: &CancellationToken,
    ) -> Outcome {
        // Not cut short when the client goes or the hub stops: between spending the token and creating the
        // certificate request nothing may interrupt.
        let (csrs, name) = match self.prepare(request).await {
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
    async fn prepare(&self, request: &BootstrapRequest) -> Result<(Api<CertificateSigningRequest>, String), Outcome> {
        check_request(request).map_err(Outcome::Refused)?;
        let Some(client) = &self.client else {
            return Err(Outcome::Refused(Refusal::new("unavailable", "bootstrap not available")));
        };
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let name = match &request.resume {
            Some(name) => resume(&csrs, name, request).await.map(|()| name.clone())?,
            None => self.create(client, &csrs, request).await?,
        };
        Ok((csrs, name))
    }

    /// The token path: every check, then the token is spent and the certificate request created.
    async fn create(
        &self,
        client: &kube::Client,
        csrs: &Api<CertificateSigningRequest>,
        request: &BootstrapRequest,
    ) -> Result<String, Outcome> {
        let cluster = &request.cluster;
        let token = Token::parse(request.token.as_deref().unwrap_or_default()).map_err(Outcome::Refused)?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.settings.namespace);
        let secret_name = token.secret_name();
        let secret = match secrets.get_opt(&secret_name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                // Spent already: by this very client, if it lost the connection between the spending and our
                // `Pending`. Its request is then on the hub, byte for byte, and it resumes that one.
                return match paid_request(csrs, cluster, &request.csr_pem).await {
                    Some(name) => {
                        info!(%cluster, csr = %name, "token already spent for this request: resuming it");
                        Ok(name)
                    }
                    None => Err(Outcome::Refused(Refusal::new("unknown_token", UNKNOWN_TOKEN))),
                };
            }
            Err(e) => return Err(hub_error("reading the bootstrap token", &e)),
        };
        check_token(&secret, &token, cluster, SystemTime::now()).map_err(Outcome::Refused)?;
        check_csr(&request.csr_pem, cluster).map_err(Outcome::Refused)?;

        // Spent before anything is created: of two clients racing with one token only one deletes it.
        let preconditions = Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        };
        let params = DeleteParams { preconditions: Some(preconditions), ..Default::default() };
        if let Err(e) = secrets.delete(&secret_name, &params).await {
            debug!(token_id = token.id, error = %e, "deleting the bootstrap token failed");
            return Err(Outcome::Refused(Refusal::new("spent", UNKNOWN_TOKEN)));
        }
        info!(%cluster, token_id = token.id, "bootstrap token spent");

        // The token is gone: retry the create a few times rather than lose the client's only chance.
        create_csr(csrs, cluster, &request.csr_pem, REQUESTED_VIA_TOKEN).await.map_err(|e| {
            let reason = format!("creating the certificate request failed ({e}); the token is spent");
            Outcome::Refused(Refusal::new("error", reason))
        })
    }
}

/// Creates a certificate request under a fresh name, retrying a few times.
async fn create_csr(
    csrs: &Api<CertificateSigningRequest>,
    cluster: &str,
    csr_pem: &str,
    via: &str,
) -> Result<String, kube::Error> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        let name = csr_name(cluster, rand::random());
        match csrs.create(&PostParams::default(), &csr_object(&name, cluster, csr_pem, via)).await {
            Ok(_) => return Ok(name),
            Err(e) if attempt < 3 => {
                warn!(%cluster, error = %e, "creating the certificate request failed; retrying");
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// The resume path: the CSR must exist and be this client's.
async fn resume(csrs: &Api<CertificateSigningRequest>, name: &str, request: &BootstrapRequest) -> Result<(), Outcome> {
    match csrs.get_opt(name).await {
        Ok(Some(csr)) => check_resume(&csr, &request.cluster, &request.csr_pem).map_err(Outcome::Refused),
        Ok(None) => Err(Outcome::Refused(Refusal::new("unknown_csr", format!("no certificate request {name}")))),
        Err(e) => Err(hub_error("reading the certificate request", &e)),
    }
}

/// The certificate request a token already paid for with exactly this CSR, if there is one. A CSR is not
/// a secret, but the certificate is useless without the key, which never left the client.
async fn paid_request(csrs: &Api<CertificateSigningRequest>, cluster: &str, csr_pem: &str) -> Option<String> {
    let params = kube::api::ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}"));
    let list = csrs.list(&params).await.ok()?;
    list.items.into_iter().find_map(|csr| {
        let via = csr.metadata.annotations.as_ref().and_then(|a| a.get(REQUESTED_VIA_ANNOTATION));
        let paid = via.map(String::as_str) == Some(REQUESTED_VIA_TOKEN) && check_resume(&csr, cluster, csr_pem).is_ok();
        paid.then(|| csr.metadata.name.clone()).flatten()
    })
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

mod renewal;
pub use renewal::check_renewal;

#[cfg(test)]
mod tests;
