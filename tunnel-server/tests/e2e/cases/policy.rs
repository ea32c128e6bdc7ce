//! The spoke's identity policy end to end: who a hub identity is on a spoke is the spoke's decision. The
//! hub's `system:masters` is not passed, a hub identity named like a ServiceAccount is refused by the
//! client (never forwarded), the hub admin acts only through the binding the spoke gave it, and a policy
//! tightened in the spoke's ConfigMap applies to the next requests without a restart.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;

use crate::env::{grant_hub_admins, in_netns, run_ok, Env};
use crate::http::Answer;
use crate::procs::{wait_for, Proc};
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("policy::a_hub_system_masters_member_is_not_cluster_admin_on_a_spoke", masters_not_passed),
        ("policy::a_hub_service_account_does_not_get_the_same_named_spoke_accounts_rights", service_account_refused),
        ("policy::the_hub_admin_acts_on_a_spoke_only_through_its_explicit_binding", admin_by_binding),
        ("policy::a_policy_tightened_in_the_spoke_configmap_drops_unlisted_groups", tightened_configmap),
    ]
}

const CAROL: &str = "carol";
const HUB_SA: &str = "system:serviceaccount:deploy:ci";
const BOB: &str = "bob";
/// A cluster whose client runs beside spoke-b's apiserver with the ConfigMap policy.
const POLICY_CLUSTER: &str = "spoke-policy";
const POLICY_CONFIGMAP: &str = "tether-identity-policy";

fn get(env: &Env, path: &str, user: &str) -> Result<Answer> {
    let token = env.policy_tokens.get(user).with_context(|| format!("no token for {user}"))?;
    env.rt.block_on(env.http.get(path, Some(token), &[]))
}

/// The `/metrics` page of a client beside spoke-b's apiserver, from inside its network namespace.
fn client_metrics(env: &Env, ready_file: &std::path::Path) -> Result<String> {
    let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ready_file)?)?;
    let ops = ready["ops"].as_str().context("ops")?;
    let mut curl = in_netns(env.spoke("spoke-b").cluster.netns.as_deref(), "curl");
    curl.args(["-sfk", "--max-time", "5", &format!("https://{ops}/metrics")]);
    run_ok(curl)
}

fn message(answer: &Answer) -> String {
    answer.json().ok().and_then(|j| j["message"].as_str().map(String::from)).unwrap_or_else(|| answer.text())
}

/// Carol is in `system:masters` on the hub, with no binding on spoke-a. The client used to pass the group,
/// which made her cluster-admin there; now the spoke sees carol alone and its RBAC refuses her.
fn masters_not_passed(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    // The premise: as the client used to impersonate her, carol is cluster-admin on the spoke.
    spoke
        .kubectl_ok(&["get", "namespaces", "--as", CAROL, "--as-group", "system:masters"])
        .context("carol with system:masters should be cluster-admin on the spoke")?;
    let can_i = spoke.kubectl(&["auth", "can-i", "list", "namespaces", "--as", CAROL])?;
    if String::from_utf8_lossy(&can_i.stdout).trim() != "no" {
        bail!("carol has a binding on spoke-a of her own: the case proves nothing");
    }
    for path in ["/clusters/spoke-a/api/v1/namespaces", "/clusters/spoke-a/api/v1/namespaces/kube-system/secrets"] {
        let answer = get(env, path, CAROL)?;
        // The spoke apiserver's own refusal: the request reached it as carol, without system:masters.
        if answer.status != StatusCode::FORBIDDEN || !message(&answer).contains("User \"carol\" cannot list") {
            bail!("{path}: expected the spoke's 403 for carol, got {} {}", answer.status, answer.text());
        }
    }
    // She is still herself there: a spoke binding for carol is what gives her rights.
    spoke.kubectl_ok(&["create", "clusterrolebinding", "carol-view", "--clusterrole", "view", "--user", CAROL])?;
    let result = wait_for("carol allowed by her spoke binding", Duration::from_secs(20), || {
        Ok((get(env, "/clusters/spoke-a/api/v1/namespaces", CAROL)?.status == StatusCode::OK).then_some(()))
    });
    spoke.kubectl_ok(&["delete", "clusterrolebinding", "carol-view"])?;
    result
}

/// A hub identity named `system:serviceaccount:deploy:ci` and a ServiceAccount deploy/ci on spoke-a that may
/// read ConfigMaps in `deploy`: the hub identity gets none of its rights; the client refuses it with a
/// Status of its own, and nothing reaches the apiserver.
fn service_account_refused(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    spoke.kubectl_ok(&["create", "namespace", "deploy"])?;
    let hub_binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: hub-sa-proxy-spoke-a\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: proxy-spoke-a}}\nsubjects:\n\
         - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: \"{HUB_SA}\"}}\n"
    );
    let result = (|| {
        spoke.kubectl_ok(&["create", "serviceaccount", "ci", "-n", "deploy"])?;
        let sa = ["--clusterrole", "view", "--serviceaccount", "deploy:ci"];
        spoke.kubectl_ok(&[&["create", "rolebinding", "ci-view", "-n", "deploy"][..], &sa].concat())?;
        spoke.kubectl_ok(&["create", "configmap", "ci-config", "-n", "deploy", "--from-literal=k=v"])?;
        // The premise: as that ServiceAccount, the ConfigMaps of `deploy` are readable on the spoke.
        wait_for("the spoke ServiceAccount's binding", Duration::from_secs(20), || {
            Ok(spoke
                .kubectl(&["get", "configmap", "ci-config", "-n", "deploy", "--as", HUB_SA])?
                .status
                .success()
                .then_some(()))
        })?;
        env.hub.apply(&hub_binding)?;
        let path = "/clusters/spoke-a/api/v1/namespaces/deploy/configmaps/ci-config";
        // The hub allows the proxy (its binding may take a moment); the spoke's client refuses the identity.
        let answer = wait_for("the hub's proxy binding for the hub ServiceAccount", Duration::from_secs(20), || {
            let answer = get(env, path, HUB_SA)?;
            Ok((!message(&answer).contains("on the hub")).then_some(answer))
        })?;
        let text = message(&answer);
        if answer.status != StatusCode::FORBIDDEN || !text.contains("system identity") || !text.contains(HUB_SA) {
            bail!("expected the client's 403 for {HUB_SA}, got {} {}", answer.status, answer.text());
        }
        if answer.json()?["reason"] != "Forbidden" {
            bail!("not a Forbidden Status: {}", answer.text());
        }
        let metrics = env.metrics(Some("spoke-a"))?;
        if !metrics.lines().any(|l| l.starts_with("tether_client_identity_refusals_total{reason=\"system_user\"}")) {
            bail!("no system_user refusal counted by the client");
        }
        Ok(())
    })();
    let _ = env.hub.kubectl(&["delete", "clusterrolebinding", "hub-sa-proxy-spoke-a", "--ignore-not-found"]);
    let _ = spoke.kubectl(&["delete", "namespace", "deploy", "--wait=false"]);
    result
}

/// The hub admin is `system:masters` on the hub; on spoke-a it has cluster-admin from the spoke's
/// ClusterRoleBinding `tether:hub-admins` and from nothing else: without it, it is refused.
fn admin_by_binding(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    let admin_lists = || -> Result<Option<bool>> {
        let output = env.hub_kubectl(&env.kubeconfig, "spoke-a", &["get", "namespaces", "-o", "name"])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        Ok(match output.status.success() {
            true => Some(true),
            false if stderr.contains("User \"admin\" cannot list") => Some(false),
            false => None,
        })
    };
    if admin_lists()? != Some(true) {
        bail!("the hub admin cannot list spoke-a's namespaces with its binding");
    }
    spoke.kubectl_ok(&["delete", "clusterrolebinding", "tether:hub-admins"])?;
    let refused = wait_for("the hub admin refused without its binding", Duration::from_secs(20), || {
        Ok(admin_lists()?.filter(|listed| !listed).map(drop))
    });
    grant_hub_admins(spoke)?;
    refused?;
    wait_for("the hub admin allowed again", Duration::from_secs(20), || Ok(admin_lists()?.filter(|l| *l).map(drop)))
}

/// Bob is in hub groups `devs` and `ops`; on spoke-b only group `ops` may read ConfigMaps in `default`. A
/// client following the spoke's ConfigMap passes both groups by default, only `devs` once a spoke admin sets
/// `allowGroups: devs`, nothing at all while the ConfigMap is invalid, and both again once it is deleted.
fn tightened_configmap(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-b").cluster;
    env.hub.apply(&format!(
        "apiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: {POLICY_CLUSTER}\nspec: {{hubAcceptsClient: true}}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: proxy-{POLICY_CLUSTER}\nrules:\n\
         - apiGroups: [tether.io]\n  resources: [managedclusters/proxy]\n  resourceNames: [{POLICY_CLUSTER}]\n  verbs: ['*']\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: bob-proxy-{POLICY_CLUSTER}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: proxy-{POLICY_CLUSTER}}}\nsubjects:\n\
         - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {BOB}}}\n"
    ))?;
    spoke.kubectl_ok(&["-n", "tether-system", "delete", "configmap", POLICY_CONFIGMAP, "--ignore-not-found"])?;
    spoke.kubectl_ok(&[
        "create",
        "rolebinding",
        "ops-view",
        "-n",
        "default",
        "--clusterrole",
        "view",
        "--group",
        "ops",
    ])?;
    env.issue_identity(POLICY_CLUSTER)?;
    let pki = env.dir.join("pki");
    let ready = env.dir.join(format!("client-{POLICY_CLUSTER}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut command = env.spoke_b_client(POLICY_CLUSTER, None)?;
    command
        .arg("--cert")
        .arg(pki.join(format!("{POLICY_CLUSTER}.crt")))
        .arg("--key")
        .arg(pki.join(format!("{POLICY_CLUSTER}.key")))
        .args(["--identity-policy-configmap", &format!("tether-system/{POLICY_CONFIGMAP}")])
        .arg("--ready-file")
        .arg(&ready);
    let mut client = Proc::spawn(&format!("tunnel-client-{POLICY_CLUSTER}"), command, &env.logs)?;
    let result = (|| {
        wait_for("the policy client connected", Duration::from_secs(30), || {
            if let Some(status) = client.exited() {
                bail!("the client exited ({status}):\n{}", client.log_tail());
            }
            Ok(ready.exists().then_some(()))
        })?;
        let path = format!("/clusters/{POLICY_CLUSTER}/api/v1/namespaces/default/configmaps/marker");
        // Waits until bob's request gets `status` with `words` in its message; returns the last answer.
        let bob_gets = |what: &str, status: StatusCode, words: &str| {
            wait_for(what, Duration::from_secs(20), || {
                let answer = get(env, &path, BOB)?;
                Ok((answer.status == status && message(&answer).contains(words)).then_some(answer))
            })
        };
        bob_gets("bob reads through group ops (no ConfigMap: the default policy)", StatusCode::OK, "")?;

        let configmap = |data: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {POLICY_CONFIGMAP}\n  namespace: tether-system\ndata:\n{data}"
            )
        };
        spoke.apply(&configmap("  allowGroups: devs\n"))?;
        // The spoke's RBAC refuses bob: the request reached it, without group ops.
        bob_gets("bob without group ops (allowGroups: devs)", StatusCode::FORBIDDEN, "User \"bob\" cannot get")?;

        spoke.kubectl_ok(&["-n", "tether-system", "delete", "configmap", POLICY_CONFIGMAP])?;
        spoke.apply(&configmap("  allowGroup: devs\n"))?;
        let invalid =
            bob_gets("every request refused (invalid policy)", StatusCode::FORBIDDEN, "allowGroup: unknown key")?;
        if !message(&invalid).contains("identity policy is invalid") {
            bail!("the refusal does not say why: {}", invalid.text());
        }

        spoke.kubectl_ok(&["-n", "tether-system", "delete", "configmap", POLICY_CONFIGMAP])?;
        bob_gets("bob reads again (ConfigMap deleted: the default policy)", StatusCode::OK, "")?;
        let metrics = client_metrics(env, &ready)?;
        for outcome in ["applied", "invalid", "absent"] {
            let name = format!("tether_client_identity_policy_updates_total{{outcome=\"{outcome}\"}}");
            if !metrics.lines().any(|l| l.starts_with(&name)) {
                bail!("no {name} on the client");
            }
        }
        let log = client.log_text();
        if !log.contains("identity policy from ConfigMap tether-system/tether-identity-policy applied") {
            bail!("the applied policy is not logged:\n{}", client.log_tail());
        }
        Ok(())
    })();
    client.stop();
    let _ = spoke.kubectl(&["-n", "tether-system", "delete", "configmap", POLICY_CONFIGMAP, "--ignore-not-found"]);
    let _ = spoke.kubectl(&["delete", "rolebinding", "ops-view", "-n", "default"]);
    result
}
