//! Unregistration: deleting a ManagedCluster runs an ordered cleanup under the `tether.io/cleanup`
//! finalizer, after every other finalizer is gone (a user's finalizer may still need the tunnel).
//!
//! Order: delete the cluster's `ManifestDelivery`s and wait until they are gone (their finalizer deletes
//! or orphans the pushed objects, through the tunnel that is still up) → revoke the cluster's certificates, which
//! makes the tunnel-servers close its tunnels and refuse it at every later handshake → wait until no
//! tunnel-server holds it → delete its Leases (before the tunnels are gone a tunnel-server would renew
//! them again) → remove the finalizer.
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use tether_api::push::ManifestDelivery;

use crate::conditions::{self, CLUSTER_LABEL};
use crate::crd::ManagedCluster;
use crate::reconcile::Context;
use crate::Error;

pub const FINALIZER: &str = "tether.io/cleanup";
/// ConfigMap (in the lease namespace) the tunnel-servers read revocations from.
pub use tether_api::revocations::CONFIG_MAP as REVOCATIONS;

/// What to do about a cluster's finalizer and deletion, decided from its metadata alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Alive without our finalizer: add it.
    AddFinalizer,
    /// Alive with it: nothing to do here.
    Nothing,
    /// Being deleted, but other finalizers come first.
    WaitFor(Vec<String>),
    /// Being deleted and ours is the last finalizer: clean up.
    CleanUp,
    /// Being deleted and ours is gone already.
    Gone,
}

pub fn step(cluster: &ManagedCluster) -> Step {
    let ours = cluster.finalizers().iter().any(|f| f == FINALIZER);
    let others: Vec<String> = cluster.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    match (cluster.metadata.deletion_timestamp.is_some(), ours) {
        (false, false) => Step::AddFinalizer,
        (false, true) => Step::Nothing,
        (true, false) => Step::Gone,
        (true, true) if !others.is_empty() => Step::WaitFor(others),
        (true, true) => Step::CleanUp,
    }
}

pub async fn add_finalizer(cluster: &ManagedCluster, ctx: &Context) -> Result<(), Error> {
    let mut finalizers = cluster.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    patch_finalizers(cluster, finalizers, ctx).await
}

/// Runs one pass of the cleanup; `Ok(None)` once done and the finalizer is removed, `Ok(Some(action))`
/// while waiting for the tunnels to close.
pub async fn clean_up(cluster: &ManagedCluster, ctx: &Context) -> Result<Option<Action>, Error> {
    let name = cluster.name_any();
    let lease_namespace = ctx.lease_namespace.as_str();
    if let Some(waiting) = remove_deliveries(&name, ctx).await? {
        tracing::info!(cluster = %name, deliveries = waiting, "waiting for the pushed objects to be cleaned up");
        return Ok(Some(Action::requeue(std::time::Duration::from_secs(2))));
    }
    revoke(&name, ctx, lease_namespace).await?;
    let leases = ctx.leases_of(&name);
    let view = conditions::view_leases(&leases, ctx.liveness, Timestamp::now());
    if !view.holders.is_empty() {
        tracing::info!(cluster = %name, holders = ?view.holders, "waiting for the tunnels to close");
        return Ok(Some(Action::requeue(ctx.liveness.renew_interval)));
    }
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), lease_namespace);
    let selector = format!("{CLUSTER_LABEL}={name}");
    api.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector)).await?;
    let finalizers = cluster.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(cluster, finalizers, ctx).await?;
    tracing::info!(cluster = %name, "unregistered");
    Ok(None)
}

/// Deletes the cluster's deliveries; how many are still there (their finalizers at work), if any.
async fn remove_deliveries(cluster: &str, ctx: &Context) -> Result<Option<usize>, Error> {
    let api: Api<ManifestDelivery> = Api::all(ctx.client.clone());
    let selector = format!("{CLUSTER_LABEL}={cluster}");
    let list = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        // A hub without the push CRDs has no deliveries.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if list.items.is_empty() {
        return Ok(None);
    }
    for delivery in list.items.iter().filter(|d| d.metadata.deletion_timestamp.is_none()) {
        let namespaced: Api<ManifestDelivery> =
            Api::namespaced(ctx.client.clone(), &delivery.namespace().unwrap_or_default());
        match namespaced.delete(&delivery.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(list.items.len()))
}

/// Records the revocation once; a later pass keeps the first time (certificates issued after it, for a
/// cluster registered again under the same name, stay valid).
async fn revoke(cluster: &str, ctx: &Context, namespace: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = api.get_opt(REVOCATIONS).await?;
    if existing.as_ref().and_then(|c| c.data.as_ref()).is_some_and(|d| d.contains_key(cluster)) {
        return Ok(());
    }
    let now = tether_api::revocations::format_time(Timestamp::now());
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": REVOCATIONS, "namespace": namespace },
        "data": { cluster: now },
    });
    api.patch(REVOCATIONS, &PatchParams::apply("tether-controller").force(), &Patch::Apply(&patch)).await?;
    tracing::info!(%cluster, revoked_at = %now, "certificates revoked");
    Ok(())
}

async fn patch_finalizers(cluster: &ManagedCluster, finalizers: Vec<String>, ctx: &Context) -> Result<(), Error> {
    crate::finalizers::patch(&Api::<ManagedCluster>::all(ctx.client.clone()), cluster, finalizers).await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn cluster(finalizers: &[&str], deleting: bool) -> ManagedCluster {
        let mut mc = ManagedCluster::new("a", Default::default());
        mc.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        mc.metadata.deletion_timestamp = deleting.then(|| Time(Timestamp::now()));
        mc
    }

    #[test]
    fn finalizer_is_added_to_live_clusters() {
        assert_eq!(step(&cluster(&[], false)), Step::AddFinalizer);
        assert_eq!(step(&cluster(&["example.com/keep"], false)), Step::AddFinalizer);
        assert_eq!(step(&cluster(&[FINALIZER], false)), Step::Nothing);
    }

    #[test]
    fn cleanup_waits_for_other_finalizers() {
        assert_eq!(
            step(&cluster(&[FINALIZER, "example.com/keep"], true)),
            Step::WaitFor(vec!["example.com/keep".into()])
        );
        assert_eq!(step(&cluster(&[FINALIZER], true)), Step::CleanUp);
        assert_eq!(step(&cluster(&["example.com/keep"], true)), Step::Gone);
    }
}
