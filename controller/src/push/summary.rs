//! A push's status from its deliveries: where each cluster stands (for the rollout) and the counts and
//! failures the push shows. Pure.
use std::sync::Arc;

use tether_api::push::{ApplyResult, ClusterFailure, ManifestDelivery, Summary, MAX_LISTED_FAILURES};

use super::render::describe;
use super::rollout::ClusterState;

/// Where the cluster of `delivery` (None: it has none yet) stands with the push's `generation`.
pub fn cluster_state(delivery: Option<&ManifestDelivery>, generation: i64) -> ClusterState {
    let Some(delivery) = delivery.filter(|d| d.spec.push_generation == generation) else {
        return ClusterState::Outdated;
    };
    let since = delivery.spec.pushed_at.as_ref().map(|t| t.0).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let Some(status) = delivery
        .status
        .as_ref()
        .filter(|s| s.push_generation == Some(generation) && s.observed_generation == delivery.metadata.generation)
    else {
        return ClusterState::InProgress { since };
    };
    if status.manifests.iter().any(|m| failed(m.result)) {
        return ClusterState::Failed;
    }
    let applied = status.manifests.iter().all(|m| matches!(m.result, ApplyResult::Applied | ApplyResult::Observed));
    if applied && status.manifests.iter().all(|m| m.available != Some(false)) {
        ClusterState::Done
    } else {
        ClusterState::InProgress { since }
    }
}

/// Whether a manifest's result is a failure (of the object, not of reaching the cluster).
pub fn failed(result: ApplyResult) -> bool {
    matches!(
        result,
        ApplyResult::Failed
            | ApplyResult::Conflict
            | ApplyResult::Forbidden
            | ApplyResult::UnknownKind
            | ApplyResult::Invalid
    )
}

/// The counts over the selected clusters, and the first failures (by cluster name) with why.
pub fn summarize(
    selected: &[String],
    deliveries: &[Arc<ManifestDelivery>],
    generation: i64,
) -> (Summary, Vec<ClusterFailure>) {
    let mut summary = Summary { selected: selected.len() as u32, ..Default::default() };
    let mut failures = Vec::new();
    for cluster in selected {
        let delivery = deliveries.iter().find(|d| d.spec.cluster == *cluster).map(Arc::as_ref);
        let state = cluster_state(delivery, generation);
        let status = delivery.and_then(|d| d.status.as_ref());
        let all_applied = status.is_some_and(|s| {
            s.push_generation == Some(generation)
                && s.manifests.iter().all(|m| matches!(m.result, ApplyResult::Applied | ApplyResult::Observed))
        });
        match state {
            ClusterState::Done => {
                summary.applied += 1;
                summary.available += 1;
            }
            ClusterState::Failed => {
                summary.failed += 1;
                if failures.len() < MAX_LISTED_FAILURES {
                    let first = status.and_then(|s| s.manifests.iter().find(|m| failed(m.result)));
                    failures.push(ClusterFailure {
                        cluster: cluster.clone(),
                        reason: first.map_or("Failed".into(), |m| format!("{:?}", m.result)),
                        message: first
                            .map_or_else(String::new, |m| format!("{}: {}", describe(&m.manifest), m.message)),
                    });
                }
            }
            ClusterState::InProgress { .. } if all_applied => summary.applied += 1,
            _ => summary.pending += 1,
        }
    }
    failures.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    (summary, failures)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use tether_api::push::{ManifestDeliverySpec, ManifestDeliveryStatus, ManifestRef, ManifestResult};

    use super::*;

    fn delivery(cluster: &str, push_generation: i64, results: Option<(i64, &[Outcome])>) -> ManifestDelivery {
        let mut d = ManifestDelivery::new(
            &format!("app.{cluster}"),
            ManifestDeliverySpec {
                cluster: cluster.into(),
                push: "app".into(),
                push_generation,
                pushed_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(1_800_000_000).unwrap(),
                )),
                ..Default::default()
            },
        );
        d.metadata.generation = Some(7);
        d.status = results.map(|(status_generation, results)| ManifestDeliveryStatus {
            observed_generation: Some(7),
            push_generation: Some(status_generation),
            manifests: results
                .iter()
                .enumerate()
                .map(|(i, (result, available))| ManifestResult {
                    manifest: ManifestRef { kind: "ConfigMap".into(), name: format!("c{i}"), ..Default::default() },
                    result: *result,
                    message: "the apiserver said no".into(),
                    available: *available,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        d
    }

    use ApplyResult::*;

    /// A manifest's result and availability.
    type Outcome = (ApplyResult, Option<bool>);

    #[test]
    fn states_follow_the_current_generation() {
        let since = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(cluster_state(None, 2), ClusterState::Outdated);
        assert_eq!(cluster_state(Some(&delivery("a", 1, Some((1, &[(Applied, None)])))), 2), ClusterState::Outdated);
        assert_eq!(
            cluster_state(Some(&delivery("a", 2, Some((1, &[(Applied, None)])))), 2),
            ClusterState::InProgress { since }
        );
        assert_eq!(
            cluster_state(Some(&delivery("a", 2, Some((2, &[(Applied, Some(false))])))), 2),
            ClusterState::InProgress { since }
        );
        assert_eq!(
            cluster_state(Some(&delivery("a", 2, Some((2, &[(Applied, Some(true)), (Observed, None)])))), 2),
            ClusterState::Done
        );
        assert_eq!(
            cluster_state(Some(&delivery("a", 2, Some((2, &[(Applied, None), (Forbidden, None)])))), 2),
            ClusterState::Failed
        );
    }

    #[test]
    fn the_summary_counts_every_selected_cluster_once_and_names_failures() {
        let deliveries = [
            delivery("done", 2, Some((2, &[(Applied, Some(true))]))),
            delivery("starting", 2, Some((2, &[(Applied, Some(false))]))),
            delivery("old", 1, Some((1, &[(Applied, Some(true))]))),
            delivery("broken", 2, Some((2, &[(Applied, None), (Conflict, None)]))),
            delivery("deselected", 2, Some((2, &[(Applied, None)]))),
        ];
        let selected: Vec<String> = ["broken", "done", "new", "old", "starting"].map(String::from).to_vec();
        let (summary, failures) = summarize(&selected, &deliveries.map(Arc::new), 2);
        assert_eq!(summary, Summary { selected: 5, applied: 2, available: 1, failed: 1, pending: 2 });
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].cluster, "broken");
        assert_eq!(failures[0].reason, "Conflict");
        assert_eq!(failures[0].message, "ConfigMap c1: the apiserver said no");
    }
}
