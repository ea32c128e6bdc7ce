//! Liveness Leases (`coordination.k8s.io/v1`): the tunnel-server writes one per (cluster, replica) while it
//! holds a tunnel of the cluster; the controller reads them to set `Available` and the reported versions.
//! The full contract (when each is written, and how) is in tunnel-server's `leases` module.

/// Label with the replica (the tunnel-server's `--replica-id`, a DNS label) that writes the Lease. The
/// cluster is in [`crate::CLUSTER_LABEL`].
pub const REPLICA_LABEL: &str = "tether.io/replica";
/// Annotation with the [`State`] of the replica's tunnels of the cluster.
pub const STATE_ANNOTATION: &str = "tether.io/state";
/// The connected clients' instance names, sorted, comma-separated (a `,` inside a name becomes `_`).
pub const CLIENT_INSTANCES_ANNOTATION: &str = "tether.io/client-instances";
/// The newest connected client's version, from its Hello.
pub const CLIENT_VERSION_ANNOTATION: &str = "tether.io/client-version";
/// The spoke apiserver's version, as the client reported it.
pub const APISERVER_VERSION_ANNOTATION: &str = "tether.io/apiserver-version";
/// The spoke apiserver's CA bundle (PEM), as the client reported it.
pub const CA_BUNDLE_ANNOTATION: &str = "tether.io/ca-bundle";

/// Longest DNS label (RFC 1123), and so the longest Lease name and label value.
const MAX_LABEL: usize = 63;

/// The [`STATE_ANNOTATION`] of a Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The replica holds at least one tunnel of the cluster.
    Connected,
    /// The cluster's last tunnel on the replica ended because its client said GoAway; the Lease is no
    /// longer renewed.
    GoingAway,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::GoingAway => "going-away",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Connected, Self::GoingAway].into_iter().find(|s| s.as_str() == value)
    }
}

/// `tether-<cluster>-<replica>` as a DNS label. Readers find Leases by their labels instead.
pub fn lease_name(cluster: &str, replica: &str) -> String {
    dns_label(&format!("tether-{cluster}-{replica}"))
}

/// `raw` as an RFC 1123 label: lowercased, every character outside `[a-z0-9-]` replaced by `-`, no `-` at
/// either end; if longer than 63 characters (or empty), cut and ended with `-` and 8 hex digits of the
/// SHA-256 of `raw`, so different long names stay different.
pub fn dns_label(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if !trimmed.is_empty() && trimmed.len() <= MAX_LABEL {
        return trimmed.to_string();
    }
    let hash = short_hash(raw);
    // Only ASCII is left after mapping, so any byte index is a character boundary.
    let head = trimmed[..trimmed.len().min(MAX_LABEL - hash.len() - 1)].trim_end_matches('-');
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

fn short_hash(raw: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
    digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back() {
        for state in [State::Connected, State::GoingAway] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("gone"), None);
    }
}
