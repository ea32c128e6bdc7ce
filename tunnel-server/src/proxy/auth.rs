//! Authentication (TokenReview) and authorization (SubjectAccessReview) against the hub apiserver, each
//! behind a short-TTL cache so that steady traffic makes no hub API call on the request path.
use std::sync::Arc;
use std::time::Duration;

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

#[derive(Clone)]
pub struct HubAuth {
    client: kube::Client,
    // Keyed by a SHA-256 of the token: the cache never holds a usable credential.
    tokens: Cache<[u8; 32], Option<Arc<UserInfo>>>,
    decisions: Cache<(UserInfo, Attributes), bool>,
}

impl HubAuth {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self {
            client,
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
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ProxyError::Unavailable(format!("hub authentication unavailable: {e}")))?;
        let user = answer.status.filter(|s| s.authenticated == Some(true)).and_then(|s| s.user).map(|u| {
            Arc::new(UserInfo {
                username: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default().into_iter().collect(),
            })
        });
        let user = user.filter(|u| !u.username.is_empty());
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
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ProxyError::Unavailable(format!("hub authorization unavailable: {e}")))?;
        let allowed = answer.status.is_some_and(|s| s.allowed && s.denied != Some(true));
        self.decisions.insert(key, allowed);
        Ok(allowed)
    }
}
