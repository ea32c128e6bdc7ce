//! The controller against the real hub: `kubectl get managedclusters` tells the truth at a glance.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use crate::env::Env;
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("controller::managedclusters_tell_the_truth_at_a_glance", at_a_glance),
        ("controller::available_follows_the_tunnel_servers_leases", available_follows_leases),
        ("controller::ready_waits_for_readiness_gates", readiness_gates),
    ]
}

/// (status, reason) of a condition of a ManagedCluster, read straight from the hub.
fn condition(env: &Env, cluster: &str, type_: &str) -> Result<Option<(String, String)>> {
    let json: serde_json::Value =
        serde_json::from_str(&env.hub.kubectl_ok(&["get", "managedcluster", cluster, "-o", "json"])?)?;
    Ok(json["status"]["conditions"].as_array().and_then(|conditions| {
        conditions.iter().find(|c| c["type"] == type_).map(|c| {
            (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
        })
    }))
}

pub(super) fn wait_condition(env: &Env, cluster: &str, type_: &str, status: &str, timeout: Duration) -> Result<String> {
    wait_for(&format!("{cluster} {type_}={status}"), timeout, || {
        Ok(condition(env, cluster, type_)?.filter(|(s, _)| s == status).map(|(_, reason)| reason))
    })
}

fn at_a_glance(env: &Env) -> Result<()> {
    wait_condition(env, "spoke-a", "Ready", "True", Duration::from_secs(20))?;
    wait_condition(env, "ghost", "Available", "Unknown", Duration::from_secs(20))?;
    let table = env.hub.kubectl_ok(&["get", "managedclusters"])?;
    let row = |name: &str| -> Result<Vec<String>> {
        let line = table.lines().find(|l| l.split_whitespace().next() == Some(name)).context("row")?;
        Ok(line.split_whitespace().skip(1).take(4).map(String::from).collect())
    };
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    if header[..6] != ["NAME", "ACCEPTED", "JOINED", "AVAILABLE", "READY", "AGE"] {
        bail!("unexpected columns: {header:?}");
    }
    if row("spoke-a")? != ["True", "True", "True", "True"] || row("ghost")? != ["True", "False", "Unknown", "False"] {
        bail!("kubectl get managedclusters does not tell the truth:\n{table}");
    }
    // Every change of state is an Event on the cluster.
    let events = env.cluster_events("spoke-a")?;
    if !events.contains("TunnelUp") {
        bail!("no TunnelUp event for spoke-a:\n{events}");
    }
    Ok(())
}

fn available_follows_leases(env: &Env) -> Result<()> {
    let deadline = Duration::from_secs(30);
    wait_condition(env, "spoke-a", "Available", "True", deadline)?;
    // A crash: the hub stops renewing once heartbeats stop; after the missed renewals, Unknown.
    env.kill_client("spoke-a");
    let reason = wait_condition(env, "spoke-a", "Available", "Unknown", deadline)?;
    if reason != "LeaseNotRenewed" {
        bail!("Available Unknown for the wrong reason {reason}");
    }
    env.start_client("spoke-a")?;
    wait_condition(env, "spoke-a", "Available", "True", deadline)?;
    // A clean stop: the client says it is going away, and the hub records it.
    env.stop_client("spoke-a");
    let reason = wait_condition(env, "spoke-a", "Available", "False", deadline)?;
    if reason != "ClientGoingAway" {
        bail!("Available False for the wrong reason {reason}");
    }
    env.start_client("spoke-a")?;
    wait_condition(env, "spoke-a", "Available", "True", deadline)?;
    Ok(())
}

fn readiness_gates(env: &Env) -> Result<()> {
    let gate = "example.com/Configured";
    let spec = |gates: &str| format!(r#"{{"spec":{{"readinessGates":{gates}}}}}"#);
    env.hub.kubectl_ok(&[
        "patch",
        "managedcluster",
        "spoke-b",
        "--type",
        "merge",
        "-p",
        &spec(&format!(r#"["{gate}"]"#)),
    ])?;
    let result = (|| {
        let reason = wait_condition(env, "spoke-b", "Ready", "False", Duration::from_secs(20))?;
        if reason != "ReadinessGatesPending" {
            bail!("Ready False for the wrong reason {reason}");
        }
        // Another actor sets its condition the way controllers do: read, append, write guarded by
        // resourceVersion, retry on conflict.
        wait_for("the gate condition written", Duration::from_secs(20), || {
            env.rt.block_on(set_condition(env, "spoke-b", gate))
        })?;
        wait_condition(env, "spoke-b", "Ready", "True", Duration::from_secs(20))?;
        Ok(())
    })();
    env.hub.kubectl_ok(&["patch", "managedcluster", "spoke-b", "--type", "merge", "-p", &spec("null")])?;
    result
}

async fn set_condition(env: &Env, cluster: &str, type_: &str) -> Result<Option<()>> {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.hub.kubeconfig())?;
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("tether.io", "v1alpha1", "ManagedCluster"));
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client, &resource);
    let object = api.get(cluster).await?;
    let mut conditions = object.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.retain(|c| c["type"] != type_);
    conditions.push(serde_json::json!({
        "type": type_, "status": "True", "reason": "ConfiguredByTest", "message": "set by the e2e test",
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    }));
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "status": {"conditions": conditions}
    });
    match api.patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Some(())),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}
