//! Prints the CRDs as YAML: `cargo run -p controller --bin crdgen > deploy/hub/crds/managedclusters.tether.io.yaml`
fn main() -> anyhow::Result<()> {
    print!("{}", controller::crdgen()?);
    Ok(())
}
