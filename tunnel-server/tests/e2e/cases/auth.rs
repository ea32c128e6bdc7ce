//! Who may use which cluster, and as whom the spoke sees them.
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use http::StatusCode;

use crate::env::Env;
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("auth::unauthenticated_callers_get_401", unauthenticated_401),
        ("auth::alice_is_allowed_on_a_and_forbidden_on_b", alice_a_not_b),
        ("auth::spoke_rbac_decides_for_the_real_user", spoke_rbac_decides),
        ("auth::forged_impersonation_is_not_honoured", forged_impersonation),
        ("auth::unknown_cluster_is_404_and_no_tunnel_is_503_at_once", unknown_and_unavailable),
        ("auth::dot_segments_never_reach_another_cluster", traversal),
        ("auth::hub_credentials_never_reach_the_spoke", hub_credentials_stay_on_hub),
    ]
}

fn status_of(answer: &crate::http::Answer) -> Result<(u16, String)> {
    let json = answer.json()?;
    if json["kind"] != "Status" {
        bail!("expected a Status body, got {}", answer.text());
    }
    Ok((json["code"].as_u64().unwrap_or(0) as u16, json["message"].as_str().unwrap_or("").to_string()))
}

fn unauthenticated_401(env: &Env) -> Result<()> {
    env.rt.block_on(async {
        for token in [None, Some("not-a-real-token")] {
            let answer = env.http.get("/clusters/spoke-a/api/v1/namespaces", token, &[]).await?;
            if answer.status != StatusCode::UNAUTHORIZED || status_of(&answer)?.0 != 401 {
                bail!("token {token:?}: expected 401 Status, got {} {}", answer.status, answer.text());
            }
        }
        Ok(())
    })
}

fn alice_a_not_b(env: &Env) -> Result<()> {
    let output = env.hub_kubectl(&env.alice_kubeconfig, "spoke-b", &["get", "namespaces"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || !stderr.contains("managedclusters/proxy") {
        bail!("alice on spoke-b should be refused by the hub: {stderr}");
    }
    env.rt.block_on(async {
        let answer = env.http.get("/clusters/spoke-b/version", Some(&env.alice_token), &[]).await?;
        if answer.status != StatusCode::FORBIDDEN {
            bail!("alice on spoke-b: {} {}", answer.status, answer.text());
        }
        let answer = env.http.get("/clusters/spoke-a/version", Some(&env.alice_token), &[]).await?;
        if answer.status != StatusCode::OK || !answer.text().contains("gitVersion") {
            bail!("alice on spoke-a: {} {}", answer.status, answer.text());
        }
        Ok(())
    })
}

fn spoke_rbac_decides(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    let list =
        || env.hub_kubectl(&env.alice_kubeconfig, "spoke-a", &["get", "configmaps", "-n", "default", "-o", "name"]);
    let before = list()?;
    let stderr = String::from_utf8_lossy(&before.stderr);
    // The denial comes from the spoke apiserver, naming alice: the spoke saw the real user.
    if before.status.success() || !stderr.contains("User \"alice\" cannot list resource \"configmaps\"") {
        bail!("before the spoke's RoleBinding alice should be denied by the spoke: {stderr}");
    }
    spoke.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "default",
    ])?;
    let result = wait_for("alice allowed by the spoke's RoleBinding", Duration::from_secs(20), || {
        let after = list()?;
        Ok((after.status.success() && String::from_utf8_lossy(&after.stdout).contains("configmap/marker"))
            .then_some(()))
    });
    spoke.kubectl_ok(&["delete", "rolebinding", "alice-view", "-n", "default"])?;
    result
}

fn forged_impersonation(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    spoke.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-view-imp",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "default",
    ])?;
    let result = env.rt.block_on(async {
        for headers in [
            vec![("impersonate-user", "admin")],
            vec![("impersonate-user", "admin"), ("impersonate-group", "system:masters")],
            vec![("impersonate-user", "alice"), ("impersonate-group", "system:masters")],
        ] {
            let answer = env
                .http
                .get("/clusters/spoke-a/api/v1/namespaces/kube-system/secrets", Some(&env.alice_token), &headers)
                .await?;
            let (code, message) = status_of(&answer)?;
            if answer.status != StatusCode::FORBIDDEN || code != 403 || !message.contains("cannot impersonate") {
                bail!("forged {headers:?} answered {} {}", answer.status, answer.text());
            }
        }
        Ok(())
    });
    // kubectl's own --as sends the same headers.
    let output =
        env.hub_kubectl(&env.alice_kubeconfig, "spoke-a", &["--as", "admin", "get", "secrets", "-n", "kube-system"])?;
    spoke.kubectl_ok(&["delete", "rolebinding", "alice-view-imp", "-n", "default"])?;
    result?;
    if output.status.success() || !String::from_utf8_lossy(&output.stderr).contains("cannot impersonate") {
        bail!("kubectl --as admin as alice: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn unknown_and_unavailable(env: &Env) -> Result<()> {
    env.rt.block_on(async {
        let answer = env.http.get("/clusters/nowhere/api/v1/namespaces", Some(&env.admin_token), &[]).await?;
        if answer.status != StatusCode::NOT_FOUND || status_of(&answer)?.0 != 404 {
            bail!("unknown cluster: {} {}", answer.status, answer.text());
        }
        let started = Instant::now();
        let answer = env.http.get("/clusters/ghost/api/v1/namespaces", Some(&env.admin_token), &[]).await?;
        let took = started.elapsed();
        if answer.status != StatusCode::SERVICE_UNAVAILABLE || status_of(&answer)?.0 != 503 {
            bail!("known cluster without a tunnel: {} {}", answer.status, answer.text());
        }
        if took > Duration::from_secs(1) {
            bail!("503 took {took:?}");
        }
        Ok(())
    })
}

fn traversal(env: &Env) -> Result<()> {
    env.rt.block_on(async {
        for path in [
            "/clusters/spoke-a/../spoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/spoke-a/%2e%2e/spoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/spoke-a/%2E%2E/spoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/spoke-a/.%2e/spoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/spoke-a/api%2f..%2f..%2fspoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/spoke-a/api/v1/../../../spoke-b/api/v1/namespaces/default/configmaps/marker",
            "/clusters/%2e%2e/spoke-b/api/v1/namespaces/default/configmaps/marker",
        ] {
            for token in [&env.admin_token, &env.alice_token] {
                let answer = env.http.get(path, Some(token), &[]).await?;
                if answer.status.is_success() || answer.text().contains("spoke-b") && !answer.text().contains("Status")
                {
                    bail!("{path} reached a cluster: {} {}", answer.status, answer.text());
                }
                if answer.status != StatusCode::BAD_REQUEST && answer.status != StatusCode::NOT_FOUND {
                    bail!("{path}: expected 400 or 404, got {} {}", answer.status, answer.text());
                }
            }
        }
        Ok(())
    })
}

fn hub_credentials_stay_on_hub(env: &Env) -> Result<()> {
    env.rt.block_on(async {
        for token in [&env.admin_token, &env.alice_token] {
            let _ = env.http.get("/clusters/echo/whoami-credentials", Some(token), &[]).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let seen = env.echo.seen();
    if seen.is_empty() {
        bail!("the echo backend saw no request");
    }
    for request in seen {
        let expected = format!("Bearer {}", env.echo.token);
        if request.authorization.as_deref() != Some(expected.as_str()) {
            bail!("the spoke side saw Authorization {:?} on {}", request.authorization, request.path);
        }
    }
    Ok(())
}
