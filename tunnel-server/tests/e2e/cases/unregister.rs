//! Deleting a ManagedCluster: ordered cleanup under the controller's finalizer, after users' finalizers.
use std::time::Duration;

use anyhow::{bail, Result};
use http::StatusCode;

use crate::env::Env;
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![("unregister::delete_waits_for_user_finalizers_then_revokes_and_cleans_up", unregister)]
}

fn reachable(env: &Env, cluster: &str) -> Result<StatusCode> {
    Ok(env.rt.block_on(env.http.get(&format!("/clusters/{cluster}/version"), Some(&env.admin_token), &[]))?.status)
}

fn unregister(env: &Env) -> Result<()> {
    let cluster = "doomed";
    let deadline = Duration::from_secs(30);
    env.hub.apply(&format!(
        "apiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: {cluster}\n  finalizers: [example.com/keep]\nspec: {{hubAcceptsClient: true}}\n"
    ))?;
    env.issue_identity(cluster)?;
    env.start_client(cluster)?;
    let result = (|| {
        wait_for("the controller's finalizer", deadline, || {
            Ok(env
                .hub
                .kubectl_ok(&["get", "managedcluster", cluster, "-o", "jsonpath={.metadata.finalizers}"])?
                .contains("tether.io/cleanup")
                .then_some(()))
        })?;
        wait_for("doomed reachable", deadline, || Ok((reachable(env, cluster)? == StatusCode::OK).then_some(())))?;

        env.hub.kubectl_ok(&["delete", "managedcluster", cluster, "--wait=false"])?;
        // The user's finalizer comes first: the controller says it waits, and touches nothing.
        wait_for("the WaitingForFinalizers event", deadline, || {
            let events = env.cluster_events(cluster)?;
            Ok(events.contains("WaitingForFinalizers").then_some(()))
        })?;
        if reachable(env, cluster)? != StatusCode::OK {
            bail!("the tunnel closed while a user finalizer still held the cluster");
        }
        let revoked = env.revocations()?;
        if revoked.contains(cluster) {
            bail!("revoked before the user's finalizer was removed");
        }

        env.hub.kubectl_ok(&[
            "patch",
            "managedcluster",
            cluster,
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
        ])?;
        wait_for("the ManagedCluster gone", deadline, || {
            let out = env.hub.kubectl(&["get", "managedcluster", cluster])?;
            Ok((!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")).then_some(()))
        })?;
        // Certificates revoked (the record survives hub restarts: it is in the API), leases gone, and the
        // client is refused at its next handshake.
        let revoked = env.revocations()?;
        if !revoked.contains(cluster) {
            bail!("no revocation recorded: {revoked}");
        }
        let leases = env.hub.kubectl_ok(&[
            "get",
            "leases",
            "-n",
            "tether-system",
            "-l",
            &format!("tether.io/cluster={cluster}"),
            "-o",
            "name",
        ])?;
        if !leases.trim().is_empty() {
            bail!("leases left behind: {leases}");
        }
        // The client stops, saying why, instead of redialling; restarted (as the kubelet would), it is refused
        // at its handshake and stops again.
        let (status, log) = env.wait_client_exit(cluster, deadline)?;
        if status.success() || !log.contains("the hub revoked this spoke's certificate") {
            bail!("the revoked client did not stop saying why ({status}):\n{log}");
        }
        let mut again = env.spawn_client(cluster, &format!("{cluster}-restarted"))?;
        let stopped = wait_for("the restarted client to stop", deadline, || Ok(again.exited()));
        again.stop();
        stopped?;
        wait_for("the revoked client refused at its handshake", deadline, || {
            Ok((crate::cases::ops::sample_sum(
                &env.metrics(None)?,
                "tether_server_handshake_failures_total{reason=\"revoked\"}",
            ) > 0.0)
                .then_some(()))
        })?;
        if reachable(env, cluster)? != StatusCode::NOT_FOUND {
            bail!("a deleted cluster must be unknown to the proxy");
        }
        Ok(())
    })();
    env.stop_client(cluster);
    result
}
