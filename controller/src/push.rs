//! Pushing resources to spokes (`ManifestPush` → a `ManifestDelivery` per selected cluster, applied
//! through the hub's proxy as the push's namespace identity). The pure decisions (placement, rendering,
//! rollout, feedback, order, summary) are apart from the reconcilers that act on them.
pub mod apply;
pub mod context;
pub mod delivery;
pub mod drift;
pub mod fanout;
pub mod feedback;
pub mod order;
pub mod placement;
pub mod removal;
pub mod render;
pub mod rollout;
pub mod spokes;
pub mod summary;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, ResourceExt};
use metrics::{counter, gauge, histogram};
use tether_api::push::{ManifestDelivery, ManifestPush};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::{Error, ManagedCluster};
use context::PushContext;
use spokes::Spokes;

/// Delivery changes the shared watch holds for a controller that has not taken them yet (it waits beyond).
const DELIVERY_EVENTS: usize = 1024;

/// How the push controllers run.
pub struct PushSettings {
    pub spokes: Spokes,
    /// Deliveries reconciled at once: one slow or unreachable cluster holds one of these, no more.
    pub concurrency: u16,
    pub default_resync: Duration,
}

/// Runs the push and delivery controllers until `shutdown`.
pub async fn run(hub: kube::Client, settings: PushSettings, reporter: Reporter, shutdown: CancellationToken) {
    let clusters_api: Api<ManagedCluster> = Api::all(hub.clone());
    let (clusters, writer) = reflector::store();
    // The mirrors drop managedFields, which nothing here reads and which can be most of an object.
    let clusters_feed = watcher(clusters_api.clone(), watcher::Config::default())
        .default_backoff()
        .modify(|c| c.managed_fields_mut().clear());
    let mirror = reflector::reflector(writer, clusters_feed);
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let mut mirror = std::pin::pin!(mirror.take_until(cancel.cancelled_owned()));
        while mirror.next().await.is_some() {}
    });

    // One watch of the deliveries feeds the mirror both reconcilers read and, once the mirror holds each
    // change, both controllers. The push controller sums the deliveries it reads there: told of a change
    // the mirror did not hold yet, it would write a stale summary and wait for the next resync.
    let (deliveries, delivery_writer) = reflector::store_shared(DELIVERY_EVENTS);
    let (Some(delivery_changes), Some(owned_changes)) = (delivery_writer.subscribe(), delivery_writer.subscribe())
    else {
        unreachable!("a shared store has subscribers");
    };
    let deliveries_api: Api<ManifestDelivery> = Api::all(hub.clone());
    let feed = watcher(deliveries_api, watcher::Config::default())
        .default_backoff()
        .modify(|d| d.managed_fields_mut().clear())
        .reflect_shared(delivery_writer);
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let mut feed = std::pin::pin!(feed.take_until(cancel.cancelled_owned()));
        while feed.next().await.is_some() {}
    });

    let (trigger, triggered) = tokio::sync::mpsc::channel(4096);
    let delivery_controller = Controller::for_shared_stream(delivery_changes, deliveries.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let ctx = Arc::new(PushContext::new(
        hub.clone(),
        settings.spokes,
        drift::Drift::new(trigger, shutdown.clone()),
        Recorder::new(hub.clone(), reporter),
        clusters.clone(),
        deliveries,
        settings.default_resync,
    ));
    // A cluster coming back (its Available condition changing) brings its deliveries back at once.
    let availability = Changes::default();
    let mapper_ctx = ctx.clone();
    let delivery_controller = delivery_controller
        .watches(clusters_api.clone(), watcher::Config::default(), move |cluster| {
            let available = cluster
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::conditions::AVAILABLE))
                .map(|c| c.status.clone());
            if availability.changed(&cluster.name_any(), available) {
                mapper_ctx.deliveries_of(&cluster.name_any())
            } else {
                Vec::new()
            }
        })
        .reconcile_on(futures::stream::unfold(triggered, |mut rx| async { rx.recv().await.map(|r| (r, rx)) }))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(timed_delivery, delivery_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let pushes_api: Api<ManifestPush> = Api::all(hub.clone());
    let push_controller = Controller::new(pushes_api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let pushes = push_controller.store();
    // A cluster's labels or acceptance changing may change every push's placement. The pushes are
    // reconciled once the mirror the reconciler reads holds that change (it is fed by another watch).
    let placement_inputs = Changes::default();
    let (replace, replaced) = tokio::sync::mpsc::channel(4096);
    let mapper_clusters = clusters.clone();
    let push_ctx = ctx.clone();
    let push_controller = push_controller
        .owns_shared_stream(owned_changes)
        .watches(clusters_api, watcher::Config::default(), move |cluster| {
            let inputs = (cluster.labels().clone(), cluster.spec.hub_accepts_client);
            if placement_inputs.changed(&cluster.name_any(), inputs) {
                let (pushes, mirror, replace) = (pushes.clone(), mapper_clusters.clone(), replace.clone());
                tokio::spawn(async move {
                    mirrored(&mirror, &cluster).await;
                    for push in pushes.state() {
                        let _ = replace.send(ObjectRef::from_obj(push.as_ref())).await;
                    }
                });
            }
            Vec::<ObjectRef<ManifestPush>>::new()
        })
        .reconcile_on(futures::stream::unfold(replaced, |mut rx| async { rx.recv().await.map(|r| (r, rx)) }))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(ready_then_fanout, push_error_policy, push_ctx);
    let push_controller = push_controller.for_each(|_| futures::future::ready(()));
    let watches = {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
                gauge!(m::PUSH_WATCHES).set(ctx.drift.count() as f64);
            }
        }
    };
    tracing::info!("push controllers running");
    tokio::join!(delivery_controller, push_controller, watches);
}

/// Waits (at most 5 s) until `mirror` holds `cluster` at its resourceVersion or later.
async fn mirrored(mirror: &reflector::Store<ManagedCluster>, cluster: &ManagedCluster) {
    let wanted = cluster.resource_version().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let held = mirror.get(&ObjectRef::from_obj(cluster)).and_then(|c| c.resource_version());
        if context::holds(held.as_deref(), &wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deliveries and clusters are read from mirrors: a push reconciled before they are listed would write
/// every delivery again. (The controller itself keeps running meanwhile: the deliveries' shared watch
/// waits for every subscriber to take each change.)
async fn ready_then_fanout(push: Arc<ManifestPush>, ctx: Arc<PushContext>) -> Result<Action, Error> {
    let _ = ctx.deliveries.wait_until_ready().await;
    let _ = ctx.clusters.wait_until_ready().await;
    fanout::reconcile(push, ctx).await
}

async fn timed_delivery(delivery: Arc<ManifestDelivery>, ctx: Arc<PushContext>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = delivery::reconcile(delivery, ctx).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    counter!(m::PUSH_RECONCILES, "outcome" => outcome).increment(1);
    histogram!(m::PUSH_RECONCILE_DURATION).record(started.elapsed().as_secs_f64());
    result
}

fn delivery_error_policy(delivery: Arc<ManifestDelivery>, error: &Error, ctx: Arc<PushContext>) -> Action {
    let reference = ObjectRef::from_obj(delivery.as_ref());
    let delay = ctx.unreachable_backoff(&reference);
    tracing::warn!(delivery = %reference, %error, retry_in_ms = delay.as_millis() as u64, "delivery reconcile failed");
    Action::requeue(delay)
}

fn push_error_policy(push: Arc<ManifestPush>, error: &Error, _: Arc<PushContext>) -> Action {
    let conflict = matches!(error, Error::Kube(kube::Error::Api(e)) if e.code == 409);
    if !conflict {
        tracing::warn!(push = %push.name_any(), namespace = ?push.namespace(), %error, "push reconcile failed");
    }
    Action::requeue(Duration::from_secs(if conflict { 1 } else { 5 }))
}

/// The last value of something per cluster, to map only real changes to reconciles (a ManagedCluster's
/// status changes at every Lease renewal).
struct Changes<T>(Mutex<HashMap<String, T>>);

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T: PartialEq> Changes<T> {
    fn changed(&self, cluster: &str, value: T) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(cluster) == Some(&value) {
            return false;
        }
        all.insert(cluster.to_string(), value);
        true
    }
}
