//! The clusters the hub knows: `ManagedCluster` objects, mirrored in memory by a watch so that the request
//! path never asks the hub apiserver whether a cluster exists.
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tether_api::cluster::ManagedCluster;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct KnownClusters {
    names: Arc<RwLock<HashSet<String>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl KnownClusters {
    pub fn contains(&self, name: &str) -> bool {
        self.names.read().unwrap_or_else(|e| e.into_inner()).contains(name)
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A fixed set, for tests of the proxy without a hub apiserver.
    pub fn fixed(names: impl IntoIterator<Item = String>) -> Self {
        let known = Self::default();
        known.names.write().unwrap_or_else(|e| e.into_inner()).extend(names);
        known.synced.store(true, std::sync::atomic::Ordering::Relaxed);
        known
    }

    /// Keeps the set in step with the hub until `shutdown`; the watcher re-lists after any error.
    pub async fn watch(self, client: kube::Client, shutdown: CancellationToken) {
        // Only names matter here: metadata alone, so a spec the hub's types do not know yet cannot break it.
        let api: Api<PartialObjectMeta<ManagedCluster>> = Api::all(client);
        let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut pending: HashSet<String> = HashSet::new();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(e) => e,
                    None => return,
                },
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    // The stream backs off and re-lists by itself.
                    tracing::warn!(error = %e, "watching ManagedClusters");
                    continue;
                }
            };
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Apply(o) => {
                    names.insert(name_of(&o));
                }
                Event::Delete(o) => {
                    names.remove(&name_of(&o));
                }
                Event::Init => pending.clear(),
                Event::InitApply(o) => {
                    pending.insert(name_of(&o));
                }
                Event::InitDone => {
                    *names = std::mem::take(&mut pending);
                    self.synced.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

fn name_of(object: &PartialObjectMeta<ManagedCluster>) -> String {
    object.metadata.name.clone().unwrap_or_default()
}
