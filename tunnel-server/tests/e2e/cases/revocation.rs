//! Certificate revocation: a revocation entry closes the cluster's live tunnel, and the client stops
//! (exits saying why) instead of redialling; a restarted client is refused at its handshake and stops the
//! same way, also after a hub restart; the entry stops applying once it is gone.
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
/// What the client's one-line error says (`tunnel_client::Error::Revoked`).
const CLIENT_SAYS: &str = "the hub revoked this spoke's certificate (cluster echo)";

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("revocation::closes_the_tunnel_stops_the_client_refuses_restarts_and_survives_hub_restarts", revoked_echo)]
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

/// Checks that a client that exited with `status` and `log` stopped because of the revocation, saying so in
/// one error line, and did not redial.
fn stopped_for_revocation(what: &str, status: std::process::ExitStatus, log: &str) -> Result<()> {
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    if status.success() || errors.len() != 1 || !errors[0].contains(CLIENT_SAYS) {
        bail!("{what}: expected an exit with one error line saying {CLIENT_SAYS:?} ({status}):\n{log}");
    }
    if log.contains("reconnecting") {
        bail!("{what}: the client redialled a hub that revoked it:\n{log}");
    }
    Ok(())
}

/// A restarted echo client (what the kubelet does with a DaemonSet's Pod that exited): it must be refused
/// at its handshake and stop again.
fn restarted_client_stops(env: &Env, key: &str) -> Result<()> {
    let _ = std::fs::remove_file(env.logs.join(format!("tunnel-client-{key}.log")));
    let mut again = env.spawn_client("echo", key)?;
    let status = wait_for(&format!("{key} to stop"), Duration::from_secs(20), || Ok(again.exited()));
    again.stop();
    stopped_for_revocation(key, status?, &again.log_text())
}

fn revoked_echo(env: &Env) -> Result<()> {
    wait_for_echo(env, StatusCode::OK, "echo reachable before the revocation")?;
    // Other cases may have left revocations of their own clusters: add to them, and take only ours away.
    let existed = env.hub.kubectl(&["get", "configmap", CONFIG_MAP, "-n", NAMESPACE])?.status.success();
    let refused_before = server_metric(env, REVOKED_HANDSHAKES)?;
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    if existed {
        let patch = serde_json::json!({ "data": { "echo": now } }).to_string();
        env.hub.kubectl_ok(&["patch", "configmap", CONFIG_MAP, "-n", NAMESPACE, "--type", "merge", "-p", &patch])?;
    } else {
        let entry = format!("--from-literal=echo={now}");
        env.hub.kubectl_ok(&["create", "configmap", CONFIG_MAP, "-n", NAMESPACE, &entry])?;
    }
    let result = revoked_while_listed(env, refused_before);

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

fn revoked_while_listed(env: &Env, refused_before: f64) -> Result<()> {
    // The live tunnel is closed at once: the proxy has no tunnel for echo left.
    wait_for_echo(env, StatusCode::SERVICE_UNAVAILABLE, "echo's tunnel closed")?;
    if server_metric(env, "tether_server_tunnels_revoked_total{cluster=\"echo\"}")? < 1.0 {
        bail!("the closed tunnel is not counted in tether_server_tunnels_revoked_total");
    }
    // The client learns why from the close code and stops: redialling with a revoked certificate cannot help.
    let (status, log) = env.wait_client_exit("echo", Duration::from_secs(20))?;
    // The log holds the earlier runs of this client too: only this run's lines count.
    let this_run = log.rsplit("tunnel up").next().unwrap_or_default();
    stopped_for_revocation("the revoked client", status, this_run)?;

    // Restarted, it is refused at the handshake, and stops again.
    restarted_client_stops(env, "echo-restarted")?;
    if server_metric(env, REVOKED_HANDSHAKES)? <= refused_before {
        bail!("the restarted client's handshake was not refused as revoked");
    }
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
    restarted_client_stops(env, "echo-after-hub-restart")?;
    if server_metric(env, REVOKED_HANDSHAKES)? < 1.0 {
        bail!("the restarted hub did not refuse echo's handshake as revoked");
    }
    let status = echo_status(env)?;
    if status != StatusCode::SERVICE_UNAVAILABLE {
        bail!("a revoked cluster answered {status} after a hub restart");
    }
    Ok(())
}
