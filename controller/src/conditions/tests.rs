use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::*;
use crate::crd::{ManagedClusterSpec, ManagedClusterStatus};

const LIVENESS: Liveness = Liveness { renew_interval: Duration::from_secs(10), missed_renewals: 3 };

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn lease(holder: &str, renewed: i64, state: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("tether-a-{holder}")),
            annotations: Some(BTreeMap::from([(STATE_ANNOTATION.to_string(), state.to_string())])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(renewed))),
            ..Default::default()
        }),
    }
}

fn cluster(accepted: bool, gates: &[&str], others: Vec<Condition>) -> ManagedCluster {
    let mut mc = ManagedCluster::new(
        "a",
        ManagedClusterSpec {
            hub_accepts_client: accepted,
            readiness_gates: gates.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        },
    );
    mc.metadata.generation = Some(4);
    mc.status = Some(ManagedClusterStatus { conditions: others, ..Default::default() });
    mc
}

fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> &'a str {
    &conditions.iter().find(|c| c.type_ == type_).unwrap().status
}

#[test]
fn fresh_lease_means_available_and_stale_means_unknown() {
    let leases = [lease("hub-0", 0, "connected")];
    let fresh = view_leases(&leases, LIVENESS, at(29));
    assert_eq!(fresh.holders, ["hub-0"]);
    assert_eq!(status_of(&desired(&cluster(true, &[], vec![]), &fresh, at(29)), AVAILABLE), "True");
    // Three missed renewals of ten seconds: unknown from the 31st second on.
    let stale = view_leases(&leases, LIVENESS, at(31));
    assert!(stale.holders.is_empty() && stale.ever_connected && !stale.going_away);
    let conditions = desired(&cluster(true, &[], vec![]), &stale, at(31));
    assert_eq!(status_of(&conditions, AVAILABLE), "Unknown");
    assert_eq!(status_of(&conditions, JOINED), "True");
    assert_eq!(status_of(&conditions, READY), "False");
}

#[test]
fn going_away_is_false_unless_another_replica_holds_it() {
    let gone = view_leases(&[lease("hub-0", 0, LeaseState::GoingAway.as_str())], LIVENESS, at(1));
    assert!(gone.going_away);
    assert_eq!(status_of(&desired(&cluster(true, &[], vec![]), &gone, at(1)), AVAILABLE), "False");
    let moved = view_leases(
        &[lease("hub-0", 0, LeaseState::GoingAway.as_str()), lease("hub-1", 1, "connected")],
        LIVENESS,
        at(2),
    );
    assert_eq!(moved.holders, ["hub-1"]);
    assert!(!moved.going_away);
}

#[test]
fn never_connected_is_unknown_and_not_joined() {
    let none = view_leases(&[], LIVENESS, at(0));
    let conditions = desired(&cluster(false, &[], vec![]), &none, at(0));
    assert_eq!(status_of(&conditions, HUB_ACCEPTED), "False");
    assert_eq!(status_of(&conditions, JOINED), "False");
    assert_eq!(status_of(&conditions, AVAILABLE), "Unknown");
    assert!(conditions.iter().all(|c| c.observed_generation == Some(4)));
}

#[test]
fn ready_waits_for_every_gate_and_keeps_others_conditions() {
    let gate = |status: &str| Condition {
        type_: "example.com/Configured".into(),
        status: status.into(),
        reason: "ByOperator".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(at(0)),
    };
    let up = view_leases(&[lease("hub-0", 0, "connected")], LIVENESS, at(1));
    let waiting = desired(&cluster(true, &["example.com/Configured"], vec![gate("False")]), &up, at(1));
    assert_eq!(status_of(&waiting, READY), "False");
    assert!(waiting.iter().find(|c| c.type_ == READY).unwrap().message.contains("example.com/Configured"));
    let done = desired(&cluster(true, &["example.com/Configured"], vec![gate("True")]), &up, at(1));
    assert_eq!(status_of(&done, READY), "True");
    // The gate condition belongs to its actor and is carried over untouched.
    assert_eq!(done.iter().filter(|c| c.type_ == "example.com/Configured").count(), 1);
}

#[test]
fn transition_time_moves_only_with_status() {
    let up = view_leases(&[lease("hub-0", 0, "connected")], LIVENESS, at(1));
    let first = desired(&cluster(true, &[], vec![]), &up, at(1));
    let mut mc = cluster(true, &[], vec![]);
    mc.status = Some(ManagedClusterStatus { conditions: first.clone(), ..Default::default() });
    let later = desired(&mc, &view_leases(&[lease("hub-0", 5, "connected")], LIVENESS, at(6)), at(6));
    assert_eq!(later, first);
    assert!(transitions(&first, &later).is_empty());
    let down = desired(&mc, &view_leases(&[lease("hub-0", 0, LeaseState::GoingAway.as_str())], LIVENESS, at(7)), at(7));
    let available = down.iter().find(|c| c.type_ == AVAILABLE).unwrap();
    assert_eq!(available.last_transition_time, Time(at(7)));
    let moved = transitions(&first, &down);
    assert!(moved.contains(&(AVAILABLE.to_string(), "True".to_string(), "False".to_string())));
}

#[test]
fn the_newest_lease_tells_what_the_client_reported() {
    let reporting = |holder: &str, renewed: i64, version: &str| {
        let mut l = lease(holder, renewed, "connected");
        let annotations = l.metadata.annotations.as_mut().unwrap();
        annotations.insert(CLIENT_VERSION_ANNOTATION.into(), "0.1.0".into());
        annotations.insert(APISERVER_VERSION_ANNOTATION.into(), version.into());
        annotations.insert(CA_BUNDLE_ANNOTATION.into(), "PEM".into());
        l
    };
    let leases = [reporting("r1", 100, "v1.20.1"), reporting("r2", 105, "v1.20.2"), lease("r3", 110, "connected")];
    let view = view_leases(&leases, LIVENESS, at(110));
    assert_eq!(
        view.reported,
        Reported {
            client_version: Some("0.1.0".into()),
            apiserver_version: Some("v1.20.2".into()),
            ca_bundle: Some("PEM".into())
        }
    );
    // Leases that say nothing leave it unknown (the status keeps what it had).
    assert_eq!(view_leases(&[lease("r3", 110, "connected")], LIVENESS, at(110)).reported, Reported::default());
}

#[test]
fn last_seen_is_rewritten_alone_only_once_stale() {
    let refresh = LAST_SEEN_REFRESH.as_secs() as i64;
    assert!(last_seen_due(None, Some(at(0))), "the first renewal is written");
    assert!(!last_seen_due(Some(at(0)), None), "no Lease: the status keeps what it knew");
    assert!(!last_seen_due(Some(at(0)), Some(at(refresh - 1))));
    assert!(last_seen_due(Some(at(0)), Some(at(refresh))));
}
