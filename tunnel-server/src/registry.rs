//! Live tunnels of this replica, by cluster. Several client replicas of one cluster may be connected;
//! requests are spread over them round-robin. Every change wakes the lease task (`changed`), which reads
//! what this replica holds with `holdings`.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Tunnel {
    pub id: u64,
    pub cluster: String,
    pub instance: String,
    pub connection: quinn::Connection,
    /// When the spoke's certificate was issued (`revocations::issued_at`), kept for revocation checks.
    pub issued: SystemTime,
    /// The software version the client named in its Hello.
    pub client_version: String,
    /// What the client said about its cluster (`SpokeInfo`), once it did.
    pub described: Mutex<Option<Described>>,
    /// The cluster's open-streams gauge, looked up once: a labelled lookup allocates on every request.
    pub streams_open: metrics::Gauge,
}

/// A spoke's description of its cluster, as its client sent it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Described {
    pub apiserver_version: String,
    pub ca_bundle: String,
}

/// What the Lease of one held cluster reports about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// The instance names the clients gave (sorted, unique, empty names left out).
    pub instances: Vec<String>,
    /// From the newest tunnel: its client's version, and its description of the cluster (empty until sent).
    pub client_version: String,
    pub described: Described,
}

#[derive(Debug, Default)]
pub struct Registry {
    // std RwLock: held only for map updates and picks, never across an await.
    tunnels: RwLock<Tunnels>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    // One waiter (the lease task); a wake-up while it is busy is kept for its next wait.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Tunnels {
    by_cluster: HashMap<String, Vec<Arc<Tunnel>>>,
    /// Clusters whose last tunnel here ended with the client's GoAway, not yet taken by `holdings`.
    went_away: HashSet<String>,
}

/// What this replica holds, taken at one instant (for the Leases).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holdings {
    /// Clusters with at least one tunnel here.
    pub connected: BTreeMap<String, Held>,
    /// Clusters whose last tunnel here ended because the client said GoAway, since the previous `holdings`.
    pub went_away: Vec<String>,
}

impl Registry {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn insert(&self, tunnel: Arc<Tunnel>) -> usize {
        let mut tunnels = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        tunnels.went_away.remove(&tunnel.cluster);
        let list = tunnels.by_cluster.entry(tunnel.cluster.clone()).or_default();
        list.push(tunnel);
        let count = list.len();
        drop(tunnels);
        self.changed.notify_one();
        count
    }

    /// Returns how many tunnels the cluster still has. `said_go_away`: the client ended this tunnel with
    /// GoAway (when it was the cluster's last one here, its Lease says so).
    pub fn remove(&self, cluster: &str, id: u64, said_go_away: bool) -> usize {
        let mut tunnels = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let Some(list) = tunnels.by_cluster.get_mut(cluster) else { return 0 };
        let before = list.len();
        list.retain(|t| t.id != id);
        let left = list.len();
        if left == 0 {
            tunnels.by_cluster.remove(cluster);
            if said_go_away && left < before {
                tunnels.went_away.insert(cluster.to_string());
            }
        }
        drop(tunnels);
        self.changed.notify_one();
        left
    }

    /// A live tunnel of the cluster, rotating over client instances; closed connections are skipped, and so
    /// is every tunnel of an instance but its newest (see [`routable`]).
    pub fn pick(&self, cluster: &str) -> Option<Arc<Tunnel>> {
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        let list = tunnels.by_cluster.get(cluster)?;
        let routes: Vec<Route<'_>> =
            list.iter().map(|t| Route { instance: &t.instance, live: t.connection.close_reason().is_none() }).collect();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        (0..list.len()).map(|i| (start + i) % list.len()).find(|&i| routable(&routes, i)).map(|i| list[i].clone())
    }

    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        tunnels.by_cluster.values().flatten().cloned().collect()
    }

    pub fn clusters(&self) -> Vec<String> {
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        tunnels.by_cluster.keys().cloned().collect()
    }

    /// The clusters held now, and takes the clusters that went away since the last call.
    pub fn holdings(&self) -> Holdings {
        let mut tunnels = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let connected = tunnels
            .by_cluster
            .iter()
            .map(|(cluster, list)| {
                let mut instances: Vec<String> =
                    list.iter().map(|t| t.instance.clone()).filter(|i| !i.is_empty()).collect();
                instances.sort();
                instances.dedup();
                let newest = list.last();
                let described = list
                    .iter()
                    .rev()
                    .find_map(|t| t.described.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    .unwrap_or_default();
                let client_version = newest.map(|t| t.client_version.clone()).unwrap_or_default();
                (cluster.clone(), Held { instances, client_version, described })
            })
            .collect();
        let mut went_away: Vec<String> = tunnels.went_away.drain().collect();
        went_away.sort();
        Holdings { connected, went_away }
    }

    /// Records what a tunnel's client said about its cluster (the Lease task reports it).
    pub fn describe(&self, tunnel: &Tunnel, described: Described) {
        let mut slot = tunnel.described.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref() != Some(&described) {
            *slot = Some(described);
            drop(slot);
            self.changed.notify_one();
        }
    }

    /// Resolves after the next insert or remove (at once if one happened since the last call returned).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// What routing needs to know of one tunnel of a cluster (oldest first).
#[derive(Debug, Clone, Copy)]
struct Route<'a> {
    instance: &'a str,
    live: bool,
}

/// Whether requests may go to tunnel `i`: it is live, and no newer live tunnel has the same client instance.
/// A client instance runs one tunnel at a time, so an older one is either retiring (renewal: it finishes what
/// it has) or dead without a close yet: a Pod restarted under the same name after a crash, whose old
/// connection only times out after three heartbeats. Sending a request there would hang it.
fn routable(routes: &[Route<'_>], i: usize) -> bool {
    let this = routes[i];
    this.live && (this.instance.is_empty() || !routes[i + 1..].iter().any(|r| r.live && r.instance == this.instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[(&'static str, bool)]) -> Vec<Route<'static>> {
        list.iter().map(|&(instance, live)| Route { instance, live }).collect()
    }

    #[test]
    fn only_the_newest_live_tunnel_of_an_instance_is_routable() {
        let list = routes(&[("pod-a", true), ("pod-b", true), ("pod-a", true)]);
        let routable: Vec<bool> = (0..list.len()).map(|i| routable(&list, i)).collect();
        assert_eq!(routable, [false, true, true]);
    }

    #[test]
    fn an_older_tunnel_serves_again_once_the_newer_one_closed() {
        let list = routes(&[("pod-a", true), ("pod-a", false)]);
        assert!(routable(&list, 0));
        assert!(!routable(&list, 1));
    }

    #[test]
    fn unnamed_instances_are_never_superseded() {
        let list = routes(&[("", true), ("", true)]);
        assert!(routable(&list, 0) && routable(&list, 1));
    }
}
