//! What one cluster gets from a push: its manifests with the overrides that select the cluster applied,
//! labelled as the push's, each with its strategy and feedback. Pure: a bad manifest or override makes that
//! manifest `Invalid` (with why) and leaves the others to be delivered.
use serde_json::Value;
use tether_api::push::{
    owner_label_value, DeliveredManifest, EmbeddedObject, ManifestConfig, ManifestPushSpec, ManifestRef,
    PUSHED_BY_LABEL, PUSH_ANNOTATION,
};

use super::placement::Compiled;
use crate::ManagedCluster;

/// A cluster's rendering: what to deliver, and the manifests that cannot be, with why.
#[derive(Debug, Default, PartialEq)]
pub struct Rendered {
    pub manifests: Vec<DeliveredManifest>,
    pub invalid: Vec<(ManifestRef, String)>,
}

/// The identity of a whole object, as a manifest reference with its full `apiVersion`.
pub fn identity(object: &Value) -> Result<ManifestRef, String> {
    let text = |path: &[&str]| {
        let mut at = object;
        for key in path {
            at = at.get(key)?;
        }
        at.as_str().filter(|s| !s.is_empty()).map(str::to_string)
    };
    let api_version = text(&["apiVersion"]).ok_or("no apiVersion")?;
    let kind = text(&["kind"]).ok_or("no kind")?;
    let name = text(&["metadata", "name"]).ok_or("no metadata.name")?;
    Ok(ManifestRef { api_version: Some(api_version), kind, namespace: text(&["metadata", "namespace"]), name })
}

/// Whether `reference` (whose `apiVersion` may be left out) names the object `object`.
fn names(reference: &ManifestRef, object: &ManifestRef) -> bool {
    reference.kind == object.kind
        && reference.name == object.name
        && reference.namespace == object.namespace
        && reference.api_version.as_ref().is_none_or(|v| Some(v) == object.api_version.as_ref())
}

/// How a reference is written in messages: `Deployment demo/web`.
pub fn describe(reference: &ManifestRef) -> String {
    match &reference.namespace {
        Some(ns) => format!("{} {ns}/{}", reference.kind, reference.name),
        None => format!("{} {}", reference.kind, reference.name),
    }
}

/// Renders push `namespace/name` for `cluster`.
pub fn render(namespace: &str, name: &str, spec: &ManifestPushSpec, cluster: &ManagedCluster) -> Rendered {
    let mut rendered = Rendered::default();
    let objects: Vec<_> = spec.manifests.iter().map(|m| (identity(m), m)).collect();
    for (i, (id, _)) in objects.iter().enumerate() {
        if let Err(why) = id {
            rendered.invalid.push((
                ManifestRef { kind: "?".into(), name: format!("manifests[{i}]"), ..Default::default() },
                why.clone(),
            ));
        }
    }
    let ids: Vec<_> = objects.iter().filter_map(|(id, _)| id.as_ref().ok()).collect();
    for (i, a) in ids.iter().enumerate() {
        if ids[..i].iter().any(|b| names(a, b)) {
            rendered.invalid.push(((*a).clone(), "listed twice in manifests".into()));
        }
    }
    // Overrides and configs naming nothing are mistakes worth saying, not silently ignored.
    for (i, o) in spec.overrides.iter().enumerate() {
        if !ids.iter().any(|id| names(&o.manifest, id)) {
            rendered.invalid.push((o.manifest.clone(), format!("overrides[{i}] names no manifest of the push")));
        }
    }
    for (i, c) in spec.manifest_configs.iter().enumerate() {
        if !ids.iter().any(|id| names(&c.manifest, id)) {
            rendered.invalid.push((c.manifest.clone(), format!("manifestConfigs[{i}] names no manifest of the push")));
        }
    }
    let owner = owner_label_value(namespace, name);
    for (id, object) in objects.iter().filter_map(|(id, o)| id.as_ref().ok().map(|id| (id, *o))) {
        if rendered.invalid.iter().any(|(bad, _)| names(bad, id)) {
            continue;
        }
        match overridden(spec, cluster, id, object) {
            Ok(mut object) => {
                mark(&mut object, &owner, &format!("{namespace}/{name}"));
                let config = spec.manifest_configs.iter().find(|c| names(&c.manifest, id));
                let ManifestConfig { strategy, force, feedback, .. } = config.cloned().unwrap_or_default();
                match EmbeddedObject::new(&object) {
                    Ok(object) => rendered.manifests.push(DeliveredManifest { object, strategy, force, feedback }),
                    Err(why) => rendered.invalid.push((id.clone(), why)),
                }
            }
            Err(why) => rendered.invalid.push((id.clone(), why)),
        }
    }
    rendered
}

/// `object` with every override that selects `cluster` and names it applied, in order.
fn overridden(
    spec: &ManifestPushSpec,
    cluster: &ManagedCluster,
    id: &ManifestRef,
    object: &Value,
) -> Result<Value, String> {
    let mut object = object.clone();
    for (i, o) in spec.overrides.iter().enumerate() {
        if !names(&o.manifest, id) {
            continue;
        }
        let clusters = Compiled::new(&o.clusters).map_err(|e| format!("overrides[{i}].clusters: {e}"))?;
        if !clusters.selects(cluster) {
            continue;
        }
        if let Some(patch) = &o.json_patch {
            let patch: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|e| format!("overrides[{i}].jsonPatch: {e}"))?;
            json_patch::patch(&mut object, &patch).map_err(|e| format!("overrides[{i}].jsonPatch: {e}"))?;
        }
        if let Some(patch) = &o.merge_patch {
            json_patch::merge(&mut object, patch);
        }
        match identity(&object) {
            Ok(after) if after == *id => {}
            Ok(after) => return Err(format!("overrides[{i}] changes the object's identity to {}", describe(&after))),
            Err(why) => return Err(format!("overrides[{i}] leaves the object with {why}")),
        }
    }
    Ok(object)
}

/// Labels and annotates `object` as push `push` (`namespace/name`)'s.
fn mark(object: &mut Value, owner: &str, push: &str) {
    let metadata = &mut object["metadata"];
    metadata["labels"][PUSHED_BY_LABEL] = Value::String(owner.to_string());
    metadata["annotations"][PUSH_ANNOTATION] = Value::String(push.to_string());
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use serde_json::json;
    use tether_api::push::{Override, Placement, Strategy};

    use super::*;
    use crate::ManagedClusterSpec;

    fn cluster(name: &str, region: &str) -> ManagedCluster {
        let mut c = ManagedCluster::new(name, ManagedClusterSpec { hub_accepts_client: true, ..Default::default() });
        c.metadata.labels = Some([("region".to_string(), region.to_string())].into());
        c
    }

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}}})
    }

    fn web() -> ManifestRef {
        ManifestRef {
            kind: "Deployment".into(),
            namespace: Some("demo".into()),
            name: "web".into(),
            ..Default::default()
        }
    }

    fn in_region(region: &str) -> Placement {
        Placement {
            label_selector: Some(LabelSelector {
                match_labels: Some([("region".to_string(), region.to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn overrides_apply_only_to_the_clusters_they_select() {
        let spec = ManifestPushSpec {
            manifests: vec![
                deployment(),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
            ],
            overrides: vec![Override {
                clusters: in_region("eu"),
                manifest: web(),
                json_patch: Some(json!([{"op": "replace", "path": "/spec/replicas", "value": 3}])),
                merge_patch: Some(
                    json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:eu"}]}}}}),
                ),
            }],
            ..Default::default()
        };
        let eu = render("team", "app", &spec, &cluster("eu-1", "eu"));
        let us = render("team", "app", &spec, &cluster("us-1", "us"));
        assert!(eu.invalid.is_empty() && us.invalid.is_empty(), "{eu:?} {us:?}");
        let (eu_web, us_web) = (eu.manifests[0].object.value(), us.manifests[0].object.value());
        assert_eq!(eu_web["spec"]["replicas"], 3);
        assert_eq!(eu_web["spec"]["template"]["spec"]["containers"][0]["image"], "web:eu");
        assert_eq!(us_web["spec"]["replicas"], 1);
        assert_eq!(us_web["spec"]["template"]["spec"]["containers"][0]["image"], "web:1");
        for m in eu.manifests.iter().chain(&us.manifests) {
            assert_eq!(m.object.value()["metadata"]["labels"][PUSHED_BY_LABEL], "team.app");
            assert_eq!(m.object.value()["metadata"]["annotations"][PUSH_ANNOTATION], "team/app");
            assert_eq!(m.strategy, Strategy::ServerSideApply);
        }
    }

    #[test]
    fn a_bad_override_or_manifest_spoils_only_its_own_manifest() {
        let spec = ManifestPushSpec {
            manifests: vec![
                deployment(),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok", "namespace": "demo"}}),
                json!({"kind": "ConfigMap", "metadata": {"name": "no-version"}}),
            ],
            overrides: vec![
                Override {
                    clusters: in_region("eu"),
                    manifest: web(),
                    json_patch: Some(json!([{"op": "replace", "path": "/spec/missing/field", "value": 3}])),
                    merge_patch: None,
                },
                Override {
                    clusters: in_region("eu"),
                    manifest: ManifestRef { kind: "Service".into(), name: "nope".into(), ..Default::default() },
                    json_patch: None,
                    merge_patch: Some(json!({})),
                },
            ],
            ..Default::default()
        };
        let eu = render("team", "app", &spec, &cluster("eu-1", "eu"));
        let delivered: Vec<_> = eu.manifests.iter().map(|m| identity(&m.object.value()).unwrap().name).collect();
        assert_eq!(delivered, ["ok"]);
        let why: Vec<_> = eu.invalid.iter().map(|(r, w)| format!("{}: {w}", describe(r))).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why.iter().any(|w| w.starts_with("? manifests[2]: no apiVersion")), "{why:?}");
        assert!(why.iter().any(|w| w.starts_with("Service nope: overrides[1] names no manifest")), "{why:?}");
        assert!(why.iter().any(|w| w.starts_with("Deployment demo/web: overrides[0].jsonPatch: ")), "{why:?}");
        // Where the broken override does not apply, the Deployment goes out.
        assert_eq!(render("team", "app", &spec, &cluster("us-1", "us")).manifests.len(), 2);
    }

    #[test]
    fn an_override_may_not_rename_its_object() {
        let spec = ManifestPushSpec {
            manifests: vec![deployment()],
            overrides: vec![Override {
                clusters: Placement { label_selector: Some(LabelSelector::default()), ..Default::default() },
                manifest: web(),
                json_patch: None,
                merge_patch: Some(json!({"metadata": {"namespace": "other"}})),
            }],
            ..Default::default()
        };
        let r = render("team", "app", &spec, &cluster("eu-1", "eu"));
        assert!(r.manifests.is_empty());
        assert_eq!(r.invalid[0].1, "overrides[0] changes the object's identity to Deployment other/web");
    }
}
