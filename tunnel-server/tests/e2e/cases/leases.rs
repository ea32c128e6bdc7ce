//! Liveness: the tunnel-server's Lease for a cluster it holds, as the controller reads it from the hub.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cases::ops::sample_sum;
use crate::env::{Env, HUB_REPLICA};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("leases::renewed_while_connected_and_going_away_on_client_stop", follows_the_tunnel)]
}

fn lease(env: &Env, cluster: &str) -> Result<Value> {
    let name = format!("tether-{cluster}-{HUB_REPLICA}");
    let json = env.hub.kubectl_ok(&["get", "lease", &name, "-n", "tether-system", "-o", "json"])?;
    Ok(serde_json::from_str(&json)?)
}

fn annotation<'a>(lease: &'a Value, key: &str) -> &'a str {
    lease["metadata"]["annotations"][key].as_str().unwrap_or_default()
}

/// renewTime is a MicroTime in UTC, always `YYYY-MM-DDTHH:MM:SS.ffffffZ`: its text orders as the time does.
fn renew_time(lease: &Value) -> Result<String> {
    Ok(lease["spec"]["renewTime"].as_str().context("no spec.renewTime")?.to_string())
}

fn wait_for_state(env: &Env, cluster: &str, state: &str, timeout: Duration) -> Result<Value> {
    wait_for(&format!("Lease of {cluster} saying {state}"), timeout, || {
        let lease = lease(env, cluster)?;
        Ok((annotation(&lease, "tether.io/state") == state).then_some(lease))
    })
}

fn follows_the_tunnel(env: &Env) -> Result<()> {
    let first = wait_for_state(env, "spoke-a", "connected", Duration::from_secs(10))?;
    let labels = &first["metadata"]["labels"];
    if labels["tether.io/cluster"] != "spoke-a" || labels["tether.io/replica"] != HUB_REPLICA {
        bail!("labels: {labels}");
    }
    let spec = &first["spec"];
    if spec["holderIdentity"] != HUB_REPLICA || spec["leaseDurationSeconds"] != 5 || spec["acquireTime"].is_null() {
        bail!("spec: {spec}");
    }
    if annotation(&first, "tether.io/client-instances") != "spoke-a" {
        bail!("client instances: {}", first["metadata"]["annotations"]);
    }
    let renewed = renew_time(&first)?;
    wait_for("spoke-a's Lease renewed", Duration::from_secs(5), || {
        Ok((renew_time(&lease(env, "spoke-a")?)? > renewed).then_some(()))
    })?;
    if sample_sum(&env.metrics(None)?, "tether_server_lease_renewals_total{outcome=\"ok\"}") < 2.0 {
        bail!("tether_server_lease_renewals_total{{outcome=\"ok\"}} does not count the renewals");
    }

    // SIGTERM: the client says GoAway before it leaves, and the Lease says so.
    env.stop_client("spoke-a");
    let went_away = wait_for_state(env, "spoke-a", "going-away", Duration::from_secs(10));
    env.start_client("spoke-a")?;
    let went_away = went_away?;
    if !annotation(&went_away, "tether.io/client-instances").is_empty() {
        bail!("a going-away Lease names client instances: {}", went_away["metadata"]["annotations"]);
    }

    let back = wait_for_state(env, "spoke-a", "connected", Duration::from_secs(10))?;
    if back["spec"]["acquireTime"].as_str() <= went_away["spec"]["acquireTime"].as_str() {
        bail!("reconnecting did not acquire anew: {} then {}", went_away["spec"], back["spec"]);
    }
    Ok(())
}
