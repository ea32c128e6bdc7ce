//! Auto mode: the decision as a pure function, the kubeconfig checks, and whole reconciles against a
//! scripted hub and a scripted spoke (which calls, in which order, with which bodies — and which never).
use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList};
use k8s_openapi::ByteString;
use kube::runtime::controller::Action;
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;
use crate::cleanup::FINALIZER;
use crate::crd::{ManagedClusterSpec, ManagedClusterStatus};
use crate::fixtures::{auto_context, call, context, not_found, Call, Seen};
use crate::reconcile::reconcile;

const CLUSTER_PATH: &str = "/apis/tether.io/v1alpha1/managedclusters/a";
const STATUS_PATH: &str = "/apis/tether.io/v1alpha1/managedclusters/a/status";
const KUBECONFIG_PATH: &str = "/api/v1/namespaces/hub-secrets/secrets/spoke-a-kubeconfig";
const TOKENS_PATH: &str = "/api/v1/namespaces/tether-system/secrets";
const SPOKE_TOKEN: &str = "s3cr3t-spoke-admin-token";

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn source() -> SecretKeyRef {
    SecretKeyRef { namespace: "hub-secrets".into(), name: "spoke-a-kubeconfig".into(), key: "kubeconfig".into() }
}

fn auto_cluster() -> ManagedCluster {
    let mut mc = ManagedCluster::new(
        "a",
        ManagedClusterSpec {
            hub_accepts_client: true,
            mode: RegistrationMode::Auto,
            auto_kubeconfig_secret: Some(source()),
            ..Default::default()
        },
    );
    mc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    mc.metadata.resource_version = Some("7".into());
    mc.metadata.generation = Some(1);
    mc.metadata.uid = Some("uid-a".into());
    mc
}

fn applied(mut mc: ManagedCluster, generation: i64, expires: Timestamp, token_secret: &str) -> ManagedCluster {
    mc.status = Some(ManagedClusterStatus {
        auto_registration: Some(AutoRegistrationStatus {
            applied_at: Time(at(0)),
            observed_generation: generation,
            token_secret: token_secret.into(),
            token_expiration: Time(expires),
        }),
        ..Default::default()
    });
    mc
}

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: spoke
  cluster: {server: 'https://spoke.example:6443', insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: s3cr3t-spoke-admin-token}
contexts:
- name: spoke
  context: {cluster: spoke, user: admin}
current-context: spoke
";

fn kubeconfig_secret(key: &str, kubeconfig: &str) -> Value {
    json!(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("spoke-a-kubeconfig".into()),
            namespace: Some("hub-secrets".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), ByteString(kubeconfig.as_bytes().to_vec()))])),
        ..Default::default()
    })
}

fn resource_list(group_version: &str, resources: &[(&str, &str, bool)]) -> Value {
    json!(APIResourceList {
        group_version: group_version.into(),
        resources: resources
            .iter()
            .map(|(name, kind, namespaced)| APIResource {
                name: name.to_string(),
                kind: kind.to_string(),
                namespaced: *namespaced,
                singular_name: String::new(),
                verbs: ["create", "delete", "get", "list", "patch", "update", "watch"].map(String::from).to_vec(),
                ..Default::default()
            })
            .collect(),
    })
}

/// What a spoke answers to discovery and to each apply, in the manifest's order.
fn spoke_applies() -> Vec<Call> {
    let ok = |kind: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}});
    vec![
        call(
            Method::GET,
            "/api/v1",
            200,
            resource_list(
                "v1",
                &[
                    ("namespaces", "Namespace", false),
                    ("serviceaccounts", "ServiceAccount", true),
                    ("secrets", "Secret", true),
                ],
            ),
        ),
        call(
            Method::GET,
            "/apis/rbac.authorization.k8s.io/v1",
            200,
            resource_list(
                "rbac.authorization.k8s.io/v1",
                &[
                    ("clusterroles", "ClusterRole", false),
                    ("clusterrolebindings", "ClusterRoleBinding", false),
                    ("roles", "Role", true),
                    ("rolebindings", "RoleBinding", true),
                ],
            ),
        ),
        call(Method::GET, "/apis/apps/v1", 200, resource_list("apps/v1", &[("daemonsets", "DaemonSet", true)])),
        call(Method::PATCH, "/api/v1/namespaces/tether-system?", 200, ok("Namespace")),
        call(
            Method::PATCH,
            "/api/v1/namespaces/tether-system/serviceaccounts/tether-client?",
            200,
            ok("ServiceAccount"),
        ),
        call(Method::PATCH, "/apis/rbac.authorization.k8s.io/v1/clusterroles/tether", 200, ok("ClusterRole")),
        call(
            Method::PATCH,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/tether",
            200,
            ok("ClusterRoleBinding"),
        ),
        call(
            Method::PATCH,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/tether-system/roles/tether",
            200,
            ok("Role"),
        ),
        call(
            Method::PATCH,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/tether-system/rolebindings/tether",
            200,
            ok("RoleBinding"),
        ),
        call(Method::PATCH, "/api/v1/namespaces/tether-system/secrets/tether-bootstrap?", 200, ok("Secret")),
        call(Method::PATCH, "/apis/apps/v1/namespaces/tether-system/daemonsets/tunnel-client?", 200, ok("DaemonSet")),
    ]
}

fn created_token() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tether-bootstrap-created"}})
}

fn condition_of<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

/// Nothing the hub or the spoke saw, and no Event, carries the spoke's credentials.
fn assert_no_credentials(seen: &[&Seen]) {
    for seen in seen {
        for (_, path, body) in &seen.calls {
            assert!(!body.to_string().contains(SPOKE_TOKEN) && !path.contains(SPOKE_TOKEN));
        }
    }
}

async fn run(ctx: Context, cluster: ManagedCluster) -> Result<Action, Error> {
    reconcile(Arc::new(cluster), Arc::new(ctx)).await
}

// ---------------------------------------------------------------- the decision

#[test]
fn the_manifest_is_applied_once_then_not_while_its_token_is_valid() {
    let mc = auto_cluster();
    assert_eq!(plan(&mc, false, true, at(0)), Plan::Apply(Why::FirstTime));
    let done = applied(mc, 1, at(3600), "tether-bootstrap-abc123");
    assert_eq!(plan(&done, false, true, at(3599)), Plan::Wait { until: at(3600) });
    assert_eq!(plan(&done, false, true, at(3600)), Plan::Apply(Why::TokenExpired));
}

#[test]
fn a_new_generation_applies_again_and_a_joined_cluster_never() {
    let mut mc = applied(auto_cluster(), 1, at(3600), "tether-bootstrap-abc123");
    mc.metadata.generation = Some(2);
    assert_eq!(plan(&mc, false, true, at(10)), Plan::Apply(Why::SpecChanged));
    assert_eq!(plan(&mc, true, true, at(10)), Plan::Joined);
    assert_eq!(plan(&auto_cluster(), true, true, at(10)), Plan::Joined, "joined without auto mode's help");
    assert_eq!(plan(&auto_cluster(), true, false, at(10)), Plan::Joined);
}

#[test]
fn manual_and_deleted_clusters_are_not_auto_mode_business() {
    let mut manual = auto_cluster();
    manual.spec.mode = RegistrationMode::Manual;
    assert_eq!(plan(&manual, false, true, at(0)), Plan::NotAuto);
    let mut deleting = auto_cluster();
    deleting.metadata.deletion_timestamp = Some(Time(at(0)));
    assert_eq!(plan(&deleting, false, true, at(0)), Plan::NotAuto);
}

#[test]
fn without_the_flags_or_a_secret_reference_nothing_can_be_applied() {
    let Plan::Blocked { reason, message } = plan(&auto_cluster(), false, false, at(0)) else { panic!("not blocked") };
    assert_eq!(reason, reason::NOT_CONFIGURED);
    assert!(message.contains("--hub-address") && message.contains("--hub-ca"), "{message}");
    let mut unset = auto_cluster();
    unset.spec.auto_kubeconfig_secret = None;
    let Plan::Blocked { reason, message } = plan(&unset, false, true, at(0)) else { panic!("not blocked") };
    assert_eq!(reason, reason::NO_SECRET_REF);
    assert!(message.contains("spec.autoKubeconfigSecret"), "{message}");
}

#[tokio::test]
async fn kubeconfigs_that_reach_for_files_or_commands_are_refused() {
    let ok = spoke_config(Kubeconfig::from_yaml(KUBECONFIG).unwrap(), &source()).await.unwrap();
    assert_eq!(ok.cluster_url.host(), Some("spoke.example"));
    for (needle, replacement, complaint) in [
        (
            "user: {token: s3cr3t-spoke-admin-token}",
            "user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
            "tokenFile",
        ),
        (
            "user: {token: s3cr3t-spoke-admin-token}",
            "user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: /bin/sh}}",
            "exec",
        ),
        ("user: {token: s3cr3t-spoke-admin-token}", "user: {client-certificate: /etc/x.crt}", "client-certificate"),
        ("insecure-skip-tls-verify: true", "certificate-authority: /etc/ca.crt", "certificate-authority"),
        ("current-context: spoke", "current-context: elsewhere", "elsewhere"),
    ] {
        let text = KUBECONFIG.replace(needle, replacement);
        let Err(Error::Auto { reason, message }) = spoke_config(Kubeconfig::from_yaml(&text).unwrap(), &source()).await
        else {
            panic!("{complaint}: accepted")
        };
        assert_eq!(reason, reason::INVALID_KUBECONFIG);
        assert!(message.contains(complaint) && message.contains("hub-secrets/spoke-a-kubeconfig"), "{message}");
        assert!(!message.contains(SPOKE_TOKEN), "{message}");
    }
}

// ---------------------------------------------------------------- whole reconciles

#[tokio::test]
async fn an_auto_cluster_gets_the_manifest_applied_with_a_new_token() {
    let (ctx, hub, spoke) = auto_context(
        vec![],
        vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(auto_cluster())),
            call(Method::GET, KUBECONFIG_PATH, 200, kubeconfig_secret("kubeconfig", KUBECONFIG)),
            call(Method::POST, TOKENS_PATH, 201, created_token()),
            call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster())),
        ],
        spoke_applies(),
    );
    let action = run(ctx, auto_cluster()).await.unwrap();
    assert_eq!(action, Action::requeue(crate::fixtures::LIVENESS.renew_interval));
    let (hub, spoke) = (hub.await.unwrap(), spoke.await.unwrap());

    // The hub keeps the token's hash, owned by the cluster; the spoke gets the token itself.
    let token_secret = &hub.calls[2].2;
    assert_eq!(token_secret["type"], join::TOKEN_SECRET_TYPE);
    assert_eq!(token_secret["metadata"]["ownerReferences"][0]["uid"], "uid-a");
    assert!(hub.calls[2].1.contains("fieldManager=tether-controller"), "{}", hub.calls[2].1);
    let token_name = token_secret["metadata"]["name"].as_str().unwrap();
    let hash = token_secret["data"]["token-hash"].as_str().unwrap();
    let spoke_secret = &spoke.calls[9].2;
    let token = ByteString::deserialize(&spoke_secret["data"]["token"]).unwrap();
    let token = String::from_utf8(token.0).unwrap();
    assert!(token_name.ends_with(token.split_once('.').unwrap().0));
    assert_eq!(String::from_utf8(ByteString::deserialize(&json!(hash)).unwrap().0).unwrap(), join::token_hash(&token));
    assert!(spoke_secret.get("stringData").is_none());
    for (method, path, _) in &spoke.calls[3..] {
        assert_eq!(method, Method::PATCH);
        assert!(path.contains("fieldManager=tether-controller") && path.contains("force=true"), "{path}");
    }
    assert_eq!(spoke.calls[3].2["kind"], "Namespace", "the namespace first");
    let daemon_set = &spoke.calls[10].2;
    assert_eq!(daemon_set["spec"]["template"]["spec"]["containers"][0]["image"], "example/tunnel-client:1");

    // Recorded in the status, with an Event.
    let status = &hub.calls[3].2;
    assert_eq!(status["metadata"]["resourceVersion"], "7");
    let condition = condition_of(status, "ManifestApplied");
    assert_eq!((&condition["status"], &condition["reason"]), (&json!("True"), &json!("Applied")));
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains(token_name) && !message.contains(&token), "{message}");
    let record = &status["status"]["autoRegistration"];
    assert_eq!(record["tokenSecret"], token_name);
    assert_eq!(record["observedGeneration"], 1);
    assert!(hub.event_reasons.contains(&"ManifestApplied".to_string()), "{:?}", hub.event_reasons);
    assert_no_credentials(&[&hub, &spoke]);
}

#[tokio::test]
async fn while_the_token_is_valid_nothing_is_applied_or_minted() {
    let mut mc = applied(auto_cluster(), 1, Timestamp::now() + Duration::from_secs(600), "tether-bootstrap-abc123");
    let now = Timestamp::now();
    let view = crate::conditions::view_leases(&[], crate::fixtures::LIVENESS, now);
    let mut conditions = crate::conditions::desired(&mc, &view, now);
    conditions.insert(
        4,
        crate::conditions::condition(
            &mc,
            crate::conditions::MANIFEST_APPLIED,
            "True",
            reason::APPLIED,
            "x".into(),
            now,
        ),
    );
    mc.status.as_mut().unwrap().conditions = conditions;
    let (ctx, hub, spoke) = auto_context(vec![], vec![], vec![]);
    run(ctx, mc).await.unwrap();
    let (hub, spoke) = (hub.await.unwrap(), spoke.await.unwrap());
    assert!(hub.calls.is_empty() && spoke.calls.is_empty() && hub.event_reasons.is_empty());
}

/// A reconcile that fails with `reason` after the hub `calls`, with nothing asked of the spoke.
async fn fails_before_the_spoke(calls: Vec<Call>, reason: &str, message_has: &[&str]) -> Seen {
    let (ctx, hub, spoke) = auto_context(vec![], calls, vec![]);
    let error = run(ctx, auto_cluster()).await.unwrap_err();
    assert!(matches!(&error, Error::Auto { reason: r, .. } if *r == reason), "{error}");
    let (hub, spoke) = (hub.await.unwrap(), spoke.await.unwrap());
    assert!(spoke.calls.is_empty(), "nothing applied");
    assert!(!hub.calls.iter().any(|(m, p, _)| m == Method::POST && p.starts_with(TOKENS_PATH)), "no token");
    let status = &hub.calls.last().unwrap().2;
    let condition = condition_of(status, "ManifestApplied");
    assert_eq!((&condition["status"], condition["reason"].as_str().unwrap()), (&json!("False"), reason));
    let message = condition["message"].as_str().unwrap();
    for part in message_has {
        assert!(message.contains(part), "{message} lacks {part}");
    }
    assert!(status["status"]["autoRegistration"].is_null(), "no record of an apply");
    assert_eq!(hub.event_reasons.last().map(String::as_str), Some(reason), "a Warning Event");
    assert_no_credentials(&[&hub, &spoke]);
    hub
}

#[tokio::test]
async fn a_missing_kubeconfig_secret_is_a_condition_and_a_warning() {
    fails_before_the_spoke(
        vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(auto_cluster())),
            call(Method::GET, KUBECONFIG_PATH, 404, not_found()),
            call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster())),
        ],
        reason::SECRET_NOT_FOUND,
        &["hub-secrets/spoke-a-kubeconfig", "not found"],
    )
    .await;
}

#[tokio::test]
async fn a_secret_without_the_key_or_with_a_bad_kubeconfig_is_named_and_never_quoted() {
    /// The Secret holds `content` under `key`.
    async fn refused(key: &str, content: &str, reason: &str, message_has: &[&str]) {
        let calls = vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(auto_cluster())),
            call(Method::GET, KUBECONFIG_PATH, 200, kubeconfig_secret(key, content)),
            call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster())),
        ];
        fails_before_the_spoke(calls, reason, message_has).await;
    }
    refused("config", KUBECONFIG, reason::KEY_MISSING, &["no key kubeconfig", "keys: config"]).await;
    let garbage = format!("{SPOKE_TOKEN}: [unclosed");
    refused("kubeconfig", &garbage, reason::INVALID_KUBECONFIG, &["not a kubeconfig"]).await;
    let exec = KUBECONFIG.replace("{token: s3cr3t-spoke-admin-token}", "{exec: {command: /bin/sh}}");
    refused("kubeconfig", &exec, reason::INVALID_KUBECONFIG, &["exec plugins are not supported"]).await;
}

#[tokio::test]
async fn an_unreachable_spoke_leaves_no_token_behind() {
    let (ctx, hub, spoke) = auto_context(
        vec![],
        vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(auto_cluster())),
            call(Method::GET, KUBECONFIG_PATH, 200, kubeconfig_secret("kubeconfig", KUBECONFIG)),
            call(Method::POST, TOKENS_PATH, 201, created_token()),
            call(Method::DELETE, TOKENS_PATH, 200, json!({"kind": "Status", "status": "Success"})),
            call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster())),
        ],
        vec![call(Method::GET, "/api/v1", 0, Value::Null)],
    );
    let error = run(ctx, auto_cluster()).await.unwrap_err();
    assert!(matches!(error, Error::Auto { reason: reason::SPOKE_UNREACHABLE, .. }), "{error}");
    let hub = hub.await.unwrap();
    spoke.await.unwrap();
    let minted = hub.calls[2].2["metadata"]["name"].as_str().unwrap();
    assert!(hub.calls[3].1.trim_end_matches('?').ends_with(minted), "the unused token is deleted: {}", hub.calls[3].1);
    let condition = condition_of(&hub.calls[4].2, "ManifestApplied");
    assert_eq!(condition["reason"], "SpokeUnreachable");
    assert!(condition["message"].as_str().unwrap().contains("connection refused"), "{condition}");
}

#[tokio::test]
async fn a_spoke_refusing_an_object_is_apply_refused_and_the_token_goes() {
    let mut spoke_script = spoke_applies();
    spoke_script.truncate(10);
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "daemonsets.apps is forbidden: User \"bob\" cannot patch resource"});
    spoke_script.push(call(Method::PATCH, "/apis/apps/v1/namespaces/tether-system/daemonsets/", 403, forbidden));
    let (ctx, hub, spoke) = auto_context(
        vec![],
        vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(auto_cluster())),
            call(Method::GET, KUBECONFIG_PATH, 200, kubeconfig_secret("kubeconfig", KUBECONFIG)),
            call(Method::POST, TOKENS_PATH, 201, created_token()),
            call(Method::DELETE, TOKENS_PATH, 200, json!({"kind": "Status", "status": "Success"})),
            call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster())),
        ],
        spoke_script,
    );
    let error = run(ctx, auto_cluster()).await.unwrap_err();
    assert!(matches!(error, Error::Auto { reason: reason::APPLY_REFUSED, .. }), "{error}");
    let hub = hub.await.unwrap();
    spoke.await.unwrap();
    let message = condition_of(&hub.calls[4].2, "ManifestApplied")["message"].as_str().unwrap().to_string();
    assert!(message.contains("DaemonSet tunnel-client") && message.contains("403"), "{message}");
}

#[tokio::test]
async fn without_the_flags_auto_clusters_get_a_condition_and_no_retries() {
    let (ctx, hub) = context(vec![], vec![call(Method::PATCH, STATUS_PATH, 200, json!(auto_cluster()))]);
    let action = run(ctx, auto_cluster()).await.unwrap();
    assert_eq!(action, Action::requeue(crate::fixtures::LIVENESS.renew_interval));
    let hub = hub.await.unwrap();
    let condition = condition_of(&hub.calls[0].2, "ManifestApplied");
    assert_eq!(condition["reason"], "AutoModeNotConfigured");
    assert!(hub.event_reasons.contains(&"AutoModeNotConfigured".to_string()));
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_deleted() {
    let old = "tether-bootstrap-old111";
    let mc = applied(auto_cluster(), 1, Timestamp::now() - Duration::from_secs(1), old);
    let (ctx, hub, spoke) = auto_context(
        vec![],
        vec![
            call(Method::GET, CLUSTER_PATH, 200, json!(mc)),
            call(Method::GET, KUBECONFIG_PATH, 200, kubeconfig_secret("kubeconfig", KUBECONFIG)),
            call(Method::POST, TOKENS_PATH, 201, created_token()),
            call(Method::DELETE, TOKENS_PATH, 404, not_found()),
            call(Method::PATCH, STATUS_PATH, 200, json!(mc)),
        ],
        spoke_applies(),
    );
    run(ctx, mc).await.unwrap();
    let hub = hub.await.unwrap();
    spoke.await.unwrap();
    assert!(
        hub.calls[3].1.trim_end_matches('?').ends_with(old),
        "the old token goes (already spent here): {}",
        hub.calls[3].1
    );
    let record = &hub.calls[4].2["status"]["autoRegistration"];
    assert_eq!(record["tokenSecret"], hub.calls[2].2["metadata"]["name"]);
}

#[tokio::test]
async fn a_stale_cache_mints_nothing() {
    let mut newer = auto_cluster();
    newer.metadata.resource_version = Some("8".into());
    let (ctx, hub, spoke) = auto_context(vec![], vec![call(Method::GET, CLUSTER_PATH, 200, json!(newer))], vec![]);
    let action = run(ctx, auto_cluster()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert_eq!(hub.await.unwrap().calls.len(), 1);
    assert!(spoke.await.unwrap().calls.is_empty());
}

#[tokio::test]
async fn a_manual_cluster_loses_a_stale_auto_condition_and_record() {
    let mut mc = applied(auto_cluster(), 1, at(3600), "tether-bootstrap-abc123");
    mc.spec.mode = RegistrationMode::Manual;
    let (ctx, hub, _spoke) = auto_context(vec![], vec![call(Method::PATCH, STATUS_PATH, 200, json!(mc))], vec![]);
    run(ctx, mc).await.unwrap();
    let hub = hub.await.unwrap();
    let status = &hub.calls[0].2["status"];
    assert!(status["autoRegistration"].is_null());
    assert!(!status["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "ManifestApplied"));
}
