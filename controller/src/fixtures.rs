//! A scripted hub API for unit tests of reconcile decisions: each test lists the calls it expects, in
//! order, with the answer to give. Event posts are answered and recorded on the side, since Events are
//! reported, not decided.
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::Value;
use tether_certs::CertificateAuthority;
use tower_test::mock;

use crate::auto::AutoConfig;
use crate::conditions::Liveness;
use crate::csr::{CsrContext, Policy};
use crate::reconcile::Context;

pub struct Call {
    pub method: Method,
    /// The request's path (and query), up to the length given here.
    pub path: &'static str,
    /// The answer's status; 0 fails the request without an answer, as a connection that was refused.
    pub status: u16,
    pub answer: Value,
}

pub fn call(method: Method, path: &'static str, status: u16, answer: Value) -> Call {
    Call { method, path, status, answer }
}

#[derive(Debug, Default)]
pub struct Seen {
    /// (method, path, body) of every scripted call, in order.
    pub calls: Vec<(Method, String, Value)>,
    pub event_reasons: Vec<String>,
}

pub const LIVENESS: Liveness = Liveness { renew_interval: std::time::Duration::from_secs(10), missed_renewals: 3 };

/// A Context over the scripted API, with these Leases in its mirror; the task returns what it saw once the
/// Context is dropped.
pub fn context(
    leases: Vec<k8s_openapi::api::coordination::v1::Lease>,
    script: Vec<Call>,
) -> (Context, tokio::task::JoinHandle<Seen>) {
    let (client, api) = scripted(script);
    let (store, mut writer) = reflector::store();
    for lease in leases {
        writer.apply_watcher_event(&watcher::Event::Apply(lease));
    }
    let ctx = Context {
        client: client.clone(),
        lease_namespace: "tether-system".into(),
        leases: store,
        liveness: LIVENESS,
        recorder: Recorder::new(client, reporter()),
        failures: Default::default(),
        auto: None,
    };
    (ctx, api)
}

/// The hub CA spokes are told to trust in auto-mode tests.
pub const HUB_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A Context with auto mode on (token TTL one hour) whose spoke clients all talk to a second scripted API;
/// the second task returns what the spoke saw.
pub fn auto_context(
    leases: Vec<k8s_openapi::api::coordination::v1::Lease>,
    hub_script: Vec<Call>,
    spoke_script: Vec<Call>,
) -> (Context, tokio::task::JoinHandle<Seen>, tokio::task::JoinHandle<Seen>) {
    let (mut ctx, hub) = context(leases, hub_script);
    let (spoke, spoke_api) = scripted(spoke_script);
    ctx.auto = Some(AutoConfig {
        hub_address: "hub.example:8443".into(),
        hub_ca_pem: HUB_CA_PEM.into(),
        image: "example/tunnel-client:1".into(),
        token_ttl: Duration::from_secs(3600),
        token_namespace: "tether-system".into(),
        connect: std::sync::Arc::new(move |config: kube::Config| {
            assert_eq!(config.cluster_url.to_string(), "https://spoke.example:6443/");
            Ok(spoke.clone())
        }),
    });
    (ctx, hub, spoke_api)
}

/// A CSR Context over the scripted API, with a new CA, auto-approval on, and `admin` as the requester.
pub fn csr_context(script: Vec<Call>) -> (CsrContext, tokio::task::JoinHandle<Seen>) {
    let (client, api) = scripted(script);
    let ca = CertificateAuthority::generate("test-hub-ca", SystemTime::now(), Duration::from_secs(86_400)).expect("CA");
    let ctx = CsrContext {
        client: client.clone(),
        ca,
        validity: Duration::from_secs(3600),
        policy: Policy { auto_approve: true, requester: "admin".into() },
        recorder: Recorder::new(client, reporter()),
        failures: Default::default(),
    };
    (ctx, api)
}

fn reporter() -> Reporter {
    Reporter { controller: "tether-controller".into(), instance: None }
}

/// A client whose every request is checked against `script`; the task returns what it saw once every
/// clone of the client is dropped.
fn scripted(script: Vec<Call>) -> (kube::Client, tokio::task::JoinHandle<Seen>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut script = script.into_iter();
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let body = request.into_body().collect_bytes().await.expect("request body");
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if path.contains("/events") {
                seen.event_reasons.push(body["reason"].as_str().unwrap_or_default().to_string());
                respond.send_response(json_response(StatusCode::CREATED, &body));
                continue;
            }
            let Some(expected) = script.next() else { panic!("unexpected call {method} {path}") };
            assert_eq!(
                (&method, &path[..expected.path.len().min(path.len())]),
                (&expected.method, expected.path),
                "call {}",
                seen.calls.len()
            );
            seen.calls.push((method, path, body));
            if expected.status == 0 {
                respond.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
                continue;
            }
            respond
                .send_response(json_response(StatusCode::from_u16(expected.status).expect("status"), &expected.answer));
        }
        assert!(script.next().is_none(), "expected calls were not made");
        seen
    });
    (client, api)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(serde_json::to_vec(body).expect("JSON")));
    *response.status_mut() = status;
    response
}

pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}
