//! Authentication (TokenReview) and authorization (SubjectAccessReview) against the hub apiserver, each
//! behind a short-TTL cache so that steady traffic makes no hub API call on the request path.
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::Api;
use metrics::counter;
use moka::sync::Cache;

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
            group: "tether.io".into(),
            resource: "managedclusters".into(),
            subresource: "proxy".into(),
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
                .map_err(|e| ProxyError::Unavailable(format!("hub authentication unavailable: {e}")))?;
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
                .map_err(|e| ProxyError::Unavailable(format!("hub authorization unavailable: {e}")))?;
            Ok(answer.status.is_some_and(|s| s.allowed && s.denied != Some(true)))
        })
    }
}

/// [`Reviews`] behind short-TTL caches: steady traffic makes no hub API call on the request path.
#[derive(Clone)]
pub struct HubAuth {
    reviews: Arc<dyn Reviews>,
    // Keyed by a SHA-256 of the token: the cache never holds a usable credential.
    tokens: Cache<[u8; 32], Option<Arc<UserInfo>>>,
    decisions: Cache<(UserInfo, Attributes), bool>,
}

impl HubAuth {
    pub fn new(reviews: Arc<dyn Reviews>, ttl: Duration) -> Self {
        Self {
            reviews,
            tokens: Cache::builder().time_to_live(ttl).max_capacity(100_000).build(),
            decisions: Cache::builder().time_to_live(ttl).max_capacity(100_000).build(),
        }
    }

    /// `Ok(None)` for a token the hub does not accept.
    pub async fn authenticate_token(&self, token: &str) -> Result<Option<Arc<UserInfo>>, ProxyError> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 digests are 32 bytes");
        if let Some(hit) = self.tokens.get(&key) {
            counter!(m::AUTH_LOOKUPS, "kind" => "token", "outcome" => "cached").increment(1);
            return Ok(hit);
        }
        counter!(m::AUTH_LOOKUPS, "kind" => "token", "outcome" => "hub").increment(1);
        let user = self.reviews.token(token).await?.map(Arc::new);
        self.tokens.insert(key, user.clone());
        Ok(user)
    }

    pub async fn allowed(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, ProxyError> {
        let key = (user.clone(), attributes.clone());
        if let Some(hit) = self.decisions.get(&key) {
            counter!(m::AUTH_LOOKUPS, "kind" => "access", "outcome" => "cached").increment(1);
            return Ok(hit);
        }
        counter!(m::AUTH_LOOKUPS, "kind" => "access", "outcome" => "hub").increment(1);
        let allowed = self.reviews.access(user, attributes).await?;
        self.decisions.insert(key, allowed);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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
        let auth = HubAuth::new(scripted.clone(), Duration::from_secs(60));
        for _ in 0..3 {
            let user = auth.authenticate_token("good").await.unwrap().unwrap();
            assert_eq!(user.username, "alice");
            assert!(auth.authenticate_token("bad").await.unwrap().is_none());
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
        let auth = HubAuth::new(scripted.clone(), Duration::from_millis(1));
        auth.authenticate_token("good").await.unwrap();
        // moka's clock is real time; wait for the condition (expiry), bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while scripted.token_calls.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            auth.authenticate_token("good").await.unwrap();
        }
        assert_eq!(scripted.token_calls.load(Ordering::SeqCst), 2);
    }
}
