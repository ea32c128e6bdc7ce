//! Every metric the server emits, named in one place.

pub const TUNNELS: &str = "tether_server_tunnels";
pub const TUNNEL_CONNECTS: &str = "tether_server_tunnel_connects_total";
pub const HANDSHAKE_FAILURES: &str = "tether_server_handshake_failures_total";
pub const STREAMS_OPEN: &str = "tether_server_streams_open";
pub const REQUESTS: &str = "tether_server_requests_total";
pub const REQUEST_DURATION: &str = "tether_server_request_duration_seconds";
pub const TUNNEL_BYTES: &str = "tether_server_tunnel_bytes_total";
pub const AUTH_LOOKUPS: &str = "tether_server_auth_lookups_total";
pub const TUNNELS_REVOKED: &str = "tether_server_tunnels_revoked_total";
pub const LEASE_RENEWALS: &str = "tether_server_lease_renewals_total";
pub const BOOTSTRAPS: &str = "tether_server_bootstrap_total";
pub const RENEWALS: &str = "tether_server_renewals_total";
pub const TUNNELS_EXPIRED: &str = "tether_server_tunnels_expired_total";
pub const PROXY_CONNECTIONS: &str = "tether_server_proxy_connections";
pub const PROXY_CONNECTIONS_REFUSED: &str = "tether_server_proxy_connections_refused_total";
pub const PROXY_CONNECTIONS_CLOSED: &str = "tether_server_proxy_connections_closed_total";
pub const PROXY_HANDSHAKE_FAILURES: &str = "tether_server_proxy_handshake_failures_total";
pub const PROXY_ACCEPT_ERRORS: &str = "tether_server_proxy_accept_errors_total";

/// The proxy listener's metrics, as the runtime's listener emits them.
pub const PROXY_LISTENER: tether_runtime::listener::MetricNames = tether_runtime::listener::MetricNames {
    connections: PROXY_CONNECTIONS,
    refused: PROXY_CONNECTIONS_REFUSED,
    handshake_failures: PROXY_HANDSHAKE_FAILURES,
    closed: PROXY_CONNECTIONS_CLOSED,
    accept_errors: PROXY_ACCEPT_ERRORS,
};

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(TUNNELS, "Spoke tunnels connected to this replica, by cluster");
    describe_counter!(TUNNEL_CONNECTS, "Spoke tunnels established, by cluster (reconnects included)");
    describe_counter!(HANDSHAKE_FAILURES, "QUIC/TLS handshakes or control-stream handshakes that failed, by reason");
    describe_gauge!(STREAMS_OPEN, "Proxied streams currently open, by cluster");
    describe_counter!(REQUESTS, "Proxied API requests, by cluster and HTTP code");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time to response headers of proxied requests, by cluster and code"
    );
    describe_counter!(TUNNEL_BYTES, Unit::Bytes, "UDP payload bytes of tunnels, by direction (rx/tx)");
    describe_counter!(
        AUTH_LOOKUPS,
        "TokenReview/SubjectAccessReview look-ups against the hub, by kind and cache outcome"
    );
    describe_counter!(TUNNELS_REVOKED, "Live tunnels closed because their certificate was revoked, by cluster");
    describe_counter!(
        BOOTSTRAPS,
        "Bootstrap connections of spokes holding a token, by outcome (issued, a refusal, rate_limited, timeout, ...)"
    );
    describe_counter!(RENEWALS, "Certificate renewals asked for over tunnels, by outcome (issued, a refusal, ...)");
    describe_counter!(TUNNELS_EXPIRED, "Tunnels closed because their client certificate expired, by cluster");
    describe_gauge!(PROXY_CONNECTIONS, "Proxy connections open (handshaking, serving or upgraded)");
    describe_counter!(
        PROXY_CONNECTIONS_REFUSED,
        "Proxy connections refused at --proxy-max-connections, by answer (status: a 503 Status; close: closed at once)"
    );
    describe_counter!(
        PROXY_CONNECTIONS_CLOSED,
        "Proxy connections the hub closed, by reason (idle, header_timeout, keepalive_timeout, headers_too_large, shutdown)"
    );
    describe_counter!(PROXY_HANDSHAKE_FAILURES, "Proxy TLS handshakes that failed, by reason (timeout, tls)");
    describe_counter!(PROXY_ACCEPT_ERRORS, "Failed accepts on the proxy port (out of file descriptors, ...)");
    describe_counter!(LEASE_RENEWALS, "Writes of this replica's per-cluster Leases to the hub, by outcome (ok/error)");
}
