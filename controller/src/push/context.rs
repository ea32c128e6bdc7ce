//! What the push reconcilers share: the hub client, the spoke clients, the drift watches, the mirrors of
//! clusters and deliveries, and what each delivery's last pass wrote.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use tether_api::push::ManifestDelivery;

use super::drift::Drift;
use super::spokes::Spokes;
use crate::ManagedCluster;

/// What the controller remembers of a delivery between passes (lost on restart: the first pass after one
/// re-applies everything, which changes nothing on the spokes).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// The delivery generation last applied to a reachable cluster.
    pub generation: Option<i64>,
    /// When everything is written again even if nothing seems changed.
    pub resync_due: Option<Instant>,
    /// The resourceVersion each object had after it was last written, by object.
    pub recorded: HashMap<String, String>,
    /// The delivery's resourceVersion after its status was last written here.
    pub status_version: Option<String>,
}

impl Memory {
    /// Whether `delivery` (as the mirror holds it) is older than the status last written: the mirror has
    /// not caught up, and the results it holds are not the latest.
    pub fn is_ahead_of(&self, delivery: &ManifestDelivery) -> bool {
        self.status_version.as_deref().is_some_and(|written| !holds(delivery.resource_version().as_deref(), written))
    }
}

/// Whether a mirror holding an object at `held` holds it at `wanted` or later. resourceVersions are
/// opaque, but etcd's are increasing numbers, so a later one counts too.
pub fn holds(held: Option<&str>, wanted: &str) -> bool {
    match held {
        Some(held) if held == wanted => true,
        Some(held) => matches!((held.parse::<u64>(), wanted.parse::<u64>()), (Ok(h), Ok(w)) if h >= w),
        None => false,
    }
}

pub struct PushContext {
    pub hub: kube::Client,
    pub spokes: Spokes,
    pub drift: Drift,
    pub recorder: Recorder,
    pub clusters: Store<ManagedCluster>,
    pub deliveries: Store<ManifestDelivery>,
    pub default_resync: Duration,
    memory: Mutex<HashMap<String, Memory>>,
    /// Consecutive passes that could not reach the cluster, per delivery.
    unreachable: Mutex<HashMap<String, u32>>,
}

impl PushContext {
    pub fn new(
        hub: kube::Client,
        spokes: Spokes,
        drift: Drift,
        recorder: Recorder,
        clusters: Store<ManagedCluster>,
        deliveries: Store<ManifestDelivery>,
        default_resync: Duration,
    ) -> Self {
        Self {
            hub,
            spokes,
            drift,
            recorder,
            clusters,
            deliveries,
            default_resync,
            memory: Default::default(),
            unreachable: Default::default(),
        }
    }

    pub fn memory(&self, delivery: &ObjectRef<ManifestDelivery>) -> Memory {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key(delivery)).cloned().unwrap_or_default()
    }

    pub fn remember(&self, delivery: &ObjectRef<ManifestDelivery>, memory: Memory) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).insert(key(delivery), memory);
    }

    pub fn forget(&self, delivery: &ObjectRef<ManifestDelivery>) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(delivery));
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(delivery));
    }

    /// The wait before trying an unreachable cluster again: 1 s doubling to 30 s (the cluster coming back
    /// triggers its deliveries anyway).
    pub fn unreachable_backoff(&self, delivery: &ObjectRef<ManifestDelivery>) -> Duration {
        let mut all = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let count = all.entry(key(delivery)).or_insert(0);
        *count = count.saturating_add(1);
        (Duration::from_secs(1) * 2u32.pow(count.saturating_sub(1).min(5))).min(Duration::from_secs(30))
    }

    pub fn reachable(&self, delivery: &ObjectRef<ManifestDelivery>) {
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(delivery));
    }

    /// Deliveries of `cluster`, from the mirror.
    pub fn deliveries_of(&self, cluster: &str) -> Vec<ObjectRef<ManifestDelivery>> {
        self.deliveries
            .state()
            .iter()
            .filter(|d| d.spec.cluster == cluster)
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    }
}

fn key(delivery: &ObjectRef<ManifestDelivery>) -> String {
    format!("{}/{}", delivery.namespace.as_deref().unwrap_or_default(), delivery.name)
}

/// A merge patch setting the status to `new`: every field `old` had and `new` leaves out is removed (a
/// merge patch otherwise keeps it), arrays and the rest are replaced whole.
pub fn status_patch<T: serde::Serialize>(old: &T, new: &T) -> serde_json::Value {
    let old = serde_json::to_value(old).unwrap_or_default();
    let mut new = serde_json::to_value(new).unwrap_or_default();
    if let (Some(old), Some(fields)) = (old.as_object(), new.as_object_mut()) {
        for key in old.keys() {
            fields.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": new })
}

#[cfg(test)]
mod tests {
    use tether_api::push::{ClusterFailure, ManifestPushStatus};

    use super::*;

    #[test]
    fn a_mirror_behind_the_last_status_written_is_not_read_as_the_latest() {
        assert!(holds(Some("12"), "12") && holds(Some("13"), "12") && holds(Some("opaque"), "opaque"));
        assert!(!holds(Some("11"), "12") && !holds(None, "12") && !holds(Some("opaque"), "12"));
        let mut delivery = ManifestDelivery::new("p.a", Default::default());
        delivery.metadata.resource_version = Some("41".into());
        let mut memory = Memory::default();
        assert!(!memory.is_ahead_of(&delivery), "nothing written yet");
        memory.status_version = Some("42".into());
        assert!(memory.is_ahead_of(&delivery));
        delivery.metadata.resource_version = Some("42".into());
        assert!(!memory.is_ahead_of(&delivery));
    }

    #[test]
    fn a_status_patch_removes_what_the_new_status_leaves_out() {
        let old = ManifestPushStatus {
            failed_clusters: vec![ClusterFailure { cluster: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        let patch = status_patch(&old, &ManifestPushStatus::default());
        assert_eq!(patch["status"]["failedClusters"], serde_json::Value::Null);
        assert!(patch["status"].as_object().unwrap().contains_key("failedClusters"));
        assert_eq!(patch["status"]["summary"]["selected"], 0);
    }
}
