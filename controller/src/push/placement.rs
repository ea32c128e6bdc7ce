//! Which ManagedClusters a placement selects: a pure function of the placement and the clusters.
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use tether_api::push::Placement;

use crate::ManagedCluster;

/// A placement ready to test clusters against, or why it cannot be (a selector with an unknown operator,
/// or values where its operator takes none): the push's `Placed` condition says so.
pub struct Compiled<'a> {
    names: &'a [String],
    selector: Option<Selector>,
    selects_nothing: bool,
}

impl<'a> Compiled<'a> {
    pub fn new(placement: &'a Placement) -> Result<Self, String> {
        let selector = match &placement.label_selector {
            Some(selector) => {
                Some(Selector::try_from(selector.clone()).map_err(|e| format!("placement.labelSelector: {e}"))?)
            }
            None => None,
        };
        let selects_nothing = placement.cluster_names.is_empty() && selector.is_none();
        Ok(Self { names: &placement.cluster_names, selector, selects_nothing })
    }

    /// Whether `cluster` is selected: the hub accepts it, it is not being unregistered, and it is named (when names are given) and its
    /// metadata labels match (when a selector is given).
    pub fn selects(&self, cluster: &ManagedCluster) -> bool {
        if self.selects_nothing || !cluster.spec.hub_accepts_client || cluster.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let named = self.names.is_empty() || self.names.iter().any(|n| *n == cluster.name_any());
        named && self.selector.as_ref().is_none_or(|s| s.matches(cluster.labels()))
    }

    /// The names of the selected clusters, sorted.
    pub fn select<'c>(&self, clusters: impl IntoIterator<Item = &'c ManagedCluster>) -> Vec<String> {
        let mut names: Vec<_> = clusters.into_iter().filter(|c| self.selects(c)).map(|c| c.name_any()).collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;
    use crate::ManagedClusterSpec;

    fn cluster(name: &str, accepted: bool, labels: &[(&str, &str)]) -> ManagedCluster {
        let mut c =
            ManagedCluster::new(name, ManagedClusterSpec { hub_accepts_client: accepted, ..Default::default() });
        c.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        c
    }

    fn clusters() -> Vec<ManagedCluster> {
        let mut leaving = cluster("eu-4", true, &[("region", "eu"), ("env", "prod")]);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        vec![
            leaving,
            cluster("eu-1", true, &[("region", "eu"), ("env", "prod")]),
            cluster("eu-2", true, &[("region", "eu"), ("env", "dev")]),
            cluster("us-1", true, &[("region", "us"), ("env", "prod")]),
            cluster("eu-3", false, &[("region", "eu"), ("env", "prod")]),
        ]
    }

    fn select(placement: Placement) -> Vec<String> {
        Compiled::new(&placement).unwrap().select(&clusters())
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_labels_select_accepted_clusters_and_both_together_intersect() {
        let by_label = Placement { label_selector: Some(labels(&[("region", "eu")])), ..Default::default() };
        assert_eq!(select(by_label), ["eu-1", "eu-2"], "eu-3 is not accepted, eu-4 is leaving");
        let by_name =
            Placement { cluster_names: vec!["us-1".into(), "eu-3".into(), "nope".into()], ..Default::default() };
        assert_eq!(select(by_name), ["us-1"]);
        let both = Placement {
            cluster_names: vec!["eu-1".into(), "us-1".into()],
            label_selector: Some(labels(&[("env", "prod"), ("region", "eu")])),
        };
        assert_eq!(select(both), ["eu-1"]);
    }

    #[test]
    fn an_empty_selector_selects_all_and_no_placement_selects_none() {
        let all = Placement { label_selector: Some(LabelSelector::default()), ..Default::default() };
        assert_eq!(select(all), ["eu-1", "eu-2", "us-1"]);
        assert!(select(Placement::default()).is_empty());
    }

    #[test]
    fn expressions_work_and_a_bad_operator_is_named() {
        let expr = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let not_us =
            LabelSelector { match_expressions: Some(vec![expr("region", "NotIn", &["us"])]), ..Default::default() };
        assert_eq!(select(Placement { label_selector: Some(not_us), ..Default::default() }), ["eu-1", "eu-2"]);
        let bad =
            LabelSelector { match_expressions: Some(vec![expr("region", "Near", &["us"])]), ..Default::default() };
        let err = Compiled::new(&Placement { label_selector: Some(bad), ..Default::default() }).err().unwrap();
        assert!(err.starts_with("placement.labelSelector: "), "{err}");
    }
}
