//! Auto mode: for a ManagedCluster with `spec.mode: Auto`, the controller itself applies the spoke manifest
//! that `controller join` prints — the Namespace and impersonate-only RBAC of `deploy/spoke/rbac.yaml`, the
//! Secret with a new single-use bootstrap token, the hub address and CA, and the tunnel-client DaemonSet —
//! with server-side apply, using the kubeconfig in the hub Secret `spec.autoKubeconfigSecret`. From there
//! the cluster registers as in manual mode: the client trades the token for a certificate.
//!
//! **When.** The manifest is applied while the cluster has not joined (no Lease was ever renewed for it)
//! and there is no applied token still valid: never applied, the applied token has expired, or the spec's
//! generation changed since. `status.autoRegistration` records the last apply (time, generation, token
//! Secret and expiry), so a reconcile that finds a valid token applies nothing and mints nothing. Applying
//! again deletes the previous token's hub Secret (unless already spent), so each cluster has at most one
//! auto-issued token. A joined cluster is never applied to again.
//!
//! **Failures** (no kubeconfig Secret or key, an unusable kubeconfig, an unreachable or refusing spoke) set
//! `ManifestApplied` False with a reason, publish a Warning Event and retry with backoff; a token minted
//! for a failed apply is deleted again. The kubeconfig and the token are never logged or put in a message.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{self, ApiCapabilities, Scope};
use kube::{Api, ResourceExt};

use crate::crd::{AutoRegistrationStatus, ManagedCluster, RegistrationMode, SecretKeyRef};
use crate::join::{self, rfc3339_seconds, SpokeManifest};
use crate::reconcile::Context;
use crate::Error;

/// Field manager of everything the controller applies to spokes.
pub const FIELD_MANAGER: &str = "tether-controller";

/// Reasons of the `ManifestApplied` condition.
pub mod reason {
    pub const APPLIED: &str = "Applied";
    /// The controller runs without `--hub-address` and `--hub-ca`.
    pub const NOT_CONFIGURED: &str = "AutoModeNotConfigured";
    /// `spec.autoKubeconfigSecret` is not set.
    pub const NO_SECRET_REF: &str = "KubeconfigSecretNotSet";
    pub const SECRET_NOT_FOUND: &str = "KubeconfigSecretNotFound";
    /// The hub refused to let the controller read it, or did not answer.
    pub const SECRET_UNREADABLE: &str = "KubeconfigSecretUnreadable";
    pub const KEY_MISSING: &str = "KubeconfigKeyMissing";
    pub const INVALID_KUBECONFIG: &str = "InvalidKubeconfig";
    pub const TOKEN_NOT_ISSUED: &str = "TokenNotIssued";
    pub const SPOKE_UNREACHABLE: &str = "SpokeUnreachable";
    /// The spoke apiserver answered with an error (unauthorized, forbidden, invalid, an unknown kind).
    pub const APPLY_REFUSED: &str = "ApplyRefused";
}

/// Builds the client of a spoke from its kubeconfig's configuration; tests swap in a scripted API.
pub type Connector = Arc<dyn Fn(kube::Config) -> Result<kube::Client, kube::Error> + Send + Sync>;

/// What auto mode needs from the controller's flags.
pub struct AutoConfig {
    /// `host:port` spokes dial.
    pub hub_address: String,
    /// The CA (PEM) spokes verify the hub with.
    pub hub_ca_pem: String,
    pub image: String,
    pub token_ttl: Duration,
    /// Hub namespace of the bootstrap token Secrets (the tunnel-servers' lease namespace).
    pub token_namespace: String,
    pub connect: Connector,
}

impl AutoConfig {
    /// The production connector: a real client, with timeouts so that an unreachable spoke fails a
    /// reconcile quickly instead of holding it.
    pub fn connector() -> Connector {
        Arc::new(|mut config: kube::Config| {
            config.connect_timeout = Some(Duration::from_secs(10));
            config.read_timeout = Some(Duration::from_secs(30));
            config.write_timeout = Some(Duration::from_secs(30));
            kube::Client::try_from(config)
        })
    }
}

impl std::fmt::Debug for AutoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoConfig")
            .field("hub_address", &self.hub_address)
            .field("image", &self.image)
            .field("token_ttl", &self.token_ttl)
            .field("token_namespace", &self.token_namespace)
            .finish_non_exhaustive()
    }
}

/// Why the manifest is applied (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    FirstTime,
    TokenExpired,
    SpecChanged,
}

/// What auto mode should do for a cluster, from its spec and status alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not an `Auto` cluster (or one being deleted): it carries no `ManifestApplied` condition.
    NotAuto,
    /// The cluster has joined: nothing more to apply.
    Joined,
    /// Nothing can be applied until the spec or the controller's flags change.
    Blocked {
        reason: &'static str,
        message: String,
    },
    /// Applied, and the token is still valid until then.
    Wait {
        until: Timestamp,
    },
    Apply(Why),
}

/// Decides from the cluster, whether it has ever connected, whether the controller has the auto-mode
/// flags, and `now`.
pub fn plan(cluster: &ManagedCluster, joined: bool, configured: bool, now: Timestamp) -> Plan {
    if cluster.spec.mode != RegistrationMode::Auto || cluster.metadata.deletion_timestamp.is_some() {
        return Plan::NotAuto;
    }
    if joined {
        return Plan::Joined;
    }
    if !configured {
        return Plan::Blocked {
            reason: reason::NOT_CONFIGURED,
            message: "the controller runs without --hub-address and --hub-ca (TETHER_HUB_ADDRESS, TETHER_HUB_CA): \
                      it cannot tell the spoke where the hub is"
                .into(),
        };
    }
    if cluster.spec.auto_kubeconfig_secret.is_none() {
        return Plan::Blocked {
            reason: reason::NO_SECRET_REF,
            message: "spec.mode is Auto but spec.autoKubeconfigSecret is not set".into(),
        };
    }
    let Some(last) = cluster.status.as_ref().and_then(|s| s.auto_registration.as_ref()) else {
        return Plan::Apply(Why::FirstTime);
    };
    if last.observed_generation != cluster.metadata.generation.unwrap_or_default() {
        Plan::Apply(Why::SpecChanged)
    } else if now >= last.token_expiration.0 {
        Plan::Apply(Why::TokenExpired)
    } else {
        Plan::Wait { until: last.token_expiration.0 }
    }
}

/// What one reconcile did in auto mode; the reconciler writes it into the status.
#[derive(Debug)]
pub enum Outcome {
    /// Not an `Auto` cluster: no `ManifestApplied` condition and no record.
    NotAuto,
    /// Nothing to do now: condition and record stay as they are.
    Unchanged,
    /// The cached cluster is older than the hub's: nothing was done; the newer version decides.
    Stale,
    /// The manifest was applied with a new token.
    Applied { record: AutoRegistrationStatus, message: String },
    /// Nothing was applied; `retry` with backoff unless only a change of spec or flags can help.
    Failed { reason: &'static str, message: String, retry: bool },
}

/// Runs auto mode for `cluster` (from the controller's cache); `joined` when a client has ever connected.
/// Failures to apply are an [`Outcome::Failed`]; an `Err` is the hub failing on the ManagedCluster itself.
pub async fn reconcile(
    cluster: &ManagedCluster,
    joined: bool,
    ctx: &Context,
    now: Timestamp,
) -> Result<Outcome, Error> {
    let why = match plan(cluster, joined, ctx.auto.is_some(), now) {
        Plan::NotAuto => return Ok(Outcome::NotAuto),
        Plan::Joined | Plan::Wait { .. } => return Ok(Outcome::Unchanged),
        Plan::Blocked { reason, message } => return Ok(Outcome::Failed { reason, message, retry: false }),
        Plan::Apply(why) => why,
    };
    let Some(auto) = ctx.auto.as_ref() else { return Ok(Outcome::Unchanged) };
    // The cache may lag behind the status this controller wrote a moment ago (a Lease renewal can trigger a
    // reconcile before the ManagedCluster's own watch event arrives): minting a token on an old status
    // would issue a second one.
    let fresh = Api::<ManagedCluster>::all(ctx.client.clone()).get(&cluster.name_any()).await?;
    if fresh.resource_version() != cluster.resource_version() {
        return Ok(Outcome::Stale);
    }
    tracing::info!(cluster = %cluster.name_any(), ?why, "applying the spoke manifest");
    Ok(match apply(cluster, auto, ctx, now).await {
        Ok(applied) => applied,
        Err(Error::Auto { reason, message }) => Outcome::Failed { reason, message, retry: true },
        Err(e) => Outcome::Failed { reason: reason::APPLY_REFUSED, message: e.to_string(), retry: true },
    })
}

fn fail(reason: &'static str, message: impl Into<String>) -> Error {
    Error::Auto { reason, message: message.into() }
}

async fn apply(cluster: &ManagedCluster, auto: &AutoConfig, ctx: &Context, now: Timestamp) -> Result<Outcome, Error> {
    let source = cluster
        .spec
        .auto_kubeconfig_secret
        .as_ref()
        .ok_or_else(|| fail(reason::NO_SECRET_REF, "spec.mode is Auto but spec.autoKubeconfigSecret is not set"))?;
    let kubeconfig = read_kubeconfig(&ctx.client, source).await?;
    let config = spoke_config(kubeconfig, source).await?;
    let spoke = (auto.connect)(config)
        .map_err(|e| fail(reason::INVALID_KUBECONFIG, format!("{}: no client for the spoke: {e}", describe(source))))?;

    let name = cluster.name_any();
    let expiration = join::expiration(now, auto.token_ttl)
        .ok_or_else(|| fail(reason::TOKEN_NOT_ISSUED, "--bootstrap-token-ttl is too long"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &auto.token_namespace);
    let token = join::issue_token(&secrets, cluster, expiration, FIELD_MANAGER).await.map_err(|e| {
        fail(
            reason::TOKEN_NOT_ISSUED,
            format!("cannot create a bootstrap token Secret in {}: {}", auto.token_namespace, hub_error(&e)),
        )
    })?;
    let manifest = SpokeManifest {
        cluster: &name,
        token: &token,
        expiration,
        hub_address: &auto.hub_address,
        hub_ca_pem: &auto.hub_ca_pem,
        image: &auto.image,
    };
    let applied = match manifest.objects() {
        Ok(objects) => apply_objects(&spoke, &objects).await,
        Err(e) => Err(fail(reason::APPLY_REFUSED, format!("the spoke manifest does not parse: {e}"))),
    };
    if let Err(e) = applied {
        // Unused: it must not stay valid for its whole lifetime.
        delete_token(&secrets, &token.secret_name()).await;
        return Err(e);
    }
    let previous = cluster.status.as_ref().and_then(|s| s.auto_registration.as_ref());
    if let Some(previous) = previous.filter(|p| p.token_secret != token.secret_name()) {
        delete_token(&secrets, &previous.token_secret).await;
    }
    let message = format!(
        "applied the spoke manifest with kubeconfig {}; bootstrap token {} expires at {}",
        describe(source),
        token.secret_name(),
        rfc3339_seconds(expiration)
    );
    let record = AutoRegistrationStatus {
        applied_at: Time(now),
        observed_generation: cluster.metadata.generation.unwrap_or_default(),
        token_secret: token.secret_name(),
        token_expiration: Time(expiration),
    };
    Ok(Outcome::Applied { record, message })
}

async fn delete_token(secrets: &Api<Secret>, name: &str) {
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::debug!(secret = %name, "bootstrap token deleted"),
        // Spent meanwhile: the tunnel-server deleted it.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(secret = %name, error = %e, "cannot delete a bootstrap token"),
    }
}

fn describe(source: &SecretKeyRef) -> String {
    format!("key {} of Secret {}/{}", source.key, source.namespace, source.name)
}

/// A kube error from the hub, without the `{0:?}` dump kube adds to API errors.
fn hub_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// The kubeconfig in the Secret `source` on the hub.
async fn read_kubeconfig(hub: &kube::Client, source: &SecretKeyRef) -> Result<Kubeconfig, Error> {
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &source.namespace);
    let secret = match secrets.get(&source.name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(fail(
                reason::SECRET_NOT_FOUND,
                format!("Secret {}/{} not found on the hub", source.namespace, source.name),
            ))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(fail(
                reason::SECRET_UNREADABLE,
                format!(
                    "the controller may not read Secret {}/{}: bind ClusterRole tether:controller-kubeconfigs to it in \
                     namespace {}",
                    source.namespace, source.name, source.namespace
                ),
            ))
        }
        Err(e) => {
            return Err(fail(
                reason::SECRET_UNREADABLE,
                format!("cannot read Secret {}/{}: {}", source.namespace, source.name, hub_error(&e)),
            ))
        }
    };
    let bytes = secret.data.as_ref().and_then(|d| d.get(&source.key)).filter(|b| !b.0.is_empty()).ok_or_else(|| {
        let keys: Vec<&str> = secret.data.iter().flat_map(|d| d.keys()).map(String::as_str).collect();
        fail(
            reason::KEY_MISSING,
            format!(
                "Secret {}/{} has no key {} (keys: {})",
                source.namespace,
                source.name,
                source.key,
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
            ),
        )
    })?;
    // Parse errors may quote the input: the message says only where to look.
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| fail(reason::INVALID_KUBECONFIG, format!("{} is not UTF-8 text", describe(source))))?;
    Kubeconfig::from_yaml(text)
        .map_err(|_| fail(reason::INVALID_KUBECONFIG, format!("{} is not a kubeconfig (YAML)", describe(source))))
}

/// The client configuration of a kubeconfig that embeds everything it needs. Paths, exec plugins and auth
/// providers are refused: they would run commands or read files of the controller (its own credentials
/// included) on behalf of whoever wrote the Secret.
pub async fn spoke_config(kubeconfig: Kubeconfig, source: &SecretKeyRef) -> Result<kube::Config, Error> {
    let invalid = |what: String| fail(reason::INVALID_KUBECONFIG, format!("{}: {what}", describe(source)));
    for named in &kubeconfig.clusters {
        if named.cluster.as_ref().is_some_and(|c| c.certificate_authority.is_some()) {
            return Err(invalid(format!(
                "cluster {}: certificate-authority is a file path; embed certificate-authority-data",
                named.name
            )));
        }
    }
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else { continue };
        let refused = [
            (user.exec.is_some(), "exec plugins are not supported"),
            (user.auth_provider.is_some(), "auth providers are not supported"),
            (user.token_file.is_some(), "tokenFile is a file path; embed token"),
            (user.client_certificate.is_some(), "client-certificate is a file path; embed client-certificate-data"),
            (user.client_key.is_some(), "client-key is a file path; embed client-key-data"),
        ];
        if let Some((_, why)) = refused.iter().find(|(refused, _)| *refused) {
            return Err(invalid(format!("user {}: {why}", named.name)));
        }
    }
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))
}

/// Server-side applies `objects` in order (the Namespace first), after finding each kind's resource and
/// scope with one discovery request per group version.
pub async fn apply_objects(spoke: &kube::Client, objects: &[DynamicObject]) -> Result<(), Error> {
    let mut groups: BTreeMap<String, discovery::ApiGroup> = BTreeMap::new();
    let mut resolved: Vec<(&DynamicObject, ApiResource, ApiCapabilities)> = Vec::new();
    for object in objects {
        let types = object.types.as_ref().ok_or_else(|| fail(reason::APPLY_REFUSED, "an object without a kind"))?;
        let gvk = GroupVersionKind::try_from(types)
            .map_err(|e| fail(reason::APPLY_REFUSED, format!("{}: {e}", types.api_version)))?;
        if !groups.contains_key(&types.api_version) {
            let gv = kube::core::GroupVersion::gv(&gvk.group, &gvk.version);
            let group = discovery::pinned_group(spoke, &gv).await.map_err(|e| spoke_error(&e, &types.api_version))?;
            groups.insert(types.api_version.clone(), group);
        }
        let (resource, caps) = groups[&types.api_version]
            .versioned_resources(&gvk.version)
            .into_iter()
            .find(|(r, _)| r.kind == gvk.kind)
            .ok_or_else(|| {
                fail(reason::APPLY_REFUSED, format!("the spoke does not serve {} {}", types.api_version, gvk.kind))
            })?;
        resolved.push((object, resource, caps));
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (object, resource, caps) in resolved {
        let name = object.name_any();
        let api: Api<DynamicObject> = match (caps.scope, object.namespace()) {
            (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(spoke.clone(), &namespace, &resource),
            (Scope::Namespaced, None) => {
                return Err(fail(reason::APPLY_REFUSED, format!("{} {name} has no namespace", resource.kind)))
            }
            (Scope::Cluster, _) => Api::all_with(spoke.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| spoke_error(&e, &format!("{} {name}", resource.kind)))?;
    }
    Ok(())
}

/// An error of the spoke apiserver about `what`: answered (refused) or not (unreachable).
fn spoke_error(error: &kube::Error, what: &str) -> Error {
    match error {
        kube::Error::Api(status) => {
            fail(reason::APPLY_REFUSED, format!("{what}: the spoke answered {}: {}", status.code, status.message))
        }
        kube::Error::Discovery(e) => fail(reason::APPLY_REFUSED, format!("{what}: {e}")),
        other => fail(reason::SPOKE_UNREACHABLE, format!("{what}: {}", error_chain(other))),
    }
}

/// An error and its sources on one line ("connection refused" is usually a few levels down).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
