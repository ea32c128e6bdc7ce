//! Command line and environment of `tunnel-client`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::policy::{self, GroupNames, GroupPatterns, Naming, Policy, Prefix};

#[derive(Debug, Clone, Parser)]
#[command(name = "tunnel-client", version, about = "tether spoke agent: dials the hub and serves its streams")]
pub struct Config {
    /// Hub QUIC address, host:port.
    #[arg(long, env = "TETHER_HUB")]
    pub hub: String,
    /// Name the hub's serving certificate must carry; the host of --hub when absent.
    #[arg(long, env = "TETHER_HUB_SERVER_NAME")]
    pub hub_server_name: Option<String>,
    /// CA bundle that verifies the hub's serving certificate.
    #[arg(long, env = "TETHER_HUB_CA")]
    pub hub_ca: PathBuf,
    /// This spoke's client certificate, signed by the hub CA (its subject names the cluster). Written here
    /// when it is missing and --bootstrap-token-file is given, and replaced when it is renewed.
    #[arg(long, env = "TETHER_CERT", required_unless_present = "identity_secret", conflicts_with = "identity_secret")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert. Generated on the spoke; never sent anywhere.
    #[arg(long, env = "TETHER_KEY", required_unless_present = "identity_secret", conflicts_with = "identity_secret")]
    pub key: Option<PathBuf>,
    /// Keep key and certificate in this Secret of the spoke (NAMESPACE/NAME) instead of --cert/--key: what a
    /// DaemonSet uses, so that the identity outlives Pods and all of them share it. The client's
    /// ServiceAccount needs get, create and update on it.
    #[arg(long, env = "TETHER_IDENTITY_SECRET")]
    pub identity_secret: Option<String>,
    /// A file holding a bootstrap token from the hub (`<id>.<secret>`). Used only while --cert is missing:
    /// the client generates --key, asks the hub for a certificate with the token, waits for it to be
    /// approved and signed (the request's state is kept next to --key), writes --cert, then connects.
    #[arg(long, env = "TETHER_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// The cluster this spoke registers as; required with --bootstrap-token-file.
    #[arg(long, env = "TETHER_CLUSTER")]
    pub cluster: Option<String>,
    /// kubeconfig of the local apiserver; the in-cluster ServiceAccount when absent.
    #[arg(long, env = "TETHER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Requests carried at once on one HTTP/2 connection to the local apiserver; another connection is opened
    /// past it. Keep it at or below the apiserver's --http2-max-streams-per-connection (Go's default: 250),
    /// or watches beyond that limit wait for a stream to end.
    #[arg(long, env = "TETHER_APISERVER_STREAMS_PER_CONNECTION", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub apiserver_streams_per_connection: u32,
    /// TCP address of /metrics, /healthz and /readyz (HTTPS, self-signed).
    #[arg(long, env = "TETHER_OPS_ADDR", default_value = "0.0.0.0:9444")]
    pub ops_addr: SocketAddr,
    /// Name of this client instance, reported to the hub (pod name in a DaemonSet).
    #[arg(long, env = "TETHER_INSTANCE")]
    pub instance: Option<String>,
    /// First reconnect delay; doubles per failed attempt, with full jitter.
    #[arg(long, env = "TETHER_BACKOFF_BASE", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    #[arg(long, env = "TETHER_BACKOFF_CAP", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_cap: Duration,
    /// Heartbeat interval proposed before the hub's Welcome sets it.
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Per-stream receive window in bytes.
    #[arg(long, env = "TETHER_STREAM_WINDOW", default_value_t = 16 * 1024 * 1024)]
    pub stream_window: u64,
    /// Runtime worker threads; 0 or 1 runs a single-threaded runtime.
    #[arg(long, env = "TETHER_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Write the ops address and cluster as JSON here once the first tunnel is up (for scripts and tests).
    #[arg(long, env = "TETHER_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// Identity policy: prepended to every hub username before it is impersonated here, like the apiserver's
    /// --oidc-username-prefix (`hub:` makes hub user alice `hub:alice` on this spoke). Empty by default: hub
    /// users keep their names. A mapped name starting with `system:` is never impersonated (403), so hub
    /// ServiceAccounts reach this spoke only under a prefix, and never as this spoke's own ServiceAccounts.
    #[arg(long, env = "TETHER_IDENTITY_USERNAME_PREFIX", default_value = "", value_parser = Prefix::parse)]
    pub identity_username_prefix: Prefix,
    /// Identity policy: prepended to every hub group passed to this spoke (`system:authenticated` is passed
    /// as it is). Empty by default.
    #[arg(long, env = "TETHER_IDENTITY_GROUP_PREFIX", default_value = "", value_parser = Prefix::parse)]
    pub identity_group_prefix: Prefix,
    /// Identity policy: hub groups never passed to this spoke, comma-separated; an entry ending in `*` is a
    /// prefix. Checked against the hub's name and the prefixed name. The default drops every `system:` group
    /// (system:masters, system:nodes, system:serviceaccounts*, system:bootstrappers*, ...) but
    /// system:authenticated, which always passes, and kubeadm's cluster-admin group.
    #[arg(long, env = "TETHER_IDENTITY_DROP_GROUPS", default_value = policy::DEFAULT_DROP_GROUPS,
          value_parser = GroupPatterns::parse)]
    pub identity_drop_groups: GroupPatterns,
    /// Identity policy: when set, the only hub groups passed to this spoke (exact names, comma-separated; empty:
    /// none but system:authenticated). Unset by default: every group not dropped passes.
    #[arg(long, env = "TETHER_IDENTITY_ALLOW_GROUPS", value_parser = GroupNames::parse)]
    pub identity_allow_groups: Option<GroupNames>,
    /// Read the identity policy from this ConfigMap of the spoke (NAMESPACE/NAME; keys usernamePrefix,
    /// groupPrefix, dropGroups, allowGroups, as the flags) and follow its changes; the flags' policy applies
    /// while it does not exist. The client's ServiceAccount needs get, list and watch on it.
    #[arg(long, env = "TETHER_IDENTITY_POLICY_CONFIGMAP")]
    pub identity_policy_configmap: Option<String>,
}

impl Config {
    /// The identity policy of the flags (the default policy when none is given).
    pub fn identity_policy(&self) -> crate::Result<Policy> {
        Policy::new(
            self.identity_username_prefix.clone(),
            self.identity_group_prefix.clone(),
            self.identity_drop_groups.clone(),
            self.identity_allow_groups.clone(),
            Naming::Flags,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = ["tunnel-client", "--hub", "hub:1", "--hub-ca", "ca.crt", "--cert", "c", "--key", "k"];
        Config::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn without_policy_flags_the_policy_is_the_default() {
        assert_eq!(parse(&[]).unwrap().identity_policy().unwrap(), Policy::default());
    }

    #[test]
    fn policy_flags_are_typed_and_bad_values_name_the_flag() {
        // `--identity-drop-groups=` (empty) drops nothing, as loadtest's spoke uses it.
        let config = parse(&["--identity-allow-groups", "devs,ops", "--identity-drop-groups="]).unwrap();
        let expected = Policy::from_data(
            &[("allowGroups", "devs,ops"), ("dropGroups", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap();
        assert_eq!(config.identity_policy().unwrap(), expected);
        for (flag, value) in [
            ("--identity-allow-groups", "dev*"),
            ("--identity-drop-groups", "a*b"),
            ("--identity-username-prefix", "system:"),
        ] {
            let error = parse(&[flag, value]).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
        let contradiction =
            parse(&["--identity-allow-groups", "system:masters"]).unwrap().identity_policy().unwrap_err();
        assert!(contradiction.to_string().contains("--identity-allow-groups: system:masters"), "{contradiction}");
    }
}
