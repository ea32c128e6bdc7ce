//! The spoke's identity policy: whom the hub may act as here (ARCHITECTURE.md decision 11).
//!
//! The hub authenticates a caller and states who it is in `Impersonate-*` headers; this client may
//! impersonate, so without a policy a hub user in `system:masters` would be cluster-admin here and a hub
//! ServiceAccount would hold the rights of the same-named ServiceAccount of this spoke. The policy is set
//! on the spoke (flags, or a spoke ConfigMap followed by [`watch`]), never by the hub, and maps the hub's
//! identity before anything is forwarded:
//!
//! - the username gets `usernamePrefix`; a mapped name that starts with `system:` (ServiceAccounts, nodes,
//!   the control plane's own users) is never impersonated: the request gets a 403 from this client;
//! - every group gets `groupPrefix`, except `system:authenticated`, which every hub caller is and which
//!   always passes; a group matching `dropGroups` (by its hub name or its mapped name) is dropped, and so
//!   is every group not in `allowGroups` when that list is set;
//! - the uid and the extras pass as the hub sent them (the hub forwards only what it verified).
//!
//! Everything here is pure: [`apply`] takes the request's headers and rewrites them or refuses.
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{Error, Result};

/// Always passed: every identity the hub forwards is authenticated there, and the spoke apiserver adds it
/// to every impersonated user anyway.
pub const AUTHENTICATED: &str = "system:authenticated";
/// What the spoke never receives by default: every `system:` group (`system:masters` is the superuser
/// group; `system:nodes` and `system:bootstrappers` make a caller a node or let it become one;
/// `system:serviceaccounts*` carry what is granted to all ServiceAccounts; `system:unauthenticated` and
/// `system:monitoring` are not the hub's to give) and kubeadm's admin group, bound to cluster-admin since
/// Kubernetes 1.29.
pub const DEFAULT_DROP_GROUPS: &str = "system:*,kubeadm:cluster-admins";
/// Usernames with this prefix are never impersonated.
const SYSTEM: &str = "system:";

/// The policy's fields, named as the flags and as the ConfigMap's keys are, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    UsernamePrefix,
    GroupPrefix,
    DropGroups,
    AllowGroups,
}

impl Field {
    const ALL: [Field; 4] = [Field::UsernamePrefix, Field::GroupPrefix, Field::DropGroups, Field::AllowGroups];

    pub fn flag(self) -> &'static str {
        match self {
            Field::UsernamePrefix => "--identity-username-prefix",
            Field::GroupPrefix => "--identity-group-prefix",
            Field::DropGroups => "--identity-drop-groups",
            Field::AllowGroups => "--identity-allow-groups",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Field::UsernamePrefix => "usernamePrefix",
            Field::GroupPrefix => "groupPrefix",
            Field::DropGroups => "dropGroups",
            Field::AllowGroups => "allowGroups",
        }
    }
}

/// Where a policy was read from, which decides how its fields are named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Flags,
    ConfigMap,
}

impl Naming {
    fn name(self, field: Field) -> &'static str {
        match self {
            Naming::Flags => field.flag(),
            Naming::ConfigMap => field.key(),
        }
    }
}

/// A prefix for usernames or groups: text that is a valid header value and does not itself start with
/// `system:` (which would make every mapped name a system name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with(SYSTEM) {
            return Err(format!("{text:?} would map every name into system:, which is reserved on the spoke"));
        }
        if HeaderValue::from_str(text).is_err() || text.contains(['\r', '\n', '\t']) {
            return Err(format!("{text:?} holds characters a header cannot carry"));
        }
        Ok(Self(text.to_string()))
    }

    fn apply(&self, name: &str) -> String {
        format!("{}{name}", self.0)
    }
}

/// One entry of `dropGroups`: a group name, or a prefix when it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, group: &str) -> bool {
        match self {
            Pattern::Exact(name) => group == name,
            Pattern::Prefix(prefix) => group.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// The entries of a list field: separated by commas or newlines (a ConfigMap value may hold one per line),
/// surrounding blanks ignored. An empty text is an empty list.
fn entries(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty())
}

/// `dropGroups`: groups the spoke never receives. `*` only at the end (a prefix); `*` alone drops every
/// group but `system:authenticated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPatterns(BTreeSet<Pattern>);

impl GroupPatterns {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = BTreeSet::new();
        for entry in entries(text) {
            let pattern = match entry.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => Pattern::Prefix(prefix.to_string()),
                _ if entry.contains('*') => return Err(format!("{entry:?}: `*` may only end a pattern")),
                _ => Pattern::Exact(entry.to_string()),
            };
            patterns.insert(pattern);
        }
        Ok(Self(patterns))
    }

    fn matching(&self, group: &str) -> Option<&Pattern> {
        self.0.iter().find(|p| p.matches(group))
    }
}

impl Default for GroupPatterns {
    fn default() -> Self {
        Self::parse(DEFAULT_DROP_GROUPS).expect("the default patterns parse")
    }
}

/// `allowGroups`: the only hub groups passed, by exact name. No patterns: RBAC can limit the client's
/// impersonation to exact names only, and the list is what the ClusterRole's `resourceNames` hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupNames(BTreeSet<String>);

impl GroupNames {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        for entry in entries(text) {
            if entry.contains('*') {
                return Err(format!("{entry:?}: exact group names only (RBAC limits impersonation by exact name)"));
            }
            names.insert(entry.to_string());
        }
        Ok(Self(names))
    }
}

/// A valid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    username_prefix: Prefix,
    group_prefix: Prefix,
    drop_groups: GroupPatterns,
    allow_groups: Option<GroupNames>,
}

impl Default for Policy {
    /// Hub users keep their names unless they are `system:` names (refused); hub groups pass except the
    /// [`DEFAULT_DROP_GROUPS`].
    fn default() -> Self {
        Self {
            username_prefix: Prefix::default(),
            group_prefix: Prefix::default(),
            drop_groups: GroupPatterns::default(),
            allow_groups: None,
        }
    }
}

impl Policy {
    /// Checks what each field cannot check alone: an allowed group that is also dropped is a contradiction
    /// the admin must resolve, never guessed at.
    pub fn new(
        username_prefix: Prefix,
        group_prefix: Prefix,
        drop_groups: GroupPatterns,
        allow_groups: Option<GroupNames>,
        naming: Naming,
    ) -> Result<Self> {
        if let Some(allowed) = &allow_groups {
            for group in &allowed.0 {
                let mapped = group_prefix.apply(group);
                let dropped = drop_groups.matching(group).or_else(|| drop_groups.matching(&mapped));
                if let (Some(pattern), false) = (dropped, group == AUTHENTICATED) {
                    return Err(Error::Policy {
                        field: naming.name(Field::AllowGroups).into(),
                        reason: format!(
                            "{group} is also dropped by {} pattern {pattern}: remove it from one of them",
                            naming.name(Field::DropGroups)
                        ),
                    });
                }
            }
        }
        Ok(Self { username_prefix, group_prefix, drop_groups, allow_groups })
    }

    /// The policy in a ConfigMap's `data`: the keys of [`Field::key`], each optional (absent: the default).
    /// Any other key is an error, so a misspelt `allowGroup` can never mean "no allow-list".
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self> {
        let invalid = |field: &str, reason: String| Error::Policy { field: field.into(), reason };
        if let Some(unknown) = data.keys().find(|k| !Field::ALL.iter().any(|f| f.key() == k.as_str())) {
            let known: Vec<_> = Field::ALL.iter().map(|f| f.key()).collect();
            return Err(invalid(unknown, format!("unknown key; the policy's keys are {}", known.join(", "))));
        }
        let value = |field: Field| data.get(field.key()).map(String::as_str);
        let parse_prefix = |field: Field| {
            value(field)
                .map(Prefix::parse)
                .transpose()
                .map_err(|r| invalid(field.key(), r))
                .map(Option::unwrap_or_default)
        };
        let username_prefix = parse_prefix(Field::UsernamePrefix)?;
        let group_prefix = parse_prefix(Field::GroupPrefix)?;
        let drop_groups = match value(Field::DropGroups) {
            Some(text) => GroupPatterns::parse(text).map_err(|r| invalid(Field::DropGroups.key(), r))?,
            None => GroupPatterns::default(),
        };
        let allow_groups = value(Field::AllowGroups)
            .map(GroupNames::parse)
            .transpose()
            .map_err(|r| invalid(Field::AllowGroups.key(), r))?;
        Self::new(username_prefix, group_prefix, drop_groups, allow_groups, Naming::ConfigMap)
    }

    /// The spoke identity for a hub identity, or why there is none.
    pub fn map(&self, hub: &HubIdentity) -> Result<SpokeIdentity, Refusal> {
        let user = self.username_prefix.apply(&hub.user);
        if user.starts_with(SYSTEM) {
            return Err(Refusal::SystemUser { hub: hub.user.clone(), spoke: user });
        }
        let mut groups = Vec::new();
        for group in &hub.groups {
            if group == AUTHENTICATED || self.drop_groups.matching(group).is_some() {
                continue;
            }
            if self.allow_groups.as_ref().is_some_and(|allowed| !allowed.0.contains(group)) {
                continue;
            }
            let mapped = self.group_prefix.apply(group);
            if self.drop_groups.matching(&mapped).is_none() && !groups.contains(&mapped) {
                groups.push(mapped);
            }
        }
        groups.push(AUTHENTICATED.to_string());
        Ok(SpokeIdentity { user, groups })
    }

    /// The rules of ClusterRole `tether:impersonator` that let the client impersonate what this policy can
    /// produce and no more than RBAC can express: never `serviceaccounts` (no mapped username is a
    /// ServiceAccount's), any user (RBAC cannot match a prefix, nor exclude `system:` names), groups by
    /// exact name when there is an allow-list and any group otherwise, and `authentication.k8s.io` `*` for
    /// `userextras/<key>` (RBAC has no wildcard for one resource's subresources) and `uids`.
    pub fn impersonation_rules(&self) -> serde_json::Value {
        let rule = |group: &str, resources: &[&str], names: Option<Vec<String>>| {
            let mut rule = serde_json::json!({ "apiGroups": [group], "resources": resources });
            if let Some(names) = names {
                rule["resourceNames"] = names.into();
            }
            rule["verbs"] = serde_json::json!(["impersonate"]);
            rule
        };
        let mut rules = Vec::new();
        match &self.allow_groups {
            None => rules.push(rule("", &["users", "groups"], None)),
            Some(allowed) => {
                rules.push(rule("", &["users"], None));
                let mut names: BTreeSet<String> = allowed.0.iter().map(|g| self.group_prefix.apply(g)).collect();
                names.insert(AUTHENTICATED.into());
                rules.push(rule("", &["groups"], Some(names.into_iter().collect())));
            }
        }
        rules.push(rule("authentication.k8s.io", &["*"], None));
        serde_json::Value::Array(rules)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |p: &Prefix| if p.0.is_empty() { "none".to_string() } else { format!("{:?}", p.0) };
        let dropped: Vec<String> = self.drop_groups.0.iter().map(Pattern::to_string).collect();
        write!(
            f,
            "username prefix {}, group prefix {}, dropped groups [{}], ",
            shown(&self.username_prefix),
            shown(&self.group_prefix),
            dropped.join(", ")
        )?;
        match &self.allow_groups {
            None => f.write_str("any other group allowed"),
            Some(allowed) => write!(f, "allowed groups [{}]", allowed.0.iter().cloned().collect::<Vec<_>>().join(", ")),
        }
    }
}

/// Who the hub says the caller is: its `Impersonate-User` and `Impersonate-Group` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Who the spoke apiserver is told the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpokeIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

impl HubIdentity {
    /// Reads the hub's identity headers. Extras and uid stay in the headers as they are; any other
    /// `Impersonate-*` header, or none naming a user, is refused: without `Impersonate-User` the request
    /// would run as this client's own ServiceAccount.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Refusal> {
        let text = |name: &str, value: &HeaderValue| {
            std::str::from_utf8(value.as_bytes())
                .map(str::to_string)
                .map_err(|_| Refusal::Malformed(format!("header {name} is not UTF-8")))
        };
        let mut users = headers.get_all(USER).iter();
        let user = match (users.next(), users.next()) {
            (None, _) => return Err(Refusal::NoUser),
            (Some(_), Some(_)) => return Err(Refusal::Malformed("more than one Impersonate-User header".into())),
            (Some(value), None) => text(USER, value)?,
        };
        if user.is_empty() {
            return Err(Refusal::NoUser);
        }
        let groups = headers.get_all(GROUP).iter().map(|v| text(GROUP, v)).collect::<Result<Vec<_>, _>>()?;
        if headers.get_all(UID).iter().count() > 1 {
            return Err(Refusal::Malformed("more than one Impersonate-Uid header".into()));
        }
        for name in headers.keys().map(HeaderName::as_str).filter(|n| n.starts_with("impersonate-")) {
            let known = [USER, GROUP, UID].contains(&name) || name.strip_prefix(EXTRA).is_some_and(|k| !k.is_empty());
            if !known {
                return Err(Refusal::Malformed(format!("unknown impersonation header {name}")));
            }
        }
        Ok(Self { user, groups })
    }
}

/// Why a request from the hub is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoUser,
    Malformed(String),
    SystemUser {
        hub: String,
        spoke: String,
    },
    /// The policy in the ConfigMap is invalid: nothing is forwarded until it is fixed.
    InvalidPolicy(String),
    /// The ConfigMap has not been read yet.
    NotReady(String),
}

impl Refusal {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoUser => "no_user",
            Refusal::Malformed(_) => "malformed",
            Refusal::SystemUser { .. } => "system_user",
            Refusal::InvalidPolicy(_) => "invalid_policy",
            Refusal::NotReady(_) => "not_ready",
        }
    }

    /// The HTTP status of the refusal: the caller may not (403), or the spoke cannot decide yet (503).
    pub fn code(&self) -> http::StatusCode {
        match self {
            Refusal::NotReady(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoUser => f.write_str("the hub named no user to act as; this spoke forwards nothing without one"),
            Refusal::Malformed(reason) => write!(f, "malformed identity from the hub: {reason}"),
            Refusal::SystemUser { hub, spoke } if hub == spoke => write!(
                f,
                "hub user \"{hub}\" is a system identity, which this spoke's identity policy never impersonates \
                 (a spoke admin can map hub users under a usernamePrefix)"
            ),
            Refusal::SystemUser { hub, spoke } => write!(
                f,
                "hub user \"{hub}\" maps to \"{spoke}\", a system identity, which this spoke's identity policy \
                 never impersonates"
            ),
            Refusal::InvalidPolicy(reason) => {
                write!(f, "this spoke's identity policy is invalid, so nothing is forwarded: {reason}")
            }
            Refusal::NotReady(reason) => write!(f, "this spoke has not read its identity policy yet: {reason}"),
        }
    }
}

/// Rewrites the identity headers of a request from the hub by `policy`, or refuses it.
pub fn apply(policy: &Policy, headers: &mut HeaderMap) -> Result<(), Refusal> {
    let spoke = policy.map(&HubIdentity::from_headers(headers)?)?;
    let value = |v: &str| {
        HeaderValue::from_bytes(v.as_bytes()).map_err(|_| Refusal::Malformed(format!("{v:?} cannot be a header")))
    };
    let user = value(&spoke.user)?;
    let groups = spoke.groups.iter().map(|g| value(g)).collect::<Result<Vec<_>, _>>()?;
    headers.insert(USER, user);
    headers.remove(GROUP);
    for group in groups {
        headers.append(GROUP, group);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
