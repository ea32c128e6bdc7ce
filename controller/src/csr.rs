//! Spoke certificates: the CertificateSigningRequests (`certificates.k8s.io/v1`, signer
//! `tether.io/spoke-client`) that tunnel-servers create for clients holding a bootstrap token or renewing
//! their identity. Pending requests are approved by policy (or by a person with `kubectl certificate
//! approve`); approved ones are signed with the hub CA, only while their cluster's ManagedCluster has
//! `spec.hubAcceptsClient` true. A request that can never be signed (weak key, another cluster's name, a bad
//! signature) gets a `Failed` condition and a Warning Event, never a certificate.
//!
//! One step per reconcile: approving changes the object, and the change brings the request back for
//! signing.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use metrics::counter;
use tether_certs::CertificateAuthority;

use crate::conditions::CLUSTER_LABEL;
use crate::crd::ManagedCluster;
use crate::metrics as m;
use crate::reconcile::backoff;
use crate::Error;

pub use tether_api::csr::{REQUESTED_VIA_ANNOTATION as REQUESTED_VIA, SIGNER_NAME, VIA_BOOTSTRAP_TOKEN, VIA_RENEWAL};
pub const APPROVED: &str = "Approved";
pub const DENIED: &str = "Denied";
pub const FAILED: &str = "Failed";
/// How often a request that waits for its cluster to be accepted is looked at again (changes of the
/// ManagedCluster also bring it back at once).
pub const WAIT: Duration = Duration::from_secs(5);

/// Which requests are approved without a person.
#[derive(Debug, Clone)]
pub struct Policy {
    pub auto_approve: bool,
    /// The user that creates requests for clients: the tunnel-server's hub identity.
    pub requester: String,
}

pub struct CsrContext {
    pub client: kube::Client,
    pub ca: CertificateAuthority,
    /// Lifetime of signed certificates.
    pub validity: Duration,
    pub policy: Policy,
    pub recorder: Recorder,
    /// Consecutive failures per request, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

/// Where a request stands, from its status alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Neither approved nor denied.
    Pending,
    /// Approved, not yet signed.
    Approved,
    /// Signed, denied or failed: nothing more to do.
    Done,
}

pub fn stage(csr: &CertificateSigningRequest) -> Stage {
    let status = csr.status.as_ref();
    let has = |type_: &str| {
        status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| c.type_ == type_ && c.status == "True")
    };
    if status.and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty()) || has(DENIED) || has(FAILED) {
        Stage::Done
    } else if has(APPROVED) {
        Stage::Approved
    } else {
        Stage::Pending
    }
}

/// Whether the policy may approve a pending request, from its metadata: `Ok(cluster)` when it may (the
/// request's content and the cluster's acceptance are checked next), otherwise why a person must.
pub fn policy_candidate<'a>(csr: &'a CertificateSigningRequest, policy: &Policy) -> Result<&'a str, &'static str> {
    if !policy.auto_approve {
        return Err("auto-approval is off");
    }
    let via = csr.annotations().get(REQUESTED_VIA).map(String::as_str);
    if via != Some(VIA_BOOTSTRAP_TOKEN) && via != Some(VIA_RENEWAL) {
        return Err("not requested through a bootstrap token or a renewal");
    }
    if csr.spec.username.as_deref() != Some(policy.requester.as_str()) {
        return Err("not requested by the bootstrap requester");
    }
    let cluster = csr.labels().get(CLUSTER_LABEL).ok_or("no tether.io/cluster label")?;
    if csr.annotations().get(CLUSTER_LABEL).is_some_and(|a| a != cluster) {
        return Err("its tether.io/cluster label and annotation differ");
    }
    Ok(cluster)
}

pub async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<CsrContext>) -> Result<Action, Error> {
    if csr.spec.signer_name != SIGNER_NAME {
        return Ok(Action::await_change());
    }
    let name = csr.name_any();
    let action = match stage(&csr) {
        Stage::Done => Action::await_change(),
        Stage::Pending => consider(&csr, &ctx).await?,
        Stage::Approved => sign(&csr, &ctx).await?,
    };
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    Ok(action)
}

/// A pending request: approve it if the policy allows, fail it if it can never be signed.
async fn consider(csr: &CertificateSigningRequest, ctx: &CsrContext) -> Result<Action, Error> {
    let name = csr.name_any();
    let cluster = match policy_candidate(csr, &ctx.policy) {
        Ok(cluster) => cluster,
        Err(why) => {
            tracing::debug!(csr = %name, why, "left for a person to approve");
            return Ok(Action::await_change());
        }
    };
    let checked =
        request_pem(csr).and_then(|pem| tether_certs::check_spoke_csr(pem, cluster).map_err(|e| e.to_string()));
    match checked {
        Err(why) => return fail(csr, ctx, why).await,
        Ok(Some(cn)) if cn == cluster => {}
        Ok(_) => {
            tracing::info!(csr = %name, %cluster, "the request names no cluster: left for a person to approve");
            return Ok(Action::await_change());
        }
    }
    if accepted(ctx, cluster).await?.is_none() {
        tracing::info!(csr = %name, %cluster, "waiting for the hub to accept the cluster before approving");
        return Ok(Action::requeue(WAIT));
    }
    let mut conditions = conditions_of(csr);
    let via = csr.annotations().get(REQUESTED_VIA).cloned().unwrap_or_default();
    conditions.push(condition(APPROVED, "AutoApproved", format!("{via} request for accepted cluster {cluster}")));
    // Guarded by resourceVersion: a person's Denied written meanwhile is never overwritten.
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": csr.resource_version() },
        "status": { "conditions": conditions },
    });
    Api::<CertificateSigningRequest>::all(ctx.client.clone())
        .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    counter!(m::CSRS, "outcome" => "approved").increment(1);
    tracing::info!(csr = %name, %cluster, %via, "approved by policy");
    let note = format!("approved by policy for cluster {cluster} ({via})");
    publish(ctx, csr, EventType::Normal, "AutoApproved", note).await;
    Ok(Action::await_change())
}

/// An approved request: sign it once its cluster is accepted.
async fn sign(csr: &CertificateSigningRequest, ctx: &CsrContext) -> Result<Action, Error> {
    let name = csr.name_any();
    let Some(cluster) = csr.labels().get(CLUSTER_LABEL) else {
        return fail(csr, ctx, "no tether.io/cluster label: the request names no cluster".into()).await;
    };
    let Some(managed) = accepted(ctx, cluster).await? else {
        tracing::info!(csr = %name, %cluster, "approved, waiting for the hub to accept the cluster before signing");
        return Ok(Action::requeue(WAIT));
    };
    let validity = managed.spec.certificate_validity(ctx.validity);
    let signed = request_pem(csr)
        .and_then(|pem| ctx.ca.sign_spoke_csr(pem, cluster, SystemTime::now(), validity).map_err(|e| e.to_string()));
    let certificate = match signed {
        Ok(certificate) => certificate,
        Err(why) => return fail(csr, ctx, why).await,
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": csr.resource_version() },
        "status": { "certificate": ByteString(certificate.into_bytes()) },
    });
    Api::<CertificateSigningRequest>::all(ctx.client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    counter!(m::CSRS, "outcome" => "signed").increment(1);
    tracing::info!(csr = %name, %cluster, "certificate issued");
    let note = format!("certificate issued for cluster {cluster}, valid {}", humantime::format_duration(validity));
    publish(ctx, csr, EventType::Normal, "CertificateIssued", note).await;
    Ok(Action::await_change())
}

/// Marks a request that can never be signed as Failed, with why.
async fn fail(csr: &CertificateSigningRequest, ctx: &CsrContext, why: String) -> Result<Action, Error> {
    let name = csr.name_any();
    let mut conditions = conditions_of(csr);
    conditions.push(condition(FAILED, "SignerValidationFailure", why.clone()));
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": csr.resource_version() },
        "status": { "conditions": conditions },
    });
    Api::<CertificateSigningRequest>::all(ctx.client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    counter!(m::CSRS, "outcome" => "failed").increment(1);
    tracing::warn!(csr = %name, error = %why, "request refused");
    publish(ctx, csr, EventType::Warning, "CertificateFailed", format!("not signed: {why}")).await;
    Ok(Action::await_change())
}

/// The cluster if it exists, is not being deleted, and has `spec.hubAcceptsClient` true: read from the hub
/// each time, so that a cluster no longer accepted never gets a certificate from a stale view.
async fn accepted(ctx: &CsrContext, cluster: &str) -> Result<Option<ManagedCluster>, Error> {
    let found = Api::<ManagedCluster>::all(ctx.client.clone()).get_opt(cluster).await?;
    Ok(found.filter(|mc| mc.spec.hub_accepts_client && mc.metadata.deletion_timestamp.is_none()))
}

fn request_pem(csr: &CertificateSigningRequest) -> Result<&str, String> {
    std::str::from_utf8(&csr.spec.request.0).map_err(|_| "spec.request is not PEM text".to_string())
}

fn conditions_of(csr: &CertificateSigningRequest) -> Vec<CertificateSigningRequestCondition> {
    csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
}

fn condition(type_: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    let now = Some(Time(Timestamp::now()));
    CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

async fn publish(ctx: &CsrContext, csr: &CertificateSigningRequest, type_: EventType, reason: &str, note: String) {
    // As for ManagedClusters: Events of a cluster-scoped object live in `default`.
    let mut reference = csr.object_ref(&());
    reference.namespace = Some("default".into());
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Sign".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(csr = %csr.name_any(), error = %e, "cannot publish an event");
    }
}

/// Exponential backoff per request, as for ManagedClusters.
pub fn error_policy(csr: Arc<CertificateSigningRequest>, error: &Error, ctx: Arc<CsrContext>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let count = failures.entry(csr.name_any()).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    let conflict = matches!(error, Error::Kube(kube::Error::Api(e)) if e.code == 409);
    if !conflict {
        tracing::warn!(csr = %csr.name_any(), %error, retry_in_ms = delay.as_millis() as u64, "CSR reconcile failed");
    }
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;
