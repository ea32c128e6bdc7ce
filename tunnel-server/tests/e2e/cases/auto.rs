//! Auto-mode registration end to end: a ManagedCluster with mode Auto and the spoke's admin kubeconfig in a
//! hub Secret → the controller applies the spoke manifest on spoke-c → a tunnel-client started from exactly
//! what the controller wrote there (the DaemonSet's arguments, environment and Secret volume; the
//! ServiceAccount token the spoke minted for it) → bootstrap, CSR approved by policy → Joined/Available →
//! requests through the hub, which the client can only serve with the manifest's impersonate-only RBAC.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};

use super::controller::wait_condition;
use crate::env::{client_bin, rand_suffix, Cluster, Env, AUTO_SPOKE};
use crate::procs::{wait_for, Proc};
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("auto::a_missing_kubeconfig_secret_is_a_condition_and_nothing_is_applied", missing_secret),
        ("auto::the_controller_applies_the_manifest_and_the_spoke_joins", auto_join),
    ]
}

fn managed_cluster(name: &str, secret: &str) -> String {
    format!(
        "apiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: {name}\nspec:\n  hubAcceptsClient: true\n  \
         mode: Auto\n  autoKubeconfigSecret: {{namespace: tether-system, name: {secret}}}\n"
    )
}

fn token_secrets(env: &Env, cluster: &str) -> Result<Vec<String>> {
    let out = env.hub.kubectl_ok(&[
        "get",
        "secrets",
        "-n",
        "tether-system",
        "-l",
        &format!("tether.io/cluster={cluster}"),
        "-o",
        "name",
    ])?;
    Ok(out.lines().map(String::from).collect())
}

fn missing_secret(env: &Env) -> Result<()> {
    let cluster = "spoke-nokube";
    env.hub.apply(&managed_cluster(cluster, "no-such-kubeconfig"))?;
    let result = (|| {
        wait_condition(env, cluster, "ManifestApplied", "False", Duration::from_secs(20))?;
        let json: serde_json::Value =
            serde_json::from_str(&env.hub.kubectl_ok(&["get", "managedcluster", cluster, "-o", "json"])?)?;
        let applied = json["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ManifestApplied"))
            .context("no ManifestApplied condition")?;
        let message = applied["message"].as_str().unwrap_or_default();
        if applied["reason"] != "KubeconfigSecretNotFound" || !message.contains("tether-system/no-such-kubeconfig") {
            bail!("unclear condition: {applied}");
        }
        if !json["status"]["autoRegistration"].is_null() {
            bail!("an apply was recorded: {}", json["status"]);
        }
        if !token_secrets(env, cluster)?.is_empty() {
            bail!("a bootstrap token was issued for a cluster whose manifest cannot be applied");
        }
        let events: serde_json::Value = serde_json::from_str(&env.cluster_events(cluster)?)?;
        let events: Vec<String> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "Warning")
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect();
        if !events.iter().any(|r| r == "KubeconfigSecretNotFound") {
            bail!("no Warning Event: {events:?}");
        }
        Ok(())
    })();
    env.hub.kubectl_ok(&["delete", "managedcluster", cluster, "--wait=false"])?;
    result
}

fn auto_join(env: &Env) -> Result<()> {
    let spoke = &env.auto_spoke;
    let cluster = AUTO_SPOKE;
    env.hub.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "spoke-c-kubeconfig",
        "-n",
        "tether-system",
        &format!("--from-file=kubeconfig={}", spoke.kubeconfig().display()),
    ])?;
    env.hub.apply(&managed_cluster(cluster, "spoke-c-kubeconfig"))?;

    // The controller applies the manifest to the spoke.
    let (daemon_set, bootstrap) = wait_for("the manifest applied on spoke-c", Duration::from_secs(60), || {
        let daemon_set = spoke.kubectl(&["get", "daemonset", "tunnel-client", "-n", "tether-system", "-o", "json"])?;
        let secret = spoke.kubectl(&["get", "secret", "tether-bootstrap", "-n", "tether-system", "-o", "json"])?;
        if !daemon_set.status.success() || !secret.status.success() {
            return Ok(None);
        }
        let daemon_set: DaemonSet = serde_json::from_slice(&daemon_set.stdout)?;
        let secret: Secret = serde_json::from_slice(&secret.stdout)?;
        Ok(Some((daemon_set, secret)))
    })?;
    // The status is written once the spoke has everything.
    let reason = wait_condition(env, cluster, "ManifestApplied", "True", Duration::from_secs(20))?;
    if reason != "Applied" {
        bail!("ManifestApplied True for the wrong reason {reason}");
    }
    let token = String::from_utf8(bootstrap.data.as_ref().and_then(|d| d.get("token")).context("no token")?.0.clone())?;
    env.remember_secret(&token);
    let managers = spoke.kubectl_ok(&[
        "get",
        "daemonset",
        "tunnel-client",
        "-n",
        "tether-system",
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
    ])?;
    if !managers.split_whitespace().any(|m| m == "tether-controller/Apply") {
        bail!("the DaemonSet was not server-side applied by the controller: {managers:?}");
    }

    // No kubelet runs here: start the pod's container the way the kubelet would.
    let pod = env.dir.join(format!("spoke-c-pod-{}", rand_suffix()));
    let kubeconfig = service_account_kubeconfig(spoke, &pod)?;
    let mut command = container_command(spoke, &daemon_set, &bootstrap, &pod)?;
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--ops-addr", "127.0.0.1:0", "--backoff-base", "50ms", "--backoff-cap", "1s"])
        .args(["--heartbeat-interval", "1s"])
        .env("TETHER_LOG", "info,tunnel_client=debug");
    let mut client = Proc::spawn(&format!("tunnel-client-{cluster}"), command, &env.logs)?;
    let result = (|| {
        wait_condition(env, cluster, "Joined", "True", Duration::from_secs(60))?;
        wait_condition(env, cluster, "Available", "True", Duration::from_secs(30))?;
        // The hub's admin through the hub: the client forwards with a ServiceAccount that may only
        // impersonate, so this works only if the manifest's RBAC landed on the spoke.
        let answer = wait_for("namespaces of spoke-c through the hub", Duration::from_secs(30), || {
            let answer = env.rt.block_on(env.http.get(
                &format!("/clusters/{cluster}/api/v1/namespaces"),
                Some(&env.admin_token),
                &[],
            ))?;
            Ok((answer.status == StatusCode::OK).then_some(answer))
        })?;
        let names: Vec<String> = answer.json()?["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        if !names.iter().any(|n| n == "tether-system") {
            bail!("not spoke-c's namespaces: {names:?}");
        }
        // The token did its job once and is gone; the controller applies nothing more to a joined cluster.
        wait_for("the bootstrap token spent", Duration::from_secs(20), || {
            Ok(token_secrets(env, cluster)?.is_empty().then_some(()))
        })?;
        // One apply, one token: the one the spoke holds.
        let applies = env.hub.kubectl_ok(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={cluster},reason=ManifestApplied"),
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        let token_id = token.split('.').next().unwrap_or_default();
        if applies.matches("applied the spoke manifest").count() != 1
            || !applies.contains(&format!("tether-bootstrap-{token_id}"))
        {
            bail!("not exactly one apply, with the spoke's token: {applies:?}");
        }
        // Neither the kubeconfig the controller used nor the token it minted shows up in any log.
        let admin_key = std::fs::read_to_string(spoke.kubeconfig())?
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-key-data:").map(|k| k.trim().to_string()))
            .context("no client-key-data")?;
        let secrets = [token.clone(), admin_key];
        for entry in std::fs::read_dir(&env.logs)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if secrets.iter().any(|secret| text.contains(secret.as_str())) {
                bail!("{} contains a secret of auto mode", path.display());
            }
        }
        Ok(())
    })();
    client.stop();
    if result.is_err() {
        eprintln!("tunnel-client log:\n{}", client.log_tail());
    }
    result
}

/// The client's credentials on the spoke: the token the spoke's token controller minted for the manifest's
/// ServiceAccount `tether-client`, in a kubeconfig, as the in-cluster configuration would hold it.
fn service_account_kubeconfig(spoke: &Cluster, pod: &Path) -> Result<PathBuf> {
    let secret = wait_for("the tether-client ServiceAccount token", Duration::from_secs(30), || {
        let account: ServiceAccount = serde_json::from_str(&spoke.kubectl_ok(&[
            "get",
            "serviceaccount",
            "tether-client",
            "-n",
            "tether-system",
            "-o",
            "json",
        ])?)?;
        Ok(account.secrets.unwrap_or_default().into_iter().find_map(|s| s.name))
    })?;
    let secret: Secret =
        serde_json::from_str(&spoke.kubectl_ok(&["get", "secret", &secret, "-n", "tether-system", "-o", "json"])?)?;
    let data = secret.data.context("token Secret without data")?;
    let value = |key: &str| -> Result<String> {
        Ok(String::from_utf8(data.get(key).with_context(|| format!("no {key}"))?.0.clone())?)
    };
    let (token, ca) = (value("token")?, value("ca.crt")?);
    std::fs::create_dir_all(pod)?;
    let path = pod.join("in-cluster.kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: spoke\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: tether-client\n  user:\n    token: {token}\ncontexts:\n\
         - name: tether-client\n  context: {{cluster: spoke, user: tether-client}}\ncurrent-context: tether-client\n",
        port = spoke.port()?,
        ca = base64_encode(ca.as_bytes()),
    );
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The tunnel-client command of the DaemonSet's container: its arguments, with every volume mount moved
/// into `pod` (Secret volumes written out, emptyDirs created), and its environment resolved.
fn container_command(spoke: &Cluster, daemon_set: &DaemonSet, bootstrap: &Secret, pod: &Path) -> Result<Command> {
    let spec = daemon_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("no pod spec")?;
    if spec.service_account_name.as_deref() != Some("tether-client") {
        bail!("the pod runs as {:?}", spec.service_account_name);
    }
    let container = spec.containers.first().context("no container")?;
    let secret_data = |name: &str| -> Result<BTreeMap<String, Vec<u8>>> {
        let secret: Secret = if name == bootstrap.metadata.name.as_deref().unwrap_or_default() {
            bootstrap.clone()
        } else {
            serde_json::from_str(&spoke.kubectl_ok(&["get", "secret", name, "-n", "tether-system", "-o", "json"])?)?
        };
        Ok(secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
    };

    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("no volume {}", mount.name))?;
        let dir = pod.join(&mount.name);
        std::fs::create_dir_all(&dir)?;
        if let Some(secret) = &volume.secret {
            for (key, value) in secret_data(secret.secret_name.as_deref().context("secretName")?)? {
                std::fs::write(dir.join(key), value)?;
            }
        } else if volume.empty_dir.is_none() {
            bail!("volume {} is neither a Secret nor an emptyDir", volume.name);
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    let local = |arg: &str| -> String {
        mounts
            .iter()
            .find_map(|(path, dir)| arg.strip_prefix(path.as_str()).map(|rest| format!("{}{rest}", dir.display())))
            .unwrap_or_else(|| arg.to_string())
    };

    let mut command = Command::new(client_bin());
    command.args(container.args.iter().flatten().map(|a| local(a)));
    for var in container.env.iter().flatten() {
        let value = match (&var.value, var.value_from.as_ref()) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match (&from.secret_key_ref, &from.field_ref) {
                (Some(key), _) => {
                    let data = secret_data(&key.name)?;
                    String::from_utf8(data.get(&key.key).with_context(|| format!("no key {}", key.key))?.clone())?
                }
                (None, Some(field)) if field.field_path == "metadata.name" => "tunnel-client-e2e".to_string(),
                _ => bail!("cannot resolve env {}", var.name),
            },
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    Ok(command)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
