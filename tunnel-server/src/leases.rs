//! Liveness of tunnels as `coordination.k8s.io/v1` Leases on the hub. This is the contract the controller
//! reads (it sets a cluster's `Available` condition from them):
//!
//! - **One Lease per (cluster, replica)** in namespace `--lease-namespace` (`TETHER_LEASE_NAMESPACE`, default
//!   `tether-system`; it must exist: until it does, writes fail, are logged once and retried). The replica is
//!   `--replica-id` (`TETHER_REPLICA_ID`, default the hostname) made a DNS label by [`dns_label`]. The Lease
//!   is named `tether-<cluster>-<replica>`, made a DNS label the same way: lowercase, `[a-z0-9-]`, at most 63
//!   characters, and when it had to be cut, ending in `-` and 8 hex digits of a SHA-256 of the full name.
//!   Find Leases by their labels rather than by computing the name.
//! - **Labels** `tether.io/cluster=<cluster>`, `tether.io/replica=<replica>`.
//! - **Spec.** `holderIdentity` = replica; `leaseDurationSeconds` = `--lease-duration` (default 40s, whole
//!   seconds rounded up); `renewTime` = the time of the write (MicroTime); `acquireTime` = when the cluster's
//!   first tunnel registered on this replica (again after a going-away).
//! - **Annotation `tether.io/state`**: `connected` while this replica holds at least one tunnel of the
//!   cluster; `going-away` once the cluster's last tunnel here ended because the client sent GoAway (the Lease
//!   is then written once more and no longer renewed). A tunnel lost any other way (heartbeat lost,
//!   connection closed) is not written at all: the replica stops renewing and the controller sees missed
//!   renewals. A replica shutting down also just stops (its spokes reconnect to another replica).
//! - **Annotation `tether.io/client-instances`**: the instance names (from each client's Hello) of the
//!   cluster's connected clients on this replica, sorted, comma-separated (a `,` inside a name becomes `_`);
//!   empty when going away.
//! - **Annotations `tether.io/client-version`, `tether.io/apiserver-version`, `tether.io/ca-bundle`**: the
//!   newest connected client's version (from its Hello) and what it reported about its cluster (`SpokeInfo`:
//!   the spoke apiserver's version and CA bundle, PEM); absent while unknown and when going away.
//! - **When.** Every `--lease-renew-interval` (`TETHER_LEASE_RENEW_INTERVAL`, default 10s) per cluster with a
//!   tunnel here, and at once when a cluster's first tunnel registers, when its set of client instances
//!   changes, and when its last tunnel ends with GoAway. Failed writes are retried after 0.5 s, doubling, at
//!   most every renew interval; errors are never fatal.
//! - **How.** Server-side apply, field manager `tether-tunnel-server`, forced: a write creates the Lease if
//!   it is missing and owns every field above. Leases are never deleted by the tunnel-server.
//!
//! The writes run in their own task, woken by the registry on every change and by a timer; nothing here is
//! on the request path.
use std::collections::{btree_map, BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

pub use tether_api::lease::{
    dns_label, lease_name, State, APISERVER_VERSION_ANNOTATION, CA_BUNDLE_ANNOTATION, CLIENT_INSTANCES_ANNOTATION,
    CLIENT_VERSION_ANNOTATION, REPLICA_LABEL, STATE_ANNOTATION,
};
pub use tether_api::CLUSTER_LABEL;

use crate::metrics as m;
use crate::registry::{Held, Holdings, Registry};

pub const FIELD_MANAGER: &str = "tether-tunnel-server";
/// Lease writes in flight at once, each one apply round trip to the hub apiserver.
const CONCURRENT_WRITES: usize = 16;
/// First retry after a failed write; doubled per failure, capped at the renew interval.
const RETRY_BASE: Duration = Duration::from_millis(500);
/// A renew interval below this would spin.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    /// This replica's name, already a DNS label ([`replica_id`]).
    pub replica: String,
    pub duration: Duration,
    pub renew_interval: Duration,
}

/// What one Lease of this replica says, apart from the time of the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub state: State,
    pub held: Held,
    pub acquired: Timestamp,
}

/// `given`, or the hostname, as a DNS label.
pub fn replica_id(given: Option<&str>) -> String {
    match given {
        Some(id) => dns_label(id),
        None => dns_label(&hostname()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "tunnel-server".into())
}

/// The Lease this replica applies for `cluster`, written at `now`.
pub fn lease(settings: &LeaseSettings, cluster: &str, holding: &Holding, now: Timestamp) -> Lease {
    let labels = BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
        (REPLICA_LABEL.to_string(), settings.replica.clone()),
    ]);
    let held = &holding.held;
    let instances: Vec<String> = held.instances.iter().map(|i| i.replace(',', "_")).collect();
    let mut annotations = BTreeMap::from([
        (STATE_ANNOTATION.to_string(), holding.state.as_str().to_string()),
        (CLIENT_INSTANCES_ANNOTATION.to_string(), instances.join(",")),
    ]);
    let reported = [
        (CLIENT_VERSION_ANNOTATION, &held.client_version),
        (APISERVER_VERSION_ANNOTATION, &held.described.apiserver_version),
        (CA_BUNDLE_ANNOTATION, &held.described.ca_bundle),
    ];
    for (key, value) in reported {
        if !value.is_empty() {
            annotations.insert(key.to_string(), value.clone());
        }
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(cluster, &settings.replica)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.replica.clone()),
            lease_duration_seconds: Some(whole_seconds(settings.duration)),
            acquire_time: Some(MicroTime(holding.acquired)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX).max(1)
}

/// `time` in the microseconds a MicroTime keeps.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let micros = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    Timestamp::from_microsecond(i64::try_from(micros).unwrap_or(i64::MAX)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Keeps this replica's Leases written until `shutdown` (then just stops: no going-away for a replica that
/// leaves, its spokes reconnect elsewhere).
pub async fn run(client: kube::Client, registry: Arc<Registry>, settings: LeaseSettings, shutdown: CancellationToken) {
    let renew_interval = settings.renew_interval.max(MIN_RENEW_INTERVAL);
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut tracker = Tracker::default();
    let mut namespace_missing = false;
    loop {
        tracker.observe(registry.holdings(), Instant::now(), timestamp(SystemTime::now()));
        let due = tracker.due(Instant::now());
        if !due.is_empty() {
            let now = timestamp(SystemTime::now());
            let writes = futures::stream::iter(due)
                .map(|(cluster, holding)| {
                    let lease = lease(&settings, &cluster, &holding, now);
                    let (api, params) = (&api, &params);
                    async move {
                        let name = lease.metadata.name.clone().unwrap_or_default();
                        let result = api.patch(&name, params, &Patch::Apply(&lease)).await.map(|_| ());
                        (cluster, holding.state, result)
                    }
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect::<Vec<_>>();
            let results = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                results = writes => results,
            };
            let after = Instant::now();
            for (cluster, state, result) in results {
                let failures = tracker.written(&cluster, result.is_ok(), after, renew_interval);
                match result {
                    Ok(()) => {
                        counter!(m::LEASE_RENEWALS, "outcome" => "ok").increment(1);
                        if std::mem::take(&mut namespace_missing) {
                            info!(namespace = %settings.namespace, "Lease namespace exists now");
                        }
                        match state {
                            State::GoingAway => info!(%cluster, "Lease marked going-away"),
                            State::Connected => trace!(%cluster, "Lease renewed"),
                        }
                    }
                    Err(e) => {
                        counter!(m::LEASE_RENEWALS, "outcome" => "error").increment(1);
                        if matches!(&e, kube::Error::Api(status) if status.code == 404) {
                            // An apply creates a missing Lease, so a 404 is the namespace. Said once until it exists.
                            if !std::mem::replace(&mut namespace_missing, true) {
                                warn!(namespace = %settings.namespace, error = %e, "Lease namespace missing; retrying");
                            }
                        } else if failures.is_power_of_two() {
                            warn!(%cluster, error = %e, failures, "writing the Lease failed; retrying");
                        } else {
                            debug!(%cluster, error = %e, failures, "writing the Lease failed; retrying");
                        }
                    }
                }
            }
        }
        let wake = tracker.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = registry.changed() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// The Leases this replica wants written and when each is next due; no I/O, driven by the registry's
/// [`Holdings`] and the outcome of each write.
#[derive(Debug, Default)]
struct Tracker {
    held: BTreeMap<String, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    holding: Holding,
    due: Instant,
    failures: u32,
}

impl Tracker {
    /// New clusters and changed instance lists or descriptions are due at once; a cluster whose last tunnel said GoAway is
    /// due at once as going-away; a cluster lost any other way is forgotten, so its Lease goes stale.
    fn observe(&mut self, holdings: Holdings, now: Instant, stamp: Timestamp) {
        let Holdings { connected, went_away } = holdings;
        let went_away: HashSet<String> = went_away.into_iter().collect();
        self.held.retain(|cluster, tracked| {
            connected.contains_key(cluster) || went_away.contains(cluster) || tracked.holding.state == State::GoingAway
        });
        for cluster in went_away {
            let going_away = Tracked {
                holding: Holding { state: State::GoingAway, held: Held::default(), acquired: stamp },
                due: now,
                failures: 0,
            };
            match self.held.entry(cluster) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(going_away);
                }
                btree_map::Entry::Occupied(mut entry) => {
                    let tracked = entry.get_mut();
                    if tracked.holding.state == State::Connected {
                        tracked.holding.state = State::GoingAway;
                        tracked.holding.held = Held::default();
                        tracked.due = now;
                    }
                }
            }
        }
        for (cluster, held) in connected {
            let connected = Tracked {
                holding: Holding { state: State::Connected, held: held.clone(), acquired: stamp },
                due: now,
                failures: 0,
            };
            match self.held.entry(cluster) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(connected);
                }
                btree_map::Entry::Occupied(mut entry) => {
                    let tracked = entry.get_mut();
                    if tracked.holding.state == State::GoingAway {
                        *tracked = connected;
                    } else if tracked.holding.held != held {
                        tracked.holding.held = held;
                        tracked.due = now;
                    }
                }
            }
        }
    }

    fn due(&self, now: Instant) -> Vec<(String, Holding)> {
        self.held.iter().filter(|(_, t)| t.due <= now).map(|(c, t)| (c.clone(), t.holding.clone())).collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.held.values().map(|t| t.due).min()
    }

    /// Records a write's outcome; returns the failures in a row for the cluster.
    fn written(&mut self, cluster: &str, ok: bool, now: Instant, renew_interval: Duration) -> u32 {
        let Some(tracked) = self.held.get_mut(cluster) else { return 0 };
        if !ok {
            tracked.failures = tracked.failures.saturating_add(1);
            let backoff = RETRY_BASE.saturating_mul(1 << tracked.failures.min(16).saturating_sub(1));
            tracked.due = now + backoff.min(renew_interval);
            return tracked.failures;
        }
        if tracked.holding.state == State::GoingAway {
            self.held.remove(cluster);
        } else {
            tracked.failures = 0;
            tracked.due = now + renew_interval;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Described;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "tether-system".into(),
            replica: "hub-7d9f-x2".into(),
            duration: Duration::from_secs(40),
            renew_interval: Duration::from_secs(10),
        }
    }

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().expect("valid timestamp")
    }

    #[test]
    fn labels_pass_through_and_others_are_made_labels() {
        assert_eq!(dns_label("e2e-hub"), "e2e-hub");
        assert_eq!(dns_label("Hub_Replica.Example.COM"), "hub-replica-example-com");
        assert_eq!(dns_label("--hub--"), "hub");
        assert_eq!(dns_label("hüb"), "h-b");
        assert_eq!(replica_id(Some("Tunnel-Server-0")), "tunnel-server-0");
        assert!(is_dns_label(&replica_id(None)));
        assert!(is_dns_label(&dns_label("")));
        assert!(is_dns_label(&dns_label("...")));
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let exact = "a".repeat(63);
        assert_eq!(dns_label(&exact), exact);
        let long = format!("{}-x", "a".repeat(70));
        let label = dns_label(&long);
        assert_eq!(label.len(), 63);
        assert!(is_dns_label(&label));
        assert!(label.starts_with(&"a".repeat(54)));
        assert_eq!(label, dns_label(&long), "deterministic");
        assert_ne!(label, dns_label(&format!("{}-y", "a".repeat(70))), "different names stay different");
        // A cut that lands on a '-' does not leave "--hash" or a trailing '-'.
        let dashes = format!("{}-{}", "b".repeat(53), "c".repeat(20));
        assert!(is_dns_label(&dns_label(&dashes)));
        assert!(!dns_label(&dashes).contains("--"));
    }

    #[test]
    fn lease_names() {
        assert_eq!(lease_name("spoke-a", "e2e-hub"), "tether-spoke-a-e2e-hub");
        let cluster = "c".repeat(63);
        let name = lease_name(&cluster, "tunnel-server-5c8d7b9f4-abcde");
        assert!(is_dns_label(&name), "{name}");
        assert_ne!(name, lease_name(&cluster, "tunnel-server-5c8d7b9f4-fghij"));
    }

    #[test]
    fn the_lease_written_while_connected() {
        let holding = Holding {
            state: State::Connected,
            held: Held {
                instances: vec!["spoke-a-0".into(), "spoke-a-1".into()],
                client_version: "0.1.0".into(),
                described: Described { apiserver_version: "v1.20.2".into(), ca_bundle: "PEM".into() },
            },
            acquired: at("2026-11-25T10:00:00.5Z"),
        };
        let lease = lease(&settings(), "spoke-a", &holding, at("2026-11-25T10:05:30.123456Z"));
        let json = serde_json::to_value(&lease).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": "tether-spoke-a-hub-7d9f-x2",
                    "namespace": "tether-system",
                    "labels": {"tether.io/cluster": "spoke-a", "tether.io/replica": "hub-7d9f-x2"},
                    "annotations": {
                        "tether.io/state": "connected",
                        "tether.io/client-instances": "spoke-a-0,spoke-a-1",
                        "tether.io/client-version": "0.1.0",
                        "tether.io/apiserver-version": "v1.20.2",
                        "tether.io/ca-bundle": "PEM",
                    },
                },
                "spec": {
                    "holderIdentity": "hub-7d9f-x2",
                    "leaseDurationSeconds": 40,
                    "acquireTime": "2026-11-25T10:00:00.500000Z",
                    "renewTime": "2026-11-25T10:05:30.123456Z",
                },
            })
        );
    }

    #[test]
    fn the_lease_written_when_the_client_goes_away() {
        let holding = Holding { state: State::GoingAway, held: Held::default(), acquired: at("2026-11-25T10:00:00Z") };
        let settings = LeaseSettings { duration: Duration::from_millis(1500), ..settings() };
        let lease = lease(&settings, "spoke-b", &holding, at("2026-11-25T11:00:00Z"));
        let annotations = lease.metadata.annotations.expect("annotations");
        assert_eq!(annotations[STATE_ANNOTATION], "going-away");
        assert_eq!(annotations[CLIENT_INSTANCES_ANNOTATION], "");
        assert!(!annotations.contains_key(CLIENT_VERSION_ANNOTATION), "unknown fields are left out");
        let spec = lease.spec.expect("spec");
        assert_eq!(spec.lease_duration_seconds, Some(2), "rounded up to whole seconds");
        assert_eq!(spec.renew_time, Some(MicroTime(at("2026-11-25T11:00:00Z"))));
        assert_eq!(lease.metadata.labels.expect("labels")[CLUSTER_LABEL], "spoke-b");
    }

    #[test]
    fn instance_names_cannot_break_the_list() {
        let holding = Holding {
            state: State::Connected,
            held: Held { instances: vec!["a,b".into(), "c".into()], ..Default::default() },
            acquired: at("2026-11-25T10:00:00Z"),
        };
        let lease = lease(&settings(), "spoke-a", &holding, at("2026-11-25T10:00:00Z"));
        assert_eq!(lease.metadata.annotations.expect("annotations")[CLIENT_INSTANCES_ANNOTATION], "a_b,c");
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_064_800_123_456_789);
        assert_eq!(timestamp(time), at("2025-11-25T10:00:00.123456Z"));
    }

    fn holdings(connected: &[(&str, &[&str])], went_away: &[&str]) -> Holdings {
        Holdings {
            connected: connected
                .iter()
                .map(|(c, i)| {
                    let held = Held { instances: i.iter().map(|s| s.to_string()).collect(), ..Default::default() };
                    (c.to_string(), held)
                })
                .collect(),
            went_away: went_away.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn due(tracker: &Tracker, now: Instant) -> Vec<(String, State, Vec<String>)> {
        tracker.due(now).into_iter().map(|(c, h)| (c, h.state, h.held.instances)).collect()
    }

    fn connected(cluster: &str, instances: &[&str]) -> (String, State, Vec<String>) {
        (cluster.into(), State::Connected, instances.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn renews_while_connected_and_at_once_on_changes() {
        let renew = Duration::from_secs(10);
        let (t0, stamp) = (Instant::now(), at("2026-11-25T10:00:00Z"));
        let mut tracker = Tracker::default();
        tracker.observe(holdings(&[("a", &["a-0"])], &[]), t0, stamp);
        assert_eq!(due(&tracker, t0), [connected("a", &["a-0"])], "first tunnel: written at once");
        tracker.written("a", true, t0, renew);
        assert_eq!(due(&tracker, t0), []);
        assert_eq!(tracker.next_due(), Some(t0 + renew));

        // Same holdings later: nothing new, renewal at the interval, acquire time kept.
        let t1 = t0 + Duration::from_secs(3);
        tracker.observe(holdings(&[("a", &["a-0"])], &[]), t1, at("2026-11-25T10:00:03Z"));
        assert_eq!(due(&tracker, t1), []);
        assert_eq!(due(&tracker, t0 + renew), [connected("a", &["a-0"])]);
        assert_eq!(tracker.due(t0 + renew)[0].1.acquired, stamp);

        // A second client instance: at once.
        tracker.observe(holdings(&[("a", &["a-0", "a-1"])], &[]), t1, at("2026-11-25T10:00:03Z"));
        assert_eq!(due(&tracker, t1), [connected("a", &["a-0", "a-1"])]);
        assert_eq!(tracker.due(t1)[0].1.acquired, stamp);
    }

    #[test]
    fn a_lost_tunnel_stops_renewals_and_a_go_away_is_written_once() {
        let renew = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        tracker.observe(holdings(&[("a", &["a-0"]), ("b", &["b-0"])], &[]), t0, at("2026-11-25T10:00:00Z"));
        tracker.written("a", true, t0, renew);
        tracker.written("b", true, t0, renew);

        let t1 = t0 + Duration::from_secs(1);
        tracker.observe(holdings(&[], &["b"]), t1, at("2026-11-25T10:00:01Z"));
        assert_eq!(due(&tracker, t1), [("b".to_string(), State::GoingAway, vec![])]);
        assert_eq!(tracker.due(t1)[0].1.acquired, at("2026-11-25T10:00:00Z"));
        tracker.written("b", true, t1, renew);
        assert_eq!(tracker.next_due(), None, "a (lost) is forgotten, b (went away) is done");

        // Went away before it was ever written: still said.
        tracker.observe(holdings(&[], &["c"]), t1, at("2026-11-25T10:00:01Z"));
        assert_eq!(due(&tracker, t1), [("c".to_string(), State::GoingAway, vec![])]);
    }

    #[test]
    fn a_going_away_write_is_retried_until_the_cluster_returns() {
        let renew = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        tracker.observe(holdings(&[("a", &["a-0"])], &[]), t0, at("2026-11-25T10:00:00Z"));
        tracker.written("a", true, t0, renew);
        tracker.observe(holdings(&[], &["a"]), t0, at("2026-11-25T10:00:00Z"));
        assert_eq!(tracker.written("a", false, t0, renew), 1);
        tracker.observe(holdings(&[], &[]), t0, at("2026-11-25T10:00:00Z"));
        assert_eq!(due(&tracker, t0 + RETRY_BASE), [("a".to_string(), State::GoingAway, vec![])]);

        let back = at("2026-11-25T10:00:05Z");
        tracker.observe(holdings(&[("a", &["a-1"])], &[]), t0, back);
        assert_eq!(due(&tracker, t0), [connected("a", &["a-1"])]);
        assert_eq!(tracker.due(t0)[0].1.acquired, back, "a new acquisition");
    }

    #[test]
    fn failed_writes_back_off_up_to_the_renew_interval() {
        let renew = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut tracker = Tracker::default();
        tracker.observe(holdings(&[("a", &[])], &[]), t0, at("2026-11-25T10:00:00Z"));
        let mut waits = Vec::new();
        for failures in 1..=7 {
            assert_eq!(tracker.written("a", false, t0, renew), failures);
            waits.push(tracker.next_due().expect("due") - t0);
        }
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(waits, [ms(500), ms(1000), ms(2000), ms(4000), ms(8000), renew, renew]);
        assert_eq!(tracker.written("a", true, t0, renew), 0);
        assert_eq!(tracker.next_due(), Some(t0 + renew));
    }

    #[test]
    fn a_new_description_is_written_at_once() {
        let renew = Duration::from_secs(10);
        let (t0, stamp) = (Instant::now(), at("2026-11-25T10:00:00Z"));
        let mut tracker = Tracker::default();
        tracker.observe(holdings(&[("a", &["a-0"])], &[]), t0, stamp);
        tracker.written("a", true, t0, renew);
        let mut described = holdings(&[("a", &["a-0"])], &[]);
        described.connected.get_mut("a").unwrap().described.apiserver_version = "v1.20.2".into();
        tracker.observe(described, t0 + Duration::from_secs(1), stamp);
        let due = tracker.due(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].1.held.described.apiserver_version, "v1.20.2");
    }
}
