//! Every metric the client emits, named in one place.

pub const CONNECTED: &str = "tether_client_connected";
pub const CONNECTS: &str = "tether_client_connects_total";
pub const RECONNECTS: &str = "tether_client_reconnects_total";
pub const HANDSHAKE_FAILURES: &str = "tether_client_handshake_failures_total";
pub const STREAMS_OPEN: &str = "tether_client_streams_open";
pub const STREAMS_ABANDONED: &str = "tether_client_streams_abandoned_total";
pub const APISERVER_CONNECTIONS: &str = "tether_client_apiserver_connections";
pub const REQUEST_DURATION: &str = "tether_client_request_duration_seconds";
pub const TUNNEL_BYTES: &str = "tether_client_tunnel_bytes_total";
pub const RENEWALS: &str = "tether_client_renewals_total";
pub const CERTIFICATE_EXPIRY: &str = "tether_client_certificate_expiry_seconds";
pub const IDENTITY_REFUSALS: &str = "tether_client_identity_refusals_total";
pub const IDENTITY_POLICY_UPDATES: &str = "tether_client_identity_policy_updates_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTED, "1 while the tunnel to the hub is established");
    describe_counter!(CONNECTS, "Tunnels established");
    describe_counter!(RECONNECTS, "Connection attempts after the first, by cause (go_away, lost, failed)");
    describe_counter!(HANDSHAKE_FAILURES, "Dials that failed before the tunnel was established, by reason");
    describe_gauge!(STREAMS_OPEN, "Streams from the hub currently being served");
    describe_counter!(
        STREAMS_ABANDONED,
        "Streams the hub gave up on while they were served, by stage (waiting: before the apiserver answered; answering: while its answer went back)"
    );
    describe_gauge!(
        APISERVER_CONNECTIONS,
        "HTTP/2 connections started to the local apiserver, each for up to --apiserver-streams-per-connection requests"
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Time to response headers from the local apiserver, by code");
    describe_counter!(RENEWALS, "Certificate renewals, by outcome (issued, shared, refused, limited, lost, error)");
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Not-after of the client certificate in use, in seconds since the Unix epoch"
    );
    describe_counter!(TUNNEL_BYTES, Unit::Bytes, "UDP payload bytes of the tunnel, by direction (rx/tx)");
    describe_counter!(
        IDENTITY_REFUSALS,
        "Requests from the hub refused by the identity policy, by reason (system_user, no_user, malformed, \
         invalid_policy, not_ready)"
    );
    describe_counter!(
        IDENTITY_POLICY_UPDATES,
        "Changes of the identity policy read from its ConfigMap, by outcome (applied, absent, invalid)"
    );
}
