//! `tunnel-server kubeconfig`: one context per cluster, each pointing at `https://HUB/clusters/<name>`,
//! all using the caller's own hub credentials (the hub authenticates them; nothing is minted here).
use std::path::PathBuf;

use base64::Engine;
use clap::Args;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_yaml::{Mapping, Value};

use crate::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct KubeconfigArgs {
    /// Base URL of the hub proxy, e.g. https://hub.example:8443
    #[arg(long, env = "TETHER_HUB_URL")]
    pub server: String,
    /// CA bundle that verifies the hub proxy's serving certificate.
    #[arg(long, env = "TETHER_HUB_CA")]
    pub ca_file: PathBuf,
    /// Your hub kubeconfig: its current user is reused for every context, and when no --cluster is
    /// given the clusters are listed from the hub's ManagedClusters.
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    pub hub_kubeconfig: PathBuf,
    /// Clusters to include (repeatable); all ManagedClusters when absent.
    #[arg(long = "cluster")]
    pub clusters: Vec<String>,
    /// Prefix of context names: `<prefix><cluster>`.
    #[arg(long, default_value = "")]
    pub context_prefix: String,
    /// Output file; standard output when absent.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub async fn write(args: KubeconfigArgs) -> Result<()> {
    let text = render(&args).await?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).map_err(|source| Error::Write { path: path.clone(), source })?;
            set_private(path)?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

pub async fn render(args: &KubeconfigArgs) -> Result<String> {
    fn file_error<'a>(flag: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::KubeconfigFile { flag, path: path.to_path_buf(), source }
    }
    let ca = std::fs::read(&args.ca_file).map_err(file_error("--ca-file", &args.ca_file))?;
    tether_runtime::tls::parse_certs(&ca).map_err(Error::KubeconfigCa)?;
    let hub_text =
        std::fs::read_to_string(&args.hub_kubeconfig).map_err(file_error("--hub-kubeconfig", &args.hub_kubeconfig))?;
    let hub: Value = serde_yaml::from_str(&hub_text).map_err(Error::KubeconfigYaml)?;
    let user = current_user(&hub).ok_or(Error::KubeconfigNoUser)?;
    let user = resolve_files(user, args.hub_kubeconfig.parent())?;

    let mut clusters = args.clusters.clone();
    if clusters.is_empty() {
        clusters = list_clusters(args).await?;
    }
    for name in &clusters {
        tether_certs::validate_cluster_name(name).map_err(Error::KubeconfigCluster)?;
    }
    clusters.sort();
    clusters.dedup();

    let ca_data = base64::engine::general_purpose::STANDARD.encode(&ca);
    let server = args.server.trim_end_matches('/');
    let mut kube_clusters = Vec::new();
    let mut contexts = Vec::new();
    for name in &clusters {
        let context = format!("{}{name}", args.context_prefix);
        kube_clusters.push(yaml(&[
            ("name", Value::from(context.clone())),
            (
                "cluster",
                yaml(&[
                    ("server", Value::from(format!("{server}/clusters/{name}"))),
                    ("certificate-authority-data", Value::from(ca_data.clone())),
                ]),
            ),
        ]));
        contexts.push(yaml(&[
            ("name", Value::from(context.clone())),
            ("context", yaml(&[("cluster", Value::from(context)), ("user", Value::from("tether-hub-user"))])),
        ]));
    }
    let current = clusters.first().map(|n| format!("{}{n}", args.context_prefix)).unwrap_or_default();
    let config = yaml(&[
        ("apiVersion", Value::from("v1")),
        ("kind", Value::from("Config")),
        ("clusters", Value::Sequence(kube_clusters)),
        ("contexts", Value::Sequence(contexts)),
        ("current-context", Value::from(current)),
        ("users", Value::Sequence(vec![yaml(&[("name", Value::from("tether-hub-user")), ("user", user)])])),
    ]);
    serde_yaml::to_string(&config).map_err(Error::KubeconfigRender)
}

async fn list_clusters(args: &KubeconfigArgs) -> Result<Vec<String>> {
    let path = &args.hub_kubeconfig;
    let invalid = |source| Error::HubKubeconfig { path: path.clone(), source };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(invalid)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(invalid)?;
    let client = kube::Client::try_from(config)?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("tether.io", "v1alpha1", "ManagedCluster"));
    let list = kube::Api::<DynamicObject>::all_with(client, &resource).list(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter_map(|o| o.metadata.name).collect())
}

fn current_user(config: &Value) -> Option<Value> {
    let context_name = config.get("current-context")?.as_str()?;
    let context = config
        .get("contexts")?
        .as_sequence()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(context_name))?;
    let user_name = context.get("context")?.get("user")?.as_str()?;
    let user = config
        .get("users")?
        .as_sequence()?
        .iter()
        .find(|u| u.get("name").and_then(Value::as_str) == Some(user_name))?;
    user.get("user").cloned()
}

/// Inlines `client-certificate`/`client-key`/`tokenFile` paths (relative to the source kubeconfig) so the
/// written kubeconfig works from any directory.
fn resolve_files(mut user: Value, base: Option<&std::path::Path>) -> Result<Value> {
    let Some(map) = user.as_mapping_mut() else { return Ok(user) };
    for (path_key, data_key) in [("client-certificate", "client-certificate-data"), ("client-key", "client-key-data")] {
        if let Some(path) = map.remove(path_key).and_then(|v| v.as_str().map(PathBuf::from)) {
            let path = base.map(|b| b.join(&path)).unwrap_or(path);
            let bytes = std::fs::read(&path).map_err(|source| Error::KubeconfigFile {
                flag: "--hub-kubeconfig",
                path: path.clone(),
                source,
            })?;
            map.insert(data_key.into(), base64::engine::general_purpose::STANDARD.encode(bytes).into());
        }
    }
    Ok(user)
}

fn yaml(pairs: &[(&str, Value)]) -> Value {
    let mut map = Mapping::new();
    for (k, v) in pairs {
        map.insert(Value::from(*k), v.clone());
    }
    Value::Mapping(map)
}

fn set_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| Error::Write { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn args(ca_file: PathBuf, hub_kubeconfig: PathBuf) -> KubeconfigArgs {
        KubeconfigArgs {
            server: "https://hub".into(),
            ca_file,
            hub_kubeconfig,
            clusters: vec!["a".into()],
            context_prefix: String::new(),
            out: None,
        }
    }

    #[tokio::test]
    async fn errors_name_the_flag_and_keep_their_cause() {
        let dir = std::env::temp_dir().join(format!("tether-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, hub) = (dir.join("ca.pem"), dir.join("hub.yaml"));

        let missing = render(&args(ca.clone(), hub.clone())).await.unwrap_err();
        assert_eq!(missing.to_string().split(": ").take(2).collect::<Vec<_>>(), ["hub kubeconfig", "--ca-file"]);
        let io = missing.source().and_then(|e| e.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
        assert_eq!(io, Some(std::io::ErrorKind::NotFound), "{missing}");

        std::fs::write(&ca, "not PEM").unwrap();
        let not_pem = render(&args(ca.clone(), hub.clone())).await.unwrap_err();
        assert_eq!(not_pem.to_string(), "hub kubeconfig: --ca-file: no PEM certificate found");
        assert!(not_pem.source().is_some_and(|e| e.is::<tether_runtime::tls::PemError>()), "{not_pem}");

        std::fs::write(
            &ca,
            tether_certs::CertificateAuthority::generate(
                "test CA",
                std::time::SystemTime::now(),
                std::time::Duration::from_secs(3600),
            )
            .unwrap()
            .cert_pem(),
        )
        .unwrap();
        std::fs::write(&hub, "users: [").unwrap();
        let bad_yaml = render(&args(ca.clone(), hub.clone())).await.unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(bad_yaml.to_string().starts_with("hub kubeconfig: --hub-kubeconfig: "), "{bad_yaml}");
        assert!(bad_yaml.source().is_some_and(|e| e.is::<serde_yaml::Error>()), "{bad_yaml}");
    }
}
