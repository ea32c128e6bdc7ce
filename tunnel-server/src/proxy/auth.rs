//! Authentication (TokenReview) and authorization (SubjectAccessReview) against the hub apiserver, each
//! behind a short-TTL cache so that steady traffic makes no hub API call on the request path. The caches
//! are bounded in bytes, keyed by fixed-size digests (a caller's token or impersonation strings never make
//! a key large), and concurrent look-ups of one key make one hub call.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::Api;
use metrics::counter;
use moka::future::Cache;
use tether_runtime::throttle::Throttle;

use super::failures::FailureLimiter;
use super::identity::UserInfo;
use super::status::ProxyError;
use crate::metrics as m;

/// What a SubjectAccessReview asks, minus the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attributes {
    /// `managedclusters/proxy` in `tether.io`, named after the cluster: the right to use a cluster's proxy.
    pub fn cluster_proxy(cluster: &str, verb: &str) -> Self {
        Self {
            verb: verb.into(),
            namespace: String::new(),
            group: tether_api::GROUP.into(),
            resource: tether_api::cluster::RESOURCE.into(),
            subresource: tether_api::cluster::PROXY_SUBRESOURCE.into(),
            name: cluster.into(),
        }
    }

    pub fn impersonate(resource: &str, subresource: &str, name: &str) -> Self {
        let group = if resource == "userextras" || resource == "uids" { "authentication.k8s.io" } else { "" };
        Self {
            verb: "impersonate".into(),
            namespace: String::new(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
        }
    }
}

/// The hub's answers to "who is this token?" and "may this user do that?". The real implementation asks
/// the hub apiserver; tests and benchmarks script it.
pub trait Reviews: Send + Sync + 'static {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>>;
    fn access<'a>(&'a self, user: &'a UserInfo, attributes: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>>;
}

/// TokenReview and SubjectAccessReview against the hub apiserver.
pub struct KubeReviews(pub kube::Client);

/// What a caller is told when the hub apiserver failed; the error itself is logged (it may describe the
/// hub's internals, and the caller may not even be authenticated).
const AUTHENTICATION_UNAVAILABLE: &str = "hub authentication is unavailable, try again later";
const AUTHORIZATION_UNAVAILABLE: &str = "hub authorization is unavailable, try again later";

/// One warning per 10 s however many requests meet a failing hub.
static HUB_ERRORS: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(|| Throttle::new(Duration::from_secs(10)));

fn hub_failed(review: &'static str, error: &kube::Error, message: &'static str) -> ProxyError {
    // The error names the request and the hub's answer, never the token (it is only in the request body).
    if let Some(suppressed) = HUB_ERRORS.admit(Instant::now()) {
        tracing::warn!(review, %error, suppressed, "hub apiserver review failed");
    }
    ProxyError::Unavailable(message.to_string())
}

impl Reviews for KubeReviews {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
                ..Default::default()
            };
            let answer = Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| hub_failed("TokenReview", &e, AUTHENTICATION_UNAVAILABLE))?;
            let user = answer.status.filter(|s| s.authenticated == Some(true)).and_then(|s| s.user).map(|u| UserInfo {
                username: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default().into_iter().collect(),
            });
            Ok(user.filter(|u| !u.username.is_empty()))
        })
    }

    fn access<'a>(&'a self, user: &'a UserInfo, attributes: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.username.clone()),
                    uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                    groups: Some(user.groups.clone()),
                    extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(attributes.verb.clone()),
                        namespace: (!attributes.namespace.is_empty()).then(|| attributes.namespace.clone()),
                        group: Some(attributes.group.clone()),
                        resource: Some(attributes.resource.clone()),
                        subresource: Some(attributes.subresource.clone()),
                        name: Some(attributes.name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = Api::<SubjectAccessReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| hub_failed("SubjectAccessReview", &e, AUTHORIZATION_UNAVAILABLE))?;
            Ok(answer.status.is_some_and(|s| s.allowed && s.denied != Some(true)))
        })
    }
}

/// How [`HubAuth`] caches and limits.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// How long an answer is kept.
    pub ttl: Duration,
    /// Estimated bytes each of the two caches (tokens, decisions) may hold.
    pub cache_bytes: u64,
    /// Rejected tokens per minute and source address the hub is asked to review; 0 for no limit.
    pub failures_per_minute: u32,
    /// Users that may act on the proxy only as push identities ([`super::identity::push_identity`]).
    pub push_controllers: Vec<String>,
}

impl AuthSettings {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache_bytes: 32 * 1024 * 1024, failures_per_minute: 30, push_controllers: Vec::new() }
    }
}

/// [`Reviews`] behind short-TTL caches: steady traffic makes no hub API call on the request path.
#[derive(Clone)]
pub struct HubAuth {
    reviews: Arc<dyn Reviews>,
    // Keyed by a SHA-256 of the token: the cache never holds a usable credential.
    tokens: Cache<[u8; 32], Option<Arc<UserInfo>>>,
    // Keyed by a SHA-256 of (user, attributes), both partly chosen by the caller (impersonation).
    decisions: Cache<[u8; 32], bool>,
    failures: Arc<FailureLimiter>,
    push_controllers: Vec<String>,
}

/// What moka itself keeps per entry (key, value, timestamps, links), estimated.
const ENTRY_OVERHEAD: usize = 128;

impl HubAuth {
    pub fn new(reviews: Arc<dyn Reviews>, settings: AuthSettings) -> Self {
        let weight = |bytes: usize| u32::try_from(ENTRY_OVERHEAD + bytes).unwrap_or(u32::MAX);
        Self {
            reviews,
            tokens: Cache::builder()
                .time_to_live(settings.ttl)
                .max_capacity(settings.cache_bytes)
                .weigher(move |_, user: &Option<Arc<UserInfo>>| weight(user.as_deref().map_or(0, user_bytes)))
                .build(),
            decisions: Cache::builder()
                .time_to_live(settings.ttl)
                .max_capacity(settings.cache_bytes)
                .weigher(move |_, _| weight(0))
                .build(),
            failures: Arc::new(FailureLimiter::new(settings.failures_per_minute)),
            push_controllers: settings.push_controllers,
        }
    }

    /// Whether `user` is a push controller, which acts on the proxy only as push identities.
    pub fn is_push_controller(&self, user: &UserInfo) -> bool {
        self.push_controllers.contains(&user.username)
    }

    /// `Ok(None)` for a token the hub does not accept. A token not cached is reviewed once however many
    /// requests present it at the same time; `source` (the caller's address) pays for it if it fails.
    pub async fn authenticate_token(&self, token: &str, source: IpAddr) -> Result<Option<Arc<UserInfo>>, ProxyError> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 digests are 32 bytes");
        let review = async {
            self.failures
                .reserve(source, Instant::now())
                .map_err(|wait| ProxyError::TooManyRequests { retry_after: wait.as_secs().max(1) })?;
            let user = self.reviews.token(token).await?;
            if user.is_some() {
                self.failures.succeeded(source);
            }
            Ok::<_, ProxyError>(user.map(Arc::new))
        };
        let entry = match self.tokens.entry(key).or_try_insert_with(review).await {
            Ok(entry) => entry,
            Err(error) => {
                let outcome = match error.as_ref() {
                    ProxyError::TooManyRequests { .. } => "rate_limited",
                    _ => "error",
                };
                counter!(m::AUTH_LOOKUPS, "kind" => "token", "outcome" => outcome).increment(1);
                return Err(error.as_ref().clone());
            }
        };
        let outcome = if entry.is_fresh() { "hub" } else { "cached" };
        counter!(m::AUTH_LOOKUPS, "kind" => "token", "outcome" => outcome).increment(1);
        Ok(entry.into_value())
    }

    pub async fn allowed(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, ProxyError> {
        let review = async { self.reviews.access(user, attributes).await };
        let entry = self
            .decisions
            .entry(decision_key(user, attributes))
            .or_try_insert_with(review)
            .await
            .map_err(|e| e.as_ref().clone())?;
        let outcome = if entry.is_fresh() { "hub" } else { "cached" };
        counter!(m::AUTH_LOOKUPS, "kind" => "access", "outcome" => outcome).increment(1);
        Ok(entry.into_value())
    }
}

/// The bytes a cached identity holds, roughly: its strings and their headers.
fn user_bytes(user: &UserInfo) -> usize {
    const STRING: usize = std::mem::size_of::<String>();
    let strings = |values: &[String]| values.iter().map(|v| v.len() + STRING).sum::<usize>();
    std::mem::size_of::<UserInfo>()
        + user.username.len()
        + user.uid.len()
        + strings(&user.groups)
        + user.extra.iter().map(|(key, values)| key.len() + STRING + strings(values)).sum::<usize>()
}

/// A SHA-256 over every field, each length-prefixed so that no two questions share a key.
fn decision_key(user: &UserInfo, attributes: &Attributes) -> [u8; 32] {
    struct Key(ring::digest::Context);
    impl Key {
        fn count(&mut self, n: usize) {
            self.0.update(&(n as u64).to_be_bytes());
        }
        fn text(&mut self, s: &str) {
            self.count(s.len());
            self.0.update(s.as_bytes());
        }
        fn texts(&mut self, values: &[String]) {
            self.count(values.len());
            values.iter().for_each(|v| self.text(v));
        }
    }
    let mut key = Key(ring::digest::Context::new(&ring::digest::SHA256));
    key.text(&user.username);
    key.text(&user.uid);
    key.texts(&user.groups);
    key.count(user.extra.len());
    for (name, values) in &user.extra {
        key.text(name);
        key.texts(values);
    }
    let Attributes { verb, namespace, group, resource, subresource, name } = attributes;
    for field in [verb, namespace, group, resource, subresource, name] {
        key.text(field);
    }
    key.0.finish().as_ref().try_into().expect("SHA-256 digests are 32 bytes")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Accepts one token and allows one user; counts how often the "hub" is asked.
    #[derive(Default)]
    struct Scripted {
        token_calls: AtomicUsize,
        access_calls: AtomicUsize,
    }

    impl Reviews for Scripted {
        fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
            self.token_calls.fetch_add(1, Ordering::SeqCst);
            let user = (token == "good").then(|| UserInfo {
                username: "alice".into(),
                uid: String::new(),
                groups: vec![],
                extra: Default::default(),
            });
            Box::pin(async move { Ok(user) })
        }
        fn access<'a>(&'a self, user: &'a UserInfo, a: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
            self.access_calls.fetch_add(1, Ordering::SeqCst);
            let allowed = user.username == "alice" && a.name == "a";
            Box::pin(async move { Ok(allowed) })
        }
    }

    #[tokio::test]
    async fn answers_are_cached_including_refusals() {
        let scripted = Arc::new(Scripted::default());
        let auth = HubAuth::new(scripted.clone(), AuthSettings::new(Duration::from_secs(60)));
        for _ in 0..3 {
            let user = auth.authenticate_token("good", LOCAL).await.unwrap().unwrap();
            assert_eq!(user.username, "alice");
            assert!(auth.authenticate_token("bad", LOCAL).await.unwrap().is_none());
            assert!(auth.allowed(&user, &Attributes::cluster_proxy("a", "get")).await.unwrap());
            assert!(!auth.allowed(&user, &Attributes::cluster_proxy("b", "get")).await.unwrap());
        }
        // One hub call per distinct question, however often it is asked.
        assert_eq!(scripted.token_calls.load(Ordering::SeqCst), 2);
        assert_eq!(scripted.access_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_expire() {
        let scripted = Arc::new(Scripted::default());
        let auth = HubAuth::new(scripted.clone(), AuthSettings::new(Duration::from_millis(1)));
        auth.authenticate_token("good", LOCAL).await.unwrap();
        // moka's clock is real time; wait for the condition (expiry), bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while scripted.token_calls.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            auth.authenticate_token("good", LOCAL).await.unwrap();
        }
        assert_eq!(scripted.token_calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn decision_keys_tell_every_field_apart() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            username: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        };
        let a = Attributes::cluster_proxy("a", "get");
        // The same bytes split differently between fields are different questions.
        assert_ne!(decision_key(&user("ab", &["c"]), &a), decision_key(&user("a", &["bc"]), &a));
        assert_ne!(decision_key(&user("a", &["b", "c"]), &a), decision_key(&user("a", &["bc"]), &a));
        assert_ne!(
            decision_key(&user("a", &[]), &Attributes::impersonate("groups", "", "x")),
            decision_key(&user("a", &[]), &Attributes::impersonate("groups", "x", ""))
        );
        assert_eq!(decision_key(&user("a", &["b"]), &a), decision_key(&user("a", &["b"]), &a));
    }

    #[tokio::test]
    async fn caches_are_bounded_in_bytes() {
        let scripted = Arc::new(Scripted::default());
        let settings = AuthSettings {
            cache_bytes: 16 * 1024,
            failures_per_minute: 0,
            ..AuthSettings::new(Duration::from_secs(60))
        };
        let auth = HubAuth::new(scripted.clone(), settings);
        let user = auth.authenticate_token("good", LOCAL).await.unwrap().unwrap();
        for i in 0..2_000 {
            auth.authenticate_token(&format!("bad-{i}"), LOCAL).await.unwrap();
            // Impersonation strings are the caller's: long ones must not make entries (or keys) large.
            let long = format!("{i}-{}", "x".repeat(4096));
            auth.allowed(&user, &Attributes::impersonate("groups", "", &long)).await.unwrap();
        }
        auth.tokens.run_pending_tasks().await;
        auth.decisions.run_pending_tasks().await;
        assert!(auth.tokens.weighted_size() <= 16 * 1024, "tokens: {} bytes", auth.tokens.weighted_size());
        assert!(auth.decisions.weighted_size() <= 16 * 1024, "decisions: {} bytes", auth.decisions.weighted_size());
        assert!(auth.decisions.entry_count() > 10, "the cache still caches");
    }

    /// Holds every TokenReview until released, counting them.
    #[derive(Default)]
    struct Slow {
        calls: AtomicUsize,
        release: tokio::sync::Notify,
    }

    impl Reviews for Slow {
        fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                self.release.notified().await;
                Ok((token == "good").then(|| UserInfo {
                    username: "alice".into(),
                    uid: String::new(),
                    groups: vec![],
                    extra: Default::default(),
                }))
            })
        }
        fn access<'a>(&'a self, _: &'a UserInfo, _: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
            Box::pin(async { Ok(true) })
        }
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_token_make_one_review() {
        let slow = Arc::new(Slow::default());
        let auth = HubAuth::new(slow.clone(), AuthSettings::new(Duration::from_secs(60)));
        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.authenticate_token("good", LOCAL).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while slow.calls.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        slow.release.notify_waiters();
        for lookup in lookups {
            // Waiters that joined late may find the answer cached; none asks the hub again.
            let user = tokio::time::timeout(Duration::from_secs(5), lookup).await.unwrap().unwrap().unwrap();
            assert_eq!(user.unwrap().username, "alice");
        }
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_authentication_is_limited_per_source() {
        let scripted = Arc::new(Scripted::default());
        let settings = AuthSettings { failures_per_minute: 3, ..AuthSettings::new(Duration::from_secs(60)) };
        let auth = HubAuth::new(scripted.clone(), settings);
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        // A good token first: it is no failure and is cached, so it keeps working for that source.
        auth.authenticate_token("good", LOCAL).await.unwrap().unwrap();
        let mut limited = 0;
        for i in 0..20 {
            match auth.authenticate_token(&format!("bad-{i}"), LOCAL).await {
                Ok(user) => assert!(user.is_none()),
                Err(ProxyError::TooManyRequests { retry_after }) => {
                    assert!((1..=20).contains(&retry_after), "{retry_after}");
                    limited += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(limited, 17);
        assert_eq!(scripted.token_calls.load(Ordering::SeqCst), 1 + 3, "the hub reviewed 3 bad tokens only");
        assert!(auth.authenticate_token("good", LOCAL).await.unwrap().is_some(), "cached: no review, no limit");
        assert!(auth.authenticate_token("bad-x", other).await.unwrap().is_none(), "another source is not limited");
    }
}
