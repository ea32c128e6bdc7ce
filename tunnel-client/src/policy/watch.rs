//! The policy in force, shared by every stream, and the ConfigMap watch that changes it.
//!
//! With `--identity-policy-configmap NAMESPACE/NAME` the client follows that ConfigMap of the spoke (the
//! hub's join manifest never contains it, so the hub cannot set it): a change applies to the next request
//! without a restart, so a spoke admin who tightens the policy needs no rollout. No ConfigMap means the
//! policy of the flags. An invalid ConfigMap refuses every request (naming the key at fault) until it is
//! fixed; it never falls back to a looser policy.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use metrics::counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Policy, Refusal};
use crate::metrics as m;
use crate::{Error, Result};

/// The policy requests are mapped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Active {
    Ready(Arc<Policy>),
    /// The ConfigMap's policy is invalid: the reason names the key.
    Invalid(String),
    /// The ConfigMap has not been read yet.
    Pending,
}

/// What every stream reads the policy from: cheap to clone, and a read is a shared lock held for the
/// mapping only.
#[derive(Debug, Clone)]
pub struct PolicyHandle(watch::Receiver<Active>);

impl PolicyHandle {
    /// A policy that never changes (no ConfigMap).
    pub fn fixed(policy: Policy) -> Self {
        let (_, receiver) = watch::channel(Active::Ready(Arc::new(policy)));
        Self(receiver)
    }

    /// Rewrites the identity headers of a request from the hub, or refuses it.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), Refusal> {
        let result = match &*self.0.borrow() {
            Active::Ready(policy) => super::apply(policy, headers),
            Active::Invalid(reason) => Err(Refusal::InvalidPolicy(reason.clone())),
            Active::Pending => Err(Refusal::NotReady("its ConfigMap is being read".into())),
        };
        if let Err(refusal) = &result {
            counter!(m::IDENTITY_REFUSALS, "reason" => refusal.label()).increment(1);
        }
        result
    }

    /// Waits until the ConfigMap was read (valid or not), at most `timeout`; false when it was not.
    pub async fn wait_read(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.wait_for(|a| *a != Active::Pending)).await.is_ok_and(|r| r.is_ok())
    }
}

/// The state for what the watch saw: no ConfigMap is the flags' policy, a ConfigMap is its own policy or,
/// when invalid, none.
pub fn active_for(configmap: Option<&ConfigMap>, fallback: &Arc<Policy>) -> Active {
    let Some(configmap) = configmap else { return Active::Ready(fallback.clone()) };
    if let Some(binary) = configmap.binary_data.as_ref().and_then(|b| b.keys().next()) {
        return Active::Invalid(format!("binaryData.{binary}: the policy is read from data only"));
    }
    match Policy::from_data(configmap.data.as_ref().unwrap_or(&BTreeMap::new())) {
        Ok(policy) => Active::Ready(Arc::new(policy)),
        Err(Error::Policy { field, reason }) => Active::Invalid(format!("{field}: {reason}")),
        Err(other) => Active::Invalid(other.to_string()),
    }
}

/// Follows ConfigMap `reference` (`NAMESPACE/NAME`) of the spoke, with `fallback` while there is none.
pub struct ConfigMapPolicy {
    reference: String,
    namespace: String,
    name: String,
    fallback: Arc<Policy>,
    sender: watch::Sender<Active>,
}

impl ConfigMapPolicy {
    /// The watch (to [`Self::run`]) and the handle requests read, [`Active::Pending`] until the first read.
    pub fn new(reference: &str, fallback: Policy) -> Result<(Self, PolicyHandle)> {
        let invalid = || Error::Config {
            flag: "--identity-policy-configmap",
            reason: format!("expected NAMESPACE/NAME, got {reference:?}"),
        };
        let (namespace, name) = reference.split_once('/').ok_or_else(invalid)?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(invalid());
        }
        let (sender, receiver) = watch::channel(Active::Pending);
        let watch = Self {
            reference: reference.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            fallback: Arc::new(fallback),
            sender,
        };
        Ok((watch, PolicyHandle(receiver)))
    }

    /// Runs until `shutdown`, reading with `client` (the client's own ServiceAccount). A failing watch is
    /// retried with backoff and keeps the policy it had.
    pub async fn run(self, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
        // A field selector on the name: RBAC can then limit list and watch to this one ConfigMap.
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        // What a (re)list found, published once the list is complete.
        let mut listed: Option<ConfigMap> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(configmap = %self.reference, error = %e, "cannot watch the identity policy")
                }
                Some(Ok(Event::Init)) => listed = None,
                Some(Ok(Event::InitApply(configmap))) => listed = Some(configmap),
                Some(Ok(Event::InitDone)) => self.publish(listed.take().as_ref()),
                Some(Ok(Event::Apply(configmap))) => self.publish(Some(&configmap)),
                Some(Ok(Event::Delete(_))) => self.publish(None),
            }
        }
    }

    fn publish(&self, configmap: Option<&ConfigMap>) {
        let next = active_for(configmap, &self.fallback);
        let changed = self.sender.send_if_modified(|current| {
            let changed = *current != next;
            *current = next.clone();
            changed
        });
        if !changed {
            return;
        }
        let reference = &self.reference;
        match (&next, configmap) {
            (Active::Ready(policy), None) => {
                counter!(m::IDENTITY_POLICY_UPDATES, "outcome" => "absent").increment(1);
                tracing::info!(%policy, impersonation_rbac = %policy.impersonation_rules(), "no ConfigMap {reference}: the identity policy of the flags applies");
            }
            (Active::Ready(policy), Some(_)) => {
                counter!(m::IDENTITY_POLICY_UPDATES, "outcome" => "applied").increment(1);
                tracing::info!(%policy, impersonation_rbac = %policy.impersonation_rules(), "identity policy from ConfigMap {reference} applied");
            }
            (Active::Invalid(reason), _) => {
                counter!(m::IDENTITY_POLICY_UPDATES, "outcome" => "invalid").increment(1);
                tracing::error!(%reason, "ConfigMap {reference} holds an invalid identity policy: every request from the hub is refused until it is fixed");
            }
            (Active::Pending, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn configmap(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some("tether-identity-policy".into()), ..Default::default() },
            data: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn no_configmap_is_the_flags_policy_and_a_bad_one_is_no_policy() {
        let flags = Arc::new(Policy::from_data(&BTreeMap::from([("allowGroups".into(), "devs".into())])).unwrap());
        assert_eq!(active_for(None, &flags), Active::Ready(flags.clone()));
        let empty = ConfigMap::default();
        assert_eq!(active_for(Some(&empty), &flags), Active::Ready(Arc::new(Policy::default())));
        let tightened = configmap(&[("allowGroups", "ops")]);
        let expected = Policy::from_data(&BTreeMap::from([("allowGroups".into(), "ops".into())])).unwrap();
        assert_eq!(active_for(Some(&tightened), &flags), Active::Ready(Arc::new(expected)));
        match active_for(Some(&configmap(&[("allowgroups", "ops")])), &flags) {
            Active::Invalid(reason) => assert!(reason.starts_with("allowgroups: unknown key"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut binary = configmap(&[]);
        binary.binary_data = Some(BTreeMap::from([("allowGroups".into(), k8s_openapi::ByteString(b"x".to_vec()))]));
        assert!(
            matches!(active_for(Some(&binary), &flags), Active::Invalid(r) if r.starts_with("binaryData.allowGroups"))
        );
    }

    #[tokio::test]
    async fn requests_wait_for_the_first_read_and_follow_every_change() {
        let (watch, handle) = ConfigMapPolicy::new("tether-system/tether-identity-policy", Policy::default()).unwrap();
        let request = || {
            let mut h = HeaderMap::new();
            h.insert("impersonate-user", "bob".parse().unwrap());
            h.append("impersonate-group", "ops".parse().unwrap());
            h
        };
        assert!(matches!(handle.apply(&mut request()), Err(Refusal::NotReady(_))));
        assert!(!handle.clone().wait_read(Duration::from_millis(1)).await);
        watch.publish(None);
        assert!(handle.clone().wait_read(Duration::from_secs(1)).await);
        let mut allowed = request();
        handle.apply(&mut allowed).unwrap();
        assert_eq!(allowed.get_all("impersonate-group").iter().collect::<Vec<_>>(), ["ops", "system:authenticated"]);
        watch.publish(Some(&configmap(&[("allowGroups", "devs")])));
        let mut tightened = request();
        handle.apply(&mut tightened).unwrap();
        assert_eq!(tightened.get_all("impersonate-group").iter().collect::<Vec<_>>(), ["system:authenticated"]);
        watch.publish(Some(&configmap(&[("allowGroups", "dev*")])));
        assert!(matches!(handle.apply(&mut request()), Err(Refusal::InvalidPolicy(r)) if r.contains("allowGroups")));
        assert!(matches!(
            ConfigMapPolicy::new("no-slash", Policy::default()),
            Err(Error::Config { flag: "--identity-policy-configmap", .. })
        ));
    }
}
