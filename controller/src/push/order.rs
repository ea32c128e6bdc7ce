//! In which order a delivery's objects are applied and pruned. CRDs and Namespaces go first (a custom
//! resource or a namespaced object cannot be created before them), and leave last; objects that left the
//! delivery are pruned, but only those it applied (an object it only read, `Observed`, or never got to
//! create is never deleted).
use tether_api::push::{ApplyResult, ManifestRef, ManifestResult};

/// The apply stage of an object: 0 for CRDs and Namespaces, 1 for the rest.
pub fn stage(reference: &ManifestRef) -> u8 {
    let group = reference.api_version.as_deref().and_then(|v| v.split_once('/')).map_or("", |(g, _)| g);
    match (group, reference.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") | ("", "Namespace") => 0,
        _ => 1,
    }
}

/// Indexes of `refs` by apply stage, keeping the push's order within one: a stage is written only once
/// the one before it is done.
pub fn stages(refs: &[ManifestRef]) -> Vec<Vec<usize>> {
    let mut stages: Vec<Vec<usize>> = vec![Vec::new(); 2];
    for (i, reference) in refs.iter().enumerate() {
        stages[usize::from(stage(reference))].push(i);
    }
    stages.retain(|s| !s.is_empty());
    stages
}

/// What to delete: objects of `previous` results that the delivery applied (or created) and that are not
/// among `current`, in delete order (the reverse of apply order). Deleting the whole delivery is pruning
/// with nothing current.
pub fn to_prune(previous: &[ManifestResult], current: &[ManifestRef]) -> Vec<ManifestRef> {
    let mut gone: Vec<ManifestRef> = previous
        .iter()
        .filter(|r| matches!(r.result, ApplyResult::Applied | ApplyResult::Pruning))
        .filter(|r| !current.contains(&r.manifest))
        .map(|r| r.manifest.clone())
        .collect();
    gone.sort_by_key(|r| std::cmp::Reverse(stage(r)));
    gone
}

/// `gone` (in delete order, as [`to_prune`] gives it) cut into its stages: a stage is deleted only once
/// the one before it is, so that a CRD or Namespace outlives what it holds.
pub fn prune_stages(gone: &[ManifestRef]) -> impl Iterator<Item = &[ManifestRef]> {
    gone.chunk_by(|a, b| stage(a) == stage(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(api_version: &str, kind: &str, name: &str) -> ManifestRef {
        ManifestRef { api_version: Some(api_version.into()), kind: kind.into(), name: name.into(), namespace: None }
    }

    fn result(reference: ManifestRef, result: ApplyResult) -> ManifestResult {
        ManifestResult { manifest: reference, result, ..Default::default() }
    }

    #[test]
    fn crds_and_namespaces_are_applied_first_and_deleted_last() {
        let refs = [
            r("example.com/v1", "Widget", "w"),
            r("v1", "ConfigMap", "c"),
            r("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.example.com"),
            r("v1", "Namespace", "demo"),
        ];
        assert_eq!(stages(&refs), [vec![2, 3], vec![0, 1]]);
        assert_eq!(stages(&refs[..2]), [vec![0, 1]]);
        let previous: Vec<_> = refs.iter().map(|x| result(x.clone(), ApplyResult::Applied)).collect();
        let deleted: Vec<_> = to_prune(&previous, &[]).into_iter().map(|x| x.kind).collect();
        assert_eq!(deleted, ["Widget", "ConfigMap", "CustomResourceDefinition", "Namespace"]);
        let gone = to_prune(&previous, &[]);
        let stages: Vec<usize> = prune_stages(&gone).map(<[_]>::len).collect();
        assert_eq!(stages, [2, 2]);
    }

    #[test]
    fn only_what_was_applied_and_left_is_pruned() {
        let (kept, gone, refused, read) = (
            r("v1", "ConfigMap", "kept"),
            r("v1", "ConfigMap", "gone"),
            r("v1", "Secret", "refused"),
            r("v1", "Service", "read"),
        );
        let previous = [
            result(kept.clone(), ApplyResult::Applied),
            result(gone.clone(), ApplyResult::Applied),
            result(refused, ApplyResult::Forbidden),
            result(read, ApplyResult::Observed),
        ];
        assert_eq!(to_prune(&previous, std::slice::from_ref(&kept)), std::slice::from_ref(&gone));
        // A failed deletion is retried; an object only read is never deleted, even with the delivery.
        let previous = [result(gone.clone(), ApplyResult::Pruning), previous[3].clone()];
        assert_eq!(to_prune(&previous, &[]), [gone]);
    }
}
