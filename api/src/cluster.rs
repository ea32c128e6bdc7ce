//! `ManagedCluster` (cluster-scoped, `tether.io/v1alpha1`): one per spoke the hub manages. The CRD YAML in
//! `deploy/hub/crds/` is generated from these types by the controller's `crdgen`; CI fails when the two
//! differ. The tunnel-server watches these objects to know which clusters exist; who may use a cluster's
//! proxy is RBAC on the [`PROXY_SUBRESOURCE`] of [`RESOURCE`], named after the cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The resource (plural) of `ManagedCluster`, as RBAC names it.
pub const RESOURCE: &str = "managedclusters";
/// The subresource whose verbs decide who may use a cluster through the hub's proxy.
pub const PROXY_SUBRESOURCE: &str = "proxy";

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "ManagedCluster",
    plural = "managedclusters",
    singular = "managedcluster",
    shortname = "mc",
    status = "ManagedClusterStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"HubAccepted\")].status"}"#,
    printcolumn = r#"{"name":"Joined","type":"string","jsonPath":".status.conditions[?(@.type==\"Joined\")].status"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterSpec {
    /// Whether the hub accepts this cluster's client: no certificate is signed for it while false.
    #[serde(default)]
    pub hub_accepts_client: bool,
    /// How the spoke is registered: `Manual` (a person applies the join manifest on the spoke) or `Auto`
    /// (the hub applies it with the kubeconfig in `autoKubeconfigSecret`).
    #[serde(default)]
    pub mode: RegistrationMode,
    /// For `Auto`: the Secret holding a kubeconfig for the spoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_kubeconfig_secret: Option<SecretKeyRef>,
    /// Condition types, set by other actors, that must be True (with `Available`) for `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readiness_gates: Vec<String>,
    /// Lifetime of this cluster's client certificates, in seconds: shortens the controller's
    /// `--certificate-validity` for this cluster, never lengthens it. Clients renew at 80 % of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub certificate_validity_seconds: Option<u32>,
}

impl ManagedClusterSpec {
    /// The lifetime of certificates signed for this cluster, given the controller's.
    pub fn certificate_validity(&self, controller: std::time::Duration) -> std::time::Duration {
        match self.certificate_validity_seconds {
            Some(seconds) => controller.min(std::time::Duration::from_secs(u64::from(seconds.max(10)))),
            None => controller,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RegistrationMode {
    #[default]
    Manual,
    Auto,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    /// Key of the kubeconfig in the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterStatus {
    /// `HubAccepted`, `Joined`, `Available`, `Ready`, `ManifestApplied` (`Auto` mode), and any
    /// readiness-gate conditions set by others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spoke apiserver's version, reported by the client at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver_version: Option<String>,
    /// The spoke apiserver's CA bundle (PEM), reported by the client at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// When a tunnel-server last renewed this cluster's liveness: refreshed at most every 5 minutes while
    /// nothing else in the status changes (its Lease's `renewTime` is exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// tunnel-server replicas holding a tunnel of this cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_servers: Vec<String>,
    /// `Auto` mode: the controller's last application of the spoke manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_registration: Option<AutoRegistrationStatus>,
}

/// What the controller last applied to an `Auto` cluster. The manifest is applied again only when the
/// cluster has not joined and this token has expired or the spec's generation changed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoRegistrationStatus {
    /// When the manifest was applied.
    pub applied_at: Time,
    /// `metadata.generation` of the ManagedCluster it was applied for.
    pub observed_generation: i64,
    /// The hub Secret holding the hash of the bootstrap token the manifest carries.
    pub token_secret: String,
    /// When that token expires.
    pub token_expiration: Time,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_status_and_columns() {
        let crd = ManagedCluster::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "tether.io");
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Accepted", "Joined", "Available", "Ready", "Age"]);
    }

    #[test]
    fn spec_defaults_are_manual_and_not_accepted() {
        let spec: ManagedClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.mode, RegistrationMode::Manual);
        assert!(!spec.hub_accepts_client);
        let auto: ManagedClusterSpec = serde_json::from_value(serde_json::json!({
            "mode": "Auto", "autoKubeconfigSecret": {"namespace": "n", "name": "s"}
        }))
        .unwrap();
        assert_eq!(auto.auto_kubeconfig_secret.unwrap().key, "kubeconfig");
    }

    #[test]
    fn a_cluster_may_shorten_its_certificates_life_but_not_lengthen_it() {
        use std::time::Duration;
        let day = Duration::from_secs(86_400);
        let spec = |seconds| ManagedClusterSpec { certificate_validity_seconds: seconds, ..Default::default() };
        assert_eq!(spec(None).certificate_validity(day), day);
        assert_eq!(spec(Some(30)).certificate_validity(day), Duration::from_secs(30));
        assert_eq!(spec(Some(2 * 86_400)).certificate_validity(day), day);
        assert_eq!(spec(Some(1)).certificate_validity(day), Duration::from_secs(10), "the schema's minimum holds");
    }
}
