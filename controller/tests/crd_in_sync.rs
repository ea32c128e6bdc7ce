//! `deploy/hub/crds/` must be what `crdgen` prints from the Rust types: regenerate with
//! `cargo run -p controller --bin crdgen > deploy/hub/crds/managedclusters.tether.io.yaml`.
#[test]
fn deployed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hub/crds/managedclusters.tether.io.yaml");
    let deployed = std::fs::read_to_string(path).expect("deploy/hub/crds/managedclusters.tether.io.yaml");
    let generated = controller::crdgen().expect("CRD renders as YAML");
    assert!(
        deployed == generated,
        "deploy/hub/crds/managedclusters.tether.io.yaml is stale: run `cargo run -p controller --bin crdgen > deploy/hub/crds/managedclusters.tether.io.yaml`"
    );
}
