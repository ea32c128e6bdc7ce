//! The join manifest for real: `controller join` prints it, it is applied on spoke-a, and its DaemonSet's Pod
//! starts on spoke-a's node from the locally built tunnel-client image, trades the token for a certificate,
//! and carries kubectl through the hub. No process stands in for the Pod.
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::register::reachable;
use crate::env::{controller_bin, run_ok, Env};
use crate::pods::{hub_command, node_spoke, text, CLIENT_IMAGE, NODE_SPOKE};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("daemonset::the_join_manifest_runs_on_a_real_node", join_for_real)]
}

const CLUSTER: &str = "node-a";

fn join_for_real(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    let mut join = Command::new(controller_bin());
    join.args(["join", CLUSTER, "--accept", "--image", CLIENT_IMAGE])
        .arg("--hub-kubeconfig")
        .arg(env.hub.kubeconfig())
        .args(["--hub-address", &format!("{}:{}", spoke.hub_ip, env.addrs.quic_port)])
        .arg("--hub-ca")
        .arg(env.dir.join("pki/ca.crt"));
    let manifest = run_ok(join)?;
    if let Some(token) = manifest.lines().find_map(|l| l.trim().strip_prefix("token:")) {
        env.remember_secret(token.trim().trim_matches('"').trim_matches('\''));
    }
    spoke.cluster.apply(&manifest)?;
    let result = (|| {
        let selector = "app.kubernetes.io/name=tunnel-client";
        let pod = wait_for("the DaemonSet's Pod Ready", Duration::from_secs(90), || {
            let out = spoke.cluster.kubectl_ok(&[
                "get", "pods", "-n", "tether-system", "-l", selector, "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].image}{\"\\n\"}{end}",
            ])?;
            let line = out.lines().find(|l| l.split(' ').nth(2) == Some("true")).map(str::to_string);
            Ok(line)
        })?;
        let fields: Vec<&str> = pod.split(' ').collect();
        if fields.get(1) != Some(&spoke.node.as_deref().unwrap_or_default()) || fields.get(3) != Some(&CLIENT_IMAGE) {
            bail!("the Pod runs elsewhere or from another image: {pod}");
        }
        wait_for("node-a reachable through the hub", Duration::from_secs(60), || {
            Ok(reachable(env, CLUSTER)?.then_some(()))
        })?;
        // kubectl through the hub lands on spoke-a's apiserver, via the Pod's tunnel.
        let server = format!("https://localhost:{}/clusters/{CLUSTER}", env.addrs.proxy.port());
        let marker =
            hub_command(env, &["--server", &server, "get", "configmap", "marker", "-o", "jsonpath={.data.cluster}"])
                .output()?;
        if text(&marker.stdout) != NODE_SPOKE {
            bail!("kubectl through node-a's tunnel: {:?} {}", text(&marker.stdout), text(&marker.stderr));
        }
        report(env, spoke, fields[0])
    })();
    let _ = spoke.cluster.kubectl(&["delete", "daemonset", "-n", "tether-system", "tunnel-client", "--wait=true"]);
    result
}

/// The image's size and the Pod's memory once idle, from the kubelet's own summary, read through the hub.
fn report(env: &Env, spoke: &crate::env::Spoke, pod: &str) -> Result<()> {
    let node = spoke.node.as_deref().context("node")?;
    let path = format!("/clusters/{NODE_SPOKE}/api/v1/nodes/{node}/proxy/stats/summary");
    // The kubelet's stats come from its periodic housekeeping: the first for a new Pod may take a while.
    let memory = wait_for("the Pod's memory in the kubelet's summary", Duration::from_secs(60), || {
        let summary = env.rt.block_on(env.http.get(&path, Some(&env.admin_token), &[]))?.json()?;
        Ok(summary["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == pod))
            .and_then(|p| p["memory"]["workingSetBytes"].as_u64())
            .filter(|bytes| *bytes > 0))
    })
    .ok();
    // The process itself, found through the node's containerd: the working set above also counts the page
    // cache of the binary, which is shared and reclaimable.
    let id = spoke.cluster.kubectl_ok(&[
        "get",
        "pod",
        "-n",
        "tether-system",
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ])?;
    let id = id.trim().trim_start_matches("containerd://").to_string();
    let mut tasks = Command::new("ctr");
    tasks.arg("--address").arg(spoke.cluster.dir.join("node/containerd.sock")).args(["-n", "k8s.io", "tasks", "ls"]);
    let pid =
        run_ok(tasks)?.lines().find(|l| l.starts_with(&id)).and_then(|l| l.split_whitespace().nth(1).map(String::from));
    let status = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok()).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map_or("?".to_string(), |v| v.trim().to_string())
    };
    eprintln!("tunnel-client Pod {pod}: VmRSS {}, RssAnon {}", field("VmRSS:"), field("RssAnon:"));
    let archive = crate::env::image_archive("tunnel-client");
    let size = std::fs::metadata(&archive).map(|m| m.len()).ok();
    eprintln!(
        "tunnel-client Pod {pod}: working set {} KiB (kubelet summary); image archive {} KiB ({})",
        memory.map_or("?".into(), |m| (m / 1024).to_string()),
        size.map_or("?".into(), |s| (s / 1024).to_string()),
        archive.display()
    );
    Ok(())
}
