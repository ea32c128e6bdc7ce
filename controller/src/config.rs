//! Command line and environment of `controller`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "controller", version, about = "tether hub controller: ManagedCluster lifecycle")]
pub struct Config {
    /// kubeconfig of the hub apiserver; in-cluster configuration when absent.
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// Namespace of the Leases tunnel-servers renew for the clusters they hold.
    #[arg(long, env = "TETHER_LEASE_NAMESPACE", default_value = "tether-system")]
    pub lease_namespace: String,
    /// How often tunnel-servers renew a cluster's Lease (must match their --lease-renew-interval).
    #[arg(long, env = "TETHER_LEASE_RENEW_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_interval: Duration,
    /// Renewals that may be missed before a cluster's Available condition turns Unknown.
    #[arg(long, env = "TETHER_MISSED_RENEWALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed_renewals: u32,
    /// TCP address of /metrics, /healthz and /readyz (HTTPS, self-signed).
    #[arg(long, env = "TETHER_OPS_ADDR", default_value = "0.0.0.0:9445")]
    pub ops_addr: SocketAddr,
    /// Name of this controller instance in Events.
    #[arg(long, env = "TETHER_INSTANCE")]
    pub instance: Option<String>,
    /// Runtime worker threads; 0 or 1 runs a single-threaded runtime.
    #[arg(long, env = "TETHER_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}
