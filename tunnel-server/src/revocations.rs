//! Certificate revocations, mirrored from the hub. This is the contract the controller writes to (when a
//! ManagedCluster is deleted):
//!
//! - **Where.** ConfigMap `tether-revocations` in the lease namespace (`--lease-namespace`,
//!   `TETHER_LEASE_NAMESPACE`, default `tether-system`). A missing ConfigMap means no revocations.
//! - **Entries.** Each data key is a cluster name; its value is an RFC 3339 time T, UTC
//!   (`2026-11-25T13:20:00Z`; fractional seconds and other offsets are read correctly too). Every certificate
//!   of that cluster *issued* at or before T is revoked; one issued after T (the cluster registered again
//!   under the same name) is valid. A value that does not parse revokes nothing and is logged as a warning.
//! - **Issue time** of a certificate = its notBefore + [`tether_certs::BACKDATE`] (tether_certs backdates
//!   notBefore by that much; a certificate made elsewhere comes out slightly later, which is harmless).
//! - **Handshake.** Every spoke handshake is checked: a revoked certificate is refused by closing the
//!   connection with application error [`Code::Revoked`] and reason `certificate revoked`, counted in
//!   `tether_server_handshake_failures_total{reason="revoked"}`, logged as a warning naming the cluster.
//! - **Live tunnels.** When an entry appears or changes, every live tunnel whose certificate it revokes is
//!   closed at once the same way (`tether_server_tunnels_revoked_total{cluster}`); its client redials and is
//!   refused at the handshake.
//! - **Restarts.** The list lives in the hub apiserver. At start the tunnel-server reads it before it
//!   accepts spokes or reports ready (a watch, field selector `metadata.name=tether-revocations`); should the
//!   hub apiserver not answer within the readiness wait, spokes are accepted and any revoked tunnel is
//!   closed as soon as the list arrives.
//!
//! The tunnel-server only reads this ConfigMap (RBAC: get, list, watch on ConfigMaps in that namespace).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use metrics::counter;
use tether_proto::Code;
use tether_runtime::transport::code;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;
use crate::registry::{Registry, Tunnel};

pub use tether_api::revocations::CONFIG_MAP;
/// The reason of a connection closed with [`Code::Revoked`].
pub const CLOSE_REASON: &str = "certificate revoked";

/// When a certificate (DER) was issued: its notBefore plus the backdating tether_certs applies.
pub use tether_certs::issued_at;

/// The revocations in force: per cluster, the time up to which its certificates are revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    revoked_until: BTreeMap<String, SystemTime>,
}

/// An entry of the ConfigMap that was not understood, and so revokes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub cluster: String,
    pub reason: String,
}

impl RevocationList {
    /// The list a ConfigMap's data stands for, and the entries it leaves out.
    pub fn parse(data: &BTreeMap<String, String>) -> (Self, Vec<Ignored>) {
        let mut list = Self::default();
        let mut ignored = Vec::new();
        for (cluster, value) in data {
            match tether_api::revocations::parse_time(value) {
                Ok(t) => {
                    list.revoked_until.insert(cluster.clone(), SystemTime::from(t));
                }
                Err(reason) => ignored.push(Ignored { cluster: cluster.clone(), reason }),
            }
        }
        (list, ignored)
    }

    /// Whether a certificate of `cluster` issued at `issued` is revoked.
    pub fn revokes(&self, cluster: &str, issued: SystemTime) -> bool {
        self.revoked_until.get(cluster).is_some_and(|until| issued <= *until)
    }

    pub fn len(&self) -> usize {
        self.revoked_until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked_until.is_empty()
    }
}

/// The hub's revocations, shared by the handshake check and the task that closes revoked tunnels.
#[derive(Debug, Clone)]
pub struct Revocations {
    // A watch channel: readers take the current list without waiting, `enforce` wakes on every change.
    list: Arc<watch::Sender<RevocationList>>,
    synced: Arc<AtomicBool>,
}

impl Default for Revocations {
    /// Empty and not synced: to be filled by [`Revocations::watch`].
    fn default() -> Self {
        Self { list: Arc::new(watch::Sender::new(RevocationList::default())), synced: Arc::default() }
    }
}

impl Revocations {
    /// A fixed list, for benchmarks and tests without a hub apiserver.
    pub fn fixed(list: RevocationList) -> Self {
        let revocations = Self::default();
        revocations.list.send_replace(list);
        revocations.synced.store(true, Ordering::Relaxed);
        revocations
    }

    pub fn revokes(&self, cluster: &str, issued: SystemTime) -> bool {
        self.list.borrow().revokes(cluster, issued)
    }

    /// Whether the first list has arrived from the hub.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Closes the tunnel if its certificate is revoked; returns whether it did.
    pub fn close_if_revoked(&self, tunnel: &Tunnel) -> bool {
        if !self.revokes(&tunnel.cluster, tunnel.issued) {
            return false;
        }
        counter!(m::TUNNELS_REVOKED, "cluster" => tunnel.cluster.clone()).increment(1);
        warn!(cluster = %tunnel.cluster, instance = %tunnel.instance, "certificate revoked: closing the tunnel");
        tunnel.connection.close(code(Code::Revoked), CLOSE_REASON.as_bytes());
        true
    }

    /// Closes every revoked tunnel in `registry` now and whenever the list changes, until `shutdown`.
    /// A tunnel registering meanwhile checks itself after it is in the registry, so none slips between.
    pub async fn enforce(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut changes = self.list.subscribe();
        changes.mark_changed();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            for tunnel in registry.all() {
                self.close_if_revoked(&tunnel);
            }
        }
    }

    /// Keeps the list in step with the ConfigMap in `namespace` until `shutdown`; the watcher re-lists after
    /// any error.
    pub async fn watch(self, client: kube::Client, namespace: String, shutdown: CancellationToken) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut pending: Option<ConfigMap> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(e) => e,
                    None => return,
                },
            };
            match event {
                Ok(Event::Apply(config_map)) => self.update(Some(&config_map)),
                Ok(Event::Delete(_)) => self.update(None),
                Ok(Event::Init) => pending = None,
                Ok(Event::InitApply(config_map)) => pending = Some(config_map),
                Ok(Event::InitDone) => {
                    self.update(pending.take().as_ref());
                    self.synced.store(true, Ordering::Relaxed);
                }
                // The stream backs off and re-lists by itself.
                Err(e) => warn!(%namespace, error = %e, "watching ConfigMap {CONFIG_MAP}"),
            }
        }
    }

    fn update(&self, config_map: Option<&ConfigMap>) {
        let empty = BTreeMap::new();
        let data = config_map.and_then(|c| c.data.as_ref()).unwrap_or(&empty);
        let (list, ignored) = RevocationList::parse(data);
        for entry in ignored {
            warn!(cluster = %entry.cluster, reason = %entry.reason, "ignoring a revocation that is not an RFC 3339 time");
        }
        let revoked = list.len();
        let changed = self.list.send_if_modified(|current| {
            let changed = *current != list;
            *current = list;
            changed
        });
        if changed {
            info!(revoked, "revocations updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: &str = "2026-11-25T13:20:00Z";

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<k8s_openapi::jiff::Timestamp>().expect("test time"))
    }

    fn list(entries: &[(&str, &str)]) -> (RevocationList, Vec<Ignored>) {
        let data = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RevocationList::parse(&data)
    }

    #[test]
    fn certificates_issued_at_or_before_the_time_are_revoked() {
        let (list, ignored) = list(&[("echo", T)]);
        assert!(ignored.is_empty());
        assert!(list.revokes("echo", at("2026-11-25T13:19:59Z")));
        assert!(list.revokes("echo", at("2020-01-01T00:00:00Z")));
        assert!(list.revokes("echo", at(T)));
    }

    #[test]
    fn certificates_issued_after_the_time_are_valid() {
        let (list, _) = list(&[("echo", T)]);
        assert!(!list.revokes("echo", at("2026-11-25T13:20:01Z")));
        assert!(!list.revokes("echo", at(T) + Duration::from_millis(1)));
    }

    #[test]
    fn other_clusters_are_unaffected() {
        let (list, _) = list(&[("echo", T)]);
        assert!(!list.revokes("spoke-a", at("2020-01-01T00:00:00Z")));
        assert!(!list.revokes("ech", at("2020-01-01T00:00:00Z")));
        assert!(!RevocationList::default().revokes("echo", at("2020-01-01T00:00:00Z")));
    }

    #[test]
    fn unparsable_times_are_ignored_and_reported() {
        let (list, ignored) = list(&[("echo", "yesterday"), ("spoke-a", ""), ("spoke-b", T)]);
        let names: Vec<&str> = ignored.iter().map(|i| i.cluster.as_str()).collect();
        assert_eq!(names, ["echo", "spoke-a"]);
        assert!(!list.revokes("echo", at("2020-01-01T00:00:00Z")));
        assert!(!list.revokes("spoke-a", at("2020-01-01T00:00:00Z")));
        assert!(list.revokes("spoke-b", at("2020-01-01T00:00:00Z")));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn fractions_and_offsets_name_the_same_instant() {
        let (list, ignored) = list(&[("a", "2026-11-25T14:20:00+01:00"), ("b", "2026-11-25T13:20:00.5Z")]);
        assert!(ignored.is_empty());
        assert!(list.revokes("a", at(T)) && !list.revokes("a", at("2026-11-25T13:20:01Z")));
        assert!(list.revokes("b", at(T) + Duration::from_millis(500)));
        assert!(!list.revokes("b", at(T) + Duration::from_millis(501)));
    }

    #[test]
    fn issue_time_undoes_the_backdating() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("test-ca", now, day).expect("CA");
        let (_, csr) = tether_certs::spoke_key_and_csr("echo").expect("CSR");
        let pem = ca.sign_spoke_csr(&csr, "echo", now, day).expect("certificate");
        let der = tether_certs::pem_to_der_certs(&pem).expect("PEM").remove(0);
        let issued = issued_at(&der).expect("validity");
        // notBefore has whole seconds.
        assert!(issued <= now && now.duration_since(issued).expect("issued before now") < Duration::from_secs(1));
    }

    #[test]
    fn fixed_lists_are_synced_and_checked() {
        let (list, _) = list(&[("echo", T)]);
        let revocations = Revocations::fixed(list);
        assert!(revocations.is_synced());
        assert!(revocations.revokes("echo", at(T)));
        assert!(!Revocations::default().is_synced());
    }
}
