use super::*;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

const MINUTE: Duration = Duration::from_secs(60);

const TOKEN: &str = "abc123.0123456789abcdef";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t).expect("in range").to_string()
}

fn secret(cluster: &str, hash: &str, expiration: &str) -> Secret {
    let data = BTreeMap::from([
        ("cluster".to_string(), ByteString(cluster.as_bytes().to_vec())),
        ("token-hash".to_string(), ByteString(hash.as_bytes().to_vec())),
        ("expiration".to_string(), ByteString(expiration.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: ObjectMeta { name: Some("tether-bootstrap-abc123".into()), ..Default::default() },
        type_: Some(TOKEN_SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

fn valid_secret() -> Secret {
    secret("spoke-a", &token_hash(TOKEN), &rfc3339(now() + Duration::from_secs(3600)))
}

fn token() -> Token<'static> {
    Token::parse(TOKEN).expect("valid")
}

fn outcome(result: Result<(), Refusal>) -> Result<(), &'static str> {
    result.map_err(|r| r.outcome)
}

#[test]
fn tokens_parse_only_in_the_exact_format() {
    let t = token();
    assert_eq!(t.id, "abc123");
    assert_eq!(t.secret_name(), "tether-bootstrap-abc123");
    for bad in [
        "",
        "abc123",
        "abc123.",
        "abc12.0123456789abcdef",
        "abc1234.0123456789abcdef",
        "abc123.0123456789abcde",
        "abc123.0123456789abcdef0",
        "ABC123.0123456789abcdef",
        "abc123.0123456789abcdeF",
        "abc123:0123456789abcdef",
        "abc123.0123456789abcd.f",
        " abc123.0123456789abcdef",
        "abc-23.0123456789abcdef",
        "ab\u{e9}23.0123456789abcdef",
    ] {
        let refusal = Token::parse(bad).unwrap_err();
        assert_eq!(refusal.reason, "malformed bootstrap token", "{bad:?}");
    }
}

#[test]
fn token_debug_shows_the_id_only() {
    let shown = format!("{:?}", token());
    assert!(shown.contains("abc123") && !shown.contains("0123456789abcdef"), "{shown}");
}

#[test]
fn token_hash_is_lowercase_hex_sha256() {
    // printf %s abc123.0123456789abcdef | sha256sum
    assert_eq!(token_hash(TOKEN), "264fe2f30726aae1e5ff5493aafba004c5a40738ab2debe965cf6952334bd551");
    assert_ne!(token_hash(TOKEN), token_hash("abc123.0123456789abcdee"));
}

#[test]
fn constant_time_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn a_valid_token_passes() {
    check_token(&valid_secret(), &token(), "spoke-a", now()).unwrap();
    // An upper-case stored hash is the same hash.
    let upper = secret("spoke-a", &token_hash(TOKEN).to_uppercase(), &rfc3339(now() + Duration::from_secs(1)));
    check_token(&upper, &token(), "spoke-a", now()).unwrap();
}

#[test]
fn a_wrong_hash_reads_as_an_unknown_token() {
    let other = Token::parse("abc123.0123456789abcdee").unwrap();
    let refusal = check_token(&valid_secret(), &other, "spoke-a", now()).unwrap_err();
    assert_eq!(refusal, Refusal::new("unknown_token", UNKNOWN_TOKEN));
    let mut wrong_type = valid_secret();
    wrong_type.type_ = Some("Opaque".into());
    assert_eq!(outcome(check_token(&wrong_type, &token(), "spoke-a", now())), Err("unknown_token"));
    let mut no_hash = valid_secret();
    no_hash.data.as_mut().unwrap().remove("token-hash");
    assert_eq!(outcome(check_token(&no_hash, &token(), "spoke-a", now())), Err("unknown_token"));
    let mut deleting = valid_secret();
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    assert_eq!(outcome(check_token(&deleting, &token(), "spoke-a", now())), Err("unknown_token"));
}

#[test]
fn checks_run_in_order_hash_expiration_cluster() {
    let expired_elsewhere = secret("spoke-b", &token_hash(TOKEN), &rfc3339(now()));
    // Expired and for another cluster: expiration is checked first.
    let refusal = check_token(&expired_elsewhere, &token(), "spoke-a", now()).unwrap_err();
    assert_eq!(refusal.reason, "bootstrap token expired");
    // Wrong hash, expired, other cluster: nothing is revealed beyond "unknown".
    let refusal = check_token(&expired_elsewhere, &Token::parse("zzzzzz.0123456789abcdef").unwrap(), "spoke-a", now());
    assert_eq!(outcome(refusal), Err("unknown_token"));
    let elsewhere = secret("spoke-b", &token_hash(TOKEN), &rfc3339(now() + Duration::from_secs(60)));
    let refusal = check_token(&elsewhere, &token(), "spoke-a", now()).unwrap_err();
    assert_eq!(refusal.reason, "token is for another cluster");
    let garbled = secret("spoke-a", &token_hash(TOKEN), "tomorrow");
    assert_eq!(outcome(check_token(&garbled, &token(), "spoke-a", now())), Err("expired"));
}

#[test]
fn requests_are_checked_before_any_lookup() {
    let request = BootstrapRequest {
        version: BOOTSTRAP_VERSION,
        cluster: "spoke-a".into(),
        token: Some(TOKEN.into()),
        csr_pem: String::new(),
        resume: None,
    };
    check_request(&request).unwrap();
    let refusal = check_request(&BootstrapRequest { version: 2, ..request.clone() }).unwrap_err();
    assert!(refusal.reason.contains("version 2"), "{}", refusal.reason);
    let bad_cluster = BootstrapRequest { cluster: "Spoke_A".into(), ..request.clone() };
    assert_eq!(outcome(check_request(&bad_cluster)), Err("invalid_cluster"));
    let neither = BootstrapRequest { token: None, ..request.clone() };
    assert_eq!(outcome(check_request(&neither)), Err("malformed"));
    check_request(&BootstrapRequest { token: None, resume: Some("tether-spoke-a-00000000".into()), ..request })
        .unwrap();
}

#[test]
fn csrs_must_verify_and_name_the_cluster() {
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    check_csr(&csr, "spoke-a").unwrap();
    let refusal = check_csr(&csr, "spoke-b").unwrap_err();
    assert_eq!(refusal.outcome, "bad_csr");
    assert!(refusal.reason.contains("spoke-a"), "{}", refusal.reason);
    assert_eq!(outcome(check_csr("garbage", "spoke-a")), Err("bad_csr"));
}

#[test]
fn the_certificate_request_follows_the_contract() {
    assert_eq!(csr_name("spoke-a", 0xdead_beef), "tether-spoke-a-deadbeef");
    assert_eq!(csr_name("spoke-a", 1), "tether-spoke-a-00000001");
    let csr = csr_object("tether-spoke-a-00000001", "spoke-a", "PEM", REQUESTED_VIA_TOKEN);
    assert_eq!(csr.spec.signer_name, "tether.io/spoke-client");
    assert_eq!(csr.spec.usages.as_deref().unwrap(), ["digital signature", "key encipherment", "client auth"]);
    assert_eq!(csr.spec.request.0, b"PEM");
    assert_eq!(csr.metadata.labels.as_ref().unwrap()["tether.io/cluster"], "spoke-a");
    let annotations = csr.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["tether.io/cluster"], "spoke-a");
    assert_eq!(annotations["tether.io/requested-via"], "bootstrap-token");
    // Resuming it needs the same cluster, signer and request bytes.
    check_resume(&csr, "spoke-a", "PEM").unwrap();
    assert_eq!(outcome(check_resume(&csr, "spoke-b", "PEM")), Err("resume_mismatch"));
    assert_eq!(outcome(check_resume(&csr, "spoke-a", "PEM\n")), Err("resume_mismatch"));
    let mut foreign = csr.clone();
    foreign.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
    assert_eq!(outcome(check_resume(&foreign, "spoke-a", "PEM")), Err("resume_mismatch"));
}

fn with_status(certificate: Option<&str>, conditions: &[(&str, &str, &str)]) -> CertificateSigningRequest {
    let mut csr = csr_object("tether-spoke-a-00000001", "spoke-a", "PEM", REQUESTED_VIA_TOKEN);
    csr.status = Some(CertificateSigningRequestStatus {
        certificate: certificate.map(|c| ByteString(c.as_bytes().to_vec())),
        conditions: Some(
            conditions
                .iter()
                .map(|(type_, status, message)| CertificateSigningRequestCondition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    message: Some(message.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
    });
    csr
}

#[test]
fn csr_states() {
    assert_eq!(csr_state(&csr_object("n", "spoke-a", "PEM", REQUESTED_VIA_TOKEN)), CsrState::Waiting);
    assert_eq!(csr_state(&with_status(None, &[("Approved", "True", "ok")])), CsrState::Waiting);
    assert_eq!(csr_state(&with_status(Some(""), &[("Approved", "True", "ok")])), CsrState::Waiting);
    assert_eq!(csr_state(&with_status(Some("CERT"), &[("Approved", "True", "ok")])), CsrState::Issued("CERT".into()));
    let CsrState::Refused(denied) = csr_state(&with_status(None, &[("Denied", "True", "not this one")])) else {
        panic!("denied is refused");
    };
    assert_eq!(denied.outcome, "denied");
    assert!(denied.reason.contains("not this one"), "{}", denied.reason);
    // Failed wins over a certificate.
    let failed = with_status(Some("CERT"), &[("Approved", "True", ""), ("Failed", "", "CA unavailable")]);
    assert!(matches!(csr_state(&failed), CsrState::Refused(Refusal { outcome: "failed", .. })));
    // A condition that is not True does not count.
    assert_eq!(csr_state(&with_status(None, &[("Denied", "False", "")])), CsrState::Waiting);
}

#[test]
fn the_rate_limit_refills_over_a_minute() {
    let mut limiter = RateLimiter::new(3, MINUTE);
    let t0 = Instant::now();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    assert!((0..3).all(|_| limiter.allow(a, t0)));
    assert!(!limiter.allow(a, t0));
    assert!(limiter.allow(b, t0), "addresses are counted apart");
    assert!(!limiter.allow(a, t0 + Duration::from_secs(19)));
    assert!(limiter.allow(a, t0 + Duration::from_secs(21)), "one attempt back after 20 s");
    assert!(!limiter.allow(a, t0 + Duration::from_secs(22)));
    assert!((0..3).all(|_| limiter.allow(a, t0 + Duration::from_secs(300))));
    assert!(!limiter.allow(a, t0 + Duration::from_secs(300)), "a long pause does not bank more than the rate");
    // A refusal says when the next attempt will be let in.
    let t1 = t0 + Duration::from_secs(300);
    assert_eq!(limiter.wait(&a, t1), Duration::from_secs(20));
    assert_eq!(limiter.wait(&a, t1 + Duration::from_secs(15)), Duration::from_secs(5));
    assert_eq!(limiter.wait(&a, t1 + Duration::from_secs(20)), Duration::ZERO);
    assert_eq!(limiter.wait(&b, t1), Duration::ZERO, "a full bucket waits for nothing");
    let mut unlimited = RateLimiter::new(0, MINUTE);
    assert!((0..1000).all(|_| unlimited.allow(a, t0)));
}

#[test]
fn ipv6_clients_are_limited_per_64() {
    let mut limiter = RateLimiter::new(1, MINUTE);
    let t0 = Instant::now();
    let mut allow = |ip: &str| limiter.allow(client_key(ip.parse().unwrap()), t0);
    assert!(allow("2001:db8:1:2::1"));
    assert!(!allow("2001:db8:1:2:ffff::9"));
    assert!(allow("2001:db8:1:3::1"));
    // A v4-mapped address is its IPv4 address.
    assert!(allow("192.0.2.7"));
    assert!(!allow("::ffff:192.0.2.7"));
}

#[test]
fn full_buckets_are_pruned() {
    let mut limiter = RateLimiter::new(2, MINUTE);
    let t0 = Instant::now();
    for i in 0..=RateLimiter::<IpAddr>::PRUNE_ABOVE as u32 {
        limiter.allow(IpAddr::V4(i.into()), t0);
    }
    limiter.allow("192.0.2.1".parse().unwrap(), t0 + Duration::from_secs(61));
    assert_eq!(limiter.buckets.len(), 1);
}

#[test]
fn renewals_are_for_the_tunnels_own_cluster_without_a_token() {
    let (_key, csr_pem) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let request = BootstrapRequest {
        version: BOOTSTRAP_VERSION,
        cluster: "spoke-a".into(),
        token: None,
        csr_pem: csr_pem.clone(),
        resume: None,
    };
    check_renewal(&request, "spoke-a").unwrap();
    assert_eq!(outcome(check_renewal(&request, "spoke-b")), Err("wrong_cluster"));
    let with_token = BootstrapRequest { token: Some("abcdef.0123456789abcdef".into()), ..request.clone() };
    assert_eq!(outcome(check_renewal(&with_token, "spoke-a")), Err("malformed"));
    let old = BootstrapRequest { version: BOOTSTRAP_VERSION + 1, ..request.clone() };
    assert_eq!(outcome(check_renewal(&old, "spoke-a")), Err("malformed"));
    // A CSR for another cluster's name is refused even on that cluster's tunnel.
    let (_key, other) = tether_certs::spoke_key_and_csr("spoke-b").unwrap();
    let foreign = BootstrapRequest { csr_pem: other, ..request.clone() };
    assert_eq!(outcome(check_renewal(&foreign, "spoke-a")), Err("bad_csr"));
    let csr = csr_object("tether-spoke-a-00000002", "spoke-a", &csr_pem, REQUESTED_VIA_RENEWAL);
    assert_eq!(csr.metadata.annotations.as_ref().unwrap()["tether.io/requested-via"], "renewal");
}

#[test]
fn a_tokens_request_is_named_after_the_whole_token() {
    let name = token_csr_name("spoke-a", &token());
    assert_eq!(name, token_csr_name("spoke-a", &token()), "the same token names the same request");
    let hex = name.strip_prefix("tether-spoke-a-").expect("tether-<cluster>-");
    assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{name}");
    // Another secret under the same id (what an attacker who knows the id would try) names another one.
    let other = Token::parse("abc123.0123456789abcdee").unwrap();
    assert_ne!(token_csr_name("spoke-a", &other), name);
    // Not the stored token-hash: a reader of the Secret cannot derive the request's name from it.
    assert!(!token_hash(TOKEN).starts_with(hex));
    // A valid object name (a DNS subdomain) for the longest cluster name.
    let longest = "a".repeat(63);
    assert!(token_csr_name(&longest, &token()).len() <= 253);
}

fn decide(secret: Option<&Secret>, paid: Option<&CertificateSigningRequest>, csr_pem: &str) -> TokenDecision {
    token_decision(Ok(secret), Ok(paid), &token(), "spoke-a", csr_pem, now())
}

fn apiserver_error() -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure("etcdserver: request timed out", "InternalError").with_code(500).boxed(),
    )
}

fn refused(decision: TokenDecision) -> (&'static str, String) {
    match decision {
        TokenDecision::Refuse(r) => (r.outcome, r.reason),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_valid_unspent_token_is_spent() {
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    assert_eq!(decide(Some(&valid_secret()), None, &csr), TokenDecision::Spend);
}

#[test]
fn unknown_wrong_and_spent_tokens_get_the_same_answer() {
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let unknown = refused(decide(None, None, &csr));
    assert_eq!(unknown, ("unknown_token", UNKNOWN_TOKEN.to_string()));
    let wrong_hash = secret("spoke-a", &token_hash("abc123.0123456789abcdee"), &rfc3339(now() + MINUTE));
    assert_eq!(refused(decide(Some(&wrong_hash), None, &csr)), unknown);
    // Spent for another client's request: the same answer as an unknown token.
    let (_key, other_csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let name = token_csr_name("spoke-a", &token());
    let theirs = csr_object(&name, "spoke-a", &other_csr, REQUESTED_VIA_TOKEN);
    assert_eq!(refused(decide(None, Some(&theirs), &csr)).1, UNKNOWN_TOKEN);
    // Still unspent, but its name is taken by another request: refused too, nothing created.
    assert_eq!(refused(decide(Some(&valid_secret()), Some(&theirs), &csr)), ("spent", UNKNOWN_TOKEN.to_string()));
}

#[test]
fn a_spent_token_resumes_the_request_it_paid_for() {
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let name = token_csr_name("spoke-a", &token());
    let paid = csr_object(&name, "spoke-a", &csr, REQUESTED_VIA_TOKEN);
    assert_eq!(decide(None, Some(&paid), &csr), TokenDecision::Resume);
    assert_eq!(decide(Some(&valid_secret()), Some(&paid), &csr), TokenDecision::Resume);
    // Only a request the token paid for, for this cluster.
    let renewal = csr_object(&name, "spoke-a", &csr, REQUESTED_VIA_RENEWAL);
    assert_eq!(refused(decide(None, Some(&renewal), &csr)).0, "unknown_token");
    let elsewhere = csr_object(&name, "spoke-b", &csr, REQUESTED_VIA_TOKEN);
    assert_eq!(refused(decide(None, Some(&elsewhere), &csr)).0, "unknown_token");
}

#[test]
fn a_spendable_token_still_needs_a_good_csr_and_a_live_secret() {
    let (_key, csr_b) = tether_certs::spoke_key_and_csr("spoke-b").unwrap();
    assert_eq!(refused(decide(Some(&valid_secret()), None, &csr_b)).0, "bad_csr");
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let expired = secret("spoke-a", &token_hash(TOKEN), &rfc3339(now()));
    assert_eq!(refused(decide(Some(&expired), None, &csr)).0, "expired");
}

#[test]
fn renewal_budgets_are_per_cluster_per_hour() {
    let hour = Duration::from_secs(3600);
    let mut budget = RateLimiter::new(2, hour);
    let t0 = Instant::now();
    assert!(budget.allow("spoke-a".to_string(), t0) && budget.allow("spoke-a".to_string(), t0));
    assert!(!budget.allow("spoke-a".to_string(), t0 + Duration::from_secs(60)), "two an hour, whatever the tunnel");
    assert!(budget.allow("spoke-b".to_string(), t0));
    assert!(budget.allow("spoke-a".to_string(), t0 + hour / 2), "one back after half an hour");
}

#[test]
fn a_failed_look_up_is_no_answer_never_a_refusal() {
    let (_key, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
    let error = apiserver_error();
    let secret = valid_secret();
    let decide = |secret, paid| token_decision(secret, paid, &token(), "spoke-a", &csr, now());
    // The Secret is gone (spent by this client) and the request it paid for cannot be read: the client
    // must try again, not give up on "unknown or spent token".
    assert!(matches!(decide(Ok(None), Err(&error)), TokenDecision::Retry(_)));
    assert!(matches!(decide(Err(&error), Ok(None)), TokenDecision::Retry(_)));
    assert!(matches!(decide(Ok(Some(&secret)), Err(&error)), TokenDecision::Retry(_)));
    assert!(matches!(decide(Err(&error), Err(&error)), TokenDecision::Retry(_)));
    // The request it paid for is enough to resume, whatever the Secret's look-up said.
    let paid = csr_object(&token_csr_name("spoke-a", &token()), "spoke-a", &csr, REQUESTED_VIA_TOKEN);
    assert_eq!(decide(Err(&error), Ok(Some(&paid))), TokenDecision::Resume);
}
