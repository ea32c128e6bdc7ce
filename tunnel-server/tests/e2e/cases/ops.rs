//! What an operator sees: metrics, health, and no secret in any log.
use anyhow::{bail, Result};

use crate::env::Env;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("ops::metrics_health_and_readiness", metrics_and_health),
        ("ops::no_token_or_key_in_any_log", no_secrets_in_logs),
    ]
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
    let page = env.metrics(None)?;
    for want in [
        "tether_server_tunnels{cluster=\"spoke-a\"} 1",
        "tether_server_requests_total{cluster=\"spoke-a\",code=\"200\"}",
        "tether_server_request_duration_seconds_bucket{cluster=\"spoke-a\",code=\"200\",le=\"0.005\"}",
        "tether_server_tunnel_connects_total{cluster=\"spoke-b\"}",
        "tether_server_auth_lookups_total",
        "tether_server_tunnel_bytes_total{direction=\"rx\"}",
    ] {
        if !page.contains(want) {
            bail!("server metrics lack {want}:\n{page}");
        }
    }
    let client = env.metrics(Some("spoke-a"))?;
    if sample_sum(&client, "tether_client_connected") != 1.0
        || sample_sum(&client, "tether_client_request_duration_seconds_count") < 1.0
    {
        bail!("client metrics do not show a connected tunnel that served requests:\n{client}");
    }
    Ok(())
}

fn no_secrets_in_logs(env: &Env) -> Result<()> {
    let secrets = [env.admin_token.as_str(), env.alice_token.as_str(), env.echo.token.as_str(), "PRIVATE KEY"];
    for entry in std::fs::read_dir(&env.logs)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for secret in secrets {
            if text.contains(secret) {
                bail!("{} contains a secret ({}...)", path.display(), &secret[..4]);
            }
        }
    }
    Ok(())
}
