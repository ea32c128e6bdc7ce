//! What a delivery reads back from an applied object: the values its feedback rules name, and, for the
//! kinds that have the notion, whether the object is available (a Deployment's replicas available and
//! updated for its current generation, a StatefulSet's ready, a DaemonSet's scheduled and available, a Job
//! complete), with the values that decide it.
use std::collections::BTreeMap;

use serde_json::Value;
use tether_api::push::FeedbackRule;

/// Values (as `kubectl get -o jsonpath` prints them: a string as it is, anything else as JSON text) and
/// availability read from `object`; a rule whose path cannot be parsed is
/// reported by name and the others still read. A path that reaches nothing yields no value.
#[derive(Debug, Default, PartialEq)]
pub struct Feedback {
    pub values: BTreeMap<String, String>,
    pub available: Option<bool>,
    pub errors: Vec<String>,
}

pub fn read(object: &Value, rules: &[FeedbackRule]) -> Feedback {
    let mut feedback = Feedback::default();
    let (known, available) = well_known(object);
    feedback.available = available;
    for (name, path) in known {
        if let Some(value) = lookup(object, path).ok().flatten() {
            feedback.values.insert(name.to_string(), text(value));
        }
    }
    for rule in rules {
        match lookup(object, &rule.json_path) {
            Ok(Some(value)) => {
                feedback.values.insert(rule.name.clone(), text(value));
            }
            Ok(None) => {}
            Err(why) => feedback.errors.push(format!("feedback {:?}: {why}", rule.name)),
        }
    }
    feedback
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One step of a path: a key or an index.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Parses `.a.b[0].c`, `.metadata.labels['app.kubernetes.io/name']`, optionally inside `{}` as kubectl
/// writes JSONPath.
fn parse(path: &str) -> Result<Vec<Step>, String> {
    let inner = path.trim();
    let inner = inner.strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or(inner);
    let mut rest = inner.strip_prefix('.').ok_or_else(|| format!("{path:?} does not start with '.'"))?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(|| format!("{path:?}: unclosed '['"))?;
            let inside = &after[..end];
            let quoted = inside
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
            steps.push(match quoted {
                Some(key) => Step::Key(key.to_string()),
                None => Step::Index(
                    inside.parse().map_err(|_| format!("{path:?}: [{inside}] is not an index or a quoted key"))?,
                ),
            });
            rest = &after[end + 1..];
            rest = rest.strip_prefix('.').unwrap_or(rest);
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("{path:?}: an empty key"));
            }
            steps.push(Step::Key(rest[..end].to_string()));
            rest = &rest[end..];
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
    }
    if steps.is_empty() {
        return Err(format!("{path:?} names nothing"));
    }
    Ok(steps)
}

fn lookup<'v>(object: &'v Value, path: &str) -> Result<Option<&'v Value>, String> {
    let mut at = object;
    for step in parse(path)? {
        let next = match step {
            Step::Key(key) => at.get(key.as_str()),
            Step::Index(i) => at.get(i),
        };
        match next {
            Some(value) => at = value,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

fn int(object: &Value, path: &str) -> Option<i64> {
    lookup(object, path).ok().flatten().and_then(Value::as_i64)
}

/// The kind's well-known values (name, path) and its availability.
fn well_known(object: &Value) -> (&'static [(&'static str, &'static str)], Option<bool>) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let current = int(object, ".status.observedGeneration") >= int(object, ".metadata.generation");
    let wanted = int(object, ".spec.replicas").unwrap_or(1);
    let at_least = |path: &str, n: i64| int(object, path).unwrap_or(0) >= n;
    match (api_version, kind) {
        ("apps/v1", "Deployment") => (
            &[
                ("replicas", ".status.replicas"),
                ("readyReplicas", ".status.readyReplicas"),
                ("availableReplicas", ".status.availableReplicas"),
                ("updatedReplicas", ".status.updatedReplicas"),
            ],
            Some(
                current && at_least(".status.availableReplicas", wanted) && at_least(".status.updatedReplicas", wanted),
            ),
        ),
        ("apps/v1", "StatefulSet") => (
            &[("replicas", ".status.replicas"), ("readyReplicas", ".status.readyReplicas")],
            Some(current && at_least(".status.readyReplicas", wanted)),
        ),
        ("apps/v1", "DaemonSet") => {
            let desired = int(object, ".status.desiredNumberScheduled").unwrap_or(0);
            (
                &[
                    ("desiredNumberScheduled", ".status.desiredNumberScheduled"),
                    ("numberAvailable", ".status.numberAvailable"),
                    ("updatedNumberScheduled", ".status.updatedNumberScheduled"),
                ],
                Some(
                    current
                        && object["status"].get("desiredNumberScheduled").is_some()
                        && at_least(".status.numberAvailable", desired)
                        && at_least(".status.updatedNumberScheduled", desired),
                ),
            )
        }
        ("batch/v1", "Job") => {
            let complete = object["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"));
            (
                &[("succeeded", ".status.succeeded"), ("active", ".status.active"), ("failed", ".status.failed")],
                Some(complete),
            )
        }
        _ => (&[], None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(name: &str, path: &str) -> FeedbackRule {
        FeedbackRule { name: name.into(), json_path: path.into() }
    }

    #[test]
    fn paths_read_keys_indexes_and_quoted_keys() {
        let object = json!({"kind": "ConfigMap", "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
                            "status": {"conditions": [{"type": "Ready"}]}, "data": {"n": 3}});
        let rules = [
            rule("label", ".metadata.labels['app.kubernetes.io/name']"),
            rule("first", "{.status.conditions[0].type}"),
            rule("n", ".data.n"),
            rule("missing", ".data.nope"),
            rule("bad", "status"),
            rule("bad-index", ".status.conditions[x]"),
        ];
        let feedback = read(&object, &rules);
        assert_eq!(feedback.values["label"], "web");
        assert_eq!(feedback.values["first"], "Ready");
        assert_eq!(feedback.values["n"], "3");
        assert!(!feedback.values.contains_key("missing"));
        assert_eq!(feedback.errors.len(), 2, "{:?}", feedback.errors);
        assert!(feedback.errors[0].starts_with("feedback \"bad\": "), "{:?}", feedback.errors);
        assert_eq!(feedback.available, None, "a ConfigMap has no availability");
    }

    #[test]
    fn a_deployment_is_available_when_its_current_generation_is() {
        let deployment = |generation: i64, observed: i64, available: i64, updated: i64| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": generation},
                   "spec": {"replicas": 2},
                   "status": {"observedGeneration": observed, "readyReplicas": available,
                              "availableReplicas": available, "updatedReplicas": updated}})
        };
        let ready = read(&deployment(3, 3, 2, 2), &[]);
        assert_eq!(ready.available, Some(true));
        assert_eq!(ready.values["readyReplicas"], "2");
        assert_eq!(read(&deployment(3, 3, 1, 2), &[]).available, Some(false), "one of two available");
        assert_eq!(read(&deployment(4, 3, 2, 2), &[]).available, Some(false), "its controller has not seen the change");
        assert_eq!(read(&deployment(3, 3, 2, 1), &[]).available, Some(false), "old replicas still serve");
    }

    #[test]
    fn daemonsets_and_jobs_have_their_own_availability() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
                        "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "numberAvailable": 2,
                                   "updatedNumberScheduled": 2}});
        assert_eq!(read(&ds, &[]).available, Some(true));
        let unscheduled = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1}});
        assert_eq!(read(&unscheduled, &[]).available, Some(false));
        let job = |status: &str| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": status}]}})
        };
        assert_eq!(read(&job("True"), &[]).available, Some(true));
        assert_eq!(read(&job("False"), &[]).available, Some(false));
    }
}
