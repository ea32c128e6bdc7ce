//! Pushing resources (ManifestPush → ManifestDelivery per cluster) through the tunnels to the real spoke
//! apiservers, as each push's namespace identity: placement by label, overrides, updates, pruning, drift
//! restored, a tunnel down and back, progressive rollout pausing, refusals and bad input per object and
//! cluster, delete and orphan, feedback from a Deployment on the real node, tenant RBAC, unregistration.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::env::{rand_suffix, Cluster, Env};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("push::by_label_with_overrides_updates_prunes_and_restores_drift", lifecycle),
        ("push::a_cluster_whose_tunnel_is_down_converges_when_it_returns", tunnel_down),
        ("push::refusals_and_bad_input_are_reported_per_object_and_cluster", refusals),
        ("push::progressive_rollout_pauses_on_a_failing_cluster", progressive),
        ("push::orphan_keeps_the_objects_and_delete_removes_them", orphan),
        ("push::read_only_feeds_back_someone_elses_object_as_it_changes_and_never_touches_it", read_only),
        ("push::a_deployment_on_the_real_node_reports_ready_replicas", deployment_feedback),
        ("push::tenant_rbac_gives_a_tenant_exactly_the_pushed_rights", tenant_rbac),
        ("push::a_cluster_labelled_in_gets_the_set_and_loses_it_labelled_out_and_unregistered", third_cluster),
    ]
}

const DEADLINE: Duration = Duration::from_secs(60);
/// Label the cases put on spoke-a and spoke-b's ManagedClusters.
const PUSH_LABEL: &str = "e2e.tether.io/push";

/// A fresh push namespace (on the hub, and the namespace its objects go to on the spokes), with the hub
/// rights its identity needs on `managedclusters/proxy`.
fn tenant(env: &Env, prefix: &str) -> Result<String> {
    let ns = format!("{prefix}-{}", rand_suffix());
    env.hub.kubectl_ok(&["create", "namespace", &ns])?;
    env.hub.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: e2e-push-proxy}}\nrules:\n\
         - {{apiGroups: [tether.io], resources: [managedclusters/proxy], verbs: ['*']}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: e2e-push-{ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-push-proxy}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: 'tether:push:{ns}'}}]\n"
    ))?;
    Ok(ns)
}

/// What a spoke admin writes to let push namespace `ns` manage namespace `ns` there: the namespace, and
/// `admin` in it for the push identity.
fn allow_on_spoke(cluster: &Cluster, ns: &str) -> Result<()> {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tether-push, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: 'tether:push:{ns}'}}]\n"
    ))
}

fn label_spokes(env: &Env) -> Result<()> {
    for spoke in ["spoke-a", "spoke-b"] {
        env.hub.kubectl_ok(&["label", "managedcluster", spoke, &format!("{PUSH_LABEL}=yes"), "--overwrite"])?;
    }
    Ok(())
}

fn config_map(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data})
}

fn apply_push(env: &Env, ns: &str, name: &str, spec: Value) -> Result<()> {
    let push = json!({"apiVersion": "tether.io/v1alpha1", "kind": "ManifestPush",
                      "metadata": {"name": name, "namespace": ns}, "spec": spec});
    // Server-side: a client-side apply's last-applied annotation could not hold a large manifest.
    let path = env.dir.join(format!("push-{}.json", rand_suffix()));
    std::fs::write(&path, push.to_string())?;
    env.hub.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", path.to_str().context("path")?])?;
    Ok(())
}

fn hub_json(env: &Env, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&env.hub.kubectl_ok(&all)?)?)
}

fn push_status(env: &Env, ns: &str, name: &str) -> Result<Value> {
    Ok(hub_json(env, &["get", "manifestpush", name, "-n", ns])?["status"].clone())
}

fn delivery(env: &Env, ns: &str, push: &str, cluster: &str) -> Result<Option<Value>> {
    let out = env.hub.kubectl(&["get", "manifestdelivery", &format!("{push}.{cluster}"), "-n", ns, "-o", "json"])?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&out.stdout)?))
}

/// The object on the spoke, read straight from its apiserver as its admin.
fn on_spoke(cluster: &Cluster, kind: &str, ns: &str, name: &str) -> Result<Option<Value>> {
    let out = cluster.kubectl(&["get", kind, name, "-n", ns, "-o", "json", "--ignore-not-found"])?;
    if !out.status.success() {
        bail!("kubectl get {kind} {name} on {}: {}", cluster.name, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(if text.trim().is_empty() { None } else { Some(serde_json::from_str(&text)?) })
}

fn wait_data(cluster: &Cluster, ns: &str, name: &str, key: &str, want: &str) -> Result<Duration> {
    let started = Instant::now();
    wait_for(&format!("{}: configmap {ns}/{name} {key}={want}", cluster.name), DEADLINE, || {
        let object = on_spoke(cluster, "configmap", ns, name)?;
        Ok(object.is_some_and(|o| o["data"][key] == want).then_some(()))
    })?;
    Ok(started.elapsed())
}

fn wait_gone(cluster: &Cluster, kind: &str, ns: &str, name: &str) -> Result<()> {
    wait_for(&format!("{}: {kind} {ns}/{name} deleted", cluster.name), DEADLINE, || {
        Ok(on_spoke(cluster, kind, ns, name)?.is_none().then_some(()))
    })
}

/// Waits until the push's summary has `applied` clusters applied for its current generation.
fn wait_applied(env: &Env, ns: &str, name: &str, applied: u64) -> Result<Value> {
    wait_for(&format!("push {ns}/{name}: {applied} applied"), DEADLINE, || {
        let push = hub_json(env, &["get", "manifestpush", name, "-n", ns])?;
        let status = &push["status"];
        let current = status["observedGeneration"] == push["metadata"]["generation"];
        Ok((current && status["summary"]["applied"] == applied).then(|| status.clone()))
    })
}

fn delivery_events(env: &Env, ns: &str, name: &str) -> Result<String> {
    let selector = format!("involvedObject.name={name}");
    env.hub.kubectl_ok(&["get", "events", "-n", ns, "--field-selector", &selector, "-o", "json"])
}

fn lifecycle(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-basic")?;
    let (a, b) = (&env.spoke("spoke-a").cluster, &env.spoke("spoke-b").cluster);
    allow_on_spoke(a, &ns)?;
    allow_on_spoke(b, &ns)?;
    label_spokes(env)?;
    let spec = |color: &str, with_extra: bool| {
        let mut manifests = vec![config_map(&ns, "settings", json!({"color": color, "size": "m"}))];
        if with_extra {
            manifests.push(config_map(&ns, "extra", json!({"x": "1"})));
        }
        json!({
            "manifests": manifests,
            "placement": {"labelSelector": {"matchLabels": {PUSH_LABEL: "yes"}}},
            "overrides": [{"clusters": {"clusterNames": ["spoke-b"]},
                           "manifest": {"kind": "ConfigMap", "namespace": ns, "name": "settings"},
                           "mergePatch": {"data": {"size": "xl"}}}],
        })
    };
    apply_push(env, &ns, "app", spec("blue", true))?;
    wait_applied(env, &ns, "app", 2)?;
    for (cluster, size) in [(a, "m"), (b, "xl")] {
        let object = on_spoke(cluster, "configmap", &ns, "settings")?.context("settings missing")?;
        if object["data"] != json!({"color": "blue", "size": size}) {
            bail!("{}: settings {}", cluster.name, object["data"]);
        }
        if object["metadata"]["labels"]["tether.io/pushed-by"] != format!("{ns}.app") {
            bail!("{}: not labelled as the push's: {}", cluster.name, object["metadata"]);
        }
        on_spoke(cluster, "configmap", &ns, "extra")?.context("extra missing")?;
    }
    let table = env.hub.kubectl_ok(&["get", "manifestpushes", "-n", &ns])?;
    eprintln!("e2e: kubectl get manifestpushes -n {ns}\n{table}");
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    if header != ["NAME", "SELECTED", "APPLIED", "AVAILABLE", "FAILED", "PENDING", "ROLLOUT", "AGE"] {
        bail!("unexpected columns: {header:?}");
    }
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    if row[..7] != ["app", "2", "2", "2", "0", "0", "Complete"] {
        bail!("kubectl get manifestpushes does not tell the truth:\n{table}");
    }
    eprintln!("e2e: {}", env.hub.kubectl_ok(&["get", "manifestdeliveries", "-n", &ns])?);

    // A changed manifest reaches both, the override still applies to spoke-b only.
    apply_push(env, &ns, "app", spec("red", true))?;
    wait_data(a, &ns, "settings", "color", "red")?;
    wait_data(b, &ns, "settings", "color", "red")?;
    if on_spoke(b, "configmap", &ns, "settings")?.context("settings")?["data"]["size"] != "xl" {
        bail!("the override was lost on update");
    }
    // A manifest removed from the push is pruned from both.
    apply_push(env, &ns, "app", spec("red", false))?;
    wait_gone(a, "configmap", &ns, "extra")?;
    wait_gone(b, "configmap", &ns, "extra")?;
    wait_applied(env, &ns, "app", 2)?;

    // Drift: an edit and a deletion made directly on the spokes are undone within seconds.
    a.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"color":"hacked"}}"#,
    ])?;
    let edit = wait_data(a, &ns, "settings", "color", "red")?;
    b.kubectl_ok(&["delete", "configmap", "settings", "-n", &ns])?;
    let deletion = wait_data(b, &ns, "settings", "color", "red")?;
    eprintln!("e2e: drift restored: edit on spoke-a in {edit:?}, deletion on spoke-b in {deletion:?}");
    for cluster in ["spoke-a", "spoke-b"] {
        let name = format!("app.{cluster}");
        wait_for(&format!("a DriftCorrected event on {name}"), DEADLINE, || {
            Ok(delivery_events(env, &ns, &name)?.contains("DriftCorrected").then_some(()))
        })?;
        let d = delivery(env, &ns, "app", cluster)?.context("delivery")?;
        if d["status"]["driftCorrections"].as_u64().unwrap_or(0) < 1 || d["status"]["lastDriftCorrection"].is_null() {
            bail!("{name}: drift not recorded in status: {}", d["status"]);
        }
    }
    // A field another manager added (not one the push sets) is left alone: no correction.
    a.kubectl_ok(&["label", "configmap", "settings", "-n", &ns, "owner=someone"])?;

    // Deleting the push deletes what it applied.
    env.hub.kubectl_ok(&["delete", "manifestpush", "app", "-n", &ns])?;
    wait_gone(a, "configmap", &ns, "settings")?;
    wait_gone(b, "configmap", &ns, "settings")?;
    wait_for("deliveries gone", DEADLINE, || {
        Ok(env.hub.kubectl_ok(&["get", "manifestdeliveries", "-n", &ns, "-o", "name"])?.trim().is_empty().then_some(()))
    })?;
    Ok(())
}

fn tunnel_down(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-down")?;
    let (a, b) = (&env.spoke("spoke-a").cluster, &env.spoke("spoke-b").cluster);
    allow_on_spoke(a, &ns)?;
    allow_on_spoke(b, &ns)?;
    label_spokes(env)?;
    let spec = |version: &str| {
        json!({"manifests": [config_map(&ns, "release", json!({"version": version}))],
               "placement": {"labelSelector": {"matchLabels": {PUSH_LABEL: "yes"}}}})
    };
    apply_push(env, &ns, "rel", spec("1"))?;
    wait_applied(env, &ns, "rel", 2)?;
    env.stop_client("spoke-b");
    let result = (|| -> Result<()> {
        apply_push(env, &ns, "rel", spec("2"))?;
        wait_data(a, &ns, "release", "version", "2")?;
        // spoke-b cannot be reached: Pending, saying so.
        wait_for("spoke-b pending and unreachable", DEADLINE, || {
            let d = delivery(env, &ns, "rel", "spoke-b")?.context("delivery")?;
            let applied =
                d["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Applied").cloned());
            Ok(applied.filter(|c| c["reason"] == "ClusterUnreachable").map(|_| ()))
        })?;
        wait_for("spoke-a applied and spoke-b pending in the summary", DEADLINE, || {
            let summary = push_status(env, &ns, "rel")?["summary"].clone();
            Ok((summary["applied"] == 1 && summary["pending"] == 1).then_some(()))
        })?;
        Ok(())
    })();
    env.start_client("spoke-b")?;
    result?;
    wait_data(b, &ns, "release", "version", "2")?;
    wait_applied(env, &ns, "rel", 2)?;
    env.hub.kubectl_ok(&["delete", "manifestpush", "rel", "-n", &ns])?;
    Ok(())
}

fn refusals(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-refused")?;
    let (a, b) = (&env.spoke("spoke-a").cluster, &env.spoke("spoke-b").cluster);
    // spoke-a's admin allows this namespace's pushes; spoke-b's did not.
    allow_on_spoke(a, &ns)?;
    b.kubectl_ok(&["create", "namespace", &ns])?;
    label_spokes(env)?;
    // Another declarative owner already applies `owned` there: its field is not taken without force.
    let owned = a.dir.join(format!("owned-{}.json", rand_suffix()));
    std::fs::write(&owned, config_map(&ns, "owned", json!({"k": "theirs"})).to_string())?;
    let owned = owned.to_str().context("path")?;
    a.kubectl_ok(&["apply", "--server-side", "--field-manager", "someone-else", "-f", owned])?;
    let too_large = "x".repeat(1_048_600);
    apply_push(
        env,
        &ns,
        "mixed",
        json!({
            "manifests": [
                config_map(&ns, "good", json!({"k": "v"})),
                config_map(&ns, "owned", json!({"k": "ours"})),
                config_map(&ns, "bad-key", json!({"not a valid key!": "v"})),
                config_map(&ns, "too-large", json!({"blob": too_large})),
                config_map(&ns, "patched", json!({"k": "v"})),
                {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": ns}},
            ],
            "placement": {"labelSelector": {"matchLabels": {PUSH_LABEL: "yes"}}},
            "overrides": [{"clusters": {"labelSelector": {}},
                           "manifest": {"kind": "ConfigMap", "namespace": ns, "name": "patched"},
                           "jsonPatch": [{"op": "replace", "path": "/data/missing", "value": "x"}]}],
        }),
    )?;
    let results = |cluster: &str| -> Result<Option<Vec<(String, String, String)>>> {
        let Some(d) = delivery(env, &ns, "mixed", cluster)? else { return Ok(None) };
        if d["status"]["observedGeneration"] != d["metadata"]["generation"] {
            return Ok(None);
        }
        let list = d["status"]["manifests"].as_array().cloned().unwrap_or_default();
        Ok(Some(
            list.iter()
                .map(|m| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (s(&m["manifest"]["name"]), s(&m["result"]), s(&m["message"]))
                })
                .collect(),
        ))
    };
    let on_a = wait_for("spoke-a's results", DEADLINE, || {
        Ok(results("spoke-a")?.filter(|r| r.iter().any(|(n, res, _)| n == "good" && res == "Applied")))
    })?;
    let expect = |list: &[(String, String, String)], name: &str, result: &str, says: &str| -> Result<()> {
        let found =
            list.iter().find(|(n, _, _)| n == name).with_context(|| format!("no result for {name}: {list:?}"))?;
        if found.1 != result || !found.2.contains(says) {
            bail!("{name}: want {result} saying {says:?}, got {found:?}");
        }
        Ok(())
    };
    expect(&on_a, "bad-key", "Failed", "valid config key")?;
    expect(&on_a, "too-large", "Failed", "1048576")?;
    expect(&on_a, "patched", "Invalid", "overrides[0].jsonPatch")?;
    expect(&on_a, "w", "UnknownKind", "Widget")?;
    expect(&on_a, "owned", "Conflict", "someone-else")?;
    if on_spoke(a, "configmap", &ns, "owned")?.context("owned")?["data"]["k"] != "theirs" {
        bail!("a conflicting field must be left to its owner");
    }
    on_spoke(a, "configmap", &ns, "good")?.context("the good object must be applied beside the bad ones")?;
    // spoke-b refused the identity: Forbidden, nothing created.
    let on_b = wait_for("spoke-b's results", DEADLINE, || {
        Ok(results("spoke-b")?.filter(|r| r.iter().any(|(n, res, _)| n == "good" && res == "Forbidden")))
    })?;
    expect(&on_b, "good", "Forbidden", &format!("tether:push:{ns}"))?;
    if on_spoke(b, "configmap", &ns, "good")?.is_some() {
        bail!("spoke-b did not authorise the push, yet the object exists");
    }
    // The push's summary follows its deliveries' status: wait for both to be counted.
    wait_for("both clusters listed as failed", DEADLINE, || {
        let status = push_status(env, &ns, "mixed")?;
        let listed = status["failedClusters"].as_array().map(Vec::len) == Some(2);
        Ok((status["summary"]["failed"] == 2 && listed).then_some(()))
    })?;
    wait_for("a Forbidden event", DEADLINE, || {
        Ok(delivery_events(env, &ns, "mixed.spoke-b")?.contains("Forbidden").then_some(()))
    })?;
    // A placement selecting nothing says so.
    apply_push(
        env,
        &ns,
        "nowhere",
        json!({"manifests": [config_map(&ns, "n", json!({}))],
               "placement": {"labelSelector": {"matchLabels": {"no-such-label": "x"}}}}),
    )?;
    wait_for("Placed=False NoClustersSelected", DEADLINE, || {
        let status = push_status(env, &ns, "nowhere")?;
        let placed = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Placed").cloned());
        Ok(placed.filter(|c| c["status"] == "False" && c["reason"] == "NoClustersSelected").map(|_| ()))
    })?;
    env.hub.kubectl_ok(&["delete", "manifestpush", "--all", "-n", &ns])?;
    Ok(())
}

fn progressive(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-rollout")?;
    let (a, b) = (&env.spoke("spoke-a").cluster, &env.spoke("spoke-b").cluster);
    // spoke-a (first by name) refuses this namespace: the rollout must stop there.
    a.kubectl_ok(&["create", "namespace", &ns])?;
    allow_on_spoke(b, &ns)?;
    label_spokes(env)?;
    apply_push(
        env,
        &ns,
        "wave",
        json!({"manifests": [config_map(&ns, "wave", json!({"n": "1"}))],
               "placement": {"labelSelector": {"matchLabels": {PUSH_LABEL: "yes"}}},
               "rollout": {"strategy": "Progressive", "maxConcurrency": 1, "maxFailures": 0}}),
    )?;
    let status = wait_for("the rollout paused", DEADLINE, || {
        let status = push_status(env, &ns, "wave")?;
        Ok((status["rollout"]["phase"] == "Paused").then_some(status))
    })?;
    let message = status["rollout"]["message"].as_str().unwrap_or_default();
    if !message.contains("spoke-a") {
        bail!("the pause must name the failed cluster: {status}");
    }
    let paused = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Paused").cloned());
    if paused.is_none_or(|c| c["status"] != "True") {
        bail!("no Paused=True condition: {status}");
    }
    if delivery(env, &ns, "wave", "spoke-b")?.is_some() || on_spoke(b, "configmap", &ns, "wave")?.is_some() {
        bail!("a paused rollout must not reach spoke-b");
    }
    wait_for("a RolloutPaused event", DEADLINE, || {
        Ok(delivery_events(env, &ns, "wave")?.contains("RolloutPaused").then_some(()))
    })?;
    env.hub.kubectl_ok(&["delete", "manifestpush", "wave", "-n", &ns])?;
    Ok(())
}

fn orphan(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-orphan")?;
    let a = &env.spoke("spoke-a").cluster;
    allow_on_spoke(a, &ns)?;
    for (name, policy) in [("kept", "Orphan"), ("removed", "Delete")] {
        apply_push(
            env,
            &ns,
            name,
            json!({"manifests": [config_map(&ns, name, json!({"k": "v"}))],
                   "placement": {"clusterNames": ["spoke-a"]}, "deletePolicy": policy}),
        )?;
        wait_applied(env, &ns, name, 1)?;
    }
    // The controller deletes a deleted push's deliveries itself rather than waiting on the hub's garbage
    // collector: the push carries its finalizer until then.
    let finalizers =
        env.hub.kubectl_ok(&["get", "manifestpush", "removed", "-n", &ns, "-o", "jsonpath={.metadata.finalizers}"])?;
    if !finalizers.contains("tether.io/push-deliveries") {
        bail!("a push carries the finalizer tether.io/push-deliveries, not {finalizers:?}");
    }
    env.hub.kubectl_ok(&["delete", "manifestpush", "kept", "removed", "-n", &ns])?;
    wait_gone(a, "configmap", &ns, "removed")?;
    wait_for("deliveries gone", DEADLINE, || {
        Ok(env.hub.kubectl_ok(&["get", "manifestdeliveries", "-n", &ns, "-o", "name"])?.trim().is_empty().then_some(()))
    })?;
    if on_spoke(a, "configmap", &ns, "kept")?.is_none() {
        bail!("deletePolicy Orphan must keep the object");
    }
    Ok(())
}

/// A `ReadOnly` manifest reports feedback of an object another owner applies: read, never written; its
/// feedback follows a change on the spoke within seconds (a watch of that object, not the 5-minute
/// resync); deleting the push leaves it.
fn read_only(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-readonly")?;
    let a = &env.spoke("spoke-a").cluster;
    allow_on_spoke(a, &ns)?;
    let theirs = |value: &str| -> Result<()> {
        let path = a.dir.join(format!("theirs-{}.json", rand_suffix()));
        std::fs::write(&path, config_map(&ns, "theirs", json!({"k": value})).to_string())?;
        let path = path.to_str().context("path")?;
        a.kubectl_ok(&["apply", "--server-side", "--field-manager", "someone-else", "-f", path]).map(drop)
    };
    theirs("one")?;
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs", "namespace": ns}});
    apply_push(
        env,
        &ns,
        "watcher",
        json!({"manifests": [object], "placement": {"clusterNames": ["spoke-a"]},
               "manifestConfigs": [{"manifest": {"kind": "ConfigMap", "namespace": ns, "name": "theirs"},
                                    "strategy": "ReadOnly",
                                    "feedback": [{"name": "k", "jsonPath": ".data.k"}]}]}),
    )?;
    // Well inside the controller's 30 s resync here, which would refresh it too.
    const FOLLOWS: Duration = Duration::from_secs(10);
    let fed_back = |want: &str| -> Result<Duration> {
        let started = Instant::now();
        let mut last = Value::Null;
        wait_for(&format!("feedback k={want}"), FOLLOWS, || {
            let Some(d) = delivery(env, &ns, "watcher", "spoke-a")? else { return Ok(None) };
            last = d["status"].clone();
            let m = &d["status"]["manifests"][0];
            Ok((m["result"] == "Observed" && m["feedback"]["k"] == want).then_some(()))
        })
        .with_context(|| format!("the delivery's status: {last}"))?;
        Ok(started.elapsed())
    };
    fed_back("one")?;
    theirs("two")?;
    let took = fed_back("two")?;
    eprintln!("e2e: a read-only object's change fed back after {took:?}");
    let object = on_spoke(a, "configmap", &ns, "theirs")?.context("theirs")?;
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    if managers != ["someone-else"] || !object["metadata"]["labels"].is_null() {
        bail!("a read-only object must not be written: managers {managers:?}, labels {}", object["metadata"]["labels"]);
    }
    env.hub.kubectl_ok(&["delete", "manifestpush", "watcher", "-n", &ns])?;
    wait_for("the delivery gone", DEADLINE, || Ok(delivery(env, &ns, "watcher", "spoke-a")?.is_none().then_some(())))?;
    if on_spoke(a, "configmap", &ns, "theirs")?.is_none() {
        bail!("deleting a push must never delete an object it only read");
    }
    Ok(())
}

fn deployment_feedback(env: &Env) -> Result<()> {
    let Some(spoke) = crate::pods::node_spoke(env)? else { return Ok(()) };
    let ns = tenant(env, "push-deploy")?;
    allow_on_spoke(&spoke.cluster, &ns)?;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "containers": [{"name": "web", "image": crate::pods::BUSYBOX,
                                                       "imagePullPolicy": "Never",
                                                       "command": ["sleep", "1000000"]}]}}}
    });
    apply_push(
        env,
        &ns,
        "web",
        json!({"manifests": [deployment], "placement": {"clusterNames": [spoke.cluster.name]},
               "manifestConfigs": [{"manifest": {"kind": "Deployment", "namespace": ns, "name": "web"},
                                    "feedback": [{"name": "ready", "jsonPath": ".status.readyReplicas"}]}]}),
    )?;
    let result = wait_for("readyReplicas fed back", Duration::from_secs(120), || {
        let Some(d) = delivery(env, &ns, "web", &spoke.cluster.name)? else { return Ok(None) };
        let m = d["status"]["manifests"][0].clone();
        Ok((m["feedback"]["ready"] == "1" && m["available"] == true).then_some(m))
    })?;
    eprintln!("e2e: Deployment feedback through the tunnel: {}", result["feedback"]);
    let status = wait_for("the push available", DEADLINE, || {
        let status = push_status(env, &ns, "web")?;
        Ok((status["summary"]["available"] == 1).then_some(status))
    })?;
    let available = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Available").cloned());
    if available.is_none_or(|c| c["status"] != "True") {
        bail!("the push must be Available: {status}");
    }
    env.hub.kubectl_ok(&["delete", "manifestpush", "web", "-n", &ns])?;
    wait_gone(&spoke.cluster, "deployment", &ns, "web")?;
    Ok(())
}

fn tenant_rbac(env: &Env) -> Result<()> {
    let ns = tenant(env, "push-tenant")?;
    let a = &env.spoke("spoke-a").cluster;
    allow_on_spoke(a, &ns)?;
    a.kubectl_ok(&["create", "configmap", "tenant-data", "-n", &ns, "--from-literal=k=v"])?;
    let alice = |args: &[&str]| env.hub_kubectl(&env.alice_kubeconfig, "spoke-a", args);
    let before = alice(&["get", "configmaps", "-n", &ns])?;
    if before.status.success() {
        bail!("alice must have no rights on spoke-a before the push");
    }
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant-alice", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    });
    apply_push(env, &ns, "tenancy", json!({"manifests": [binding], "placement": {"clusterNames": ["spoke-a"]}}))?;
    wait_applied(env, &ns, "tenancy", 1)?;
    let listed = wait_for("alice may list configmaps in the tenant namespace", DEADLINE, || {
        let out = alice(&["get", "configmaps", "-n", &ns, "-o", "name"])?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    if !listed.contains("tenant-data") {
        bail!("alice lists the wrong things: {listed}");
    }
    for args in [&["get", "configmaps", "-n", "default"][..], &["create", "configmap", "x", "-n", &ns]] {
        let out = alice(args)?;
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("forbidden") {
            bail!("alice must get exactly view in {ns}: {args:?} gave {out:?}");
        }
    }
    env.hub.kubectl_ok(&["delete", "manifestpush", "tenancy", "-n", &ns])?;
    wait_gone(a, "rolebinding", &ns, "tenant-alice")?;
    Ok(())
}

/// A third cluster (its client beside spoke-b's apiserver) labelled into a placement gets the set, loses it
/// when labelled out, and, labelled in again and unregistered, is cleaned before its tunnel is revoked.
fn third_cluster(env: &Env) -> Result<()> {
    let cluster = format!("extra-{}", rand_suffix());
    let ns = tenant(env, "push-extra")?;
    let b = &env.spoke("spoke-b").cluster;
    allow_on_spoke(b, &ns)?;
    env.hub.apply(&format!(
        "apiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: {cluster}\nspec: {{hubAcceptsClient: true}}\n"
    ))?;
    env.issue_identity(&cluster)?;
    let pki = env.dir.join("pki");
    let mut client = env.spoke_b_client(&cluster, None)?;
    client.arg("--cert").arg(pki.join(format!("{cluster}.crt"))).arg("--key").arg(pki.join(format!("{cluster}.key")));
    let mut proc = crate::procs::Proc::spawn(&format!("tunnel-client-{cluster}"), client, &env.logs)?;
    let result = (|| {
        apply_push(
            env,
            &ns,
            "extra",
            json!({"manifests": [config_map(&ns, "extra", json!({"k": "v"}))],
                   "placement": {"labelSelector": {"matchLabels": {"tier": "extra"}}}}),
        )?;
        let status = wait_for("the push selecting nothing yet", DEADLINE, || {
            let status = push_status(env, &ns, "extra")?;
            Ok((status["summary"]["selected"] == 0 && !status["conditions"].is_null()).then_some(status))
        })?;
        if on_spoke(b, "configmap", &ns, "extra")?.is_some() {
            bail!("nothing selected, yet the object exists: {status}");
        }
        env.hub.kubectl_ok(&["label", "managedcluster", &cluster, "tier=extra"])?;
        wait_data(b, &ns, "extra", "k", "v")?;
        env.hub.kubectl_ok(&["label", "managedcluster", &cluster, "tier-"])?;
        wait_gone(b, "configmap", &ns, "extra")?;
        env.hub.kubectl_ok(&["label", "managedcluster", &cluster, "tier=extra"])?;
        wait_data(b, &ns, "extra", "k", "v")?;
        // Unregistration removes the pushed objects while the tunnel is still up, then revokes.
        env.hub.kubectl_ok(&["delete", "managedcluster", &cluster, "--wait=false"])?;
        wait_gone(b, "configmap", &ns, "extra")?;
        wait_for("the ManagedCluster gone", DEADLINE, || {
            let out = env.hub.kubectl(&["get", "managedcluster", &cluster])?;
            Ok((!out.status.success()).then_some(()))
        })?;
        let revoked = env.revocations()?;
        if !revoked.contains(&cluster) {
            bail!("not revoked after the cleanup: {revoked}");
        }
        Ok(())
    })();
    proc.stop();
    let _ = env.hub.kubectl(&["delete", "manifestpush", "extra", "-n", &ns, "--wait=false"]);
    result
}
