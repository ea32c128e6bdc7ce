//! Every metric the controller emits, named in one place.

pub const RECONCILES: &str = "tether_controller_reconciles_total";
pub const RECONCILE_ERRORS: &str = "tether_controller_reconcile_errors_total";
pub const RECONCILE_DURATION: &str = "tether_controller_reconcile_duration_seconds";
/// Spoke CertificateSigningRequests, by `outcome`: `approved` (by policy), `signed`, `failed`.
pub const CSRS: &str = "tether_controller_csrs_total";
/// Auto-mode applications of a spoke manifest, by `outcome` (`applied`, `failed`) and, when failed, the
/// `reason` of the ManifestApplied condition.
pub const AUTO_APPLIES: &str = "tether_controller_auto_applies_total";

pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(RECONCILES, "ManagedCluster reconciles, by outcome");
    describe_counter!(RECONCILE_ERRORS, "ManagedCluster reconciles that failed, by kind of error");
    describe_histogram!(RECONCILE_DURATION, Unit::Seconds, "Duration of ManagedCluster reconciles");
    describe_counter!(CSRS, "Spoke certificate signing requests approved by policy, signed, or failed");
    describe_counter!(AUTO_APPLIES, "Spoke manifests applied by auto mode, or attempts that failed, by reason");
}
