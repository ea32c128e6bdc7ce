//! Every metric the controller emits, named in one place.

pub const RECONCILES: &str = "tether_controller_reconciles_total";
pub const RECONCILE_ERRORS: &str = "tether_controller_reconcile_errors_total";
pub const RECONCILE_DURATION: &str = "tether_controller_reconcile_duration_seconds";
/// Spoke CertificateSigningRequests, by `outcome`: `approved` (by policy), `signed`, `failed`.
pub const CSRS: &str = "tether_controller_csrs_total";
/// Auto-mode applications of a spoke manifest, by `outcome` (`applied`, `failed`) and, when failed, the
/// `reason` of the ManifestApplied condition.
pub const AUTO_APPLIES: &str = "tether_controller_auto_applies_total";
/// Delivery reconciles (one cluster's share of a push), by `outcome`.
pub const PUSH_RECONCILES: &str = "tether_controller_push_delivery_reconciles_total";
pub const PUSH_RECONCILE_DURATION: &str = "tether_controller_push_delivery_reconcile_duration_seconds";
/// Pushed objects a spoke refused, by `result` (`Failed`, `Conflict`, `Forbidden`, ...), counted once
/// per new refusal.
pub const PUSH_FAILURES: &str = "tether_controller_push_failures_total";
/// Pushed objects restored after a change or deletion on the spoke.
pub const PUSH_DRIFT_CORRECTIONS: &str = "tether_controller_push_drift_corrections_total";
/// Pushed objects deleted from spokes (left their push, or the push or its cluster went).
pub const PUSH_PRUNES: &str = "tether_controller_push_prunes_total";
/// Drift watches running through the tunnels.
pub const PUSH_WATCHES: &str = "tether_controller_push_watches";

pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(RECONCILES, "ManagedCluster reconciles, by outcome");
    describe_counter!(RECONCILE_ERRORS, "ManagedCluster reconciles that failed, by kind of error");
    describe_histogram!(RECONCILE_DURATION, Unit::Seconds, "Duration of ManagedCluster reconciles");
    describe_counter!(CSRS, "Spoke certificate signing requests approved by policy, signed, or failed");
    describe_counter!(PUSH_RECONCILES, "ManifestDelivery reconciles, by outcome");
    describe_histogram!(PUSH_RECONCILE_DURATION, Unit::Seconds, "Duration of ManifestDelivery reconciles");
    describe_counter!(PUSH_FAILURES, "Pushed objects refused by a spoke, by result");
    describe_counter!(PUSH_DRIFT_CORRECTIONS, "Pushed objects restored after drift on a spoke");
    describe_counter!(PUSH_PRUNES, "Pushed objects deleted from spokes");
    metrics::describe_gauge!(PUSH_WATCHES, "Drift watches of pushed objects through the tunnels");
    describe_counter!(AUTO_APPLIES, "Spoke manifests applied by auto mode, or attempts that failed, by reason");
}
