//! Approval and signing decisions: pure ones on their own, and each situation against a scripted hub API
//! (which calls it makes, in which order, with which bodies — and which make none).
use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequestSpec, CertificateSigningRequestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::*;
use crate::crd::ManagedClusterSpec;
use crate::fixtures::{call, csr_context, not_found, Seen};

const NAME: &str = "tether-a-0011aabb";
const CLUSTER_PATH: &str = "/apis/tether.io/v1alpha1/managedclusters/a";
const APPROVAL_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests/tether-a-0011aabb/approval?";
const STATUS_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests/tether-a-0011aabb/status?";
/// A CSR with an RSA-1024 key for `CN=weak-cluster` (the certs crate's test data).
const RSA_1024_CSR: &str = include_str!("../../../certs/src/testdata/rsa1024.csr");
/// A CSR without a common name, made with `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256
/// -nodes -subj "/O=tether:spokes"` (tether-certs always names one).
const ANONYMOUS_CSR: &str = include_str!("testdata/anonymous.csr");

/// A request of the tunnel-server (`admin` here) for cluster `label`, holding `pem`.
fn request(pem: &str, label: &str, via: Option<&str>, username: &str) -> CertificateSigningRequest {
    let mut annotations = BTreeMap::from([(CLUSTER_LABEL.to_string(), label.to_string())]);
    if let Some(via) = via {
        annotations.insert(REQUESTED_VIA.into(), via.into());
    }
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            resource_version: Some("3".into()),
            labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_string(), label.to_string())])),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            signer_name: SIGNER_NAME.into(),
            username: Some(username.into()),
            request: ByteString(pem.as_bytes().to_vec()),
            usages: Some(vec!["digital signature".into(), "key encipherment".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    }
}

/// A bootstrap request for cluster `a` whose CSR names `cn`.
fn bootstrap(cn: &str) -> CertificateSigningRequest {
    let (_key, pem) = tether_certs::spoke_key_and_csr(cn).unwrap();
    request(&pem, "a", Some(VIA_BOOTSTRAP_TOKEN), "admin")
}

fn with_condition(mut csr: CertificateSigningRequest, type_: &str) -> CertificateSigningRequest {
    let status = csr.status.get_or_insert_with(CertificateSigningRequestStatus::default);
    status.conditions.get_or_insert_with(Vec::new).push(condition(type_, "Test", String::new()));
    csr
}

fn managed_cluster(accepted: bool) -> Value {
    json!(ManagedCluster::new("a", ManagedClusterSpec { hub_accepts_client: accepted, ..Default::default() }))
}

async fn reconciled(csr: CertificateSigningRequest, script: Vec<crate::fixtures::Call>) -> (Action, Seen) {
    let (ctx, api) = csr_context(script);
    let action = reconcile(Arc::new(csr), Arc::new(ctx)).await.unwrap();
    (action, api.await.unwrap())
}

fn condition_types(body: &Value) -> Vec<&str> {
    body["status"]["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect()
}

#[test]
fn stages_follow_the_conditions_and_the_certificate() {
    let pending = request("", "a", Some(VIA_BOOTSTRAP_TOKEN), "admin");
    assert_eq!(stage(&pending), Stage::Pending);
    assert_eq!(stage(&with_condition(pending.clone(), APPROVED)), Stage::Approved);
    assert_eq!(stage(&with_condition(pending.clone(), DENIED)), Stage::Done);
    assert_eq!(stage(&with_condition(with_condition(pending.clone(), APPROVED), FAILED)), Stage::Done);
    let mut issued = with_condition(pending, APPROVED);
    issued.status.as_mut().unwrap().certificate = Some(ByteString(b"-----BEGIN CERTIFICATE-----".to_vec()));
    assert_eq!(stage(&issued), Stage::Done);
}

#[test]
fn the_policy_needs_the_annotation_the_requester_and_a_cluster() {
    let policy = Policy { auto_approve: true, requester: "admin".into() };
    let candidate = |via: Option<&str>, username: &str| {
        policy_candidate(&request("", "a", via, username), &policy).ok().map(str::to_string)
    };
    assert_eq!(candidate(Some(VIA_BOOTSTRAP_TOKEN), "admin").as_deref(), Some("a"));
    assert_eq!(candidate(Some(VIA_RENEWAL), "admin").as_deref(), Some("a"));
    assert_eq!(candidate(None, "admin"), None);
    assert_eq!(candidate(Some("other"), "admin"), None);
    assert_eq!(candidate(Some(VIA_BOOTSTRAP_TOKEN), "mallory"), None);
    let off = Policy { auto_approve: false, ..policy.clone() };
    assert!(policy_candidate(&request("", "a", Some(VIA_BOOTSTRAP_TOKEN), "admin"), &off).is_err());
    let mut unlabelled = request("", "a", Some(VIA_BOOTSTRAP_TOKEN), "admin");
    unlabelled.metadata.labels = None;
    assert!(policy_candidate(&unlabelled, &policy).is_err());
    let mut disagreeing = request("", "a", Some(VIA_BOOTSTRAP_TOKEN), "admin");
    disagreeing.annotations_mut().insert(CLUSTER_LABEL.into(), "b".into());
    assert!(policy_candidate(&disagreeing, &policy).is_err());
}

#[tokio::test]
async fn a_bootstrap_request_for_an_accepted_cluster_is_approved() {
    let (action, seen) = reconciled(
        bootstrap("a"),
        vec![
            call(Method::GET, CLUSTER_PATH, 200, managed_cluster(true)),
            call(Method::PATCH, APPROVAL_PATH, 200, json!(with_condition(bootstrap("a"), APPROVED))),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change(), "the approval itself brings the request back for signing");
    let body = &seen.calls[1].2;
    let approved = &body["status"]["conditions"][0];
    assert_eq!((approved["type"].as_str(), approved["status"].as_str()), (Some("Approved"), Some("True")));
    assert_eq!(approved["reason"], "AutoApproved");
    assert_eq!(body["metadata"]["resourceVersion"], "3", "approval is guarded by resourceVersion");
    assert!(body["status"].get("certificate").is_none());
    assert_eq!(seen.event_reasons, ["AutoApproved"]);
}

#[tokio::test]
async fn renewals_are_approved_like_bootstrap_requests() {
    let (_key, pem) = tether_certs::spoke_key_and_csr("a").unwrap();
    let renewal = request(&pem, "a", Some(VIA_RENEWAL), "admin");
    let (_, seen) = reconciled(
        renewal.clone(),
        vec![
            call(Method::GET, CLUSTER_PATH, 200, managed_cluster(true)),
            call(Method::PATCH, APPROVAL_PATH, 200, json!(with_condition(renewal, APPROVED))),
        ],
    )
    .await;
    assert_eq!(condition_types(&seen.calls[1].2), ["Approved"]);
}

#[tokio::test]
async fn requests_the_policy_does_not_cover_are_left_for_a_person() {
    let (_key, pem) = tether_certs::spoke_key_and_csr("a").unwrap();
    for csr in [
        request(&pem, "a", Some(VIA_BOOTSTRAP_TOKEN), "mallory"),
        request(&pem, "a", None, "admin"),
        request(&pem, "a", Some("something-else"), "admin"),
    ] {
        let (action, seen) = reconciled(csr, vec![]).await;
        assert_eq!(action, Action::await_change());
        assert!(seen.calls.is_empty() && seen.event_reasons.is_empty(), "{seen:?}");
    }
    // A CSR naming no cluster is signable, but the policy does not vouch for it.
    let (_, seen) = reconciled(request(ANONYMOUS_CSR, "a", Some(VIA_BOOTSTRAP_TOKEN), "admin"), vec![]).await;
    assert!(seen.calls.is_empty());
}

#[tokio::test]
async fn auto_approval_off_leaves_every_request_for_a_person() {
    let (mut ctx, api) = csr_context(vec![]);
    ctx.policy.auto_approve = false;
    let action = reconcile(Arc::new(bootstrap("a")), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(api.await.unwrap().calls.is_empty());
}

#[tokio::test]
async fn nothing_is_approved_for_a_cluster_the_hub_does_not_accept() {
    for answer in [(200, managed_cluster(false)), (404, not_found())] {
        let (action, seen) =
            reconciled(bootstrap("a"), vec![call(Method::GET, CLUSTER_PATH, answer.0, answer.1)]).await;
        assert_eq!(action, Action::requeue(WAIT), "waits, and looks again");
        assert_eq!(seen.calls.len(), 1, "no approval");
        assert!(seen.event_reasons.is_empty());
    }
}

#[tokio::test]
async fn an_approved_request_is_signed_for_its_cluster() {
    let approved = with_condition(bootstrap("a"), APPROVED);
    let (action, seen) = reconciled(
        approved.clone(),
        vec![
            call(Method::GET, CLUSTER_PATH, 200, managed_cluster(true)),
            call(Method::PATCH, STATUS_PATH, 200, json!(approved)),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    let body = &seen.calls[1].2;
    assert_eq!(body["metadata"]["resourceVersion"], "3");
    assert!(body["status"].get("conditions").is_none(), "the approval is left as it is");
    let certificate: ByteString = serde_json::from_value(body["status"]["certificate"].clone()).unwrap();
    let pem = String::from_utf8(certificate.0).unwrap();
    let der = tether_certs::pem_to_der_certs(&pem).unwrap();
    assert_eq!(tether_certs::cluster_of(&der[0]).unwrap(), "a");
    assert_eq!(seen.event_reasons, ["CertificateIssued"]);
}

#[tokio::test]
async fn a_request_a_person_approved_is_signed_too() {
    let (_key, pem) = tether_certs::spoke_key_and_csr("a").unwrap();
    let approved = with_condition(request(&pem, "a", None, "someone"), APPROVED);
    let (_, seen) = reconciled(
        approved.clone(),
        vec![
            call(Method::GET, CLUSTER_PATH, 200, managed_cluster(true)),
            call(Method::PATCH, STATUS_PATH, 200, json!(approved)),
        ],
    )
    .await;
    assert!(seen.calls[1].2["status"]["certificate"].is_string());
}

#[tokio::test]
async fn an_approved_request_waits_until_the_cluster_is_accepted() {
    let approved = with_condition(bootstrap("a"), APPROVED);
    let (action, seen) = reconciled(approved, vec![call(Method::GET, CLUSTER_PATH, 200, managed_cluster(false))]).await;
    assert_eq!(action, Action::requeue(WAIT));
    assert_eq!(seen.calls.len(), 1, "nothing is signed");
}

#[tokio::test]
async fn an_approved_request_naming_another_cluster_fails_without_a_certificate() {
    let approved = with_condition(bootstrap("b"), APPROVED);
    let (action, seen) = reconciled(
        approved.clone(),
        vec![
            call(Method::GET, CLUSTER_PATH, 200, managed_cluster(true)),
            call(Method::PATCH, STATUS_PATH, 200, json!(approved)),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    let body = &seen.calls[1].2;
    assert!(body["status"].get("certificate").is_none());
    assert_eq!(condition_types(body), ["Approved", "Failed"], "the approval is kept");
    let failed = &body["status"]["conditions"][1];
    assert_eq!(failed["reason"], "SignerValidationFailure");
    assert!(failed["message"].as_str().unwrap().contains(r#"for cluster "b", not "a""#), "{failed}");
    assert_eq!(seen.event_reasons, ["CertificateFailed"]);
}

#[tokio::test]
async fn bootstrap_requests_that_can_never_be_signed_fail_without_approval() {
    let weak = request(RSA_1024_CSR, "weak-cluster", Some(VIA_BOOTSTRAP_TOKEN), "admin");
    for (csr, needle) in [(bootstrap("b"), "cluster \"b\""), (weak, "1024")] {
        let (action, seen) = reconciled(csr.clone(), vec![call(Method::PATCH, STATUS_PATH, 200, json!(csr))]).await;
        assert_eq!(action, Action::await_change());
        let body = &seen.calls[0].2;
        assert_eq!(condition_types(body), ["Failed"]);
        assert!(body["status"]["conditions"][0]["message"].as_str().unwrap().contains(needle), "{body}");
        assert!(body["status"].get("certificate").is_none());
        assert_eq!(seen.event_reasons, ["CertificateFailed"]);
    }
}

#[tokio::test]
async fn finished_requests_and_other_signers_are_left_alone() {
    let mut issued = with_condition(bootstrap("a"), APPROVED);
    issued.status.as_mut().unwrap().certificate = Some(ByteString(b"-----BEGIN CERTIFICATE-----".to_vec()));
    let mut other_signer = with_condition(bootstrap("a"), APPROVED);
    other_signer.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
    for csr in [
        issued,
        with_condition(bootstrap("a"), DENIED),
        with_condition(with_condition(bootstrap("a"), APPROVED), FAILED),
        other_signer,
    ] {
        let (action, seen) = reconciled(csr, vec![]).await;
        assert_eq!(action, Action::await_change());
        assert!(seen.calls.is_empty() && seen.event_reasons.is_empty());
    }
}
