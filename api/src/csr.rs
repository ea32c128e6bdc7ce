//! Certificate requests (`certificates.k8s.io/v1`) for spoke client certificates: the tunnel-server files
//! them for a bootstrap token or a renewal, the controller approves them by policy and signs them with the
//! hub CA.

/// The signer of spoke client certificates; requests for any other signer are not tether's.
pub const SIGNER_NAME: &str = "tether.io/spoke-client";
/// Annotation saying why the tunnel-server filed the request: [`VIA_BOOTSTRAP_TOKEN`] or [`VIA_RENEWAL`].
/// The cluster is in the [`crate::CLUSTER_LABEL`] label, and the same annotation.
pub const REQUESTED_VIA_ANNOTATION: &str = "tether.io/requested-via";
/// Filed for a client that proved a bootstrap token.
pub const VIA_BOOTSTRAP_TOKEN: &str = "bootstrap-token";
/// Filed on a live tunnel, whose certificate is the proof.
pub const VIA_RENEWAL: &str = "renewal";
/// The key usages every request asks for.
pub const USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// Why a request was filed, from its [`REQUESTED_VIA_ANNOTATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedVia {
    BootstrapToken,
    Renewal,
}

impl RequestedVia {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BootstrapToken => VIA_BOOTSTRAP_TOKEN,
            Self::Renewal => VIA_RENEWAL,
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::BootstrapToken, Self::Renewal].into_iter().find(|v| v.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back() {
        for via in [RequestedVia::BootstrapToken, RequestedVia::Renewal] {
            assert_eq!(RequestedVia::parse(via.as_str()), Some(via));
        }
        assert_eq!(RequestedVia::parse("because"), None);
    }
}
