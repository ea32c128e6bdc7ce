//! `controller join <cluster>`: registers a spoke that the hub cannot reach. It creates the cluster's
//! ManagedCluster if missing and a single-use, expiring bootstrap token — stored on the hub only as a
//! SHA-256 hash — and prints the manifest to apply on the spoke: the namespace and impersonate-only RBAC of
//! `deploy/spoke/rbac.yaml`, a Secret with the token, the hub address and the hub CA, and the tunnel-client
//! DaemonSet. The client trades the token for a certificate (a CSR the tunnel-server creates and
//! [`crate::csr`] approves and signs).
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use serde::Deserialize;

use crate::conditions::CLUSTER_LABEL;
use crate::config::JoinConfig;
use crate::crd::{ManagedCluster, ManagedClusterSpec};
use crate::{Error, Result};

pub use tether_api::token::{hash as token_hash, SECRET_TYPE as TOKEN_SECRET_TYPE};
use tether_api::token::{ALPHABET, DATA_CLUSTER, DATA_EXPIRATION, DATA_HASH, ID_LEN, SECRET_LEN};
/// The spoke's namespace, as `deploy/spoke/rbac.yaml` creates it.
pub const SPOKE_NAMESPACE: &str = "tether-system";
/// The spoke Secret with the token, the hub address and the hub CA.
pub const SPOKE_SECRET: &str = "tether-bootstrap";
/// The spoke's Namespace, ServiceAccount and impersonate-only RBAC: the same file an admin applies by hand.
pub const SPOKE_RBAC: &str = include_str!("../../deploy/spoke/rbac.yaml");

const FIELD_MANAGER: &str = "tether-join";
const BOOTSTRAP_DIR: &str = "/etc/tether/bootstrap";
/// The spoke Secret the client keeps its key and certificate in (deploy/spoke/rbac.yaml lets it).
pub const IDENTITY_SECRET: &str = "tether-identity";
/// The spoke ConfigMap the client reads its identity policy from (deploy/spoke/rbac.yaml lets it). Never
/// part of the manifest: the hub writes the manifest (and applies it in auto mode), and whom the hub may act
/// as on a spoke is the spoke's to decide. Absent, the client's default policy applies.
pub const IDENTITY_POLICY_CONFIGMAP: &str = "tether-identity-policy";

/// A bootstrap token `<id>.<secret>`: the id names the hub Secret, the whole token is hashed into it.
///
/// `Debug` and `Display` show only the id.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl BootstrapToken {
    /// A new token from the thread's CSPRNG (ChaCha, seeded by the operating system).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut draw = |n: usize| (0..n).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
        Self { id: draw(ID_LEN), secret: draw(SECRET_LEN) }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name of the hub Secret holding this token's hash.
    pub fn secret_name(&self) -> String {
        tether_api::token::secret_name(&self.id)
    }

    /// The token itself, `<id>.<secret>`: only for the spoke's Secret.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// Lowercase hex SHA-256 of the whole token: all the hub keeps.
    pub fn hash(&self) -> String {
        token_hash(&self.reveal())
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id)
    }
}

/// `t` as RFC 3339 UTC in whole seconds, e.g. `2026-01-01T00:00:00Z`.
pub fn rfc3339_seconds(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The hub Secret of `token`: its hash, the cluster and the expiration, never the token. Owned by the
/// cluster's ManagedCluster (when known), so unregistering the cluster removes unused tokens.
pub fn token_secret(
    token: &BootstrapToken,
    cluster: &str,
    expiration: Timestamp,
    namespace: &str,
    owner: Option<OwnerReference>,
) -> Secret {
    let data = [
        (DATA_CLUSTER, cluster.to_string()),
        (DATA_HASH, token.hash()),
        (DATA_EXPIRATION, rfc3339_seconds(expiration)),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some(token.secret_name()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.into()),
        data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// What the spoke manifest is made of.
#[derive(Debug)]
pub struct SpokeManifest<'a> {
    pub cluster: &'a str,
    pub token: &'a BootstrapToken,
    pub expiration: Timestamp,
    /// `host:port` of the hub's tunnel-server.
    pub hub_address: &'a str,
    /// The CA (PEM) the client verifies the hub with.
    pub hub_ca_pem: &'a str,
    pub image: &'a str,
}

impl SpokeManifest<'_> {
    /// The YAML documents to `kubectl apply -f` on the spoke. The token is in the Secret and nowhere else.
    pub fn render(&self) -> Result<String, serde_yaml::Error> {
        let mut out = format!(
            "# tether spoke manifest for cluster {cluster}, from `controller join`: `kubectl apply -f` it on the spoke.\n\
             # It holds a single-use bootstrap token (expires {expires}): keep it secret. The tunnel-client trades the\n\
             # token for a certificate, generating its key locally; key and certificate live in the Secret\n\
             # {namespace}/{identity}, so they outlive Pods, every Pod of the DaemonSet shares them, and the client\n\
             # renews them over its tunnel before they expire.\n\
             # Whom the hub may act as here is this spoke's identity policy: by default hub users keep their names\n\
             # but system: users (ServiceAccounts, nodes) are refused and system: groups (system:masters, ...) are\n\
             # dropped, so grant hub users rights here explicitly. Tighten it with ConfigMap {namespace}/{policy}\n\
             # (keys usernamePrefix, groupPrefix, dropGroups, allowGroups), which this manifest never contains.\n",
            namespace = SPOKE_NAMESPACE,
            identity = IDENTITY_SECRET,
            policy = IDENTITY_POLICY_CONFIGMAP,
            cluster = self.cluster,
            expires = rfc3339_seconds(self.expiration),
        );
        out.push_str(SPOKE_RBAC);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        for document in [serde_yaml::to_string(&self.secret())?, serde_yaml::to_string(&self.daemon_set())?] {
            out.push_str("---\n");
            out.push_str(&document);
        }
        Ok(out)
    }

    /// The same objects as [`Self::render`], in the same order, for the controller to apply in auto mode:
    /// the Secret's `stringData` is moved into `data`, as the apiserver stores it, so that applying again
    /// compares like with like.
    pub fn objects(&self) -> Result<Vec<DynamicObject>, serde_yaml::Error> {
        let mut objects = Vec::new();
        for document in serde_yaml::Deserializer::from_str(SPOKE_RBAC) {
            objects.push(DynamicObject::deserialize(document)?);
        }
        let mut secret = self.secret();
        let string_data = secret.string_data.take().unwrap_or_default();
        secret.data = Some(string_data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect());
        objects.push(serde_yaml::from_value(serde_yaml::to_value(&secret)?)?);
        objects.push(serde_yaml::from_value(serde_yaml::to_value(self.daemon_set())?)?);
        Ok(objects)
    }

    fn secret(&self) -> Secret {
        let data = [
            ("token", self.token.reveal()),
            ("cluster", self.cluster.to_string()),
            ("hub-address", self.hub_address.to_string()),
            ("hub-ca.crt", self.hub_ca_pem.to_string()),
        ];
        Secret {
            metadata: ObjectMeta {
                name: Some(SPOKE_SECRET.into()),
                namespace: Some(SPOKE_NAMESPACE.into()),
                labels: Some(labels()),
                ..Default::default()
            },
            string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            ..Default::default()
        }
    }

    fn daemon_set(&self) -> DaemonSet {
        let file = |dir: &str, name: &str| format!("{dir}/{name}");
        let args = [
            ("--cluster", self.cluster.to_string()),
            ("--bootstrap-token-file", file(BOOTSTRAP_DIR, "token")),
            ("--hub-ca", file(BOOTSTRAP_DIR, "hub-ca.crt")),
            ("--identity-secret", format!("{SPOKE_NAMESPACE}/{IDENTITY_SECRET}")),
            ("--identity-policy-configmap", format!("{SPOKE_NAMESPACE}/{IDENTITY_POLICY_CONFIGMAP}")),
        ];
        let env = vec![
            EnvVar {
                name: "TETHER_HUB".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: SPOKE_SECRET.into(),
                        key: "hub-address".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            EnvVar {
                name: "TETHER_INSTANCE".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let container = Container {
            name: "tunnel-client".into(),
            image: Some(self.image.into()),
            args: Some(args.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect()),
            env: Some(env),
            volume_mounts: Some(vec![VolumeMount {
                name: "bootstrap".into(),
                mount_path: BOOTSTRAP_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("50m".into())),
                    ("memory".to_string(), Quantity("32Mi".into())),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), Quantity("256Mi".into()))])),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = PodSpec {
            service_account_name: Some("tether-client".into()),
            containers: vec![container],
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                fs_group: Some(65532),
                ..Default::default()
            }),
            volumes: Some(vec![Volume {
                name: "bootstrap".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(SPOKE_SECRET.into()),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("tunnel-client".into()),
                namespace: Some(SPOKE_NAMESPACE.into()),
                labels: Some(labels()),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_string(),
                        "tunnel-client".to_string(),
                    )])),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels()), ..Default::default() }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "tunnel-client".to_string()),
        ("app.kubernetes.io/part-of".to_string(), "tether".to_string()),
    ])
}

/// Runs `controller join`: the manifest on stdout, one line about the token on stderr.
pub async fn join(config: JoinConfig) -> Result<()> {
    let (flag, path) = ("--hub-ca", &config.hub_ca);
    let hub_ca_pem =
        std::fs::read_to_string(path).map_err(|source| Error::FlagFile { flag, path: path.clone(), source })?;
    tether_certs::pem_to_der_certs(&hub_ca_pem).map_err(|source| Error::FlagPem {
        flag,
        path: path.clone(),
        source,
    })?;
    let expiration = expiration(Timestamp::now(), config.ttl).ok_or_else(|| Error::Config {
        flag: "--ttl",
        reason: format!("{} is too long", humantime::format_duration(config.ttl)),
    })?;
    let client = crate::hub_client(config.hub_kubeconfig.as_deref()).await?;

    // Checked first, so that a wrong --namespace leaves nothing behind.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(&config.namespace).await?.is_none() {
        return Err(Error::Config {
            flag: "--namespace",
            reason: format!("namespace {} not found on the hub", config.namespace),
        });
    }
    let cluster = ensure_cluster(&client, &config.cluster, config.accept).await?;
    let secrets: Api<Secret> = Api::namespaced(client, &config.namespace);
    let token = match issue_token(&secrets, &cluster, expiration, FIELD_MANAGER).await {
        Ok(token) => token,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(Error::Config {
                flag: "--namespace",
                reason: format!("namespace {} not found on the hub", config.namespace),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let manifest = SpokeManifest {
        cluster: &config.cluster,
        token: &token,
        expiration,
        hub_address: &config.hub_address,
        hub_ca_pem: &hub_ca_pem,
        image: &config.image,
    }
    .render()
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    std::io::stdout().lock().write_all(manifest.as_bytes())?;
    eprintln!(
        "bootstrap token {} for cluster {} expires at {} and is single-use",
        token.secret_name(),
        config.cluster,
        rfc3339_seconds(expiration)
    );
    Ok(())
}

/// Creates a new bootstrap token for `cluster`: its hub Secret (the hash only) in the namespace of
/// `secrets`, owned by the ManagedCluster so that unregistering the cluster removes an unused token. `join`
/// and auto mode both mint tokens here.
pub async fn issue_token(
    secrets: &Api<Secret>,
    cluster: &ManagedCluster,
    expiration: Timestamp,
    field_manager: &str,
) -> Result<BootstrapToken, kube::Error> {
    let owner = cluster.controller_owner_ref(&()).map(|mut o| {
        o.controller = None;
        o.block_owner_deletion = None;
        o
    });
    let params = PostParams { field_manager: Some(field_manager.into()), ..Default::default() };
    let namespace = secrets.namespace().unwrap_or_default().to_string();
    // 36^6 ids: a collision is unlikely, but a second token must never replace the first.
    let mut attempts = 0;
    loop {
        let token = BootstrapToken::generate();
        let secret = token_secret(&token, &cluster.name_any(), expiration, &namespace, owner.clone());
        match secrets.create(&params, &secret).await {
            Ok(_) => return Ok(token),
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// `now + ttl` in whole seconds; `None` when that is beyond what a timestamp holds.
pub fn expiration(now: Timestamp, ttl: Duration) -> Option<Timestamp> {
    let seconds = i64::try_from(ttl.as_secs()).ok()?;
    now.as_second().checked_add(seconds).and_then(|s| Timestamp::from_second(s).ok())
}

/// The cluster's ManagedCluster, created (not accepted unless `accept`) when missing; `accept` also accepts
/// an existing one.
async fn ensure_cluster(client: &kube::Client, name: &str, accept: bool) -> Result<ManagedCluster> {
    let api: Api<ManagedCluster> = Api::all(client.clone());
    if let Some(existing) = api.get_opt(name).await? {
        if accept && !existing.spec.hub_accepts_client {
            let patch = serde_json::json!({ "spec": { "hubAcceptsClient": true } });
            let patched = api
                .patch(
                    name,
                    &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                    &Patch::Merge(&patch),
                )
                .await?;
            eprintln!("managedcluster {name} exists: now accepted");
            return Ok(patched);
        }
        return Ok(existing);
    }
    let cluster = ManagedCluster::new(name, ManagedClusterSpec { hub_accepts_client: accept, ..Default::default() });
    match api.create(&post_params(), &cluster).await {
        Ok(created) => {
            let state = if accept { "accepted" } else { "not accepted yet: set spec.hubAcceptsClient to true" };
            eprintln!("managedcluster {} created, {state}", created.name_any());
            Ok(created)
        }
        // Created meanwhile by someone else: theirs stands.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
    }

    fn manifest(token: &BootstrapToken) -> String {
        SpokeManifest {
            cluster: "spoke-a",
            token,
            expiration: Timestamp::from_second(1_800_000_000).unwrap(),
            hub_address: "hub.example:8443",
            hub_ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            image: "ghcr.io/tether-io/tunnel-client:0.1.0",
        }
        .render()
        .unwrap()
    }

    #[test]
    fn tokens_have_the_agreed_shape() {
        let token = BootstrapToken::generate();
        let text = token.reveal();
        let (id, secret) = text.split_once('.').unwrap();
        assert_eq!((id.len(), secret.len()), (6, 16));
        assert!(text.bytes().all(|b| b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit()), "{text}");
        assert_eq!(token.secret_name(), format!("tether-bootstrap-{id}"));
        assert_ne!(BootstrapToken::generate(), token);
        for shown in [format!("{token:?}"), token.to_string()] {
            assert!(shown.contains(id) && !shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn the_hash_is_hex_sha256_of_the_whole_token() {
        // `printf %s abcdef.0123456789abcdef | sha256sum`
        assert_eq!(
            token_hash("abcdef.0123456789abcdef"),
            "a4b8b245ab28bc4f72dcaa0d9ba9f73d6488fa758a2a5cb55ecb11511f002f80"
        );
    }

    #[test]
    fn the_hub_secret_holds_the_hash_and_never_the_token() {
        let token = BootstrapToken::generate();
        let owner = OwnerReference {
            api_version: "tether.io/v1alpha1".into(),
            kind: "ManagedCluster".into(),
            name: "spoke-a".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        let secret = token_secret(&token, "spoke-a", Timestamp::from_second(1_800_000_000).unwrap(), "ns", Some(owner));
        let json = serde_json::to_value(&secret).unwrap();
        assert_eq!(json["type"], "tether.io/bootstrap-token");
        assert_eq!(json["metadata"]["name"], token.secret_name());
        assert_eq!(json["metadata"]["namespace"], "ns");
        assert_eq!(json["metadata"]["labels"]["tether.io/cluster"], "spoke-a");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let data = secret.data.as_ref().unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["cluster", "expiration", "token-hash"]);
        assert_eq!(text("cluster"), "spoke-a");
        assert_eq!(text("expiration"), "2027-01-15T08:00:00Z");
        assert_eq!(text("token-hash"), token_hash(&token.reveal()));
        let serialized = serde_json::to_string(&secret).unwrap();
        assert!(!serialized.contains(&token.reveal()) && !serialized.contains(&token.secret));
    }

    #[test]
    fn the_manifest_is_valid_yaml_with_the_token_only_in_the_secret() {
        let token = BootstrapToken::generate();
        let yaml = manifest(&token);
        let docs = documents(&yaml);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Secret",
                "DaemonSet"
            ]
        );
        assert!(yaml.contains(SPOKE_RBAC), "deploy/spoke/rbac.yaml is included as it is");

        assert_eq!(yaml.matches(&token.secret).count(), 1, "the token appears once");
        let secret = &docs[6];
        assert_eq!(secret["metadata"]["namespace"], "tether-system");
        assert_eq!(secret["stringData"]["token"].as_str(), Some(token.reveal().as_str()));
        assert_eq!(secret["stringData"]["cluster"], "spoke-a");
        assert_eq!(secret["stringData"]["hub-address"], "hub.example:8443");
        assert!(secret["stringData"]["hub-ca.crt"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----\n"));

        let daemon_set = &docs[7];
        assert!(!serde_yaml::to_string(daemon_set).unwrap().contains(&token.secret));
        let pod = &daemon_set["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "tether-client");
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let flag = |name: &str| args[args.iter().position(|a| *a == name).unwrap() + 1];
        assert_eq!(flag("--cluster"), "spoke-a");
        assert_eq!(flag("--bootstrap-token-file"), "/etc/tether/bootstrap/token");
        assert_eq!(flag("--hub-ca"), "/etc/tether/bootstrap/hub-ca.crt");
        assert_eq!(flag("--identity-secret"), "tether-system/tether-identity");
        assert_eq!(flag("--identity-policy-configmap"), "tether-system/tether-identity-policy");
        assert!(!args.contains(&"--cert") && !args.contains(&"--key"));
        // The policy is the spoke's: no policy flag in what the hub writes.
        for policy_flag in [
            "--identity-username-prefix",
            "--identity-group-prefix",
            "--identity-drop-groups",
            "--identity-allow-groups",
        ] {
            assert!(!args.contains(&policy_flag), "{policy_flag}");
        }
        assert_eq!(container["env"][0]["name"], "TETHER_HUB");
        assert_eq!(container["env"][0]["valueFrom"]["secretKeyRef"]["key"], "hub-address");
        assert_eq!(daemon_set["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "tunnel-client");
    }

    #[test]
    fn the_manifest_lets_the_client_impersonate_no_serviceaccount_and_only_read_its_policy() {
        let token = BootstrapToken::generate();
        let docs = documents(&manifest(&token));
        assert!(!docs.iter().any(|d| d["kind"] == "ConfigMap"), "the identity policy is never set by the hub");
        let impersonator = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "tether:impersonator")
            .expect("ClusterRole tether:impersonator");
        let rules = impersonator["rules"].as_sequence().unwrap();
        for rule in rules {
            let verbs = rule["verbs"].as_sequence().unwrap();
            assert_eq!(verbs.len(), 1, "{rule:?}");
            assert_eq!(verbs[0], "impersonate");
            let resources: Vec<&str> =
                rule["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            assert!(!resources.contains(&"serviceaccounts"), "hub identities never become spoke ServiceAccounts");
            if rule["apiGroups"][0] == "" {
                assert!(resources.iter().all(|r| ["users", "groups"].contains(r)), "{resources:?}");
            }
        }
        let role = docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "tether:identity").unwrap();
        let policy_rule = role["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["resources"][0] == "configmaps")
            .expect("a rule for the policy ConfigMap");
        assert_eq!(policy_rule["resourceNames"].as_sequence().unwrap().len(), 1);
        assert_eq!(policy_rule["resourceNames"][0], IDENTITY_POLICY_CONFIGMAP);
        let verbs: Vec<&str> =
            policy_rule["verbs"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(verbs, ["get", "list", "watch"]);
    }

    #[test]
    fn the_objects_to_apply_are_the_printed_manifest() {
        let token = BootstrapToken::generate();
        let objects = SpokeManifest {
            cluster: "spoke-a",
            token: &token,
            expiration: Timestamp::from_second(1_800_000_000).unwrap(),
            hub_address: "hub.example:8443",
            hub_ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            image: "ghcr.io/tether-io/tunnel-client:0.1.0",
        }
        .objects()
        .unwrap();
        let mut printed = documents(&manifest(&token));
        // What the apiserver makes of stringData.
        let secret = printed[6].as_mapping_mut().unwrap();
        let string_data = secret.remove("stringData").unwrap();
        let data: serde_yaml::Mapping = string_data
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), serde_yaml::to_value(ByteString(v.as_str().unwrap().into())).unwrap()))
            .collect();
        secret.insert("data".into(), data.into());
        let applied: Vec<serde_yaml::Value> = objects.iter().map(|o| serde_yaml::to_value(o).unwrap()).collect();
        assert_eq!(applied, printed);
        for object in &objects[1..] {
            let kind = &object.types.as_ref().unwrap().kind;
            let cluster_scoped = ["ClusterRole", "ClusterRoleBinding"].contains(&kind.as_str());
            assert_eq!(object.metadata.namespace.is_none(), cluster_scoped, "{kind}");
        }
    }

    #[test]
    fn expiration_is_now_plus_ttl_in_whole_seconds() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(rfc3339_seconds(expiration(now, Duration::from_secs(3600)).unwrap()), "2027-01-15T09:00:00Z");
        assert_eq!(expiration(now, Duration::from_secs(u64::MAX)), None);
    }
}
