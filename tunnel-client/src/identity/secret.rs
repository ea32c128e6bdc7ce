//! The identity as a Secret of the spoke (`--identity-secret NAMESPACE/NAME`), for a client running in the
//! cluster: it survives Pods, and every Pod of the DaemonSet shares it (the identity is the cluster's, not
//! the node's). Data keys `tls.crt`, `tls.key`, and for the request in progress `pending.key`,
//! `pending.csr`, `pending.csr-name`. Every write is a replace guarded by the resourceVersion just read, so
//! Pods racing on it never interleave half-writes: a commit checks that the pending key it got a
//! certificate for is still the one stored, and sets key and certificate in one write.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;

use super::{Identity, Pending};
use crate::{Error, Result};

const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const PENDING_KEY: &str = "pending.key";
const PENDING_CSR: &str = "pending.csr";
const PENDING_NAME: &str = "pending.csr-name";
/// Conflicting writes retried before giving up (the caller retries later).
const ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretStore({}/{})", self.namespace, self.name)
    }
}

impl SecretStore {
    /// `reference` is `NAMESPACE/NAME`; `client` talks to the spoke's apiserver as the client's
    /// ServiceAccount.
    pub fn new(client: kube::Client, reference: &str) -> Result<Self> {
        let invalid = || Error::Config {
            flag: "--identity-secret",
            reason: format!("expected NAMESPACE/NAME, got {reference:?}"),
        };
        let (namespace, name) = reference.split_once('/').ok_or_else(invalid)?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(invalid());
        }
        Ok(Self { api: Api::namespaced(client, namespace), namespace: namespace.into(), name: name.into() })
    }

    async fn read(&self) -> Result<Option<Secret>> {
        self.api.get_opt(&self.name).await.map_err(|e| self.error("reading", e))
    }

    pub async fn load(&self) -> Result<Option<Identity>> {
        let Some(secret) = self.read().await? else { return Ok(None) };
        let data = data_of(&secret);
        match (field(&data, CERT), field(&data, KEY)) {
            (Some(cert_pem), Some(key_pem)) => Ok(Some(Identity { cert_pem, key_pem })),
            _ => Ok(None),
        }
    }

    pub async fn pending(&self) -> Result<Option<Pending>> {
        let Some(secret) = self.read().await? else { return Ok(None) };
        Ok(pending_of(&data_of(&secret)))
    }

    pub async fn save_pending(&self, pending: &Pending) -> Result<()> {
        self.update(|data| {
            data.insert(PENDING_KEY.into(), pending.key_pem.clone());
            data.insert(PENDING_CSR.into(), pending.csr_pem.clone());
            match &pending.csr_name {
                Some(name) => data.insert(PENDING_NAME.into(), name.clone()),
                None => data.remove(PENDING_NAME),
            };
            Ok(())
        })
        .await
    }

    pub async fn commit(&self, pending: &Pending, cert_pem: &str) -> Result<Identity> {
        self.update(|data| {
            if data.get(PENDING_KEY) != Some(&pending.key_pem) {
                return Err(Error::Bootstrap("the pending key changed under this request".into()));
            }
            data.insert(CERT.into(), cert_pem.to_string());
            data.insert(KEY.into(), pending.key_pem.clone());
            for key in [PENDING_KEY, PENDING_CSR, PENDING_NAME] {
                data.remove(key);
            }
            Ok(())
        })
        .await?;
        Ok(Identity { cert_pem: cert_pem.to_string(), key_pem: pending.key_pem.clone() })
    }

    /// Read, change, write with the resourceVersion read (create when missing); again on a conflict.
    async fn update(&self, change: impl Fn(&mut BTreeMap<String, String>) -> Result<()>) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let existing = self.read().await?;
            let mut data = existing.as_ref().map(data_of).unwrap_or_default();
            change(&mut data)?;
            let written = match existing {
                Some(mut secret) => {
                    secret.data = Some(to_bytes(data));
                    secret.string_data = None;
                    self.api.replace(&self.name, &PostParams::default(), &secret).await
                }
                None => self.api.create(&PostParams::default(), &self.new_secret(data)).await,
            };
            match written {
                Ok(_) => return Ok(()),
                // Another Pod wrote first (409), or created it first (409 AlreadyExists): read again.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(self.error("writing", e)),
            }
        }
        Err(Error::Bootstrap(format!("Secret {}/{} kept changing under this client", self.namespace, self.name)))
    }

    fn new_secret(&self, data: BTreeMap<String, String>) -> Secret {
        let labels = BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "tunnel-client".to_string()),
            ("app.kubernetes.io/part-of".to_string(), "tether".to_string()),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(to_bytes(data)),
            ..Default::default()
        }
    }

    fn error(&self, what: &'static str, source: kube::Error) -> Error {
        // kube errors carry the apiserver's Status message, never the Secret's data.
        Error::IdentitySecret { what, secret: format!("{}/{}", self.namespace, self.name), source }
    }
}

fn data_of(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
        .collect()
}

fn to_bytes(data: BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()
}

fn field(data: &BTreeMap<String, String>, key: &str) -> Option<String> {
    data.get(key).filter(|v| !v.trim().is_empty()).cloned()
}

fn pending_of(data: &BTreeMap<String, String>) -> Option<Pending> {
    Some(Pending {
        key_pem: field(data, PENDING_KEY)?,
        csr_pem: field(data, PENDING_CSR)?,
        csr_name: field(data, PENDING_NAME).map(|n| n.trim().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // kube's client needs a runtime to be built.
    #[tokio::test]
    async fn references_name_namespace_and_secret() {
        let client = || {
            let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
            kube::Client::try_from(config).unwrap()
        };
        let store = SecretStore::new(client(), "tether-system/tether-identity").unwrap();
        assert_eq!((store.namespace.as_str(), store.name.as_str()), ("tether-system", "tether-identity"));
        for bad in ["tether-identity", "/x", "ns/", "a/b/c"] {
            let error = SecretStore::new(client(), bad).unwrap_err().to_string();
            assert!(error.contains("--identity-secret"), "{bad}: {error}");
        }
    }

    #[test]
    fn pending_needs_key_and_csr() {
        let mut data = BTreeMap::from([(PENDING_KEY.to_string(), "k".to_string())]);
        assert_eq!(pending_of(&data), None);
        data.insert(PENDING_CSR.into(), "c".into());
        assert_eq!(pending_of(&data), Some(Pending { key_pem: "k".into(), csr_pem: "c".into(), csr_name: None }));
        data.insert(PENDING_NAME.into(), "n\n".into());
        assert_eq!(pending_of(&data).unwrap().csr_name.as_deref(), Some("n"));
    }
}
