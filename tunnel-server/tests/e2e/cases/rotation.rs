//! Certificate rotation with a short certificate life: the client renews over its tunnel at 80 % of the
//! life, moves to a tunnel with the new identity, and nothing a user does notices. A watch opened before
//! the rotation still delivers events after it (it drains on the old tunnel); requests made all along
//! never fail; the status reports what the client said about its cluster.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;

use crate::cases::kubectl::{wait_line, watch_configmaps};
use crate::cases::register::{join, reachable};
use crate::env::{rand_suffix, Env};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("rotation::short_lived_certificates_rotate_under_load_and_watches", rotation)]
}

const CLUSTER: &str = "spoke-r";
/// Renewed at 16 s (15 s with the largest jitter); the retired tunnel may drain until 20 s.
const VALIDITY_SECONDS: u32 = 20;

/// Tunnels the hub has seen for the cluster (one more per rotation).
fn tunnel_connects(env: &Env) -> Result<u64> {
    let metrics = env.metrics(None)?;
    let prefix = format!("tether_server_tunnel_connects_total{{cluster=\"{CLUSTER}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(Ok(0), |v| v.trim().parse::<f64>().map(|f| f as u64))?)
}

fn rotation(env: &Env) -> Result<()> {
    let (_, token) = join(env, CLUSTER, &["--accept"])?;
    let patch = format!(r#"{{"spec":{{"certificateValiditySeconds":{VALIDITY_SECONDS}}}}}"#);
    env.hub.kubectl_ok(&["patch", "managedcluster", CLUSTER, "--type", "merge", "-p", &patch])?;
    let mut client = env.bootstrap_client(CLUSTER, &token)?;
    let result = (|| {
        wait_for("spoke-r joined", Duration::from_secs(30), || Ok(reachable(env, CLUSTER)?.then_some(())))?;
        let first_cert = std::fs::read_to_string(env.dir.join(format!("pki/{CLUSTER}.crt")))?;
        let connects = tunnel_connects(env)?;
        reports_what_the_client_said(env)?;
        across_rotations(env, connects)?;
        let cert = std::fs::read_to_string(env.dir.join(format!("pki/{CLUSTER}.crt")))?;
        if cert == first_cert {
            bail!("the certificate file was not replaced");
        }
        let metrics = env.metrics(None)?;
        if !metrics.lines().any(|l| l.starts_with("tether_server_renewals_total{outcome=\"issued\"}")) {
            bail!("no issued renewal in the hub's metrics");
        }
        Ok(())
    })();
    client.stop();
    let log = client.log_text();
    if result.is_ok() && (log.contains("renewal failed") || log.contains("renewal refused")) {
        bail!("the client reported a failed renewal:\n{log}");
    }
    result
}

/// The status carries the spoke apiserver's version and CA bundle and the client's version.
fn reports_what_the_client_said(env: &Env) -> Result<()> {
    let status = wait_for("the reported status", Duration::from_secs(20), || {
        let out = env.hub.kubectl_ok(&["get", "managedcluster", CLUSTER, "-o", "json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        let status = json["status"].clone();
        Ok(status["apiserverVersion"].is_string().then_some(status))
    })?;
    if status["apiserverVersion"] != "v1.20.2" {
        bail!("apiserverVersion {}", status["apiserverVersion"]);
    }
    if status["clientVersion"] != env!("CARGO_PKG_VERSION") {
        bail!("clientVersion {}", status["clientVersion"]);
    }
    let spoke_ca = std::fs::read_to_string(env.spoke("spoke-b").cluster.dir.join("ca.crt")).context("spoke-b CA")?;
    if status["caBundle"].as_str().map(str::trim) != Some(spoke_ca.trim()) {
        bail!("caBundle is not spoke-b's CA: {}", status["caBundle"]);
    }
    Ok(())
}

fn across_rotations(env: &Env, connects: u64) -> Result<()> {
    let marker = format!("rotation-marker-{}", rand_suffix());
    env.spoke("spoke-b").cluster.kubectl_ok(&["create", "configmap", &marker, "-n", "default"])?;
    // A watch through the hub, opened on the first identity's tunnel.
    let server = format!("https://localhost:{}/clusters/{CLUSTER}", env.addrs.proxy.port());
    let (mut watch, seen) = watch_configmaps(env, &["--server", &server])?;
    let stop = AtomicBool::new(false);
    let (made, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = std::sync::Mutex::new(Vec::new());
    let result = std::thread::scope(|scope| {
        // Requests all along, on fresh hub connections: none may fail.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps");
                match env.rt.block_on(env.http.get(&path, Some(&env.admin_token), &[])) {
                    Ok(answer) if answer.status == StatusCode::OK => {}
                    Ok(answer) => failures.lock().unwrap().push(format!("{}: {}", answer.status, answer.text())),
                    Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                }
                if failures.lock().unwrap().len() > failed.load(Ordering::Relaxed) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
        });
        let run = || -> Result<()> {
            // The initial list proves the watch is established.
            wait_line(&seen, &format!("configmap/{marker}"), Duration::from_secs(20))?;
            let window = Duration::from_secs(u64::from(VALIDITY_SECONDS) + 15);
            wait_for("the first rotation", window, || Ok((tunnel_connects(env)? > connects).then_some(())))?;
            // The watch is on the retired tunnel, which drains: it still sees what happens now.
            let name = format!("after-rotation-{}", rand_suffix());
            env.spoke("spoke-b").cluster.kubectl_ok(&["create", "configmap", &name, "-n", "default"])?;
            wait_line(&seen, &format!("configmap/{name}"), Duration::from_secs(4))
                .context("the watch opened before the rotation missed an event after it")?;
            wait_for("the second rotation", window, || Ok((tunnel_connects(env)? > connects + 1).then_some(())))?;
            Ok(())
        };
        let result = run();
        stop.store(true, Ordering::Relaxed);
        result
    });
    let _ = watch.kill();
    let output = watch.wait_with_output()?;
    result?;
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        bail!("{} of {} requests failed during rotations: {:?}", failures.len(), made.into_inner(), failures);
    }
    if made.into_inner() < 20 {
        bail!("too few requests were made to mean anything");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if ["tls", "x509", "certificate"].iter().any(|w| stderr.to_lowercase().contains(w)) {
        bail!("the watch reported a TLS error: {stderr}");
    }
    Ok(())
}
