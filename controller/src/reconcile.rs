//! The ManagedCluster reconciler: conditions and liveness status from the tunnel-servers' Leases, the spoke
//! manifest of `Auto` clusters ([`crate::auto`]), Events on every condition change, backoff on errors.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use metrics::{counter, histogram};

use crate::auto::{self, AutoConfig, Outcome};
use crate::cleanup::{self, Step};
use crate::conditions::{self, Liveness, CLUSTER_LABEL, MANIFEST_APPLIED};
use crate::crd::ManagedCluster;
use crate::metrics as m;
use crate::Error;

pub struct Context {
    pub client: kube::Client,
    pub lease_namespace: String,
    pub leases: Store<Lease>,
    pub liveness: Liveness,
    pub recorder: Recorder,
    /// Consecutive failures per cluster, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Auto mode, when the controller has --hub-address and --hub-ca.
    pub auto: Option<AutoConfig>,
}

impl Context {
    /// The Leases tunnel-servers renew for `cluster`, from the local mirror (no API call).
    pub fn leases_of(&self, cluster: &str) -> Vec<Lease> {
        self.leases
            .state()
            .iter()
            .filter(|l| l.labels().get(CLUSTER_LABEL).map(String::as_str) == Some(cluster))
            .map(|l| l.as_ref().clone())
            .collect()
    }
}

pub async fn reconcile(cluster: Arc<ManagedCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = cluster.name_any();
    match cleanup::step(&cluster) {
        Step::Nothing => {}
        Step::AddFinalizer => {
            cleanup::add_finalizer(&cluster, &ctx).await?;
            return Ok(Action::await_change());
        }
        Step::WaitFor(others) => {
            let note = format!("unregistration waits for the finalizers {}", others.join(", "));
            publish(&ctx, &cluster, EventType::Normal, "WaitingForFinalizers", note).await;
            return Ok(Action::await_change());
        }
        Step::CleanUp => {
            if let Some(action) = cleanup::clean_up(&cluster, &ctx).await? {
                return Ok(action);
            }
            let note = "certificates revoked, tunnels closed, leases deleted".to_string();
            publish(&ctx, &cluster, EventType::Normal, "Unregistered", note).await;
            return Ok(Action::await_change());
        }
        Step::Gone => return Ok(Action::await_change()),
    }
    let leases = ctx.leases_of(&name);
    let now = Timestamp::now();
    let view = conditions::view_leases(&leases, ctx.liveness, now);
    let outcome = auto::reconcile(&cluster, view.ever_connected, &ctx, now).await?;
    if let Outcome::Stale = outcome {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut desired = conditions::desired(&cluster, &view, now);
    let current = cluster.status.clone().unwrap_or_default();
    let last_seen = view.last_seen.map(Time);
    let reported = &view.reported;
    let client_version = reported.client_version.clone().or(current.client_version.clone());
    let apiserver_version = reported.apiserver_version.clone().or(current.apiserver_version.clone());
    let ca_bundle = reported.ca_bundle.clone().or(current.ca_bundle.clone());
    let manifest_applied = match &outcome {
        Outcome::NotAuto => None,
        Outcome::Unchanged | Outcome::Stale => conditions::find(&cluster, MANIFEST_APPLIED).cloned(),
        Outcome::Applied { message, .. } => {
            Some(conditions::condition(&cluster, MANIFEST_APPLIED, "True", auto::reason::APPLIED, message.clone(), now))
        }
        Outcome::Failed { reason, message, .. } => {
            Some(conditions::condition(&cluster, MANIFEST_APPLIED, "False", reason, message.clone(), now))
        }
    };
    if let Some(condition) = &manifest_applied {
        desired.insert(conditions::OWNED.len().min(desired.len()), condition.clone());
    }
    let auto_registration = match &outcome {
        Outcome::NotAuto => None,
        Outcome::Applied { record, .. } => Some(record.clone()),
        _ => current.auto_registration.clone(),
    };

    let last_seen_due = conditions::last_seen_due(current.last_seen.as_ref().map(|t| t.0), view.last_seen);
    if current.conditions != desired
        || current.tunnel_servers != view.holders
        || last_seen_due
        || current.client_version != client_version
        || current.apiserver_version != apiserver_version
        || current.ca_bundle != ca_bundle
        || current.auto_registration != auto_registration
    {
        // Merge patch guarded by resourceVersion: conditions set concurrently by another actor (a readiness
        // gate) make this a conflict and a retry, never a lost write.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": cluster.resource_version() },
            "status": {
                "conditions": desired,
                "tunnelServers": view.holders,
                "lastSeen": last_seen,
                "clientVersion": client_version,
                "apiserverVersion": apiserver_version,
                "caBundle": ca_bundle,
                "autoRegistration": auto_registration,
            }
        });
        Api::<ManagedCluster>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        for (type_, before, after) in conditions::transitions(&current.conditions, &desired) {
            let reason = desired.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone()).unwrap_or_default();
            let kind = if after == "True" || type_ == conditions::HUB_ACCEPTED {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let before = if before.is_empty() { "none".to_string() } else { before };
            tracing::info!(cluster = %name, condition = %type_, %before, %after, "condition changed");
            publish(&ctx, &cluster, kind, &reason, format!("{type_}: {before} -> {after}")).await;
        }
    }
    // Every apply, and every new reason not to, is an Event of its own.
    let before = conditions::find(&cluster, MANIFEST_APPLIED);
    match (&outcome, &manifest_applied) {
        (Outcome::Applied { message, .. }, _) => {
            counter!(m::AUTO_APPLIES, "outcome" => "applied").increment(1);
            tracing::info!(cluster = %name, "spoke manifest applied");
            publish(&ctx, &cluster, EventType::Normal, MANIFEST_APPLIED, message.clone()).await;
        }
        (Outcome::Failed { reason, message, retry }, Some(condition)) => {
            if *retry {
                counter!(m::AUTO_APPLIES, "outcome" => "failed", "reason" => *reason).increment(1);
            }
            if before.is_none_or(|b| b.reason != condition.reason || b.message != condition.message) {
                tracing::warn!(cluster = %name, %reason, %message, "spoke manifest not applied");
                publish(&ctx, &cluster, EventType::Warning, reason, message.clone()).await;
            }
            if *retry {
                return Err(Error::Auto { reason, message: message.clone() });
            }
        }
        _ => {}
    }
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    counter!(m::RECONCILES, "outcome" => "ok").increment(1);
    histogram!(m::RECONCILE_DURATION).record(started.elapsed().as_secs_f64());
    // Missed renewals produce no event: look again after one renewal interval.
    Ok(Action::requeue(ctx.liveness.renew_interval))
}

async fn publish(ctx: &Context, cluster: &ManagedCluster, type_: EventType, reason: &str, note: String) {
    // Events of a cluster-scoped object live in `default`; a 1.20 apiserver insists that the reference
    // names the Event's namespace.
    let mut reference = cluster.object_ref(&());
    reference.namespace = Some("default".into());
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(cluster = %cluster.name_any(), error = %e, "cannot publish an event");
    }
}

/// Exponential backoff per cluster: 0.5 s doubling to 60 s.
pub fn error_policy(cluster: Arc<ManagedCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = match error {
        Error::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
        Error::Kube(_) => "api",
        Error::Auto { .. } => "auto",
        _ => "other",
    };
    counter!(m::RECONCILES, "outcome" => "error").increment(1);
    counter!(m::RECONCILE_ERRORS, "kind" => kind).increment(1);
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let count = failures.entry(cluster.name_any()).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    if kind != "conflict" {
        tracing::warn!(cluster = %cluster.name_any(), %error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    }
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(7);
    (Duration::from_millis(500) * 2u32.pow(exponent)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(8), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }
}
