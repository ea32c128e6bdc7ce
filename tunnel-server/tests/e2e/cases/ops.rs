//! What an operator sees: metrics, health, and no secret in any log.
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::Env;
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("ops::metrics_health_and_readiness", metrics_and_health)]
}

/// Runs after every other case, so that the logs hold everything the run did: registration, rotation and
/// auto mode mint tokens and keys.
pub fn last_cases() -> Vec<(&'static str, Case)> {
    vec![("ops::no_token_or_key_in_any_log", no_secrets_in_logs)]
}

/// Sum of every sample of `name` (all label sets) on a Prometheus page.
pub fn sample_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics_and_health(env: &Env) -> Result<()> {
    for path in ["/healthz", "/readyz"] {
        if env.ops_get(path)?.trim() != "ok" {
            bail!("{path} is not ok");
        }
    }
    env.hub_kubectl_ok("spoke-a", &["get", "namespaces"])?;
    // Byte counters are sampled on the heartbeat tick: wait for the page to show everything, bounded.
    let wanted = [
        "tether_server_tunnels{cluster=\"spoke-a\"} 1",
        "tether_server_requests_total{cluster=\"spoke-a\",code=\"200\"}",
        "tether_server_request_duration_seconds_bucket{cluster=\"spoke-a\",code=\"200\",le=\"0.005\"}",
        "tether_server_tunnel_connects_total{cluster=\"spoke-b\"}",
        "tether_server_auth_lookups_total",
        "tether_server_tunnel_bytes_total{direction=\"rx\"}",
    ];
    wait_for("the hub's metrics", Duration::from_secs(10), || {
        let page = env.metrics(None)?;
        match wanted.iter().find(|want| !page.contains(**want)) {
            Some(want) => Err(anyhow::anyhow!("server metrics lack {want}:\n{page}")),
            None => Ok(Some(())),
        }
    })?;
    let client = env.metrics(Some("spoke-a"))?;
    if sample_sum(&client, "tether_client_connected") != 1.0
        || sample_sum(&client, "tether_client_request_duration_seconds_count") < 1.0
    {
        bail!("client metrics do not show a connected tunnel that served requests:\n{client}");
    }
    Ok(())
}

fn no_secrets_in_logs(env: &Env) -> Result<()> {
    let mut secrets = vec![env.admin_token.clone(), env.alice_token.clone(), env.echo.token.clone()];
    secrets.extend(env.secrets());
    // Bootstrap tokens are `<id>.<secret>`: the id may be logged, the secret part never.
    secrets.extend(env.secrets().iter().filter_map(|t| t.split_once('.')).map(|(_, secret)| secret.to_string()));
    secrets.push("PRIVATE KEY".into());
    let mut read = 0;
    for entry in std::fs::read_dir(&env.logs)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        read += 1;
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                bail!("{} contains a secret ({}...)", path.display(), &secret[..4.min(secret.len())]);
            }
        }
    }
    if read == 0 {
        bail!("no log in {}", env.logs.display());
    }
    Ok(())
}
