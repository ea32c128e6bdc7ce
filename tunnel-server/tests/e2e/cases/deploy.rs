//! The hub install manifests are accepted by a real hub apiserver.
use anyhow::{bail, Result};

use crate::env::{repo_root, Env};
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("deploy::hub_manifests_pass_a_server_side_dry_run", hub_manifests)]
}

fn hub_manifests(env: &Env) -> Result<()> {
    let dir = repo_root().join("deploy/hub");
    let output = env.hub.kubectl(&["apply", "--dry-run=server", "-k", &dir.display().to_string()])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "kubectl apply --dry-run=server -k deploy/hub failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for object in [
        "deployment.apps/tunnel-server",
        "deployment.apps/controller",
        "clusterrole.rbac.authorization.k8s.io/tether:controller",
        "clusterrole.rbac.authorization.k8s.io/tether:controller-kubeconfigs",
    ] {
        if !stdout.contains(object) {
            bail!("the dry run did not include {object}:\n{stdout}");
        }
    }
    Ok(())
}
