//! The spokes' real nodes themselves: Ready, each with a containerd that sees only its own cluster's
//! containers, pod addresses that stay behind the spoke's firewall, and a missing image that fails the
//! set-up with a message naming it.
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::{repo_root, Env, Spoke};
use crate::pods::{echo_check, in_netns_thread, node_spoke, text, wait_running, BUSYBOX, ECHO_PORT};
use crate::procs::run_ok;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("node::a_deployment_gets_running_pods", deployment),
        ("node::two_nodes_never_see_each_others_containers", separate),
        ("node::pod_addresses_stay_behind_the_firewall", pod_addresses),
        ("node::a_missing_image_fails_the_set_up_naming_it", missing_image),
    ]
}

/// The controller-manager's ReplicaSet, the scheduler and the kubelet together: a Deployment through the hub
/// reports its replicas ready.
fn deployment(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: sleeper, namespace: default}}\nspec:\n  replicas: 2\n  \
         selector: {{matchLabels: {{app: sleeper}}}}\n  template:\n    metadata: {{labels: {{app: sleeper}}}}\n    spec:\n      \
         terminationGracePeriodSeconds: 1\n      containers:\n      - name: sleep\n        image: {BUSYBOX}\n        \
         imagePullPolicy: Never\n        command: [sleep, '1000000']\n"
    );
    let file = env.dir.join("deployment.yaml");
    std::fs::write(&file, manifest)?;
    let file = file.to_str().context("path")?;
    let applied = crate::pods::hub_command(env, &["apply", "-f", file]).output()?;
    if !applied.status.success() {
        bail!("kubectl apply of a Deployment through the hub: {}", text(&applied.stderr));
    }
    let ready = crate::procs::wait_for("2 ready replicas through the hub", Duration::from_secs(90), || {
        let out =
            crate::pods::hub_command(env, &["get", "deployment", "sleeper", "-o", "jsonpath={.status.readyReplicas}"])
                .output()?;
        Ok((text(&out.stdout).trim() == "2").then_some(()))
    });
    let _ = spoke.cluster.kubectl(&["delete", "deployment", "sleeper", "--wait=false"]);
    ready
}

/// Container ids the node's own containerd knows.
fn containers(spoke: &Spoke) -> Result<Vec<String>> {
    let socket = spoke.cluster.dir.join("node/containerd.sock");
    let mut ctr = Command::new("ctr");
    ctr.arg("--address").arg(socket).args(["-n", "k8s.io", "containers", "ls", "-q"]);
    Ok(run_ok(ctr)?.lines().map(str::to_string).collect())
}

/// The containerd ids of a pod's containers, as its cluster's apiserver reports them.
fn pod_containers(spoke: &Spoke, pod: &str) -> Result<Vec<String>> {
    let ids =
        spoke.cluster.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[*].containerID}"])?;
    Ok(ids.split_whitespace().map(|id| id.trim_start_matches("containerd://").to_string()).collect())
}

fn separate(env: &Env) -> Result<()> {
    let Some(a) = node_spoke(env)? else { return Ok(()) };
    let b = env.spoke("spoke-b");
    b.node.as_ref().context("spoke-b has no node")?;
    b.cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: only-on-b, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  tolerations:\n  - {{key: e2e.tether.io/processes-only, operator: Exists}}\n  \
         containers:\n  - name: sleep\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sleep, '1000000']\n"
    ))?;
    wait_running(b, "only-on-b")?;
    wait_running(a, "tools")?;
    let (on_a, on_b) = (containers(a)?, containers(b)?);
    for (pod, spoke, own, other) in [("tools", a, &on_a, &on_b), ("only-on-b", b, &on_b, &on_a)] {
        for id in pod_containers(spoke, pod)? {
            if !own.contains(&id) || other.contains(&id) {
                bail!(
                    "container {id} of {pod} ({}): on its own node {}, on the other {}",
                    spoke.cluster.name,
                    own.contains(&id),
                    other.contains(&id)
                );
            }
        }
    }
    if on_a.iter().any(|id| on_b.contains(id)) {
        bail!("the two containerds share a container: {on_a:?} and {on_b:?}");
    }
    let _ = b.cluster.kubectl(&["delete", "pod", "only-on-b", "--wait=false"]);
    Ok(())
}

/// A host route to the pod network through the spoke's veth, removed when dropped.
struct Route(String);

impl Drop for Route {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", &self.0]).status();
    }
}

fn pod_addresses(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    let ip = spoke.cluster.kubectl_ok(&["get", "pod", "tools", "-o", "jsonpath={.status.podIP}"])?;
    let addr: SocketAddr = format!("{}:{ECHO_PORT}", ip.trim()).parse().context("pod IP")?;
    // Inside the spoke, the pod answers on its address.
    let netns = spoke.cluster.netns.clone();
    in_netns_thread(netns.as_deref(), move || echo_check(addr, 4096, 3)).context("the pod from inside its spoke")?;
    // From the hub side, even with a route to the pod network through the spoke, the firewall drops the
    // connection: without the route the test would prove only that the address is not routed.
    let spoke_ip = spoke.spoke_ip.as_deref().context("spoke address")?;
    let net = format!("{}/32", addr.ip());
    run_ok({
        let mut c = Command::new("ip");
        c.args(["route", "replace", &net, "via", spoke_ip]);
        c
    })?;
    let _route = Route(net);
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(_) => bail!("the hub side reached pod {addr} behind the spoke's firewall"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
        Err(e) => bail!("connecting to pod {addr} from the hub side failed with {e}, not a timeout (dropped)"),
    }
}

fn missing_image(env: &Env) -> Result<()> {
    let empty = env.dir.join("empty-image-cache");
    std::fs::create_dir_all(&empty)?;
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/dev/images.sh"))
        .args(["import", "/nonexistent/containerd.sock", BUSYBOX])
        .env("TETHER_CACHE", &empty)
        .output()?;
    let err = text(&out.stderr);
    if out.status.success()
        || !err.contains(BUSYBOX)
        || !err.contains("images.sh build test")
        || err.lines().count() != 1
    {
        bail!("a missing image: {:?} {err:?}, want one line naming it and how to build it", out.status);
    }
    Ok(())
}
