//! Command line and environment of `controller`: `run` (the default when no subcommand is given) and
//! `join`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The tunnel-client image of the spoke DaemonSet, for `join --image` and `run --client-image`.
pub const DEFAULT_CLIENT_IMAGE: &str = "ghcr.io/tether-io/tunnel-client:0.1.0";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "controller",
    version,
    about = "tether hub controller: ManagedCluster lifecycle and spoke certificates",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, the flags of `run`.
    #[command(flatten)]
    pub run: Config,
}

impl Cli {
    /// The command to carry out: `run` when none was given.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run(Config),
    /// Register a cluster: create its ManagedCluster and a bootstrap token, print the spoke's manifest.
    Join(JoinConfig),
}

#[derive(Debug, Clone, clap::Args)]
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
    /// The hub CA certificate (PEM) that signs spoke certificates. Without --ca-cert and --ca-key, spoke
    /// CertificateSigningRequests are neither approved nor signed.
    #[arg(long, env = "TETHER_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The hub CA private key (PEM, PKCS#8).
    #[arg(long, env = "TETHER_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of the spoke certificates the controller signs.
    #[arg(long, env = "TETHER_CERTIFICATE_VALIDITY", default_value = "720h", value_parser = positive_duration)]
    pub certificate_validity: Duration,
    /// Approve spoke CSRs by policy: requested through a bootstrap token or a renewal, by
    /// --bootstrap-requester, for an accepted cluster named in the CSR. When false, a person approves
    /// (`kubectl certificate approve`).
    #[arg(long, env = "TETHER_AUTO_APPROVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_approve: bool,
    /// The hub user that creates spoke CSRs on behalf of clients (the tunnel-server's identity).
    #[arg(
        long,
        env = "TETHER_BOOTSTRAP_REQUESTER",
        default_value = "system:serviceaccount:tether-system:tunnel-server"
    )]
    pub bootstrap_requester: String,
    /// Auto mode: where spokes dial the hub's tunnel-server (QUIC), HOST:PORT, written into the manifest the
    /// controller applies to Auto clusters. Without it and --hub-ca, Auto clusters are not registered.
    #[arg(long, env = "TETHER_HUB_ADDRESS", value_parser = host_port)]
    pub hub_address: Option<String>,
    /// Auto mode: the CA (PEM) that signed the tunnel-server's serving certificate; spokes verify the hub
    /// with it.
    #[arg(long, env = "TETHER_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// Auto mode: tunnel-client image of the spoke's DaemonSet.
    #[arg(long, env = "TETHER_CLIENT_IMAGE", default_value = DEFAULT_CLIENT_IMAGE)]
    pub client_image: String,
    /// Auto mode: how long the bootstrap token of an applied manifest may be used (once). A cluster that has
    /// not joined when it expires gets a new one.
    #[arg(long, env = "TETHER_BOOTSTRAP_TOKEN_TTL", default_value = "1h", value_parser = positive_duration)]
    pub bootstrap_token_ttl: Duration,
    /// Push: the base URL of the tunnel-server's proxy (`https://HOST:PORT`), through which pushes are
    /// applied to spokes. Without it, ManifestPushes are not applied.
    #[arg(long, env = "TETHER_PROXY_URL")]
    pub proxy_url: Option<String>,
    /// Push: the CA (PEM) that signed the proxy's serving certificate.
    #[arg(long, env = "TETHER_PROXY_CA", requires = "proxy_url")]
    pub proxy_ca: Option<PathBuf>,
    /// Push: the bearer token the controller authenticates to the proxy with (re-read as it rotates); the
    /// tunnel-server's --push-controllers must name its user.
    #[arg(
        long,
        env = "TETHER_PROXY_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub proxy_token_file: PathBuf,
    /// Push: deliveries (one cluster's share of a push) reconciled at once, and pushes.
    #[arg(long, env = "TETHER_PUSH_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub push_concurrency: u16,
    /// Push: deadline of each request to a spoke.
    #[arg(long, env = "TETHER_PUSH_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub push_timeout: Duration,
    /// Push: time between full re-applies of each delivery, unless its push sets resyncSeconds (watches
    /// correct drift in between).
    #[arg(long, env = "TETHER_PUSH_RESYNC", default_value = "5m", value_parser = positive_duration)]
    pub push_resync: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct JoinConfig {
    /// Name of the cluster (a DNS-1123 label): its ManagedCluster and the CN of its certificate.
    #[arg(value_parser = cluster_name)]
    pub cluster: String,
    /// kubeconfig of the hub apiserver; in-cluster configuration when absent.
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// Where spokes dial the hub's tunnel-server (QUIC), HOST:PORT.
    #[arg(long, env = "TETHER_HUB_ADDRESS", value_parser = host_port)]
    pub hub_address: String,
    /// The CA (PEM) that signed the tunnel-server's serving certificate; spokes verify the hub with it.
    #[arg(long, env = "TETHER_HUB_CA")]
    pub hub_ca: PathBuf,
    /// How long the bootstrap token may be used (once).
    #[arg(long, env = "TETHER_TOKEN_TTL", default_value = "1h", value_parser = positive_duration)]
    pub ttl: Duration,
    /// tunnel-client image of the spoke's DaemonSet.
    #[arg(long, env = "TETHER_CLIENT_IMAGE", default_value = DEFAULT_CLIENT_IMAGE)]
    pub image: String,
    /// Hub namespace of the bootstrap token Secrets (where tunnel-servers look them up).
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "tether-system")]
    pub namespace: String,
    /// Create the ManagedCluster with spec.hubAcceptsClient true (or set it on an existing one). Without
    /// it, the spoke's certificate waits until someone accepts the cluster.
    #[arg(long)]
    pub accept: bool,
}

fn cluster_name(name: &str) -> Result<String, String> {
    tether_certs::validate_cluster_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

fn host_port(address: &str) -> Result<String, String> {
    let bad = || format!("{address:?} is not HOST:PORT");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '@']) || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(address.to_string())
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("controller").chain(args.iter().copied())).map(Cli::command)
    }

    #[test]
    fn run_is_the_default_and_keeps_its_flags() {
        let Command::Run(bare) = parse(&["--hub-kubeconfig", "k", "--ops-addr", "127.0.0.1:0"]).unwrap() else {
            panic!("not run")
        };
        assert_eq!(bare.hub_kubeconfig, Some("k".into()));
        assert!(bare.auto_approve);
        assert_eq!(bare.certificate_validity, Duration::from_secs(720 * 3600));
        assert_eq!(bare.bootstrap_requester, "system:serviceaccount:tether-system:tunnel-server");
        let Command::Run(explicit) =
            parse(&["run", "--auto-approve", "false", "--bootstrap-requester", "admin"]).unwrap()
        else {
            panic!("not run")
        };
        assert!(!explicit.auto_approve);
        assert_eq!(explicit.bootstrap_requester, "admin");
        assert!(parse(&["--ca-cert", "ca.crt"]).is_err(), "--ca-cert needs --ca-key");
    }

    #[test]
    fn auto_mode_flags_have_defaults_and_are_checked() {
        let Command::Run(bare) = parse(&[]).unwrap() else { panic!("not run") };
        assert_eq!((bare.hub_address, bare.hub_ca), (None, None), "auto mode is off unless configured");
        assert_eq!(bare.client_image, DEFAULT_CLIENT_IMAGE);
        assert_eq!(bare.bootstrap_token_ttl, Duration::from_secs(3600));
        let Command::Run(auto) = parse(&[
            "--hub-address",
            "hub.example:8443",
            "--hub-ca",
            "ca.crt",
            "--client-image",
            "example/client:1",
            "--bootstrap-token-ttl",
            "10m",
        ])
        .unwrap() else {
            panic!("not run")
        };
        assert_eq!(auto.hub_address.as_deref(), Some("hub.example:8443"));
        assert_eq!(auto.hub_ca, Some("ca.crt".into()));
        assert_eq!(auto.client_image, "example/client:1");
        assert_eq!(auto.bootstrap_token_ttl, Duration::from_secs(600));
        assert!(parse(&["--hub-address", "hub.example"]).unwrap_err().to_string().contains("--hub-address"));
        assert!(parse(&["--bootstrap-token-ttl", "0s"]).unwrap_err().to_string().contains("--bootstrap-token-ttl"));
    }

    #[test]
    fn join_validates_its_input() {
        let args = ["join", "spoke-a", "--hub-address", "hub.example:8443", "--hub-ca", "ca.crt"];
        let Command::Join(join) = parse(&args).unwrap() else { panic!("not join") };
        assert_eq!((join.cluster.as_str(), join.ttl), ("spoke-a", Duration::from_secs(3600)));
        assert_eq!(join.namespace, "tether-system");
        assert!(!join.accept);

        let with = |i: usize, value: &str| {
            let mut bad = args.to_vec();
            bad[i] = value;
            parse(&bad).unwrap_err().to_string()
        };
        assert!(with(1, "Spoke_A").contains("<CLUSTER>"));
        assert!(with(3, "hub.example").contains("--hub-address"));
        assert!(with(3, "hub.example:0").contains("--hub-address"));
        let mut ttl = args.to_vec();
        ttl.extend(["--ttl", "soon"]);
        assert!(parse(&ttl).unwrap_err().to_string().contains("--ttl"));
        assert!(parse(&["join", "spoke-a", "--hub-ca", "ca.crt"]).unwrap_err().to_string().contains("--hub-address"));
        assert!(parse(&["--hub-kubeconfig", "k", "join", "spoke-a"]).is_err(), "run flags do not mix with join");
    }
}
