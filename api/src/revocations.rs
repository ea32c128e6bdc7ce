//! Revoked spoke certificates: the controller records a revocation when a `ManagedCluster` is deleted, every
//! tunnel-server refuses and closes the tunnels it covers.
//!
//! ConfigMap [`CONFIG_MAP`] in the hub namespace; each data key is a cluster name, its value an RFC 3339 UTC
//! time T ([`format_time`]): every certificate of that cluster issued at or before T is revoked, one issued
//! after T (the cluster registered again under the same name) is valid.
use k8s_openapi::jiff::Timestamp;

pub const CONFIG_MAP: &str = "tether-revocations";

/// A revocation time as the controller writes it: RFC 3339 UTC in whole seconds.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A revocation time as written (fractional seconds and other offsets are read too).
pub fn parse_time(value: &str) -> Result<Timestamp, String> {
    value.trim().parse::<Timestamp>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back() {
        let t: Timestamp = "2026-11-25T13:20:00Z".parse().unwrap();
        assert_eq!(format_time(t), "2026-11-25T13:20:00Z");
        assert_eq!(parse_time(&format_time(t)), Ok(t));
        assert!(parse_time("yesterday").is_err());
    }
}
