//! Live tunnels of this replica, by cluster. Several client replicas of one cluster may be connected;
//! requests are spread over them round-robin. Every change wakes the lease task (`changed`), which reads
//! what this replica holds with `holdings`.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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
    /// Clusters with at least one tunnel here, with the instance names their clients gave (sorted, unique,
    /// empty names left out).
    pub connected: BTreeMap<String, Vec<String>>,
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

    /// A live tunnel of the cluster, rotating over replicas; closed connections are skipped.
    pub fn pick(&self, cluster: &str) -> Option<Arc<Tunnel>> {
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        let list = tunnels.by_cluster.get(cluster)?;
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        (0..list.len())
            .map(|i| &list[(start + i) % list.len()])
            .find(|t| t.connection.close_reason().is_none())
            .cloned()
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
                (cluster.clone(), instances)
            })
            .collect();
        let mut went_away: Vec<String> = tunnels.went_away.drain().collect();
        went_away.sort();
        Holdings { connected, went_away }
    }

    /// Resolves after the next insert or remove (at once if one happened since the last call returned).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}
