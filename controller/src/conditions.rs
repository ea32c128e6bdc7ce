//! What a ManagedCluster's conditions should say, as pure functions of its spec, the Leases the
//! tunnel-servers renew for it, the conditions others set, and `now`.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::ManagedCluster;

pub const HUB_ACCEPTED: &str = "HubAccepted";
pub const JOINED: &str = "Joined";
pub const AVAILABLE: &str = "Available";
pub const READY: &str = "Ready";
/// Set by [`crate::auto`] for `Auto` clusters: whether the controller could apply the spoke manifest.
pub const MANIFEST_APPLIED: &str = "ManifestApplied";
/// The conditions [`desired`] computes; every other type belongs to someone else and is kept as it is,
/// except [`MANIFEST_APPLIED`], which the reconciler sets from what auto mode did.
pub const OWNED: [&str; 4] = [HUB_ACCEPTED, JOINED, AVAILABLE, READY];

/// What the tunnel-servers write on their Leases.
pub use tether_api::lease::{
    State as LeaseState, APISERVER_VERSION_ANNOTATION, CA_BUNDLE_ANNOTATION, CLIENT_VERSION_ANNOTATION,
    STATE_ANNOTATION,
};
pub use tether_api::CLUSTER_LABEL;

/// How stale `status.lastSeen` may grow while nothing else in the status changes. Every renewal is a
/// Lease write already; echoing each into the ManagedCluster would double the hub apiserver's writes (100
/// a second at 1,000 clusters renewing every 10 s) and wake every watcher of ManagedClusters each time, as
/// Kubernetes found for Nodes before their heartbeats moved to Leases (the kubelet now reports an unchanged
/// node status every 5 minutes). The Lease's `renewTime` stays exact, and any other change (a condition,
/// a holder) writes the latest value with it.
pub const LAST_SEEN_REFRESH: Duration = Duration::from_secs(300);

/// Whether `status.lastSeen` (`written`) should be rewritten for the Leases' latest renewal `seen`, when
/// nothing else changed.
pub fn last_seen_due(written: Option<Timestamp>, seen: Option<Timestamp>) -> bool {
    match (written, seen) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(written), Some(seen)) => seen.duration_since(written).unsigned_abs() >= LAST_SEEN_REFRESH,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often tunnel-servers renew.
    pub renew_interval: Duration,
    /// Renewals that may be missed before `Available` turns Unknown.
    pub missed_renewals: u32,
}

/// What the Leases of one cluster say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// Replicas whose Lease is fresh and not going away.
    pub holders: Vec<String>,
    pub last_seen: Option<Timestamp>,
    /// At least one Lease exists: the cluster has connected at some point.
    pub ever_connected: bool,
    /// Every replica that last held it says the client went away.
    pub going_away: bool,
    /// What the most recently renewed Lease reports about the spoke (client and apiserver version, CA bundle).
    pub reported: Reported,
}

/// What a client reported at registration, through the Lease of the replica it connected to. `None` where
/// no Lease says: the status keeps what it last knew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub client_version: Option<String>,
    pub apiserver_version: Option<String>,
    pub ca_bundle: Option<String>,
}

pub fn view_leases(leases: &[Lease], liveness: Liveness, now: Timestamp) -> LeaseView {
    let window = liveness.renew_interval * liveness.missed_renewals.max(1);
    let mut view = LeaseView {
        holders: Vec::new(),
        last_seen: None,
        ever_connected: !leases.is_empty(),
        going_away: false,
        reported: Reported::default(),
    };
    let mut fresh_going_away = 0;
    let mut newest_report: Option<Timestamp> = None;
    for lease in leases {
        let Some(spec) = &lease.spec else { continue };
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let annotation =
            |key: &str| lease.metadata.annotations.as_ref().and_then(|a| a.get(key)).filter(|v| !v.is_empty()).cloned();
        let reported = Reported {
            client_version: annotation(CLIENT_VERSION_ANNOTATION),
            apiserver_version: annotation(APISERVER_VERSION_ANNOTATION),
            ca_bundle: annotation(CA_BUNDLE_ANNOTATION),
        };
        if reported != Reported::default() && renewed.is_some() && renewed >= newest_report {
            newest_report = renewed;
            view.reported = reported;
        }
        if let Some(r) = renewed {
            view.last_seen = Some(view.last_seen.map_or(r, |l: Timestamp| l.max(r)));
        }
        let fresh = renewed.is_some_and(|r| now.duration_since(r).unsigned_abs() <= window || r > now);
        let leaving = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE_ANNOTATION))
            .is_some_and(|s| LeaseState::parse(s) == Some(LeaseState::GoingAway));
        match (fresh, leaving) {
            (true, false) => view.holders.push(spec.holder_identity.clone().unwrap_or_default()),
            (_, true) => fresh_going_away += 1,
            (false, false) => {}
        }
    }
    view.holders.sort();
    view.going_away = view.holders.is_empty() && fresh_going_away > 0;
    view
}

/// The desired conditions: this controller's four, recomputed, and everyone else's, untouched.
/// `lastTransitionTime` moves only when a condition's status changes.
pub fn desired(cluster: &ManagedCluster, leases: &LeaseView, now: Timestamp) -> Vec<Condition> {
    let current = current(cluster);
    let make = |type_: &str, status: &str, reason: &str, message: String| {
        condition(cluster, type_, status, reason, message, now)
    };

    let accepted = if cluster.spec.hub_accepts_client {
        make(HUB_ACCEPTED, "True", "HubClusterAdminAccepted", "the hub accepts this cluster's client".into())
    } else {
        make(HUB_ACCEPTED, "False", "NotAccepted", "spec.hubAcceptsClient is false: no certificate is signed".into())
    };
    let joined = if leases.ever_connected {
        make(JOINED, "True", "TunnelEstablished", "the cluster's client has connected to the hub".into())
    } else {
        make(JOINED, "False", "AwaitingClient", "no client of this cluster has connected yet".into())
    };
    let available = if !leases.holders.is_empty() {
        make(AVAILABLE, "True", "TunnelUp", format!("tunnel held by {}", leases.holders.join(", ")))
    } else if leases.going_away {
        make(AVAILABLE, "False", "ClientGoingAway", "the cluster's client said it is going away".into())
    } else if leases.ever_connected {
        make(AVAILABLE, "Unknown", "LeaseNotRenewed", "no tunnel-server has renewed the cluster's lease in time".into())
    } else {
        make(AVAILABLE, "Unknown", "NeverConnected", "the cluster has not connected yet".into())
    };

    let others: Vec<&Condition> =
        current.iter().filter(|c| !OWNED.contains(&c.type_.as_str()) && c.type_ != MANIFEST_APPLIED).collect();
    let unmet: Vec<&str> = cluster
        .spec
        .readiness_gates
        .iter()
        .filter(|gate| !others.iter().any(|c| &c.type_ == *gate && c.status == "True"))
        .map(String::as_str)
        .collect();
    let ready = match (available.status.as_str(), unmet.is_empty()) {
        ("True", true) => make(READY, "True", "Ready", "available and every readiness gate is True".into()),
        ("True", false) => make(READY, "False", "ReadinessGatesPending", format!("waiting for {}", unmet.join(", "))),
        _ => make(READY, "False", "NotAvailable", "the cluster is not available".into()),
    };

    let mut conditions = vec![accepted, joined, available, ready];
    conditions.extend(others.into_iter().cloned());
    conditions
}

fn current(cluster: &ManagedCluster) -> &[Condition] {
    cluster.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
}

/// A condition of `cluster` as of its current generation; `lastTransitionTime` is kept from the current
/// condition of that type when the status is the same, `now` otherwise.
pub fn condition(
    cluster: &ManagedCluster,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    let since = current(cluster)
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: cluster.metadata.generation,
        last_transition_time: since,
    }
}

/// The current condition of `type_`, if any.
pub fn find<'a>(cluster: &'a ManagedCluster, type_: &str) -> Option<&'a Condition> {
    current(cluster).iter().find(|c| c.type_ == type_)
}

/// Changes worth an Event: (type, old status, new status) for every owned condition whose status moved.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<(String, String, String)> {
    new.iter()
        .filter(|c| OWNED.contains(&c.type_.as_str()))
        .filter_map(|c| {
            let before = old.iter().find(|o| o.type_ == c.type_).map(|o| o.status.clone()).unwrap_or_default();
            (before != c.status).then(|| (c.type_.clone(), before, c.status.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
