//! Pushing resources to spokes. A `ManifestPush` (namespaced, written by people) says what goes where; the
//! controller renders it per selected cluster into a `ManifestDelivery` (namespaced, in the push's namespace,
//! one per push and cluster, owned by the push) holding exactly the objects that cluster gets, and applies
//! each delivery through the hub's proxy. Per-cluster status lives on the deliveries, so a push to a thousand
//! clusters never makes one object outgrow etcd's limit; the push's own status is a bounded summary.
//!
//! Every push is applied as its namespace's identity ([`push_user`], group [`PUSHERS_GROUP`]): the hub's
//! RBAC on `managedclusters/proxy` decides which clusters that identity may reach, and each spoke's RBAC what
//! it may create there. The tunnel-server lets the controller act as push identities and nothing else.
use std::collections::BTreeMap;

mod object;
pub use object::EmbeddedObject;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Usernames of push identities start with this, followed by the push's namespace.
pub const PUSH_USER_PREFIX: &str = "tether:push:";
/// The group every push identity carries (beside `system:authenticated`).
pub const PUSHERS_GROUP: &str = "tether:pushers";
/// The field manager of every server-side apply a push makes.
pub const FIELD_MANAGER: &str = "tether-push";
/// Label on every object a push applied to a spoke: [`owner_label_value`] of the push. Drift watches select
/// on it, and pruning deletes only objects carrying it.
pub const PUSHED_BY_LABEL: &str = "tether.io/pushed-by";
/// Annotation beside [`PUSHED_BY_LABEL`] with the push's exact `namespace/name` (a label value is too short
/// for every name).
pub const PUSH_ANNOTATION: &str = "tether.io/push";
/// Label on a `ManifestDelivery` naming its push.
pub const PUSH_LABEL: &str = "tether.io/push";

/// The hub identity a push in `namespace` is applied as.
pub fn push_user(namespace: &str) -> String {
    format!("{PUSH_USER_PREFIX}{namespace}")
}

/// The namespace of a push identity, when `username` is one: a valid namespace name (RFC 1123 label)
/// after the prefix, so no other string can pass for one.
pub fn push_namespace(username: &str) -> Option<&str> {
    username.strip_prefix(PUSH_USER_PREFIX).filter(|ns| is_dns_label(ns))
}

/// An RFC 1123 label, as Kubernetes names namespaces: 1–63 of `a-z0-9-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The [`PUSHED_BY_LABEL`] value of push `namespace/name`: `namespace.name` when that fits a label value
/// (63 characters), otherwise shortened (see [`shortened`]). Always a valid label value (names and
/// namespaces are lowercase alphanumerics, `-`, `.`).
pub fn owner_label_value(namespace: &str, name: &str) -> String {
    shortened(format!("{namespace}.{name}"), 63)
}

/// The name of the delivery of push `name` to `cluster`: `name.cluster` when that fits an object name (253),
/// otherwise shortened (see [`shortened`]).
pub fn delivery_name(push: &str, cluster: &str) -> String {
    shortened(format!("{push}.{cluster}"), 253)
}

/// `full` when it has at most `max` characters, otherwise its head, a dot and 16 hex digits of its SHA-256:
/// still unique, and still starting and ending with an alphanumeric.
fn shortened(full: String, max: usize) -> String {
    if full.len() <= max {
        return full;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let head = full[..max - 17].trim_end_matches(['.', '-']);
    format!("{head}.{hex}")
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "ManifestPush",
    plural = "manifestpushes",
    singular = "manifestpush",
    shortname = "mpush",
    namespaced,
    status = "ManifestPushStatus",
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.summary.selected"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.summary.applied"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.summary.available"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.summary.failed"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.summary.pending"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManifestPushSpec {
    /// Whole Kubernetes objects, of any kind, namespaced or cluster-scoped (CRDs included), each with
    /// `apiVersion`, `kind` and `metadata.name` (and `metadata.namespace` when namespaced). CRDs and
    /// Namespaces are applied first, a custom resource only once its CRD is established.
    #[serde(default)]
    #[schemars(schema_with = "embedded_objects")]
    pub manifests: Vec<serde_json::Value>,
    /// Which ManagedClusters receive the manifests.
    #[serde(default)]
    pub placement: Placement,
    /// Per-cluster changes to named manifests, applied in order before a cluster's delivery is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// How each manifest is applied and what is read back from it, for the manifests it names; the others
    /// are server-side applied with the well-known feedback of their kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_configs: Vec<ManifestConfig>,
    /// How a change reaches the selected clusters.
    #[serde(default)]
    pub rollout: Rollout,
    /// What happens to applied objects when they leave the push, their cluster leaves the placement, or the
    /// push is deleted.
    #[serde(default)]
    pub delete_policy: DeletePolicy,
    /// Seconds between full re-applies of each cluster's delivery (watches correct drift between them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub resync_seconds: Option<u32>,
}

fn embedded_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn free_form_array(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// A set of ManagedClusters: those named in `clusterNames`, those whose **metadata labels** match
/// `labelSelector` (as `kubectl get managedclusters -l` selects), or, when both are set, those in both.
/// Neither selects nothing; an empty `labelSelector: {}` selects every cluster. Only clusters the hub
/// accepts are ever selected.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// Names one manifest of the push. `apiVersion` may be left out when the kind is unambiguous among the
/// manifests; `namespace` is left out for cluster-scoped objects.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// A change to one manifest for the clusters selected by `clusters`: a JSON patch (RFC 6902), a JSON merge
/// patch (RFC 7386), or both (the JSON patch first).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// The clusters it applies to, chosen as a placement chooses.
    pub clusters: Placement,
    pub manifest: ManifestRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_array")]
    pub json_patch: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub merge_patch: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestConfig {
    pub manifest: ManifestRef,
    #[serde(default)]
    pub strategy: Strategy,
    /// Server-side apply only: take fields another manager owns instead of reporting a conflict.
    #[serde(default)]
    pub force: bool,
    /// Values read back from the applied object, beside its kind's well-known ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<FeedbackRule>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Strategy {
    /// Server-side apply as [`FIELD_MANAGER`]; conflicts with other managers are reported, not taken.
    #[default]
    ServerSideApply,
    /// Created when missing, never changed afterwards (nor restored on drift, except when deleted).
    CreateOnly,
    /// Never written: only its feedback is read, from an object someone else owns.
    ReadOnly,
}

/// One value to read back: `jsonPath` is a dotted path such as `.status.readyReplicas` or
/// `.status.conditions[0].type`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRule {
    pub name: String,
    pub json_path: String,
}

/// `All` updates every selected cluster at once; `Progressive` updates at most `maxConcurrency` at a time
/// (a number or a percentage of the selected clusters, rounded up), a cluster counting as done once its
/// delivery is applied and available, and pauses once more than `maxFailures` clusters failed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    #[serde(default)]
    pub strategy: RolloutStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<IntOrString>,
    /// Seconds a cluster may take to become available before it counts as failed (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    All,
    Progressive,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletePolicy {
    /// Applied objects are deleted from the spoke.
    #[default]
    Delete,
    /// Applied objects stay on the spoke, no longer managed.
    Orphan,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestPushStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Placed` (clusters selected), `Applied`, `Available`, `Progressing`, `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The first clusters (at most [`MAX_LISTED_FAILURES`]) whose delivery failed, with why; their
    /// deliveries hold the details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_clusters: Vec<ClusterFailure>,
}

/// How many failing clusters a push's status lists.
pub const MAX_LISTED_FAILURES: usize = 20;

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub selected: u32,
    pub applied: u32,
    pub available: u32,
    pub failed: u32,
    pub pending: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Progressing`, `Paused` or `Complete`.
    pub phase: String,
    /// Clusters holding the current generation.
    pub updated: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFailure {
    pub cluster: String,
    pub reason: String,
    pub message: String,
}

/// What one cluster gets from one push, rendered (placement and overrides done) by the controller, and
/// what happened when it was applied. Written by the controller only; a person who edits one acts with
/// the same identity as the push it belongs to, so gains nothing.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "ManifestDelivery",
    plural = "manifestdeliveries",
    singular = "manifestdelivery",
    shortname = "mdel",
    namespaced,
    status = "ManifestDeliveryStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.conditions[?(@.type==\"Applied\")].status"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Drift-Corrected","type":"date","jsonPath":".status.lastDriftCorrection"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDeliverySpec {
    pub cluster: String,
    /// The push's name (its namespace is the delivery's).
    pub push: String,
    /// The push's generation this rendering comes from.
    pub push_generation: i64,
    /// When the controller wrote this generation here: a progressive rollout's deadline counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<Time>,
    /// This cluster's objects, overrides applied, in the push's order.
    // Atomic: only the controller writes it, and always whole.
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub manifests: Vec<DeliveredManifest>,
    /// Manifests of the push this cluster cannot get (rendering failed), with why: shown as `Invalid` in
    /// the status, and an object of theirs applied before is kept, not pruned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedManifest>,
    #[serde(default)]
    pub delete_policy: DeletePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_seconds: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredManifest {
    pub object: EmbeddedObject,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<FeedbackRule>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedManifest {
    pub manifest: ManifestRef,
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDeliveryStatus {
    /// The delivery generation last applied (whole or in part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The push generation of that spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_generation: Option<i64>,
    /// `Applied`, `Available`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One per manifest of the spec, and one per object still to prune.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ManifestResult>,
    /// When an object changed or deleted on the spoke was last restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift_correction: Option<Time>,
    #[serde(default)]
    pub drift_corrections: u64,
    /// When the whole delivery was last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestResult {
    /// The object, with its full `apiVersion`.
    pub manifest: ManifestRef,
    pub result: ApplyResult,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Values read back (the configured rules' and the kind's well-known ones): a string as it is, anything
    /// else as JSON text (as `kubectl get -o jsonpath` prints them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feedback: BTreeMap<String, String>,
    /// Whether the object reports itself available: `None` for kinds with no notion of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ApplyResult {
    /// Not applied yet: the tunnel is down, or it waits for its CRD or namespace.
    #[default]
    Pending,
    Applied,
    /// A `ReadOnly` manifest read (never written, so never pruned or deleted).
    Observed,
    /// Left the delivery (or the delivery is being deleted); deleting it on the spoke has not succeeded yet.
    Pruning,
    /// The spoke's apiserver refused it (its message beside).
    Failed,
    /// Another field manager owns fields it sets (server-side apply without `force`).
    Conflict,
    /// The push identity may not do it on that spoke.
    Forbidden,
    /// The spoke does not serve its kind.
    UnknownKind,
    /// Rendering failed (an override that does not apply, an object without a name...).
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_identities_are_only_valid_namespaces() {
        assert_eq!(push_user("team-a"), "tether:push:team-a");
        assert_eq!(push_namespace("tether:push:team-a"), Some("team-a"));
        for bad in ["tether:push:", "tether:push:Team", "tether:push:a:b", "tether:push:-a", "tether:push:a/b", "admin"]
        {
            assert_eq!(push_namespace(bad), None, "{bad}");
        }
        assert_eq!(push_namespace(&format!("tether:push:{}", "a".repeat(64))), None);
    }

    #[test]
    fn owner_labels_fit_and_stay_unique() {
        assert_eq!(owner_label_value("ns", "web"), "ns.web");
        let long = "n".repeat(100);
        let (a, b) = (owner_label_value("ns", &long), owner_label_value("ns", &format!("{long}x")));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        let name = delivery_name(&"p".repeat(253), "spoke-a");
        assert!(name.len() <= 253, "{}", name.len());
        assert_eq!(delivery_name("web", "spoke-a"), "web.spoke-a");
    }
}
