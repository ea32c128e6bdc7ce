//! Live tunnels of this replica, by cluster. Several client replicas of one cluster may be connected;
//! requests are spread over them round-robin.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Tunnel {
    pub id: u64,
    pub cluster: String,
    pub instance: String,
    pub connection: quinn::Connection,
}

#[derive(Debug, Default)]
pub struct Registry {
    // std RwLock: held only for map updates and picks, never across an await.
    tunnels: RwLock<HashMap<String, Vec<Arc<Tunnel>>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
}

impl Registry {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn insert(&self, tunnel: Arc<Tunnel>) -> usize {
        let mut map = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(tunnel.cluster.clone()).or_default();
        list.push(tunnel);
        list.len()
    }

    /// Returns how many tunnels the cluster still has.
    pub fn remove(&self, cluster: &str, id: u64) -> usize {
        let mut map = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get_mut(cluster) else { return 0 };
        list.retain(|t| t.id != id);
        let left = list.len();
        if left == 0 {
            map.remove(cluster);
        }
        left
    }

    /// A live tunnel of the cluster, rotating over replicas; closed connections are skipped.
    pub fn pick(&self, cluster: &str) -> Option<Arc<Tunnel>> {
        let map = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        let list = map.get(cluster)?;
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        (0..list.len())
            .map(|i| &list[(start + i) % list.len()])
            .find(|t| t.connection.close_reason().is_none())
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        let map = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        map.values().flatten().cloned().collect()
    }

    pub fn clusters(&self) -> Vec<String> {
        let map = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}
