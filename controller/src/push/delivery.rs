//! The `ManifestDelivery` reconciler: applies one cluster's share of a push through the hub's proxy as the
//! push's identity, in order (CRDs and Namespaces first, a custom resource once its CRD is served), prunes
//! what left it, reads feedback back, restores drift, and writes what happened to the delivery's status
//! with an Event for every failure and every correction. Its finalizer deletes the applied objects
//! (`deletePolicy: Delete`) before the delivery goes.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use metrics::counter;
use tether_api::push::{
    owner_label_value, ApplyResult, DeletePolicy, DeliveredManifest, ManifestDelivery, ManifestDeliveryStatus,
    ManifestRef, ManifestResult, Strategy,
};

use super::apply::{self, Outcome, Pruned, Refusal};
use super::context::{status_patch, Memory, PushContext};
use super::drift::{Scope, Seen};
use super::render::{describe, identity};
use super::spokes::{gvk, Resolve};
use super::summary::failed;
use super::{feedback, order};
use crate::metrics as m;
use crate::{Error, ManagedCluster};

/// On every delivery: deleting it first deletes (or orphans) what it applied.
pub const FINALIZER: &str = "tether.io/push-cleanup";
/// Default seconds between full re-applies.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
pub const APPLIED: &str = "Applied";
pub const AVAILABLE: &str = "Available";

pub async fn reconcile(delivery: Arc<ManifestDelivery>, ctx: Arc<PushContext>) -> Result<Action, Error> {
    let reference = ObjectRef::from_obj(delivery.as_ref());
    if delivery.metadata.deletion_timestamp.is_some() {
        return finalize(&delivery, &reference, &ctx).await;
    }
    // The push controller writes it with the delivery; this puts it back if someone took it off.
    if !delivery.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = delivery.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        patch_finalizers(&delivery, finalizers, &ctx).await?;
        return Ok(Action::await_change());
    }
    // The event of the last status written is on its way and brings this delivery back; a pass now
    // would take the results before it for the latest and write again what is already there.
    if ctx.memory(&reference).is_ahead_of(&delivery) {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let pass = Pass::run(&delivery, &reference, &ctx).await?;
    let action = pass.finish(&delivery, &reference, &ctx).await?;
    Ok(action)
}

/// One pass over a delivery's manifests.
struct Pass {
    results: Vec<ManifestResult>,
    corrected: Vec<(ManifestRef, &'static str)>,
    /// Some request could not reach the cluster: the rest were not tried.
    unreachable: Option<String>,
    /// A custom resource waits for its CRD.
    waiting: bool,
    /// Every manifest was written (a spec change or a resync), not only those that drifted.
    full: bool,
    memory: Memory,
    scopes: Vec<(Scope, kube::core::ApiResource)>,
}

impl Pass {
    async fn run(
        delivery: &ManifestDelivery,
        reference: &ObjectRef<ManifestDelivery>,
        ctx: &PushContext,
    ) -> Result<Self, Error> {
        let namespace = delivery.namespace().unwrap_or_default();
        let cluster = delivery.spec.cluster.as_str();
        let generation = delivery.metadata.generation.unwrap_or_default();
        let memory = ctx.memory(reference);
        let resync = delivery.spec.resync_seconds.map_or(ctx.default_resync, |s| Duration::from_secs(s.into()));
        let full = memory.generation != Some(generation) || memory.resync_due.is_none_or(|due| Instant::now() >= due);
        let client = ctx.spokes.client(cluster, &namespace)?;
        let previous: HashMap<ManifestRef, &ManifestResult> =
            status_of(delivery).manifests.iter().map(|r| (r.manifest.clone(), r)).collect();
        let owner = owner_label_value(&namespace, &delivery.spec.push);

        let refs: Vec<ManifestRef> =
            delivery.spec.manifests.iter().map(|m| identity(&m.object.value()).unwrap_or_default()).collect();
        let writer =
            Writer { ctx, client: &client, delivery, reference, full, memory: &memory, unreachable: OnceLock::new() };
        let mut written = Vec::with_capacity(refs.len());
        tracing::debug!(delivery = %reference, full, generation, "pass");
        for stage in order::stages(&refs) {
            resolve_kinds(ctx, &client, cluster, stage.iter().map(|&i| &refs[i]), &writer.unreachable).await;
            let writes = futures::stream::iter(stage).map(|i| {
                let (writer, id, previous) = (&writer, &refs[i], previous.get(&refs[i]).copied());
                async move { (i, writer.one(&delivery.spec.manifests[i], id, previous).await) }
            });
            written.extend(writes.buffered(WRITES_AT_ONCE).collect::<Vec<_>>().await);
        }
        let unreachable = writer.unreachable.into_inner();
        let mut pass = Pass {
            results: Vec::new(),
            corrected: Vec::new(),
            unreachable,
            waiting: false,
            full,
            memory,
            scopes: Vec::new(),
        };
        let mut results: Vec<Option<ManifestResult>> = vec![None; refs.len()];
        for (i, write) in written {
            results[i] = Some(write.result);
            pass.scopes.extend(write.watch);
            pass.corrected.extend(write.corrected.map(|how| (refs[i].clone(), how)));
            pass.memory.recorded.extend(write.recorded);
            pass.waiting |= write.waiting;
        }
        pass.results = results.into_iter().flatten().collect();
        pass.results.extend(delivery.spec.rejected.iter().map(|r| ManifestResult {
            manifest: r.manifest.clone(),
            result: ApplyResult::Invalid,
            message: r.message.clone(),
            ..Default::default()
        }));

        // Objects that left the delivery; those of rejected manifests stay (a broken override keeps the
        // last good object rather than deleting it).
        let current: Vec<ManifestRef> =
            refs.iter().cloned().chain(delivery.spec.rejected.iter().map(|r| r.manifest.clone())).collect();
        let gone = order::to_prune(&status_of(delivery).manifests, &current);
        let leftover = pass.prune(ctx, &client, cluster, &owner, gone).await;
        pass.results.extend(leftover);
        if pass.unreachable.is_none() {
            let watch_client = || ctx.spokes.watch_client(cluster, &namespace);
            ctx.drift.sync(reference, watch_client, &owner, std::mem::take(&mut pass.scopes))?;
            pass.memory.generation = Some(generation);
            if pass.full {
                pass.memory.resync_due = Some(Instant::now() + resync);
            }
        }
        Ok(pass)
    }

    /// Deletes the objects `gone` (in delete order), recording what was deleted; the results of those not
    /// deleted yet.
    async fn prune(
        &mut self,
        ctx: &PushContext,
        client: &kube::Client,
        cluster: &str,
        owner: &str,
        gone: Vec<ManifestRef>,
    ) -> Vec<ManifestResult> {
        let pruner = Pruner { ctx, client, cluster, owner, unreachable: OnceLock::new() };
        if let Some(why) = self.unreachable.take() {
            let _ = pruner.unreachable.set(why);
        }
        let mut leftover = Vec::new();
        for stage in order::prune_stages(&gone) {
            resolve_kinds(ctx, client, cluster, stage.iter(), &pruner.unreachable).await;
            // By index: a closure over references would need a higher-ranked lifetime the stream cannot name.
            let deletes = futures::stream::iter(0..stage.len()).map(|i| {
                let (pruner, id) = (&pruner, &stage[i]);
                async move { (id, pruner.delete(id).await) }
            });
            for (id, pruned) in deletes.buffered(WRITES_AT_ONCE).collect::<Vec<_>>().await {
                match pruned {
                    Some(result) => leftover.push(result),
                    None => {
                        self.memory.recorded.remove(&object_key(id));
                    }
                }
            }
        }
        self.unreachable = pruner.unreachable.into_inner();
        leftover
    }

    /// Writes the status and the Events, remembers what was written, and says when to come back.
    async fn finish(
        mut self,
        delivery: &ManifestDelivery,
        reference: &ObjectRef<ManifestDelivery>,
        ctx: &PushContext,
    ) -> Result<Action, Error> {
        let now = Timestamp::now();
        let old = status_of(delivery);
        let mut status = ManifestDeliveryStatus {
            observed_generation: delivery.metadata.generation,
            push_generation: Some(delivery.spec.push_generation),
            conditions: Vec::new(),
            manifests: self.results,
            last_drift_correction: old.last_drift_correction.clone(),
            drift_corrections: old.drift_corrections,
            last_applied: old.last_applied.clone(),
        };
        if self.full && self.unreachable.is_none() {
            status.last_applied = Some(Time(now));
        }
        if !self.corrected.is_empty() {
            status.last_drift_correction = Some(Time(now));
            status.drift_corrections += self.corrected.len() as u64;
        }
        status.conditions = conditions(&old.conditions, &status.manifests, self.unreachable.as_deref(), delivery, now);
        if status != *old {
            let patch = status_patch(old, &status);
            let api: Api<ManifestDelivery> =
                Api::namespaced(ctx.hub.clone(), &delivery.namespace().unwrap_or_default());
            let written =
                api.patch_status(&delivery.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            self.memory.status_version = written.resource_version();
        }
        for (id, how) in &self.corrected {
            counter!(m::PUSH_DRIFT_CORRECTIONS).increment(1);
            let note = format!("restored {}: {how} on cluster {}", describe(id), delivery.spec.cluster);
            tracing::info!(delivery = %reference, object = %describe(id), how, "drift corrected");
            publish(ctx, delivery, EventType::Normal, "DriftCorrected", note).await;
        }
        let before: HashMap<&ManifestRef, &ManifestResult> = old.manifests.iter().map(|r| (&r.manifest, r)).collect();
        for result in status.manifests.iter().filter(|r| failed(r.result)) {
            let seen_before =
                before.get(&result.manifest).is_some_and(|b| b.result == result.result && b.message == result.message);
            if !seen_before {
                counter!(m::PUSH_FAILURES, "result" => format!("{:?}", result.result)).increment(1);
                let note =
                    format!("{} on cluster {}: {}", describe(&result.manifest), delivery.spec.cluster, result.message);
                publish(ctx, delivery, EventType::Warning, &format!("{:?}", result.result), note).await;
            }
        }
        ctx.remember(reference, self.memory);
        let resync = delivery.spec.resync_seconds.map_or(ctx.default_resync, |s| Duration::from_secs(s.into()));
        Ok(if self.unreachable.is_some() {
            Action::requeue(ctx.unreachable_backoff(reference))
        } else {
            ctx.reachable(reference);
            if self.waiting || status.manifests.iter().any(|r| r.result == ApplyResult::Pruning) {
                Action::requeue(Duration::from_secs(2))
            } else if status.manifests.iter().any(|r| failed(r.result)) {
                Action::requeue(resync.min(Duration::from_secs(30)))
            } else {
                Action::requeue(resync)
            }
        })
    }
}

/// Manifests of one stage written to a cluster at once. Through the tunnel each write waits longer for
/// its answer than next to the apiserver; a few in flight keep a long list from adding that up.
pub const WRITES_AT_ONCE: usize = 8;

/// What the writes of one pass share.
struct Writer<'a> {
    ctx: &'a PushContext,
    client: &'a kube::Client,
    delivery: &'a ManifestDelivery,
    reference: &'a ObjectRef<ManifestDelivery>,
    full: bool,
    memory: &'a Memory,
    /// Set by the first write that could not reach the cluster: the writes not started yet are not tried.
    unreachable: OnceLock<String>,
}

/// One manifest's write: its result, and what the pass learns from it.
#[derive(Default)]
struct Write {
    result: ManifestResult,
    /// The watch that covers the object.
    watch: Option<(Scope, kube::core::ApiResource)>,
    /// How it had drifted, if this write restored it.
    corrected: Option<&'static str>,
    /// The object's key and resourceVersion once written.
    recorded: Option<(String, String)>,
    /// A custom resource waits for its CRD.
    waiting: bool,
}

impl From<ManifestResult> for Write {
    fn from(result: ManifestResult) -> Self {
        Self { result, ..Default::default() }
    }
}

impl Writer<'_> {
    /// Applies (or reads) one manifest, unless the spoke still holds exactly what was last written.
    async fn one(&self, manifest: &DeliveredManifest, id: &ManifestRef, previous: Option<&ManifestResult>) -> Write {
        let Writer { ctx, client, delivery, reference, .. } = *self;
        let cluster = delivery.spec.cluster.as_str();
        let mut result = ManifestResult { manifest: id.clone(), ..Default::default() };
        if let Some(why) = self.unreachable.get() {
            result.message = format!("not tried: {why}");
            return result.into();
        }
        let api_version = id.api_version.clone().unwrap_or_default();
        let kind = match ctx.spokes.kind(client, cluster, &gvk(&api_version, &id.kind)).await {
            Ok(kind) => kind,
            Err(Resolve::Unknown) => {
                if let Some(crd) = defining_crd(delivery, &api_version, &id.kind) {
                    result.message = format!("waiting for CustomResourceDefinition {crd} to be established");
                    return Write { result, waiting: true, ..Default::default() };
                }
                ctx.spokes.forget(cluster);
                result.result = ApplyResult::UnknownKind;
                result.message = format!("the cluster serves no kind {} in {api_version}", id.kind);
                return result.into();
            }
            Err(Resolve::Failed(e)) => return self.refused(result, apply::classify(&e)),
        };
        let namespace = match (kind.namespaced, id.namespace.as_deref()) {
            (true, None) => {
                result.result = ApplyResult::Invalid;
                result.message = format!("{} is namespaced: metadata.namespace is required", id.kind);
                return result.into();
            }
            (true, Some(ns)) => Some(ns),
            (false, _) => None,
        };
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource),
            None => Api::all_with(client.clone(), &kind.resource),
        };
        let scope = Scope::of(&kind.resource, namespace);
        let key = object_key(id);
        let seen = ctx.drift.seen(reference, &scope, &id.name);
        let recorded = self.memory.recorded.get(&key);
        let watched = manifest.strategy != Strategy::ReadOnly;
        // An object only read is someone else's: watched by name, so that a change re-reads its feedback.
        let watch = match watched {
            true => Some((scope, kind.resource.clone())),
            false => Some((Scope::object(&kind.resource, namespace, &id.name), kind.resource.clone())),
        };
        // Unchanged since written: the last result (and its feedback) still holds. A watch not yet synced
        // knows nothing either way; its sync triggers another pass, which compares then (re-writing
        // everything meanwhile would double the requests of every new delivery: its status write comes
        // back as an event before the watch has listed).
        if let (false, true, Some(last), Some(previous)) = (self.full, watched, recorded, previous) {
            let unchanged = match &seen {
                Seen::Present(rv) => rv == last,
                Seen::Unknown => true,
                Seen::Absent => false,
            };
            if unchanged && previous.result == ApplyResult::Applied {
                return Write { result: previous.clone(), watch, ..Default::default() };
            }
        }
        let object = match apply::write(&api, &id.name, manifest).await {
            Outcome::Written(object) => {
                result.result = ApplyResult::Applied;
                object
            }
            Outcome::Observed(object) => {
                result.result = ApplyResult::Observed;
                object
            }
            Outcome::Refused(refusal) => return Write { watch, ..self.refused(result, refusal) },
        };
        let rv = object.resource_version().unwrap_or_default();
        // A correction: the same spec as last time, and this write changed what the spoke held, which was
        // neither what was last written nor what the watch last saw.
        let drifted = self.memory.generation == delivery.metadata.generation
            && watched
            && recorded.is_some_and(|last| *last != rv)
            && match &seen {
                Seen::Present(before) => *before != rv,
                Seen::Absent => true,
                Seen::Unknown => false,
            };
        let corrected = drifted.then_some(if seen == Seen::Absent { "deleted" } else { "changed" });
        let value = serde_json::to_value(&*object).unwrap_or_default();
        let read = feedback::read(&value, &manifest.feedback);
        result.feedback = read.values;
        result.available = read.available;
        result.message = read.errors.join("; ");
        Write { result, watch, corrected, recorded: Some((key, rv)), waiting: false }
    }

    fn refused(&self, mut result: ManifestResult, refusal: Refusal) -> Write {
        if refusal.unreachable {
            // Only the first reason is kept; the writes already in flight end on their own.
            let _ = self.unreachable.set(refusal.message.clone());
        }
        result.result = refusal.result;
        result.message = refusal.message;
        result.into()
    }
}

/// Asks the spoke once for each kind of `ids` it is not known to serve yet, one at a time, so that the
/// requests that follow at once find them remembered rather than each asking. A cluster found unreachable
/// is noted in `unreachable`.
async fn resolve_kinds<'i>(
    ctx: &PushContext,
    client: &kube::Client,
    cluster: &str,
    ids: impl Iterator<Item = &'i ManifestRef>,
    unreachable: &OnceLock<String>,
) {
    let mut asked = HashSet::new();
    for id in ids {
        let gvk = gvk(id.api_version.as_deref().unwrap_or_default(), &id.kind);
        if unreachable.get().is_some() || !asked.insert(gvk.clone()) {
            continue;
        }
        if let Err(Resolve::Failed(e)) = ctx.spokes.kind(client, cluster, &gvk).await {
            let refusal = apply::classify(&e);
            if refusal.unreachable {
                let _ = unreachable.set(refusal.message);
            }
        }
    }
}

/// What the deletions of one pass share.
struct Pruner<'a> {
    ctx: &'a PushContext,
    client: &'a kube::Client,
    cluster: &'a str,
    owner: &'a str,
    /// Set by the first request that could not reach the cluster: the deletions not started yet wait.
    unreachable: OnceLock<String>,
}

impl Pruner<'_> {
    /// Deletes one object that left the delivery; its result while that has not succeeded.
    async fn delete(&self, id: &ManifestRef) -> Option<ManifestResult> {
        let pruning = |message: String| {
            Some(ManifestResult { manifest: id.clone(), result: ApplyResult::Pruning, message, ..Default::default() })
        };
        if let Some(why) = self.unreachable.get() {
            return pruning(format!("not deleted yet: {why}"));
        }
        let refused = |refusal: Refusal| {
            if refusal.unreachable {
                let _ = self.unreachable.set(refusal.message.clone());
            }
            pruning(refusal.message)
        };
        let api_version = id.api_version.clone().unwrap_or_default();
        let kind = match self.ctx.spokes.kind(self.client, self.cluster, &gvk(&api_version, &id.kind)).await {
            Ok(kind) => kind,
            // The kind is gone (its CRD deleted): so are its objects.
            Err(Resolve::Unknown) => return None,
            Err(Resolve::Failed(e)) => return refused(apply::classify(&e)),
        };
        let api: Api<DynamicObject> = match (kind.namespaced, id.namespace.as_deref()) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            (true, None) => return None,
            (false, _) => Api::all_with(self.client.clone(), &kind.resource),
        };
        match apply::prune(&api, &id.name, self.owner).await {
            Pruned::Done => {
                counter!(m::PUSH_PRUNES).increment(1);
                None
            }
            Pruned::Refused(refusal) => refused(refusal),
        }
    }
}

/// Deleting: the applied objects go first (`Delete`, while the cluster is registered), then the finalizer.
async fn finalize(
    delivery: &ManifestDelivery,
    reference: &ObjectRef<ManifestDelivery>,
    ctx: &PushContext,
) -> Result<Action, Error> {
    ctx.drift.stop(reference);
    if !delivery.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let cluster = delivery.spec.cluster.as_str();
    let registered = ctx.clusters.get(&ObjectRef::<ManagedCluster>::new(cluster)).is_some();
    if delivery.spec.delete_policy == DeletePolicy::Delete && registered {
        let namespace = delivery.namespace().unwrap_or_default();
        let client = ctx.spokes.client(cluster, &namespace)?;
        let owner = owner_label_value(&namespace, &delivery.spec.push);
        let mut pass = Pass {
            results: Vec::new(),
            corrected: Vec::new(),
            unreachable: None,
            waiting: false,
            full: true,
            memory: ctx.memory(reference),
            scopes: Vec::new(),
        };
        let gone = order::to_prune(&status_of(delivery).manifests, &[]);
        pass.results = pass.prune(ctx, &client, cluster, &owner, gone).await;
        if !pass.results.is_empty() {
            let mut status = status_of(delivery).clone();
            let first = pass.results[0].message.clone();
            status.manifests = pass.results;
            if status != *status_of(delivery) {
                let api: Api<ManifestDelivery> = Api::namespaced(ctx.hub.clone(), &namespace);
                let patch = status_patch(status_of(delivery), &status);
                api.patch_status(&delivery.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                let note = format!("cannot delete the pushed objects from cluster {cluster} yet: {first}");
                publish(ctx, delivery, EventType::Warning, "PruneFailed", note).await;
            }
            return Ok(Action::requeue(ctx.unreachable_backoff(reference)));
        }
    }
    let finalizers = delivery.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(delivery, finalizers, ctx).await?;
    ctx.forget(reference);
    tracing::info!(delivery = %reference, policy = ?delivery.spec.delete_policy, registered, "delivery removed");
    Ok(Action::await_change())
}

fn status_of(delivery: &ManifestDelivery) -> &ManifestDeliveryStatus {
    static EMPTY: std::sync::OnceLock<ManifestDeliveryStatus> = std::sync::OnceLock::new();
    delivery.status.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// `Applied` and `Available` from the results.
fn conditions(
    old: &[Condition],
    results: &[ManifestResult],
    unreachable: Option<&str>,
    delivery: &ManifestDelivery,
    now: Timestamp,
) -> Vec<Condition> {
    let applied_count =
        results.iter().filter(|r| matches!(r.result, ApplyResult::Applied | ApplyResult::Observed)).count();
    let failures: Vec<&ManifestResult> = results.iter().filter(|r| failed(r.result)).collect();
    let (applied, reason, message) = if let Some(why) = unreachable {
        ("False", "ClusterUnreachable", format!("cluster {}: {why}", delivery.spec.cluster))
    } else if let Some(first) = failures.first() {
        let message = format!(
            "{} of {} failed; first: {}: {}",
            failures.len(),
            results.len(),
            describe(&first.manifest),
            first.message
        );
        ("False", "ApplyFailed", message)
    } else if applied_count < results.len() {
        let first = results.iter().find(|r| !matches!(r.result, ApplyResult::Applied | ApplyResult::Observed));
        let message = first.map_or_else(String::new, |r| format!("{}: {}", describe(&r.manifest), r.message));
        ("False", "Pending", format!("{applied_count} of {} applied; {message}", results.len()))
    } else {
        ("True", "Applied", format!("{applied_count} object(s) applied"))
    };
    let unavailable = results.iter().find(|r| r.available == Some(false));
    let (available, available_reason, available_message) = match (applied, unavailable) {
        ("True", None) => ("True", "Available", "every object is available".to_string()),
        ("True", Some(r)) => ("False", "NotAvailable", format!("{} is not available yet", describe(&r.manifest))),
        _ => ("Unknown", "NotApplied", "not every object is applied".to_string()),
    };
    vec![
        condition(old, APPLIED, applied, reason, message, delivery.metadata.generation, now),
        condition(old, AVAILABLE, available, available_reason, available_message, delivery.metadata.generation, now),
    ]
}

/// A condition keeping its last transition time while its status stays.
pub fn condition(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    // An empty message is sent as null, which the CRD's schema refuses.
    let message = if message.is_empty() { reason.to_string() } else { message };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The CRD among the delivery's manifests that defines `kind` of `api_version`'s group, by name.
fn defining_crd(delivery: &ManifestDelivery, api_version: &str, kind: &str) -> Option<String> {
    let group = api_version.split_once('/').map(|(g, _)| g)?;
    delivery.spec.manifests.iter().map(|m| m.object.value()).find_map(|o| {
        let is_crd = o["kind"] == "CustomResourceDefinition"
            && o["apiVersion"].as_str().is_some_and(|v| v.starts_with("apiextensions.k8s.io/"));
        (is_crd && o["spec"]["group"] == group && o["spec"]["names"]["kind"] == kind)
            .then(|| o["metadata"]["name"].as_str().unwrap_or_default().to_string())
    })
}

fn object_key(id: &ManifestRef) -> String {
    format!(
        "{}/{}/{}/{}",
        id.api_version.as_deref().unwrap_or_default(),
        id.kind,
        id.namespace.as_deref().unwrap_or_default(),
        id.name
    )
}

async fn patch_finalizers(
    delivery: &ManifestDelivery,
    finalizers: Vec<String>,
    ctx: &PushContext,
) -> Result<(), Error> {
    let api: Api<ManifestDelivery> = Api::namespaced(ctx.hub.clone(), &delivery.namespace().unwrap_or_default());
    crate::finalizers::patch(&api, delivery, finalizers).await
}

pub async fn publish(ctx: &PushContext, delivery: &ManifestDelivery, type_: EventType, reason: &str, note: String) {
    let note: String = note.chars().take(1024).collect();
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Apply".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &delivery.object_ref(&())).await {
        tracing::warn!(delivery = %delivery.name_any(), error = %e, "cannot publish an event");
    }
}

#[cfg(test)]
mod tests {
    use tether_api::push::ManifestDeliverySpec;

    use super::*;

    #[test]
    fn a_crd_of_the_delivery_makes_its_kind_wait() {
        let crd = serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}}
        });
        let spec = ManifestDeliverySpec {
            manifests: vec![DeliveredManifest {
                object: tether_api::push::EmbeddedObject::new(&crd).unwrap(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let delivery = ManifestDelivery::new("p.a", spec);
        assert_eq!(defining_crd(&delivery, "example.com/v1", "Widget").as_deref(), Some("widgets.example.com"));
        assert_eq!(defining_crd(&delivery, "example.com/v1", "Gadget"), None);
        assert_eq!(defining_crd(&delivery, "v1", "ConfigMap"), None);
    }

    #[test]
    fn conditions_say_why_not_applied() {
        let delivery = ManifestDelivery::new("p.a", ManifestDeliverySpec { cluster: "a".into(), ..Default::default() });
        let now = Timestamp::now();
        let result = |name: &str, result, available| ManifestResult {
            manifest: ManifestRef {
                kind: "ConfigMap".into(),
                namespace: Some("d".into()),
                name: name.into(),
                ..Default::default()
            },
            result,
            message: format!("{name} said so"),
            available,
            ..Default::default()
        };
        let ok = [result("x", ApplyResult::Applied, None), result("y", ApplyResult::Applied, Some(false))];
        let c = conditions(&[], &ok, None, &delivery, now);
        assert_eq!(
            (c[0].status.as_str(), c[1].status.as_str(), c[1].reason.as_str()),
            ("True", "False", "NotAvailable")
        );
        let bad = [result("x", ApplyResult::Applied, None), result("y", ApplyResult::Forbidden, None)];
        let c = conditions(&[], &bad, None, &delivery, now);
        assert_eq!((c[0].reason.as_str(), c[1].status.as_str()), ("ApplyFailed", "Unknown"));
        assert!(c[0].message.contains("ConfigMap d/y: y said so"), "{}", c[0].message);
        let c = conditions(&c, &bad, Some("no tunnel"), &delivery, now);
        assert_eq!(c[0].reason, "ClusterUnreachable");
    }
}
