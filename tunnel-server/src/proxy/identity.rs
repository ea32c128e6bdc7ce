//! Who the caller is, and what the spoke is told about it.
use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// A verified identity: from a client certificate of the hub's client CA, a TokenReview, or an
/// impersonation the hub allowed. Every field is verified, `uid` included: a certificate user has none, a
/// token user the TokenReview's, an impersonated user only a uid the hub authorized (`uids`), never the
/// caller's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What an incoming request asked to impersonate, read from its `Impersonate-*` headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    pub uid: Option<String>,
}

impl Impersonation {
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, String> {
        let mut found = Self::default();
        let mut any = false;
        for (name, value) in headers {
            let name = name.as_str();
            if !name.starts_with("impersonate-") {
                continue;
            }
            any = true;
            let value = value.to_str().map_err(|_| format!("header {name} is not valid text"))?.to_string();
            match name {
                "impersonate-user" => found.user = Some(value),
                "impersonate-group" => found.groups.push(value),
                "impersonate-uid" => found.uid = Some(value),
                _ => match name.strip_prefix("impersonate-extra-") {
                    Some(key) if !key.is_empty() => {
                        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
                        found.extra.entry(key).or_default().push(value);
                    }
                    _ => return Err(format!("unknown impersonation header {name}")),
                },
            }
        }
        if !any {
            return Ok(None);
        }
        if found.user.is_none() {
            return Err("impersonating groups, extra or uid requires Impersonate-User".into());
        }
        Ok(Some(found))
    }

    /// The identity the request runs as once the hub has allowed every part of the impersonation.
    pub fn into_user(self) -> UserInfo {
        let username = self.user.unwrap_or_default();
        let mut groups = self.groups;
        // As the apiserver does: an impersonated user is authenticated (unless anonymous).
        if username != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo { username, uid: self.uid.unwrap_or_default(), groups, extra: self.extra }
    }
}

/// What the push controller may be on the proxy: a push identity (`tether:push:<namespace>`, in group
/// `tether:pushers`) and nothing else, itself included. It needs no impersonation rights on the hub, so
/// nothing but this rule decides, and the hub's RBAC on `managedclusters/proxy` then authorizes the push
/// identity like any user.
pub fn push_identity(wanted: Option<Impersonation>) -> Result<UserInfo, String> {
    let refuse = |why: &str| Err(format!("the push controller acts on the proxy only as a push identity: {why}"));
    let Some(wanted) = wanted else { return refuse("no Impersonate-User") };
    let user = wanted.user.as_deref().unwrap_or_default();
    if tether_api::push::push_namespace(user).is_none() {
        return refuse(&format!("{user:?} is not {}<namespace>", tether_api::push::PUSH_USER_PREFIX));
    }
    if let Some(group) = wanted.groups.iter().find(|g| *g != tether_api::push::PUSHERS_GROUP) {
        return refuse(&format!("group {group:?}"));
    }
    if !wanted.extra.is_empty() || wanted.uid.is_some() {
        return refuse("extra or uid");
    }
    let groups = vec![tether_api::push::PUSHERS_GROUP.to_string(), "system:authenticated".to_string()];
    Ok(UserInfo { username: user.to_string(), uid: String::new(), groups, extra: BTreeMap::new() })
}

/// Keys of `Impersonate-Extra-<key>` are percent-encoded, as the apiserver decodes them. It lowercases the
/// header name before decoding (and HTTP/2 sends names in lowercase anyway), so uppercase letters are
/// encoded too: the spoke then sees the key exactly as the hub checked it.
const EXTRA_KEY: &AsciiSet = &{
    let mut set = NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let mut letter = b'A';
    while letter <= b'Z' {
        set = set.add(letter);
        letter += 1;
    }
    set
};

/// Drops every `Impersonate-*` and `Authorization` header, then states `user` for the spoke apiserver:
/// `Impersonate-User`, each group, `Impersonate-Uid` when the user has one (Kubernetes before 1.22 ignores
/// it; from 1.22 the spoke's RBAC must allow impersonating `uids`, as deploy/spoke/rbac.yaml does) and each
/// extra with its key's case kept.
pub fn set_impersonation(headers: &mut HeaderMap, user: &UserInfo) -> Result<(), String> {
    let stale: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("impersonate-")).cloned().collect();
    for name in stale {
        headers.remove(name);
    }
    headers.remove(http::header::AUTHORIZATION);
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| format!("identity value {v:?} is not a valid header"));
    headers.insert("impersonate-user", value(&user.username)?);
    for group in &user.groups {
        headers.append("impersonate-group", value(group)?);
    }
    if !user.uid.is_empty() {
        headers.insert("impersonate-uid", value(&user.uid)?);
    }
    for (key, values) in &user.extra {
        let name = format!("impersonate-extra-{}", utf8_percent_encode(key, EXTRA_KEY));
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("extra key {key:?} is not usable"))?;
        for v in values {
            headers.append(name.clone(), value(v)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_requested_impersonation() {
        let h = headers(&[
            ("Impersonate-User", "admin"),
            ("Impersonate-Group", "g1"),
            ("Impersonate-Group", "g2"),
            ("Impersonate-Extra-Scopes%2Fx", "s"),
        ]);
        let imp = Impersonation::from_headers(&h).unwrap().unwrap();
        assert_eq!(imp.user.as_deref(), Some("admin"));
        assert_eq!(imp.groups, ["g1", "g2"]);
        assert_eq!(imp.extra["scopes/x"], ["s"]);
        assert_eq!(Impersonation::from_headers(&headers(&[("Accept", "x")])).unwrap(), None);
        assert!(Impersonation::from_headers(&headers(&[("Impersonate-Group", "g")])).is_err());
    }

    #[test]
    fn replaces_every_incoming_identity_header() {
        let mut h = headers(&[
            ("Authorization", "Bearer hub-token"),
            ("Impersonate-User", "admin"),
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Extra-Foo", "bar"),
            ("Accept", "application/json"),
        ]);
        let user = UserInfo {
            username: "alice".into(),
            uid: "1".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes.example/k".to_string(), vec!["v".to_string()])]),
        };
        set_impersonation(&mut h, &user).unwrap();
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("impersonate-user").unwrap(), "alice");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["devs", "system:authenticated"]);
        assert!(h.get("impersonate-extra-foo").is_none());
        assert_eq!(h.get("impersonate-extra-scopes.example%2Fk").unwrap(), "v");
        assert_eq!(h.get("impersonate-uid").unwrap(), "1");
        assert_eq!(h.get("accept").unwrap(), "application/json");
    }

    #[test]
    fn a_user_without_a_uid_sends_none_even_when_the_caller_asked_for_one() {
        let mut h = headers(&[("Impersonate-Uid", "forged")]);
        let user = UserInfo { username: "admin".into(), uid: String::new(), groups: vec![], extra: BTreeMap::new() };
        set_impersonation(&mut h, &user).unwrap();
        assert!(h.get("impersonate-uid").is_none());
    }

    /// What the spoke apiserver makes of an `Impersonate-Extra-*` header name: lowercased, then
    /// percent-decoded (k8s.io/apiserver's impersonation filter).
    fn apiserver_extra_key(name: &str) -> String {
        let encoded = name.to_lowercase();
        let encoded = encoded.strip_prefix("impersonate-extra-").unwrap();
        percent_encoding::percent_decode_str(encoded).decode_utf8().unwrap().into_owned()
    }

    #[test]
    fn extra_keys_reach_the_spoke_as_the_hub_checked_them() {
        // A key as a client sends it (`%4B` is `K`), as the hub decodes and checks it, then as it is forwarded.
        let incoming = headers(&[("Impersonate-User", "a"), ("Impersonate-Extra-Acme.io%2F%4Bey_x", "v")]);
        let wanted = Impersonation::from_headers(&incoming).unwrap().unwrap();
        assert_eq!(wanted.extra.keys().collect::<Vec<_>>(), ["acme.io/Key_x"]);
        let user = UserInfo {
            extra: BTreeMap::from([
                ("acme.io/Key_x".to_string(), vec!["v".to_string()]),
                ("Department Name".to_string(), vec!["R&D".to_string()]),
            ]),
            ..wanted.into_user()
        };
        let mut h = HeaderMap::new();
        set_impersonation(&mut h, &user).unwrap();
        let keys: Vec<String> = h
            .keys()
            .filter(|k| k.as_str().starts_with("impersonate-extra-"))
            .map(|k| apiserver_extra_key(k.as_str()))
            .collect();
        assert_eq!(keys, ["Department Name", "acme.io/Key_x"]);
    }

    #[test]
    fn the_push_controller_is_only_ever_a_push_identity() {
        let ask = |pairs: &[(&str, &str)]| Impersonation::from_headers(&headers(pairs)).unwrap();
        let user = push_identity(ask(&[("impersonate-user", "tether:push:team-a")])).unwrap();
        assert_eq!(user.username, "tether:push:team-a");
        assert_eq!(user.groups, ["tether:pushers", "system:authenticated"]);
        let with_group = ask(&[("impersonate-user", "tether:push:team-a"), ("impersonate-group", "tether:pushers")]);
        assert_eq!(push_identity(with_group).unwrap(), user);
        for refused in [
            ask(&[]),
            ask(&[("impersonate-user", "admin")]),
            ask(&[("impersonate-user", "tether:push:Team")]),
            ask(&[("impersonate-user", "tether:push:a"), ("impersonate-group", "system:masters")]),
            ask(&[("impersonate-user", "tether:push:a"), ("impersonate-uid", "1")]),
            ask(&[("impersonate-user", "tether:push:a"), ("impersonate-extra-scopes", "x")]),
        ] {
            let err = push_identity(refused.clone()).unwrap_err();
            assert!(
                err.starts_with("the push controller acts on the proxy only as a push identity"),
                "{refused:?}: {err}"
            );
        }
    }
}
