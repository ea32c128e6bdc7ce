//! The contract between tether's hub components. The tunnel-server and the controller both read or write
//! everything here — the `ManagedCluster` types, the Leases that carry liveness, the bootstrap token format
//! and its Secrets, the certificate requests of the tether signer, the revocations ConfigMap — so each
//! exists once, and a change to either side that the other does not follow fails to compile.
//!
//! Only names, formats and pure functions: no client, no I/O.
pub mod cluster;
pub mod csr;
pub mod lease;
pub mod push;
pub mod revocations;
pub mod token;

/// The API group of tether's resources and of its label and annotation keys.
pub const GROUP: &str = "tether.io";

/// Label naming the cluster an object belongs to, on Leases, certificate requests and token Secrets.
pub const CLUSTER_LABEL: &str = "tether.io/cluster";

/// The namespace on the hub (the tunnel-server's `--lease-namespace`, the controller's) of Leases, token
/// Secrets and the revocations ConfigMap, unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "tether-system";
