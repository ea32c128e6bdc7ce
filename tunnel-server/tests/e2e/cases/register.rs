//! Manual-mode registration end to end: `controller join` → the manifest on the spoke → a client holding
//! only the token → CSR → approval (a person, or the policy) → Joined/Available → kubectl through the hub.
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;

use super::controller::wait_condition;
use crate::env::{controller_bin, Env};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("register::manual_join_with_a_person_approving", manual_join),
        ("register::auto_approval_needs_no_person", auto_join),
        ("register::bad_tokens_and_csrs_are_refused_and_create_nothing", bad_input),
    ]
}

/// Runs `controller join` and returns (manifest, token).
fn join(env: &Env, cluster: &str, extra: &[&str]) -> Result<(String, String)> {
    let mut c = Command::new(controller_bin());
    c.arg("join")
        .arg(cluster)
        .arg("--hub-kubeconfig")
        .arg(env.hub.kubeconfig())
        .args(["--hub-address", &format!("{}:{}", env.spoke("spoke-b").hub_ip, env.addrs.quic_port)])
        .arg("--hub-ca")
        .arg(env.dir.join("pki/ca.crt"))
        .args(extra);
    let manifest = crate::env::run_ok(c)?;
    let token = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|t| t.trim().trim_matches('"').trim_matches('\'').to_string())
        .context("no token in the manifest")?;
    Ok((manifest, token))
}

fn csr_names(env: &Env, cluster: &str) -> Result<Vec<String>> {
    let out = env.hub.kubectl_ok(&["get", "csr", "-l", &format!("tether.io/cluster={cluster}"), "-o", "name"])?;
    Ok(out
        .lines()
        .map(|l| l.trim_start_matches("certificatesigningrequest.certificates.k8s.io/").to_string())
        .collect())
}

fn reachable(env: &Env, cluster: &str) -> Result<bool> {
    let answer = env.rt.block_on(env.http.get(&format!("/clusters/{cluster}/version"), Some(&env.admin_token), &[]))?;
    Ok(answer.status == StatusCode::OK)
}

fn manual_join(env: &Env) -> Result<()> {
    let cluster = "spoke-m";
    let (manifest, token) = join(env, cluster, &[])?;
    // The spoke admin applies the manifest on the spoke (behind its firewall).
    env.spoke("spoke-b").cluster.apply(&manifest)?;
    let mut client = env.bootstrap_client(cluster, &token)?;
    let result = (|| {
        let csr = wait_for("the CSR on the hub", Duration::from_secs(20), || {
            Ok(csr_names(env, cluster)?.into_iter().next())
        })?;
        env.hub.kubectl_ok(&["certificate", "approve", &csr])?;
        // Approved by a person, but the hub does not accept the cluster yet: nothing is signed.
        let issued = || -> Result<bool> {
            Ok(!env.hub.kubectl_ok(&["get", "csr", &csr, "-o", "jsonpath={.status.certificate}"])?.trim().is_empty())
        };
        if issued()? {
            bail!("signed while hubAcceptsClient is false");
        }
        env.hub.kubectl_ok(&[
            "patch",
            "managedcluster",
            cluster,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"hubAcceptsClient":true}}"#,
        ])?;
        wait_for("the CSR signed", Duration::from_secs(20), || Ok(issued()?.then_some(())))?;
        wait_for("the client through the hub", Duration::from_secs(30), || Ok(reachable(env, cluster)?.then_some(())))?;
        // The controller sees the tunnel-server's Lease a moment after the tunnel is up.
        wait_condition(env, cluster, "Joined", "True", Duration::from_secs(20))?;
        Ok(())
    })();
    client.stop();
    result
}

fn auto_join(env: &Env) -> Result<()> {
    let cluster = "spoke-n";
    let (manifest, token) = join(env, cluster, &["--accept"])?;
    env.spoke("spoke-b").cluster.apply(&manifest)?;
    let mut client = env.bootstrap_client(cluster, &token)?;
    let result =
        wait_for("auto-approved and connected", Duration::from_secs(30), || Ok(reachable(env, cluster)?.then_some(())));
    client.stop();
    result
}

fn bad_input(env: &Env) -> Result<()> {
    let (_, token) = join(env, "spoke-q", &["--accept"])?;
    let (id, _) = token.split_once('.').context("token format")?;
    let wrong_secret = format!("{id}.{}", "0".repeat(16));
    // A token that has done its job once.
    let (_, spent) = join(env, "spoke-s", &["--accept"])?;
    let mut first = env.bootstrap_client("spoke-s", &spent)?;
    let joined = wait_for("spoke-s joined", Duration::from_secs(30), || Ok(reachable(env, "spoke-s")?.then_some(())));
    first.stop();
    joined?;
    // A token past its expiration.
    let (_, expired) = join(env, "spoke-e", &["--accept", "--ttl", "1s"])?;
    let issued = std::time::Instant::now();
    wait_for("the token's expiration", Duration::from_secs(5), || {
        Ok((issued.elapsed() > Duration::from_secs(2)).then_some(()))
    })?;

    for (what, cluster, token, refusal) in [
        ("malformed", "spoke-q", "not-a-token".to_string(), "malformed"),
        ("unknown", "spoke-q", "abcdef.0123456789abcdef".to_string(), "unknown"),
        ("wrong secret", "spoke-q", wrong_secret, "unknown"),
        ("another cluster", "spoke-z", token.clone(), "another cluster"),
        ("spent", "spoke-s", spent, "spent"),
        ("expired", "spoke-e", expired, "expired"),
    ] {
        let before = csr_names(env, cluster)?.len();
        let mut client = env.bootstrap_client(cluster, &token)?;
        let refused = wait_for(&format!("the {what} token refused"), Duration::from_secs(20), || Ok(client.exited()));
        client.stop();
        let log = client.log_text();
        if refused?.success() || !log.contains(refusal) {
            bail!("{what}: expected a refusal mentioning {refusal:?}:\n{log}");
        }
        if log.lines().filter(|l| l.starts_with("error:")).count() != 1 {
            bail!("{what}: the refusal is not one line:\n{log}");
        }
        if csr_names(env, cluster)?.len() != before || !csr_names(env, "spoke-q")?.is_empty() {
            bail!("{what}: a CSR was created");
        }
    }
    Ok(())
}
