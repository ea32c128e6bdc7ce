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
        ("register::in_cluster_identity_lives_in_a_spoke_secret", in_cluster_identity),
        ("register::a_client_that_lost_its_request_name_resumes_with_its_spent_token", lost_request_name),
    ]
}

/// Runs `controller join` and returns (manifest, token).
pub(crate) fn join(env: &Env, cluster: &str, extra: &[&str]) -> Result<(String, String)> {
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
    env.remember_secret(&token);
    Ok((manifest, token))
}

fn csr_names(env: &Env, cluster: &str) -> Result<Vec<String>> {
    let out = env.hub.kubectl_ok(&["get", "csr", "-l", &format!("tether.io/cluster={cluster}"), "-o", "name"])?;
    Ok(out
        .lines()
        .map(|l| l.trim_start_matches("certificatesigningrequest.certificates.k8s.io/").to_string())
        .collect())
}

fn accept(env: &Env, cluster: &str) -> Result<()> {
    let patch = r#"{"spec":{"hubAcceptsClient":true}}"#;
    env.hub.kubectl_ok(&["patch", "managedcluster", cluster, "--type", "merge", "-p", patch])?;
    Ok(())
}

pub(crate) fn reachable(env: &Env, cluster: &str) -> Result<bool> {
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
        accept(env, cluster)?;
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

/// With `--identity-secret` the key and certificate go to a Secret of the spoke, never to a file, and a
/// client started later without any token connects with what the Secret holds.
fn in_cluster_identity(env: &Env) -> Result<()> {
    let cluster = "spoke-i";
    let spoke = &env.spoke("spoke-b").cluster;
    let (_, token) = join(env, cluster, &["--accept"])?;
    let secret = ["-n", "tether-system", "get", "secret", "tether-identity"];
    let result = (|| {
        let mut client = env.in_cluster_client(cluster, Some(&token))?;
        let joined = wait_for("joined with a Secret identity", Duration::from_secs(30), || {
            Ok(reachable(env, cluster)?.then_some(()))
        });
        client.stop();
        joined?;
        let keys = spoke.kubectl_ok(&[&secret[..], &["-o", "jsonpath={.data}"]].concat())?;
        if !keys.contains("tls.crt") || !keys.contains("tls.key") || keys.contains("pending.key") {
            bail!("the Secret holds {keys}");
        }
        if env.dir.join(format!("pki/{cluster}.crt")).exists() {
            bail!("a certificate file was written");
        }
        // No token this time: the identity comes from the Secret.
        let mut again = env.in_cluster_client(cluster, None)?;
        let back = wait_for("back with the stored identity", Duration::from_secs(30), || {
            if let Some(status) = again.exited() {
                bail!("the client exited ({status}):\n{}", again.log_text());
            }
            Ok(reachable(env, cluster)?.then_some(()))
        });
        again.stop();
        back
    })();
    let _ = spoke.kubectl(&["-n", "tether-system", "delete", "secret", "tether-identity"]);
    result
}

/// The gap between spending the token and learning the request's name: a client that lost the name (a
/// crash right after the hub filed its request) comes back with the same key, CSR and spent token, and
/// gets its request back instead of a refusal; no second request is filed.
fn lost_request_name(env: &Env) -> Result<()> {
    let cluster = "spoke-g";
    let (_, token) = join(env, cluster, &[])?;
    let mut client = env.bootstrap_client(cluster, &token)?;
    let filed =
        wait_for("the CSR on the hub", Duration::from_secs(20), || Ok(csr_names(env, cluster)?.into_iter().next()));
    let name_file = env.dir.join(format!("pki/{cluster}.key.pending.csr-name"));
    let named = wait_for("the request's name stored", Duration::from_secs(10), || Ok(name_file.exists().then_some(())));
    client.stop();
    let csr = filed?;
    named?;
    std::fs::remove_file(&name_file)?;
    let mut again = env.restart_bootstrap_client(cluster, &token)?;
    let result = (|| {
        let resumed = wait_for("the same request resumed", Duration::from_secs(20), || {
            if let Some(status) = again.exited() {
                bail!("the client gave up ({status}):\n{}", again.log_text());
            }
            Ok(std::fs::read_to_string(&name_file).ok().filter(|n| n.trim() == csr).map(|_| ()))
        });
        resumed?;
        accept(env, cluster)?;
        wait_for("connected", Duration::from_secs(30), || Ok(reachable(env, cluster)?.then_some(())))?;
        let all = csr_names(env, cluster)?;
        if all != [csr.clone()] {
            bail!("expected only {csr}, the hub has {all:?}");
        }
        Ok(())
    })();
    again.stop();
    result
}
