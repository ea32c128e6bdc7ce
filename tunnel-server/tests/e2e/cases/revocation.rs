//! Certificate revocation: a revocation entry closes the cluster's live tunnel, refuses it at every later
//! handshake, also after a hub restart, and stops applying once the entry is gone.
use std::time::Duration;

use anyhow::{bail, Result};
use http::StatusCode;
use k8s_openapi::jiff::Timestamp;

use crate::cases::ops::sample_sum;
use crate::env::Env;
use crate::procs::wait_for;
use crate::Case;

const CONFIG_MAP: &str = "tether-revocations";
const NAMESPACE: &str = "tether-system";
const REVOKED_HANDSHAKES: &str = "tether_server_handshake_failures_total{reason=\"revoked\"}";

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("revocation::closes_the_tunnel_refuses_redials_and_survives_restarts", revoked_echo)]
}

fn echo_status(env: &Env) -> Result<StatusCode> {
    Ok(env.rt.block_on(env.http.get("/clusters/echo/x", Some(&env.admin_token), &[]))?.status)
}

fn wait_for_echo(env: &Env, status: StatusCode, what: &str) -> Result<()> {
    wait_for(what, Duration::from_secs(20), || Ok((echo_status(env)? == status).then_some(())))
}

fn server_metric(env: &Env, name: &str) -> Result<f64> {
    Ok(sample_sum(&env.metrics(None)?, name))
}

/// The echo client's log from `from` bytes on.
fn client_log_since(env: &Env, from: usize) -> String {
    let text = std::fs::read_to_string(env.logs.join("tunnel-client-echo.log")).unwrap_or_default();
    text.get(from..).unwrap_or_default().to_string()
}

fn revoked_echo(env: &Env) -> Result<()> {
    wait_for_echo(env, StatusCode::OK, "echo reachable before the revocation")?;
    // Other cases may have left revocations of their own clusters: add to them, and take only ours away.
    let existed = env.hub.kubectl(&["get", "configmap", CONFIG_MAP, "-n", NAMESPACE])?.status.success();
    let log_start = client_log_since(env, 0).len();
    let refused_before = server_metric(env, REVOKED_HANDSHAKES)?;
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    if existed {
        let patch = serde_json::json!({ "data": { "echo": now } }).to_string();
        env.hub.kubectl_ok(&["patch", "configmap", CONFIG_MAP, "-n", NAMESPACE, "--type", "merge", "-p", &patch])?;
    } else {
        let entry = format!("--from-literal=echo={now}");
        env.hub.kubectl_ok(&["create", "configmap", CONFIG_MAP, "-n", NAMESPACE, &entry])?;
    }
    let result = revoked_while_listed(env, log_start, refused_before);

    if existed {
        let patch = serde_json::json!({ "data": { "echo": null } }).to_string();
        env.hub.kubectl_ok(&["patch", "configmap", CONFIG_MAP, "-n", NAMESPACE, "--type", "merge", "-p", &patch])?;
    } else {
        env.hub.kubectl_ok(&["delete", "configmap", CONFIG_MAP, "-n", NAMESPACE])?;
    }
    // The same certificate is accepted again once its entry is gone (start_client waits for the tunnel).
    env.stop_client("echo");
    env.start_client("echo")?;
    wait_for_echo(env, StatusCode::OK, "echo reachable after the revocation was removed")?;
    result
}

fn revoked_while_listed(env: &Env, log_start: usize, refused_before: f64) -> Result<()> {
    // The live tunnel is closed at once: the proxy has no tunnel for echo left.
    wait_for_echo(env, StatusCode::SERVICE_UNAVAILABLE, "echo's tunnel closed")?;
    if server_metric(env, "tether_server_tunnels_revoked_total{cluster=\"echo\"}")? < 1.0 {
        bail!("the closed tunnel is not counted in tether_server_tunnels_revoked_total");
    }
    // The client redials and the hub refuses it at the handshake, saying why.
    wait_for("the hub refusing echo's redials", Duration::from_secs(20), || {
        let refused = server_metric(env, REVOKED_HANDSHAKES)? > refused_before;
        // The first mention may be the live tunnel's closing; a second one is a refused redial.
        let told = client_log_since(env, log_start).matches("certificate revoked").count() >= 2;
        Ok((refused && told).then_some(()))
    })?;
    let hub_log = std::fs::read_to_string(env.logs.join("tunnel-server.log"))?;
    if !hub_log.lines().any(|l| l.contains("certificate revoked") && l.contains("echo")) {
        bail!("the hub's log does not name the revoked cluster");
    }

    // The revocation is read from the hub apiserver at start: a restarted hub refuses echo too.
    env.restart_server()?;
    wait_for("spoke-a through the restarted hub", Duration::from_secs(20), || {
        let answer = env.rt.block_on(env.http.get("/clusters/spoke-a/version", Some(&env.admin_token), &[]))?;
        Ok((answer.status == StatusCode::OK).then_some(()))
    })?;
    wait_for("the restarted hub refusing echo", Duration::from_secs(20), || {
        Ok((server_metric(env, REVOKED_HANDSHAKES)? > 0.0).then_some(()))
    })?;
    let status = echo_status(env)?;
    if status != StatusCode::SERVICE_UNAVAILABLE {
        bail!("a revoked cluster answered {status} after a hub restart");
    }
    Ok(())
}
