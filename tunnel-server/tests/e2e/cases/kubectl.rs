//! kubectl through the hub: reads, writes and watches land on the right spoke and nowhere else.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::{kubectl_bin, rand_suffix, Env, SPOKES};
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("kubectl::get_namespaces_reaches_each_spoke", get_namespaces_reaches_each_spoke),
        ("kubectl::apply_server_side_apply_and_delete_land_on_one_spoke", apply_and_delete),
        ("kubectl::watch_sees_a_configmap_created_on_the_spoke", watch_sees_spoke_change),
        ("kubectl::system_kubectl_works_too", system_kubectl_works_too),
    ]
}

fn other(name: &str) -> &'static str {
    if name == SPOKES[0] {
        SPOKES[1]
    } else {
        SPOKES[0]
    }
}

fn get_namespaces_reaches_each_spoke(env: &Env) -> Result<()> {
    for spoke in SPOKES {
        let out = env.hub_kubectl_ok(spoke, &["get", "namespaces", "-o", "name"])?;
        let own = format!("namespace/only-on-{}", &spoke[6..]);
        let foreign = format!("namespace/only-on-{}", &other(spoke)[6..]);
        if !out.contains(&own) || out.contains(&foreign) || !out.contains("namespace/kube-system") {
            bail!("context {spoke} listed the wrong cluster's namespaces:\n{out}");
        }
    }
    Ok(())
}

fn apply_and_delete(env: &Env) -> Result<()> {
    for spoke in SPOKES {
        let suffix = rand_suffix();
        let (client_side, server_side) = (format!("csa-{suffix}"), format!("ssa-{suffix}"));
        let manifest = |name: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  via: hub\n"
            )
        };
        let dir = env.dir.join(format!("apply-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        let (csa, ssa) = (dir.join("csa.yaml"), dir.join("ssa.yaml"));
        std::fs::write(&csa, manifest(&client_side))?;
        std::fs::write(&ssa, manifest(&server_side))?;
        env.hub_kubectl_ok(spoke, &["apply", "-f", csa.to_str().context("path")?])?;
        env.hub_kubectl_ok(spoke, &["apply", "--server-side", "-f", ssa.to_str().context("path")?])?;

        let here = &env.spoke(spoke).cluster;
        let there = &env.spoke(other(spoke)).cluster;
        for name in [&client_side, &server_side] {
            let data = here.kubectl_ok(&["get", "configmap", name, "-n", "default", "-o", "jsonpath={.data.via}"])?;
            if data != "hub" {
                bail!("{name} on {spoke} has data {data:?}");
            }
            if there.kubectl(&["get", "configmap", name, "-n", "default"])?.status.success() {
                bail!("{name} applied through context {spoke} also exists on {}", other(spoke));
            }
        }
        // Server-side apply really went through the spoke's apply path: the field manager is recorded.
        let managers = here.kubectl_ok(&[
            "get",
            "configmap",
            &server_side,
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.managedFields[*].operation}",
        ])?;
        if !managers.contains("Apply") {
            bail!("server-side apply left managedFields operations {managers:?}");
        }
        env.hub_kubectl_ok(spoke, &["delete", "configmap", &client_side, &server_side, "-n", "default"])?;
        for name in [&client_side, &server_side] {
            let output = here.kubectl(&["get", "configmap", name, "-n", "default"])?;
            if output.status.success() || !String::from_utf8_lossy(&output.stderr).contains("NotFound") {
                bail!("{name} still on {spoke} after delete through the hub");
            }
        }
    }
    Ok(())
}

fn watch_sees_spoke_change(env: &Env) -> Result<()> {
    let name = format!("watched-{}", rand_suffix());
    let (mut watch, seen) = watch_configmaps(env, &[])?;
    // The initial list proves the watch is established before the change is made.
    let result = (|| {
        wait_line(&seen, "configmap/marker", Duration::from_secs(20))?;
        env.spoke("spoke-a").cluster.kubectl_ok(&["create", "configmap", &name, "-n", "default"])?;
        wait_line(&seen, &format!("configmap/{name}"), Duration::from_secs(20))
    })();
    let _ = watch.kill();
    let _ = watch.wait();
    result
}

/// `kubectl get configmaps -n default --watch -o name` through the hub as its admin (context spoke-a, and
/// `extra` flags), with its output lines on a channel. The caller kills the process.
pub(crate) fn watch_configmaps(env: &Env, extra: &[&str]) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut watch = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["--context", "spoke-a"])
        .args(extra)
        .args(["get", "configmaps", "-n", "default", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (lines, seen) = mpsc::channel();
    let stdout = watch.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    Ok((watch, seen))
}

pub(crate) fn wait_line(lines: &mpsc::Receiver<String>, want: &str, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim() == want => return Ok(()),
            Ok(_) => {}
            Err(_) => bail!("watch did not show {want} within {timeout:?}"),
        }
    }
}

/// Whatever newer kubectl the machine carries (users run those against tether too).
fn system_kubectl_works_too(env: &Env) -> Result<()> {
    let Some(kubectl) =
        ["/usr/bin/kubectl", "/usr/local/bin/kubectl"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("no system kubectl; nothing to compare");
        return Ok(());
    };
    let output = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["--context", "spoke-b", "get", "namespaces", "-o", "name"])
        .output()?;
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !out.contains("namespace/only-on-b") {
        bail!("{kubectl} through the hub failed: {out}{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
