//! Drift, event-driven: for every delivery, one watch per (kind, namespace) of the objects it applied,
//! through the tunnel, selecting on the push's [`PUSHED_BY_LABEL`] value, and one per object it only
//! reads (`ReadOnly`: someone else's, so unlabelled), selecting on its name, so that its feedback follows
//! it. Every change or deletion the
//! spoke reports triggers the delivery's reconcile, which re-applies what no longer matches; the mirror of
//! what the spoke holds tells it what changed. A watch that cannot run (the tunnel is down) retries with
//! backoff, and the delivery's periodic resync re-applies everything anyway.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tether_api::push::{ManifestDelivery, PUSHED_BY_LABEL};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What one watch covers: a kind (by its resource path) in one namespace, or cluster-wide for cluster-scoped
/// kinds; the objects the delivery applied, or one object by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub api_version: String,
    pub plural: String,
    pub namespace: Option<String>,
    /// The one object watched (one the delivery only reads); `None` for those it applied.
    pub name: Option<String>,
}

impl Scope {
    /// The objects of a kind in `namespace` that the delivery applied.
    pub fn of(resource: &ApiResource, namespace: Option<&str>) -> Self {
        Self {
            api_version: resource.api_version.clone(),
            plural: resource.plural.clone(),
            namespace: namespace.map(str::to_string),
            name: None,
        }
    }

    /// One object the delivery only reads.
    pub fn object(resource: &ApiResource, namespace: Option<&str>, name: &str) -> Self {
        Self { name: Some(name.to_string()), ..Self::of(resource, namespace) }
    }

    fn config(&self, owner: &str) -> watcher::Config {
        match &self.name {
            Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
            None => watcher::Config::default().labels(&format!("{PUSHED_BY_LABEL}={owner}")),
        }
    }
}

/// What the mirror says of one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// No synced watch covers it (just started, or not yet listed): nothing is known.
    Unknown,
    /// Listed and absent: deleted on the spoke, or never created.
    Absent,
    /// Present at this resourceVersion.
    Present(String),
}

#[derive(Default)]
struct Mirror {
    synced: bool,
    /// resourceVersion by object name (a watch covers one namespace, or none).
    objects: HashMap<String, String>,
}

struct Watch {
    mirror: Arc<Mutex<Mirror>>,
    stop: CancellationToken,
}

/// Every delivery's watches.
pub struct Drift {
    watches: Mutex<HashMap<String, HashMap<Scope, Watch>>>,
    trigger: mpsc::Sender<ObjectRef<ManifestDelivery>>,
    shutdown: CancellationToken,
}

impl Drift {
    /// Watches send the delivery to reconcile on `trigger`; all stop at `shutdown`.
    pub fn new(trigger: mpsc::Sender<ObjectRef<ManifestDelivery>>, shutdown: CancellationToken) -> Self {
        Self { watches: Default::default(), trigger, shutdown }
    }

    /// Runs exactly the watches `scopes` for `delivery` (`namespace/name`): starts those missing, stops the
    /// others. A client is made (`client`) only to start a watch, and shared by those started together.
    pub fn sync(
        &self,
        delivery: &ObjectRef<ManifestDelivery>,
        client: impl Fn() -> crate::Result<kube::Client>,
        owner: &str,
        scopes: Vec<(Scope, ApiResource)>,
    ) -> crate::Result<()> {
        let mut made: Option<kube::Client> = None;
        let key = key(delivery);
        let mut all = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let watches = all.entry(key).or_default();
        let wanted: HashSet<&Scope> = scopes.iter().map(|(s, _)| s).collect();
        watches.retain(|scope, watch| {
            let keep = wanted.contains(scope);
            if !keep {
                watch.stop.cancel();
            }
            keep
        });
        for (scope, resource) in scopes {
            if watches.contains_key(&scope) {
                continue;
            }
            let client = match &made {
                Some(client) => client.clone(),
                None => made.insert(client()?).clone(),
            };
            let api: Api<DynamicObject> = match &scope.namespace {
                Some(ns) => Api::namespaced_with(client, ns, &resource),
                None => Api::all_with(client, &resource),
            };
            let watch = Watch { mirror: Default::default(), stop: self.shutdown.child_token() };
            tokio::spawn(run(
                api,
                scope.config(owner),
                watch.mirror.clone(),
                watch.stop.clone(),
                self.trigger.clone(),
                delivery.clone(),
            ));
            watches.insert(scope, watch);
        }
        Ok(())
    }

    /// What the watches of `delivery` saw of object `name` in `scope`.
    pub fn seen(&self, delivery: &ObjectRef<ManifestDelivery>, scope: &Scope, name: &str) -> Seen {
        let all = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let Some(watch) = all.get(&key(delivery)).and_then(|w| w.get(scope)) else { return Seen::Unknown };
        let mirror = watch.mirror.lock().unwrap_or_else(|e| e.into_inner());
        match (mirror.synced, mirror.objects.get(name)) {
            (false, _) => Seen::Unknown,
            (true, None) => Seen::Absent,
            (true, Some(rv)) => Seen::Present(rv.clone()),
        }
    }

    /// Stops every watch of `delivery`.
    pub fn stop(&self, delivery: &ObjectRef<ManifestDelivery>) {
        if let Some(watches) = self.watches.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(delivery)) {
            for watch in watches.values() {
                watch.stop.cancel();
            }
        }
    }

    /// How many watches run, for the metrics.
    pub fn count(&self) -> usize {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).values().map(HashMap::len).sum()
    }
}

fn key(delivery: &ObjectRef<ManifestDelivery>) -> String {
    format!("{}/{}", delivery.namespace.as_deref().unwrap_or_default(), delivery.name)
}

async fn run(
    api: Api<DynamicObject>,
    config: watcher::Config,
    mirror: Arc<Mutex<Mirror>>,
    stop: CancellationToken,
    trigger: mpsc::Sender<ObjectRef<ManifestDelivery>>,
    delivery: ObjectRef<ManifestDelivery>,
) {
    let events = watcher::watcher(api, config).default_backoff().take_until(stop.cancelled_owned());
    let mut events = std::pin::pin!(events);
    let mut listing: HashMap<String, String> = HashMap::new();
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing.clear();
                false
            }
            Ok(Event::InitApply(object)) => {
                listing.insert(object.name_any(), object.resource_version().unwrap_or_default());
                false
            }
            Ok(Event::InitDone) => {
                let mut m = mirror.lock().unwrap_or_else(|e| e.into_inner());
                m.objects = std::mem::take(&mut listing);
                m.synced = true;
                true
            }
            Ok(Event::Apply(object)) => {
                let rv = object.resource_version().unwrap_or_default();
                mirror.lock().unwrap_or_else(|e| e.into_inner()).objects.insert(object.name_any(), rv);
                true
            }
            Ok(Event::Delete(object)) => {
                mirror.lock().unwrap_or_else(|e| e.into_inner()).objects.remove(&object.name_any());
                true
            }
            Err(error) => {
                tracing::debug!(delivery = %delivery, %error, "drift watch failed; retrying");
                false
            }
        };
        if changed {
            tracing::debug!(delivery = %delivery, "drift watch saw a change");
        }
        // A full channel means a reconcile is queued already; the delivery's reconcile reads the mirror.
        if changed {
            let _ = trigger.try_send(delivery.clone());
        }
    }
}
