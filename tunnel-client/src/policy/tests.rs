use super::*;

fn hub(user: &str, groups: &[&str]) -> HubIdentity {
    HubIdentity { user: user.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
}

#[test]
fn by_default_a_hub_admin_keeps_its_name_but_not_system_masters() {
    let spoke = Policy::default().map(&hub("admin", &["system:masters", "system:authenticated"])).unwrap();
    assert_eq!(spoke, SpokeIdentity { user: "admin".into(), groups: vec![AUTHENTICATED.into()] });
}

#[test]
fn by_default_every_system_group_is_dropped_and_others_pass() {
    let groups = [
        "system:masters",
        "system:nodes",
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:bootstrappers:kubeadm:default-node-token",
        "system:unauthenticated",
        "system:monitoring",
        "kubeadm:cluster-admins",
        "devs",
        "system:authenticated",
        "devs",
    ];
    let spoke = Policy::default().map(&hub("alice", &groups)).unwrap();
    assert_eq!(spoke.groups, ["devs", AUTHENTICATED]);
}

#[test]
fn system_authenticated_always_reaches_the_spoke() {
    let spoke = Policy::default().map(&hub("alice", &[])).unwrap();
    assert_eq!(spoke.groups, [AUTHENTICATED]);
    let none = Policy::from_data(&data(&[("allowGroups", "")])).unwrap();
    assert_eq!(none.map(&hub("alice", &["devs", AUTHENTICATED])).unwrap().groups, [AUTHENTICATED]);
}

#[test]
fn hub_service_accounts_and_other_system_users_are_refused() {
    for user in [
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:node:worker-1",
        "system:kube-controller-manager",
        "system:anonymous",
    ] {
        let refused = Policy::default().map(&hub(user, &["system:serviceaccounts"])).unwrap_err();
        assert_eq!(refused, Refusal::SystemUser { hub: user.into(), spoke: user.into() });
        assert_eq!(refused.code(), http::StatusCode::FORBIDDEN);
        assert!(refused.to_string().contains("usernamePrefix"), "{refused}");
    }
}

#[test]
fn a_username_prefix_lets_hub_service_accounts_in_under_another_name() {
    let policy = Policy::from_data(&data(&[("usernamePrefix", "hub:")])).unwrap();
    let spoke = policy.map(&hub("system:serviceaccount:ci:deployer", &["system:serviceaccounts"])).unwrap();
    assert_eq!(spoke.user, "hub:system:serviceaccount:ci:deployer");
    assert_eq!(spoke.groups, [AUTHENTICATED]);
    assert_eq!(policy.map(&hub("alice", &[])).unwrap().user, "hub:alice");
}

#[test]
fn the_system_rule_applies_to_the_mapped_name() {
    // "sys" + "tem:masters..." must not become a system name on the spoke.
    let policy = Policy::from_data(&data(&[("usernamePrefix", "sys")])).unwrap();
    let refused = policy.map(&hub("tem:serviceaccount:kube-system:default", &[])).unwrap_err();
    assert!(
        matches!(refused, Refusal::SystemUser { ref spoke, .. } if spoke == "system:serviceaccount:kube-system:default")
    );
    let groups = Policy::from_data(&data(&[("groupPrefix", "sys")])).unwrap();
    assert_eq!(groups.map(&hub("alice", &["tem:masters", "ops"])).unwrap().groups, ["sysops", AUTHENTICATED]);
}

#[test]
fn a_group_prefix_maps_every_group_but_system_authenticated() {
    let policy = Policy::from_data(&data(&[("groupPrefix", "hub:")])).unwrap();
    let spoke = policy.map(&hub("alice", &["devs", "system:masters", AUTHENTICATED])).unwrap();
    assert_eq!(spoke.groups, ["hub:devs", AUTHENTICATED]);
}

#[test]
fn an_allow_list_passes_only_its_groups() {
    let policy = Policy::from_data(&data(&[("allowGroups", "devs\n ops ,")])).unwrap();
    let spoke = policy.map(&hub("bob", &["devs", "ops", "finance", "system:masters"])).unwrap();
    assert_eq!(spoke.groups, ["devs", "ops", AUTHENTICATED]);
}

#[test]
fn the_drop_list_can_be_replaced() {
    let policy = Policy::from_data(&data(&[("dropGroups", "")])).unwrap();
    assert_eq!(policy.map(&hub("lt", &["system:masters"])).unwrap().groups, ["system:masters", AUTHENTICATED]);
    let policy = Policy::from_data(&data(&[("dropGroups", "*")])).unwrap();
    assert_eq!(policy.map(&hub("lt", &["devs", "system:masters"])).unwrap().groups, [AUTHENTICATED]);
}

#[test]
fn bad_policies_name_the_field_and_never_mean_allow_all() {
    for (pairs, field, words) in [
        (vec![("allowGroup", "devs")], "allowGroup", "unknown key"),
        (vec![("allowGroups", "dev*")], "allowGroups", "exact group names"),
        (vec![("allowGroups", "devs,system:masters")], "allowGroups", "also dropped by dropGroups"),
        (vec![("dropGroups", "sys*tem")], "dropGroups", "may only end"),
        (vec![("usernamePrefix", "system:hub:")], "usernamePrefix", "system:"),
        (vec![("groupPrefix", "a\u{7f}")], "groupPrefix", "header"),
    ] {
        match Policy::from_data(&data(&pairs)) {
            Err(Error::Policy { field: f, reason }) => {
                assert_eq!(f, field, "{pairs:?}");
                assert!(reason.contains(words), "{pairs:?}: {reason}");
            }
            other => panic!("{pairs:?}: {other:?}"),
        }
    }
    // The same check names the flag when the policy comes from the flags.
    let allow = GroupNames::parse("system:nodes").unwrap();
    let err = Policy::new(Prefix::default(), Prefix::default(), GroupPatterns::default(), Some(allow), Naming::Flags)
        .unwrap_err();
    assert!(err.to_string().starts_with("identity policy: --identity-allow-groups: system:nodes"), "{err}");
}

#[test]
fn an_empty_configmap_is_the_default_policy() {
    assert_eq!(Policy::from_data(&BTreeMap::new()).unwrap(), Policy::default());
}

#[test]
fn apply_rewrites_user_and_groups_and_keeps_uid_and_extras() {
    let mut h = headers(&[
        ("impersonate-user", "admin"),
        ("impersonate-group", "system:masters"),
        ("impersonate-group", "devs"),
        ("impersonate-group", "system:authenticated"),
        ("impersonate-uid", "u-1"),
        ("impersonate-extra-scopes.example%2Fk%4Bey", "v"),
        ("accept", "application/json"),
    ]);
    apply(&Policy::default(), &mut h).unwrap();
    assert_eq!(values(&h, "impersonate-user"), ["admin"]);
    assert_eq!(values(&h, "impersonate-group"), ["devs", AUTHENTICATED]);
    assert_eq!(values(&h, "impersonate-uid"), ["u-1"]);
    assert_eq!(values(&h, "impersonate-extra-scopes.example%2Fk%4Bey"), ["v"]);
    assert_eq!(values(&h, "accept"), ["application/json"]);
}

#[test]
fn requests_without_a_clear_identity_are_refused() {
    let policy = Policy::default();
    assert_eq!(apply(&policy, &mut headers(&[("accept", "*/*")])), Err(Refusal::NoUser));
    assert_eq!(apply(&policy, &mut headers(&[("impersonate-user", "")])), Err(Refusal::NoUser));
    for pairs in [
        vec![("impersonate-user", "a"), ("impersonate-user", "b")],
        vec![("impersonate-user", "a"), ("impersonate-uid", "1"), ("impersonate-uid", "2")],
        vec![("impersonate-user", "a"), ("impersonate-extra-", "x")],
        vec![("impersonate-user", "a"), ("impersonate-something", "x")],
    ] {
        let refused = apply(&policy, &mut headers(&pairs)).unwrap_err();
        assert!(matches!(refused, Refusal::Malformed(_)), "{pairs:?}: {refused:?}");
    }
    let mut h = headers(&[("impersonate-user", "system:serviceaccount:default:x")]);
    assert!(matches!(apply(&policy, &mut h), Err(Refusal::SystemUser { .. })));
}

#[test]
fn the_default_policy_needs_exactly_the_manifest_rbac() {
    // deploy/spoke/rbac.yaml is what the join manifest installs: it must not let the client impersonate more
    // than the default policy produces where RBAC can say so (no serviceaccounts), nor less.
    let rbac = include_str!("../../../deploy/spoke/rbac.yaml");
    let role = serde_yaml::Deserializer::from_str(rbac)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &serde_json::Value| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "tether:impersonator")
        .expect("ClusterRole tether:impersonator in deploy/spoke/rbac.yaml");
    assert_eq!(role["rules"], Policy::default().impersonation_rules());
}

#[test]
fn an_allow_list_limits_the_groups_rbac_by_name() {
    let policy = Policy::from_data(&data(&[("allowGroups", "ops,devs"), ("groupPrefix", "hub:")])).unwrap();
    let rules = policy.impersonation_rules();
    assert_eq!(
        rules,
        serde_json::json!([
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]},
            {"apiGroups": [""], "resources": ["groups"], "resourceNames": ["hub:devs", "hub:ops", AUTHENTICATED],
             "verbs": ["impersonate"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["*"], "verbs": ["impersonate"]},
        ])
    );
}

#[test]
fn the_summary_says_what_the_policy_does() {
    assert_eq!(
        Policy::default().to_string(),
        "username prefix none, group prefix none, dropped groups [kubeadm:cluster-admins, system:*], any other \
         group allowed"
    );
}
