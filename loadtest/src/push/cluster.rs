//! What `push` writes to and reads from the apiservers: the hub's CRDs, RBAC and ManagedClusters, the spoke's
//! namespace and RBAC, the pushes themselves and their status, and the direct server-side applies they are
//! compared with. All of it through kube-rs, the client the controller itself uses.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, CustomResourceExt, ResourceExt};
use serde_json::{json, Value};
use tether_api::cluster::ManagedCluster;
use tether_api::push::{ManifestDelivery, ManifestPush};

/// The hub namespace the pushes live in, and the spoke namespace they write to.
pub const NAMESPACE: &str = "loadtest";
/// The label that tells real spokes from simulated ones.
pub const KIND_LABEL: &str = "loadtest.tether.io/spoke";
const MANAGER: &str = "loadtest";

/// A kube-rs client of the apiserver whose admin kubeconfig is `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn apply(client: &kube::Client, object: Value) -> Result<()> {
    let object: DynamicObject = serde_json::from_value(object)?;
    let types = object.types.clone().context("apiVersion and kind")?;
    let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    api.patch(&object.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
        .await
        .with_context(|| format!("applying {} {}", types.kind, object.name_any()))?;
    Ok(())
}

/// The hub: tether's CRDs, the namespaces of the pushes and the Leases, the right of the push identity to
/// reach clusters through the proxy (as a platform team grants it), and the ManagedClusters.
pub async fn prepare_hub(hub: &kube::Client, real: &[String], simulated: usize) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(hub.clone());
    for crd in [ManagedCluster::crd(), ManifestPush::crd(), ManifestDelivery::crd()] {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await?;
        wait_for(&format!("CRD {name} established"), Duration::from_secs(60), || async {
            let crd = crds.get(&name).await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conditions.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await?;
    }
    for namespace in ["tether-system", NAMESPACE] {
        apply(hub, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})).await?;
    }
    let user = tether_api::push::push_user(NAMESPACE);
    apply(
        hub,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "loadtest-push"},
            "rules": [{"apiGroups": ["tether.io"], "resources": ["managedclusters/proxy"], "verbs": ["*"]}]}),
    )
    .await?;
    apply(
        hub,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "loadtest-push"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "loadtest-push"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
    )
    .await?;
    let clusters: Api<ManagedCluster> = Api::all(hub.clone());
    let names = real.iter().map(|n| (n.clone(), "real")).chain((0..simulated).map(|i| (format!("sim-{i}"), "sim")));
    for (name, kind) in names {
        let cluster: ManagedCluster = serde_json::from_value(json!({
            "apiVersion": "tether.io/v1alpha1", "kind": "ManagedCluster",
            "metadata": {"name": name, "labels": {KIND_LABEL: kind}},
            "spec": {"hubAcceptsClient": true},
        }))?;
        match clusters.create(&PostParams::default(), &cluster).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating ManagedCluster {name}")),
        }
    }
    Ok(())
}

/// A real spoke: the namespace the pushes write to, and what the push identity may do there (admin of that
/// namespace only, as a spoke's owner would grant it).
pub async fn prepare_spoke(spoke: &kube::Client) -> Result<()> {
    apply(spoke, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})).await?;
    apply(
        spoke,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tether-push", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                "name": tether_api::push::push_user(NAMESPACE)}]}),
    )
    .await
}

/// Waits until every ManagedCluster whose name is in `names` says Available (its tunnel is up and its
/// Lease renewed).
pub async fn wait_available(hub: &kube::Client, count: usize, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let clusters: Api<ManagedCluster> = Api::all(hub.clone());
    wait_for(&format!("{count} clusters Available"), timeout, || async {
        let list = clusters.list(&ListParams::default().labels(KIND_LABEL)).await?;
        let available = list
            .items
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True"))
            })
            .count();
        Ok(available >= count)
    })
    .await?;
    Ok(started.elapsed())
}

/// `count` ConfigMaps named `<prefix>-<i>`, each with a few keys, as a small application's config.
pub fn config_maps(prefix: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{prefix}-{i}"), "namespace": NAMESPACE, "labels": {"app": "loadtest"}},
                "data": {"k": "v", "index": i.to_string(), "settings": "a=1\nb=2\nc=3\n"}})
        })
        .collect()
}

/// Creates push `name` of `manifests` to the clusters labelled `spoke=<kind>`, all at once.
pub async fn create_push(hub: &kube::Client, name: &str, kind: &str, manifests: Vec<Value>) -> Result<()> {
    let push: ManifestPush = serde_json::from_value(json!({
        "apiVersion": "tether.io/v1alpha1", "kind": "ManifestPush",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"manifests": manifests, "placement": {"labelSelector": {"matchLabels": {KIND_LABEL: kind}}}},
    }))?;
    Api::<ManifestPush>::namespaced(hub.clone(), NAMESPACE).create(&PostParams::default(), &push).await?;
    Ok(())
}

/// Polls push `name` every `every` until its status says all `clusters` applied its first generation;
/// returns the push as last read. A failed cluster ends the wait with its reason.
pub async fn wait_applied(
    hub: &kube::Client,
    name: &str,
    clusters: u32,
    every: Duration,
    timeout: Duration,
) -> Result<ManifestPush> {
    let pushes: Api<ManifestPush> = Api::namespaced(hub.clone(), NAMESPACE);
    let deadline = Instant::now() + timeout;
    loop {
        let push = pushes.get(name).await?;
        if let Some(status) = &push.status {
            if let Some(failed) = status.failed_clusters.first() {
                bail!("push {name}: cluster {} failed: {}: {}", failed.cluster, failed.reason, failed.message);
            }
            let s = &status.summary;
            if status.observed_generation == push.metadata.generation && s.selected == clusters && s.applied == clusters
            {
                return Ok(push);
            }
        }
        if Instant::now() > deadline {
            let summary = push.status.map(|s| s.summary);
            bail!("push {name} not applied on {clusters} clusters within {timeout:?}: {summary:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Deletes every push and waits until their deliveries are gone (each removes its objects from its
/// cluster first); returns how long that took.
pub async fn delete_pushes(hub: &kube::Client, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let pushes: Api<ManifestPush> = Api::namespaced(hub.clone(), NAMESPACE);
    pushes.delete_collection(&DeleteParams::background(), &ListParams::default()).await?;
    let deliveries: Api<ManifestDelivery> = Api::namespaced(hub.clone(), NAMESPACE);
    wait_for("every delivery removed", timeout, || async {
        Ok(deliveries.list_metadata(&ListParams::default().limit(1)).await?.items.is_empty()
            && pushes.list_metadata(&ListParams::default().limit(1)).await?.items.is_empty())
    })
    .await?;
    Ok(started.elapsed())
}

/// `objects` applied one after another with server-side apply, as the controller applies a delivery's
/// manifests: the direct path a push is compared with.
pub async fn apply_directly(spoke: &kube::Client, objects: &[Value], at_once: usize) -> Result<Duration> {
    let api: Api<ConfigMap> = Api::namespaced(spoke.clone(), NAMESPACE);
    let started = Instant::now();
    let applies = futures::stream::iter(objects).map(|object| {
        let api = &api;
        async move {
            let name = object["metadata"]["name"].as_str().context("a name")?;
            api.patch(name, &PatchParams::apply("loadtest-direct"), &Patch::Apply(object)).await?;
            anyhow::Ok(())
        }
    });
    let applied: Vec<Result<()>> = applies.buffer_unordered(at_once).collect().await;
    applied.into_iter().collect::<Result<()>>()?;
    Ok(started.elapsed())
}

/// Calls `check` every 20 ms until it says true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(" (last error: {e:#})")).unwrap_or_default();
            bail!("{what}: not within {timeout:?}{why}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
