//! `deploy/hub/crds/` must be what `crdgen` writes from the Rust types: regenerate with
//! `cargo run -p controller --bin crdgen`.
#[test]
fn deployed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub/crds");
    let generated = controller::crds().expect("CRDs render as YAML");
    for (file, yaml) in &generated {
        let deployed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(deployed == *yaml, "deploy/hub/crds/{file} is stale: run `cargo run -p controller --bin crdgen`");
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/hub/crds")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<_> = generated.into_iter().map(|(file, _)| file).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "deploy/hub/crds holds a file crdgen does not write, or misses one");
}
