//! Reconcile decisions against a scripted hub API: which calls each situation makes, in which order,
//! with which bodies — and which make none.
use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::cleanup::FINALIZER;
use crate::conditions::{self, CLUSTER_LABEL, STATE_ANNOTATION};
use crate::crd::{ManagedCluster, ManagedClusterSpec, ManagedClusterStatus};
use crate::fixtures::{call, context, not_found, LIVENESS};
use crate::reconcile::reconcile;

const CLUSTER_PATH: &str = "/apis/tether.io/v1alpha1/managedclusters/a";

fn cluster(finalizers: &[&str], deleting: bool) -> ManagedCluster {
    let mut mc = ManagedCluster::new("a", ManagedClusterSpec { hub_accepts_client: true, ..Default::default() });
    mc.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    mc.metadata.deletion_timestamp = deleting.then(|| Time(Timestamp::now()));
    mc.metadata.resource_version = Some("7".into());
    mc.metadata.generation = Some(1);
    mc
}

fn lease(holder: &str, state: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("tether-a-{holder}")),
            namespace: Some("tether-system".into()),
            labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_string(), "a".to_string())])),
            annotations: Some(BTreeMap::from([(STATE_ANNOTATION.to_string(), state.to_string())])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_new_cluster_gets_the_finalizer_first() {
    let (ctx, api) = context(vec![], vec![call(Method::PATCH, CLUSTER_PATH, 200, json!(cluster(&[FINALIZER], false)))]);
    let action = reconcile(Arc::new(cluster(&[], false)), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = api.await.unwrap();
    let body = &seen.calls[0].2;
    assert_eq!(body["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(body["metadata"]["resourceVersion"], "7", "finalizer writes are guarded by resourceVersion");
}

#[tokio::test]
async fn a_renewed_lease_makes_the_cluster_available_with_an_event() {
    let status_path: &'static str = "/apis/tether.io/v1alpha1/managedclusters/a/status";
    let (ctx, api) = context(
        vec![lease("hub-0", "connected")],
        vec![call(Method::PATCH, status_path, 200, json!(cluster(&[FINALIZER], false)))],
    );
    let action = reconcile(Arc::new(cluster(&[FINALIZER], false)), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(LIVENESS.renew_interval), "missed renewals are noticed by requeueing");
    let seen = api.await.unwrap();
    let status = &seen.calls[0].2["status"];
    let available = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(available["status"], "True");
    assert_eq!(status["tunnelServers"], json!(["hub-0"]));
    assert!(seen.event_reasons.contains(&"TunnelUp".to_string()), "{:?}", seen.event_reasons);
}

/// A cluster whose status already says what its Lease says, `lastSeen` written `ago` before the Lease's
/// renewal.
fn settled(leases: &[Lease], ago: std::time::Duration) -> ManagedCluster {
    let mut mc = cluster(&[FINALIZER], false);
    let view = conditions::view_leases(leases, LIVENESS, Timestamp::now());
    let written = view.last_seen.map(|t| Time(t - ago));
    mc.status = Some(ManagedClusterStatus {
        conditions: conditions::desired(&mc, &view, Timestamp::now()),
        tunnel_servers: view.holders.clone(),
        last_seen: written,
        ..Default::default()
    });
    mc
}

#[tokio::test]
async fn nothing_is_written_when_the_status_is_already_true() {
    let leases = vec![lease("hub-0", "connected")];
    let (ctx, api) = context(leases.clone(), vec![]);
    reconcile(Arc::new(settled(&leases, std::time::Duration::ZERO)), Arc::new(ctx)).await.unwrap();
    let seen = api.await.unwrap();
    assert!(seen.calls.is_empty() && seen.event_reasons.is_empty());
}

#[tokio::test]
async fn a_renewal_alone_rewrites_last_seen_only_once_it_is_stale() {
    let leases = vec![lease("hub-0", "connected")];
    // The renewals of the last minutes: the Lease says, the ManagedCluster is not written for each.
    let (ctx, api) = context(leases.clone(), vec![]);
    reconcile(Arc::new(settled(&leases, std::time::Duration::from_secs(60))), Arc::new(ctx)).await.unwrap();
    assert!(api.await.unwrap().calls.is_empty(), "a renewal within the refresh interval writes nothing");
    let status_path: &'static str = "/apis/tether.io/v1alpha1/managedclusters/a/status";
    let (ctx, api) =
        context(leases.clone(), vec![call(Method::PATCH, status_path, 200, json!(cluster(&[FINALIZER], false)))]);
    let stale = conditions::LAST_SEEN_REFRESH + std::time::Duration::from_secs(1);
    reconcile(Arc::new(settled(&leases, stale)), Arc::new(ctx)).await.unwrap();
    let seen = api.await.unwrap();
    let renewed = leases[0].spec.as_ref().and_then(|s| s.renew_time.clone()).unwrap();
    assert_eq!(
        seen.calls[0].2["status"]["lastSeen"],
        json!(Time(renewed.0)),
        "a stale lastSeen takes the Lease's renewal"
    );
    assert!(seen.event_reasons.is_empty(), "no condition changed");
}

#[tokio::test]
async fn deletion_waits_for_a_users_finalizer_and_touches_nothing() {
    let (ctx, api) = context(vec![lease("hub-0", "connected")], vec![]);
    let action = reconcile(Arc::new(cluster(&[FINALIZER, "example.com/keep"], true)), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = api.await.unwrap();
    assert!(seen.calls.is_empty(), "no revocation or deletion while a user's finalizer remains");
    assert_eq!(seen.event_reasons, ["WaitingForFinalizers"]);
}

#[tokio::test]
async fn cleanup_revokes_then_deletes_leases_then_drops_the_finalizer() {
    let (ctx, api) = context(
        vec![],
        vec![
            call(Method::GET, DELIVERIES_PATH, 200, deliveries(&[])),
            call(Method::GET, "/api/v1/namespaces/tether-system/configmaps/tether-revocations", 404, not_found()),
            call(
                Method::PATCH,
                "/api/v1/namespaces/tether-system/configmaps/tether-revocations?",
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tether-revocations"}}),
            ),
            call(
                Method::DELETE,
                "/apis/coordination.k8s.io/v1/namespaces/tether-system/leases?",
                200,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {}, "items": []}),
            ),
            call(Method::PATCH, CLUSTER_PATH, 200, json!(cluster(&[], true))),
        ],
    );
    let action = reconcile(Arc::new(cluster(&[FINALIZER], true)), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = api.await.unwrap();
    assert!(
        seen.calls[2].1.contains("fieldManager=tether-controller"),
        "revocation is a server-side apply: {}",
        seen.calls[2].1
    );
    assert!(seen.calls[2].2["data"]["a"].is_string());
    assert!(
        seen.calls[3].1.contains("labelSelector=tether.io%2Fcluster%3Da"),
        "only this cluster's leases: {}",
        seen.calls[3].1
    );
    assert_eq!(seen.calls[4].2["metadata"]["finalizers"], json!([]));
    assert_eq!(seen.event_reasons, ["Unregistered"]);
}

#[tokio::test]
async fn cleanup_waits_while_a_tunnel_server_still_holds_the_cluster() {
    let revoked = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tether-revocations"}, "data": {"a": "2026-01-01T00:00:00Z"}});
    let (ctx, api) = context(
        vec![lease("hub-0", "connected")],
        vec![
            call(Method::GET, DELIVERIES_PATH, 200, deliveries(&[])),
            call(Method::GET, "/api/v1/namespaces/tether-system/configmaps/tether-revocations", 200, revoked),
        ],
    );
    let action = reconcile(Arc::new(cluster(&[FINALIZER], true)), Arc::new(ctx)).await.unwrap();
    // Already revoked (the first time is kept); the leases stay until the tunnel has closed.
    assert_eq!(action, Action::requeue(LIVENESS.renew_interval));
    assert_eq!(api.await.unwrap().calls.len(), 2);
}

const DELIVERIES_PATH: &str = "/apis/tether.io/v1alpha1/manifestdeliveries?&labelSelector=tether.io%2Fcluster%3Da";

fn deliveries(names: &[(&str, bool)]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = names
        .iter()
        .map(|(name, deleting)| {
            let mut metadata = json!({"name": name, "namespace": "team-a"});
            if *deleting {
                metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            json!({"apiVersion": "tether.io/v1alpha1", "kind": "ManifestDelivery", "metadata": metadata,
                   "spec": {"cluster": "a", "push": "web", "pushGeneration": 1, "manifests": []}})
        })
        .collect();
    json!({"apiVersion": "tether.io/v1alpha1", "kind": "ManifestDeliveryList", "metadata": {}, "items": items})
}

#[tokio::test]
async fn cleanup_first_removes_the_pushed_objects_and_revokes_only_once_they_are_gone() {
    let (ctx, api) = context(
        vec![],
        vec![
            call(Method::GET, DELIVERIES_PATH, 200, deliveries(&[("web.a", false), ("db.a", true)])),
            call(
                Method::DELETE,
                "/apis/tether.io/v1alpha1/namespaces/team-a/manifestdeliveries/web.a?",
                200,
                json!({"apiVersion": "tether.io/v1alpha1", "kind": "ManifestDelivery", "metadata": {"name": "web.a"},
                       "spec": {"cluster": "a", "push": "web", "pushGeneration": 1, "manifests": []}}),
            ),
        ],
    );
    let action = reconcile(Arc::new(cluster(&[FINALIZER], true)), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(2)));
    let seen = api.await.unwrap();
    assert_eq!(seen.calls.len(), 2, "no revocation while a delivery's finalizer still cleans the spoke");
}
