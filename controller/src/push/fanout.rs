//! The `ManifestPush` reconciler: selects clusters, renders each one's share, writes the deliveries the
//! rollout lets through (and removes those of clusters no longer selected), and sums the deliveries'
//! status into the push's bounded summary.
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tether_api::push::{
    delivery_name, ManifestDelivery, ManifestDeliverySpec, ManifestPush, ManifestPushStatus, RejectedManifest,
    RolloutStatus, RolloutStrategy, PUSH_LABEL,
};

use tether_api::CLUSTER_LABEL;

use super::context::{status_patch, PushContext};
use super::delivery::{condition, FINALIZER};
use super::placement::Compiled;
use super::removal;
use super::render::render;
use super::rollout::{self, Phase};
use super::summary::{cluster_state, summarize};
use crate::Error;

/// The field manager of what the controller writes on the hub.
const HUB_MANAGER: &str = "tether-controller";
pub const PLACED: &str = "Placed";
pub const APPLIED: &str = "Applied";
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const PAUSED: &str = "Paused";

pub async fn reconcile(push: Arc<ManifestPush>, ctx: Arc<PushContext>) -> Result<Action, Error> {
    if push.metadata.deletion_timestamp.is_some() {
        return removal::remove(&push, &ctx).await;
    }
    let namespace = push.namespace().unwrap_or_default();
    let name = push.name_any();
    let generation = push.metadata.generation.unwrap_or_default();
    let now = Timestamp::now();
    let old = push.status.clone().unwrap_or_default();
    let clusters = ctx.clusters.state();
    // The mirror's own copies, not clones: at a thousand clusters they are most of the controller's memory.
    let mut deliveries: Vec<Arc<ManifestDelivery>> = ctx
        .deliveries
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace.as_str()) && d.spec.push == name)
        .collect();

    let placement = match Compiled::new(&push.spec.placement) {
        Ok(placement) => placement,
        Err(why) => return refuse(&push, &ctx, &old, "InvalidPlacement", why, now).await,
    };
    let selected = placement.select(clusters.iter().map(|c| c.as_ref()));
    let states: Vec<_> = selected
        .iter()
        .map(|c| {
            (c.clone(), cluster_state(deliveries.iter().find(|d| d.spec.cluster == *c).map(Arc::as_ref), generation))
        })
        .collect();
    let plan = match rollout::plan(&push.spec.rollout, &states, now) {
        Ok(plan) => plan,
        Err(why) => return refuse(&push, &ctx, &old, "InvalidRollout", why, now).await,
    };

    let api: Api<ManifestDelivery> = Api::namespaced(ctx.hub.clone(), &namespace);
    for cluster in clusters.iter().filter(|c| selected.contains(&c.name_any())) {
        let cluster_name = cluster.name_any();
        let existing = deliveries.iter().position(|d| d.spec.cluster == cluster_name);
        let current = existing.is_some_and(|i| deliveries[i].spec.push_generation == generation);
        let start = plan.start.contains(&cluster_name);
        if !start && !current {
            continue;
        }
        let rendered = render(&namespace, &name, &push.spec, cluster);
        let rejected: Vec<RejectedManifest> =
            rendered.invalid.into_iter().map(|(manifest, message)| RejectedManifest { manifest, message }).collect();
        // A cluster already holding this generation is re-rendered too (its labels may pick other overrides),
        // keeping the time it got the generation.
        let pushed_at = match existing {
            Some(i) if current => deliveries[i].spec.pushed_at.clone(),
            _ => Some(Time(now)),
        };
        let spec = ManifestDeliverySpec {
            cluster: cluster_name.clone(),
            push: name.clone(),
            push_generation: generation,
            pushed_at,
            manifests: rendered.manifests,
            rejected,
            delete_policy: push.spec.delete_policy,
            resync_seconds: push.spec.resync_seconds,
        };
        if existing.is_some_and(|i| deliveries[i].spec == spec) {
            continue;
        }
        let written = Arc::new(summarized(write_delivery(&api, &push, spec).await?));
        match existing {
            Some(i) => deliveries[i] = written,
            None => deliveries.push(written),
        }
    }
    for gone in deliveries.iter().filter(|d| !selected.contains(&d.spec.cluster)) {
        tracing::info!(push = %name, %namespace, cluster = %gone.spec.cluster, "cluster left the placement");
        match api.delete(&gone.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    deliveries.retain(|d| selected.contains(&d.spec.cluster));
    // After the deliveries, so that a new push's first writes wait for nothing; deleted before this, it
    // leaves its deliveries to the garbage collector, as owner references do.
    if !removal::held(&push) {
        removal::hold(&push, &ctx).await?;
    }

    let (summary, failed_clusters) = summarize(&selected, &deliveries, generation);
    let g = push.metadata.generation;
    let mut conditions = Vec::new();
    conditions.push(if selected.is_empty() {
        let why = "the placement selects no cluster the hub accepts".to_string();
        condition(&old.conditions, PLACED, "False", "NoClustersSelected", why, g, now)
    } else {
        let message = format!("{} cluster(s) selected", selected.len());
        condition(&old.conditions, PLACED, "True", "ClustersSelected", message, g, now)
    });
    let all = summary.selected;
    let (status, reason) =
        if all > 0 && summary.applied == all { ("True", "Applied") } else { ("False", "NotApplied") };
    let message = format!(
        "{} of {all} cluster(s) applied, {} failed, {} pending",
        summary.applied, summary.failed, summary.pending
    );
    conditions.push(condition(&old.conditions, APPLIED, status, reason, message, g, now));
    let (status, reason) =
        if all > 0 && summary.available == all { ("True", "Available") } else { ("False", "NotAvailable") };
    let message = format!("{} of {all} cluster(s) available", summary.available);
    conditions.push(condition(&old.conditions, AVAILABLE, status, reason, message, g, now));
    let progressing = if plan.phase == Phase::Progressing { "True" } else { "False" };
    conditions.push(condition(
        &old.conditions,
        PROGRESSING,
        progressing,
        plan.phase.as_str(),
        plan.message.clone(),
        g,
        now,
    ));
    let paused = if plan.phase == Phase::Paused { "True" } else { "False" };
    conditions.push(condition(&old.conditions, PAUSED, paused, plan.phase.as_str(), plan.message.clone(), g, now));

    let status = ManifestPushStatus {
        observed_generation: g,
        conditions,
        summary,
        rollout: Some(RolloutStatus {
            phase: plan.phase.as_str().into(),
            updated: plan.updated as u32,
            message: plan.message.clone(),
        }),
        failed_clusters,
    };
    if status != old {
        write_status(&push, &ctx, &status).await?;
        let was_paused = old.rollout.as_ref().is_some_and(|r| r.phase == Phase::Paused.as_str());
        if plan.phase == Phase::Paused && !was_paused {
            publish(&ctx, &push, EventType::Warning, "RolloutPaused", plan.message.clone()).await;
        }
        let was_unplaced = old.conditions.iter().any(|c| c.type_ == PLACED && c.status == "False");
        if selected.is_empty() && !was_unplaced {
            publish(&ctx, &push, EventType::Warning, "NoClustersSelected", "the placement selects no cluster".into())
                .await;
        }
    }
    // A progressive rollout looks again for clusters past their deadline.
    Ok(match (push.spec.rollout.strategy, plan.phase) {
        (RolloutStrategy::Progressive, Phase::Progressing) => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

async fn write_delivery(
    api: &Api<ManifestDelivery>,
    push: &ManifestPush,
    spec: ManifestDeliverySpec,
) -> Result<ManifestDelivery, Error> {
    let delivery = delivery_of(push, spec);
    let name = delivery.name_any();
    let written = api.patch(&name, &PatchParams::apply(HUB_MANAGER).force(), &Patch::Apply(&delivery)).await?;
    tracing::info!(delivery = %name, cluster = %written.spec.cluster, generation = written.spec.push_generation, "delivery written");
    Ok(written)
}

/// The delivery of `spec` as the push controller applies it: owned by the push, labelled with push and
/// cluster, and with its cleanup finalizer.
fn delivery_of(push: &ManifestPush, spec: ManifestDeliverySpec) -> ManifestDelivery {
    let name = delivery_name(&push.name_any(), &spec.cluster);
    let owner = push.controller_owner_ref(&()).expect("a stored push has a name and uid");
    let mut delivery = ManifestDelivery::new(&name, spec);
    delivery.metadata.namespace = push.namespace();
    delivery.metadata.labels = Some(
        [(PUSH_LABEL.to_string(), push.name_any()), (CLUSTER_LABEL.to_string(), delivery.spec.cluster.clone())].into(),
    );
    delivery.metadata.owner_references = Some(vec![owner]);
    // Written with the delivery, not by its first reconcile: that would be one more hub write and watch
    // event before every new delivery's first apply.
    delivery.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    delivery
}

/// What the rest of a pass reads of a delivery it wrote: everything but its objects, which the mirror
/// holds too (a pass writing to a thousand clusters would otherwise hold all their objects twice).
fn summarized(mut delivery: ManifestDelivery) -> ManifestDelivery {
    delivery.spec.manifests = Vec::new();
    delivery
}

/// The push cannot be placed or rolled out as written: a condition and an Event say why.
async fn refuse(
    push: &ManifestPush,
    ctx: &PushContext,
    old: &ManifestPushStatus,
    reason: &str,
    why: String,
    now: Timestamp,
) -> Result<Action, Error> {
    let mut status = old.clone();
    status.observed_generation = push.metadata.generation;
    let placed: Condition =
        condition(&old.conditions, PLACED, "False", reason, why.clone(), push.metadata.generation, now);
    status.conditions.retain(|c| c.type_ != PLACED);
    status.conditions.insert(0, placed);
    if status != *old {
        write_status(push, ctx, &status).await?;
        publish(ctx, push, EventType::Warning, reason, why).await;
    }
    Ok(Action::await_change())
}

async fn write_status(push: &ManifestPush, ctx: &PushContext, status: &ManifestPushStatus) -> Result<(), Error> {
    let api: Api<ManifestPush> = Api::namespaced(ctx.hub.clone(), &push.namespace().unwrap_or_default());
    let patch = status_patch(&push.status.clone().unwrap_or_default(), status);
    api.patch_status(&push.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn publish(ctx: &PushContext, push: &ManifestPush, type_: EventType, reason: &str, note: String) {
    let note: String = note.chars().take(1024).collect();
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Place".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &push.object_ref(&())).await {
        tracing::warn!(push = %push.name_any(), error = %e, "cannot publish an event");
    }
}

#[cfg(test)]
mod tests {
    use tether_api::push::ManifestPushSpec;

    use super::*;

    #[test]
    fn a_delivery_is_written_owned_labelled_and_with_its_finalizer() {
        let mut push = ManifestPush::new("app", ManifestPushSpec::default());
        push.metadata.namespace = Some("team".into());
        push.metadata.uid = Some("u1".into());
        let spec = ManifestDeliverySpec { cluster: "eu-1".into(), push: "app".into(), ..Default::default() };
        let delivery = delivery_of(&push, spec);
        assert_eq!(delivery.namespace().as_deref(), Some("team"));
        assert_eq!(delivery.finalizers(), [FINALIZER.to_string()], "no first reconcile needed to add it");
        assert_eq!(delivery.owner_references()[0].uid, "u1");
        assert_eq!(delivery.labels()[PUSH_LABEL], "app");
        assert_eq!(delivery.labels()[CLUSTER_LABEL], "eu-1");
    }
}
